"""A generated dataset on disk: the params that decide its data and their hash, ``dataset.json``,
the manifest (one line per finished sample, committed in index order), splits, codecs, output folders and shards."""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from dmutils.config import Params, deep_merge, explain
from dmutils.data import voc
from dmutils.errors import DataError, DataNotFoundError, ParamsError
from dmutils.locks import LOCK_NAME
from dmutils.paths import atomic_write_bytes, ensure_writable_dir

MANIFEST = "manifest.jsonl"


META = "dataset.json"


MAPS = "maps"


OUR_ENTRIES = (voc.IMAGES, voc.LABELS, "ImageSets", MAPS, MANIFEST, META, "shards", "preview.png", "preview.html")


NON_DATA = ("out_dir", "num_samples", "batch_size", "workers", "splice")
# Settings added after datasets were made, at the value that gives those datasets' bytes: left out of the hash there,
# so a dataset made before the setting existed resumes instead of being refused as "made with other params".
ADDED_AT_DEFAULT = {("capture", "aggregate"): "mean"}


# ---------------------------------------------------------------------------------------------
# Params that decide the data
# ---------------------------------------------------------------------------------------------
def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12] if path.is_file() else "missing"


def data_params(params: Params) -> dict[str, Any]:
    """The params that decide the dataset's bytes (a partial params dict), plus digests of the
    files they name (caption file, corpus, threshold table)."""
    d = params.model_dump(mode="json")
    out = {k: d[k] for k in ("model", "classes", "prompts", "capture", "masks")}
    for (section, key), default in ADDED_AT_DEFAULT.items():
        if out[section].get(key) == default:
            out[section].pop(key)
    m = out["masks"]  # settings the chosen mask modes never read do not change the data
    if m["refine"] != "affinity":
        m.pop("affinity", None)
    if not m["crf"]["enabled"] and m["threshold_mode"] != "adaptive":
        m.pop("crf")
    if m["threshold_mode"] != "adaptive":
        m.pop("adaptive_candidates")
    if m["threshold_mode"] != "per_class":
        m.pop("threshold_table")
    out["dataset"] = {k: v for k, v in d["dataset"].items() if k not in NON_DATA}
    out["run"] = {"seed": d["run"]["seed"]}
    return out


def data_hash(params: Params) -> str:
    p, m = params.prompts, params.masks
    files = {"caption_file": p.caption_file if p.source == "captions" else None,
             "corpus_file": p.corpus_file if p.source == "retrieval" else None,
             "threshold_table": m.threshold_table if m.threshold_mode == "per_class" else None}
    digests = {k: _file_digest(params.resolve_path(v)) for k, v in files.items() if v}
    blob = json.dumps({"params": data_params(params), "files": digests}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def params_diff(old: dict, new: dict) -> list[str]:
    """Dotted keys whose values differ, e.g. ['masks.threshold: 0.5 -> 0.4']; a key one side lacks
    (a setting added or moved since the dataset was made) shows as '(absent)'."""
    a, b = _flatten(old), _flatten(new)
    show = lambda d, k: repr(d[k]) if k in d else "(absent)"  # noqa: E731
    return [f"{k}: {show(a, k)} -> {show(b, k)}" for k in sorted(set(a) | set(b)) if k not in a or k not in b or a[k] != b[k]]


def dataset_meta(params: Params) -> dict[str, Any]:
    classes = ["background", *params.class_names]
    return {"name": params.dataset.name, "classes": classes, "ignore_index": voc.IGNORE_INDEX,
            "palette": voc.PALETTE[: len(classes)].tolist(), "ignore_color": voc.PALETTE[voc.IGNORE_INDEX].tolist(),
            "params_hash": data_hash(params), "params": data_params(params)}


def params_from_meta(meta: dict, overrides: dict | None = None) -> Params:
    """The Params a dataset was made with (from its dataset.json), with optional overrides."""
    from pydantic import ValidationError


    data = deep_merge(meta["params"], overrides or {})
    try:
        return Params.model_validate(data)
    except ValidationError as e:
        raise explain(e, "dataset.json params with overrides") from None


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------
def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """``np.savez`` with a fixed timestamp, so the same arrays give the same bytes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, arr in arrays.items():
            with zf.open(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def read_maps(path: Path) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray] | None]:
    """A sample's saved maps: ({res: (C, r, r)}, {res: (N, N)} or None), float32."""
    with np.load(path) as z:
        cross = {int(k[6:]): z[k].astype(np.float32) for k in z.files if k.startswith("cross_")}
        self_attn = {int(k[5:]): z[k].astype(np.float32) for k in z.files if k.startswith("self_")}
    return cross, self_attn or None


def jpeg_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    return voc._encode(Image.fromarray(np.asarray(image, np.uint8)).convert("RGB"), "JPEG", quality=95, subsampling=0)


def decode_jpeg(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return np.array(img.convert("RGB"))


class Manifest:
    """``manifest.jsonl``: one JSON line per finished sample; appended with flush + fsync."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def read(self) -> dict[int, dict]:
        """Records by index. A torn last line (kill during a write) is cut off the file."""
        if not self.path.is_file():
            return {}
        raw = self.path.read_bytes()
        records, good = {}, 0
        for line in raw.splitlines(keepends=True):
            if not line.endswith(b"\n"):
                break
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                break
            records[rec["index"]] = rec
            good += len(line)
        if good < len(raw):
            with open(self.path, "r+b") as f:
                f.truncate(good)
        return records

    def append(self, record: dict) -> None:
        line = (json.dumps(record, sort_keys=True) + "\n").encode()
        with open(self.path, "ab") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def rewrite(self, records: list[dict]) -> None:
        atomic_write_bytes(self.path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records).encode())


def write_splits(root: Path, records: dict[int, dict] | list[dict]) -> dict[str, list[str]]:
    """train/val lists of the written samples, in index order."""
    recs = sorted(records.values() if isinstance(records, dict) else records, key=lambda r: r["index"])
    splits = {"train": [], "val": []}
    for r in recs:
        if r["status"] == "ok":
            splits[r["split"]].append(r["id"])
    for name, ids in splits.items():
        voc.write_split(root, name, ids)
    return splits


def summarize(records: dict[int, dict], class_names: list[str]) -> dict[str, Any]:
    ok = [r for r in records.values() if r["status"] == "ok"]
    per_class = Counter(c for r in ok for c in r["classes"])
    reasons = Counter(r["reason"].split(":")[0] for r in records.values() if r["status"] != "ok")
    return {"samples": len(records), "written": len(ok), "rejected": len(records) - len(ok),
            "per_class": {c: per_class.get(c, 0) for c in class_names}, "reject_reasons": dict(reasons)}


def output_dir(params: Params, shard: tuple[int, int] | None = None) -> Path:
    root = params.resolve_path(params.dataset.out_dir)
    return root / "shards" / f"{shard[0]}-of-{shard[1]}" if shard else root


def read_meta(root: Path, need_params: bool = False) -> dict:
    """A dataset folder's ``dataset.json``; a one-line error when it is missing, corrupt, or (``need_params``)
    was not written by ``dmutils generate``."""
    path = Path(root) / META
    if not path.is_file():
        raise DataNotFoundError(f"{root} is not a dataset folder (no {META}); give a folder that 'dmutils generate' wrote")
    try:
        meta = json.loads(path.read_text())
    except ValueError as e:
        raise DataError(f"{path} is not valid JSON ({e}); make the dataset again or restore the file") from None
    if need_params and not isinstance(meta.get("params"), dict):
        raise DataError(f"{path} holds no 'params': {root} was not written by 'dmutils generate' (e.g. render-toy's real "
                        "splits or a spliced set); give a generated dataset")
    return meta


def prepare_output(root: Path, meta: dict, overwrite: bool = False) -> None:
    """Refuse a folder holding other data (unless ``overwrite``), then write ``dataset.json``."""
    meta_path = root / META
    if meta_path.is_file():
        old = read_meta(root)
        if old.get("params_hash") != meta["params_hash"]:
            if not overwrite:
                diff = params_diff(old.get("params", {}), meta["params"]) or ["(a file named by the params changed)"]
                shown = "; ".join(diff[:6]) + (f"; ... {len(diff) - 6} more" if len(diff) > 6 else "")
                raise ParamsError(f"{root} holds a dataset made with other params (hash {old.get('params_hash')} vs "
                                  f"{meta['params_hash']}: {shown}); pass --overwrite to replace it, or set "
                                  "dataset.out_dir to another folder")
            clear_output(root)
    elif root.is_dir() and any(p.name not in ("shards", LOCK_NAME) for p in root.iterdir()):
        if not overwrite:
            raise ParamsError(f"{root} is not empty and holds no {META}: not a dataset this project wrote; "
                              "choose an empty dataset.out_dir, or pass --overwrite")
        clear_output(root)
    ensure_writable_dir(root, "dataset.out_dir")
    atomic_write_bytes(meta_path, json.dumps(meta, indent=2, sort_keys=True).encode())


def clear_output(root: Path) -> None:
    """Remove what this project writes in a dataset folder (nothing else)."""
    for name in OUR_ENTRIES:
        p = root / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def parse_shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ParamsError(f"--shard {text!r} must look like i/n, e.g. 0/4 (shards are numbered 0..n-1)") from None
    if not (n >= 1 and 0 <= i < n):
        raise ParamsError(f"--shard {text}: need n >= 1 and 0 <= i < n (shards are numbered 0..n-1)")
    return i, n


def shard_indices(num_samples: int, shard: tuple[int, int] | None) -> list[int]:
    """Sample indices of a shard: ``i, i + n, i + 2n, ...`` (all when no shard)."""
    i, n = shard or (0, 1)
    return list(range(i, num_samples, n))

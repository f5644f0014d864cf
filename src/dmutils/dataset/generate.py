"""``dmutils generate params.yaml [--set ...] [--shard i/n] [--overwrite]``: the dataset factory.

Prompts (:mod:`dmutils.dataset.prompts`) -> images + attention maps (:mod:`dmutils.attention`)
-> masks (:func:`dmutils.masks.refine.make_mask`) -> a PASCAL VOC 2012 folder (:mod:`dmutils.data.voc`)::

    out/JPEGImages/syn_000000.jpg   out/SegmentationClass/syn_000000.png   (palette PNG, 255 = ignore)
    out/ImageSets/Segmentation/{train,val}.txt
    out/maps/syn_000000.npz          float16 cross maps per resolution (C, r, r) [+ self-attention]
    out/manifest.jsonl               one line per finished sample, index order
    out/dataset.json                 class names, palette, the params that decide the data, their hash

Why it is built this way:

- **Resumable, kill -9 safe.** Every file is written atomically (temp + fsync + rename) and the
  sample's manifest line last (flushed, fsynced); a sample is done iff its line is there. A
  re-run skips done samples. Lines are committed in index order, so an interrupted and resumed
  run writes the same manifest as an uninterrupted one.
- **Deterministic.** Sample ``i``'s prompt and seed come from (run.seed, i) alone. Every model call
  runs at the physical batch ``dataset.batch_size`` (a short batch is padded with copies whose output
  is dropped): on CPU, oneDNN convolutions give results that depend on the batch *size* (~1e-6) but
  not on the batch's other rows, so for one batch size the bytes are the same whatever the sharding
  or resuming. Another batch size gives the same prompts, seeds and noise, and pixels equal up to
  that float noise (a rare pixel one grey level off).
- **Masks are made from what is saved**: float16 maps and the JPEG-decoded image, so
  ``dmutils remask`` with the same mask params reproduces the labels exactly.
- **Post-processing never blocks generation**: masks/CRF/encoding run in a process pool
  (``dataset.workers``, spawned, one torch thread each, at a lower CPU priority; 0 = inline) while
  the next batch generates. Self-attention is captured only when the masks read it (tau > 0).
- **Bad samples are rejected, not written**: non-finite maps, a class word missing from the prompt,
  an empty mask for a named class, a class below ``dataset.min_area``; the manifest says why.
- **Other params, other folder.** ``dataset.json`` holds the hash of every param that decides the
  data (not ``batch_size``, ``workers``, ``num_samples``, ``out_dir``, ``splice``); a folder made with
  another hash is refused unless ``--overwrite``. Raising ``num_samples`` extends a dataset.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import time
import zipfile
from collections import Counter, deque
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from dmutils.config import MaskParams, Params
from dmutils.data import voc
from dmutils.dataset.prompts import PromptPlan, SampleSpec, sample_uniform
from dmutils.errors import DataError, DataNotFoundError, ParamsError
from dmutils.paths import atomic_write_bytes, ensure_writable_dir, remove_partial_writes

MANIFEST = "manifest.jsonl"
META = "dataset.json"
MAPS = "maps"
OUR_ENTRIES = (voc.IMAGES, voc.LABELS, "ImageSets", MAPS, MANIFEST, META, "shards")
NON_DATA = ("out_dir", "num_samples", "batch_size", "workers", "splice")


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

    from dmutils.config import deep_merge, explain

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


# ---------------------------------------------------------------------------------------------
# Post-processing of one sample (worker side): mask, checks, files
# ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def one_thread():
    """Masks are many small tensor ops run on one torch thread everywhere: inline and worker results
    are then the same bytes, and on a shared CPU more threads would only wait on each other."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def label_sample(image: np.ndarray, cross: dict[int, np.ndarray], self_attn: dict[int, np.ndarray] | None,
                 classes: list[str], class_ids: list[int], mask_params: MaskParams, min_area: float) -> tuple[np.ndarray | None, dict, str | None]:
    """Labels of one sample, the pixel fraction of each named class, and a reject reason (None = fine)."""
    from dmutils.masks.refine import MaskInputError, make_mask

    for res, m in cross.items():
        if not np.isfinite(m).all():
            return None, {}, f"non-finite maps: cross-attention at {res} has NaN/inf"
    for res, m in (self_attn or {}).items():
        if not np.isfinite(m).all():
            return None, {}, f"non-finite maps: self-attention at {res} has NaN/inf"
    try:
        with one_thread():
            labels, _ = make_mask(cross, image, mask_params, class_ids, self_attn, class_names=classes)
    except MaskInputError as e:
        return None, {}, f"mask error: {e}"
    fractions = {c: round(float((labels == k).mean()), 6) for c, k in zip(classes, class_ids)}
    for c, f in fractions.items():
        if f == 0:
            return labels, fractions, f"empty mask: class '{c}' is named in the prompt but has no pixels"
        if f < min_area:
            return labels, fractions, f"below min_area: class '{c}' covers {f:.4g} of the image < dataset.min_area {min_area}"
    return labels, fractions, None


def finish_sample(job: dict) -> dict:
    """Mask one generated sample and write its files; returns its manifest record (written by the caller)."""
    record = job["record"]
    if record.get("reason"):  # rejected before post-processing (e.g. a class word not in the prompt)
        return {**record, "status": "rejected", "fractions": {}}
    root = Path(job["root"])
    data = jpeg_bytes(job["image"])
    seen = decode_jpeg(data)  # masks are made on the image as saved, like remask will see it
    cross = {r: m.astype(np.float32) for r, m in job["cross"].items()}
    self_attn = {r: m.astype(np.float32) for r, m in job["self_attn"].items()} if job["self_attn"] else None
    labels, fractions, reason = label_sample(seen, cross, self_attn, record["classes"], job["class_ids"],
                                             MaskParams.model_validate(job["mask_params"]), job["min_area"])
    if reason:
        return {**record, "fractions": fractions, "status": "rejected", "reason": reason}
    sid = record["id"]
    if job["save_maps"]:
        arrays = {f"cross_{r}": m for r, m in job["cross"].items()}
        arrays.update({f"self_{r}": m for r, m in (job["self_attn"] or {}).items()})
        atomic_write_bytes(root / MAPS / f"{sid}.npz", npz_bytes(arrays))
    atomic_write_bytes(root / voc.IMAGES / f"{sid}.jpg", data)
    voc.write_label(root / voc.LABELS / f"{sid}.png", labels)
    return {**record, "fractions": fractions, "status": "ok", "reason": None}


def _init_worker() -> None:
    """One torch thread, and a lower CPU priority: where cores are few, generation keeps them and
    post-processing runs in its gaps (the last batch's masks are the only ones waited for)."""
    if hasattr(os, "nice"):
        os.nice(10)
    import torch

    torch.set_num_threads(1)
    import dmutils.masks.refine  # noqa: F401  (import cost paid at start-up, while the first batch generates)


class _Done:
    """A finished 'future' for the inline path (workers = 0)."""

    def __init__(self, value):
        self.value = value

    def done(self) -> bool:
        return True

    def result(self):
        return self.value


def make_pool(workers: int) -> ProcessPoolExecutor | None:
    """Post-processing workers, forked from a fork server that has imported torch and the mask code once.

    Why a fork server: a spawned worker imports torch afresh, ~3 s of one core per worker and per
    ``generate_dataset`` call (measured: 3.4 s CPU; 158 s wall at nice 10 on the busy 2-core machine),
    taken from generation on a small CPU. The server is started once per process and imports them once;
    later pools fork from it in under a second (0.7 s there), which is what studies and benchmarks that
    call ``generate_dataset`` / ``remask_dataset`` many times pay. It is a clean single-threaded process,
    so forking it is safe, unlike forking the main process, whose torch threads are running."""
    if workers <= 0:
        return None
    import multiprocessing

    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["dmutils.masks.refine", "dmutils.dataset.generate"])
    else:
        context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker)
    for _ in range(workers):  # start the processes now, not when the first sample is ready
        pool.submit(int)
    return pool


# ---------------------------------------------------------------------------------------------
# Generation (main process)
# ---------------------------------------------------------------------------------------------
def _reduce(maps, how: str):
    return maps.mean(0) if how == "mean" else maps.amax(0) if how == "max" else maps.sum(0)


def generate_batch(pipe, specs: list[SampleSpec], params: Params, batch_size: int) -> list[dict]:
    """Generate ``specs`` (padded to ``batch_size`` rows) with attention capture.

    Returns per sample: image (H, W, 3) uint8, cross {res: (C, r, r) float16}, self_attn
    {res: (N, N) float16} when the masks need it, and a reject reason or None. Self-attention is
    captured only when the masks read it (:func:`dmutils.masks.refine.uses_self_attention`)."""
    import dataclasses

    import torch

    from dmutils.attention.capture import capture
    from dmutils.attention.maps import WordLookupError
    from dmutils.attention.spec import CaptureSpec
    from dmutils.masks.refine import uses_self_attention

    rows = specs + [specs[-1]] * (batch_size - len(specs))
    m = params.model
    class_prompts = [s.class_prompt for s in rows] if params.prompts.class_prompt == "cross_attention" else None
    need_self = uses_self_attention(params.masks)
    spec = CaptureSpec.from_params(params.capture)
    if not need_self:
        spec = dataclasses.replace(spec, self_resolutions=())
    prompts = [s.prompt for s in rows]
    with torch.no_grad(), capture(pipe, spec, class_prompts=class_prompts) as rec:
        out = pipe(prompts, num_inference_steps=m.num_inference_steps, guidance_scale=m.guidance_scale,
                   height=m.height, width=m.width, output_type="np",
                   generator=[torch.Generator("cpu").manual_seed(s.seed) for s in rows])
        maps = rec.maps(class_prompts or prompts)
    images = (np.clip(np.asarray(out.images), 0, 1) * 255).round().astype(np.uint8)
    results = []
    for i, s in enumerate(specs):
        item = {"image": images[i], "cross": {}, "self_attn": None, "reason": None}
        try:
            pos = [maps.token_positions(i, s.words[c]) for c in s.classes]
        except WordLookupError as e:
            item["reason"] = f"class word not in prompt: {e}"
            results.append(item)
            continue
        for res in maps.cross_resolutions:
            a = maps.cross(i, res)
            item["cross"][res] = torch.stack([_reduce(a[p], spec.token_reduce) for p in pos]).numpy().astype(np.float16)
        if need_self:
            item["self_attn"] = {r: maps.self_attention(i, r).numpy().astype(np.float16) for r in maps.self_resolutions}
        results.append(item)
    return results


def sample_job(s: SampleSpec, item: dict, params: Params, params_hash: str, root: Path) -> dict:
    """What :func:`finish_sample` needs for one generated sample: its manifest record (without the
    outcome) and its image and maps. The same for every way of running generation."""
    ds = params.dataset
    class_index = {c: k + 1 for k, c in enumerate(params.class_names)}
    record = {"index": s.index, "id": s.id, "prompt": s.prompt, "seed": s.seed, "classes": list(s.classes),
              "words": s.words, "class_prompt": s.class_prompt, "source": s.source, "model": params.model.path,
              "params_hash": params_hash, "reason": item["reason"],
              "split": "val" if sample_uniform(params.run.seed, s.index, "split") < ds.val_fraction else "train"}
    return {"record": record, "root": str(root), "image": item["image"], "cross": item["cross"],
            "self_attn": item["self_attn"], "class_ids": [class_index[c] for c in s.classes],
            "mask_params": params.masks.model_dump(mode="json"), "min_area": ds.min_area, "save_maps": ds.save_maps}


def _load_pipeline(params: Params):
    from dmutils.pipeline import load_pipeline

    return load_pipeline(params.model)


def _check_before_compute(params: Params) -> None:
    """Errors that would otherwise surface after the first batch."""
    m = params.masks
    if m.refine == "affinity":
        raise ParamsError("masks.refine='affinity' needs a learned affinity fitted on pseudo-masks and cannot run inside "
                          "'dmutils generate'; generate with masks.refine='self_attention' or 'none' (maps are saved), "
                          "then refine with dmutils.masks.affinity")
    if m.threshold_mode == "per_class":
        from dmutils.masks.refine import class_thresholds, read_threshold_table

        if not m.threshold_table:
            raise ParamsError("masks.threshold_mode='per_class' needs masks.threshold_table (the CSV study 02 writes)")
        try:
            class_thresholds(read_threshold_table(m.threshold_table), params.class_names)
        except ValueError as e:
            raise ParamsError(str(e)) from None
    if len(params.classes) > 254:
        raise ParamsError(f"{len(params.classes)} classes do not fit a palette PNG (at most 254 besides background and ignore)")


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
    elif root.is_dir() and any(p.name != "shards" for p in root.iterdir()):
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


def generate_dataset(params: Params, shard: tuple[int, int] | None = None, progress: bool = True,
                     overwrite: bool = False, pipe=None, ray: str | None = None, _die_at: tuple[int, str] | None = None) -> dict[str, Any]:
    """Generate (or resume) the dataset ``params`` describe; returns the summary.

    ``shard=(i, n)`` writes samples ``i, i+n, ...`` to ``<out_dir>/shards/i-of-n`` (merge them with
    :func:`dmutils.dataset.shards.merge_shards`). ``pipe``: an already loaded pipeline (default:
    ``load_pipeline(params.model)``, loaded only if something is left to do). ``ray``: a Ray cluster's
    address, or ``"local"`` (RAY_ADDRESS, else a cluster started here), generates on its actors
    (:mod:`dmutils.dataset.ray_backend`; ``_die_at``: its fault injection for tests)."""
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    plan = PromptPlan(params)  # bad prompt sources fail here, before any compute
    _check_before_compute(params)
    root = output_dir(params, shard)
    meta = dataset_meta(params)
    prepare_output(root, meta, overwrite)
    remove_partial_writes(root)  # a killed run's half-written files; their samples have no manifest line and are redone
    manifest = Manifest(root / MANIFEST)
    records = manifest.read()
    todo = [i for i in shard_indices(params.dataset.num_samples, shard) if i not in records]
    ds = params.dataset
    if ray is not None:
        info = {}
        if todo:
            from dmutils.dataset.ray_backend import generate_with_ray

            info = generate_with_ray(params, root, meta, todo, records, manifest, ray, progress, _die_at)
        write_splits(root, records)
        return _summary(params, shard, root, records, todo, time.perf_counter() - t0) | {"ray": info}
    pool = make_pool(ds.workers) if todo else None  # workers import while the model loads
    pending: deque[Future | _Done] = deque()
    max_pending = ds.batch_size * (ds.workers + 2)
    bar = tqdm(total=len(todo), desc=f"generate {root.name}", unit="sample", disable=not progress or not todo)

    def commit(keep: int) -> None:
        """Write finished records in index order; wait while more than ``keep`` are in flight."""
        while pending and (pending[0].done() or len(pending) > keep):
            rec = pending.popleft().result()
            manifest.append(rec)
            records[rec["index"]] = rec
            bar.update(1)

    try:
        if todo and pipe is None:
            pipe = _load_pipeline(params)
        for start in range(0, len(todo), ds.batch_size):
            specs = plan.specs(todo[start : start + ds.batch_size])
            for s, item in zip(specs, generate_batch(pipe, specs, params, ds.batch_size)):
                job = sample_job(s, item, params, meta["params_hash"], root)
                pending.append(pool.submit(finish_sample, job) if pool else _Done(finish_sample(job)))
            commit(keep=max_pending)
        commit(keep=0)
    finally:
        bar.close()
        if pool:
            pool.shutdown(wait=True, cancel_futures=True)
    write_splits(root, records)
    return _summary(params, shard, root, records, todo, time.perf_counter() - t0)


def _summary(params: Params, shard, root: Path, records: dict[int, dict], todo: list[int], seconds: float) -> dict[str, Any]:
    return {"out_dir": str(root), **summarize(records, params.class_names), "generated_now": len(todo),
            "skipped_done": len(shard_indices(params.dataset.num_samples, shard)) - len(todo), "seconds": round(seconds, 2),
            "samples_per_s": round(len(todo) / seconds, 3) if todo else 0.0}


def format_summary(summary: dict) -> str:
    per_class = ", ".join(f"{c} {n}" for c, n in summary["per_class"].items())
    reasons = ", ".join(f"{r} {n}" for r, n in summary["reject_reasons"].items()) or "none"
    return (f"{summary['out_dir']}: {summary['written']} written, {summary['rejected']} rejected ({reasons}); "
            f"generated now {summary['generated_now']} in {summary['seconds']} s ({summary['samples_per_s']} samples/s), "
            f"{summary['skipped_done']} already done\nper class: {per_class}")

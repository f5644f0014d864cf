"""``dmutils remask DATASET_DIR [params] [--set masks.threshold=0.4] [--out DIR]``: new masks from
the saved maps, no generation.

The dataset's own params (its ``dataset.json``) are the base; a params file contributes its
``masks`` section and ``dataset.min_area``, ``--set`` may change ``masks.*`` and ``dataset.min_area``
only (anything else needs ``dmutils generate``). Every sample whose maps were saved is labelled
again -- also one an earlier remask rejected, so a looser threshold can bring it back. Generation's
own rejects (no maps saved) stay rejected. With the same mask params the labels come out byte for
byte as generation wrote them (both work on the float16 maps and the JPEG as saved).

Without ``--out`` the dataset is updated in place (labels, manifest, splits, dataset.json; a
sample now rejected keeps its image and maps but loses its label); if interrupted, run it again.
"""
from __future__ import annotations

import json
from pathlib import Path

from dmutils.config import MaskParams, deep_merge, load_params, parse_overrides
from dmutils.data import voc
from dmutils.dataset.labelling import label_sample
from dmutils.dataset.layout import (
    MANIFEST,
    MAPS,
    META,
    Manifest,
    dataset_meta,
    decode_jpeg,
    params_from_meta,
    prepare_output,
    read_maps,
    read_meta,
    summarize,
    write_splits,
)
from dmutils.dataset.pool import Finished, make_pool
from dmutils.dataset.preview import with_preview
from dmutils.errors import ParamsError
from dmutils.locks import folder_lock
from dmutils.masks.refine import uses_self_attention
from dmutils.paths import atomic_write_bytes
from dmutils.progress import progress_bar


def remask_sample(job: dict) -> dict:
    src, out, rec = Path(job["src"]), Path(job["out"]), job["record"]
    sid = rec["id"]
    image_bytes = (src / voc.IMAGES / f"{sid}.jpg").read_bytes()
    cross, self_attn = read_maps(src / MAPS / f"{sid}.npz")
    labels, fractions, reason = label_sample(decode_jpeg(image_bytes), cross, self_attn, rec["classes"], job["class_ids"],
                                             MaskParams.model_validate(job["mask_params"]), job["min_area"])
    if out != src:
        atomic_write_bytes(out / voc.IMAGES / f"{sid}.jpg", image_bytes)
        atomic_write_bytes(out / MAPS / f"{sid}.npz", (src / MAPS / f"{sid}.npz").read_bytes())
    label_path = out / voc.LABELS / f"{sid}.png"
    if reason:
        label_path.unlink(missing_ok=True)
    else:
        voc.write_label(label_path, labels)
    return {**rec, "fractions": fractions, "status": "rejected" if reason else "ok", "reason": reason,
            "params_hash": job["params_hash"]}


def mask_overrides(params_file: str | None, sets: list[str]) -> dict:
    """The ``masks`` (and ``dataset.min_area``) overrides a remask may apply, from a params file and ``--set`` items."""
    over: dict = {}
    if params_file:
        p = load_params(params_file)
        over = {"masks": p.masks.model_dump(mode="json"), "dataset": {"min_area": p.dataset.min_area}}
    extra = parse_overrides(sets)
    flat = [f"{k}.{kk}" for k, v in extra.items() for kk in (v if isinstance(v, dict) else [""])]
    bad = [k.rstrip(".") for k in flat if not (k.startswith("masks.") or k == "dataset.min_area")]
    if bad:
        raise ParamsError(f"remask re-makes masks only; {', '.join(bad)} needs new generation ('dmutils generate'); "
                          "allowed: masks.*, dataset.min_area")
    return deep_merge(over, extra)


def remask_dataset(src: str | Path, overrides: dict | None = None, out: str | Path | None = None, workers: int | None = None,
                   progress: bool = True) -> dict:
    """Re-make the masks of dataset ``src`` with mask ``overrides`` (``{"masks": {...}}``); returns the summary."""
    src = Path(src)
    meta = read_meta(src, need_params=True)
    params = params_from_meta(meta, overrides)
    records = Manifest(src / MANIFEST).read()
    todo = [r for r in records.values() if (src / MAPS / f"{r['id']}.npz").is_file()]
    if records and not todo:
        raise ParamsError(f"{src} has no saved maps (dataset.save_maps was false); regenerate with --set dataset.save_maps=true")
    if todo and uses_self_attention(params.masks) and read_maps(src / MAPS / f"{todo[0]['id']}.npz")[1] is None:
        raise ParamsError(f"masks.refine='self_attention' with masks.tau={params.masks.tau} needs self-attention maps, but {src} "
                          "was generated with masks that do not read them (tau=0 or refine!='self_attention'), so none were "
                          "saved; remask with masks.tau=0, or generate again with the tau you want")
    out = Path(out) if out else src
    with folder_lock(out, "--out"):  # one job a folder: not while a generate or another remask writes there
        return _remask_into(src, out, params, records, todo, workers, progress)


def _remask_into(src: Path, out: Path, params, records: dict[int, dict], todo: list[dict], workers: int | None,
                 progress: bool) -> dict:
    new_meta = dataset_meta(params)
    if out != src:
        prepare_output(out, new_meta, overwrite=False)
    class_index = {c: k + 1 for k, c in enumerate(params.class_names)}
    common = {"src": str(src), "out": str(out), "mask_params": params.masks.model_dump(mode="json"),
              "min_area": params.dataset.min_area, "params_hash": new_meta["params_hash"]}
    pool = make_pool(params.dataset.workers if workers is None else workers, out)
    jobs = [{**common, "record": r, "class_ids": [class_index[c] for c in r["classes"]]} for r in sorted(todo, key=lambda r: r["index"])]
    try:
        futures = [pool.submit(remask_sample, j) if pool else Finished(remask_sample(j)) for j in jobs]
        new = {r["index"]: r for r in (f.result() for f in progress_bar(futures, desc="remask", unit="sample", disable=not progress))}
    finally:
        if pool:
            pool.shutdown(wait=True)
    merged = {i: new.get(i, {**r, "params_hash": new_meta["params_hash"]}) for i, r in records.items()}
    Manifest(out / MANIFEST).rewrite([merged[i] for i in sorted(merged)])
    write_splits(out, merged)
    atomic_write_bytes(out / META, json.dumps(new_meta, indent=2, sort_keys=True).encode())
    return with_preview({"out_dir": str(out), "remasked": len(new), **summarize(merged, params.class_names)})

"""Post-processing of one sample (worker side): its mask, the checks that reject it, its files.
The same function serves every way of running generation (inline, process pool, Ray), so the bytes agree."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np

from dmutils.config import MaskParams
from dmutils.data import voc
from dmutils.dataset.layout import MAPS, decode_jpeg, jpeg_bytes, npz_bytes
from dmutils.dataset.pool import one_thread
from dmutils.paths import atomic_write_bytes


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


def finish_sample_or_die(die_at: tuple[int, str], job: dict) -> dict:
    """:func:`finish_sample`, but the worker is SIGKILLed half-way through writing sample ``die_at[0]``'s image,
    once (marked by the file ``die_at[1]``): the tests' killed post-processing worker."""
    if job["record"]["index"] == die_at[0] and not Path(die_at[1]).exists():
        Path(die_at[1]).write_text(str(os.getpid()))
        root = Path(job["root"]) / voc.IMAGES
        root.mkdir(parents=True, exist_ok=True)
        (root / f".{job['record']['id']}.jpg.killed.tmp").write_bytes(jpeg_bytes(job["image"])[:100])  # as atomic_write_bytes's
        os.kill(os.getpid(), signal.SIGKILL)
    return finish_sample(job)

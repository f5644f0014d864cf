"""``dmutils generate params.yaml [--set ...] [--shard i/n] [--overwrite]``: the dataset factory.

Prompts (:mod:`dmutils.dataset.prompts`) -> images + attention maps (:mod:`dmutils.attention`)
-> masks (:func:`dmutils.masks.refine.make_mask`) -> a PASCAL VOC 2012 folder (:mod:`dmutils.data.voc`)::

    out/JPEGImages/syn_000000.jpg   out/SegmentationClass/syn_000000.png   (palette PNG, 255 = ignore)
    out/ImageSets/Segmentation/{train,val}.txt
    out/maps/syn_000000.npz          float16 cross maps per resolution (C, r, r) [+ self-attention]
    out/manifest.jsonl               one line per finished sample, index order
    out/dataset.json                 class names, palette, the params that decide the data, their hash
    out/preview.{png,html}           contact sheet of the first samples (:mod:`dmutils.dataset.preview`; not in a shard)

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
  (``dataset.workers``, forked from a fork server, one torch thread each, at a lower CPU priority; 0 = inline)
  while the next batch generates. Self-attention is captured only when the masks read it (tau > 0). A killed
  worker (the out-of-memory killer) costs a new pool, and the samples not yet written are redone
  (:class:`dmutils.dataset.pool.Pool`): same bytes.
- **Bad samples are rejected, not written**: non-finite maps, a class word missing from the prompt,
  an empty mask for a named class, a class below ``dataset.min_area``; the manifest says why.
- **Other params, other folder.** ``dataset.json`` holds the hash of every param that decides the
  data (not ``batch_size``, ``workers``, ``num_samples``, ``out_dir``, ``splice``); a folder made with
  another hash is refused unless ``--overwrite``. Raising ``num_samples`` extends a dataset.
"""
from __future__ import annotations

import errno
import time
from collections import deque
from functools import partial
from pathlib import Path
from typing import Any

from dmutils.config import Params
from dmutils.dataset.batch import generate_batch, pipeline_for, sample_job
from dmutils.dataset.labelling import finish_sample, finish_sample_or_die
from dmutils.dataset.layout import (
    MANIFEST,
    Manifest,
    dataset_meta,
    output_dir,
    prepare_output,
    shard_indices,
    summarize,
    write_splits,
)
from dmutils.dataset.pool import Finished, Task, make_pool
from dmutils.dataset.preview import with_preview
from dmutils.dataset.prompts import PromptPlan
from dmutils.errors import DiskFullError, ParamsError
from dmutils.locks import folder_lock
from dmutils.paths import remove_partial_writes
from dmutils.progress import progress_bar


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


def generate_dataset(params: Params, shard: tuple[int, int] | None = None, progress: bool = True,
                     overwrite: bool = False, pipe=None, ray: str | None = None, _die_at: tuple[int, str] | None = None) -> dict[str, Any]:
    """Generate (or resume) the dataset ``params`` describe; returns the summary.

    ``shard=(i, n)`` writes samples ``i, i+n, ...`` to ``<out_dir>/shards/i-of-n`` (merge them with
    :func:`dmutils.dataset.shards.merge_shards`). ``pipe``: an already loaded pipeline (default:
    ``load_pipeline(params.model)``, loaded only if something is left to do). ``ray``: a Ray cluster's
    address, or ``"local"`` (RAY_ADDRESS, else a cluster started here), generates on its actors
    (:mod:`dmutils.dataset.ray_backend`). ``_die_at=(i, marker)``: fault injection for tests, the Ray actor or
    post-processing worker (``dataset.workers`` >= 1) handling sample ``i`` dies, once."""
    t0 = time.perf_counter()
    plan = PromptPlan(params)  # bad prompt sources fail here, before any compute
    _check_before_compute(params)
    root = output_dir(params, shard)
    with folder_lock(root):  # a second job on this folder is refused here, before it reads or writes anything
        try:
            return _generate(params, plan, root, shard, progress, overwrite, pipe, ray, _die_at, t0)
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise disk_full(root, params, shard) from None


def _generate(params: Params, plan: PromptPlan, root: Path, shard, progress: bool, overwrite: bool, pipe, ray,
              _die_at, t0: float) -> dict[str, Any]:
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
        return with_preview(_summary(params, shard, root, records, todo, time.perf_counter() - t0) | {"ray": info}, shard)
    pool = make_pool(ds.workers, root) if todo else None  # workers import while the model loads
    finish = finish_sample if _die_at is None else partial(finish_sample_or_die, _die_at)
    pending: deque[Task | Finished] = deque()
    max_pending = ds.batch_size * (ds.workers + 2)
    bar = progress_bar(total=len(todo), desc=f"generate {root.name}", unit="sample", disable=not progress or not todo)

    def commit(keep: int) -> None:
        """Write finished records in index order; wait while more than ``keep`` are in flight."""
        while pending and (pending[0].done() or len(pending) > keep):
            rec = pending.popleft().result()
            manifest.append(rec)
            records[rec["index"]] = rec
            bar.update(1)

    try:
        if todo and pipe is None:
            pipe = pipeline_for(params)
        for start in range(0, len(todo), ds.batch_size):
            specs = plan.specs(todo[start : start + ds.batch_size])
            for s, item in zip(specs, generate_batch(pipe, specs, params, ds.batch_size)):
                job = sample_job(s, item, params, meta["params_hash"], root)
                pending.append(pool.submit(finish, job) if pool else Finished(finish_sample(job)))
            commit(keep=max_pending)
        commit(keep=0)
    finally:
        bar.close()
        if pool:
            pool.shutdown(wait=True, cancel_futures=True)
    write_splits(root, records)
    return with_preview(_summary(params, shard, root, records, todo, time.perf_counter() - t0), shard)


def disk_full(root: Path, params: Params, shard) -> DiskFullError:
    """The one line for a disk that filled up part-way: the folder, and the space the rest needs, estimated from
    the bytes per finished sample so far (every sample writes files of about the same size)."""
    remove_partial_writes(root)  # writes of other workers cut short by the same full disk
    done = len(Manifest(root / MANIFEST).read())
    total = len(shard_indices(params.dataset.num_samples, shard))
    left = total - done
    if done:
        used = sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and "shards" not in p.relative_to(root).parts)
        per = used / done
        need = f"about {_size(per * left)} more for the {left} samples left ({_size(per)} a sample so far)"
    else:
        need = f"space for all {left} samples (none finished, so no estimate yet)"
    return DiskFullError(f"{root}: the disk is full (no space left on device) after {done} of {total} samples; it needs "
                         f"{need}; free that much, or set dataset.out_dir to a larger disk, and re-run to resume")


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _summary(params: Params, shard, root: Path, records: dict[int, dict], todo: list[int], seconds: float) -> dict[str, Any]:
    return {"out_dir": str(root), **summarize(records, params.class_names), "generated_now": len(todo),
            "skipped_done": len(shard_indices(params.dataset.num_samples, shard)) - len(todo), "seconds": round(seconds, 2),
            "samples_per_s": round(len(todo) / seconds, 3) if todo else 0.0}


def format_summary(summary: dict) -> str:
    per_class = ", ".join(f"{c} {n}" for c, n in summary["per_class"].items())
    reasons = ", ".join(f"{r} {n}" for r, n in summary["reject_reasons"].items()) or "none"
    return (f"{summary['out_dir']}: {summary['written']} written, {summary['rejected']} rejected ({reasons}); "
            f"generated now {summary['generated_now']} in {summary['seconds']} s ({summary['samples_per_s']} samples/s), "
            f"{summary['skipped_done']} already done\nper class: {per_class}"
            + (f"\npreview: {summary['preview']} (and .html beside it)" if summary.get("preview") else ""))

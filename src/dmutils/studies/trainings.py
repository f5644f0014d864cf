"""What the recipe studies (issue 24: noise learning, open vocabulary, scaling) share: many short segmenter trainings
on the toy world, each scored per test image and kept on disk.

- **Per-image counts, not one mIoU.** A training's result is its ``inter`` / ``union`` pixel counts ``[images,
  classes]`` on the real test split, so intervals over test images and seeds (:func:`dmutils.stats.seeds_bootstrap`)
  and paired differences are recomputed from the cache at any time.
- **Cached by settings.** One JSON a training, named by a hash of everything it depends on (train params, data,
  seed, arm): a study stopped half-way resumes, and a changed setting retrains only what it changes.
- **Real data from the toy world's renderer.** The real splits are rendered by
  :func:`dmutils.data.toyworld.write_real_splits` (what ``dmutils render-toy`` runs) into the study's own folder, as
  many training scenes as the study needs (scene ``i`` is the same scene whatever the size, so 800 extends the
  usual 400); the user's ``real.root`` is never rewritten.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dmutils import stats
from dmutils.config import Params, deep_merge, explain
from dmutils.errors import ParamsError
from dmutils.paths import atomic_write_bytes
from dmutils.studies.thresholds import stable_hash

# A segformer small enough for a smoke run (--quick, tests): seconds a training on one core.
TINY_TRAIN = {"config": {"hidden_sizes": [8, 16, 16, 16], "depths": [1, 1, 1, 1], "num_attention_heads": [1, 1, 1, 1],
                         "decoder_hidden_size": 16}, "image_size": 32, "batch_size": 4, "photometric": False,
              "noise_learning": {"folds": 2, "fold_steps": 2}}


def override(params: Params, over: dict[str, Any], where: str = "study settings") -> Params:
    """``params`` with the nested dict ``over`` merged in and validated (a bad value names ``where``)."""
    from pydantic import ValidationError

    try:
        return Params.model_validate(deep_merge(params.model_dump(mode="json"), over))
    except ValidationError as e:
        raise explain(e, where) from None


def with_seed(params: Params, seed: int) -> Params:
    """The params of one training seed (``run.seed``: batches, initialisation, noise-learning folds)."""
    return params.model_copy(update={"run": params.run.model_copy(update={"seed": int(seed)})})


def check_toy(params: Params, study: str) -> None:
    """These studies need exact labels and a renderer that can make more: the toy world."""
    if params.real.kind != "toy":
        raise ParamsError(f"the {study} study runs on the toy world (exact labels, more scenes on demand); "
                          f"real.kind is {params.real.kind!r}: use params/toy.yaml or set real.kind=toy")


def check_sizes(name: str, values, minimum: int = 1, distinct: bool = True) -> list[int]:
    """A list of sizes (seeds, sample counts) from the user: integers >= ``minimum``, distinct unless not asked."""
    try:
        out = [int(v) for v in values]
    except (TypeError, ValueError):
        raise ParamsError(f"{name} must be integers, got {values!r}") from None
    if not out or any(v < minimum for v in out) or distinct and len(set(out)) != len(out):
        raise ParamsError(f"{name} must be {'distinct ' if distinct else ''}integers >= {minimum}, got {out}")
    return out


def real_splits(folder: str | Path, n_train: int, n_test: int, image_size: int = 64):
    """The toy world's real train and test splits (first ``n_train`` and ``n_test`` scenes) rendered into
    ``folder/toy-real-<size>px`` (once; later calls read them, rendering only scenes not there yet)."""
    from dmutils.data.toyworld import write_real_splits
    from dmutils.paths import ensure_writable_dir
    from dmutils.segment.data import VOCLayoutDataset

    root = Path(folder) / f"toy-real-{image_size}px"
    meta = root / "dataset.json"
    have = json.loads(meta.read_text()).get("sizes", {}) if meta.is_file() else {}
    if have.get("train", 0) < n_train or have.get("test", 0) < n_test:
        ensure_writable_dir(root, "--cache (the study's folder)")
        write_real_splits(root, {"train": max(n_train, have.get("train", 0)), "test": max(n_test, have.get("test", 0))},
                          image_size)
    return first_n(VOCLayoutDataset(root, "train"), n_train), first_n(VOCLayoutDataset(root, "test"), n_test)


def first_n(dataset, n: int):
    """The first ``n`` samples (nested subsets: the first 100 are among the first 200)."""
    import torch

    if n > len(dataset):
        raise ParamsError(f"asked for {n} samples of {getattr(dataset, 'root', 'a dataset')}, which has {len(dataset)}")
    sub = torch.utils.data.Subset(dataset, list(range(n)))
    sub.classes, sub.root = list(dataset.classes), f"{getattr(dataset, 'root', 'dataset')}[first {n}]"
    return sub


def image_scores(seg, test, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Per-image ``inter``, ``union`` ``[images, classes]`` of ``seg``'s predictions on ``test`` (labels at native size,
    255 ignored): pooled, they give :func:`dmutils.segment.evaluate.evaluate`'s mIoU."""
    from dmutils.segment.evaluate import predict_images

    inter, union = [], []
    for start in range(0, len(test), batch_size):
        samples = [test[i] for i in range(start, min(start + batch_size, len(test)))]
        probs = predict_images(seg, [im for im, _ in samples])
        i, u = stats.image_counts([p.argmax(0).numpy() for p in probs], [lab for _, lab in samples], seg.num_classes)
        inter.append(i)
        union.append(u)
    return np.concatenate(inter), np.concatenate(union)


def train_and_count(params: Params, datasets: list, test, progress: bool = False) -> dict[str, Any]:
    """Train ``params.train`` (seed ``run.seed``) on ``datasets``; the test counts and what it cost."""
    from dmutils.segment.train import train_segmenter

    wall, cpu = time.perf_counter(), time.process_time()
    seg = train_segmenter(params, datasets, progress=progress).segmenter
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    inter, union = image_scores(seg, test, params.train.eval_batch_size)
    return {"inter": inter.tolist(), "union": union.tolist(), "train_samples": int(sum(map(len, datasets))),
            "train_seconds": round(wall, 2), "train_cpu_seconds": round(cpu, 2), "miou": float(stats.pooled_miou(inter, union))}


class JsonCache:
    """One JSON file a key under ``folder`` (None: nothing kept). Keys are :func:`key` hashes of the settings."""

    def __init__(self, folder: str | Path | None):
        self.folder = Path(folder) if folder is not None else None
        if self.folder is not None:
            from dmutils.paths import ensure_writable_dir

            ensure_writable_dir(self.folder, "--cache (the study's folder)")
        self.hits = self.misses = 0

    def get(self, key: str) -> dict | None:
        f = self.folder / f"{key}.json" if self.folder is not None else None
        if f is None or not f.is_file():
            return None
        try:
            return json.loads(f.read_text())
        except ValueError:  # a file cut short outside the atomic writer: recompute it
            return None

    def put(self, key: str, value: dict) -> None:
        if self.folder is not None:
            atomic_write_bytes(self.folder / f"{key}.json", json.dumps(value).encode())

    def get_or_compute(self, key: str, compute) -> tuple[dict, bool]:
        """(value, whether it came from the cache)."""
        hit = self.get(key)
        if hit is not None:
            self.hits += 1
            return hit, True
        self.misses += 1
        value = compute()
        self.put(key, value)
        return value, False


def key(prefix: str, params: Params, **settings: Any) -> str:
    """A cache key: ``prefix`` and a hash of the train params, the training seed (``run.seed``) and ``settings`` (data
    sizes, arm, ...)."""
    return f"{prefix}-" + stable_hash({"train": params.model_dump(mode="json")["train"], "seed": params.run.seed, **settings})


def stacked(results: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """``[seeds, images, classes]`` counts of trainings that differ only in their seed."""
    return (np.asarray([r["inter"] for r in results], np.float64), np.asarray([r["union"] for r in results], np.float64))


def interval(results: list[dict], baseline: list[dict] | None = None, statistic=None, seed: int = 0) -> dict[str, float]:
    """:func:`dmutils.stats.seeds_bootstrap` of trainings (one per seed), or their paired difference to ``baseline``
    (the same seeds, in the same order)."""
    i, u = stacked(results)
    if baseline is None:
        return stats.seeds_bootstrap(i, u, statistic=statistic, seed=seed)
    bi, bu = stacked(baseline)
    return stats.seeds_bootstrap(i, u, bi, bu, statistic=statistic, seed=seed)


def flat(prefix: str, ci: dict[str, float]) -> dict[str, float]:
    """``{prefix: value, prefix_lo: ..., prefix_hi: ...}``: one interval as table columns."""
    return {prefix: ci["value"], f"{prefix}_lo": ci["ci_lo"], f"{prefix}_hi": ci["ci_hi"]}


def records(df: pd.DataFrame) -> list[dict]:
    """A table as JSON-able rows (NaN as None) for a benchmark's result."""
    return json.loads(df.to_json(orient="records"))

"""Study 05's second score: the mIoU on the real test split of a segmenter trained on a variant's data.

The grid file names the variants worth a training (``segmenter_variants: [baseline, "tau: 1"]``);
a variant whose overrides touch only ``train.*`` or ``dataset.splice.*`` (noise learning,
splicing) changes nothing but the training, so it is always scored this way. A variant's training
set is the ablation samples labelled with its masks as the dataset factory labels them
(:func:`dmutils.dataset.labelling.label_sample`: rejects dropped), minus the worst-agreeing fraction when
``train.noise_learning.enabled``, plus DiffuMask's mosaics of the rest when ``dataset.splice.enabled`` (the order
``dmutils train`` uses);
``params.train`` trains it and ``real.test_split`` measures it. Few samples and short trainings
(the report's budget) make these numbers indicative, not the paper's; the segmenter cache key is the
mask key plus the train, splice, real-data and min-area settings.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from dmutils.config import Params
from dmutils.studies.thresholds import stable_hash, variant_maps

TRAINING_ONLY = ("train.", "dataset.splice.")


def training_only(overrides: dict[str, Any]) -> bool:
    """A variant that changes how the segmenter trains, not the masks (splicing, noise learning)."""
    return bool(overrides) and all(str(k).startswith(TRAINING_ONLY) for k in overrides)


def segmenter_key(params: Params, mask_key: str) -> str:
    d = params.model_dump(mode="json")
    return "seg-" + stable_hash({"masks": mask_key, "train": d["train"], "splice": d["dataset"]["splice"], "real": d["real"],
                           "min_area": d["dataset"]["min_area"]})


def training_set(samples: Sequence, params: Params):
    """The variant's synthetic training set in memory (an ArrayDataset), and how many samples its masks rejected."""
    from dmutils.dataset.labelling import label_sample
    from dmutils.segment.data import ArrayDataset

    pairs, rejected = [], 0
    for s in samples:
        cross, self_attn = variant_maps(s, params)
        labels, _, reason = label_sample(s.image, cross, self_attn, list(s.spec.classes), s.class_ids, params.masks,
                                         params.dataset.min_area)
        if reason:
            rejected += 1
        else:
            pairs.append((s.image, labels))
    return ArrayDataset(pairs, ["background", *params.class_names], root="ablation samples"), rejected


def training_data(data, params: Params, progress: bool = False) -> list:
    """The datasets a segmenter trains on, as ``dmutils train`` makes them from a synthetic set: the samples noise
    learning keeps (``train.noise_learning``), then DiffuMask's mosaics of those (``dataset.splice``)."""
    if params.train.noise_learning.enabled:
        from dmutils.segment.noise import noise_learning

        data, _ = noise_learning(params, data, progress=progress)
    if not params.dataset.splice.enabled:
        return [data]
    from dmutils.dataset.splice import MosaicSet

    return [data, MosaicSet(data, params.dataset.splice, params.run.seed)]


def segmenter_score(samples: Sequence, params: Params, test, progress: bool = False) -> dict[str, Any]:
    """Train ``params.train`` on the variant's training set; mIoU on ``test`` and what it trained on."""
    from dmutils.segment.evaluate import evaluate
    from dmutils.segment.train import train_segmenter

    data, rejected = training_set(samples, params)
    if len(data) < max(2, params.train.noise_learning.folds if params.train.noise_learning.enabled else 1):
        return {"segmenter_miou": float("nan"), "train_samples": len(data), "rejected": rejected, "train_seconds": 0.0}
    t0 = time.perf_counter()
    datasets = training_data(data, params, progress)
    seg = train_segmenter(params, datasets, progress=progress).segmenter
    seconds = time.perf_counter() - t0
    miou = evaluate(seg, test, batch_size=params.train.eval_batch_size).miou
    return {"segmenter_miou": float(miou), "train_samples": sum(len(d) for d in datasets), "rejected": rejected,
            "train_seconds": round(seconds, 2)}


def nan_score() -> dict[str, Any]:
    return {"segmenter_miou": np.nan, "train_samples": np.nan, "rejected": np.nan, "train_seconds": np.nan}

"""DiffuMask's noise learning: find the synthetic samples whose masks the data itself disagrees with.

Split the synthetic set into k folds; train on k-1, predict the held-out fold, and score each
held-out sample by the IoU of its mask with that prediction. A mask the other (k-1)/k of the data
cannot reproduce is likely wrong (a missed object, a leaked background), so the worst
``drop_fraction`` are dropped before the final training.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torchmetrics.functional.classification import multiclass_confusion_matrix

from dmutils.config import Params
from dmutils.segment.data import IGNORE_INDEX


def mask_agreement(pred: np.ndarray, mask: np.ndarray, num_classes: int) -> float:
    """Mean IoU over the classes present in either map (ignore pixels of ``mask`` excluded)."""
    from dmutils.segment.evaluate import iou_from_confusion

    cm = multiclass_confusion_matrix(torch.from_numpy(pred.astype(np.int64)), torch.from_numpy(mask.astype(np.int64)),
                                     num_classes, ignore_index=IGNORE_INDEX).numpy()
    iou = iou_from_confusion(cm)
    return float(np.nanmean(iou)) if not np.isnan(iou).all() else float("nan")


def kfold_scores(params: Params, dataset, progress: bool = False) -> pd.DataFrame:
    """One row per sample: ``index``, ``fold``, ``iou`` (agreement of its mask with the held-out prediction)."""
    from dmutils.segment.evaluate import predict_images
    from dmutils.segment.train import train_segmenter

    nl = params.train.noise_learning
    if len(dataset) < nl.folds:
        raise ValueError(f"noise learning needs at least train.noise_learning.folds={nl.folds} samples, got {len(dataset)}")
    fold_params = params.model_copy(deep=True)
    if nl.fold_steps is not None:
        fold_params.train.steps = nl.fold_steps
    order = np.random.default_rng(params.run.seed).permutation(len(dataset))
    rows = []
    for k, held in enumerate(np.array_split(order, nl.folds)):
        rest = np.setdiff1d(order, held)
        sub = torch.utils.data.Subset(dataset, rest.tolist())
        sub.classes, sub.root = dataset.classes, f"{getattr(dataset, 'root', 'dataset')}[fold {k} train]"
        seg = train_segmenter(fold_params, [sub], progress=progress).segmenter
        for i in held.tolist():
            image, mask = dataset[i]
            pred = predict_images(seg, [image])[0].argmax(0).numpy()
            rows.append({"index": i, "fold": k, "iou": mask_agreement(pred, mask, seg.num_classes)})
    return pd.DataFrame(rows).sort_values("index", ignore_index=True)


def drop_noisy(dataset, scores: pd.DataFrame, drop_fraction: float) -> torch.utils.data.Subset:
    """The dataset without its ``drop_fraction`` lowest-agreement samples (NaN scores count as worst)."""
    n_drop = int(round(drop_fraction * len(scores)))
    ranked = scores.sort_values(["iou", "index"], na_position="first")
    keep = sorted(ranked["index"].iloc[n_drop:].tolist())
    sub = torch.utils.data.Subset(dataset, keep)
    sub.classes, sub.root = dataset.classes, f"{getattr(dataset, 'root', 'dataset')}[noise-filtered]"
    return sub


def noise_learning(params: Params, dataset, progress: bool = False) -> tuple[torch.utils.data.Subset, pd.DataFrame]:
    """Score every sample by k-fold agreement and drop the worst; returns (kept subset, scores with ``kept``)."""
    scores = kfold_scores(params, dataset, progress)
    kept = drop_noisy(dataset, scores, params.train.noise_learning.drop_fraction)
    scores["kept"] = scores["index"].isin(kept.indices)
    return kept, scores


def compare_noise_learning(params: Params, dataset, test, progress: bool = False) -> dict:
    """mIoU on ``test`` of a segmenter trained on all of ``dataset`` and on its noise-filtered part."""
    from dmutils.segment.evaluate import evaluate
    from dmutils.segment.train import train_segmenter

    kept, scores = noise_learning(params, dataset, progress)
    full = train_segmenter(params, [dataset], progress=progress).segmenter
    filtered = train_segmenter(params, [kept], progress=progress).segmenter
    return {"miou_without": evaluate(full, test).miou, "miou_with": evaluate(filtered, test).miou,
            "dropped": int((~scores["kept"]).sum()), "scores": scores, "segmenter": filtered}

"""Evaluate a segmenter with torchmetrics: ``dmutils evaluate CHECKPOINT params.yaml [--split test] [--tta]``.

mIoU is the mean over classes that occur in the ground truth or the prediction (ignore = 255);
per-class IoU comes from ``MulticlassJaccardIndex(average=None)`` and the confusion matrix from
``MulticlassConfusionMatrix``. The open-vocabulary split reports mIoU of the seen classes
(background counts as seen), of the unseen ones and their harmonic mean.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torchmetrics.classification import (
    MulticlassConfusionMatrix,
    MulticlassJaccardIndex,
)

from dmutils.errors import DataError, ParamsError
from dmutils.progress import progress_bar
from dmutils.segment.data import IGNORE_INDEX, center_inputs
from dmutils.segment.models import Segmenter


@torch.no_grad()
def predict_scores(seg: Segmenter, x: torch.Tensor, tta: bool = False, scales: list[float] = (0.75, 1.0, 1.25)) -> torch.Tensor:
    """Class probabilities (B, C, H, W) for normalised inputs; with ``tta`` the mean over the
    scales and horizontal flips, each mapped back to the input's size and orientation."""
    was_training = seg.training
    seg.eval()
    size = x.shape[-2:]
    if not tta:
        out = seg.scores(x)
    else:
        out = 0
        for s in scales:
            xs = x if s == 1 else F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)
            for flip in (False, True):
                p = seg.scores(xs.flip(-1) if flip else xs)
                p = p.flip(-1) if flip else p
                out = out + F.interpolate(p, size=size, mode="bilinear", align_corners=False)
        out = out / (2 * len(scales))
    seg.train(was_training)
    return out


def predict(seg: Segmenter, image: np.ndarray, tta: bool = False, scales: list[float] = (0.75, 1.0, 1.25)) -> tuple[np.ndarray, np.ndarray]:
    """Label (H, W) uint8 and its confidence (max probability) for one uint8 image, at its own size."""
    probs = predict_images(seg, [image], tta, scales)[0]
    conf, label = probs.max(0)
    return label.numpy().astype(np.uint8), conf.numpy()


def predict_images(seg: Segmenter, images: list[np.ndarray], tta: bool = False, scales=(0.75, 1.0, 1.25)) -> list[torch.Tensor]:
    """Probabilities (C, H, W) per image at the image's own size; same-size images go in one batch."""
    device = next(seg.parameters()).device
    x = torch.stack([center_inputs(im, seg.image_size) for im in images]) if len({im.shape for im in images}) == 1 else None
    if x is None:
        return [p for im in images for p in predict_images(seg, [im], tta, scales)]
    probs = predict_scores(seg, x.to(device), tta, scales).float().cpu()
    h, w = images[0].shape[:2]
    if probs.shape[-2:] != (h, w):
        probs = F.interpolate(probs, size=(h, w), mode="bilinear", align_corners=False)
    return list(probs)


def iou_from_confusion(cm: np.ndarray) -> np.ndarray:
    """Per-class IoU from a confusion matrix (rows = truth); NaN for classes absent from both."""
    tp = np.diag(cm).astype(float)
    denom = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, tp / denom, np.nan)


@dataclass
class EvalResult:
    miou: float
    per_class: pd.Series  # class name -> IoU (NaN: class absent from truth and prediction)
    confusion: np.ndarray  # (C, C), rows = truth, columns = prediction, pixel counts
    groups: dict[str, float] = field(default_factory=dict)  # seen / unseen / harmonic when split

    def to_dict(self) -> dict:
        return {"miou": self.miou, "per_class": {k: (None if np.isnan(v) else float(v)) for k, v in self.per_class.items()},
                "confusion": self.confusion.tolist(), **{f"miou_{k}": v for k, v in self.groups.items()}}

    def summary(self) -> str:
        lines = [f"mIoU {self.miou:.4f}"] + [f"  {k:<16} {v:.4f}" for k, v in self.per_class.items()]
        lines += [f"mIoU {k}: {v:.4f}" for k, v in self.groups.items()]
        return "\n".join(lines)


def split_groups(per_class: pd.Series, seen_classes: list[str]) -> dict[str, float]:
    """Seen (with background), unseen and harmonic-mean mIoU of the open-vocabulary setting."""
    names = list(per_class.index)
    unknown = [c for c in seen_classes if c not in names]
    if unknown:
        raise ParamsError(f"seen classes {unknown} are not in the label set {names}; fix train.seen_classes")
    seen = [c for c in names if c in seen_classes or c == names[0] == "background"]
    unseen = [c for c in names if c not in seen]
    out = {"seen": float(np.nanmean(per_class[seen])) if seen else float("nan"),
           "unseen": float(np.nanmean(per_class[unseen])) if unseen else float("nan")}
    s, u = out["seen"], out["unseen"]
    out["harmonic"] = 2 * s * u / (s + u) if s + u > 0 else float("nan")
    return out


def evaluate(seg: Segmenter, dataset, tta: bool = False, scales: list[float] = (0.75, 1.0, 1.25),
             seen_classes: list[str] | None = None, batch_size: int = 32, progress: bool = False) -> EvalResult:
    """mIoU, per-class IoU and confusion matrix of ``seg`` on ``dataset`` (labels at native size)."""
    if list(dataset.classes) != list(seg.classes):
        raise DataError(f"the segmenter's classes {seg.classes} differ from the dataset's {list(dataset.classes)}; "
                        "evaluate on data with the classes it was trained on")
    c = seg.num_classes
    jaccard = MulticlassJaccardIndex(c, average=None, ignore_index=IGNORE_INDEX)
    confmat = MulticlassConfusionMatrix(c, ignore_index=IGNORE_INDEX)
    for start in progress_bar(range(0, len(dataset), batch_size), desc="evaluate", disable=not progress, leave=False):
        samples = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        probs = predict_images(seg, [im for im, _ in samples], tta, scales)
        for p, (_, lab) in zip(probs, samples):
            pred, target = p.argmax(0)[None], torch.from_numpy(lab.astype(np.int64))[None]
            jaccard.update(pred, target)
            confmat.update(pred, target)
    cm = confmat.compute().numpy()
    iou = jaccard.compute().numpy().astype(float)
    iou[np.isnan(iou_from_confusion(cm))] = np.nan  # torchmetrics says 0 for absent classes; they must not count
    per_class = pd.Series(iou, index=seg.classes, name="iou")
    groups = split_groups(per_class, seen_classes) if seen_classes is not None else {}
    return EvalResult(float(np.nanmean(iou)), per_class, cm, groups)


def per_image_counts(seg: Segmenter, dataset, tta: bool = False, scales: list[float] = (0.75, 1.0, 1.25),
                     batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Each test image's per-class intersection and union (``[images, classes]``, :mod:`dmutils.stats`): what
    intervals over test images and paired comparisons of two segmenters are recomputed from."""
    from dmutils import stats

    inter, union = [], []
    for start in range(0, len(dataset), batch_size):
        samples = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        probs = predict_images(seg, [im for im, _ in samples], tta, scales)
        for p, (_, lab) in zip(probs, samples):
            i, u = stats.confusion_counts(p.argmax(0).numpy(), np.asarray(lab), seg.num_classes)
            inter.append(i)
            union.append(u)
    return np.stack(inter), np.stack(union)

"""Error bars for mask scores: bootstrap over whole images, and thresholds chosen on other images.

Why this shape:

- **mIoU is pooled, so the statistic is pooled.** mIoU sums each class's intersection and union over the images
  before dividing; a mean of per-image IoUs is a different number. A score is kept as two arrays ``inter`` and
  ``union`` of shape ``[images, classes]`` (pixel counts), and every resample recomputes the pooled mIoU from them.
- **Images are the unit.** The classes of one image and its pixels are not independent draws, so a resample draws
  whole images (the rows) with replacement, keeping each image's classes together; a t-interval on IoUs of class
  instances treats them as independent and is symmetric where IoU is bounded and often bimodal. The interval is the
  95% percentile interval of the resampled statistic.
- **Paired.** Two variants scored on the same images are compared by resampling the *same* rows for both, so
  image-to-image difficulty cancels in the difference; identical variants give a difference of exactly 0.
- **No selection on the scored images.** A variant's best threshold, chosen on the images it is then scored on,
  is optimistic, the more so the more thresholds are tried. :func:`cross_fit` splits the images into k seeded
  folds and scores each fold at the threshold :func:`choose_threshold` picks on the other folds, so each variant is
  compared at its own best threshold, chosen on other images.

The resampling is a multinomial weight matrix ``[n_boot, images]`` times the count arrays: an index resample and
a sum, vectorised. numpy only, so every layer can use it.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

LEVEL = 0.95
N_BOOT = 2000


def confusion_counts(pred: np.ndarray, true: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-class (intersection, union) pixel counts of one label map against another, pixels 255 in either left out."""
    keep = (pred != 255) & (true != 255)
    p, t = pred[keep].astype(np.int64), true[keep].astype(np.int64)
    inter = np.bincount(t[p == t], minlength=num_classes)[:num_classes]
    union = np.bincount(p, minlength=num_classes)[:num_classes] + np.bincount(t, minlength=num_classes)[:num_classes] - inter
    return inter, union


def image_counts(preds, trues, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """``inter``, ``union`` arrays ``[images, classes]`` for a stack (or list) of label maps against their truths."""
    pairs = [confusion_counts(np.asarray(p), np.asarray(t), num_classes) for p, t in zip(preds, trues)]
    if not pairs:
        return np.zeros((0, num_classes), np.int64), np.zeros((0, num_classes), np.int64)
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def pooled_miou(inter: np.ndarray, union: np.ndarray) -> np.ndarray:
    """mIoU of counts summed over the images axis (-2): the mean over classes with a union of the per-class
    intersection / union. ``[images, classes]`` gives a number, ``[..., images, classes]`` one per leading index;
    NaN where no class has a union."""
    i, u = np.asarray(inter, np.float64).sum(-2), np.asarray(union, np.float64).sum(-2)
    return _mean_iou(i, u)


def class_iou(i: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Per-class IoU i / u of summed counts, NaN where a class has no union."""
    i, u = np.asarray(i, np.float64), np.asarray(u, np.float64)
    return np.divide(i, u, out=np.full_like(i, np.nan), where=u > 0)


def _mean_iou(i: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Mean over the last axis of i / u where u > 0 (NaN where no class has a union)."""
    iou = class_iou(i, u)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: NaN is the answer
        return np.nanmean(iou, axis=-1)


def _weights(n: int, n_boot: int, seed: int) -> np.ndarray:
    """``[n_boot, n]``: how many times each image is drawn in each resample (n draws with replacement)."""
    return np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=n_boot)


def _resampled(weights: np.ndarray, inter: np.ndarray, union: np.ndarray) -> np.ndarray:
    """Pooled mIoU of each resample: the weighted image counts summed per class (``weights @ counts``)."""
    return _mean_iou(weights @ np.asarray(inter, np.float64), weights @ np.asarray(union, np.float64))


def _interval(values: np.ndarray, level: float) -> tuple[float, float]:
    v = values[~np.isnan(values)]
    if not len(v):
        return float("nan"), float("nan")
    lo, hi = np.quantile(v, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def _check(inter, union) -> tuple[np.ndarray, np.ndarray]:
    inter, union = np.asarray(inter), np.asarray(union)
    if inter.shape != union.shape or inter.ndim != 2:
        raise ValueError(f"inter and union must be [images, classes] arrays of one shape, got {inter.shape} and {union.shape}")
    if (inter > union).any() or (inter < 0).any():
        raise ValueError("counts must satisfy 0 <= intersection <= union")
    return inter, union


def bootstrap_ci(inter, union, n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL) -> dict[str, float]:
    """Pooled mIoU of ``[images, classes]`` counts with its percentile interval over images resampled whole:
    ``{"miou", "ci_lo", "ci_hi", "n"}`` (n = images; an empty set gives NaNs)."""
    inter, union = _check(inter, union)
    n = len(inter)
    if n == 0:
        return {"miou": float("nan"), "ci_lo": float("nan"), "ci_hi": float("nan"), "n": 0}
    lo, hi = _interval(_resampled(_weights(n, n_boot, seed), inter, union), level)
    return {"miou": float(pooled_miou(inter, union)), "ci_lo": lo, "ci_hi": hi, "n": n}


def paired_bootstrap(scores_a, scores_b, n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL) -> dict[str, float]:
    """Difference of pooled mIoU, b minus a, of two variants scored on the same images (row k of each is image k),
    with the percentile interval of the difference over the same resampled images for both.

    ``scores_a``, ``scores_b``: ``(inter, union)`` pairs of ``[images, classes]`` arrays. Returns ``{"diff",
    "ci_lo", "ci_hi", "miou_a", "miou_b", "n"}``."""
    ia, ua = _check(*scores_a)
    ib, ub = _check(*scores_b)
    if ia.shape != ib.shape:
        raise ValueError(f"a paired comparison needs the same images and classes in both, got {ia.shape} and {ib.shape}")
    n = len(ia)
    if n == 0:
        return {"diff": float("nan"), "ci_lo": float("nan"), "ci_hi": float("nan"), "miou_a": float("nan"),
                "miou_b": float("nan"), "n": 0}
    w = _weights(n, n_boot, seed)
    lo, hi = _interval(_resampled(w, ib, ub) - _resampled(w, ia, ua), level)
    a, b = float(pooled_miou(ia, ua)), float(pooled_miou(ib, ub))
    return {"diff": b - a, "ci_lo": lo, "ci_hi": hi, "miou_a": a, "miou_b": b, "n": n}


# ---------------------------------------------------------------------------------------------
# Thresholds chosen on other images
# ---------------------------------------------------------------------------------------------
def folds(n: int, k: int = 5, seed: int = 0) -> np.ndarray:
    """Fold index (0..k-1) of each of ``n`` images: a seeded permutation cut into k near-equal parts
    (k is capped at n, so every fold has an image and every image is scored once)."""
    k = max(1, min(k, n))
    out = np.empty(n, dtype=np.int64)
    out[np.random.default_rng(seed).permutation(n)] = np.arange(n) % k
    return out


def choose_threshold(inter, union) -> int:
    """Index of the threshold with the highest pooled mIoU on these images; the first on ties, 0 when none scores.

    ``inter``, ``union``: ``[images, thresholds, classes]`` counts of one variant swept over thresholds."""
    per_t = pooled_miou(np.moveaxis(np.asarray(inter), 1, 0), np.moveaxis(np.asarray(union), 1, 0))
    return int(np.nanargmax(per_t)) if not np.isnan(per_t).all() else 0


@dataclass
class CrossFit:
    """Each image's counts at the threshold chosen on the other folds."""

    inter: np.ndarray  # [images, classes]
    union: np.ndarray  # [images, classes]
    chosen: np.ndarray  # [images]: index of the threshold each image was scored at
    fold: np.ndarray  # [images]

    @property
    def scores(self) -> tuple[np.ndarray, np.ndarray]:
        return self.inter, self.union


def cross_fit(inter, union, k: int = 5, seed: int = 0) -> CrossFit:
    """Score every image at the threshold :func:`choose_threshold` picks on the images of the other folds.

    ``inter``, ``union``: ``[images, thresholds, classes]``. Variants scored on the same images with the same
    ``k`` and ``seed`` share their folds, so their cross-fitted scores can be compared with :func:`paired_bootstrap`.
    A single image has no other images to choose on: it is scored at threshold index 0, never at a choice made on
    itself."""
    inter, union = np.asarray(inter), np.asarray(union)
    if inter.shape != union.shape or inter.ndim != 3:
        raise ValueError(f"inter and union must be [images, thresholds, classes], got {inter.shape} and {union.shape}")
    n = len(inter)
    fold = folds(n, k, seed)
    chosen = np.zeros(n, dtype=np.int64)
    for f in np.unique(fold):
        train = fold != f
        chosen[fold == f] = choose_threshold(inter[train], union[train]) if train.any() else 0
    rows = np.arange(n)
    return CrossFit(inter[rows, chosen], union[rows, chosen], chosen, fold)


# ---------------------------------------------------------------------------------------------
# Over seeds: a paired difference whose interval covers both the seeds and the images
# ---------------------------------------------------------------------------------------------
def seeds_paired_bootstrap(pairs, shared_images: bool = False, paired: bool = True, n_boot: int = N_BOOT, seed: int = 0,
                           level: float = LEVEL) -> dict:
    """Mean over seeds of the paired difference of pooled mIoU (b minus a), with a two-level percentile interval:
    each resample draws the seeds with replacement, and within each seed its images with replacement.

    ``pairs``: one ``((inter_a, union_a), (inter_b, union_b))`` per seed, each ``[images, classes]``. With
    ``shared_images`` every seed was scored on the same images (a segmenter per seed, one test split): a resample
    draws the same images for all seeds, so the test split's sampling is counted once. Otherwise each seed has
    images of its own (generated per seed), drawn independently. ``paired=False``: a and b were scored on different
    images (settings that generate other images), so each side draws its own (their counts may differ in length).

    Why two levels: a training seed or a set of prompts is itself a random draw, and a claim should hold across
    them, not just across the images of one. With 3 seeds the interval is about the range of the seeds' differences
    widened by the images' noise: it excludes 0 only when every seed agrees in sign. Returns ``{"diff", "ci_lo",
    "ci_hi", "per_seed", "miou_a", "miou_b", "seeds", "n"}`` (``n``: images per seed)."""
    checked = [(_check(*a), _check(*b)) for a, b in pairs]
    k = len(checked)
    if k == 0 or any(len(a[0]) == 0 for a, _ in checked):
        nan = float("nan")
        return {"diff": nan, "ci_lo": nan, "ci_hi": nan, "per_seed": [], "miou_a": nan, "miou_b": nan, "seeds": k, "n": []}
    for (ia, _), (ib, _) in checked:
        if paired and ia.shape != ib.shape:
            raise ValueError(f"a paired comparison needs the same images and classes in both, got {ia.shape} and {ib.shape}")
    if shared_images and len({len(x[0]) for pair in checked for x in pair}) != 1:
        raise ValueError("shared_images needs every seed scored on the same number of images")
    rng = np.random.default_rng(seed)
    shared = _weights(len(checked[0][0][0]), n_boot, seed + 1) if shared_images else None
    deltas = []  # [seeds][n_boot]
    for s, ((ia, ua), (ib, ub)) in enumerate(checked):
        w = shared if shared is not None else _weights(len(ia), n_boot, seed + 1 + s)
        wb = w if paired else _weights(len(ib), n_boot, seed + 1001 + s)
        deltas.append(_resampled(wb, ib, ub) - _resampled(w, ia, ua))
    draws = rng.integers(k, size=(n_boot, k))
    stat = np.stack(deltas)[draws, np.arange(n_boot)[:, None]].mean(1)
    lo, hi = _interval(stat, level)
    a = [float(pooled_miou(ia, ua)) for (ia, ua), _ in checked]
    b = [float(pooled_miou(ib, ub)) for _, (ib, ub) in checked]
    per_seed = [y - x for x, y in zip(a, b)]
    return {"diff": float(np.mean(per_seed)), "ci_lo": lo, "ci_hi": hi, "per_seed": per_seed, "miou_a": float(np.mean(a)),
            "miou_b": float(np.mean(b)), "seeds": k, "n": [len(x[0]) for x, _ in checked]}


def verdict(ci_lo: float, ci_hi: float, direction: int = 1) -> str:
    """``holds`` when the interval lies on the claimed side of 0 (``direction`` +1: the variant is better),
    ``does not hold`` when it lies on the other side, ``inconclusive`` when it holds 0 (or is NaN)."""
    if np.isnan(ci_lo) or np.isnan(ci_hi):
        return "inconclusive"
    lo, hi = (ci_lo, ci_hi) if direction >= 0 else (-ci_hi, -ci_lo)
    return "holds" if lo > 0 else "does not hold" if hi < 0 else "inconclusive"


# ---------------------------------------------------------------------------------------------
# Trained models: seeds and images
# ---------------------------------------------------------------------------------------------
def seeds_bootstrap(inter, union, base_inter=None, base_union=None, statistic=None, n_boot: int = N_BOOT,
                    seed: int = 0, level: float = LEVEL) -> dict[str, float]:
    """A score over training seeds and test images, with an interval that counts both sources of spread.

    ``inter``, ``union``: ``[seeds, images, classes]`` counts of the segmenters trained with each seed, scored on the
    same test images. The score is the mean over seeds of each seed's pooled statistic (``statistic(i, u)`` of the
    per-class sums ``[..., classes]``; default the mIoU). Each resample draws the seeds and, independently, the images
    (the same images for every seed: they are shared), both with replacement. With ``base_*`` (a baseline trained with
    the same seeds on the same images) the score is the paired difference, this minus the baseline, resampled with
    the same seeds and images for both. Returns ``{"value", "ci_lo", "ci_hi", "seeds", "n"}``."""
    stat = statistic or _mean_iou
    arrays = [np.asarray(a, np.float64) for a in (inter, union)]
    if base_inter is not None:
        arrays += [np.asarray(a, np.float64) for a in (base_inter, base_union)]
    if any(a.ndim != 3 or a.shape != arrays[0].shape for a in arrays):
        raise ValueError(f"counts must be [seeds, images, classes] arrays of one shape, got {[a.shape for a in arrays]}")
    s, n, _ = arrays[0].shape
    if s == 0 or n == 0:
        return {"value": float("nan"), "ci_lo": float("nan"), "ci_hi": float("nan"), "seeds": s, "n": n}

    def score(weights: np.ndarray | None) -> np.ndarray:
        """Per seed, the statistic of the image-weighted sums: ``[n_boot, seeds]`` (or ``[seeds]`` unweighted)."""
        summed = [a.sum(1) if weights is None else np.einsum("bn,snk->bsk", weights, a) for a in arrays]
        out = stat(summed[0], summed[1])
        return out - stat(summed[2], summed[3]) if len(summed) == 4 else out

    rng = np.random.default_rng(seed)
    w_img = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot)
    w_seed = rng.multinomial(s, np.full(s, 1.0 / s), size=n_boot)
    per = score(w_img)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        boot = np.nansum(per * w_seed, 1) / np.where(np.isnan(per), 0, w_seed).sum(1)
        value = float(np.nanmean(score(None)))
    lo, hi = _interval(boot, level)
    return {"value": value, "ci_lo": lo, "ci_hi": hi, "seeds": s, "n": n}


def harmonic(a, b):
    """Harmonic mean of two scores (the open-vocabulary setting's seen/unseen summary); NaN where both are 0."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.divide(2 * a * b, a + b, out=np.full(np.broadcast(a, b).shape, np.nan), where=(a + b) > 0)

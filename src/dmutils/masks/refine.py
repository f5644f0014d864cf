"""From attention maps to pixel labels: combine, refine, upsample, normalise, threshold, clean.

The pieces, in the order :func:`make_mask` applies them, and where each comes from:

1. :func:`combine_resolutions` -- maps captured at several resolutions are upsampled to the
   largest and averaged with weights. DiffuMask (arXiv 2303.11681, eq. 2) averages the 16/32/64
   cross-attention maps equally; the weights are a parameter here (``masks.resolution_weights``).
2. :func:`self_attention_refine` -- Dataset Diffusion (arXiv 2309.14303, eq. 4):
   ``A* = (A_self)^tau . A_cross``. The cross maps are resized to the self-attention resolution
   and multiplied ``tau`` times by ``A_self`` (rows sum to 1, so each product is a weighted
   average over the pixels a pixel attends to): ``tau`` products of a (C, N) matrix, never the
   dense N x N matrix power. Or, ``refine="affinity"``: the random walk of DiffuMask's learned
   affinity (:mod:`dmutils.masks.affinity`), at image size.
3. :func:`upsample` to the image size (bilinear / bicubic / nearest) and :func:`normalize`:
   ``"minmax"`` scales the image's C maps jointly (one min, one max: the classes keep their
   relative strength); ``"minmax_per_class"`` scales each class map to [0, 1] on its own (Dataset
   Diffusion: every named class peaks at 1); ``"none"`` keeps the values.
4. :func:`label_map` -- argmax over the prompt's classes, background (0) where the winning score
   is below the threshold; Dataset Diffusion's uncertain band: winning scores in [lo, hi) become
   255 (ignore). Thresholds: fixed, per class (:func:`read_threshold_table`, the ``class,threshold``
   CSV that study 02 writes) or adaptive per image (:func:`adaptive_threshold`).
5. Optional DenseCRF (:func:`crf_labels`, DiffuMask's refinement) and removal of connected regions
   smaller than a minimum area (:func:`remove_small_regions`).

Adaptive threshold (DiffuMask sec. 3.2): per image, the candidate threshold whose mask agrees best
(mean IoU) with a refined mask. The refined mask here is DenseCRF's, because the CRF brings in
evidence the maps do not have -- the image's colour edges -- while a self-attention refinement
would compare the maps with a smoothed copy of themselves. Its background is ``1 - max score``,
which needs no threshold, so the reference does not depend on the candidates it judges.

Every function is pure (arrays in, arrays out), vectorised and float32; bad input raises
:class:`MaskInputError` (a ``ValueError``) that says what is wrong before compute is spent.
"""
from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from dmutils.config import CRFParams, MaskParams
from dmutils.paths import REPO_ROOT

if TYPE_CHECKING:
    from dmutils.masks.affinity import AffinityModel

IGNORE_INDEX = 255
ArrayLike = np.ndarray | torch.Tensor


class MaskInputError(ValueError):
    """Maps, image or class ids that cannot make a mask; the message says what and how to fix it."""


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------
def _maps(x: ArrayLike, what: str = "class_maps") -> torch.Tensor:
    """A finite (C, h, w) float32 tensor, or a clear error."""
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).detach().to("cpu", torch.float32)
    if t.ndim != 3 or 0 in t.shape:
        raise MaskInputError(f"{what} must be (C, h, w) with C >= 1, got shape {tuple(t.shape)}")
    bad = (~torch.isfinite(t)).sum().item()
    if bad:
        raise MaskInputError(f"{what} has {bad} NaN/inf values of {t.numel()}; the capture produced non-finite "
                             "attention (float16 overflow?) -- reject the sample or capture in float32")
    return t


def _class_ids(class_ids: Sequence[int] | np.ndarray, n: int) -> np.ndarray:
    ids = np.asarray(class_ids)
    if ids.ndim != 1 or len(ids) != n:
        raise MaskInputError(f"class_ids must give one label index per map: {n} maps but class_ids is {ids.tolist()}")
    if not np.issubdtype(ids.dtype, np.integer) or ((ids < 1) | (ids > 254)).any():
        raise MaskInputError(f"class_ids must be integers in 1..254 (0 is background, 255 ignore), got {ids.tolist()}")
    return ids.astype(np.uint8)


def _image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise MaskInputError(f"image must be (H, W, 3) uint8, got shape {image.shape} dtype {image.dtype}")
    return image


# ---------------------------------------------------------------------------------------------
# Maps
# ---------------------------------------------------------------------------------------------
def upsample(maps: ArrayLike, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """(C, h, w) -> (C, H, W) with ``torch.nn.functional.interpolate``."""
    maps = _maps(maps)
    if tuple(maps.shape[1:]) == tuple(size):
        return maps
    kw = {} if mode == "nearest" else {"align_corners": False}
    return F.interpolate(maps[None], size=tuple(size), mode=mode, **kw)[0]


def normalize(maps: ArrayLike, mode: str = "minmax") -> torch.Tensor:
    """Scale to [0, 1]: jointly over the C maps (``minmax``), per map (``minmax_per_class``) or not."""
    maps = _maps(maps)
    if mode == "none":
        return maps
    if mode == "minmax":
        lo, hi = maps.amin(), maps.amax()
    elif mode == "minmax_per_class":
        lo, hi = maps.amin((1, 2), keepdim=True), maps.amax((1, 2), keepdim=True)
    else:
        raise MaskInputError(f"unknown normalisation {mode!r}; use 'minmax', 'minmax_per_class' or 'none'")
    return (maps - lo) / (hi - lo).clamp_min(1e-8)  # a flat map becomes 0: no evidence, background


def combine_resolutions(maps: ArrayLike | Mapping[int, ArrayLike], weights: Mapping[int, float] | None = None,
                        mode: str = "bilinear") -> torch.Tensor:
    """Weighted mean of maps of several resolutions, each upsampled to the largest.

    ``maps`` is (C, h, w) (returned as is) or ``{resolution: (C, r, r)}``; ``weights`` maps each
    resolution to its weight (None = equal, DiffuMask's average).
    """
    if not isinstance(maps, Mapping):
        return _maps(maps)
    if not maps:
        raise MaskInputError("class_maps is an empty dict; give at least one {resolution: (C, r, r)} entry")
    by_res = {int(r): _maps(m, f"class_maps[{r}]") for r, m in maps.items()}
    counts = {r: m.shape[0] for r, m in by_res.items()}
    if len(set(counts.values())) > 1:
        raise MaskInputError(f"the resolutions have different numbers of class maps {counts}; each must hold the same C classes")
    if weights is None:
        weights = {r: 1.0 for r in by_res}
    missing = sorted(set(by_res) - set(weights))
    if missing:
        raise MaskInputError(f"resolution_weights has no weight for resolution(s) {missing}; it has {sorted(weights)}")
    w = torch.tensor([float(weights[r]) for r in by_res])
    if (w < 0).any() or w.sum() <= 0:
        raise MaskInputError(f"resolution_weights must be >= 0 with a positive sum, got {dict(weights)}")
    size = max((tuple(m.shape[1:]) for m in by_res.values()), key=lambda s: s[0] * s[1])
    stack = torch.stack([upsample(m, size, mode) for m in by_res.values()])
    return torch.einsum("r,rchw->chw", w / w.sum(), stack)


def _self_attention_matrix(self_attn: ArrayLike | Mapping[int, ArrayLike]) -> torch.Tensor:
    """The (N, N) self-attention; from a dict of resolutions the finest (Dataset Diffusion uses 64 at 512 px)."""
    if isinstance(self_attn, Mapping):
        if not self_attn:
            raise MaskInputError("self_attn is an empty dict; give {resolution: (r*r, r*r)} or set masks.refine='none'")
        self_attn = max(self_attn.values(), key=lambda a: np.shape(a)[-1])
    a = torch.as_tensor(np.asarray(self_attn) if not isinstance(self_attn, torch.Tensor) else self_attn)
    a = a.detach().to("cpu", torch.float32)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise MaskInputError(f"self_attn must be a square (r*r, r*r) matrix, got shape {tuple(a.shape)}")
    if not torch.isfinite(a).all():
        raise MaskInputError("self_attn has NaN/inf values; reject the sample or capture in float32")
    rows = a.sum(1)
    if (rows - 1).abs().max() > 1e-2:
        raise MaskInputError(f"self_attn rows must sum to 1 (softmax over keys, averaged over heads/steps); "
                             f"they sum to {rows.min():.3f}..{rows.max():.3f}")
    return a


def self_attention_refine(cross: ArrayLike, self_attn: ArrayLike | Mapping[int, ArrayLike], tau: int,
                          mode: str = "bilinear") -> torch.Tensor:
    """Dataset Diffusion's ``A* = A_self^tau . A_cross`` at the self-attention resolution.

    ``cross`` (C, h, w) is resized to the self-attention grid (r, r) with r*r = N, then multiplied
    ``tau`` times by ``A_self`` (N, N): cost tau * C * N^2, memory C * N. tau = 0 is the resize only.
    """
    cross = _maps(cross, "cross maps")
    if tau < 0:
        raise MaskInputError(f"tau must be >= 0, got {tau}")
    a = _self_attention_matrix(self_attn)
    n = a.shape[0]
    h, w = cross.shape[1:]
    rh = round((n * h / w) ** 0.5)
    if rh < 1 or n % rh or (n // rh) * h != rh * w:
        raise MaskInputError(f"self_attn is {n}x{n}, which is no grid of the cross maps' aspect {h}x{w}; "
                             "self_attn must be (r*r, r*r) for an r x r map")
    x = upsample(cross, (rh, n // rh), mode).reshape(cross.shape[0], n)
    for _ in range(tau):
        x = x @ a.T  # (A_self @ A_cross)^T with A_cross laid out (N, C)
    return x.reshape(cross.shape[0], rh, n // rh)


# ---------------------------------------------------------------------------------------------
# Labels
# ---------------------------------------------------------------------------------------------
def label_map(scores: ArrayLike, class_ids: Sequence[int] | np.ndarray, threshold: float | Sequence[float] | np.ndarray,
              uncertain_band: tuple[float, float] | None = None) -> np.ndarray:
    """(C, H, W) scores -> (H, W) uint8 labels.

    The winning class's id where its score >= the threshold (a scalar, or one per class: the
    winner's), else 0; then winning scores in ``[lo, hi)`` of ``uncertain_band`` become 255.
    """
    scores = _maps(scores, "scores")
    ids = _class_ids(class_ids, scores.shape[0])
    thr = np.broadcast_to(np.asarray(threshold, dtype=np.float32), (scores.shape[0],)) if np.ndim(threshold) == 0 \
        else np.asarray(threshold, dtype=np.float32)
    if thr.shape != (scores.shape[0],):
        raise MaskInputError(f"threshold must be a number or one per class ({scores.shape[0]}), got {len(thr)}")
    best, win = (t.numpy() for t in scores.max(0))
    labels = np.where(best >= thr[win], ids[win], 0).astype(np.uint8)
    if uncertain_band is not None:
        lo, hi = uncertain_band
        labels[(best >= lo) & (best < hi)] = IGNORE_INDEX
    return labels


@functools.lru_cache(maxsize=8)
def _read_table(path: str, mtime_ns: int) -> dict[str, float]:
    import pandas as pd

    df = pd.read_csv(path)
    if not {"class", "threshold"} <= set(df.columns):
        raise MaskInputError(f"{path}: needs columns 'class' and 'threshold', has {list(df.columns)}")
    dup = df["class"][df["class"].duplicated()].tolist()
    if dup:
        raise MaskInputError(f"{path}: classes listed twice: {dup}")
    thr = pd.to_numeric(df["threshold"], errors="coerce")
    if thr.isna().any() or ((thr < 0) | (thr > 1)).any():
        raise MaskInputError(f"{path}: every threshold must be a number in [0, 1]")
    return dict(zip(df["class"].astype(str), thr.astype(float)))


def read_threshold_table(path: str | Path) -> dict[str, float]:
    """The ``class,threshold`` CSV that study 02 writes (relative paths: to the cwd, else the repo root)."""
    p = Path(path).expanduser()
    if not p.is_absolute() and not p.exists():
        p = REPO_ROOT / p
    if not p.is_file():
        raise MaskInputError(f"threshold table not found: {path}; run study 02 (threshold vs IoU) to write it, "
                             "or set masks.threshold_mode='fixed'")
    return dict(_read_table(str(p.resolve()), p.stat().st_mtime_ns))


def class_thresholds(table: Mapping[str, float], class_names: Sequence[str]) -> np.ndarray:
    """One threshold per class name, in order; a class missing from the table is an error."""
    missing = [c for c in class_names if c not in table]
    if missing:
        raise MaskInputError(f"classes {missing} are not in the threshold table (it has {sorted(table)}); "
                             "re-run study 02 over these classes or use masks.threshold_mode='fixed'")
    return np.array([table[c] for c in class_names], dtype=np.float32)


def mean_iou(pred: np.ndarray, target: np.ndarray, ignore_index: int = IGNORE_INDEX) -> float:
    """Mean IoU over the labels present in either map; pixels ignored in either are skipped."""
    pred, target = np.asarray(pred), np.asarray(target)
    if pred.shape != target.shape:
        raise MaskInputError(f"label maps differ in shape: {pred.shape} vs {target.shape}")
    keep = (pred != ignore_index) & (target != ignore_index)
    p, t = pred[keep].astype(np.int64), target[keep].astype(np.int64)
    conf = np.bincount(p * 256 + t, minlength=256 * 256).reshape(256, 256)
    inter, union = np.diag(conf), conf.sum(0) + conf.sum(1) - np.diag(conf)
    present = union > 0
    return float((inter[present] / union[present]).mean()) if present.any() else 1.0


def crf_labels(image: np.ndarray, scores: ArrayLike, class_ids: Sequence[int] | np.ndarray,
               background: float | np.ndarray, params: CRFParams | None = None) -> np.ndarray:
    """DenseCRF labels from scores (C, H, W) and a background score (scalar or (H, W))."""
    scores = _maps(scores, "scores").clamp(0, 1).numpy()
    ids = np.concatenate([[0], _class_ids(class_ids, scores.shape[0])]).astype(np.uint8)
    bg = np.broadcast_to(np.asarray(background, dtype=np.float32), scores.shape[1:])
    from dmutils.masks.crf import dense_crf

    _, idx = dense_crf(_image(image), np.concatenate([bg[None], scores]) + 1e-6, params)
    return ids[idx]


def adaptive_threshold(scores: ArrayLike, class_ids: Sequence[int] | np.ndarray, candidates: Sequence[float],
                       reference: np.ndarray) -> tuple[float, np.ndarray]:
    """DiffuMask's per-image threshold: the candidate whose mask has the best mean IoU with
    ``reference`` (a refined label map). Returns it and every candidate's IoU (ties: the lowest)."""
    if len(candidates) == 0:
        raise MaskInputError("adaptive_candidates is empty; give thresholds to choose from, e.g. [0.3, 0.4, 0.5]")
    ious = np.array([mean_iou(label_map(scores, class_ids, t), reference) for t in candidates], dtype=np.float32)
    return float(candidates[int(ious.argmax())]), ious


def remove_small_regions(labels: np.ndarray, min_pixels: int) -> np.ndarray:
    """Set connected class regions (8-connectivity) smaller than ``min_pixels`` to background."""
    labels = np.asarray(labels).copy()
    if min_pixels <= 1:
        return labels
    for c in np.unique(labels):
        if c in (0, IGNORE_INDEX):
            continue
        comp, n = ndimage.label(labels == c, structure=np.ones((3, 3)))
        sizes = np.bincount(comp.ravel(), minlength=n + 1)
        small = sizes < min_pixels
        small[0] = False
        labels[small[comp]] = 0
    return labels


# ---------------------------------------------------------------------------------------------
# The whole pipeline
# ---------------------------------------------------------------------------------------------
def uses_self_attention(params: MaskParams) -> bool:
    """Whether masks made with ``params`` read self-attention (A_self^tau . A_cross with tau > 0):
    generation captures and saves it only then, since explicit self-attention is the costly part."""
    return params.refine == "self_attention" and params.tau > 0


def make_mask(class_maps: ArrayLike | Mapping[int, ArrayLike], image: np.ndarray, params: MaskParams,
              class_ids: Sequence[int] | np.ndarray, self_attn: ArrayLike | Mapping[int, ArrayLike] | None = None, *,
              class_names: Sequence[str] | None = None, affinity: "AffinityModel | None" = None) -> tuple[np.ndarray, np.ndarray]:
    """Labels (H, W) uint8 and per-class scores (C, H, W) float32 in [0, 1] (unless normalize='none').

    ``class_maps``: (C, r, r) or {resolution: (C, r, r)}; ``image``: (H, W, 3) uint8; ``class_ids``:
    the dataset label index of each of the C maps. ``self_attn`` (N, N) or {r: (N, N)} is needed for
    ``refine='self_attention'`` with tau > 0, ``affinity`` (from :func:`dmutils.masks.affinity.fit_affinity`)
    for ``refine='affinity'``, ``class_names`` (of the C maps) for ``threshold_mode='per_class'``.
    """
    image = _image(image)
    maps = combine_resolutions(class_maps, params.resolution_weights, params.upsample)
    ids = _class_ids(class_ids, maps.shape[0])
    thresholds: float | np.ndarray = params.threshold
    if params.threshold_mode == "per_class":
        if params.threshold_table is None:
            raise MaskInputError("threshold_mode='per_class' needs masks.threshold_table (the CSV study 02 writes)")
        if class_names is None or len(class_names) != len(ids):
            raise MaskInputError(f"threshold_mode='per_class' needs class_names, one per map ({len(ids)}), got {class_names}")
        thresholds = class_thresholds(read_threshold_table(params.threshold_table), class_names)
    refine = params.refine
    if uses_self_attention(params):
        if self_attn is None:
            raise MaskInputError("refine='self_attention' with tau > 0 needs self_attn (r*r, r*r); "
                                 "capture self-attention or set masks.refine='none' (or masks.tau=0)")
        maps = self_attention_refine(maps, self_attn, params.tau, params.upsample)
    if refine == "affinity" and affinity is None:
        raise MaskInputError("refine='affinity' needs affinity=fit_affinity(images, pseudo_labels); or set masks.refine")

    scores = upsample(maps, image.shape[:2], params.upsample)
    if refine == "affinity":
        scores = affinity.propagate(image, scores)
    scores = normalize(scores, params.normalize)

    if params.threshold_mode == "adaptive":
        reference = crf_labels(image, scores, ids, 1.0 - scores.clamp(0, 1).amax(0).numpy(), params.crf)
        thresholds, _ = adaptive_threshold(scores, ids, params.adaptive_candidates, reference)
    if params.crf.enabled:
        # background = the winner's threshold, so the unary alone reproduces the thresholded labels
        best, win = scores.max(0)
        bg = np.broadcast_to(np.asarray(thresholds, dtype=np.float32), (len(ids),))[win.numpy()]
        labels = crf_labels(image, scores, ids, bg, params.crf)
        if params.uncertain_band is not None:
            lo, hi = params.uncertain_band
            labels[(best.numpy() >= lo) & (best.numpy() < hi)] = IGNORE_INDEX
    else:
        labels = label_map(scores, ids, thresholds, params.uncertain_band)
    labels = remove_small_regions(labels, int(np.ceil(params.min_area * labels.size)))
    return labels, scores.numpy().astype(np.float32, copy=False)

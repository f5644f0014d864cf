"""DenseCRF refinement of class probabilities along the image's edges (pydensecrf).

DiffuMask (arXiv 2303.11681, sec. 3.2) refines its attention masks with a fully connected CRF
(Kraehenbuehl & Koltun 2011): the unary is the negative log of the per-pixel class probabilities
(background included), and two pairwise terms pull neighbouring pixels to the same label -- a
Gaussian term on position only (sxy 3, compat 3: smoothness) and a bilateral term on position
and colour (sxy 80, srgb 13, compat 10: pixels of alike colour agree). Those defaults live in
:class:`dmutils.config.CRFParams`. Pure: arrays in, arrays out.
"""
from __future__ import annotations

import numpy as np
import pydensecrf.densecrf as dcrf
from pydensecrf.utils import unary_from_softmax

from dmutils.config import CRFParams


def dense_crf(image: np.ndarray, probs: np.ndarray, params: CRFParams | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Refine ``probs`` (K, H, W) -- K labels, background first -- on ``image`` (H, W, 3) uint8.

    Rows of ``probs`` need not sum to 1 (they are normalised per pixel). Returns the refined
    probabilities (K, H, W) float32 and their argmax (H, W) int64, an index into the K labels.
    """
    params = params or CRFParams()
    image = np.asarray(image)
    probs = np.asarray(probs, dtype=np.float32)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    if probs.ndim != 3 or probs.shape[0] < 2:
        raise ValueError(f"probs must be (K, H, W) with K >= 2 labels (background first), got shape {probs.shape}")
    if probs.shape[1:] != image.shape[:2]:
        raise ValueError(f"probs are {probs.shape[1:]} but the image is {image.shape[:2]}; upsample the maps to the image size first")
    if not np.isfinite(probs).all() or (probs < 0).any():
        raise ValueError("probs must be finite and non-negative; clip or normalise the score maps first")
    k, h, w = probs.shape
    probs = probs / np.maximum(probs.sum(0, keepdims=True), 1e-8)
    crf = dcrf.DenseCRF2D(w, h, k)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs)))
    crf.addPairwiseGaussian(sxy=params.gaussian_sxy, compat=params.gaussian_compat)
    # a writable copy: pydensecrf refuses read-only buffers (e.g. np.asarray of a PIL image)
    crf.addPairwiseBilateral(sxy=params.bilateral_sxy, srgb=params.bilateral_srgb,
                             rgbim=np.array(image, order="C"), compat=params.bilateral_compat)
    refined = np.asarray(crf.inference(params.iterations), dtype=np.float32).reshape(k, h, w)
    return refined, refined.argmax(0)

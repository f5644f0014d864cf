"""DenseCRF refinement: it follows the image's edges, so a blurred, noisy map of a toy scene improves."""
import numpy as np
import pytest
from scipy import ndimage

from dmutils.config import CRFParams, MaskParams
from dmutils.data.toyworld import make_scene
from dmutils.masks import refine as masks
from dmutils.masks.crf import dense_crf


def _noisy_scores(scene, seed, blur=3.0, noise=0.25):
    """Each class's exact mask, blurred and with Gaussian noise, clipped to [0, 1]."""
    ids = sorted(int(c) for c in np.unique(scene.label) if c != 0)
    rng = np.random.default_rng(seed)
    s = np.stack([ndimage.gaussian_filter((scene.label == c).astype(np.float32), blur) for c in ids])
    return np.clip(s + rng.normal(0, noise, s.shape), 0, 1).astype(np.float32), ids


@pytest.mark.parametrize("seed", [0, 1, 4])
def test_crf_improves_iou_of_a_noisy_map(seed):
    scene = make_scene(seed)
    scores, ids = _noisy_scores(scene, seed)
    before = masks.mean_iou(masks.label_map(scores, ids, 0.5), scene.label)
    after = masks.mean_iou(masks.crf_labels(scene.image, scores, ids, 0.5), scene.label)
    assert after > before + 0.05, (before, after)


def test_crf_in_make_mask_improves_iou():
    scene = make_scene(5)
    scores, ids = _noisy_scores(scene, 5)
    plain = MaskParams(refine="none", normalize="none")
    with_crf = plain.model_copy(update={"crf": CRFParams(enabled=True)})
    before = masks.mean_iou(masks.make_mask(scores, scene.image, plain, ids)[0], scene.label)
    after = masks.mean_iou(masks.make_mask(scores, scene.image, with_crf, ids)[0], scene.label)
    assert after > before


def test_outputs_are_probabilities_and_their_argmax():
    scene = make_scene(2)
    scores, _ = _noisy_scores(scene, 2)
    probs, labels = dense_crf(scene.image, np.concatenate([np.full((1, 64, 64), 0.5, np.float32), scores]),
                              CRFParams(iterations=3))
    assert probs.shape == (1 + len(scores), 64, 64) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-4)
    assert np.array_equal(labels, probs.argmax(0))


def test_zero_pairwise_weights_keep_the_unary_argmax():
    scene = make_scene(3)
    scores, _ = _noisy_scores(scene, 3)
    probs = np.concatenate([np.full((1, 64, 64), 0.5, np.float32), scores])
    _, labels = dense_crf(scene.image, probs, CRFParams(gaussian_compat=0, bilateral_compat=0, iterations=2))
    assert np.array_equal(labels, probs.argmax(0))


@pytest.mark.parametrize("image, probs, match", [
    (np.zeros((8, 8, 3), np.uint8), np.ones((2, 4, 4)), "upsample the maps"),
    (np.zeros((8, 8, 3), np.uint8), np.ones((1, 8, 8)), "K >= 2"),
    (np.zeros((8, 8, 3), np.uint8), np.full((2, 8, 8), np.nan), "finite"),
    (np.zeros((8, 8), np.uint8), np.ones((2, 8, 8)), r"\(H, W, 3\) uint8"),
])
def test_bad_input(image, probs, match):
    with pytest.raises(ValueError, match=match):
        dense_crf(image, probs)

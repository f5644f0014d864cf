"""Learned affinity (DiffuMask / AffinityNet): trained on confident pseudo-mask pairs, its random walk
sharpens coarse maps of unseen toy scenes."""
import numpy as np
import pytest
import torch
from scipy import ndimage

from dmutils.config import AffinityParams, MaskParams
from dmutils.data.toyworld import make_scene
from dmutils.masks import refine as masks
from dmutils.masks.affinity import fit_affinity

SMALL = AffinityParams(steps=30, pairs=2048)


def _pseudo_mask(scene, band=2):
    """The exact mask with an uncertain (255) band around every object's edge, as thresholding leaves."""
    label = scene.label.copy()
    fg = label > 0
    label[ndimage.binary_dilation(fg, iterations=band) & ~ndimage.binary_erosion(fg, iterations=band)] = 255
    return label


def _coarse_maps(scene):
    """Each class's exact mask pooled to 8 x 8 and upsampled: right place, blurred edges."""
    ids = sorted(int(c) for c in np.unique(scene.label) if c != 0)
    onehot = torch.from_numpy(np.stack([scene.label == c for c in ids]).astype(np.float32))
    return masks.upsample(torch.nn.functional.avg_pool2d(onehot[None], 8)[0], scene.label.shape), ids


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model(one_thread):
    scenes = [make_scene(100 + i) for i in range(3)]
    return fit_affinity(np.stack([s.image for s in scenes]), np.stack([_pseudo_mask(s) for s in scenes]), SMALL, seed=0)


def _iou(maps, ids, scene):
    return masks.mean_iou(masks.label_map(masks.normalize(maps, "minmax_per_class"), ids, 0.5), scene.label)


def test_propagation_improves_coarse_maps_of_unseen_scenes(model):
    before, after = [], []
    for seed in range(20, 24):
        scene = make_scene(seed)
        coarse, ids = _coarse_maps(scene)
        before.append(_iou(coarse, ids, scene))
        after.append(_iou(model.propagate(scene.image, coarse), ids, scene))
    assert np.mean(after) > np.mean(before) + 0.03, (before, after)


def test_random_walk_mass_stays_inside_objects(model):
    """At pixels near an edge, the share of walk weight that crosses to another label is well below the
    share of such neighbours (what an untrained, uniform walk gives)."""
    scene = make_scene(30)
    t = model.transition(scene.image)  # (K, H*W)
    r = model.params.radius
    lab = torch.from_numpy(scene.label.astype(np.float32))[None, None]
    win = torch.nn.functional.unfold(lab, 2 * r + 1, padding=r)[0]  # (K, H*W) neighbour labels
    neighbour = t > 0
    other = (win != lab.view(1, -1)) & neighbour
    edge = other.any(0)
    crossing = (t * other).sum(0)[edge].mean()
    uniform = (other.sum(0) / neighbour.sum(0))[edge].mean()
    assert crossing < 0.6 * uniform, (crossing, uniform)


def test_make_mask_with_affinity_refinement(model):
    scene = make_scene(21)
    coarse, ids = _coarse_maps(scene)
    small = torch.nn.functional.avg_pool2d(coarse[None], 4)[0]  # a 16 x 16 "attention map"
    params = MaskParams(refine="affinity", normalize="minmax_per_class")
    labels, scores = masks.make_mask(small, scene.image, params, ids, affinity=model)
    plain, _ = masks.make_mask(small, scene.image, params.model_copy(update={"refine": "none"}), ids)
    assert labels.shape == scene.label.shape and scores.shape == (len(ids), 64, 64)
    assert masks.mean_iou(labels, scene.label) > masks.mean_iou(plain, scene.label)


def test_propagate_keeps_the_input_type_and_size(model):
    scene = make_scene(22)
    coarse, _ = _coarse_maps(scene)
    out = model.propagate(scene.image, coarse.numpy()[:, ::4, ::4])
    assert isinstance(out, np.ndarray) and out.shape == (coarse.shape[0], 64, 64)
    assert isinstance(model.propagate(scene.image, coarse), torch.Tensor)


def test_fit_is_seeded_and_leaves_global_rng_alone():
    scenes = [make_scene(200 + i) for i in range(2)]
    images, labels = np.stack([s.image for s in scenes]), np.stack([_pseudo_mask(s) for s in scenes])
    tiny = AffinityParams(steps=3, pairs=256, width=8)
    state = torch.get_rng_state()
    a = fit_affinity(images, labels, tiny, seed=7).transition(scenes[0].image)
    assert torch.equal(torch.get_rng_state(), state)
    b = fit_affinity(images, labels, tiny, seed=7).transition(scenes[0].image)
    c = fit_affinity(images, labels, tiny, seed=8).transition(scenes[0].image)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_bad_input(model):
    scene = make_scene(1)
    images = scene.image[None]
    with pytest.raises(ValueError, match="match the images"):
        fit_affinity(images, scene.label[None, :32], SMALL)
    with pytest.raises(ValueError, match="affinity needs both"):
        fit_affinity(images, np.full((1, 64, 64), 255, np.uint8), SMALL)
    with pytest.raises(ValueError, match=r"\(B, H, W, 3\) uint8"):
        fit_affinity(images.astype(np.float32), scene.label[None], SMALL)
    with pytest.raises(ValueError, match="NaN/inf"):
        model.propagate(scene.image, np.full((1, 64, 64), np.nan, np.float32))

"""Attention maps -> masks: exponentiation, thresholds, band, regions, the whole pipeline, bad input."""
import numpy as np
import pytest
import torch

from dmutils.config import MaskParams
from dmutils.data.toyworld import make_scene
from dmutils.masks import refine as masks
from dmutils.masks.refine import MaskInputError, make_mask


def _softmax_rows(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(n, n, generator=g) * 3, dim=1)


def _toy_cross(scene, resolutions=(8, 16), seed=0):
    """Attention-like maps of a toy scene: its exact class masks pooled to each resolution, plus noise."""
    ids = sorted(int(c) for c in np.unique(scene.label) if c != 0)
    onehot = torch.from_numpy(np.stack([scene.label == c for c in ids]).astype(np.float32))
    rng = np.random.default_rng(seed)
    maps = {r: torch.nn.functional.adaptive_avg_pool2d(onehot[None], r)[0] * 0.6
            + torch.from_numpy(rng.uniform(0, 0.4, (len(ids), r, r)).astype(np.float32)) for r in resolutions}
    return maps, ids


# -- self-attention exponentiation ---------------------------------------------------------------
def test_exponentiation_equals_dense_matrix_power():
    cross = torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(1))
    a_self = _softmax_rows(64, seed=2)  # an 8 x 8 grid: the cross maps are resized to it first
    got = masks.self_attention_refine(cross, a_self, tau=3)
    a_cross = masks.upsample(cross, (8, 8)).reshape(3, 64).T  # (N, C), pixel -> token
    want = (torch.linalg.matrix_power(a_self.double(), 3) @ a_cross.double()).T.reshape(3, 8, 8)
    assert got.shape == (3, 8, 8)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)


def test_tau_zero_is_identity():
    cross = torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(3))
    assert torch.equal(masks.self_attention_refine(cross, _softmax_rows(64, seed=4), tau=0), cross)


def test_finest_self_attention_is_used_from_a_dict():
    cross = torch.rand(2, 4, 4, generator=torch.Generator().manual_seed(5))
    fine = _softmax_rows(64, seed=6)
    got = masks.self_attention_refine(cross, {4: _softmax_rows(16, seed=7), 8: fine}, tau=1)
    torch.testing.assert_close(got, masks.self_attention_refine(cross, fine, tau=1))


# -- labelling --------------------------------------------------------------------------------
def test_argmax_then_background_below_threshold():
    a = np.array([[0.9, 0.2, 0.3, 0.6]], dtype=np.float32)
    b = np.array([[0.1, 0.8, 0.2, 0.7]], dtype=np.float32)
    labels = masks.label_map(np.stack([a, b]), [3, 5], threshold=0.5)
    assert labels.dtype == np.uint8
    assert labels.tolist() == [[3, 5, 0, 5]]
    # per-class thresholds: the winner's own threshold decides
    labels = masks.label_map(np.stack([a, b]), [3, 5], threshold=[0.5, 0.75])
    assert labels.tolist() == [[3, 5, 0, 0]]


def test_uncertain_band_is_exactly_lo_inclusive_hi_exclusive():
    winning = np.array([[0.125, 0.25, 0.5, 0.625, 0.75, 0.875]], dtype=np.float32)  # exact in float32
    scores = np.stack([winning, winning / 4])
    labels = masks.label_map(scores, [7, 9], threshold=0.5, uncertain_band=(0.25, 0.75))
    assert labels.tolist() == [[0, 255, 255, 255, 7, 7]]


def test_uncertain_band_on_random_scores():
    scores = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(8))
    labels = masks.label_map(scores, [1, 2, 3], threshold=0.55, uncertain_band=(0.5, 0.6))
    best = scores.max(0).values.numpy()
    band = (best >= 0.5) & (best < 0.6)
    assert band.any() and (labels[band] == 255).all() and (labels[~band] != 255).all()


# -- thresholds -----------------------------------------------------------------------------------
def _write_table(path, rows):
    path.write_text("class,threshold,iou\n" + "".join(f"{c},{t},0.5\n" for c, t in rows))
    return path


def test_per_class_table_is_read_and_applied(tmp_path):
    table = _write_table(tmp_path / "thresholds.csv", [("circle", 0.2), ("square", 0.95)])
    assert masks.read_threshold_table(table) == {"circle": 0.2, "square": 0.95}
    scores = np.full((2, 4, 4), 0.0, dtype=np.float32)
    scores[0, :2] = 0.5   # circle wins on the top half, above its 0.2
    scores[1, 2:] = 0.9   # square wins on the bottom half, below its 0.95
    image = np.zeros((4, 4, 3), np.uint8)
    params = MaskParams(refine="none", normalize="none", threshold_mode="per_class", threshold_table=str(table))
    labels, _ = make_mask(scores, image, params, [1, 2], class_names=["circle", "square"])
    assert (labels[:2] == 1).all() and (labels[2:] == 0).all()


def test_class_missing_from_table_is_an_error(tmp_path):
    table = _write_table(tmp_path / "thresholds.csv", [("circle", 0.4)])
    params = MaskParams(refine="none", threshold_mode="per_class", threshold_table=str(table))
    with pytest.raises(MaskInputError, match="'star'.*not in the threshold table"):
        make_mask(np.ones((2, 4, 4), np.float32), np.zeros((4, 4, 3), np.uint8), params, [1, 4], class_names=["circle", "star"])
    with pytest.raises(MaskInputError, match="not found"):
        masks.read_threshold_table(tmp_path / "absent.csv")


def test_adaptive_picks_the_candidate_that_agrees_best():
    scores = torch.rand(2, 16, 16, generator=torch.Generator().manual_seed(9))
    reference = masks.label_map(scores, [1, 2], 0.45)
    best, ious = masks.adaptive_threshold(scores, [1, 2], [0.25, 0.45, 0.65], reference)
    assert best == 0.45
    assert ious[1] == pytest.approx(1.0) and ious[0] < 1.0 and ious[2] < 1.0


def test_adaptive_beats_fixed_on_toy_scenes():
    fixed, adaptive = [], []
    for seed in range(3):
        scene = make_scene(seed)
        maps, ids = _toy_cross(scene, seed=seed)
        for mode, out in (("fixed", fixed), ("adaptive", adaptive)):
            params = MaskParams(refine="none", normalize="minmax_per_class", threshold_mode=mode, threshold=0.5)
            out.append(masks.mean_iou(make_mask(maps, scene.image, params, ids)[0], scene.label))
    assert np.mean(adaptive) >= np.mean(fixed)


# -- regions, resolutions, normalisation -----------------------------------------------------------
def test_small_regions_are_removed():
    labels = np.zeros((12, 12), np.uint8)
    labels[1:6, 1:6] = 3          # 25 px: kept
    labels[8, 8] = labels[9, 9] = 3  # 2 px joined diagonally: removed
    labels[10:12, 0:3] = 255      # ignore is never touched
    labels[0, 10:12] = 4          # 2 px of another class: removed
    out = masks.remove_small_regions(labels, min_pixels=3)
    assert (out[1:6, 1:6] == 3).all() and out[8, 8] == 0 and out[9, 9] == 0 and (out[0, 10:12] == 0).all()
    assert (out[10:12, 0:3] == 255).all()
    assert masks.remove_small_regions(labels, min_pixels=2)[8, 8] == 3  # 8-connected: the pair is one region


def test_resolution_weights():
    m8, m16 = torch.rand(2, 8, 8), torch.rand(2, 16, 16)
    only8 = masks.combine_resolutions({8: m8, 16: m16}, {8: 1.0, 16: 0.0})
    torch.testing.assert_close(only8, masks.upsample(m8, (16, 16)))
    mean = masks.combine_resolutions({8: m8, 16: m16})
    torch.testing.assert_close(mean, (masks.upsample(m8, (16, 16)) + m16) / 2)
    with pytest.raises(MaskInputError, match=r"no weight for resolution\(s\) \[16\]"):
        masks.combine_resolutions({8: m8, 16: m16}, {8: 1.0})


def test_normalisation_modes():
    maps = torch.stack([torch.linspace(0.2, 0.4, 16).reshape(4, 4), torch.linspace(0.1, 0.9, 16).reshape(4, 4)])
    joint = masks.normalize(maps, "minmax")
    assert joint.min() == 0 and joint.max() == 1
    assert torch.equal(joint.argmax(0), maps.argmax(0))  # the classes keep their relative strength
    per = masks.normalize(maps, "minmax_per_class")
    assert torch.allclose(per.amax((1, 2)), torch.ones(2)) and torch.allclose(per.amin((1, 2)), torch.zeros(2))
    assert torch.equal(masks.normalize(maps, "none"), maps)


# -- the whole pipeline ------------------------------------------------------------------------------
def test_make_mask_on_a_toy_scene_is_reproducible_and_good():
    scene = make_scene(11, n_objects=2)
    maps, ids = _toy_cross(scene, seed=11)
    # a self-attention that averages over 3x3 neighbourhoods of the 16 x 16 grid
    yy, xx = torch.meshgrid(torch.arange(16), torch.arange(16), indexing="ij")
    pos = torch.stack([yy.reshape(-1), xx.reshape(-1)], 1).float()
    near = (torch.cdist(pos, pos, p=float("inf")) <= 1).float()
    a_self = near / near.sum(1, keepdim=True)
    params = MaskParams(refine="self_attention", tau=2, normalize="minmax_per_class", uncertain_band=(0.45, 0.55), min_area=0.01)
    labels, scores = make_mask(maps, scene.image, params, ids, self_attn=a_self)
    assert labels.shape == (64, 64) and labels.dtype == np.uint8
    assert scores.shape == (len(ids), 64, 64) and scores.dtype == np.float32
    assert set(np.unique(labels)) <= {0, 255, *ids}
    assert masks.mean_iou(labels, scene.label) > 0.6
    again, again_scores = make_mask(maps, scene.image, params, ids, self_attn=a_self)
    assert np.array_equal(labels, again) and np.array_equal(scores, again_scores)


# -- bad input -----------------------------------------------------------------------------------
IMAGE = np.zeros((16, 16, 3), np.uint8)
PLAIN = MaskParams(refine="none")


@pytest.mark.parametrize("maps, ids, match", [
    ({8: np.ones((2, 8, 8)), 16: np.ones((3, 16, 16))}, [1, 2], "different numbers of class maps"),
    (np.ones((8, 8)), [1], r"must be \(C, h, w\)"),
    (np.full((2, 8, 8), np.nan), [1, 2], "NaN/inf"),
    ({8: np.ones((2, 8, 8)), 16: np.full((2, 16, 16), np.inf)}, [1, 2], r"class_maps\[16\].*NaN/inf"),
    (np.ones((2, 8, 8)), [1], "one label index per map: 2 maps"),
    (np.ones((2, 8, 8)), [0, 1], "1..254"),
    (np.ones((2, 8, 8)), [1, 255], "1..254"),
    (np.ones((2, 8, 8)), [1.0, 2.0], "integers"),
])
def test_bad_maps_and_class_ids(maps, ids, match):
    with pytest.raises(MaskInputError, match=match):
        make_mask(maps, IMAGE, PLAIN, ids)


def test_bad_image_and_self_attention():
    maps = np.ones((1, 8, 8), np.float32)
    with pytest.raises(MaskInputError, match=r"image must be \(H, W, 3\) uint8"):
        make_mask(maps, IMAGE.astype(np.float32), PLAIN, [1])
    sa = MaskParams(refine="self_attention", tau=1)
    with pytest.raises(MaskInputError, match="needs self_attn"):
        make_mask(maps, IMAGE, sa, [1])
    with pytest.raises(MaskInputError, match="no grid"):
        make_mask(maps, IMAGE, sa, [1], self_attn=_softmax_rows(60, seed=0))
    with pytest.raises(MaskInputError, match="rows must sum to 1"):
        make_mask(maps, IMAGE, sa, [1], self_attn=torch.rand(64, 64))
    with pytest.raises(MaskInputError, match="needs affinity"):
        make_mask(maps, IMAGE, MaskParams(refine="affinity"), [1])
    with pytest.raises(MaskInputError, match="needs class_names"):
        make_mask(maps, IMAGE, MaskParams(refine="none", threshold_mode="per_class", threshold_table="x.csv"), [1])

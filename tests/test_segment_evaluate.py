"""Evaluation numbers against hand-computed IoU, TTA flip-back, seen/unseen groups, pseudo-labels."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from dmutils.segment.evaluate import evaluate, predict_scores
from dmutils.segment.models import Segmenter
from dmutils.segment.selftrain import PseudoLabeled

CLASSES = ["background", "a", "b", "c"]


pytestmark = pytest.mark.usefixtures("one_thread")


class FixedPrediction(nn.Module):
    """A 'model' whose logits are a fixed label map, whatever the input."""

    def __init__(self, pred: np.ndarray, n: int):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))
        self.logits = torch.nn.functional.one_hot(torch.from_numpy(pred).long(), n).permute(2, 0, 1).float()[None] * 10

    def forward(self, pixel_values):
        return SimpleNamespace(logits=self.logits.expand(len(pixel_values), -1, -1, -1))


class PerPixel(nn.Module):
    """A 1x1-conv 'model': a per-pixel function, so flips commute with it exactly."""

    def __init__(self, n: int):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, n, 1)

    def forward(self, pixel_values):
        return SimpleNamespace(logits=self.conv(pixel_values) * 5)


class ListDataset:
    def __init__(self, samples, classes):
        self.samples, self.classes = samples, classes

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        return self.samples[i]


def test_miou_equals_hand_computed_iou():
    label = np.array([[0, 0, 1, 1], [0, 255, 1, 2]], np.uint8)
    pred = np.array([[0, 1, 1, 1], [0, 0, 2, 2]], np.uint8)
    seg = Segmenter(FixedPrediction(pred, 4), "segformer", CLASSES, image_size=2)
    data = ListDataset([(np.zeros((2, 4, 3), np.uint8), label)], CLASSES)
    r = evaluate(seg, data, seen_classes=["a"])
    # the ignored pixel (1, 1) counts nowhere; class c occurs in neither map and is left out
    iou = {"background": 2 / 3, "a": 2 / 4, "b": 1 / 2}
    assert r.per_class[list(iou)].to_numpy() == pytest.approx(list(iou.values()))
    assert np.isnan(r.per_class["c"])
    assert r.miou == pytest.approx(np.mean(list(iou.values())))
    assert r.confusion.sum() == 7 and r.confusion[1, 2] == 1 and r.confusion[0, 1] == 1
    seen, unseen = (2 / 3 + 1 / 2) / 2, 1 / 2
    assert r.groups["seen"] == pytest.approx(seen) and r.groups["unseen"] == pytest.approx(unseen)
    assert r.groups["harmonic"] == pytest.approx(2 * seen * unseen / (seen + unseen))
    assert r.to_dict()["miou_unseen"] == pytest.approx(unseen)


def test_unknown_seen_class_is_refused():
    seg = Segmenter(FixedPrediction(np.zeros((2, 2), np.uint8), 4), "segformer", CLASSES, image_size=2)
    data = ListDataset([(np.zeros((2, 2, 3), np.uint8), np.zeros((2, 2), np.uint8))], CLASSES)
    with pytest.raises(ValueError, match="seen classes \\['zebra'\\]"):
        evaluate(seg, data, seen_classes=["zebra"])


def test_tta_flips_back():
    seg = Segmenter(PerPixel(4), "segformer", CLASSES, image_size=16)
    x = torch.randn(2, 3, 16, 24)
    x[..., :8] += 3  # left/right asymmetric input
    plain = predict_scores(seg, x)
    flipped_only = predict_scores(seg, x, tta=True, scales=[1.0])
    assert torch.allclose(plain, flipped_only, atol=1e-5)
    assert not torch.allclose(plain, plain.flip(-1), atol=1e-3)  # a missing flip-back would show
    multi = predict_scores(seg, x, tta=True, scales=[0.5, 1.0, 2.0])
    assert multi.shape == plain.shape
    assert (multi.argmax(1) == plain.argmax(1)).float().mean() > 0.8
    assert torch.allclose(multi.sum(1), torch.ones_like(multi[:, 0]), atol=1e-4)


def test_pseudo_labels_mark_unsure_pixels_ignore():
    seg = Segmenter(PerPixel(4), "segformer", CLASSES, image_size=8)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (8, 8, 3), dtype=np.uint8) for _ in range(3)]
    data = ListDataset([(im, np.zeros((8, 8), np.uint8)) for im in images], CLASSES)
    lo, hi = PseudoLabeled(seg, data, confidence=0.0), PseudoLabeled(seg, data, confidence=0.9)
    x = torch.stack([torch.from_numpy(im) for im in images])
    assert lo.ignored_fraction == 0 and 0 < hi.ignored_fraction < 1
    for (_, a), (_, b) in zip(lo, hi):
        kept = b != 255
        assert np.array_equal(a[kept], b[kept]) and a.max() < 4
    assert len(x) == len(hi) and hi.classes == CLASSES

"""The toy world's second labeller (colour and shape rules) and the oracle-error measurement, on real toy renders of
the test split's seeds (the heuristic's thresholds were set on the training split's)."""
from __future__ import annotations

import numpy as np
import pytest

from dmutils.config import load_params
from dmutils.data.toyworld import SPLIT_SEED_OFFSET, make_scene
from dmutils.oracles import get_oracle
from dmutils.oracles.toy_heuristic import HeuristicLabeller, oracle_error

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def real():
    scenes = [make_scene(SPLIT_SEED_OFFSET["test"] + i) for i in range(40)]
    return np.stack([s.image for s in scenes]), np.stack([s.label for s in scenes])


class Shuffled:
    """A broken labeller: right shapes, classes permuted (what a wrong label map would do)."""

    def __init__(self, inner):
        self.inner = inner

    def predict(self, images):
        lut = np.array([0, 2, 3, 4, 5, 6, 1], dtype=np.uint8)
        return lut[self.inner.predict(images)]


def test_the_heuristic_labels_real_renders_and_a_broken_labeller_misses_the_floor(real):
    images, labels = real
    h = HeuristicLabeller()
    pred = h.predict(images)
    assert pred.shape == labels.shape and pred.dtype == np.uint8
    assert h.predict(images[0]).shape == labels[0].shape
    oracle = get_oracle(load_params(None, []))
    r = oracle_error(oracle, h, images, labels)
    assert r["heuristic_miou_real"] > 0.8 and r["oracle_miou_real"] > 0.9 and r["agreement_real"] > 0.75
    broken = oracle_error(oracle, Shuffled(h), images, labels)
    assert broken["heuristic_miou_real"] < 0.3 and broken["agreement_real"] < 0.3
    # generated images stand-in: the bound is (1 - agreement) + (1 - heuristic's mIoU on real renders)
    g = oracle_error(oracle, h, images, labels, generated=images[:10])
    assert g["oracle_error_bound_generated"] == pytest.approx((1 - g["agreement_generated"]) + (1 - g["heuristic_miou_real"]))


def test_the_heuristic_is_an_oracle_kind():
    params = load_params(None, ["oracle.kind=toy_heuristic"])
    images = np.stack([make_scene(SPLIT_SEED_OFFSET["test"] + i).image for i in range(3)])
    labels = get_oracle(params).predict(images)
    np.testing.assert_array_equal(labels, get_oracle(params).lut[HeuristicLabeller().predict(images)])

"""dmutils.stats: pooled mIoU from per-image counts, the bootstrap over whole images, and thresholds chosen on other
images. Plain seeded cases (synthetic counts, no model): each test names the property it guards."""
from __future__ import annotations

import numpy as np
import pytest

from dmutils import stats


def synthetic(n: int, classes: int, rng: np.random.Generator, quality: float, spread: float = 0.15):
    """[n, classes] counts: each image has a difficulty shared by its classes; IoU ~ quality - difficulty."""
    union = rng.integers(50, 400, size=(n, classes))
    difficulty = rng.normal(0, spread, size=(n, 1))
    iou = np.clip(quality - difficulty + rng.normal(0, 0.05, size=(n, classes)), 0, 1)
    return np.floor(iou * union).astype(np.int64), union


def test_confusion_counts_by_hand_and_pooled_miou_is_the_mean_of_summed_ious():
    true = np.array([[0, 0, 1, 1], [0, 255, 2, 2]], dtype=np.uint8)
    pred = np.array([[0, 1, 1, 1], [255, 0, 2, 0]], dtype=np.uint8)
    inter, union = stats.confusion_counts(pred, true, 3)
    assert inter.tolist() == [1, 2, 1] and union.tolist() == [3, 3, 2]
    # pooled over images: sum first, then divide (not the mean of per-image IoUs)
    i, u = np.array([[1, 0], [9, 0]]), np.array([[10, 0], [10, 5]])
    assert stats.pooled_miou(i, u) == pytest.approx(np.mean([10 / 20, 0 / 5]))
    assert np.isnan(stats.pooled_miou(np.zeros((2, 2)), np.zeros((2, 2))))


def test_ci_covers_the_true_difference_of_a_known_effect():
    """Variant b is better by a known amount on a large 'population'; on samples of 60 images the 95% interval of
    the paired difference covers the population's difference in most of 40 draws (and excludes 0)."""
    rng = np.random.default_rng(0)
    pop_n = 20_000
    union = rng.integers(50, 400, size=(pop_n, 3))
    difficulty = rng.normal(0, 0.15, size=(pop_n, 1))
    base = np.clip(0.6 - difficulty + rng.normal(0, 0.05, size=(pop_n, 3)), 0, 1)
    better = np.clip(base + 0.04 + rng.normal(0, 0.03, size=(pop_n, 3)), 0, 1)
    ia, ib = np.floor(base * union).astype(np.int64), np.floor(better * union).astype(np.int64)
    truth = stats.pooled_miou(ib, union) - stats.pooled_miou(ia, union)
    covered, excludes_zero = 0, 0
    for draw in range(40):
        idx = rng.integers(0, pop_n, 60)
        r = stats.paired_bootstrap((ia[idx], union[idx]), (ib[idx], union[idx]), n_boot=1000, seed=draw)
        covered += r["ci_lo"] <= truth <= r["ci_hi"]
        excludes_zero += r["ci_lo"] > 0
    assert covered >= 34  # nominal 38 of 40
    assert excludes_zero >= 36


def test_identical_variants_differ_by_exactly_zero():
    rng = np.random.default_rng(1)
    i, u = synthetic(30, 4, rng, 0.5)
    r = stats.paired_bootstrap((i, u), (i.copy(), u.copy()), n_boot=500, seed=3)
    assert r["diff"] == 0.0 and r["ci_lo"] == 0.0 and r["ci_hi"] == 0.0 and r["n"] == 30
    one = stats.bootstrap_ci(i, u, n_boot=500, seed=3)
    assert one["ci_lo"] <= one["miou"] <= one["ci_hi"] and one["miou"] == pytest.approx(stats.pooled_miou(i, u))


def test_resampling_is_by_whole_images():
    """Two classes that always fail together: image k is all-good or all-bad for both classes. Resampling whole
    images keeps them together, so in every resample the two class IoUs are equal and the width of the interval
    is that of one class; resampling classes (or pixels) independently would break that tie and narrow it."""
    n = 40
    good = np.arange(n) % 2 == 0
    inter = np.where(good, 100, 0)[:, None].repeat(2, axis=1)
    union = np.full((n, 2), 100)
    w = stats._weights(n, 300, seed=0)
    i, u = w @ inter, w @ union
    np.testing.assert_array_equal(i[:, 0] / u[:, 0], i[:, 1] / u[:, 1])  # the classes of an image move together
    both = stats.bootstrap_ci(inter, union, n_boot=2000, seed=0)
    alone = stats.bootstrap_ci(inter[:, :1], union[:, :1], n_boot=2000, seed=0)
    assert (both["ci_lo"], both["ci_hi"]) == pytest.approx((alone["ci_lo"], alone["ci_hi"]))
    # what independent per-class resampling would give: a mean of two independent resamples, visibly narrower
    wa, wb = stats._weights(n, 2000, seed=0), stats._weights(n, 2000, seed=1)
    indep = 0.5 * (wa @ inter[:, 0] + wb @ inter[:, 1]) / (100 * n)
    lo, hi = np.quantile(indep, [0.025, 0.975])
    assert hi - lo < 0.8 * (both["ci_hi"] - both["ci_lo"])


def test_paired_bootstrap_refuses_unpaired_input():
    rng = np.random.default_rng(2)
    a, b = synthetic(10, 3, rng, 0.5), synthetic(11, 3, rng, 0.5)
    with pytest.raises(ValueError, match="same images"):
        stats.paired_bootstrap(a, b)
    with pytest.raises(ValueError, match="intersection <= union"):
        stats.bootstrap_ci(np.array([[5]]), np.array([[3]]))


def test_folds_are_seeded_and_balanced():
    f = stats.folds(23, 5, seed=4)
    assert np.bincount(f).tolist() == [5, 5, 5, 4, 4]
    np.testing.assert_array_equal(f, stats.folds(23, 5, seed=4))
    assert not np.array_equal(f, stats.folds(23, 5, seed=5))
    assert stats.folds(3, 5).max() == 2  # k capped at n


def test_the_threshold_is_never_chosen_on_the_scored_images():
    """A planted trap: on every image, threshold 2 is mediocre except on a few 'trap' images where it is perfect and
    threshold 0 bad; threshold 1 is good everywhere else. Editing the scored fold's own counts (planting the trap
    there) never changes the threshold it is scored at."""
    n, t, c = 30, 3, 2
    union = np.full((n, t, c), 100)
    inter = np.empty((n, t, c), dtype=np.int64)
    inter[:, 0] = 50
    inter[:, 1] = 80
    inter[:, 2] = 60
    clean = stats.cross_fit(inter, union, k=5, seed=0)
    assert (clean.chosen == 1).all()
    fold = clean.fold
    for f in range(5):
        trapped = inter.copy()
        trapped[fold == f, 2] = 100  # perfect at threshold 2 on the scored fold only
        trapped[fold == f, 1] = 0
        r = stats.cross_fit(trapped, union, k=5, seed=0)
        np.testing.assert_array_equal(r.chosen[fold == f], clean.chosen[fold == f])  # the trap is not seen
        assert (r.inter[fold == f] == 0).all()  # scored at threshold 1, where its own counts are now 0
    # choosing on all images (in-sample) falls into the trap of fold 0 (0.68 at threshold 2 > 0.64 at 1); the
    # cross-fitted choice for fold 0 does not
    trapped = inter.copy()
    trapped[fold == 0, 2], trapped[fold == 0, 1] = 100, 0
    assert stats.choose_threshold(trapped, union) == 2
    assert (stats.cross_fit(trapped, union, k=5, seed=0).chosen[fold == 0] == 1).all()


def test_cross_fitting_is_not_optimistic_where_in_sample_choice_is():
    """Pure noise across many thresholds: every threshold has the same expected mIoU, so the in-sample best is
    biased upward and the cross-fitted score is not (on average over draws)."""
    rng = np.random.default_rng(5)
    gaps_in, gaps_cf = [], []
    for _ in range(30):
        union = np.full((20, 15, 2), 100)
        inter = rng.integers(20, 81, size=union.shape)
        expected = 0.5
        best = stats.choose_threshold(inter, union)
        gaps_in.append(stats.pooled_miou(inter[:, best], union[:, best]) - expected)
        cf = stats.cross_fit(inter, union, k=5, seed=0)
        gaps_cf.append(stats.pooled_miou(cf.inter, cf.union) - expected)
    assert np.mean(gaps_in) > 0.02 and abs(np.mean(gaps_cf)) < 0.01

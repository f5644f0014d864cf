"""Issue 24's recipe studies at tiny scale: noise learning on corrupted toy labels, open vocabulary, scaling."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from dmutils import stats
from dmutils.config import load_params
from dmutils.errors import ParamsError
from dmutils.studies import noise_study as ns
from dmutils.studies import trainings as tr

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_params(steps: int = 2, **train):
    from dmutils.paths import REPO_ROOT

    return load_params(REPO_ROOT / "params" / "toy.yaml", {"train": {**tr.TINY_TRAIN, "steps": steps, **train}})


# ---------------------------------------------------------------------------------------------
# stats.seeds_bootstrap
# ---------------------------------------------------------------------------------------------
def test_seeds_bootstrap_is_the_mean_over_seeds_and_pairs_seeds_and_images():
    rng = np.random.default_rng(0)
    union = rng.integers(50, 100, (3, 20, 4))
    inter = (union * rng.uniform(0.3, 0.9, union.shape)).astype(int)
    ci = stats.seeds_bootstrap(inter, union)
    per_seed = [stats.pooled_miou(inter[s], union[s]) for s in range(3)]
    assert ci["value"] == pytest.approx(np.mean(per_seed))
    assert ci["ci_lo"] < ci["value"] < ci["ci_hi"] and (ci["seeds"], ci["n"]) == (3, 20)
    same = stats.seeds_bootstrap(inter, union, inter, union)
    assert (same["value"], same["ci_lo"], same["ci_hi"]) == (0.0, 0.0, 0.0)
    one_seed = stats.seeds_bootstrap(inter[:1], union[:1])
    assert one_seed["value"] == pytest.approx(stats.bootstrap_ci(inter[0], union[0])["miou"])
    with pytest.raises(ValueError, match=r"\[seeds, images, classes\]"):
        stats.seeds_bootstrap(inter[0], union[0])


# ---------------------------------------------------------------------------------------------
# Noise learning
# ---------------------------------------------------------------------------------------------
def test_corruptions_do_what_they_say():
    from dmutils.data.toyworld import make_scene

    label = make_scene(3, size=32, n_objects=2).label
    rng = np.random.default_rng(0)
    swapped = ns.corrupt(label, "swapped", rng, 7)
    assert ((swapped == 0) == (label == 0)).all() and not (swapped[label > 0] == label[label > 0]).any()
    eroded = ns.corrupt(label, "eroded", rng, 7, erode=0.06)
    assert (eroded[eroded > 0] == label[eroded > 0]).all() and (eroded > 0).sum() < (label > 0).sum()
    shifted = ns.corrupt(label, "shifted", rng, 7, shift=0.25)
    assert (shifted > 0).sum() <= (label > 0).sum() and not (shifted == label).all()
    assert set(np.unique(shifted)) <= set(np.unique(label))
    picked = ns.corrupted_indices(40, 0.2, seed=1, kind="eroded")
    assert len(picked) == 8 and (np.diff(picked) > 0).all()
    with pytest.raises(ParamsError, match="corruption kind 'blur' unknown"):
        ns.corrupt(label, "blur", rng, 7)


def test_detection_precision_recall_auc():
    scores = pd.DataFrame({"index": range(6), "iou": [0.1, 0.2, 0.9, 0.8, 0.7, 0.3]})
    found = ns.detection(scores, corrupted=[0, 1], dropped=[0, 5])
    assert found["precision"] == 0.5 and found["recall"] == 0.5 and found["auc"] == 1.0


def test_noise_study_trains_every_arm_caches_and_tabulates(tmp_path):
    settings = ns.NoiseSettings(shares=(0.25,), kinds=("swapped",), seeds=(0, 1), n_train=8, n_test=4, image_size=32)
    study = ns.run_noise_study(tiny_params(), settings, tmp_path)
    runs = study.runs
    # per seed: clean, none, noise learning at drop 0.2 and 0.25
    assert len(runs) == 8 and not runs.cached.any()
    assert sorted(runs.loc[runs.arm == "noise learning", "train_samples"].unique()) == [6]  # 8 - round(0.2*8) = 8 - 2
    assert runs.loc[runs.arm == "noise learning", ["precision", "recall"]].notna().all().all()
    again = ns.run_noise_study(tiny_params(), settings, tmp_path)
    assert again.runs.cached.all()
    pd.testing.assert_series_equal(again.runs.miou, runs.miou)
    table = ns.noise_table(study)
    assert list(table.arm) == ["clean", "none", "noise learning", "noise learning"]
    assert (table.miou_lo <= table.miou + 1e-12).all() and (table.miou <= table.miou_hi + 1e-12).all()
    assert {"vs_clean", "vs_none", "recovered", "precision", "recall", "auc", "reaches_clean"} <= set(table.columns)
    assert set(ns.answers(table)) == {"swapped"}
    with pytest.raises(ParamsError, match="shares must be in"):
        ns.run_noise_study(tiny_params(), ns.NoiseSettings(shares=(1.5,)), tmp_path)


def test_dropped_vs_kept_scores_masks_against_the_oracle():
    oracle = [np.full((4, 4), c, np.uint8) for c in (1, 1, 2, 2)]
    masks = [oracle[0], oracle[1], np.zeros((4, 4), np.uint8), oracle[3]]  # sample 2's mask is wrong
    scores = pd.DataFrame({"index": range(4), "iou": [0.9, 0.8, 0.1, 0.7], "kept": [True, True, False, True]})
    table = ns.dropped_vs_kept(scores, masks, oracle, 3, n_boot=200).set_index("group")
    assert table.loc["kept", "miou"] == 1.0 and table.loc["dropped", "miou"] == 0.0
    assert table.loc["dropped - kept", "miou"] == -1.0 and table.loc["kept", "samples"] == 3
    with pytest.raises(ParamsError, match="'index' and 'kept'"):
        ns.dropped_vs_kept(scores.drop(columns="kept"), masks, oracle, 3)


# ---------------------------------------------------------------------------------------------
# Open vocabulary and scaling (the embedded toy model, 2 denoising steps)
# ---------------------------------------------------------------------------------------------
GEN = {"model": {"num_inference_steps": 2}, "dataset": {"workers": 0, "min_area": 0.0}}


def test_open_vocab_ignores_unseen_real_pixels_and_adds_unseen_synthetic_masks(tmp_path):
    from dmutils.studies import open_vocab as ov

    params = tr.override(tiny_params(), GEN)
    assert ov.unseen_classes(params, ov.OpenVocabSettings()) == params.class_names[-2:]
    with pytest.raises(ParamsError, match=r"unseen classes \['dragon'\]"):
        ov.unseen_classes(params, ov.OpenVocabSettings(unseen=("dragon",)))
    settings = ov.OpenVocabSettings(unseen=("cross", "ring"), seeds=(0, 1), n_train=6, n_test=4, n_synthetic=4, image_size=32)
    study = ov.run_open_vocab(params, settings, tmp_path)
    real, _ = tr.real_splits(tmp_path, 6, 4, 32)
    masked = ov.seen_only(real, ["cross", "ring"])
    for i in range(len(real)):
        label, seen = real[i][1], masked[i][1]
        unseen = np.isin(label, [5, 6])
        assert (seen[unseen] == 255).all() and (seen[~unseen] == label[~unseen]).all()
    syn = ov.synthetic_unseen(params, ["cross", "ring"], tmp_path, 4)  # made once: read back
    values = set(np.unique(np.concatenate([syn[i][1].ravel() for i in range(len(syn))])))
    assert values <= {0, 5, 6, 255} and len(syn) == 4
    runs = study.runs
    assert list(runs.arm) == [*ov.ARMS, *ov.ARMS] and not runs.cached.any()
    assert list(runs.train_samples) == [6, 10, 6, 10]
    assert ov.run_open_vocab(params, settings, tmp_path).runs.cached.all()
    table = ov.open_vocab_table(study)
    assert list(table.group.unique()) == ["seen", "unseen", "harmonic"] and table.miou.between(0, 1).all()
    assert table.loc[table.arm == ov.ARMS[1], "vs_real_only"].notna().all()


def test_scaling_nests_subsets_caches_and_reads_off_equivalents(tmp_path):
    from dmutils.studies import scaling as sc

    params = tr.override(tiny_params(), GEN)
    settings = sc.ScalingSettings(synthetic_sizes=(2, 4), real_sizes=(2, 4), seeds=(0, 1), n_test=4, image_size=32,
                                  oversample=1.0)
    study = sc.run_scaling(params, settings, tmp_path)
    assert len(study.runs) == 12 and not study.runs.cached.any()
    mixed = study.runs[study.runs.arm == "real+synthetic"]
    assert list(mixed.train_samples[:2]) == [6, 8]  # real N + the 4 synthetic images
    assert sc.run_scaling(params, settings, tmp_path).runs.cached.all()
    curve = sc.curves(study)
    assert len(curve) == 6 and (curve.miou_lo <= curve.miou + 1e-12).all()
    assert set(sc.mixing_gain(study).columns) >= {"real_images", "gain", "gain_lo", "gain_hi", "beats"}
    sc.synthetic_equivalent(curve)
    assert len(sc.figure(curve).axes[0].lines) == 3
    with pytest.raises(ParamsError, match="real sizes must be distinct"):
        sc.run_scaling(params, sc.ScalingSettings(real_sizes=(4, 4)), tmp_path)
    two_arms = dataclasses.replace(settings, arms=("synthetic", "real"))  # every training read from the cache above
    fewer = sc.run_scaling(params, two_arms, tmp_path)
    assert fewer.runs.cached.all() and set(fewer.runs.arm) == {"synthetic", "real"} and sc.mixing_gain(fewer).empty


def test_synthetic_equivalent_interpolates_on_log_size():
    from dmutils.studies import scaling as sc

    curve = pd.DataFrame({"arm": ["synthetic"] * 3 + ["real"] * 3, "size": [100, 200, 400, 25, 50, 100],
                          "miou": [0.4, 0.5, 0.6, 0.3, 0.55, 0.9]})
    eq = sc.synthetic_equivalent(curve).set_index("real_images")
    assert eq.loc[25, "synthetic_images"] == 100 and eq.loc[25, "at_most"]
    assert eq.loc[50, "synthetic_images"] == pytest.approx(np.sqrt(200 * 400))  # halfway on log size
    assert np.isnan(eq.loc[100, "synthetic_images"])  # beyond the largest synthetic set


@pytest.mark.parametrize("argv, message", [
    (["noise-learning", "--quick", "--shares", "1.5"], "corruption shares must be in (0, 1)"),
    (["open-vocab", "--quick", "--unseen", "dragon"], "unseen classes ['dragon'] are not among"),
    (["scaling", "--quick", "--real-sizes", "4", "4"], "real sizes must be distinct integers"),
    (["scaling", "--quick", "--steps", "0"], "--steps: 'train.steps' = 0 is not allowed"),
])
def test_bad_bench_options_end_in_one_line(argv, message, capsys):
    from dmutils.commands import main

    assert main(["bench", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and err.startswith("dmutils bench: error:")


def test_recipe_conclusions_say_within_noise_and_quote_only_table_cells():
    """Scaling, open vocabulary and noise learning conclude from their tables: every number a cell, an interval
    holding 0 called within noise."""
    import pandas as pd

    from dmutils.studies import noise_study, open_vocab, scaling, wording

    equivalent = pd.DataFrame([{"real_images": 25, "real_miou": 0.41234, "synthetic_images": 100.0, "at_most": True,
                                "synthetic_per_real": 4.0},
                               {"real_images": 50, "real_miou": 0.5, "synthetic_images": 312.7, "at_most": False,
                                "synthetic_per_real": 6.254},
                               {"real_images": 100, "real_miou": 0.6, "synthetic_images": float("nan"), "at_most": False,
                                "synthetic_per_real": float("nan")}])
    gain = pd.DataFrame([{"real_images": 25, "gain": 0.031, "gain_lo": 0.004, "gain_hi": 0.06, "beats": True},
                         {"real_images": 50, "gain": 0.01, "gain_lo": -0.02, "gain_hi": 0.04, "beats": False}])
    said = scaling.conclusions(equivalent, gain)
    assert "about 313 synthetic images (6.3 per real image)" in said[1] and "more synthetic images" in said[2]
    assert said[3].endswith("better.") and said[4].endswith("within noise.")
    ov = pd.DataFrame([{"group": g, "arm": arm, "miou": m, "miou_lo": m - 0.1, "miou_hi": m + 0.1,
                        **({"vs_real_only": d, "vs_real_only_lo": d - 0.05, "vs_real_only_hi": d + 0.05}
                           if arm == open_vocab.ARMS[1] else {})}
                       for g, m, d in (("seen", 0.6, 0.0), ("unseen", 0.2, 0.3), ("harmonic", 0.3, 0.2))
                       for arm in open_vocab.ARMS])
    ov_said = open_vocab.conclusions(ov)
    assert [s.split(":")[0] for s in ov_said] == ["seen", "unseen", "harmonic"]
    assert ov_said[0].endswith("within noise.") and ov_said[1].endswith("better.")
    nl = pd.DataFrame([{"kind": "shifted", "share": 0.2, "arm": "noise learning", "drop": 0.2, "vs_none": -0.01,
                        "vs_none_lo": -0.03, "vs_none_hi": 0.01, "recovered": -0.25, "recall": 0.3, "auc": 0.52},
                       {"kind": "shifted", "share": 0.4, "arm": "noise learning", "drop": 0.2, "vs_none": 0.1,
                        "vs_none_lo": 0.05, "vs_none_hi": 0.15, "recovered": 0.5, "recall": 0.6, "auc": 0.8}])
    nl_said = noise_study.conclusions(nl)
    assert len(nl_said) == 1 and "within noise" in nl_said[0]  # only drop fraction = share is concluded on
    for sentences, tables in ((said, (equivalent, gain)), (ov_said, (ov,)), (nl_said, (nl,))):
        values = [float(x) for t in tables for x in wording.numbers(t.to_csv(index=False))]
        assert wording.unsupported(sentences, values) == []

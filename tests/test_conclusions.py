"""Each study's conclusions are computed from its tables: every number in them is a table cell (rounded), an interval
that holds 0 is called within noise, and ``ctx.conclude`` records them for the report. The notebook tests
(test_studies, test_notebooks_03_04, test_toymodel_sd3) check the same on the conclusions of executed notebooks."""
import math

import numpy as np
import pandas as pd
import pytest

from dmutils import nb, report
from dmutils.studies import ablations, dataset_report, model_families, segmenter_study, thresholds, wording
from dmutils.studies import attention as study01


def supported(sentences: list[str], *tables: pd.DataFrame) -> None:
    """Every number of ``sentences`` is a cell of ``tables`` as their CSVs write it (the notebooks' rule)."""
    assert sentences and all(isinstance(s, str) and s for s in sentences)
    values = [float(x) for t in tables for x in wording.numbers(t.to_csv(index=False))]
    assert wording.unsupported(sentences, values) == []
    assert not any("nan" in s.lower().split() for s in sentences)


# -- the shared rules ------------------------------------------------------------------------------
def test_numbers_are_read_alike_from_sentences_and_tables():
    assert wording.numbers("tau=4 puts 0.082 at steps 1-7 (cross@16), toy-sd3 -0.015 [+0.001, 0.5].") == \
        ["4", "0.082", "1", "7", "16", "-0.015", "+0.001", "0.5"]
    values = [0.08159264958205859, -0.014743840691403332, 1, 7, 4, 16, 0.001, 0.5]
    assert wording.unsupported(["0.082 and -0.015 at tau=4, steps 1-7 (cross@16) [+0.001, 0.5]."], values) == []
    bad = wording.unsupported(["0.083 is no cell, nor is 0.08 a rounding of 0.0816 to two decimals, 12 is none"], values)
    assert [b.split()[0] for b in bad] == ["0.083", "12"]  # 0.08 is 0.0816 rounded to 2 decimals: supported


def test_verdict_is_within_noise_when_the_interval_holds_zero_or_the_difference_is_negligible():
    assert wording.verdict(0.01, 0.03) == "better" and wording.verdict(-0.03, -0.01) == "worse"
    assert wording.verdict(-0.01, 0.03) == wording.NOISE == "within noise"
    assert wording.verdict(float("nan"), 0.1) == wording.NOISE
    assert wording.verdict(0.0001, 0.0009, value=0.0004, negligible=wording.NEGLIGIBLE) == wording.NOISE


def test_conclude_records_the_sentences_and_the_index_shows_them(tmp_path):
    ctx = nb.setup(None, ["run.name=c"], tmp_path, style=False)
    ctx.save_table(pd.DataFrame({"a": [0.25]}), "t")
    assert ctx.table("t")["a"].tolist() == [0.25] and ctx.table("missing", missing_ok=True) is None
    ctx.conclude(["A is 0.250 <b>.", "B."])
    assert nb.conclusions(nb.read_artifacts(tmp_path)) == ["A is 0.250 <b>.", "B."]
    assert wording.run_conclusions(tmp_path) == [["A is 0.250 <b>.", "B."]] and wording.unsupported_in_run(tmp_path) == []
    run = {"name": "c", "status": "ok", "seconds": None, "versions": {}, "notebooks": [{"name": "01_x", "status": "ok", "seconds": 1.0,
                                                         "artifacts": nb.read_artifacts(tmp_path)}]}
    html = report.render_index(run, tmp_path)
    assert "<h2>Conclusions</h2>" in html and "<li>A is 0.250 &lt;b&gt;.</li>" in html and "01_x" in html
    ctx.conclude(["A is 0.999."])
    assert wording.unsupported_in_run(tmp_path) == ["0.999 (in: A is 0.999.)"]


# -- study 01 --------------------------------------------------------------------------------------
def in_mask(maps: dict[str, list[float]], fraction: float = 0.1) -> pd.DataFrame:
    """attention_in_mask rows: one (sample, class) pair per value, its AUC; the mass in the mask follows the AUC."""
    return pd.DataFrame([{"prompt": "p", "seed": k, "class": "circle", "word": "circle", "map": m, "auc": v,
                          "mass_in_mask": fraction * 2 * v, "mask_fraction": fraction} for m, vs in maps.items() for k, v in enumerate(vs)])


def test_study01_reads_auc_against_chance_and_tau_paired_against_tau0():
    table = in_mask({"cross@16": [0.9, 0.85, 0.95, 0.88], "cross@8": [0.8, 0.75, 0.7, 0.83], "aggregated": [0.9, 0.8, 0.9, 0.84],
                     "window steps 1-2": [0.4, 0.6, 0.55, 0.45], "window steps 3-4": [0.9, 0.8, 0.9, 0.84],
                     "tau=0": [0.9, 0.8, 0.9, 0.84], "tau=2": [0.8, 0.7, 0.8, 0.76], "tau=4": [0.9, 0.8, 0.912, 0.84]})
    vs = study01.against_uniform(table)
    assert list(vs["map"]) == list(table["map"].unique()) and (vs["n"] == 4).all() and (vs["chance"] == 0.5).all()
    row = vs.set_index("map").loc["aggregated"]
    assert row.auc == pytest.approx(0.86) and row.auc_lo < row.auc < row.auc_hi and row.auc_lo > 0.5
    assert row.mass_in_mask == pytest.approx(0.172) and row.uniform == pytest.approx(0.1)
    pairs = study01.tau_vs_zero(table)
    assert list(pairs["map"]) == ["tau=2", "tau=4"] and (pairs["n"] == 4).all()
    two = pairs.set_index("map").loc["tau=2"]
    assert two["diff"] == pytest.approx(-0.095) and two.diff_hi < 0  # lower on every row: the pairing sees it
    heads = pd.DataFrame({"layer": ["l"] * 3, "head": [0, 1, 2], "entropy": [0.9, 0.95, 0.99], "corr_with_mean": [-0.2, 0.5, 0.9]})
    s = study01.conclusions(vs, heads, pairs)
    supported(s, vs, pairs, heads)
    assert wording.unsupported(s, [float(x) for x in wording.numbers(vs.to_csv(index=False))])  # the pairs' numbers are theirs
    assert "AUC 0.860 [" in s[0] and "above chance" in s[0] and "n = 4 sample-class pairs" in s[0] and "0.5 is an uninformative map" in s[0]
    assert "cross@8 AUC 0.770 [0.725, 0.815] (above chance)" in s[0] and "share of mass inside the mask is 0.172" in s[0]
    assert "paired over the same n = 4" in s[1] and "tau=2 -0.095 [" in s[1] and "worse" in s[1]
    assert "tau=4 +0.003 [" in s[1] and s[1].count("within noise") == 1  # +0.003: below NEGLIGIBLE
    assert "every tau" not in s[1]  # one worse, one within noise: no sweeping reading
    assert "steps 1-2 has AUC 0.500 [" in s[2] and "within noise" in s[2] and "(n = 4 sample-class pairs)" in s[2]
    assert "from -0.200 to 0.900" in s[3] and "differ" in s[3]
    assert "fills" not in " ".join(s) and "sharpens" not in " ".join(s)


def test_study01_refinement_with_a_uniform_floor_is_judged_by_auc_not_by_mass():
    # tau=1 adds a near-uniform floor: its mass in the mask falls towards uniform, yet it ranks the mask's pixels
    # higher on every pair: the AUC headline calls it better
    table = in_mask({"aggregated": [0.6, 0.7, 0.65, 0.62], "tau=0": [0.6, 0.7, 0.65, 0.62], "tau=1": [0.7, 0.8, 0.72, 0.71]})
    table.loc[table["map"] == "tau=1", "mass_in_mask"] = 0.11
    vs, pairs = study01.against_uniform(table), study01.tau_vs_zero(table)
    assert vs.set_index("map").loc["tau=1", "mass_in_mask"] < vs.set_index("map").loc["tau=0", "mass_in_mask"]
    s = study01.conclusions(vs, tau_pairs=pairs)
    supported(s, vs, pairs)
    assert "tau=1 +0.090 [" in s[1] and "better" in s[1] and "every tau ranks the object's pixels above the rest better" in s[1]
    # rows that differ widely, each raised by 0.03: the unpaired intervals overlap, the paired difference is clear
    shifted = in_mask({"tau=0": [0.55, 0.9, 0.6, 0.85], "tau=1": [0.58, 0.93, 0.63, 0.88]})
    vs, pairs = study01.against_uniform(shifted).set_index("map"), study01.tau_vs_zero(shifted)
    assert vs.loc["tau=1", "auc_lo"] < vs.loc["tau=0", "auc_hi"]
    assert pairs["diff"].item() == pytest.approx(0.03) and pairs["diff_lo"].item() == pytest.approx(0.03)
    assert "tau=1 +0.030 [+0.030, +0.030], better" in study01.conclusions(vs.reset_index(), tau_pairs=pairs)[0]
    flat = in_mask({"aggregated": [0.45, 0.55, 0.5, 0.52], "tau=0": [0.45, 0.55, 0.5, 0.52], "tau=2": [0.5, 0.5, 0.45, 0.56]})
    vs, pairs = study01.against_uniform(flat), study01.tau_vs_zero(flat)
    s = study01.conclusions(vs, tau_pairs=pairs)
    supported(s, vs, pairs)
    assert "within noise" in s[0] and "above chance" not in s[0]  # an interval that holds 0.5
    assert "within noise" in s[1] and "better" not in s[1] and "worse" not in s[1]
    # a row without an AUC (empty or full mask) is left out and n says so
    gap = in_mask({"aggregated": [0.9, float("nan"), 0.8, 0.85]})
    assert study01.against_uniform(gap)["n"].tolist() == [3] and "n = 3 sample-class pairs" in study01.conclusions(study01.against_uniform(gap))[0]


# -- study 02 --------------------------------------------------------------------------------------
def tuned(by: str, settings: list, diffs: list[tuple[float, float, float]]) -> pd.DataFrame:
    return pd.DataFrame([{by: v, "miou": 0.8 + d, "ci_lo": 0.75 + d, "ci_hi": 0.85 + d, "n": 12, "thresholds": "0.4 0.5" if d else 0.4,
                          "diff": d, "diff_lo": lo, "diff_hi": hi} for v, (d, lo, hi) in zip(settings, diffs)])


def test_study02_reads_each_setting_against_the_params_own_with_its_interval():
    best = pd.DataFrame({"class": ["circle", "square"], "threshold": [0.3, 0.45], "iou": [0.91, 0.8], "ci_lo": [0.85, 0.7],
                         "ci_hi": [0.95, 0.86], "n": [6, 7]})
    tau = tuned("tau", [0, 1, 4], [(0, 0, 0), (-0.012, -0.05, 0.02), (-0.1, -0.2, -0.04)])
    crf = tuned("crf", [False, True], [(-0.13, -0.16, -0.1), (0, 0, 0)])
    modes = pd.DataFrame({"mode": ["fixed 0.5", "per class", "adaptive"], "mean": [0.87, 0.91, 0.88], "ci_lo": [0.84, 0.88, 0.85],
                          "ci_hi": [0.89, 0.93, 0.9], "n": [12] * 3})
    s = thresholds.conclusions(best, {"tau": tau, "crf": crf}, modes)
    supported(s, best, tau, crf, modes)
    assert "from 0.3 (circle) to 0.45 (square)" in s[0] and "weakest class is square, IoU 0.800 [0.700, 0.860] on 7 images" in s[0]
    assert "tau=1 -0.012 [-0.050, +0.020], within noise" in s[1] and "tau=4 -0.100 [-0.200, -0.040], worse" in s[1]
    assert "params' tau=0 (mIoU 0.800" in s[1]
    assert "params' DenseCRF on" in s[2] and "DenseCRF off -0.130 [-0.160, -0.100], worse" in s[2]
    assert "the ranking is within noise" in s[3] and "optimistic" in s[3]
    apart = modes.assign(ci_lo=[0.8, 0.95, 0.8], mean=[0.85, 0.97, 0.86], ci_hi=[0.9, 0.99, 0.92])
    assert "lies above every other mode's interval" in thresholds.conclusions(best, {}, apart)[-1]


# -- study 03 --------------------------------------------------------------------------------------
def test_study03_names_rejections_the_rarest_class_and_the_run_speed():
    speed = pd.DataFrame([{"generated_now": 10, "skipped_done": 0, "written": 8, "rejected": 2, "seconds": 3.25, "samples_per_s": 3.077}])
    classes = pd.DataFrame({"class": ["background", "circle", "square", "star", "ignore"], "samples": [8, 5, 3, 0, 0],
                            "mean_fraction": [np.nan, 0.1, 0.05, np.nan, np.nan], "pixel_share": [0.9, 0.06, 0.015, 0.0, 0.025]})
    outcomes = pd.DataFrame({"outcome": ["ok", "empty mask", "class word missing"], "samples": [8, 1, 1], "fraction": [0.8, 0.1, 0.1]})
    s = dataset_report.conclusions(speed, classes, outcomes)
    supported(s, speed, classes, outcomes)
    assert s[0] == "8 samples written (a fraction 0.800 of all samples); rejected: empty mask 1, class word missing 1."
    assert "fewest labelled pixels is square, a share 0.015" in s[1] and "the most has circle, 0.060 in 5 samples" in s[1]
    assert s[2] == "No written sample names star (never prompted, or every attempt rejected)."
    assert "3.25 s, 3.077 samples/s" in s[3]
    resumed = dataset_report.conclusions(speed.assign(generated_now=0, skipped_done=10), classes, outcomes[:1])
    assert "none was rejected" in resumed[0] and "10 samples were resumed" in resumed[-1]


# -- study 04 --------------------------------------------------------------------------------------
def test_study04_reads_each_run_against_its_reference_by_the_interval_and_judges_noise_learning_by_its_interval():
    head = pd.DataFrame({"run": list("abcd"), "data": ["real", "synthetic", "real+synthetic", "synthetic+noise learning"],
                         "train_samples": [20, 20, 40, 16], "steps": [160, 160, 320, 128], "epochs": [128.0, 128.0, 128.0, 128.0],
                         "seeds": [3] * 4, "miou": [0.8, 0.68, 0.79, 0.63], "miou_lo": [0.75, 0.6, 0.7, 0.55],
                         "miou_hi": [0.85, 0.7, 0.83, 0.7], "ratio_to_real": [1.0, 0.85, 0.9875, 0.7875], "vs": [None, "a", "a", "b"],
                         "diff": [np.nan, -0.12, -0.01, -0.05], "diff_lo": [np.nan, -0.2, -0.04, -0.09],
                         "diff_hi": [np.nan, -0.05, 0.02, 0.01], "train_seconds": [1.0] * 4, "cached": [False] * 4})
    dropped = pd.DataFrame({"group": ["kept", "dropped", "dropped - kept"], "samples": [16, 4, 20], "miou": [0.7, 0.66, -0.04],
                            "ci_lo": [0.6, 0.5, -0.15], "ci_hi": [0.8, 0.8, 0.06], "mean_image_iou": [0.7, 0.6, -0.1]})
    gap = pd.DataFrame({"class": ["circle", "square"], "hue_spread_ratio": [0.9, 0.07], "hue_shift": [0.01, -0.002], "value_shift": [0.05, 0.055]})
    s = segmenter_study.conclusions(head, gap, dropped)
    supported(s, head, gap, dropped)
    assert ("reaches 0.680 [0.600, 0.700] mIoU on the real test split against 0.800 [0.750, 0.850] with real labels, a ratio "
            "(b)/(a) of 0.850: -0.120 [-0.200, -0.050], worse than real labels (3 seeds, 20 training samples each, 128 epochs)") in s[0]
    assert ("(40 samples, the same 128 epochs, so 320 training steps against 160) gives 0.790 [0.700, 0.830]: -0.010 "
            "[-0.040, +0.020], within noise; more steps alone") in s[1]
    assert "the 16 synthetic samples it kept, 128 epochs, so 128 training steps) gives 0.630" in s[2]
    assert "-0.050 [-0.090, +0.010], within noise" in s[2]
    assert "the 4 masks noise learning dropped score 0.660" in s[3] and "-0.040 [-0.150, +0.060], within noise" in s[3]
    assert "square's: hue spread ratio 0.070" in s[4]
    worse = dropped.assign(ci_lo=[0.6, 0.5, -0.15], ci_hi=[0.8, 0.8, -0.01])
    assert "it dropped worse masks than it kept" in segmenter_study.conclusions(head, None, worse)[3]
    none = dropped.assign(samples=[20, 0, 20], miou=[0.7, np.nan, np.nan])
    assert segmenter_study.conclusions(head, None, none)[3] == "Noise learning dropped no mask in this run."


# -- study 05 --------------------------------------------------------------------------------------
def ablation_rows() -> pd.DataFrame:
    def row(variant, group, d, lo, hi, seg=np.nan, ignored=0.0):
        return {"variant": variant, "group": group, "setting": variant.split(": ")[-1], "miou": 0.9 + d, "miou_lo": 0.85 + d,
                "miou_hi": 0.93 + d, "delta": d, "delta_lo": lo, "delta_hi": hi, "tuned_miou": 0.92 + d, "tuned_lo": 0.9 + d,
                "tuned_hi": 0.94 + d, "tuned_delta": d, "tuned_delta_lo": lo, "tuned_delta_hi": hi, "tuned_thresholds": "0.4",
                "n": 24, "ignored": ignored, "segmenter_miou": seg, "train_samples": np.nan if math.isnan(seg) else 20}
    return pd.DataFrame([row("baseline: params", "baseline", 0, 0, 0, seg=0.3), row("tau: 4", "tau", -0.15, -0.25, -0.04),
                         row("tau: 1", "tau", -0.014, -0.03, 0.006, seg=0.33), row("crf: off", "crf", 0.003, 0.001, 0.005),
                         row("threshold_mode: band [0.5, 0.6)", "threshold_mode", 0.007, 0.001, 0.013, ignored=0.025),
                         row("splicing: on", "splicing", 0, 0, 0, seg=0.25)])


def test_study05_sorts_variants_by_the_interval_of_their_change():
    table = ablation_rows()
    s = ablations.conclusions(table)
    supported(s, table)
    assert "mIoU 0.900 [0.850, 0.930] against the oracle on 24 images, 0.920 at its own threshold" in s[0]
    assert s[1].startswith("Worse masks") and "tau: 4 (-0.150 [-0.250, -0.040])" in s[1] and "tau: 1" not in s[1]
    assert "threshold_mode: band [0.5, 0.6) (+0.007 [+0.001, +0.013], leaving a fraction 0.025 of the pixels unscored)" in s[2]
    assert s[3] == "Within noise of the baseline: tau: 1, crf: off."  # crf: interval above 0 but the change is negligible
    assert "splicing" not in " ".join(s[:4])  # training only: the baseline's masks
    assert "from 0.250 (splicing: on) to 0.330 (tau: 1)" in s[4] and "baseline 0.300" in s[4] and "indicative" in s[4]
    only_noise = table[table["variant"].isin(["baseline: params", "tau: 1"])]
    assert ablations.conclusions(only_noise)[1] == "No variant makes better masks than the baseline beyond noise."


def test_study05_reads_segmenter_effects_from_the_ledger_rows_of_its_groups():
    from dmutils.studies import claims

    def claim(cid, changed, diff, lo, hi, verdict):
        return {"id": cid, "claim": cid.replace("_", " "), "variant": {"data": "synthetic", **changed},
                "reference": {"data": "synthetic"}, "segmenter": {"diff": diff, "ci_lo": lo, "ci_hi": hi, "seeds": 3, "verdict": verdict}}

    rows = [claim("tau_row", {"masks.tau": 1}, 9.31, -3.55, 18.21, "inconclusive"),
            claim("crf_row", {"masks.crf.enabled": True}, 6.8, 3.4, 10.7, "holds"),
            claim("other_row", {"train.tta": True}, -1.0, -2.0, -0.5, "does not hold")]
    variants = [ablations.Variant("baseline", "params"), ablations.Variant("tau", "1", {"masks.tau": 1}),
                ablations.Variant("crf", "off", {"masks.crf.enabled": False})]
    ledger = claims.for_ablation_groups(variants, rows)
    assert list(zip(ledger["group"], ledger["claim"])) == [("tau", "tau_row"), ("crf", "crf_row")]  # other_row changes no grid setting
    table = ablation_rows()
    s = ablations.conclusions(table, ledger)
    supported(s, table, ledger)
    assert "over 3 seeds" in s[-3]
    assert s[-2] == "Holding: crf_row (+6.8 [+3.4, +10.7])." and s[-1] == "Within noise: tau_row (+9.3 [-3.5, +18.2])."
    assert ablations.conclusions(table, ledger.iloc[:0]) == ablations.conclusions(table)


# -- study 06 --------------------------------------------------------------------------------------
def test_study06_reads_the_headline_and_the_views():
    head = pd.DataFrame({"model": ["toy-sd", "toy-sd3"], "family": ["UNet2DConditionModel", "SD3Transformer2DModel"],
                         "best_map_kind": ["cross", "joint_slice"], "attention_miou": [0.714, 0.692], "selected_on": [4, 4],
                         "scored_on": [4, 4], "presence_rate": [1.0, 1.0], "segmenter_ratio": [0.947, np.nan]})
    table = pd.DataFrame({"model": ["toy-sd3"] * 7, "family": ["SD3Transformer2DModel"] * 7,
                          "view": ["map kind", "named word", "named word", "text-to-text attention", "caption route", "caption route",
                                   "caption route"],
                          "setting": ["joint_slice", "first", "second", "cut", "both", "tokens_only", "pooled_only"],
                          "miou": [0.69, 0.61, 0.43, 0.6875, np.nan, np.nan, np.nan],
                          "presence": [1.0, None, None, 1.0, 1.0, 1.0, 0.3125], "cached": [False] * 7})
    s = model_families.conclusions(head, table)
    supported(s, head, table)
    assert ("toy-sd (UNet2DConditionModel): best map kind cross, chosen on 4 images, scores mask mIoU 0.714 against the "
            "oracle on 4 other images") in s[0] and "ratio of 0.947" in s[0]
    assert "no segmenter ratio measured" in s[1] and "indicative" in s[2]
    assert "pooled vector only, the named objects are present at a rate 0.312 against 1.000" in s[3]
    assert s[4] == "toy-sd3: the first class a prompt names scores IoU 0.610, the second 0.430 (indicative: no interval)."
    assert "0.688 against 0.690 uncut (best map kind, the same images), within noise" in s[5]
    assert len(s) == 6  # no aggregation rows: no aggregation sentence


def test_study06_compares_auto_with_the_mean_the_best_head_and_the_label_chosen_ceiling():
    head = pd.DataFrame({"model": ["toy-sd3"], "family": ["SD3Transformer2DModel"], "best_map_kind": ["joint_slice"],
                         "attention_miou": [0.69], "selected_on": [4], "scored_on": [4], "presence_rate": [1.0],
                         "segmenter_ratio": [np.nan]})
    table = pd.DataFrame({"model": ["toy-sd3"] * 3, "family": ["SD3Transformer2DModel"] * 3, "view": ["aggregation"] * 3,
                          "setting": ["mean", "auto", model_families.CEILING], "miou": [0.692, 0.7095, 0.7231],
                          "presence": [0.96, 0.96, np.nan], "cached": [False] * 3})
    heads = pd.DataFrame({"model": ["toy-sd3"] * 2, "head": ["transformer_blocks.0.attn[0]", "transformer_blocks.0.attn[1]"],
                          "weight": [0.19, 0.19], "miou": [0.7074, 0.4962]})
    s = model_families.conclusions(head, table, heads)
    supported(s, head, table, heads)
    assert s[-1] == ("toy-sd3: auto aggregation gives mask mIoU 0.710 against 0.692 with the mean over heads and layers; "
                     "its best head alone (transformer_blocks.0.attn[0], auto's mean weight 0.190) 0.707; choosing per image, "
                     "with the labels, the best of the auto mask and every single head's gives 0.723, the most a choice "
                     "of one head per image could give (indicative: no interval).")

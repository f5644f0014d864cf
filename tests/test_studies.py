"""Studies 01/02, the explorer and the oracle factory, on a tiny random-weight SD pipeline (32 px
images, maps 16/8/4/2) and the toy oracle. The notebook test executes notebooks 01, 02 and
explore_attention with papermill at tiny sizes and checks the tables they wrote against dmutils."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from dmutils import nb
from dmutils.attention import CaptureSpec, capture
from dmutils.config import load_params
from dmutils.data.toyworld import CLASS_NAMES, make_scene
from dmutils.masks.refine import make_mask, read_threshold_table
from dmutils.oracles import OracleError, get_oracle, label_lookup
from dmutils.paths import REPO_ROOT
from dmutils.studies import attention as study
from dmutils.studies import thresholds, wording
from dmutils.testing.sd import save_tiny_sd15, tiny_sd15_pipeline

SMALL = ["model.num_inference_steps=3", "capture.cross_resolutions=[16,8]", "masks.tau=1", "masks.crf.enabled=false", "study.threshold_images_per_class=2", "study.thresholds=[0.2,0.4,0.6]",
         "study.crf_thresholds=[0.4]", "study.taus=[0,2]", "study.attention_seeds=[0]", "study.timestep_windows=3",
         "dataset.batch_size=4"]


@pytest.fixture(scope="module")
def pipe():
    torch.set_num_threads(1)
    return tiny_sd15_pipeline(0)


@pytest.fixture(scope="module")
def params():
    return load_params(None, SMALL)


@pytest.fixture(scope="module")
def study02(pipe, params):
    samples, rejected = thresholds.generate_samples(pipe, params, get_oracle(params), progress=False)
    return samples, rejected, thresholds.sweep(samples, params)


# ---------------------------------------------------------------------------------------------
# Study 01
# ---------------------------------------------------------------------------------------------
def test_timestep_windows_equal_a_capture_of_that_window(pipe, params):
    gen = study.generate(pipe, params, ["a red circle and a blue square"], [3], head_resolution=16)
    spec = CaptureSpec.from_params(params.capture)
    for window in [(0.0, 1.0), (0.3, 1.0)]:
        with torch.no_grad(), capture(pipe, dataclasses.replace(spec, timestep_window=window)) as rec:
            pipe(gen.prompts, num_inference_steps=3, guidance_scale=params.model.guidance_scale, output_type="np",
                 generator=[torch.Generator().manual_seed(3)])
        ref, mine = rec.maps(gen.prompts), gen.maps(window)
        assert mine.steps == ref.steps
        for r in ref.cross_resolutions:
            torch.testing.assert_close(mine.cross(0, r), ref.cross(0, r), rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(mine.self_attention(0, 16), ref.self_attention(0, 16), rtol=1e-4, atol=1e-7)
    # per-head maps (recorded over every step) averaged over heads and layers are what the capture records
    # over every step (head_reduce=mean)
    heads = torch.stack([h.mean(1) for h in gen.heads.values()]).mean(0)
    torch.testing.assert_close(heads[0], gen.maps((0.0, 1.0)).cross(0, 16), rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError, match="holds none"):
        gen.maps((0.1, 0.3))


def pairwise_auc(scores: np.ndarray, mask: np.ndarray) -> float:
    """The definition: over every (mask pixel, other pixel) pair, 1 when the mask pixel scores higher, 1/2 on a tie."""
    pos, neg = scores[mask].ravel()[:, None], scores[~mask].ravel()[None, :]
    return float(((pos > neg) + 0.5 * (pos == neg)).mean())


def test_auc_is_one_for_the_mask_one_half_for_a_constant_and_nan_without_two_sides():
    mask = np.zeros((8, 8), bool)
    mask[2:5, 1:6] = True
    assert study.auc(mask.astype(float), mask) == 1.0 and study.auc(torch.from_numpy(mask.astype(np.float32)), mask) == 1.0
    assert study.auc(np.full((8, 8), 0.3), mask) == 0.5 and study.auc(-mask.astype(float), mask) == 0.0
    ramp = np.arange(64, dtype=float).reshape(8, 8)
    assert study.auc(ramp, mask) == pytest.approx(pairwise_auc(ramp, mask))
    assert np.isnan(study.auc(ramp, np.zeros((8, 8), bool))) and np.isnan(study.auc(ramp, np.ones((8, 8), bool)))
    with pytest.raises(ValueError, match="differ in size"):
        study.auc(ramp[:4], mask)


@settings(max_examples=60, deadline=None)
@given(values=hnp.arrays(np.int64, (6, 6), elements=st.integers(0, 8)), mask=hnp.arrays(bool, (6, 6)),
       shift=st.integers(-1000, 1000), scale=st.sampled_from([0.25, 0.5, 1.0, 3.0, 1000.0]))
def test_auc_is_the_pairwise_rate_and_invariant_to_an_offset_and_a_positive_scale(values, mask, shift, scale):
    assume(0 < mask.sum() < mask.size)
    x = values.astype(np.float64)  # small integers: shifted and scaled exactly, so ties stay ties
    a = study.auc(x, mask)
    assert a == pytest.approx(pairwise_auc(x, mask), abs=1e-12)
    assert study.auc(x + shift, mask) == pytest.approx(a, abs=1e-12)
    assert study.auc(x * scale, mask) == pytest.approx(a, abs=1e-12)
    assert study.auc(-x, mask) == pytest.approx(1 - a, abs=1e-12)


def test_study01_figure_plots_auc_with_intervals_against_one_half():
    rows = [{"prompt": "p", "seed": k, "class": "circle", "map": m, "auc": v, "mass_in_mask": 0.2, "mask_fraction": 0.1}
            for m, vs in {"cross@16": [0.9, 0.8, 0.95], "tau=1": [0.6, 0.4, float("nan")]}.items() for k, v in enumerate(vs)]
    vs = study.against_uniform(pd.DataFrame(rows))
    fig, caption = study.auc_figure(vs)
    ax = fig.axes[0]
    assert [round(b.get_height(), 6) for b in ax.patches] == [round(x, 6) for x in vs["auc"]]
    dashed = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert len(dashed) == 1 and set(dashed[0].get_ydata()) == {0.5} and dashed[0].get_label() == "uninformative map"
    assert "n = 2 to 3" in caption and "95% bootstrap intervals" in caption


def test_study01_tables(pipe, params):
    gen = study.generate(pipe, params, ["a circle and a ring"], [1], head_resolution=16, cross_resolutions="all")
    assert gen.maps().cross_resolutions == study.model_cross_resolutions(pipe, params) == [16, 8, 4, 2]  # the params name 16, 8
    labels = get_oracle(params).predict(gen.images)
    table = study.attention_in_mask(gen, params, labels, windows=study.equal_windows(3), taus=[0, 2])
    assert set(table["class"]) == {"circle", "ring"}
    assert table.groupby("class").size().tolist() == [4 + 1 + 3 + 2] * 2
    assert {f"cross@{r}" for r in (16, 8, 4, 2)} <= set(table["map"])
    valid = table["mass_in_mask"].dropna()
    assert ((valid >= 0) & (valid <= 1 + 1e-6)).all()
    assert table["auc"].dropna().between(0, 1).all() and table["auc"].notna().any()
    # values recomputed by hand: the 16x16 map of 'ring', upsampled: its mass inside the oracle's ring, and its AUC
    pos = gen.maps().token_positions(0, "ring")
    m = torch.nn.functional.interpolate(gen.maps().cross(0, 16)[pos].mean(0)[None, None], size=(32, 32), mode="bilinear")[0, 0]
    mask = labels[0] == CLASS_NAMES.index("ring") + 1
    row = table[(table["class"] == "ring") & (table["map"] == "cross@16")]
    assert row["mass_in_mask"].item() == pytest.approx(float((m * torch.from_numpy(mask)).sum() / m.sum()), rel=1e-5)
    assert 0 < mask.sum() < mask.size
    assert row["auc"].item() == pytest.approx(pairwise_auc(m.numpy().astype(np.float64), mask), abs=1e-6)
    spread = study.head_spread(gen, 0, "circle")
    assert len(spread) == sum(h.shape[1] for h in gen.heads.values())
    assert spread["entropy"].between(0, 1 + 1e-6).all()


def test_study01_aggregate_follows_resolution_weights(pipe, params):
    # weights that list 16 only: the aggregate (and tau=0) is the 16x16 map, whatever else was captured
    only16 = load_params(None, [*SMALL, "masks.resolution_weights={16: 1.0}"])
    gen = study.generate(pipe, only16, ["a circle and a ring"], [1], cross_resolutions="all")
    maps = gen.maps()
    by_res = study.word_maps_by_resolution(maps, 0, ["circle", "ring"])
    assert sorted(by_res) == [2, 4, 8, 16]
    torch.testing.assert_close(study.aggregate_resolutions(maps, by_res), by_res[16])
    labels = get_oracle(only16).predict(gen.images)
    t = study.attention_in_mask(gen, only16, labels, taus=[0]).set_index(["class", "map"])["auc"]
    np.testing.assert_allclose(t.xs("aggregated", level="map"), t.xs("cross@16", level="map"))
    out = study.tau_scores(maps, 0, {"circle": "circle", "ring": "ring"}, [0, 1], only16.masks, gen.images[0], [1, 3])
    assert set(out) == {0, 1}  # make_mask takes the weighted resolutions only
    # no weights: the params' resolutions (16 and 8), equally, as the dataset aggregates; 4 and 2 are only shown
    plain = study.generate(pipe, params, ["a circle and a ring"], [1], cross_resolutions="all").maps()
    by_res = study.word_maps_by_resolution(plain, 0, ["circle", "ring"])
    assert sorted(by_res) == [2, 4, 8, 16] and list(params.capture.cross_resolutions) == [16, 8]
    equal = torch.stack([torch.nn.functional.interpolate(by_res[r][None], size=(16, 16), mode="bilinear")[0] for r in (16, 8)]).mean(0)
    torch.testing.assert_close(study.aggregate_resolutions(plain, by_res), equal)
    torch.testing.assert_close(study.aggregate_resolutions(plain, by_res)[1], plain.word_map(0, "ring"))


def test_study01_on_the_toy_unet_has_several_resolutions_and_one_on_the_toy_mmdit():
    from dmutils.pipeline import load_pipeline

    toy = load_params(REPO_ROOT / "params/toy.yaml", ["model.num_inference_steps=2"])
    assert list(toy.capture.cross_resolutions) == [16]  # the dataset's params capture one
    pipe = load_pipeline(toy.model)
    gen = study.generate(pipe, toy, ["a red circle and a blue square"], [0], cross_resolutions="all")
    table = study.attention_in_mask(gen, toy, get_oracle(toy).predict(gen.images), taus=[0])
    cross = sorted({m for m in table["map"] if m.startswith("cross@")})
    assert len(cross) > 1 and {"cross@16", "cross@8"} <= set(cross)
    by_map = table.set_index(["class", "map"])["auc"]  # the aggregate is the dataset's: 16x16 alone
    np.testing.assert_allclose(by_map.xs("aggregated", level="map"), by_map.xs("cross@16", level="map"))
    assert study.head_resolution(pipe, toy) == 16
    sd3 = load_params(REPO_ROOT / "params/toy_sd3.yaml", ["model.num_inference_steps=2"])
    pipe3 = load_pipeline(sd3.model)
    assert study.model_cross_resolutions(pipe3, sd3) == list(sd3.capture.cross_resolutions) and study.head_resolution(pipe3, sd3) is None
    gen3 = study.generate(pipe3, sd3, ["a red circle and a blue square"], [0], cross_resolutions="all")
    t3 = study.attention_in_mask(gen3, sd3, get_oracle(sd3).predict(gen3.images), taus=[0, 1])
    assert {m for m in t3["map"] if m.startswith("cross@")} == {f"cross@{r}" for r in sd3.capture.cross_resolutions}
    assert len(study.tau_vs_zero(t3)) == 1
    with pytest.raises(ValueError, match="UNets only"):
        study.generate(pipe3, sd3, ["a circle"], [0], head_resolution=16)


def test_explorer_views_reuse_the_generation(pipe, params):
    from dmutils.studies.explorer import Explorer

    ex = Explorer(pipe, params)
    with pytest.raises(RuntimeError, match="generate"):
        ex.table()
    ex.generate("a red circle and a blue square", 0)
    gen = ex.gen
    view = ex.compute(resolution=8, window=(0.5, 1.0), tau=0, threshold=0.3)
    maps = gen.maps((0.5, 1.0))
    cross = {8: torch.stack([maps.cross(0, 8)[maps.token_positions(0, w)].mean(0) for w in ("circle", "square")])}
    mp = params.masks.model_copy(update={"tau": 0, "refine": "none", "threshold": 0.3, "resolution_weights": None})
    labels, _ = make_mask(cross, gen.images[0], mp, [1, 2])
    np.testing.assert_array_equal(view["labels"], labels)
    band = ex.table(threshold=0.2, band=(0.2, 0.6))
    assert list(band["class"]) == ["circle", "square"] and band["ignore_fraction"].iloc[0] >= 0
    assert ex.gen is gen  # no new generation


# ---------------------------------------------------------------------------------------------
# Study 02
# ---------------------------------------------------------------------------------------------
def test_study_specs_cover_every_class_and_are_reproducible(params):
    specs = thresholds.study_specs(params)
    assert [s.classes[0] for s in specs] == [c for c in params.class_names for _ in range(2)]
    assert sum(len(s.classes) == 2 for s in specs) == len(params.class_names)  # every other prompt names two classes
    assert all(s.prompt.endswith("; " + " ".join(s.classes)) for s in specs)  # prompts.class_prompt = append
    assert [s.prompt for s in thresholds.study_specs(load_params(None, SMALL))] == [s.prompt for s in specs]
    other = thresholds.study_specs(load_params(None, [*SMALL, "run.seed=5"]))
    assert [s.seed for s in other] != [s.seed for s in specs]
    with pytest.raises(ValueError, match="study.thresholds"):
        thresholds.study_specs(load_params(None, [*SMALL, "study.thresholds=[0.6,0.2]"]))


def test_sweep_equals_make_mask(study02, params):
    samples, rejected, records = study02
    assert not rejected and len(samples) == 2 * len(params.class_names)
    conds = thresholds.conditions(params)
    assert conds == [(0, False), (2, False), (1, False), (1, True)]
    expected_rows = sum(len(s.spec.classes) * (3 * 3 + 1) for s in samples)  # 3 no-CRF conditions x 3 thresholds + CRF x 1
    assert len(records) == expected_rows
    s = next(x for x in samples if len(x.spec.classes) == 2)
    for tau, crf, t in [(2, False, 0.4), (1, True, 0.4), (0, False, 0.6)]:
        labels, _ = make_mask(s.cross, s.image, thresholds.mask_params(params, tau, crf, t), s.class_ids, s.self_attn)
        for cls, k in zip(s.spec.classes, s.class_ids):
            pred, true = labels == k, s.oracle == k
            want = (pred & true).sum() / (pred | true).sum() if true.any() else np.nan
            got = records[(records["sample"] == s.spec.id) & (records["class"] == cls) & (records["tau"] == tau)
                          & (records["crf"] == crf) & (records["threshold"] == t)]["iou"]
            np.testing.assert_allclose(got.item(), want, equal_nan=True)


def test_best_threshold_is_the_argmax_and_the_csv_is_read_by_masks(study02, params, tmp_path):
    records = study02[2]
    curve = thresholds.threshold_curves(records, params)
    main = records[(records["tau"] == params.masks.tau) & (records["crf"] == params.masks.crf.enabled)]
    best = thresholds.best_thresholds(curve)
    assert curve.groupby("class")["n"].nunique().eq(1).all()  # every point of a curve averages the same images
    for cls in params.class_names:
        sums = main[main["class"] == cls].groupby("threshold")[["inter", "union"]].sum()
        means = sums["inter"] / sums["union"].where(sums["union"] > 0)  # pooled IoU: counts summed over the images
        row = curve[curve["class"] == cls]
        np.testing.assert_allclose(row["mean"].to_numpy(), means.to_numpy())
        assert (row["ci_lo"] <= row["mean"] + 1e-12).all() and (row["mean"] <= row["ci_hi"] + 1e-12).all()
        want = float(means.idxmax()) if means.notna().any() else 0.5
        assert best.set_index("class").loc[cls, "threshold"] == want
    path = tmp_path / "class_thresholds.csv"
    thresholds.threshold_table(best).to_csv(path, index=False)
    assert read_threshold_table(path) == dict(zip(best["class"], best["threshold"]))
    modes = thresholds.compare_modes(study02[0], params, path)
    assert list(modes["mode"]) == ["fixed 0.5", "per class", "adaptive"] and modes["n"].gt(0).all()


def test_records_keep_counts_and_the_summary_is_the_pooled_bootstrap(study02):
    """The records keep each image's pixel counts, so a curve's interval can be recomputed: a point is the pooled
    IoU with the bootstrap interval over whole images of dmutils.stats, not a t-interval on per-instance IoUs."""
    from dmutils import stats

    records = study02[2]
    assert (records["inter"] <= records["union"]).all()
    with_class = records["union"] > 0
    np.testing.assert_allclose(records.loc[with_class, "iou"], records.loc[with_class, "inter"] / records.loc[with_class, "union"])
    assert records.loc[~with_class, "iou"].isna().all()
    g = records[(records["tau"] == 0) & (records["threshold"] == 0.4) & ~records["crf"]]
    inter, union = thresholds.counts_by_image(g)
    assert len(inter) == g.loc[g["union"] > 0, "sample"].nunique()
    want = stats.bootstrap_ci(inter, union)
    got = thresholds.summarize(g)
    assert (got["mean"], got["ci_lo"], got["ci_hi"], got["n"]) == (want["miou"], want["ci_lo"], want["ci_hi"], want["n"])
    records2 = pd.DataFrame({"sample": ["s0", "s0", "s1", "s1"], "class": ["a", "a", "b", "b"], "threshold": [0.3, 0.5, 0.3, 0.5],
                             "inter": [2, 2, 4, 1], "union": [10, 10, 10, 10]})
    best = thresholds.best_thresholds(thresholds.curves(records2, ["class", "threshold"]))
    assert dict(zip(best["class"], best["threshold"])) == {"a": 0.3, "b": 0.3}  # ties: the lower threshold


def test_taus_are_compared_at_their_own_threshold_chosen_on_other_images(study02, params):
    from dmutils import stats

    records = study02[2]
    table = thresholds.tuned_comparison(records, params, "tau")
    assert list(table["tau"]) == [0, 1, 2]
    ref = table.set_index("tau").loc[params.masks.tau]
    assert ref["diff"] == 0 and ref["diff_lo"] == 0 == ref["diff_hi"]  # the reference against itself
    # by hand for tau 0: the cross-fitted counts of dmutils.stats on the tau-0 sweep
    sub = records[(records["tau"] == 0) & ~records["crf"]]
    samples = sorted(records.loc[records["union"] > 0, "sample"].astype(str).unique())
    inter, union, grid = thresholds.sweep_counts(sub, samples, params.class_names)
    assert grid == params.study.thresholds and inter.shape == (len(samples), 3, len(params.class_names))
    fit = stats.cross_fit(inter, union, thresholds.FOLDS, 0)
    row = table.set_index("tau").loc[0]
    assert row["miou"] == pytest.approx(stats.pooled_miou(*fit.scores)) and row["n"] == len(samples)
    crf = thresholds.tuned_comparison(records, params, "crf")
    assert list(crf["crf"]) == [False, True] and crf["miou"].between(0, 1).all()


# ---------------------------------------------------------------------------------------------
# The oracle factory
# ---------------------------------------------------------------------------------------------
def test_toy_oracle_labels_the_toy_world(params):
    scenes = [make_scene(2_000_000 + i) for i in range(8)]
    pred = get_oracle(params).predict(np.stack([s.image for s in scenes]))
    truth = np.stack([s.label for s in scenes])
    assert pred.shape == truth.shape and pred.dtype == np.uint8
    assert (pred == truth).mean() > 0.9
    with pytest.raises(OracleError, match="oracle.kind='none'"):
        get_oracle(load_params(None, ["oracle.kind=none"]))


def test_label_lookup_rules():
    lut = label_lookup(["background", "Disc", "circle", "tree", "wall"], ["circle", "square"], {"disc": "circle", "wall": "ignore"})
    assert lut.tolist() == [0, 1, 1, 0, 255]  # unmapped 'tree' -> background
    with pytest.raises(OracleError, match="does not have.*sky"):
        label_lookup(["background", "tree"], ["circle"], {"sky": "circle"})
    with pytest.raises(OracleError, match="unknown classes"):
        label_lookup(["background", "tree"], ["circle"], {"tree": "forest"})


def test_transformers_oracle_maps_a_segformer(tmp_path):
    from transformers import (
        SegformerConfig,
        SegformerForSemanticSegmentation,
        SegformerImageProcessor,
    )

    names = ["background", "disc", "box", "tree"]
    torch.manual_seed(0)
    cfg = SegformerConfig(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16], num_attention_heads=[1, 1],
                          patch_sizes=[7, 3], strides=[4, 2], mlp_ratios=[2, 2], decoder_hidden_size=16, num_labels=4,
                          id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    model = SegformerForSemanticSegmentation(cfg).eval()
    model.save_pretrained(tmp_path / "seg")
    processor = SegformerImageProcessor(size={"height": 32, "width": 32})
    processor.save_pretrained(tmp_path / "seg")
    params = load_params(None, ["oracle.kind=transformers", f"oracle.model={tmp_path / 'seg'}",
                                "oracle.class_map={disc: circle, box: square, tree: ignore}"])
    oracle = get_oracle(params)
    images = np.random.default_rng(0).integers(0, 256, (3, 40, 40, 3), dtype=np.uint8)
    labels = oracle.predict(images)
    with torch.no_grad():
        out = model(**processor(images=list(images), return_tensors="pt"))
    raw = np.stack([m.numpy() for m in processor.post_process_semantic_segmentation(out, target_sizes=[(40, 40)] * 3)])
    np.testing.assert_array_equal(labels, np.array([0, 1, 2, 255], dtype=np.uint8)[raw])
    assert labels.shape == (3, 40, 40)
    with pytest.raises(OracleError, match="no such folder"):
        get_oracle(load_params(None, ["oracle.kind=transformers", "oracle.model=models/not-there"]))
    with pytest.raises(OracleError, match="needs oracle.model"):
        get_oracle(load_params(None, ["oracle.kind=transformers"]))


# ---------------------------------------------------------------------------------------------
# The notebooks, executed
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_notebooks_write_the_tables_dmutils_computes(tmp_path, monkeypatch):
    import papermill as pm

    from dmutils.runner import choose_kernel, kernel_options

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the kernels inherit it: no thread oversubscription on a shared CPU
    model = save_tiny_sd15(tmp_path / "tiny-sd")
    overrides = [*SMALL, f"model.path={model}", "run.name=study-test"]
    out = tmp_path / "report"
    kernel = choose_kernel()

    def execute(name: str) -> None:
        pm.execute_notebook(str(REPO_ROOT / "notebooks" / f"{name}.ipynb"), str(tmp_path / f"{name}.ipynb"), kernel_name=kernel,
                            parameters={"params_file": "params/toy.yaml", "overrides": overrides, "run_dir": str(out)},
                            cwd=str(REPO_ROOT / "notebooks"), progress_bar=False, execution_timeout=600, **kernel_options())

    # one after another: papermill clients in threads side by side once left the explorer's widget cell waiting forever
    for name in ["01_attention_analysis", "02_threshold_vs_iou", "explore_attention"]:
        execute(name)
    tables = out / nb.TABLES
    params = load_params(REPO_ROOT / "params/toy.yaml", overrides)

    # 02: curves and the threshold table are what dmutils computes from the records the notebook saved
    records = pd.read_csv(tables / "threshold_iou_records.csv")
    curve = thresholds.threshold_curves(records, params)
    pd.testing.assert_frame_equal(pd.read_csv(tables / "iou_vs_threshold.csv"), curve, check_dtype=False)
    table = read_threshold_table(tables / "class_thresholds.csv")
    assert table == dict(zip(*thresholds.threshold_table(thresholds.best_thresholds(curve, params.masks.threshold)).to_dict("list").values()))
    assert set(table) == set(params.class_names)
    pd.testing.assert_frame_equal(pd.read_csv(tables / "iou_vs_threshold_tau.csv"), thresholds.tau_curves(records, params), check_dtype=False)
    pd.testing.assert_frame_equal(pd.read_csv(tables / "iou_vs_threshold_crf.csv"), thresholds.crf_curves(records, params), check_dtype=False)
    specs = thresholds.study_specs(params)
    assert set(records["prompt"]) == {s.prompt for s in specs}
    assert len(records) == sum(len(s.classes) for s in specs) * (3 * 3 + 1)  # 3 no-CRF conditions x 3 thresholds + CRF x 1

    # 01: one row per (class word, map variant) of the prompt; the head table covers every head
    mass = pd.read_csv(tables / "attention_in_mask.csv")
    assert set(mass["class"]) == {"circle", "square"}
    assert set(mass["map"]) == ({f"cross@{r}" for r in (16, 8, 4, 2)} | {"aggregated", "tau=0", "tau=2"}
                                | {f"window steps {k}-{k}" for k in (1, 2, 3)})  # every resolution of the model
    assert mass["mass_in_mask"].dropna().between(0, 1 + 1e-6).all() and mass["auc"].dropna().between(0, 1).all()
    pd.testing.assert_frame_equal(pd.read_csv(tables / "attention_vs_uniform.csv"), study.against_uniform(mass), check_dtype=False)
    pd.testing.assert_frame_equal(pd.read_csv(tables / "attention_tau_vs_tau0.csv"), study.tau_vs_zero(mass), check_dtype=False)
    assert len(pd.read_csv(tables / "attention_head_spread.csv")) > 0

    # explorer: the default view's table, and figures of every notebook in the log
    view = pd.read_csv(tables / "explore_attention_view.csv")
    assert list(view["class"]) == ["circle", "square"] and view["pixel_fraction"].between(0, 1).all()
    artifacts = nb.read_artifacts(out)
    figures = {a["name"] for a in artifacts if a["kind"] == "figure"}
    assert {"attention_per_resolution_0", "iou_vs_threshold", "explore_attention"} <= figures
    assert all((out / f).is_file() for a in artifacts for f in a["files"].values())
    key = {a["name"] for a in artifacts if a.get("key")}
    assert {"iou_vs_threshold", "class_thresholds", "attention_in_mask"} <= key

    # 01 and 02 end in conclusions computed from their tables: every number in them is a cell of this run's tables
    concluded = wording.run_conclusions(out)
    assert len(concluded) == 2 and all(concluded)  # the explorer draws no conclusions
    assert wording.unsupported_in_run(out) == []
    assert any("tau=2" in s for s in concluded[0]) and any("AUC" in s for s in concluded[0]) and any("DenseCRF" in s for s in concluded[1])

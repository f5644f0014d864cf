"""Study 05 (ablations) on a tiny random-weight SD pipeline (32 px, maps 16/8/4/2) and the toy oracle:
the grid is validated up front, mask-only variants share one generation, scores are cached by params
hash, a rerun computes only what changed, and the scores are the mIoU make_mask's labels get."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from dmutils import stats
from dmutils.config import load_params
from dmutils.errors import ParamsError
from dmutils.masks.refine import make_mask
from dmutils.oracles import get_oracle
from dmutils.studies import ablations
from dmutils.testing.sd import tiny_sd15_pipeline

SMALL = ["model.num_inference_steps=2", "study.ablation_samples=3", "dataset.batch_size=3"]
GRID = {"groups": {
    "cross_resolutions": {"16": {"capture.cross_resolutions": [16]}, "16+8+4": {"capture.cross_resolutions": [16, 8, 4]}},
    "tau": {"0": {"masks.tau": 0}, "2": {"masks.tau": 2}},
    "band": {"[0.4, 0.6)": {"masks.uncertain_band": [0.4, 0.6]}},
    "class_prompt": {"none": {"prompts.class_prompt": "none"}},
}}


@pytest.fixture(scope="module")
def pipe():
    torch.set_num_threads(1)
    return tiny_sd15_pipeline(0)


def write_grid(tmp_path, grid=GRID):
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path


@pytest.fixture
def params(tmp_path):
    return load_params(None, SMALL + [f"study.ablation_grid={write_grid(tmp_path)}"])


class Counting:
    """A pipeline factory and generate() wrapper that count what was computed."""

    def __init__(self, pipe, monkeypatch):
        self.pipe, self.factory_calls, self.generated = pipe, 0, []
        real = ablations.generate

        def generate(p, params, oracle):
            self.generated.append(params)
            return real(p, params, oracle)

        monkeypatch.setattr(ablations, "generate", generate)

    def __call__(self):
        self.factory_calls += 1
        return self.pipe


def test_grid_loads_baseline_first_and_rejects_bad_variants(tmp_path, params):
    variants = ablations.load_grid(params)
    assert variants[0].name == "baseline: params" and variants[0].overrides == {}
    assert [v.name for v in variants[1:3]] == ["cross_resolutions: 16", "cross_resolutions: 16+8+4"]
    bad = write_grid(tmp_path, {"groups": {"tau": {"x": {"masks.tua": 2}}}})
    with pytest.raises(ParamsError, match=r"variant 'tau: x'.*masks\.tau"):
        ablations.load_grid(params, bad)
    with pytest.raises(ParamsError, match="no such file"):
        ablations.load_grid(params, tmp_path / "nope.yaml")
    with pytest.raises(ParamsError, match="ablation_grid is null"):
        ablations.load_grid(load_params(None, ["study.ablation_grid=null"]))


def test_generation_key_separates_only_generation_settings(params):
    key = lambda over: ablations.generation_key(ablations.apply(params, over))  # noqa: E731
    base = key({})
    assert key({"masks.tau": 4}) == key({"capture.cross_resolutions": [4]}) == key({"masks.crf.enabled": True}) == base
    assert key({"prompts.class_prompt": "none"}) != base
    assert key({"capture.timestep_window": [0.0, 0.25]}) != base
    assert key({"run.seed": 1}) != base
    h = lambda over: ablations.variant_hash(ablations.apply(params, over))  # noqa: E731
    assert len({h({}), h({"masks.tau": 4}), h({"capture.cross_resolutions": [4]}), h({"masks.threshold": 0.4})}) == 4
    assert h({"masks.tau": 4}) == h({"masks.tau": 4})


def test_run_grid_generates_once_per_key_and_caches(tmp_path, params, pipe, monkeypatch):
    variants = ablations.load_grid(params)
    oracle = get_oracle(params)
    count = Counting(pipe, monkeypatch)
    first = ablations.run_grid(count, params, variants, tmp_path / "cache", oracle, progress=False)
    assert count.factory_calls == 1
    assert len(count.generated) == 2  # the class_prompt variant is the only one that generates anew
    shared = next(g for g in count.generated if g.prompts.class_prompt == params.prompts.class_prompt)
    assert shared.capture.cross_resolutions == [16, 8, 4] and shared.masks.tau == 2  # union of what variants read
    assert list(first["variant"]) == [v.name for v in variants]
    assert not first["cached"].any() and (first["n"] > 0).all()
    assert first["miou"].between(0, 1).all()
    assert first.loc[first["group"] == "band", "ignored"].item() > 0 == first.loc[first["group"] == "tau", "ignored"].max()
    assert first[["miou_lo", "miou_hi", "tuned_miou"]].apply(lambda c: c.between(0, 1)).all().all()
    assert (first["miou_lo"] <= first["miou"] + 1e-12).all() and (first["miou"] <= first["miou_hi"] + 1e-12).all()
    assert first.loc[0, "delta"] == 0 == first.loc[0, "tuned_delta"]
    cached = json.loads((tmp_path / "cache" / f"{first.loc[0, 'key']}.json").read_text())
    assert len(cached["inter"]) == cached["n"] == len(cached["sweep_inter"])  # intervals recomputable from the cache

    again = ablations.run_grid(count, params, variants, tmp_path / "cache", oracle, progress=False)
    assert count.factory_calls == 1 and len(count.generated) == 2  # nothing recomputed, not even the pipeline
    assert again["cached"].all()
    pd.testing.assert_series_equal(again["miou"], first["miou"])

    changed = [*variants, ablations.Variant("threshold", "0.3", {"masks.threshold": 0.3})]
    third = ablations.run_grid(count, params, changed, tmp_path / "cache", oracle, progress=False)
    assert len(count.generated) == 3 and list(third["cached"]) == [True] * len(variants) + [False]

    # same params, fresh cache: the same scores (seeds derive from the params)
    fresh = ablations.run_grid(lambda: pipe, params, variants, tmp_path / "cache2", oracle, progress=False)
    np.testing.assert_allclose(fresh["miou"], first["miou"], rtol=1e-6)


def test_score_is_pooled_miou_of_make_mask_labels(params, pipe):
    gen = ablations.generation_params([params, ablations.apply(params, {"capture.cross_resolutions": [16, 8, 4]})])
    samples = ablations.generate(pipe, gen, get_oracle(params))
    assert samples and all(set(s.cross) == {16, 8, 4} for s in samples)
    p = ablations.apply(params, {"capture.cross_resolutions": [8]})
    k = len(params.classes) + 1
    conf = np.zeros((k, k), dtype=np.int64)
    for s in samples:
        labels, _ = make_mask({8: s.cross[8]}, s.image, p.masks, s.class_ids, s.self_attn, class_names=list(s.spec.classes))
        for t in range(k):
            for q in range(k):
                conf[t, q] += int(((s.oracle == t) & (labels == q)).sum())
    present = (conf.sum(0) + conf.sum(1)) > 0
    expected = np.mean([conf[c, c] / (conf[c].sum() + conf[:, c].sum() - conf[c, c]) for c in np.flatnonzero(present)])
    res = ablations.score(samples, p)
    assert res["miou"] == pytest.approx(expected)
    # the cache keeps per-image counts that sum to the pooled confusion's, and the sweep at every threshold
    assert res["images"] == [s.spec.id for s in samples] and res["num_classes"] == k
    np.testing.assert_array_equal(np.sum(res["inter"], 0), np.diag(conf))
    np.testing.assert_array_equal(np.sum(res["union"], 0), conf.sum(0) + conf.sum(1) - np.diag(conf))
    assert res["thresholds"] == p.study.thresholds and np.shape(res["sweep_inter"]) == (len(samples), len(p.study.thresholds), k)


@pytest.mark.parametrize("over", [{}, {"masks.uncertain_band": [0.4, 0.6]}, {"masks.crf.enabled": True}])
def test_the_threshold_sweep_equals_make_mask_at_each_threshold(params, pipe, over):
    """The shortcut (make_mask once, then threshold, band and small regions per threshold) gives make_mask's labels."""
    samples = ablations.generate(pipe, ablations.generation_params([params]), get_oracle(params))[:2]
    p = ablations.apply(params, {**over, "study.thresholds": [0.3, 0.5], "study.crf_thresholds": [0.4]})
    res = ablations.score(samples, p)
    assert res["thresholds"] == ([0.4] if over.get("masks.crf.enabled") else [0.3, 0.5])
    k = len(params.classes) + 1
    for j, t in enumerate(res["thresholds"]):
        q = ablations.apply(p, {"masks.threshold": t})
        for s, got_i, got_u in zip(samples, res["sweep_inter"], res["sweep_union"]):
            labels, _ = make_mask(s.cross, s.image, q.masks, s.class_ids, s.self_attn)
            i, u = stats.confusion_counts(labels, s.oracle, k)
            assert got_i[j] == i.tolist() and got_u[j] == u.tolist()
    none = ablations.score(samples, ablations.apply(p, {"masks.threshold_mode": "adaptive"}))
    assert none["thresholds"] == [] and "sweep_inter" not in none  # nothing to choose


def fake_score(inter, union, ids=None, thresholds=()):
    """A cached score as score() writes it, from [images, classes] (or [images, thresholds, classes]) counts."""
    inter, union = np.asarray(inter), np.asarray(union)
    sweep = inter.ndim == 3
    own_i, own_u = (inter[:, 0], union[:, 0]) if sweep else (inter, union)
    res = {"miou": float(stats.pooled_miou(own_i, own_u)), "n": len(inter), "ignored": 0.0,
           "images": ids or [f"s{i}" for i in range(len(inter))], "num_classes": inter.shape[-1],
           "inter": own_i.tolist(), "union": own_u.tolist(), "thresholds": list(thresholds)}
    if sweep:
        res |= {"sweep_inter": inter.tolist(), "sweep_union": union.tolist()}
    return res


def test_intervals_pair_images_and_tune_each_variant_on_other_images():
    rng = np.random.default_rng(0)
    n, k = 20, 3
    union = rng.integers(50, 200, size=(n, 2, k))
    # baseline is best at threshold 0.3 (index 0), "tau: 0" at 0.5 (index 1): a shared fixed 0.3 would sink tau 0
    base_i = np.stack([0.7 * union[:, 0], 0.5 * union[:, 1]], 1).astype(int)
    tau0_i = np.stack([0.4 * union[:, 0], 0.72 * union[:, 1]], 1).astype(int)
    scores = {"baseline: params": fake_score(base_i, union, thresholds=[0.3, 0.5]),
              "tau: 0": fake_score(tau0_i, union, thresholds=[0.3, 0.5]),
              "splicing: on": fake_score(base_i, union, thresholds=[0.3, 0.5]),
              "mode: adaptive": fake_score(base_i[3:, 1], union[3:, 1], ids=[f"s{i}" for i in range(3, n)])}
    bars = ablations.intervals(scores, "baseline: params")
    same = bars["splicing: on"]
    assert same["delta"] == same["delta_lo"] == same["delta_hi"] == 0 == same["tuned_delta"]
    tau0 = bars["tau: 0"]
    assert tau0["delta_hi"] < 0  # at the shared threshold, tau 0 looks worse
    assert tau0["tuned_thresholds"] == "0.5" and bars["baseline: params"]["tuned_thresholds"] == "0.3"
    assert tau0["tuned_delta"] == pytest.approx(0.02, abs=0.01)  # at its own threshold it is slightly better
    assert tau0["miou_lo"] <= scores["tau: 0"]["miou"] <= tau0["miou_hi"]
    adaptive = bars["mode: adaptive"]
    assert adaptive["paired_n"] == n - 3 and adaptive["tuned_thresholds"] == ""  # paired on the shared images




def test_miou_and_confusion_by_hand():
    true = np.array([[0, 0, 1, 1], [0, 255, 2, 2]], dtype=np.uint8)
    pred = np.array([[0, 1, 1, 1], [255, 0, 2, 0]], dtype=np.uint8)
    conf = ablations.confusion(pred, true, 3)
    assert conf.sum() == 6  # two pixels ignored
    # class 0: inter 1, union 1+... -> pred0 {(0,0),(1,1)x ignored,(1,3)}; IoU0 = 1/3, IoU1 = 2/3, IoU2 = 1/2
    assert ablations.miou(conf) == pytest.approx(np.mean([1 / 3, 2 / 3, 1 / 2]))


def test_pivot_tables_put_the_baseline_first():
    results = pd.DataFrame({"variant": ["baseline: params", "tau: 0", "tau: 2", "crf: on"],
                            "group": ["baseline", "tau", "tau", "crf"], "setting": ["params", "0", "2", "on"],
                            "miou": [0.5, 0.4, 0.55, 0.6], "n": [3] * 4})
    tables = ablations.pivot_tables(results)
    assert list(tables) == ["tau", "crf"]
    assert list(tables["tau"]["setting"]) == ["params", "0", "2"]
    np.testing.assert_allclose(tables["tau"]["Δ vs baseline"], [0, -10, 5])
    np.testing.assert_allclose(tables["crf"]["mIoU (%)"], [50, 60])


TINY_TRAIN = ["train.config={hidden_sizes: [8, 16, 16, 16], depths: [1, 1, 1, 1], num_attention_heads: [1, 1, 1, 1], "
              "decoder_hidden_size: 16}", "train.image_size=32", "train.steps=3", "train.batch_size=2",
              "train.noise_learning.folds=2", "train.noise_learning.fold_steps=1", "train.noise_learning.drop_fraction=0.5",
              "dataset.min_area=0.0", "masks.threshold=0.3"]
SEG_GRID = {"segmenter_variants": ["baseline", "tau: 0"], "segmenter_overrides": {"train.steps": 2},
            "groups": {"tau": {"0": {"masks.tau": 0}, "2": {"masks.tau": 2}},
                       "splicing": {"on": {"dataset.splice.enabled": True, "dataset.splice.grids": [[1, 2]]}},
                       "noise_learning": {"on": {"train.noise_learning.enabled": True}}}}


def test_segmenter_variants_are_named_in_the_grid_or_only_change_training(tmp_path, params):
    p = load_params(None, SMALL + [f"study.ablation_grid={write_grid(tmp_path, SEG_GRID)}"])
    flagged = [v.name for v in ablations.load_grid(p) if v.segmenter]
    assert flagged == ["baseline: params", "tau: 0", "splicing: on", "noise_learning: on"]
    with pytest.raises(ParamsError, match=r"segmenter_variants names \['tau: 9'\]"):
        ablations.load_grid(p, write_grid(tmp_path, {**SEG_GRID, "segmenter_variants": ["tau: 9"]}))
    short = ablations.load_grid(p, write_grid(tmp_path, {**SEG_GRID, "segmenter_overrides": {"train.steps": 2}}))
    assert {v.name: v.segmenter_overrides for v in short if v.segmenter_overrides} == {n: {"train.steps": 2} for n in flagged}
    big = {**SEG_GRID, "groups": {**SEG_GRID["groups"], "splicing": {"3x3": {"dataset.splice.enabled": True}}}}
    with pytest.raises(ParamsError, match=r"variant 'splicing: 3x3' \(study.ablation_samples\) has 3 train samples; a 9-tile"):
        ablations.load_grid(p, write_grid(tmp_path, big))
    with pytest.raises(ParamsError, match="segmenter_overrides must be dotted train"):
        ablations.load_grid(p, write_grid(tmp_path, {**SEG_GRID, "segmenter_overrides": {"masks.tau": 1}}))


def test_run_grid_trains_segmenters_for_flagged_variants_and_caches_them(tmp_path, pipe, monkeypatch):
    from dmutils.data import toyworld
    from dmutils.segment.data import ArrayDataset

    params = load_params(None, SMALL + TINY_TRAIN + ["study.ablation_samples=4", "dataset.batch_size=4",
                                                     f"study.ablation_grid={write_grid(tmp_path, SEG_GRID)}"])
    test = ArrayDataset([(s.image, s.label) for s in map(lambda k: toyworld.make_scene(k, size=32), range(4))],
                        ["background", *params.class_names], "toy test")
    variants = ablations.load_grid(params)
    count = Counting(pipe, monkeypatch)
    first = ablations.run_grid(count, params, variants, tmp_path / "cache", get_oracle(params), progress=False, test=test)
    rows = first.set_index("variant")
    scored = rows["segmenter_miou"].notna()
    assert list(rows.index[scored]) == ["baseline: params", "tau: 0", "splicing: on", "noise_learning: on"]
    assert rows.loc[scored, "segmenter_miou"].between(0, 1).all()
    base_n = rows.loc["baseline: params", "train_samples"]
    assert base_n > 0
    assert rows.loc["splicing: on", "train_samples"] == 2 * base_n  # as many mosaics as samples
    assert rows.loc["noise_learning: on", "train_samples"] == base_n - round(0.5 * base_n)
    # training-only variants make the baseline's masks: same mask score, same cache entry
    assert rows.loc["splicing: on", "key"] == rows.loc["baseline: params", "key"]
    assert rows.loc["splicing: on", "miou"] == rows.loc["baseline: params", "miou"]
    assert list(rows.index[rows["same_masks"]]) == ["splicing: on", "noise_learning: on"]  # left out of the mask figure

    # study 05's conclusions on this grid: every number a cell of the table the notebook saves (its CSV)
    from dmutils.studies import wording

    said = ablations.conclusions(first)
    assert said[0].startswith("The baseline") and any("indicative" in x for x in said)
    assert wording.unsupported(said, map(float, wording.numbers(first.drop(columns=["key", "cached"]).to_csv(index=False)))) == []

    again = ablations.run_grid(count, params, variants, tmp_path / "cache", get_oracle(params), progress=False, test=test)
    assert count.factory_calls == 1 and again["cached"].all()
    pd.testing.assert_series_equal(again["segmenter_miou"], first["segmenter_miou"])
    tables = ablations.pivot_tables(first)
    assert "segmenter mIoU (%)" in tables["splicing"] and "segmenter mIoU (%)" in tables["tau"]  # tau 0 is scored
    assert "segmenter mIoU (%)" not in ablations.pivot_tables(first[first["group"].isin(["baseline", "tau"])].assign(
        segmenter_miou=np.nan))["tau"]


@pytest.mark.slow
def test_notebook05_states_its_protocol_shows_the_ledger_rows_of_its_groups_and_concludes_from_its_tables(tmp_path, monkeypatch):
    import papermill as pm

    from dmutils import nb
    from dmutils.paths import REPO_ROOT
    from dmutils.runner import choose_kernel, kernel_options
    from dmutils.studies import wording
    from dmutils.testing.sd import save_tiny_sd15

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the kernel inherits it
    grid = write_grid(tmp_path, {"groups": {"tau": {"2": {"masks.tau": 2}}, "crf": {"on": {"masks.crf.enabled": True}}}})
    overrides = [*SMALL, f"model.path={save_tiny_sd15(tmp_path / 'tiny-sd')}", "masks.tau=1", "masks.crf.enabled=false",
                 f"study.ablation_grid={grid}", "study.thresholds=[0.3,0.5]", "study.crf_thresholds=[0.4]", "run.name=nb05-test"]
    out = tmp_path / "report"
    pm.execute_notebook(str(REPO_ROOT / "notebooks" / "05_ablations.ipynb"), str(tmp_path / "05.ipynb"), kernel_name=choose_kernel(),
                        parameters={"params_file": "params/toy.yaml", "overrides": overrides, "run_dir": str(out)},
                        cwd=str(REPO_ROOT / "notebooks"), progress_bar=False, execution_timeout=600, **kernel_options())
    tables = out / nb.TABLES
    rows = pd.read_csv(tables / "ablations.csv").set_index("variant")
    assert list(rows.index) == ["baseline: params", "tau: 2", "crf: on"] and not rows["same_masks"].any()
    assert "self-attention refinement (tau 1)" in rows.loc["baseline: params", "protocol"]
    assert "DenseCRF on" in rows.loc["crf: on", "protocol"] and "DenseCRF off" in rows.loc["tau: 2", "protocol"]
    ledger = pd.read_csv(tables / "ablations_ledger.csv")
    committed = {r["id"]: r for r in json.loads((REPO_ROOT / "results" / "claims.json").read_text())["rows"]}
    assert {"dd_self_attention", "dm_densecrf"} <= set(ledger["claim"]) and set(ledger["group"]) == {"tau", "crf"}
    for r in ledger.itertuples():  # the committed ledger's figures, as they are
        assert r.diff == committed[r.claim]["segmenter"]["diff"] and r.verdict == committed[r.claim]["segmenter"]["verdict"]
    assert rows["segmenter_miou"].isna().all()  # the grid names no segmenter variant: nothing trained
    concluded = wording.run_conclusions(out)
    assert len(concluded) == 1 and any("claims ledger" in s for s in concluded[0])
    assert wording.unsupported_in_run(out) == []

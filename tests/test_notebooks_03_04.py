"""Notebooks 03 (generate) and 04 (train segmenter), executed with papermill at tiny sizes on a random-weight
SD pipeline; the tables they wrote are checked against the manifest, the label files and each other."""
import json
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from dmutils import nb
from dmutils.config import load_params
from dmutils.data import voc
from dmutils.paths import REPO_ROOT

N = 8


@pytest.fixture(scope="module")
def run(tmp_path_factory, pytestconfig):
    import os

    import papermill as pm

    from dmutils.runner import choose_kernel, kernel_options
    from dmutils.testing.sd import save_tiny_sd15

    tmp = tmp_path_factory.mktemp("nb0304")
    old = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"  # the kernels inherit it: no thread oversubscription on a shared CPU
    model = save_tiny_sd15(tmp / "tiny-sd")
    overrides = [f"model.path={model}", "model.num_inference_steps=2", "model.device=cpu", "run.name=nb0304-test",
                 f"dataset.num_samples={N}", "dataset.batch_size=4", "dataset.workers=0", "dataset.min_area=0.02",
                 "masks.threshold=0.4", "masks.uncertain_band=[0.3,0.4]", f"dataset.out_dir={tmp / 'synthetic'}",
                 f"real.root={tmp / 'real'}", "real.toy_sizes={train: 6, val: 2, test: 6}", "train.steps=4",
                 "train.batch_size=4", "train.image_size=32", "train.noise_learning.fold_steps=2", "train.device=cpu",
                 "study.segmenter_steps=4", "study.segmenter_seeds=[0,1]"]
    out = tmp / "report"
    kernel = choose_kernel()
    try:
        for name in ("03_generate_dataset", "04_train_segmenter"):
            pm.execute_notebook(str(REPO_ROOT / "notebooks" / f"{name}.ipynb"), str(tmp / f"{name}.ipynb"), kernel_name=kernel,
                                parameters={"params_file": "params/toy.yaml", "overrides": overrides, "run_dir": str(out)},
                                cwd=str(REPO_ROOT / "notebooks"), progress_bar=False, **kernel_options())
    finally:
        if old is None:
            os.environ.pop("OMP_NUM_THREADS")
        else:
            os.environ["OMP_NUM_THREADS"] = old
    params = load_params(REPO_ROOT / "params/toy.yaml", overrides)
    records = [json.loads(line) for line in (tmp / "synthetic" / "manifest.jsonl").read_text().splitlines()]
    return {"tables": out / nb.TABLES, "out": out, "params": params, "records": records, "root": tmp / "synthetic", "tmp": tmp}


def test_03_tables_match_the_manifest_and_labels(run):
    t, records, names = run["tables"], run["records"], run["params"].class_names
    assert len(records) == N
    ok = [r for r in records if r["status"] == "ok"]
    classes = pd.read_csv(t / "dataset_classes.csv").set_index("class")
    assert list(classes.index) == ["background", *names, "ignore"]
    named = Counter(c for r in ok for c in r["classes"])
    assert classes.loc[names, "samples"].tolist() == [named.get(c, 0) for c in names]
    for c in names:
        fr = [r["fractions"][c] for r in ok if c in r["classes"]]
        if fr:
            assert classes.loc[c, "mean_fraction"] == pytest.approx(np.mean(fr))
    pixels = np.concatenate([voc.read_label(run["root"] / voc.LABELS / f"{r['id']}.png").ravel() for r in ok])
    assert classes.loc["ignore", "pixel_share"] == pytest.approx((pixels == 255).mean())
    assert classes.loc["background", "pixel_share"] == pytest.approx((pixels == 0).mean())
    assert classes["pixel_share"].sum() == pytest.approx(1.0)

    outcomes = pd.read_csv(t / "dataset_outcomes.csv").set_index("outcome")
    assert outcomes["samples"].sum() == N and outcomes["samples"].get("ok", 0) == len(ok)
    rejected = pd.read_csv(t / "dataset_rejections.csv")
    assert sorted(rejected["id"]) == sorted(r["id"] for r in records if r["status"] != "ok")
    assert dict(zip(rejected["id"], rejected["reason"])) == {r["id"]: r["reason"] for r in records if r["status"] != "ok"}
    samples = pd.read_csv(t / "dataset_samples.csv")
    assert list(samples["id"]) == [r["id"] for r in records] and list(samples["seed"]) == [r["seed"] for r in records]
    speed = pd.read_csv(t / "dataset_throughput.csv").iloc[0]
    assert speed["generated_now"] == N and speed["samples_per_s"] == pytest.approx(N / speed["seconds"], rel=0.01)


def test_04_headline_is_consistent_with_the_per_class_evaluation(run):
    t, records = run["tables"], run["records"]
    head = pd.read_csv(t / "segmenter_headline.csv").set_index("run")
    assert list(head.index) == ["a", "b", "c", "d"] and {"miou", "miou_lo", "miou_hi", "ratio_to_real", "diff"} <= set(head.columns)
    n = min(6, sum(r["status"] == "ok" for r in records))  # same size: the first n of each set
    assert head["train_samples"].tolist()[:3] == [n, n, 2 * n]
    assert head["steps"].tolist()[:3] == [4, 4, 8] and head.loc["a", "epochs"] == head.loc["c", "epochs"]  # equal epochs
    assert (head["seeds"] == 2).all() and list(head["vs"].fillna("")) == ["", "a", "a", "b"]
    assert (head["miou_lo"] <= head["miou"] + 1e-9).all() and (head["miou"] <= head["miou_hi"] + 1e-9).all()
    per_class = pd.read_csv(t / "segmenter_per_class_iou.csv")
    assert set(per_class["class"]) == {"background", *run["params"].class_names} and set(per_class["seed"]) == {0, 1}
    miou = per_class.groupby(["run", "seed"])["iou"].apply(lambda s: np.nanmean(s)).groupby("run").mean()  # mean over seeds
    np.testing.assert_allclose(head["miou"], miou.loc[head.index])
    np.testing.assert_allclose(head["ratio_to_real"], head["miou"] / head.loc["a", "miou"])
    assert head["miou"].between(0, 1).all()
    scores = pd.read_csv(t / "segmenter_noise_scores.csv")
    assert sorted(scores["index"]) == list(range(n))
    n_kept = n - round(run["params"].train.noise_learning.drop_fraction * n)
    assert scores["kept"].sum() == n_kept == head.loc["d", "train_samples"]
    assert not scores.loc[scores["kept"], "iou"].lt(scores.loc[~scores["kept"], "iou"].max()).any()  # the worst were dropped


def test_reports_list_their_key_outputs(run):
    artifacts = nb.read_artifacts(run["out"])
    assert all((run["out"] / f).is_file() for a in artifacts for f in a["files"].values())
    key = {a["name"] for a in artifacts if a.get("key")}
    assert {"dataset_samples", "dataset_classes", "segmenter_headline", "segmenter_per_class_iou"} <= key
    assert not any(a.get("status") == "placeholder" for a in artifacts)


def test_04_colour_gap_table_is_what_dmutils_computes(run):
    from dmutils.studies.colour_gap import real_vs_synthetic

    table = pd.read_csv(run["tables"] / "colour_gap.csv")
    assert {"class", "hue_shift", "value_shift", "hue_spread_ratio"} <= set(table.columns)
    assert set(table["class"]) <= set(run["params"].class_names)
    pd.testing.assert_frame_equal(table, real_vs_synthetic(run["params"]), check_dtype=False)


def test_04_rerun_reads_every_run_from_the_cache_and_marks_small_numbers_indicative(run):
    from dmutils.studies import segmenter_study

    again = segmenter_study.run_study(run["params"], cache_dir=run["out"] / "segmenter_cache")  # no training: all cached
    assert again.cached == {"noise_scores": True, "a": True, "b": True, "c": True, "d": True}
    table = pd.read_csv(run["tables"] / "segmenter_headline.csv")
    assert not table["cached"].any()  # the notebook's own run trained everything
    pd.testing.assert_frame_equal(again.headline.drop(columns="cached"), table.drop(columns="cached"), check_dtype=False)
    pd.testing.assert_frame_equal(again.noise_scores, pd.read_csv(run["tables"] / "segmenter_noise_scores.csv"), check_dtype=False)
    changed = run["params"].model_copy(update={"train": run["params"].train.model_copy(update={"steps": 5})})
    assert segmenter_study.run_key(changed, "a", 6, None) != segmenter_study.run_key(run["params"], "a", 6, None)
    headline = next(a for a in nb.read_artifacts(run["out"]) if a["name"] == "segmenter_headline")
    assert headline["indicative"].startswith("indicative: ") and "dmutils bench segmenter" in headline["indicative"]


def test_04_noise_learning_dropped_vs_kept_against_the_oracle(run):
    table = pd.read_csv(run["tables"] / "noise_dropped_vs_kept.csv")
    assert list(table["group"]) == ["kept", "dropped", "dropped - kept"]
    scores = pd.read_csv(run["tables"] / "segmenter_noise_scores.csv")
    assert table["samples"].tolist()[:2] == [int(scores["kept"].sum()), int((~scores["kept"]).sum())]


def test_03_04_conclusions_are_computed_from_the_run_tables(run):
    from dmutils.studies import wording

    concluded = wording.run_conclusions(run["out"])
    assert len(concluded) == 2 and all(concluded)
    assert concluded[0][0].startswith(f"{sum(r['status'] == 'ok' for r in run['records'])} samples written")
    assert "2 seeds" in concluded[1][0] and all("[" in s for s in concluded[1][:3])  # every run read with its interval
    assert wording.unsupported_in_run(run["out"]) == []

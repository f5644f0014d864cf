"""The claims ledger (study 07): the ledger file is validated before anything runs, the two-level interval behaves
as a paired difference over seeds should, a tiny ledger runs end to end on a random-weight pipeline, and a second
run reads everything from the cache."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from dmutils import stats
from dmutils.config import load_params
from dmutils.errors import ParamsError
from dmutils.oracles import get_oracle
from dmutils.paths import REPO_ROOT
from dmutils.studies import claims
from dmutils.testing.sd import tiny_sd15_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = ["model.num_inference_steps=2", "dataset.batch_size=3", "dataset.min_area=0.0", "masks.threshold=0.3",
         "train.config={hidden_sizes: [8, 16, 16, 16], depths: [1, 1, 1, 1], num_attention_heads: [1, 1, 1, 1], "
         "decoder_hidden_size: 16}", "train.image_size=32", "train.batch_size=2"]


def write(tmp_path, rows, **top):
    path = tmp_path / "ledger.yaml"
    path.write_text(yaml.safe_dump({"seeds": [0, 1], "samples": 3, "base": {"train.steps": 2}, **top, "rows": rows},
                                   sort_keys=False))
    return path


ROWS = [
    {"id": "crf", "paper": "DiffuMask", "claim": "DenseCRF", "paper_figure": "qualitative", "paper_delta": None,
     "reference": {"masks.crf.enabled": False}, "variant": {"masks.crf.enabled": True}},
    {"id": "tta", "paper": "Dataset Diffusion", "claim": "TTA", "paper_figure": "62.7 -> 64.3", "paper_delta": 1.6,
     "reference": {}, "variant": {"train.tta": True}},
    {"id": "prompts", "paper": "Dataset Diffusion", "claim": "class labels appended", "paper_figure": "50.8 -> 62.0",
     "paper_delta": 11.2, "reference": {"prompts.class_prompt": "none"}, "variant": {}},
]


@pytest.fixture
def params():
    return load_params(None, SMALL)


def test_the_committed_ledger_loads_with_every_claim_the_issue_names(params):
    ledger = claims.load_ledger(params, "params/claims/toy.yaml")
    assert len(ledger.claims) >= 14 and len(ledger.seeds) >= 3
    ids = {c.id for c in ledger.claims}
    for wanted in ("dd_self_attention", "dd_uncertainty_band", "dd_self_training", "dd_tta", "dd_prompts_vs_captions_only",
                   "dd_scales_cross_16_vs_8", "dd_tau_4", "dm_adaptive_threshold", "dm_densecrf", "dm_noise_learning",
                   "dm_subclass_prompts", "dm_synonym_prompts", "dm_splicing", "dm_real_plus_synthetic"):
        assert wanted in ids


@pytest.mark.parametrize("row, message", [
    ({"reference": {"masks.tua": 1}}, "masks.tua"),
    ({"variant": {"data": "imagenet"}}, "data must be one of"),
    ({"variant": "tau 2"}, "must be a dict of dotted overrides"),
])
def test_a_bad_row_is_one_error_naming_it(tmp_path, params, row, message):
    bad = {**ROWS[0], **row}
    with pytest.raises(ParamsError, match=message) as e:
        claims.load_ledger(params, write(tmp_path, [bad]))
    assert "crf" in str(e.value) and "\n" not in str(e.value)


def test_duplicate_ids_unknown_rows_and_bad_seeds_are_errors(tmp_path, params):
    with pytest.raises(ParamsError, match="appears twice"):
        claims.load_ledger(params, write(tmp_path, [ROWS[0], ROWS[0]]))
    with pytest.raises(ParamsError, match="distinct integers"):
        claims.load_ledger(params, write(tmp_path, ROWS, seeds=[0, 0]))
    with pytest.raises(ParamsError, match="no claim"):
        claims.load_ledger(params, write(tmp_path, ROWS)).select(["nope"])


def counts(rng, n, k=3, p=0.7):
    union = rng.integers(50, 100, size=(n, k))
    return rng.binomial(union, p), union


def test_seeds_paired_bootstrap_is_zero_for_identical_settings_and_reads_the_seeds():
    rng = np.random.default_rng(0)
    same = [(c, c) for c in (counts(rng, 20) for _ in range(3))]
    r = stats.seeds_paired_bootstrap(same)
    assert r["diff"] == 0 and r["ci_lo"] == 0 and r["ci_hi"] == 0 and r["seeds"] == 3
    # every seed better by a clear margin: holds; one seed reversed: the interval holds 0
    better = [(counts(rng, 20, p=0.6), counts(rng, 20, p=0.8)) for _ in range(3)]
    r = stats.seeds_paired_bootstrap(better, paired=False)
    assert r["ci_lo"] > 0 and stats.verdict(r["ci_lo"], r["ci_hi"]) == "holds"
    assert stats.verdict(r["ci_lo"], r["ci_hi"], direction=-1) == "does not hold"
    mixed = better[:2] + [(better[2][1], better[2][0])]
    r = stats.seeds_paired_bootstrap(mixed, paired=False)
    assert r["ci_lo"] < 0 < r["ci_hi"] and stats.verdict(r["ci_lo"], r["ci_hi"]) == "inconclusive"
    assert r["diff"] == pytest.approx(np.mean(r["per_seed"]))


def test_unpaired_settings_may_have_other_image_counts_shared_images_may_not():
    rng = np.random.default_rng(1)
    r = stats.seeds_paired_bootstrap([(counts(rng, 10), counts(rng, 14))], paired=False)
    assert np.isfinite(r["ci_lo"])
    with pytest.raises(ValueError, match="same images"):
        stats.seeds_paired_bootstrap([(counts(rng, 10), counts(rng, 14))])
    with pytest.raises(ValueError, match="same number of images"):
        stats.seeds_paired_bootstrap([(counts(rng, 10), counts(rng, 10)), (counts(rng, 12), counts(rng, 12))],
                                     shared_images=True)


def test_a_tiny_ledger_runs_end_to_end_and_resumes_from_its_cache(tmp_path, params, monkeypatch):
    from dmutils.data import toyworld
    from dmutils.segment.data import ArrayDataset

    torch.set_num_threads(1)
    pipe = tiny_sd15_pipeline(0)
    ledger = claims.load_ledger(params, write(tmp_path, ROWS))
    test = ArrayDataset([(s.image, s.label) for s in (toyworld.make_scene(k, size=32) for k in range(3))],
                        ["background", *params.class_names], "toy test")
    trained = []
    real_train_and_count = claims.train_and_count
    monkeypatch.setattr(claims, "train_and_count", lambda *a, **k: trained.append(a[2]) or real_train_and_count(*a, **k))
    calls = []
    claims.run_ledger(lambda: calls.append(1) or pipe, params, ledger, tmp_path / "cache", oracle=get_oracle(params),
                      test=test, log=lambda line: None)
    # 2 seeds x (crf off, crf on = tta's reference, class labels none): the TTA pair shares one training
    assert len(trained) == 2 * 3 and calls == [1]
    rows = {r["id"]: r for r in claims.summarize(params, ledger, tmp_path / "cache")}
    assert rows["tta"]["mask"]["verdict"] == "same masks"
    assert rows["tta"]["segmenter"]["seeds"] == 2 and rows["tta"]["segmenter"]["images"] == [3, 3]
    assert rows["crf"]["mask"]["paired"] and not rows["prompts"]["mask"]["paired"]  # other prompts, other images
    for r in rows.values():
        assert r["verdict"] in ("holds", "does not hold", "inconclusive")
        assert r["segmenter"]["ci_lo"] <= r["segmenter"]["diff"] <= r["segmenter"]["ci_hi"] or \
            r["segmenter"]["ci_lo"] == r["segmenter"]["ci_hi"]
    # a second run computes nothing: no pipeline, no training
    claims.run_ledger(lambda: pytest.fail("regenerated"), params, ledger, tmp_path / "cache", test=test, log=lambda line: None)
    assert len(trained) == 6
    assert claims.summarize(params, ledger, tmp_path / "cache") == list(rows.values())
    table = claims.table(list(rows.values()))
    assert list(table.index) == ["crf", "tta", "prompts"] and "verdict" in table


def test_bench_claims_quick_is_listed_and_validates_the_ledger_first(tmp_path):
    import subprocess
    import sys

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"rows": [{**ROWS[0], "reference": {"masks.tua": 1}}]}))
    out = subprocess.run([sys.executable, "-m", "dmutils", "bench", "claims", "--ledger", str(bad)], capture_output=True,
                         text=True, cwd=REPO_ROOT, timeout=120)
    assert out.returncode == 2 and "masks.tua" in out.stderr and "Traceback" not in out.stderr


def test_conclusions_are_read_from_the_rows():
    import re

    def row(i, verdict, diff, lo, hi):
        m = {"verdict": verdict, "diff": diff, "ci_lo": lo, "ci_hi": hi, "seeds": 3}
        return {"id": i, "paper": "p", "claim": "c", "paper_figure": "f", "paper_delta": None, "verdict": verdict,
                "segmenter": m, "mask": {"verdict": "same masks"}}

    rows = [row("a", "holds", 2.5, 0.4, 4.1), row("b", "does not hold", -3.0, -5.2, -1.1), row("c", "inconclusive", 0.3, -1.0, 1.9)]
    text = " ".join(claims.conclusions(rows))
    assert "Of 3 claims measured over 3 seeds, 1 hold" in text and "1 go the other way and 1 are within noise" in text
    table_numbers = {f"{v:+.1f}" for r in rows for v in (r["segmenter"]["diff"], r["segmenter"]["ci_lo"], r["segmenter"]["ci_hi"])}
    signed = set(re.findall(r"[+-]\d+\.\d", text))
    assert signed == table_numbers
    long = claims.forest(rows)
    assert list(long["id"]) == ["a", "b", "c"] and (long["measure"] == "segmenter").all()


def test_the_markdown_table_links_every_figure_to_its_key():
    import re

    rows = [{"id": "a", "paper": "p", "claim": "c", "paper_figure": "1 -> 2", "paper_delta": 1.0, "verdict": "holds",
             "segmenter": {"verdict": "holds", "diff": 2.46, "ci_lo": 0.4, "ci_hi": 4.1},
             "mask": {"verdict": "same masks"}},
            {"id": "b", "paper": "p", "claim": "c", "paper_figure": "qualitative", "paper_delta": None, "verdict": "does not hold",
             "segmenter": {"verdict": "does not hold", "diff": -3.0, "ci_lo": -5.2, "ci_hi": -1.1},
             "mask": {"verdict": "inconclusive", "diff": -0.5, "ci_lo": -2.0, "ci_hi": 1.0}}]
    text = claims.markdown(rows)
    links = re.findall(r"\[([+-]?\d+\.\d)\]\(results/claims\.json \"([^\"]+)\"\)", text)
    assert len(links) == 9
    for figure, key in links:
        value = {"rows": rows}
        for part in key.split("."):
            value = value[int(part)] if part.isdigit() else value[part]
        assert float(figure) == round(value, 1)
    assert "same masks" in text and "**does not hold**" in text


@pytest.mark.slow
def test_notebook_07_shows_the_committed_ledger_and_reruns_a_row(tmp_path, monkeypatch):
    """The report's study 07 on a tiny model: the committed ledger's table and conclusions, and the live row (another
    model than the ledger's, so it is shown, not compared)."""
    import json

    import pandas as pd
    import papermill as pm

    from dmutils.runner import choose_kernel, kernel_options
    from dmutils.testing.sd import save_tiny_sd15

    committed = json.loads((REPO_ROOT / "results/claims.json").read_text())
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    model = save_tiny_sd15(tmp_path / "tiny-sd")
    overrides = ["model.num_inference_steps=2", f"model.path={model}", "run.name=claims-test"]
    out = tmp_path / "report"
    pm.execute_notebook(str(REPO_ROOT / "notebooks/07_paper_claims.ipynb"), str(tmp_path / "07.ipynb"),
                        kernel_name=choose_kernel(), parameters={"params_file": "params/toy.yaml", "overrides": overrides,
                                                                 "run_dir": str(out)},
                        cwd=str(REPO_ROOT / "notebooks"), progress_bar=False, execution_timeout=600, **kernel_options())
    table = pd.read_csv(out / nb_tables() / "claims.csv", index_col=0)
    assert list(table.index) == [r["id"] for r in committed["rows"]]
    assert list(table["verdict"]) == [r["verdict"] for r in committed["rows"]]
    live = pd.read_csv(out / nb_tables() / "claims_live.csv", index_col=0)
    assert live.loc["dm_densecrf", "committed"] == next(r for r in committed["rows"] if r["id"] == "dm_densecrf")["mask"]["per_seed"][0]
    text = (tmp_path / "07.ipynb").read_text()
    assert claims.conclusions(committed["rows"])[0] in text  # the conclusions are the ledger's, computed
    from dmutils.studies import wording

    recorded = wording.run_conclusions(out)  # recorded for index.html: the ledger's, then each committed study's
    ledger_sentences = claims.conclusions(committed["rows"])
    assert len(recorded) == 1 and recorded[0][:len(ledger_sentences)] == ledger_sentences
    from dmutils.studies import noise_study, open_vocab, scaling

    shown = {"bench_scaling.json": ("scaling_equivalent", lambda d: scaling.conclusions(
                 pd.DataFrame(d["synthetic_equivalent"]), pd.DataFrame(d["mixing_gain"]))),
             "bench_open_vocab.json": ("open_vocab", lambda d: open_vocab.conclusions(pd.DataFrame(d["table"]))),
             "bench_noise_learning.json": ("noise_learning_controlled",
                                           lambda d: noise_study.conclusions(pd.DataFrame(d["table"])))}
    for name, (table_name, conclude) in shown.items():
        result = REPO_ROOT / "results" / name
        assert (out / nb_tables() / f"{table_name}.csv").is_file() == result.is_file(), name
        if result.is_file():
            sentences = conclude(json.loads(result.read_text()))
            assert sentences and all(s in recorded[0] for s in sentences), name
    assert wording.unsupported_in_run(out) == []  # every number of the conclusions is a cell of this run's tables


def nb_tables():
    from dmutils import nb

    return nb.TABLES

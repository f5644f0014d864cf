"""The toy MMDiT (``train-toy-model --family sd3``) at tiny sizes: trains, saves, loads like SD3, generates, resumes."""
import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from dmutils.commands import train_toy_model
from dmutils.config import load_params
from dmutils.errors import ParamsError
from dmutils.toy import mmdit as sd3

TOY_SD = Path(__file__).resolve().parents[1] / "models" / "toy-sd"
TINY = ["--scenes", "6", "--batch", "2", "--threads", "1", "--layers", "2", "--heads", "2", "--head-dim", "8", "--vae-from", str(TOY_SD)]


def _train(*argv: str) -> Path:
    parser = argparse.ArgumentParser()
    train_toy_model.add_arguments(parser)
    args = parser.parse_args(["--family", "sd3", *TINY, *argv])
    assert train_toy_model.main(args) == 0
    return Path(args.out)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return _train("--out", str(tmp_path_factory.mktemp("toysd3") / "m"), "--steps", "2")


def _load(folder: Path):
    from diffusers import StableDiffusion3Pipeline

    return StableDiffusion3Pipeline.from_pretrained(str(folder), text_encoder_3=None, tokenizer_3=None, local_files_only=True)


def test_trained_model_loads_as_sd3_and_generates_64px_on_a_16x16_patch_grid(tiny):
    from diffusers import SD3Transformer2DModel
    from transformers import CLIPTextModelWithProjection

    pipe = _load(tiny)
    assert isinstance(pipe.transformer, SD3Transformer2DModel) and pipe.transformer.config.patch_size == 1
    assert isinstance(pipe.text_encoder_2, CLIPTextModelWithProjection) and pipe.text_encoder_3 is None
    assert pipe.vae.config.shift_factor is not None  # SD3's decode reads it
    out = pipe(["a red circle and a blue square"], num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np")
    assert out.images.shape == (1, 64, 64, 3) and np.isfinite(out.images).all()
    summary = json.loads((tiny / "training_summary.json").read_text())
    assert summary["family"] == "sd3" and summary["transformer_steps"] == 2 and (tiny / "training_log.txt").is_file()
    assert all(f.suffix != ".bin" for f in tiny.rglob("*"))


def test_sequence_embeddings_are_the_unmixed_token_embeddings(tiny):
    """SD3 reads the penultimate hidden state: with one layer, each word's vector does not depend on the others."""
    pipe = _load(tiny)
    a = pipe.encode_prompt(["a red circle"], None, None, do_classifier_free_guidance=False)[0]
    b = pipe.encode_prompt(["a blue circle"], None, None, do_classifier_free_guidance=False)[0]
    circle = 3  # BOS a red|blue circle
    assert torch.equal(a[0, circle], b[0, circle]) and not torch.equal(a[0, 2], b[0, 2])


def test_pooled_none_leaves_the_caption_only_to_the_tokens_and_caption_keeps_sd3s_pooled_vector(tiny, tmp_path):
    """--pooled none (the default): the saved pipeline's pooled vector is 0 for every caption, even after training."""
    silent = _load(tiny).encode_prompt(["a red circle", "a blue star"], None, None, do_classifier_free_guidance=False)[2]
    assert silent.abs().max() == 0
    pooled = _load(_train("--out", str(tmp_path / "p"), "--steps", "1", "--pooled", "caption"))
    own = pooled.encode_prompt(["a red circle", "a blue star"], None, None, do_classifier_free_guidance=False)[2]
    assert own.abs().max() > 0 and not torch.equal(own[0], own[1])
    assert json.loads((tmp_path / "p" / "training_summary.json").read_text())["pooled"] == "caption"


def test_one_zero_token_with_a_log_bias_computes_what_the_pipeline_does_with_256(tiny):
    pipe = _load(tiny)
    prompts = ["a red circle and a blue square", ""]
    seq, _, pooled, _ = pipe.encode_prompt(prompts, None, None, do_classifier_free_guidance=False)
    assert seq.shape[1] == 77 + sd3.T5_TOKENS
    ids = pipe.tokenizer(prompts, padding="max_length", max_length=77, return_tensors="pt").input_ids
    short, short_pooled = sd3.encode_captions([pipe.text_encoder, pipe.text_encoder_2], ids)
    assert short.shape[1] == 78 and torch.equal(short_pooled, pooled)
    x, t = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor([700.0, 300.0])
    tr = pipe.transformer
    with torch.no_grad():
        ref = tr(x, encoder_hidden_states=seq, pooled_projections=pooled, timestep=t).sample
        tr.set_attn_processor(sd3.RepeatedTokenJointProcessor(sd3.T5_TOKENS))
        new = tr(x, encoder_hidden_states=short, pooled_projections=pooled, timestep=t).sample
        tr.set_attn_processor(sd3.RepeatedTokenJointProcessor(1))
        wrong = tr(x, encoder_hidden_states=short, pooled_projections=pooled, timestep=t).sample
    assert torch.allclose(new, ref, atol=1e-5)
    assert not torch.allclose(wrong, ref, atol=1e-3)  # without the bias it is another model


def test_resumed_stage_keeps_vae_and_tokenizer_and_trains_the_transformer(tiny, tmp_path):
    more = _train("--out", str(tmp_path / "more"), "--init-from", str(tiny), "--steps", "1", "--seed", "1")
    a, b = _load(tiny), _load(more)
    same = lambda m, n: all(torch.equal(v, n.state_dict()[k]) for k, v in m.state_dict().items())  # noqa: E731
    assert same(a.vae, b.vae) and a.vae.config.scaling_factor == b.vae.config.scaling_factor
    assert not same(a.transformer, b.transformer)
    assert json.loads((more / "training_summary.json").read_text())["init_from"] == str(tiny)


def test_a_missing_vae_folder_is_a_one_line_params_error(tmp_path):
    with pytest.raises(ParamsError, match="--vae-from"):
        sd3.load_vae(tmp_path / "nowhere")


def test_bench_protocol_scores_every_map_kind_and_every_block(tiny):
    """`bench toy-model --model` on a transformer: the UNet's protocol per map kind, and the best kind per block."""
    from dmutils.benchmarks import toy_model, toy_transformer
    from dmutils.oracles import toy_unet as oracle
    from dmutils.pipeline import load_pipeline

    params = load_params("params/toy.yaml", {"model": {"path": str(tiny), "family": "auto", "scheduler": None}})
    pipe = load_pipeline(params.model, device="cpu")
    out = toy_transformer.run_transformer(pipe, params, oracle.load(), 2, 2, 2, True, toy_model.evaluate_model, {})
    assert set(out["attention_miou_by_kind"]) == {"joint_slice", "text_softmax", "concept_attention", "output"}
    assert set(out["attention_miou_by_block"]) == {"0", "1"} and out["map_grid"] == 16
    routes = out["presence_rate_by_route"]
    assert set(routes) == {"both", "tokens_only", "pooled_only"} and all(0 <= v <= 1 for v in routes.values())
    assert routes["tokens_only"] == routes["both"]  # --pooled none: the empty caption's pooled vector is the same 0
    assert out["attention_miou"] == max(out["attention_miou_by_kind"].values())
    assert out["attention_miou_by_kind"][out["attention_miou_kind"]] == out["attention_miou"]
    assert all(0 <= v <= 1 for v in [*out["attention_miou_by_kind"].values(), *out["attention_miou_by_block"].values(), out["presence_rate"]])
    cut = out["text_isolated"]  # the ablation: the best kind again, text-to-text attention cut
    assert set(cut) == {"attention_miou", "presence_rate", "attention_iou_by_word", "attention_miou_by_block"}
    assert set(cut["attention_miou_by_block"]) == {"0", "1"} and 0 <= cut["attention_miou"] <= 1
    assert set(out["attention_iou_by_word"]) == {"first", "second"}


def test_shipped_toy_mmdit_is_small_in_safetensors_with_its_logs_and_loads_as_sd3():
    shipped = Path(__file__).resolve().parents[1] / "models" / "toy-sd3"
    files = [f for f in shipped.rglob("*") if f.is_file()]
    assert sum(f.stat().st_size for f in files) <= 40 * 2**20
    weights = [f for f in files if f.suffix in (".safetensors", ".bin", ".pt")]
    assert weights and all(f.suffix == ".safetensors" for f in weights)
    summary = json.loads((shipped / "training_summary.json").read_text())
    assert summary["family"] == "sd3" and summary["transformer_steps"] >= 1 and (shipped / "training_log.txt").is_file()
    pipe = _load(shipped)
    assert pipe.transformer.config.patch_size == 1 and pipe.transformer.config.sample_size == 16


# ---------------------------------------------------------------------------------------------
# Study 06 and `bench segmenter --model` on the tiny MMDiT beside the shipped toy UNet
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_notebook06_scores_every_view_of_both_families_and_its_cache_is_what_dmutils_reads(tiny, tmp_path, monkeypatch):
    """Notebook 06 at tiny sizes (the shipped toy UNet, the tiny MMDiT): its table has every view of each family and
    equals what dmutils reads back from the cache the notebook wrote; a changed model file is a new cache key."""
    import pandas as pd
    import papermill as pm

    from dmutils import nb
    from dmutils.paths import REPO_ROOT
    from dmutils.runner import choose_kernel, kernel_options
    from dmutils.studies import model_families as study

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    overrides = ["model.num_inference_steps=2", f"study.family_models=['models/toy-sd', '{tiny}']", "study.family_images=2",
                 "study.family_windows=2"]
    out = tmp_path / "report"
    pm.execute_notebook(str(REPO_ROOT / "notebooks" / "06_model_families.ipynb"), str(tmp_path / "06.ipynb"), kernel_name=choose_kernel(),
                        parameters={"params_file": "params/toy.yaml", "overrides": overrides, "run_dir": str(out)},
                        cwd=str(REPO_ROOT / "notebooks"), progress_bar=False, execution_timeout=600, **kernel_options())
    table = pd.read_csv(out / nb.TABLES / "model_families_scores.csv")
    unet, mmdit = table[table.model == "toy-sd"], table[table.model == tiny.name]
    assert set(unet.family) == {"UNet2DConditionModel"} and set(mmdit.family) == {"SD3Transformer2DModel"}
    assert list(unet.groupby("view", sort=False).size().items()) == [("map kind", 1), ("depth", 2), ("timestep window", 2), ("named word", 2),
                                                                    ("aggregation", 3)]
    assert list(mmdit.groupby("view", sort=False).size().items()) == [("map kind", 4), ("depth", 2), ("timestep window", 2), ("named word", 2),
                                                                     ("text-to-text attention", 1), ("caption route", 3), ("aggregation", 3)]
    assert list(mmdit[mmdit.view == "aggregation"].setting) == ["mean", "auto", study.CEILING]
    heads = pd.read_csv(out / nb.TABLES / "model_families_heads.csv")  # every captured head of each model's best kind
    assert set(heads.model) == {"toy-sd", tiny.name} and heads.weight.between(0, 1).all() and heads.miou.between(0, 1).all()
    for model, part in heads.groupby("model"):
        assert part.weight.sum() == pytest.approx(1, abs=0.01), model  # auto's weights at one resolution sum to 1
    assert table.miou.dropna().between(0, 1).all() and table.presence.dropna().between(0, 1).all() and not table.cached.any()

    params = load_params("params/toy.yaml", overrides)
    again = study.run_study(params, out / "model_families_cache")  # every score read from the notebook's cache
    assert all(r["cached"] for r in again.values())
    pd.testing.assert_frame_equal(table.drop(columns="cached"), study.scores_table(again).drop(columns="cached"), check_dtype=False)
    head = study.headline(again, {"models/toy-sd": 0.9}, params)
    kinds = table[table.view == "map kind"]
    for r in head.itertuples():  # the best kind is the one chosen on the first image, scored on the second
        mine = kinds[kinds.model == r.model]
        assert r.best_map_kind == mine.loc[mine.miou_selection.idxmax(), "setting"] and (r.selected_on, r.scored_on) == (1, 1)
        assert r.attention_miou == mine.loc[mine.miou_selection.idxmax(), "miou_held_out"] and "guidance 7.5" in r.protocol
    assert list(head.segmenter_ratio.fillna(-1)) == [0.9, -1] and set(head.best_map_kind) <= {"cross", "joint_slice", "text_softmax", "concept_attention", "output"}
    assert set(pd.read_csv(out / nb.TABLES / "model_families_headline.csv").model) == {"toy-sd", tiny.name}
    assert {"model_families_scores", "model_families_examples", "model_families_heads"} <= {a["name"] for a in nb.read_artifacts(out) if a["kind"] == "figure"}
    from dmutils.studies import wording

    concluded = wording.run_conclusions(out)  # computed from the tables: every number is a cell of them
    assert len(concluded) == 1 and concluded[0][0].startswith("toy-sd (UNet2DConditionModel)")
    assert wording.unsupported_in_run(out) == []
    copy = shutil.copytree(tiny, tmp_path / "copy")
    before = study.model_key(params, str(copy), 2, 2)
    (copy / "transformer" / "config.json").write_text((copy / "transformer" / "config.json").read_text() + "\n")
    assert study.model_key(params, str(copy), 2, 2) != before
    before = study.model_key(params, str(copy), 2, 2)
    (copy / "training_log.txt").write_text("more steps")  # a log kept beside the model is not the model
    assert study.model_key(params, str(copy), 2, 2) == before


def test_bench_segmenter_model_generates_with_that_model(tiny, monkeypatch, capsys):
    """`bench segmenter --model DIR`: the synthetic set comes from DIR, loaded as its model_index.json says (the
    trainings are the quick test's in test_benchmarks.py; here they are replaced to keep this test short)."""
    from types import SimpleNamespace

    from dmutils.benchmarks import segmenter
    from dmutils.commands import bench
    from dmutils.dataset import generate

    used, real_generate = [], generate.generate_dataset

    def spy(params, **kw):
        used.append((params.model.path, params.model.family, params.model.scheduler, params.run.name))
        return real_generate(params, **kw)

    monkeypatch.setattr(generate, "generate_dataset", spy)
    fake = SimpleNamespace(miou=0.5, to_dict=lambda: {"per_class": {}})
    monkeypatch.setattr(segmenter, "_train_and_test", lambda params, sets, test: (fake, 1.0, 1.0))
    assert bench.main(argparse.Namespace(name="segmenter", json=True, quick=True, model=str(tiny), seed=0)) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert used == [(str(tiny), "auto", None, "toy")] and out["model"] == str(tiny) and out["ratio"] == 1.0
    # --params: the toy MMDiT's set-up, here with the tiny model in its place
    assert bench.main(argparse.Namespace(name="segmenter", json=True, quick=True, model=str(tiny), seed=0, params="params/toy_sd3.yaml")) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert used[1] == (str(tiny), "auto", None, "toy_sd3") and out["params"] == "params/toy_sd3.yaml"


def test_toy_sd3_params_name_the_shipped_mmdit_and_its_best_map_kind():
    params = load_params("params/toy_sd3.yaml")
    toy = load_params("params/toy.yaml")
    assert params.model.path == "models/toy-sd3" and params.model.scheduler is None and params.capture.joint_norm == "joint_slice"
    assert (params.resolve_path(params.model.path) / "model_index.json").is_file()
    # everything else is the embedded default's: generation, masks and training compare like with like
    assert (params.masks, params.train, params.prompts, params.model.guidance_scale) == (toy.masks, toy.train, toy.prompts, toy.model.guidance_scale)

"""The toy MMDiT (``train-toy-model --family sd3``) at tiny sizes: trains, saves, loads like SD3, generates, resumes."""
import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dmutils.params import ParamsError
from dmutils.toymodel import sd3, train

TOY_SD = Path(__file__).resolve().parents[1] / "models" / "toy-sd"
TINY = ["--scenes", "6", "--batch", "2", "--threads", "1", "--layers", "2", "--heads", "2", "--head-dim", "8", "--vae-from", str(TOY_SD)]


def _train(*argv: str) -> Path:
    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    args = parser.parse_args(["--family", "sd3", *TINY, *argv])
    assert train.main(args) == 0
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
    from dmutils import oracle
    from dmutils.benchmarks import toy_model, toy_transformer
    from dmutils.params import load_params
    from dmutils.pipeline import load_pipeline

    params = load_params("params/toy.yaml", {"model": {"path": str(tiny), "family": "auto", "scheduler": None}})
    pipe = load_pipeline(params.model, device="cpu")
    out = toy_transformer.run_transformer(pipe, params, oracle.load(), 2, 2, 2, True, toy_model.evaluate_model, {})
    assert set(out["attention_miou_by_kind"]) == {"joint_slice", "text_softmax", "output"}
    assert set(out["attention_miou_by_block"]) == {"0", "1"} and out["map_grid"] == 16
    assert out["attention_miou"] == max(out["attention_miou_by_kind"].values())
    assert out["attention_miou_by_kind"][out["attention_miou_kind"]] == out["attention_miou"]
    assert all(0 <= v <= 1 for v in [*out["attention_miou_by_kind"].values(), *out["attention_miou_by_block"].values(), out["presence_rate"]])


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

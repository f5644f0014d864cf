"""The embedded default model and the oracle: load like SD, generate, label."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dmutils.data.toyworld import vocabulary
from dmutils.oracles import toy_unet as oracle
from dmutils.toy import build

MODEL = Path(__file__).resolve().parents[1] / "models" / "toy-sd"


@pytest.fixture(scope="module")
def pipe():
    from diffusers import StableDiffusionPipeline

    assert (MODEL / "model_index.json").is_file(), f"the embedded model is missing at {MODEL}; re-make it with `dmutils train-toy-model`"
    return StableDiffusionPipeline.from_pretrained(str(MODEL), safety_checker=None, local_files_only=True)


def test_tokenizer_keeps_every_vocabulary_word_whole_and_falls_back_to_characters(tmp_path):
    tok = build.make_tokenizer(tmp_path / "tok")
    for w in vocabulary():
        assert tok.tokenize(w) == [f"{w}</w>"]
    assert len(tok.tokenize("aeroplane")) > 1  # unknown words split, as in CLIP
    ids = tok("a red circle", padding="max_length", max_length=77).input_ids
    assert len(ids) == 77 and ids[0] == tok.bos_token_id and ids[4] == tok.eos_token_id


def test_shipped_model_loads_like_stable_diffusion_and_generates_64px(pipe):
    out = pipe(["a red circle and a blue square"], num_inference_steps=2, generator=torch.Generator().manual_seed(0),
               output_type="np")
    assert out.images.shape == (1, 64, 64, 3)
    assert np.isfinite(out.images).all()


def test_shipped_model_has_sd_parts_and_cross_attention_at_three_resolutions(pipe):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    assert isinstance(pipe.unet, UNet2DConditionModel) and isinstance(pipe.vae, AutoencoderKL)
    assert isinstance(pipe.text_encoder, CLIPTextModel) and isinstance(pipe.tokenizer, CLIPTokenizer)
    from dmutils.attention import attention_layers

    latent = pipe.unet.config.sample_size
    sides = {latent >> layer.level for layer in attention_layers(pipe.unet) if layer.kind == "cross"}
    assert len(sides) >= 3, sides


def test_shipped_model_is_small_and_in_safetensors():
    files = list(MODEL.rglob("*"))
    assert sum(f.stat().st_size for f in files if f.is_file()) <= 40 * 2**20
    weights = [f for f in files if f.suffix in (".safetensors", ".bin", ".pt")]
    assert weights and all(f.suffix == ".safetensors" for f in weights)
    assert (MODEL / "training_log.txt").is_file()
    summary = json.loads((MODEL / "training_summary.json").read_text())
    assert summary["unet_steps"] + summary.get("decoder_steps", 0) >= 1


def test_oracle_reaches_its_bar_on_real_test_scenes():
    model = oracle.load()
    images, labels = oracle.render_set(40, seed_offset=2_000_000)
    assert oracle.miou(model.predict(images), labels) >= 0.95


def test_oracle_rejects_wrong_shapes_and_missing_weights(tmp_path):
    with pytest.raises(ValueError, match="expects"):
        oracle.load().predict(np.zeros((64, 64), np.uint8))
    with pytest.raises(FileNotFoundError, match="python -m dmutils.oracles.toy_unet"):
        oracle.load(tmp_path)


def test_miou_counts_background_and_ignores_absent_classes():
    t = np.zeros((1, 4, 4), np.uint8)
    t[0, :2] = 1
    p = t.copy()
    p[0, 0, 0] = 0  # one object pixel missed
    # class 1: 7/8; background: 8/9; classes 2.. absent -> not averaged
    assert oracle.miou(p, t) == pytest.approx((7 / 8 + 8 / 9) / 2)


def test_iou_by_word_scores_the_first_and_the_second_named_class_apart():
    from dmutils.data.toyworld import CLASS_NAMES
    from dmutils.toy.probe import iou_by_word

    circle, star = CLASS_NAMES.index("circle") + 1, CLASS_NAMES.index("star") + 1
    t = np.zeros((2, 4, 4), np.uint8)
    t[:, :2, :2], t[:, 2:, 2:] = circle, star
    p = t.copy()
    p[0, 2:, 2:] = circle  # image 0 ("a circle and a star"): the circle's mask takes the star's place too
    got = iou_by_word(p, t, [("circle", "star"), ("star", "circle")])
    # first words: circle in image 0 (4 / 8), star in image 1 (4 / 4); second: star (0 / 4), circle (4 / 4)
    assert got == {"first": round(8 / 12, 4), "second": round(4 / 8, 4)}


def test_decoder_stage_leaves_the_latent_space_alone(tmp_path):
    """The decoder stage may change only the decoder: a UNet trained on the old latents stays valid."""
    from dmutils.toy.unet import Log, encode_all, finetune_decoder, render_corpus

    torch.manual_seed(0)
    vae = build.make_vae().eval()
    images, _ = render_corpus(8, seed=7)
    x = images[:4].float() / 127.5 - 1
    with torch.no_grad():
        z_before = vae.encode(x).latent_dist.mean
    encoder_before = {k: v.clone() for k, v in vae.encoder.state_dict().items()}
    decoder_before = {k: v.clone() for k, v in vae.decoder.state_dict().items()}
    assert finetune_decoder(vae, images, encode_all(vae, images, "cpu"), steps=3, batch=4, lr=1e-3, device="cpu",
                            log=Log(tmp_path / "log.txt"), max_minutes=None, gen=torch.Generator().manual_seed(0)) == 3
    assert all(torch.equal(v, vae.encoder.state_dict()[k]) for k, v in encoder_before.items())
    assert any(not torch.equal(v, vae.decoder.state_dict()[k]) for k, v in decoder_before.items())
    with torch.no_grad():
        assert torch.equal(vae.encode(x).latent_dist.mean, z_before)
    assert all(p.requires_grad for p in vae.parameters())  # the model is left as it was found
    assert "decoder step 0" in (tmp_path / "log.txt").read_text()


def test_decoder_only_stage_from_the_command_line_keeps_unet_and_encoder(tmp_path):
    """`train-toy-model --init-from M --steps 0 --decoder-steps N`: a new decoder, every other weight as in M."""
    import argparse

    from diffusers import StableDiffusionPipeline

    from dmutils.commands import train_toy_model as cmd
    from dmutils.toy import unet as train

    def run(*argv):
        parser = argparse.ArgumentParser()
        cmd.add_arguments(parser)
        return train.train_toy_model(parser.parse_args(["--scenes", "8", "--batch", "4", "--threads", "1", *argv]))

    base = run("--out", str(tmp_path / "base"), "--vae-steps", "2", "--steps", "2")
    tuned = run("--out", str(tmp_path / "tuned"), "--init-from", str(base), "--steps", "0", "--decoder-steps", "2", "--seed", "1")
    a, b = (StableDiffusionPipeline.from_pretrained(str(d), safety_checker=None) for d in (base, tuned))
    same = lambda m, n: all(torch.equal(v, n.state_dict()[k]) for k, v in m.state_dict().items())  # noqa: E731
    assert same(a.unet, b.unet) and same(a.text_encoder, b.text_encoder) and same(a.vae.encoder, b.vae.encoder)
    assert not same(a.vae.decoder, b.vae.decoder)
    assert a.vae.config.scaling_factor == b.vae.config.scaling_factor != 0.18215  # set once, from the first VAE stage
    summary = json.loads((tuned / "training_summary.json").read_text())
    assert summary["unet_steps"] == 0 and summary["decoder_steps"] == 2

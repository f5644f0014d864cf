"""Capture on SD 2.x- and SDXL-shaped random pipelines; loading pipelines; the spec from params."""
import json

import numpy as np
import pytest
import torch

from dmutils.attention import CaptureSpec, attention_layers, capture
from dmutils.config import ModelParams, load_params
from dmutils.errors import ParamsError
from dmutils.pipeline import ModelNotFoundError, load_pipeline
from dmutils.testing.sd import (
    save_tiny_sd15,
    tiny_sd2_pipeline,
    tiny_sdxl_pipeline,
    tiny_tokenizer,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def run(pipe, spec, prompts=("a red circle", "an aeroplane"), steps=2):
    gens = [torch.Generator().manual_seed(s) for s in range(len(prompts))]
    kw = dict(generator=gens, num_inference_steps=steps, output_type="np")
    plain = pipe(list(prompts), **kw).images
    gens = [torch.Generator().manual_seed(s) for s in range(len(prompts))]
    with capture(pipe, spec) as rec:
        images = pipe(list(prompts), **{**kw, "generator": gens}).images
    np.testing.assert_allclose(images, plain, atol=1e-4)
    return rec.maps()


def test_sd2_shaped_model_yields_maps_at_its_resolutions():
    pipe = tiny_sd2_pipeline()
    heads = {layer.module.heads for layer in attention_layers(pipe.unet)}
    assert heads == {5, 10, 20} and pipe.unet.config.use_linear_projection
    maps = run(pipe, CaptureSpec(cross_resolutions=(16, 8, 4), self_resolutions=(8,)))
    for r in (16, 8, 4):
        assert maps.cross(0, r).shape == (77, r, r)
        torch.testing.assert_close(maps.cross(1, r).sum(0), torch.ones(r, r))
    assert maps.self_attention(1, 8).shape == (64, 64)
    assert maps.word_map(1, "aeroplane", 16).shape == (16, 16)


def test_sdxl_shaped_model_yields_maps_at_its_resolutions():
    pipe = tiny_sdxl_pipeline()
    levels = {layer.level for layer in attention_layers(pipe.unet)}
    assert levels == {1, 2}  # no attention at the top level
    maps = run(pipe, CaptureSpec(cross_resolutions=(8, 4), self_resolutions=(8, 4)))
    assert maps.cross(0, 8).shape == (77, 8, 8) and maps.cross(0, 4).shape == (77, 4, 4)
    assert maps.self_attention(0, 4).shape == (16, 16)
    torch.testing.assert_close(maps.cross(0, 8).sum(0), torch.ones(8, 8))
    assert maps.words(1) == ["an", "aeroplane"]  # ids of the first text encoder, whose tokenizer maps them
    with pytest.raises(ValueError, match=r"available: \[8, 4\]"):
        with capture(pipe, CaptureSpec(cross_resolutions=(16,), self_resolutions=())):
            pipe("a dog", num_inference_steps=1, output_type="latent")


def test_tiny_tokenizer_splits_class_words_into_several_tokens():
    tok = tiny_tokenizer()
    for word in ("aeroplane", "potted plant", "tv monitor", "motorbike"):
        assert len(tok.tokenize(word)) > len(word.split())
    assert tok.tokenize("a man riding a horse") == ["a</w>", "man</w>", "riding</w>", "a</w>", "horse</w>"]


def test_load_pipeline_missing_folder_says_what_and_how(tmp_path):
    with pytest.raises(ModelNotFoundError, match=r"no such folder.*hf download"):
        load_pipeline(ModelParams(path=str(tmp_path / "nope")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="no model_index.json"):
        load_pipeline(str(tmp_path / "empty"))
    with pytest.raises(ParamsError, match="not a diffusers scheduler"):
        load_pipeline(ModelParams(path=str(tmp_path / "empty"), scheduler="NoSuchScheduler"))


def test_saved_tiny_sd15_loads_with_scheduler_override(tmp_path):
    folder = save_tiny_sd15(tmp_path / "sd15")
    assert json.loads((folder / "model_index.json").read_text())["_class_name"] == "StableDiffusionPipeline"
    assert list(folder.glob("unet/*.safetensors"))
    pipe = load_pipeline(ModelParams(path=str(folder), scheduler="EulerDiscreteScheduler", device="auto"))
    assert type(pipe.scheduler).__name__ == "EulerDiscreteScheduler" and pipe.safety_checker is None
    assert pipe.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    maps = run(pipe, CaptureSpec(cross_resolutions=(8,), self_resolutions=()), prompts=("a dog",), steps=1)
    assert maps.word_map(0, "dog").shape == (8, 8)


def test_spec_from_params():
    params = load_params(overrides=["capture.cross_resolutions=[16,8]", "capture.self_resolutions=[32]",
                                    "masks.resolution_weights={16: 2, 8: 1}",
                                    "capture.timestep_window=[0, 0.5]"])
    spec = CaptureSpec.from_params(params.capture, params.masks.resolution_weights)
    assert spec.cross_resolutions == (16, 8) and spec.self_resolutions == (32,)
    assert spec.resolution_weights == {16: 2.0, 8: 1.0} and spec.steps(10) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match=r"resolutions \[4\] that are not captured"):
        CaptureSpec(cross_resolutions=(16,), resolution_weights={4: 1.0})
    with pytest.raises(ParamsError, match="moved to masks.resolution_weights"):
        load_params(overrides=["capture.resolution_weights={16: 1}"])

"""Cross-attention diffusion transformers (PixArt-Σ, SANA): tiny random-weight pipelines saved to disk."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline

from dmutils.tiny_transformers import save_tiny_pixart_sigma, save_tiny_sana

SAVERS = {"pixart": save_tiny_pixart_sigma, "sana": save_tiny_sana}
PROMPTS = ["a man riding a horse", "an aeroplane and a potted plant"]


@pytest.fixture(scope="module", params=sorted(SAVERS))
def folder(request, tmp_path_factory):
    return request.param, SAVERS[request.param](tmp_path_factory.mktemp(request.param) / "model")


def generate(pipe, prompts=PROMPTS, steps=2, size=64, **kw):
    out = pipe(prompts, num_inference_steps=steps, guidance_scale=4.5, height=size, width=size, output_type="np",
               generator=[torch.Generator().manual_seed(s) for s in range(len(prompts))], **kw)
    return np.asarray(out.images)


def load(folder):
    pipe = DiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_tiny_pipelines_load_from_disk_and_generate_deterministically(folder):
    family, path = folder
    pipe = load(path)
    assert type(pipe).__name__ == {"pixart": "PixArtSigmaPipeline", "sana": "SanaPipeline"}[family]
    procs = {name.split(".")[-2]: type(p).__name__ for name, p in pipe.transformer.attn_processors.items()}
    assert procs == {"pixart": {"attn1": "AttnProcessor2_0", "attn2": "AttnProcessor2_0"},
                     "sana": {"attn1": "SanaLinearAttnProcessor2_0", "attn2": "SanaAttnProcessor2_0"}}[family]
    first = generate(pipe)
    assert first.shape == (2, 64, 64, 3) and first.std() > 0
    np.testing.assert_array_equal(first, generate(load(path)))

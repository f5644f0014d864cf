"""Capture overhead on the cross-attention DiTs: PixArt-Σ and SANA blocks at their real width.

    python -m dmutils.benchmarks.capture_dit [--blocks 3] [--pairs 12]

The transformer blocks have the real models' width (PixArt-Σ: 16 heads x 72, cross-attention to 1152;
SANA 1600M: 70 linear heads x 32, 20 cross heads x 112, GLUMBConv 2.5x) but only ``--blocks`` of them
(28 and 20 in the real ones: a 2-core CPU cannot time those), random weights, float32, the tiny text
encoders and VAEs (their cost is left out: latents are returned). Both at 512 px (the pipelines' smallest
bin of their 1024 px sample sizes would be 1024): PixArt's 32x32 patch grid, SANA's 16x16. Cross and self
maps are captured in the middle third of the blocks (block 1 of 3), as on the real stack. Prints
``ratio_<family>_512`` (recording on and off at alternate steps of one generation, the captured layers timed, as
``dmutils bench capture`` does: :func:`dmutils.benchmarks.capture.capture_ratio`; median of ``--pairs`` pairs, with
``_steps``, the whole steps' ratio) and ``state_bytes_<family>_<steps>`` for 1 and 3 steps (flat in steps).
"""
from __future__ import annotations

import argparse
import json

import torch
from diffusers import (
    PixArtSigmaPipeline,
    PixArtTransformer2DModel,
    SanaPipeline,
    SanaTransformer2DModel,
)

from dmutils.attention import CaptureSpec, capture
from dmutils.benchmarks.capture import capture_ratio, ratio_fields

SIZE = 512


def pixart_sigma_wide(blocks: int = 3, seed: int = 0) -> PixArtSigmaPipeline:
    """PixArt-Σ's block width (16 x 72, cross dim 1152), ``blocks`` blocks, 512 px bin (sample_size 64)."""
    from dmutils.testing.dits import TEXT_HIDDEN, tiny_pixart_sigma_pipeline

    pipe = tiny_pixart_sigma_pipeline(seed)
    torch.manual_seed(seed)
    pipe.transformer = PixArtTransformer2DModel(num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8,
                                                num_layers=blocks, cross_attention_dim=1152, caption_channels=TEXT_HIDDEN,
                                                sample_size=64, patch_size=2, use_additional_conditions=False).eval()
    return pipe


def sana_wide(blocks: int = 3, seed: int = 0) -> SanaPipeline:
    """SANA 1600M's block width (70 x 32 linear heads, 20 x 112 cross heads), ``blocks`` blocks, 512 px bin."""
    from dmutils.testing.dits import TEXT_HIDDEN, tiny_sana_pipeline

    pipe = tiny_sana_pipeline(seed)
    torch.manual_seed(seed)
    pipe.transformer = SanaTransformer2DModel(in_channels=4, out_channels=4, num_attention_heads=70, attention_head_dim=32,
                                              num_layers=blocks, num_cross_attention_heads=20, cross_attention_head_dim=112,
                                              cross_attention_dim=2240, caption_channels=TEXT_HIDDEN, mlp_ratio=2.5, sample_size=16,
                                              patch_size=1).eval()
    return pipe


def _grid(pipe) -> int:
    """The patch grid of a square image: the pipelines bin it to sample_size x VAE factor pixels."""
    return pipe.transformer.config.sample_size // pipe.transformer.config.patch_size


def _call(pipe, steps: int) -> None:
    with torch.no_grad():
        pipe(["a man riding a horse"], num_inference_steps=steps, guidance_scale=4.5, height=SIZE, width=SIZE, output_type="latent",
             generator=torch.Generator().manual_seed(0), clean_caption=False)


def measure(name: str, pipe, pairs: int) -> dict:
    grid = _grid(pipe)
    spec = CaptureSpec(cross_resolutions=(grid,), self_resolutions=(grid,), depth=(1 / 3, 2 / 3))

    def captured(k: int):
        with capture(pipe, spec) as rec:
            _call(pipe, k)
        return rec

    out = ratio_fields(f"ratio_{name}_512", capture_ratio(pipe, spec, lambda steps: _call(pipe, steps), pairs, label=name))
    for k in (1, 3):
        out[f"state_bytes_{name}_{k}"] = captured(k).nbytes
    out[f"grid_{name}"] = grid
    out[f"captured_blocks_{name}"] = sorted({layer.level for layer in captured(1).layers})
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m dmutils.benchmarks.capture_dit", description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=3)
    parser.add_argument("--pairs", type=int, default=12, help="pairs of denoiser steps, recording on and off")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    out = {"blocks": args.blocks, "pairs": args.pairs, "note": f"real block width, {args.blocks} blocks, random weights, float32, CPU"}
    out |= measure("pixart", pixart_sigma_wide(args.blocks), args.pairs)
    out |= measure("sana", sana_wide(args.blocks), args.pairs)
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()

"""attention-map-diffusers 1.0.0 against dmutils' capture, the same layers of a narrow SD3.5-medium-shaped transformer.

    pip install --no-deps --target /tmp/amd attention-map-diffusers==1.0.0     # not a dependency of dmutils
    PYTHONPATH=/tmp/amd python -m dmutils.benchmarks.compare_attention_map_diffusers

The model has SD3.5-medium's config with 3 blocks and 2 heads (so the maps' sizes are the real ones at
512 px: 32x32 image tokens, 77 + 256 text tokens, CFG batch); both capture image->text and image->image
maps of block 1 (the middle third). Printed: capture bytes after 2 and 6 steps (attention-map-diffusers
keeps one record per layer and step with ``timesteps="all"``; dmutils keeps running sums), and each one's
time over plain generation (6 steps, 5 pairs, 1 thread; attention dominates this narrow model, so the ratios
compare the two implementations, not the overhead on the real model).
"""
from __future__ import annotations

import torch

from dmutils.attention import capture
from dmutils.benchmarks.capture import middle_third_spec
from dmutils.benchmarks.timing import paired_ratio
from dmutils.testing.dits import sd35_bench_pipeline


def main() -> None:
    from attention_map_diffusers import AttentionCapture

    torch.set_num_threads(1)
    pipe = sd35_bench_pipeline(blocks=3, num_attention_heads=2)
    embeds = torch.randn(1, 333, 4096, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    pooled = torch.randn(1, 2048, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    kw = dict(prompt_embeds=embeds, negative_prompt_embeds=embeds, pooled_prompt_embeds=pooled,
              negative_pooled_prompt_embeds=pooled, height=512, width=512, guidance_scale=4.5, output_type="latent")

    def theirs(steps: int):
        with AttentionCapture(pipe, relations=["image->text", "image->image"], layers=["transformer_blocks.1.attn"],
                              timesteps="all", offload="cpu") as cap:
            pipe(num_inference_steps=steps, **kw)
        return cap.collector

    def ours(steps: int):
        with capture(pipe, middle_third_spec(32)) as rec:
            pipe(num_inference_steps=steps, **kw)
        return rec.state

    for steps in (2, 6):
        print(f"steps={steps}: attention-map-diffusers {theirs(steps).peak_capture_bytes} bytes, "
              f"dmutils {ours(steps).peak_bytes} bytes")
    plain = lambda: pipe(num_inference_steps=6, **kw)
    r_theirs = paired_ratio(plain, lambda: theirs(6), repeats=5, warmup=1, label="attention-map-diffusers")
    r_ours = paired_ratio(plain, lambda: ours(6), repeats=5, warmup=1, label="dmutils")
    print(f"time / plain: attention-map-diffusers {r_theirs['ratio']:.3f}, dmutils {r_ours['ratio']:.3f} (plain {r_theirs['a_s']:.2f} s)")


if __name__ == "__main__":
    main()

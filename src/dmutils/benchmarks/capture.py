"""``dmutils bench capture``: what attention capture costs in time and memory.

Generation time with capture divided by generation time without it (same pipeline, prompts, seeds
and steps; a warm-up run each, then with/without runs alternated and the median of each taken;
torch threads fixed; the denoising loop is timed: ``output_type="latent"``), in the Dataset
Diffusion setting: cross-attention at level 2 and self-attention at level 1 of the UNet, that is
cross@16 + self@32 at 512 px, cross@8 + self@16 for a 32x32 latent (toy model, SD at 256 px).
Also the bytes of the capture state after 10 and after 50 steps (flat: one running sum per map).

- ``ratio_toy``: models/toy-sd if it is there, else a random SD 1.5-shaped stand-in of the same size
  (``toy_model`` says which).
- ``ratio_sd15_256_bf16``: the real SD 1.5 UNet config, random weights, bf16, 256 px, on the CPU.
- ``ratio_toy_explicit_all_layers``: for reference, explicit softmax in every layer (diffusers'
  ``AttnProcessor``), as the official DiffuMask / Dataset Diffusion code does, without capture.
"""
from __future__ import annotations

import os
import statistics
import sys
import time

import torch
from diffusers.models.attention_processor import AttnProcessor

from dmutils.attention import CaptureSpec, capture
from dmutils.params import REPO_ROOT

TOY_PATH = REPO_ROOT / "models" / "toy-sd"


def dataset_diffusion_spec(latent: int) -> CaptureSpec:
    """Cross at level 2, self at level 1 (cross@16 + self@32 at 512 px)."""
    return CaptureSpec(cross_resolutions=(latent // 4,), self_resolutions=(latent // 2,))


def _generate(pipe, prompts: list[str], steps: int) -> None:
    generators = [torch.Generator().manual_seed(s) for s in range(len(prompts))]
    pipe(prompts, generator=generators, num_inference_steps=steps, guidance_scale=7.5, output_type="latent")


def _timed(pipe, prompts, steps, spec: CaptureSpec | None) -> float:
    start = time.perf_counter()
    if spec is None:
        _generate(pipe, prompts, steps)
    else:
        with capture(pipe, spec):
            _generate(pipe, prompts, steps)
    return time.perf_counter() - start


def time_ratio(pipe, prompts: list[str], steps: int, spec: CaptureSpec, repeats: int) -> dict[str, float]:
    """Median seconds without / with capture (warm-up first, runs alternated) and their ratio."""
    _timed(pipe, prompts, steps, None)
    _timed(pipe, prompts, steps, spec)
    plain, captured = [], []
    for _ in range(repeats):
        plain.append(_timed(pipe, prompts, steps, None))
        captured.append(_timed(pipe, prompts, steps, spec))
    p, c = statistics.median(plain), statistics.median(captured)
    return {"plain_s": p, "capture_s": c, "ratio": c / p}


def explicit_ratio(pipe, prompts: list[str], steps: int, repeats: int) -> float:
    """Time with explicit softmax in every layer (no capture) over time with the default processors."""
    originals = dict(pipe.unet.attn_processors)
    plain = statistics.median(_timed(pipe, prompts, steps, None) for _ in range(repeats))
    pipe.unet.set_attn_processor(AttnProcessor())
    try:
        _timed(pipe, prompts, steps, None)
        explicit = statistics.median(_timed(pipe, prompts, steps, None) for _ in range(repeats))
    finally:
        pipe.unet.set_attn_processor(originals)
    return explicit / plain


def state_bytes(pipe, prompts: list[str], spec: CaptureSpec, steps: int) -> int:
    with capture(pipe, spec) as rec:
        _generate(pipe, prompts, steps)
    return rec.state.peak_bytes


def toy_pipeline():
    """models/toy-sd when present, else a random SD 1.5-shaped pipeline of the toy's size."""
    if (TOY_PATH / "model_index.json").is_file():
        from dmutils.params import ModelParams
        from dmutils.pipeline import load_pipeline

        return load_pipeline(ModelParams(path=str(TOY_PATH), device="cpu", dtype="float32")), "models/toy-sd"
    from dmutils.tiny_models import tiny_sd15_pipeline

    return tiny_sd15_pipeline(seed=0, sample_size=32), "random SD 1.5-shaped stand-in (64 px, latent 32; models/toy-sd not found)"


def _log(msg: str) -> None:
    print(f"[bench capture] {msg}", file=sys.stderr, flush=True)


def run(args) -> dict:
    quick = bool(getattr(args, "quick", False))
    threads = int(os.environ.get("DMUTILS_BENCH_THREADS", min(2, os.cpu_count() or 1)))
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    out: dict = {"threads": threads, "timing": "denoising loop, output_type='latent', guidance 7.5 (CFG batch)"}

    toy, toy_name = toy_pipeline()
    latent = toy.unet.config.sample_size
    spec = dataset_diffusion_spec(latent)
    prompts = ["a red circle and a blue square", "a photo of a star and a ring"]
    toy_steps, repeats = (3, 2) if quick else (10, 5)
    _log(f"toy: {toy_name}, {toy_steps} steps, {repeats} repeats")
    r = time_ratio(toy, prompts, toy_steps, spec, repeats)
    out |= {"toy_model": toy_name, "toy_setting": f"cross@{latent // 4} + self@{latent // 2} (latent {latent})",
            "toy_steps": toy_steps, "toy_batch": len(prompts), "toy_plain_s": r["plain_s"], "toy_capture_s": r["capture_s"],
            "ratio_toy": r["ratio"]}
    out["ratio_toy_explicit_all_layers"] = explicit_ratio(toy, prompts, toy_steps, repeats)
    _log(f"toy ratio {r['ratio']:.3f}, explicit everywhere {out['ratio_toy_explicit_all_layers']:.3f}; state bytes")
    out["state_bytes_10_steps"] = state_bytes(toy, prompts[:1], spec, 10)
    out["state_bytes_50_steps"] = state_bytes(toy, prompts[:1], spec, 50)
    out["state_bytes_batch"] = 1
    del toy
    _log("building the SD 1.5-shaped UNet (860M random parameters, bf16)")

    from dmutils.tiny_models import sd15_bench_pipeline

    sd = sd15_bench_pipeline(dtype=torch.bfloat16)
    sd_steps, sd_repeats = (2, 2) if quick else (8, 3)
    _log(f"sd15: {sd_steps} steps, {sd_repeats} repeats")
    r = time_ratio(sd, ["a photo of a horse and a person"], sd_steps, dataset_diffusion_spec(32), sd_repeats)
    out |= {"sd15_setting": "cross@8 + self@16 (256 px, latent 32)", "sd15_steps": sd_steps, "sd15_batch": 1,
            "sd15_plain_s": r["plain_s"], "sd15_capture_s": r["capture_s"], "ratio_sd15_256_bf16": r["ratio"]}
    return out

"""``dmutils bench capture``: what attention capture costs in time and memory.

Generation time with capture divided by generation time without it (same pipeline, prompts, seeds
and steps; torch threads fixed; the denoising loop is timed: ``output_type="latent"``), in the Dataset
Diffusion setting: cross-attention at level 2 and self-attention at level 1 of the UNet, that is
cross@16 + self@32 at 512 px, cross@8 + self@16 for a 32x32 latent (SD at 256 px), cross@4 + self@8
for the toy model's 16x16 latent. Also the bytes of the capture state after 10 and after 50 steps
(flat: one running sum per map).

Timing (:func:`dmutils.benchmarks.timing.alternating_steps`): CPU seconds of this process (``time.process_time``)
on one torch thread by default (``DMUTILS_BENCH_THREADS``). Within one generation, recording is switched on and off
at alternate denoiser steps (pairs: off on, on off, ...) after a warm-up step of each, and the captured layers are
timed: each pair's ratio is 1 + (their time recording - their time not) / the plain step's time. Whole generations
timed in turn could not show a 5% cost on this 2-core machine: the same SD3.5 step's time varied from one run to the
next by far more than that. Every ratio is the median of its pairs'
ratios, with ``<name>_spread`` (max - min), ``<name>_iqr``, ``<name>_range``, ``<name>_repeats`` and
``<name>_steps`` (the median ratio of the whole steps, capture's cost and the machine's noise together).

- ``ratio_toy``: models/toy-sd if it is there, else a random SD 1.5-shaped stand-in of the same size
  (``toy_model`` says which).
- ``ratio_sd15_256_bf16``: the real SD 1.5 UNet config, random weights, bf16, 256 px, on the CPU.
- ``ratio_toy_explicit_all_layers``: for reference, explicit softmax in every layer (diffusers'
  ``AttnProcessor``), as the official DiffuMask / Dataset Diffusion code does, without capture.
- ``ratio_sd3_512_bf16`` / ``ratio_flux_512_bf16``: diffusion transformers at 512 px in bf16, the cross maps
  of the middle third of the blocks as the presets capture them (``joint_slice``: the text columns only);
  ``..._with_self``: the presets' self maps too (every image column of every captured layer: the one part of
  capture that scores as much as the layer's attention does) (:func:`sd3_bench`, :func:`flux_bench`); and their
  ``state_bytes_*`` after 2 and 6 steps. ``DMUTILS_BENCH_CAPTURE=sd3,flux`` runs only those parts.
"""
from __future__ import annotations

import os
import sys

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor

from dmutils.attention import CaptureSpec, capture
from dmutils.benchmarks.timing import alternating_steps, fixed_threads, ratio_entries
from dmutils.paths import REPO_ROOT

TOY_PATH = REPO_ROOT / "models" / "toy-sd"


def dataset_diffusion_spec(latent: int) -> CaptureSpec:
    """Cross at level 2, self at level 1 (cross@16 + self@32 at 512 px)."""
    return CaptureSpec(cross_resolutions=(latent // 4,), self_resolutions=(latent // 2,))


def _generate(pipe, prompts: list[str], steps: int) -> None:
    generators = [torch.Generator().manual_seed(s) for s in range(len(prompts))]
    pipe(prompts, generator=generators, num_inference_steps=steps, guidance_scale=7.5, output_type="latent")


def capture_ratio(pipe, spec: CaptureSpec, generate, pairs: int, label: str = "") -> dict:
    """Generation with capture over generation without it, step by step in one generation of ``generate(steps)``
    (:func:`alternating_steps`, the captured layers timed): its dict (``a_s`` a plain step, ``b_s`` a captured one)."""
    with capture(pipe, spec) as rec:
        state = rec.state
        r = alternating_steps(rec.denoiser, lambda on: setattr(state, "recording", on),
                              {layer.name: layer.module for layer in rec.layers}, generate, pairs)
    _log(f"{label}: ratio {r['ratio']:.3f} (iqr {r['iqr']:.3f}, {pairs} pairs), whole steps {r['steps_ratio']:.3f}")
    return r


def explicit_ratio(pipe, prompts: list[str], pairs: int) -> dict:
    """Explicit softmax in every layer (diffusers' ``AttnProcessor``, no capture) over the default processors, step
    by step as :func:`capture_ratio`."""
    originals = dict(pipe.unet.attn_processors)
    modules = {name: m for name, m in pipe.unet.named_modules() if isinstance(m, Attention)}

    def toggle(on: bool) -> None:
        pipe.unet.set_attn_processor(AttnProcessor() if on else dict(originals))  # diffusers pops from the dict it is given
    return alternating_steps(pipe.unet, toggle, modules, lambda steps: _generate(pipe, prompts, steps), pairs)


def ratio_fields(name: str, r: dict) -> dict:
    """The JSON entries of one step-alternated ratio: :func:`ratio_entries`' and ``<name>_steps``."""
    return ratio_entries(name, r) | {f"{name}_steps": round(r["steps_ratio"], 4)}


def state_bytes(pipe, prompts: list[str], spec: CaptureSpec, steps: int) -> int:
    with capture(pipe, spec) as rec:
        _generate(pipe, prompts, steps)
    return rec.state.peak_bytes


def toy_pipeline():
    """models/toy-sd when present, else a random SD 1.5-shaped pipeline of the toy's size."""
    if (TOY_PATH / "model_index.json").is_file():
        from dmutils.config import ModelParams
        from dmutils.pipeline import load_pipeline

        return load_pipeline(ModelParams(path=str(TOY_PATH), device="cpu", dtype="float32")), "models/toy-sd"
    from dmutils.testing.sd import tiny_sd15_pipeline

    return tiny_sd15_pipeline(seed=0, sample_size=32), "random SD 1.5-shaped stand-in (64 px, latent 32; models/toy-sd not found)"


def sd15_pipeline(quick: bool):
    """The real SD 1.5 UNet config (860M random parameters, bf16, 256 px); ``quick``: the tiny SD 1.5-shaped one of
    the same latent size and attention levels (bf16 convolutions are emulated on a CPU: the real width's steps take
    minutes, too long for a check that the measurement runs)."""
    from dmutils.testing.sd import sd15_bench_pipeline, tiny_sd15_pipeline

    if quick:
        return tiny_sd15_pipeline(seed=0, sample_size=32).to(dtype=torch.bfloat16), " (64 px, latent 32); --quick: the tiny SD 1.5-shaped UNet"
    _log("building the SD 1.5-shaped UNet (860M random parameters, bf16)")
    return sd15_bench_pipeline(dtype=torch.bfloat16), " (256 px, latent 32)"


def _log(msg: str) -> None:
    print(f"[bench capture] {msg}", file=sys.stderr, flush=True)


def run(args) -> dict:
    quick = bool(getattr(args, "quick", False))
    threads = fixed_threads()
    torch.manual_seed(0)
    out: dict = {"_inputs": {"device": "cpu"}, "threads": threads,
                 "timing": "CPU seconds (process_time); recording on and off at alternate denoiser steps of one generation "
                           "(pairs, after a warm-up step of each), the captured layers timed: per pair 1 + their extra time / "
                           "the plain step's time; the median of the pairs"}
    parts = os.environ.get("DMUTILS_BENCH_CAPTURE", "unet,sd3,flux").split(",")
    if "sd3" in parts:
        out |= sd3_bench(quick)
    if "flux" in parts:
        out |= flux_bench(quick)
    if "unet" not in parts:
        return out

    toy, toy_name = toy_pipeline()
    if toy_name == "models/toy-sd":
        out["_inputs"]["model_dir"] = TOY_PATH
    toy.set_progress_bar_config(disable=True)
    latent = toy.unet.config.sample_size
    spec = dataset_diffusion_spec(latent)
    prompts = ["a red circle and a blue square", "a photo of a star and a ring"]
    toy_pairs = 2 if quick else 40
    _log(f"toy: {toy_name}, {toy_pairs} pairs of steps")
    r = capture_ratio(toy, spec, lambda steps, p=toy: _generate(p, prompts, steps), toy_pairs, label="toy")
    out |= {"toy_model": toy_name, "toy_setting": f"cross@{latent // 4} + self@{latent // 2} (latent {latent})",
            "toy_pairs": toy_pairs, "toy_batch": len(prompts), "toy_plain_s": round(r["a_s"], 4),
            "toy_capture_s": round(r["b_s"], 4), **ratio_fields("ratio_toy", r)}
    e = explicit_ratio(toy, prompts, toy_pairs)
    out |= ratio_fields("ratio_toy_explicit_all_layers", e)
    _log(f"explicit everywhere {e['ratio']:.3f}; state bytes")
    out["state_bytes_10_steps"] = state_bytes(toy, prompts[:1], spec, 10)
    out["state_bytes_50_steps"] = state_bytes(toy, prompts[:1], spec, 50)
    out["state_bytes_batch"] = 1
    del toy
    sd, sd_note = sd15_pipeline(quick)
    sd.set_progress_bar_config(disable=True)
    sd_pairs = 1 if quick else 12
    prompt = ["a photo of a horse and a person"]
    r = capture_ratio(sd, dataset_diffusion_spec(32), lambda steps: _generate(sd, prompt, steps), sd_pairs, label="sd15")
    out |= {"sd15_setting": f"cross@8 + self@16{sd_note}", "sd15_pairs": sd_pairs, "sd15_batch": 1,
            "sd15_plain_s": round(r["a_s"], 4), "sd15_capture_s": round(r["b_s"], 4), **ratio_fields("ratio_sd15_256_bf16", r)}
    return out


# ---------------------------------------------------------------------------------------------
# Diffusion transformers: SD3.5-medium and FLUX.1 configs at 512 px, bf16
# ---------------------------------------------------------------------------------------------
def middle_third_spec(grid: int, with_self: bool = True) -> CaptureSpec:
    """The presets' capture (params/voc_sd35.yaml, voc_flux1.yaml): maps of the blocks in the middle third of the
    depth, on the patch grid, every step; cross maps (``joint_slice``) and, ``with_self``, self maps."""
    return CaptureSpec(cross_resolutions=(grid,), self_resolutions=(grid,) if with_self else (), depth=(1 / 3, 2 / 3),
                       timestep_window=(0.0, 1.0))


def _transformer_ratio(name: str, build, call_kwargs: dict, blocks_note: str, quick: bool) -> dict:
    """Step-alternated timings (:func:`capture_ratio`) of the real-width model ``build(narrow=False)``:
    ``ratio_<name>_512_bf16`` with the presets' cross maps alone, ``ratio_<name>_512_bf16_with_self`` with their self
    maps too; and the capture state after 2 and 6 steps of ``build(narrow=True)`` (same grid and text length: the
    state's size does not depend on the width)."""
    specs = {"": middle_third_spec(32, with_self=False), "_with_self": middle_third_spec(32)}
    out: dict = {f"{name}_setting": f"512 px (32x32 patch grid), bf16, the middle third of the blocks, every step: cross@32 "
                                    f"(joint_slice) for ratio_{name}_512_bf16, cross@32 + self@32 for ratio_{name}_512_bf16_with_self; "
                                    f"{blocks_note}"}

    def generate(pipe, spec: CaptureSpec | None, steps: int) -> int:
        if spec is None:
            pipe(num_inference_steps=steps, output_type="latent", **call_kwargs)
            return 0
        with capture(pipe, spec) as rec:
            pipe(num_inference_steps=steps, output_type="latent", **call_kwargs)
        return rec.state.peak_bytes

    narrow = build(narrow=True)
    out[f"state_bytes_{name}_2_steps"] = generate(narrow, specs["_with_self"], 2)
    out[f"state_bytes_{name}_6_steps"] = generate(narrow, specs["_with_self"], 6)
    del narrow
    pipe = build(narrow=quick)
    with capture(pipe, specs["_with_self"]) as rec:
        out[f"{name}_captured_layers"] = [layer.name for layer in rec.layers]
    pairs = 1 if quick else int(os.environ.get("DMUTILS_BENCH_PAIRS", 30))
    out[f"{name}_pairs"] = pairs
    for suffix, spec in specs.items():
        _log(f"{name}{suffix}: {pairs} pairs of steps ({blocks_note})")
        r = capture_ratio(pipe, spec, lambda steps, p=pipe: generate(p, None, steps), pairs, label=name + suffix)
        out |= ratio_fields(f"ratio_{name}_512_bf16{suffix}", r)
        out |= {f"{name}_plain_s{suffix}": round(r["a_s"], 3), f"{name}_capture_s{suffix}": round(r["b_s"], 3)}
    return out


def sd3_bench(quick: bool = False, blocks: int = 3) -> dict:
    """SD3.5-medium's transformer config at real width (1536, 24 heads), ``blocks`` of its 24 joint blocks (the
    CPU cannot run 24 in reasonable time: 2.5B parameters), the middle third captured (block 1 of 3: a
    dual-attention block, as blocks 8-12 of the real middle third 8-15), CFG batch (guidance 4.5), 333 text tokens."""
    from dmutils.testing.dits import sd35_bench_pipeline

    embeds = torch.randn(1, 77 + 256, 4096, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    pooled = torch.randn(1, 2048, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    kwargs = dict(prompt_embeds=embeds, negative_prompt_embeds=embeds, pooled_prompt_embeds=pooled,
                  negative_pooled_prompt_embeds=pooled, height=512, width=512, guidance_scale=4.5)
    build = lambda narrow: sd35_bench_pipeline(blocks=blocks, **({"num_attention_heads": 2} if narrow else {}))
    note = (f"{blocks} of SD3.5-medium's 24 blocks at real width (time on this CPU), 1/3 captured as in the full model; "
            f"guidance 4.5 (CFG batch), 1024 image + 333 text tokens"
            + ("; --quick: 2 heads instead of 24" if quick else ""))
    return _transformer_ratio("sd3", build, kwargs, note, quick)


def flux_bench(quick: bool = False, dual_blocks: int = 1, single_blocks: int = 2) -> dict:
    """FLUX.1-dev's transformer config at real width (3072, 24 heads), ``dual_blocks`` + ``single_blocks`` of its
    19 + 38 (12B parameters do not fit this machine's time or memory), the same 1:2 ratio; the middle third
    captured (single block 0, as the real middle third is single blocks 0-18); no CFG batch, 512 T5 tokens."""
    from dmutils.testing.dits import flux_bench_pipeline

    embeds = torch.randn(1, 512, 4096, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    pooled = torch.randn(1, 768, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    kwargs = dict(prompt_embeds=embeds, pooled_prompt_embeds=pooled, height=512, width=512, guidance_scale=3.5)
    build = lambda narrow: flux_bench_pipeline(dual_blocks, single_blocks, **({"num_attention_heads": 1} if narrow else {}))
    note = (f"{dual_blocks} + {single_blocks} of FLUX.1's 19 dual + 38 single blocks at real width (time and memory on this "
            f"CPU), 1/3 captured as in the full model; guidance embedded (no CFG batch), 1024 image + 512 text tokens"
            + ("; --quick: 1 head instead of 24" if quick else ""))
    return _transformer_ratio("flux", build, kwargs, note, quick)

"""``dmutils bench toy-model``: is the embedded model good enough to stand in for Stable Diffusion?

On generated images from two-class prompts ("a circle and a star", every pair of classes in turn,
fixed seeds), with the oracle as ground truth:
- ``presence_rate``: the fraction of named objects the oracle finds (at least ``min_fraction`` of the image);
- ``attention_miou``: mIoU (background included) of plain cross-attention masks (heads, layers and steps
  averaged at the toy params' resolutions and timestep window (the late half of the steps; ``attention_miou_all_steps``
  averages every step); each class map min-max normalised; fixed threshold; no refinement) vs the oracle;
- with ``capture.aggregate: auto``, ``attention_heads`` (each head's mean weight and mIoU alone) and
  ``attention_miou_head_choice_ceiling`` (:mod:`dmutils.toy.heads`);
- ``seconds_per_image`` at 50 steps (batch of ``batch``, with CFG), and ``oracle_miou_real`` on real test scenes.

The first two are measured at SD's guidance 7.5 (``PROTOCOL_GUIDANCE``), so that models stay comparable
whatever the params choose; ``*_at_params_guidance`` repeats them at ``params/toy.yaml``'s guidance (2.0,
chosen for the colours of the images: less guidance, softer attention maps).
"""
from __future__ import annotations

import argparse
import time

import torch

from dmutils.config import deep_merge, load_params, parse_overrides
from dmutils.oracles import toy_unet as oracle_mod
from dmutils.toy.probe import (
    PROTOCOL_GUIDANCE,
    SPLIT_TEST_OFFSET,
    evaluate_model,
    head_fields,
    other_model,
    two_class_prompts,
)

# the README's targets, printed beside each figure by 'dmutils bench'
TARGETS = {"presence_rate": ">= 0.95", "attention_miou": ">= 0.70", "oracle_miou_real": ">= 0.95"}


def add_arguments(parser: argparse.ArgumentParser) -> None:  # pragma: no cover - via bench.py
    pass


def run(args: argparse.Namespace) -> dict:
    from dmutils.pipeline import load_pipeline

    quick = getattr(args, "quick", False)
    model = getattr(args, "model", None)
    # --model: another toy model (e.g. models/toy-sd3), loaded as its model_index.json says, with its own scheduler
    overrides = parse_overrides(getattr(args, "overrides", None) or [])  # --set, e.g. capture.aggregate=auto
    params = load_params("params/toy.yaml", deep_merge(overrides, {"model": other_model(model)}) if model else overrides or None)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    pipe = load_pipeline(params.model, device="cpu")
    orc = oracle_mod.load()
    n, batch = (16, 8) if quick else (120, 12)
    steps = params.model.num_inference_steps
    inputs = {"model": params.model.path, "_inputs": {"params": params, "model_dir": params.resolve_path(params.model.path), "device": "cpu"}}
    if getattr(pipe, "transformer", None) is not None:
        from dmutils.benchmarks.toy_transformer import run_transformer

        return run_transformer(pipe, params, orc, n, batch, steps, quick, evaluate_model, _common(pipe, orc, params, quick)) | inputs
    res = evaluate_model(pipe, params, n, batch, steps, orc, params.masks.threshold, guidance=PROTOCOL_GUIDANCE)
    every_step = evaluate_model(pipe, params, n, batch, steps, orc, params.masks.threshold, window=(0.0, 1.0), guidance=PROTOCOL_GUIDANCE)
    at_params = evaluate_model(pipe, params, n, batch, steps, orc, params.masks.threshold)

    return {
        "presence_rate": round(res["presence_rate"], 4),
        "attention_miou": round(res["attention_miou"], 4),
        "attention_miou_all_steps": round(every_step["attention_miou"], 4),
        "attention_iou_by_word": res["iou_by_word"],
        **head_fields(res),
        "guidance_scale": PROTOCOL_GUIDANCE,
        "presence_rate_at_params_guidance": round(at_params["presence_rate"], 4),
        "attention_miou_at_params_guidance": round(at_params["attention_miou"], 4),
        "params_guidance_scale": params.model.guidance_scale,
        "cross_resolutions": list(params.capture.cross_resolutions),
        "aggregate": params.capture.aggregate,
        "images": n,
        **_common(pipe, orc, params, quick),
        **inputs,
    }


def _common(pipe, orc, params, quick: bool) -> dict:
    """Speed (50 steps with CFG, batch 4), the oracle on real scenes, and the protocol's settings."""
    prompts = [p for p, _ in two_class_prompts(4)]
    pipe(prompts[:1], num_inference_steps=2, output_type="np")  # warm-up
    t0 = time.perf_counter()
    pipe(prompts, generator=[torch.Generator().manual_seed(k) for k in range(4)], num_inference_steps=10 if quick else 50, output_type="np")
    spi = (time.perf_counter() - t0) / 4
    real = oracle_mod.render_set(60 if quick else 200, SPLIT_TEST_OFFSET)
    return {
        "timestep_window": list(params.capture.timestep_window),
        "normalize": params.masks.normalize,
        "seconds_per_image": round(spi, 4),
        "seconds_per_image_steps": 10 if quick else 50,
        "oracle_miou_real": round(oracle_mod.miou(orc.predict(real[0]), real[1]), 4),
        "steps": params.model.num_inference_steps,
        "threshold": params.masks.threshold,
        "threads": torch.get_num_threads(),
    }

"""``dmutils bench toy-model``: is the embedded model good enough to stand in for Stable Diffusion?

On generated images from two-class prompts ("a circle and a star", every pair of classes in turn,
fixed seeds), with the oracle as ground truth:
- ``presence_rate``: the fraction of named objects the oracle finds (at least ``min_fraction`` of the image);
- ``attention_miou``: mIoU (background included) of plain cross-attention masks (heads, layers and steps
  averaged at the toy params' resolutions and timestep window (the late half of the steps; ``attention_miou_all_steps``
  averages every step); each class map min-max normalised; fixed threshold; no refinement) vs the oracle;
- ``seconds_per_image`` at 50 steps (batch of ``batch``, with CFG), and ``oracle_miou_real`` on real test scenes.

The first two are measured at SD's guidance 7.5 (``PROTOCOL_GUIDANCE``), so that models stay comparable
whatever the params choose; ``*_at_params_guidance`` repeats them at ``params/toy.yaml``'s guidance (2.0,
chosen for the colours of the images: less guidance, softer attention maps).
"""
from __future__ import annotations

import argparse
import itertools
import time

import numpy as np
import torch

from dmutils.oracles import toy_unet as oracle_mod
from dmutils.config import load_params
from dmutils.data.toyworld import CLASS_NAMES

PROTOCOL_GUIDANCE = 7.5  # SD's default: the model's figures do not move when the params' guidance does

SPLIT_TEST_OFFSET = 2_000_000


def two_class_prompts(n: int) -> list[tuple[str, tuple[str, str]]]:
    pairs = list(itertools.permutations(CLASS_NAMES, 2))
    return [(f"a {a} and a {b}", (a, b)) for a, b in (pairs[i % len(pairs)] for i in range(n))]


def attention_masks(maps, i: int, classes: tuple[str, ...], size: int, threshold: float, norm: str) -> np.ndarray:
    """Plain masks: each class word's map normalised (``norm``), argmax, background below ``threshold``."""
    from dmutils.masks.refine import label_map, normalize

    scores = normalize(maps.class_maps(i, {c: c for c in classes}, size=size), norm)
    return label_map(scores, [CLASS_NAMES.index(c) + 1 for c in classes], threshold, None)


def other_model(path: str) -> dict:
    """``model`` overrides for another toy model: loaded as its model_index.json says, with its own scheduler."""
    return {"path": path, "family": "auto", "scheduler": None}


def protocol_spec(params, window: tuple[float, float] | None = None):
    """The protocol's capture: the params' cross-attention maps only (no self-attention), over ``window`` if given."""
    from dmutils.attention import CaptureSpec

    c = params.capture
    return CaptureSpec(cross_resolutions=tuple(c.cross_resolutions), self_resolutions=(), blocks=tuple(c.blocks),
                       timestep_window=tuple(window or c.timestep_window), head_reduce=c.head_reduce, token_reduce=c.token_reduce)


def found_named(truth: np.ndarray, classes, min_fraction: float = 0.01) -> list[bool]:
    """Per named class: does the oracle's label map ``truth`` give it at least ``min_fraction`` of the image?"""
    return [bool((truth == CLASS_NAMES.index(c) + 1).mean() >= min_fraction) for c in classes]


def iou_by_word(preds, targets, classes: list[tuple[str, str]]) -> dict[str, float]:
    """IoU of the first and of the second class each prompt names, intersections and unions summed over the images."""
    overlap = np.zeros((2, 2))
    for pred, target, names in zip(preds, targets, classes):
        for j, c in enumerate(names):
            p, t = pred == CLASS_NAMES.index(c) + 1, target == CLASS_NAMES.index(c) + 1
            overlap[j] += (p & t).sum(), (p | t).sum()
    return {word: round(float(i / max(u, 1)), 4) for word, (i, u) in zip(("first", "second"), overlap)}


def evaluate_model(pipe, params, n: int, batch: int, steps: int, orc, threshold: float, min_fraction: float = 0.01, progress=True,
                   window: tuple[float, float] | None = None, guidance: float | None = None, spec=None, class_prompts: bool = False):
    """``spec``: a :class:`CaptureSpec` to use instead of the params' cross maps (transformers: map kind, blocks);
    ``class_prompts``: maps over the class prompt "circle star" carried beside the caption (ConceptAttention).
    ``iou_by_word``: the IoU of the first and of the second class the prompt names (pooled over the images): a word
    whose key takes in its neighbour's meaning ("a circle and a star": star absorbing circle) scores low."""
    from tqdm.auto import tqdm

    from dmutils.attention import capture

    if spec is None:
        spec = protocol_spec(params, window)
    items = two_class_prompts(n)
    found = named = 0
    preds, targets, images = [], [], []
    for start in tqdm(range(0, n, batch), desc="bench toy-model", disable=not progress):
        chunk = items[start:start + batch]
        gens = [torch.Generator().manual_seed(start + k) for k in range(len(chunk))]
        with capture(pipe, spec, class_prompts=[" ".join(c) for _, c in chunk] if class_prompts else None) as rec:
            out = pipe([p for p, _ in chunk], generator=gens, num_inference_steps=steps,
                       guidance_scale=params.model.guidance_scale if guidance is None else guidance, output_type="np")
        maps = rec.maps()
        imgs = (out.images * 255).round().astype(np.uint8)
        truth = orc.predict(imgs)
        for k, (_, classes) in enumerate(chunk):
            size = imgs.shape[1]
            preds.append(attention_masks(maps, k, classes, size, threshold, params.masks.normalize))
            hits = found_named(truth[k], classes, min_fraction)
            named, found = named + len(hits), found + sum(hits)
            # the oracle's labels of classes the prompt did not name count as background
            t = truth[k].copy()
            t[~np.isin(t, [0] + [CLASS_NAMES.index(c) + 1 for c in classes])] = 0
            targets.append(t)
        images.append(imgs)
    return {"presence_rate": found / named, "attention_miou": oracle_mod.miou(np.stack(preds), np.stack(targets)),
            "iou_by_word": iou_by_word(preds, targets, [c for _, c in items]),
            "images": np.concatenate(images), "preds": np.stack(preds), "targets": np.stack(targets)}


def add_arguments(parser: argparse.ArgumentParser) -> None:  # pragma: no cover - via bench.py
    pass


def run(args: argparse.Namespace) -> dict:
    from dmutils.pipeline import load_pipeline

    quick = getattr(args, "quick", False)
    model = getattr(args, "model", None)
    # --model: another toy model (e.g. models/toy-sd3), loaded as its model_index.json says, with its own scheduler
    params = load_params("params/toy.yaml", {"model": other_model(model)} if model else None)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    pipe = load_pipeline(params.model, device="cpu")
    orc = oracle_mod.load()
    n, batch = (16, 8) if quick else (120, 12)
    steps = params.model.num_inference_steps
    if getattr(pipe, "transformer", None) is not None:
        from dmutils.benchmarks.toy_transformer import run_transformer

        return run_transformer(pipe, params, orc, n, batch, steps, quick, evaluate_model, _common(pipe, orc, params, quick))
    res = evaluate_model(pipe, params, n, batch, steps, orc, params.masks.threshold, guidance=PROTOCOL_GUIDANCE)
    every_step = evaluate_model(pipe, params, n, batch, steps, orc, params.masks.threshold, window=(0.0, 1.0), guidance=PROTOCOL_GUIDANCE)
    at_params = evaluate_model(pipe, params, n, batch, steps, orc, params.masks.threshold)

    return {
        "presence_rate": round(res["presence_rate"], 4),
        "attention_miou": round(res["attention_miou"], 4),
        "attention_miou_all_steps": round(every_step["attention_miou"], 4),
        "attention_iou_by_word": res["iou_by_word"],
        "guidance_scale": PROTOCOL_GUIDANCE,
        "presence_rate_at_params_guidance": round(at_params["presence_rate"], 4),
        "attention_miou_at_params_guidance": round(at_params["attention_miou"], 4),
        "params_guidance_scale": params.model.guidance_scale,
        "cross_resolutions": list(params.capture.cross_resolutions),
        "images": n,
        **_common(pipe, orc, params, quick),
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

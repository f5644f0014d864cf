"""One batch of generation with attention capture (main process or Ray actor): images, per-class maps at
each resolution, and the job each sample hands to :func:`dmutils.dataset.labelling.finish_sample`."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from dmutils.config import Params
from dmutils.dataset.prompts import SampleSpec, sample_uniform


# ---------------------------------------------------------------------------------------------
# Generation (main process)
# ---------------------------------------------------------------------------------------------
def _reduce(maps, how: str):
    return maps.mean(0) if how == "mean" else maps.amax(0) if how == "max" else maps.sum(0)


def generate_batch(pipe, specs: list[SampleSpec], params: Params, batch_size: int) -> list[dict]:
    """Generate ``specs`` (padded to ``batch_size`` rows) with attention capture.

    Returns per sample: image (H, W, 3) uint8, cross {res: (C, r, r) float16}, self_attn
    {res: (N, N) float16} when the masks need it, and a reject reason or None. Self-attention is
    captured only when the masks read it (:func:`dmutils.masks.refine.uses_self_attention`). With
    ``capture.aggregate: auto``, ``head_weights`` is the choice made for the sample's class words (else None)."""
    import dataclasses
    import inspect

    import torch

    from dmutils.attention.capture import capture
    from dmutils.attention.maps import WordLookupError
    from dmutils.attention.spec import CaptureSpec
    from dmutils.masks.refine import uses_self_attention

    rows = specs + [specs[-1]] * (batch_size - len(specs))
    m = params.model
    class_prompts = [s.class_prompt for s in rows] if params.prompts.class_prompt == "cross_attention" else None
    need_self = uses_self_attention(params.masks)
    spec = CaptureSpec.from_params(params.capture)
    if not need_self:
        spec = dataclasses.replace(spec, self_resolutions=())
    prompts = [s.prompt for s in rows]
    guidance = {"guidance_scale": m.guidance_scale} if "guidance_scale" in inspect.signature(pipe.__call__).parameters else {}
    with torch.no_grad(), capture(pipe, spec, class_prompts=class_prompts) as rec:  # a copy of the prompts: Z-Image rewrites them
        out = pipe(prompt=list(prompts), num_inference_steps=m.num_inference_steps, height=m.height, width=m.width,
                   output_type="np", generator=[torch.Generator("cpu").manual_seed(s.seed) for s in rows],
                   **guidance)  # HunyuanImage has none: its guider guides
        maps = rec.maps(class_prompts or prompts)
    images = (np.clip(np.asarray(out.images), 0, 1) * 255).round().astype(np.uint8)
    results = []
    for i, s in enumerate(specs):
        item = {"image": images[i], "cross": {}, "self_attn": None, "reason": None, "head_weights": None}
        try:
            pos = [maps.token_positions(i, s.words[c]) for c in s.classes]
        except WordLookupError as e:
            item["reason"] = f"class word not in prompt: {e}"
            results.append(item)
            continue
        focus = [k for p in pos for k in p]  # auto aggregation weighs heads by the class words' maps
        if maps.heads:
            item["head_weights"] = maps.head_weights(i, focus)
        for res in maps.cross_resolutions:
            a = maps.cross(i, res, focus)
            item["cross"][res] = torch.stack([_reduce(a[p], spec.token_reduce) for p in pos]).numpy().astype(np.float16)
        if need_self:
            item["self_attn"] = {r: maps.self_attention(i, r).numpy().astype(np.float16) for r in maps.self_resolutions}
        results.append(item)
    return results


def sample_job(s: SampleSpec, item: dict, params: Params, params_hash: str, root: Path) -> dict:
    """What :func:`finish_sample` needs for one generated sample: its manifest record (without the
    outcome) and its image and maps. The same for every way of running generation."""
    ds = params.dataset
    class_index = {c: k + 1 for k, c in enumerate(params.class_names)}
    record = {"index": s.index, "id": s.id, "prompt": s.prompt, "seed": s.seed, "classes": list(s.classes),
              "words": s.words, "class_prompt": s.class_prompt, "source": s.source, "model": params.model.path,
              "params_hash": params_hash, "reason": item["reason"],
              **({"head_weights": item["head_weights"]} if item.get("head_weights") else {}),
              "split": "val" if sample_uniform(params.run.seed, s.index, "split") < ds.val_fraction else "train"}
    return {"record": record, "root": str(root), "image": item["image"], "cross": item["cross"],
            "self_attn": item["self_attn"], "class_ids": [class_index[c] for c in s.classes],
            "mask_params": params.masks.model_dump(mode="json"), "min_area": ds.min_area, "save_maps": ds.save_maps}


def pipeline_for(params: Params):
    from dmutils.pipeline import load_pipeline

    return load_pipeline(params.model)

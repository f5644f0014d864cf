"""The toy-model protocol: two-class prompts ("a circle and a star", every pair in turn, fixed seeds), their plain
cross-attention masks scored against the oracle's labels of the generated images. :mod:`dmutils.benchmarks.toy_model`
reports it, and study 06 reads it block by block and map kind by map kind.

Transformers give several kinds of maps (:data:`KINDS`): ``joint_slice``, ``text_softmax``, ``concept_attention`` and
``output`` (see :mod:`dmutils.benchmarks.toy_transformer`).
"""
from __future__ import annotations

import itertools

import numpy as np
import torch

from dmutils.data.toyworld import CLASS_NAMES
from dmutils.oracles import toy_unet as oracle_mod
from dmutils.toy.heads import HeadChoices

PROTOCOL_GUIDANCE = 7.5  # SD's default: the model's figures do not move when the params' guidance does

SPLIT_TEST_OFFSET = 2_000_000


def two_class_prompts(n: int) -> list[tuple[str, tuple[str, str]]]:
    pairs = list(itertools.permutations(CLASS_NAMES, 2))
    return [(f"a {a} and a {b}", (a, b)) for a, b in (pairs[i % len(pairs)] for i in range(n))]


def class_masks(scores: torch.Tensor, classes: tuple[str, ...], threshold: float, norm: str) -> np.ndarray:
    """Plain masks from (C, S, S) class maps: each normalised (``norm``), argmax, background below ``threshold``."""
    from dmutils.masks.refine import label_map, normalize

    return label_map(normalize(scores, norm), [CLASS_NAMES.index(c) + 1 for c in classes], threshold, None)


def attention_masks(maps, i: int, classes: tuple[str, ...], size: int, threshold: float, norm: str) -> np.ndarray:
    """:func:`class_masks` of sample ``i``'s class maps."""
    return class_masks(maps.class_maps(i, {c: c for c in classes}, size=size), classes, threshold, norm)


def other_model(path: str) -> dict:
    """``model`` overrides for another toy model: loaded as its model_index.json says, with its own scheduler."""
    return {"path": path, "family": "auto", "scheduler": None}


def protocol_spec(params, window: tuple[float, float] | None = None):
    """The protocol's capture: the params' cross-attention maps only (no self-attention), over ``window`` if given."""
    from dmutils.attention import CaptureSpec

    c = params.capture
    return CaptureSpec(cross_resolutions=tuple(c.cross_resolutions), self_resolutions=(), blocks=tuple(c.blocks),
                       timestep_window=tuple(window or c.timestep_window), head_reduce=c.head_reduce, token_reduce=c.token_reduce,
                       aggregate=c.aggregate)


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
    whose key takes in its neighbour's meaning ("a circle and a star": star absorbing circle) scores low.
    ``heads`` (auto aggregation, else None): :meth:`HeadChoices.summary`, each head's weight and mIoU alone."""
    from dmutils.progress import progress_bar

    from dmutils.attention import capture

    if spec is None:
        spec = protocol_spec(params, window)
    items = two_class_prompts(n)
    found = named = 0
    preds, targets, images = [], [], []
    choices = None  # auto aggregation: HeadChoices
    for start in progress_bar(range(0, n, batch), desc="bench toy-model", disable=not progress):
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
            if maps.heads:
                choices = choices or HeadChoices(lambda m, c: class_masks(m, c, threshold, params.masks.normalize))
                choices.add(maps, k, classes, size, preds[-1], t)
        images.append(imgs)
    return {"presence_rate": found / named, "attention_miou": oracle_mod.miou(np.stack(preds), np.stack(targets)),
            "iou_by_word": iou_by_word(preds, targets, [c for _, c in items]),
            "heads": choices.summary(np.stack(targets)) if choices else None,
            "images": np.concatenate(images), "preds": np.stack(preds), "targets": np.stack(targets)}


def head_fields(result: dict) -> dict:
    """The JSON entries of :func:`evaluate_model`'s ``heads`` (auto aggregation; none with the mean)."""
    if not result.get("heads"):
        return {}
    return {"attention_heads": result["heads"]["by_head"], "attention_miou_head_choice_ceiling": result["heads"]["ceiling"]}


# map kind -> (capture.joint_norm, capture.map_space, read against concept tokens carried beside the caption)
KINDS = {"joint_slice": ("joint_slice", "attention", False), "text_softmax": ("text_softmax", "attention", False),
         "concept_attention": ("text_softmax", "attention", True), "output": ("text_softmax", "output", True)}


def uses_concepts(kind: str) -> bool:
    """Whether ``kind``'s maps are read against the class prompt's concept tokens (ConceptAttention); False for a
    kind that is not a transformer's (the UNet's ``cross``)."""
    return kind in KINDS and KINDS[kind][2]


def kind_spec(params, grid: int, kind: str, blocks: tuple[int, ...] | None):
    from dmutils.attention import CaptureSpec

    joint_norm, space, _ = KINDS[kind]
    c = params.capture
    return CaptureSpec(cross_resolutions=(grid,), self_resolutions=(), timestep_window=tuple(c.timestep_window), head_reduce=c.head_reduce,
                       token_reduce=c.token_reduce, transformer_blocks=blocks, joint_norm=joint_norm, map_space=space,
                       aggregate=c.aggregate)


def presence_by_route(pipe, orc, n: int, steps: int, min_fraction: float = 0.01) -> dict:
    """Presence of the named objects with the caption in both routes, in the tokens only, in the pooled vector only."""
    items = two_class_prompts(n)
    prompts, empty = [p for p, _ in items], [""] * n
    tokens, empty_tokens, pooled, empty_pooled = pipe.encode_prompt(
        prompts, prompts, None, do_classifier_free_guidance=True, negative_prompt=empty, negative_prompt_2=empty)
    negative = {"negative_prompt_embeds": empty_tokens, "negative_pooled_prompt_embeds": empty_pooled}

    def presence(seq, vec) -> float:
        out = pipe(prompt_embeds=seq, pooled_prompt_embeds=vec, **negative, generator=[torch.Generator().manual_seed(k) for k in range(n)],
                   num_inference_steps=steps, guidance_scale=PROTOCOL_GUIDANCE, output_type="np")
        truth = orc.predict((out.images * 255).round().astype(np.uint8))
        found = [hit for k, (_, classes) in enumerate(items) for hit in found_named(truth[k], classes, min_fraction)]
        return round(float(np.mean(found)), 4)

    return {"both": presence(tokens, pooled), "tokens_only": presence(tokens, empty_pooled), "pooled_only": presence(empty_tokens, pooled)}

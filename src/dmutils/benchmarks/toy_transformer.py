"""``dmutils bench toy-model --model models/toy-sd3``: the toy UNet's protocol on a toy diffusion transformer.

Same prompts, seeds, guidance (7.5), timestep window, normalisation and threshold as for the toy UNet; every block's
maps lie on the patch grid (16x16 at 64 px, the UNet's best level). Joint attention gives several kinds of maps:
- ``joint_slice``: the text columns of the joint image+text softmax (what the joint attention itself weighs);
- ``text_softmax``: a softmax over the text keys alone (maps sum to 1 over tokens, like a UNet's cross-attention);
- ``concept_attention``: the class prompt "circle star" carried as concept tokens through the text stream beside the
  caption "a circle and a star" (they attend to the image and to each other, never to the caption; the image never
  attends to them), read as image query . concept key, softmax over the concepts;
- ``output``: ConceptAttention's output-space maps of those concept tokens (concept output . image output).
``attention_miou`` is the best kind's (named in ``attention_miou_kind``), ``attention_miou_by_kind`` all of them over
every block, ``attention_miou_by_block`` the best kind block by block (block i of n at depth (i + 0.5) / n).
Capture leaves images unchanged, so every kind and block is scored on the same images; ``presence_rate`` is theirs.
``attention_iou_by_word``: the IoU of the first and of the second class named (a word absorbing its neighbour shows here).
``text_isolated`` (MMDiT only, else null): the best kind again, over all blocks and block by block, with text-to-text
attention cut in every block (:func:`text_isolated`: each text token attends to the image and itself). It is an ablation
of the model as trained: its images change, so presence is measured again. If mixing among the text tokens blurred the
class words, the maps would sharpen without it.
``attention_heads`` and ``attention_miou_head_choice_ceiling`` (auto aggregation only): the best kind's heads, each
with auto's mean weight and its mIoU alone, and the label-chosen ceiling (:mod:`dmutils.toy.heads`).
``presence_rate_by_route``: which route the caption takes into the image. SD3 conditions on the caption twice: its
tokens in joint attention, and a pooled vector in every block's AdaLN. ``tokens_only`` gives the pooled vector of the
empty caption, ``pooled_only`` the token sequence of the empty caption; a model whose presence survives
``pooled_only`` reads the caption from the pooled vector, and its attention maps need not localise anything.
"""
from __future__ import annotations

from dmutils.attention.ablations import text_isolated
from dmutils.attention.adapters.families import SD3
from dmutils.toy.probe import (
    KINDS,
    PROTOCOL_GUIDANCE,
    head_fields,
    kind_spec,
    presence_by_route,
    uses_concepts,
)


def run_transformer(pipe, params, orc, n: int, batch: int, steps: int, quick: bool, evaluate_model, common: dict) -> dict:
    tr = pipe.transformer
    grid = tr.config.sample_size // tr.config.patch_size
    blocks = len(tr.transformer_blocks)

    def score(kind: str, block: int | None = None) -> dict:
        return evaluate_model(pipe, params, n, batch, steps, orc, params.masks.threshold, guidance=PROTOCOL_GUIDANCE,
                              spec=kind_spec(params, grid, kind, None if block is None else (block,)), class_prompts=uses_concepts(kind))

    by_kind = {kind: score(kind) for kind in KINDS}
    best = max(by_kind, key=lambda k: by_kind[k]["attention_miou"])
    by_block = {str(b): round(score(best, b)["attention_miou"], 4) for b in range(blocks)}
    isolated = None
    if SD3.matches(pipe):  # joint attention: the text tokens can attend to each other
        with text_isolated(tr):
            cut = score(best)
            isolated = {"attention_miou": round(cut["attention_miou"], 4), "presence_rate": round(cut["presence_rate"], 4),
                        "attention_iou_by_word": cut["iou_by_word"],
                        "attention_miou_by_block": {str(b): round(score(best, b)["attention_miou"], 4) for b in range(blocks)}}
    return {
        "family": type(tr).__name__,
        "presence_rate": round(by_kind[best]["presence_rate"], 4),
        "attention_miou": round(by_kind[best]["attention_miou"], 4),
        "attention_miou_kind": best,
        "attention_miou_by_kind": {k: round(v["attention_miou"], 4) for k, v in by_kind.items()},
        "attention_miou_by_block": by_block,
        "attention_iou_by_word": by_kind[best]["iou_by_word"],
        **head_fields(by_kind[best]),
        "text_isolated": isolated,
        "presence_rate_by_route": presence_by_route(pipe, orc, n, steps),
        "map_grid": grid,
        "aggregate": params.capture.aggregate,
        "blocks": blocks,
        "guidance_scale": PROTOCOL_GUIDANCE,
        "images": n,
        **common,
    }

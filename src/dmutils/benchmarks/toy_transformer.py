"""``dmutils bench toy-model --model models/toy-sd3``: the toy UNet's protocol on a toy diffusion transformer.

Same prompts, seeds, guidance (7.5), timestep window, normalisation and threshold as for the toy UNet; every block's
maps lie on the patch grid (16x16 at 64 px, the UNet's best level). Joint attention gives several kinds of maps:
- ``joint_slice``: the text columns of the joint image+text softmax (what the joint attention itself weighs);
- ``text_softmax``: a softmax over the text keys alone (maps sum to 1 over tokens, like a UNet's cross-attention);
- ``output``: ConceptAttention's output-space maps (class-prompt tokens carried through the text stream, concept
  output . image output), class prompt "circle star" beside the caption "a circle and a star".
``attention_miou`` is the best kind's (named in ``attention_miou_kind``), ``attention_miou_by_kind`` all of them over
every block, ``attention_miou_by_block`` the best kind block by block (block i of n at depth (i + 0.5) / n).
Capture leaves images unchanged, so every kind and block is scored on the same images; ``presence_rate`` is theirs.
"""
from __future__ import annotations

from dmutils.benchmarks.toy_model import PROTOCOL_GUIDANCE

KINDS = {"joint_slice": ("joint_slice", "attention"), "text_softmax": ("text_softmax", "attention"), "output": ("text_softmax", "output")}


def _spec(params, grid: int, kind: str, blocks: tuple[int, ...] | None):
    from dmutils.attention import CaptureSpec

    joint_norm, space = KINDS[kind]
    c = params.capture
    return CaptureSpec(cross_resolutions=(grid,), self_resolutions=(), timestep_window=tuple(c.timestep_window), head_reduce=c.head_reduce,
                       token_reduce=c.token_reduce, transformer_blocks=blocks, joint_norm=joint_norm, map_space=space)


def run_transformer(pipe, params, orc, n: int, batch: int, steps: int, quick: bool, evaluate_model, common: dict) -> dict:
    tr = pipe.transformer
    grid = tr.config.sample_size // tr.config.patch_size
    blocks = len(tr.transformer_blocks)

    def score(kind: str, block: int | None = None) -> dict:
        return evaluate_model(pipe, params, n, batch, steps, orc, params.masks.threshold, guidance=PROTOCOL_GUIDANCE,
                              spec=_spec(params, grid, kind, None if block is None else (block,)), class_prompts=kind == "output")

    by_kind = {kind: score(kind) for kind in KINDS}
    best = max(by_kind, key=lambda k: by_kind[k]["attention_miou"])
    by_block = {str(b): round(score(best, b)["attention_miou"], 4) for b in range(blocks)}
    return {
        "family": type(tr).__name__,
        "presence_rate": round(by_kind[best]["presence_rate"], 4),
        "attention_miou": round(by_kind[best]["attention_miou"], 4),
        "attention_miou_kind": best,
        "attention_miou_by_kind": {k: round(v["attention_miou"], 4) for k, v in by_kind.items()},
        "attention_miou_by_block": by_block,
        "map_grid": grid,
        "blocks": blocks,
        "guidance_scale": PROTOCOL_GUIDANCE,
        "images": n,
        **common,
    }

"""Joint (image + text) attention with its probabilities recorded: the core of the transformer processors.

MMDiT (SD3/SD3.5) and FLUX.1 attend over one sequence of image and text tokens; SD3 puts the image
first, FLUX.1 the text. :func:`attend_and_record` computes what SDPA computes for the whole batch, but
the image queries of the conditional rows go through an explicit float32 softmax, a chunk of heads at
a time, and from those probabilities it adds to the capture state:

- ``cross``: image query -> text key probabilities (the keys of ``text_part`` within the text), as
  ``text_softmax`` (a softmax over those text keys only: a map sums to 1 over tokens at each pixel,
  as a UNet's) or ``joint_slice`` (those columns of the joint softmax: what the layer really used);
- ``self``: the image -> image slice of the joint softmax, each row renormalised to sum 1 (the
  refinement A_self^tau . A_cross needs a row-stochastic matrix).

Every other row (the unconditional half, the text queries) goes through SDPA, so the output equals
SDPA's within float tolerance and images do not change.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from dmutils.attention.state import CaptureState

MAX_CHUNK_BYTES = 256 * 2**20  # float32 scores computed at once; more heads are done in chunks


def attend_and_record(state: CaptureState, kinds: tuple[str, ...], resolution: int, query: torch.Tensor, key: torch.Tensor,
                      value: torch.Tensor, image: slice, text: slice | None, text_part: slice | None = None,
                      joint_norm: str = "text_softmax", max_chunk_bytes: int | None = None) -> torch.Tensor:
    """SDPA over (batch, heads, seq, d) tensors, recording ``kinds`` of the conditional rows' image
    queries into ``state`` under ``resolution``. ``image`` / ``text`` are the token slices of the
    sequence (``text`` None: no text in this attention); ``text_part`` a slice within the text.
    At most ``max_chunk_bytes`` (default: the module's ``MAX_CHUNK_BYTES``) of scores exist at once."""
    if not kinds:
        return F.scaled_dot_product_attention(query, key, value)
    cond, seq = state.cond, key.shape[-2]
    img = range(seq)[image]
    img_cols = slice(img.start, img.stop)
    txt_cols = None
    if text is not None:
        t = range(seq)[text]
        t = t[text_part] if text_part is not None else t
        txt_cols = slice(t.start, t.stop)
    out = torch.empty_like(query)
    if cond.start:  # the unconditional half, with the fast kernel
        out[: cond.start] = F.scaled_dot_product_attention(query[: cond.start], key[: cond.start], value[: cond.start])
    k, v = key[cond], value[cond]
    for rows in (slice(0, img_cols.start), slice(img_cols.stop, seq)):  # the conditional text queries, fast kernel
        if rows.stop > rows.start:
            out[cond, :, rows] = F.scaled_dot_product_attention(query[cond, :, rows], k, v)
    q = query[cond, :, img_cols]
    n, heads, queries = q.shape[:3]
    per_head = n * queries * seq * 4 * 2  # scores and probabilities
    step = max(1, min(heads, (max_chunk_bytes or MAX_CHUNK_BYTES) // max(per_head, 1)))
    reduce_max = state.head_reduce == "max"
    reduced: dict[str, torch.Tensor] = {}
    outs = []
    for h in range(0, heads, step):
        hs = slice(h, h + step)
        scores = torch.matmul(q[:, hs] * q.shape[-1] ** -0.5, k[:, hs].transpose(-1, -2)).float()
        probs = scores.softmax(dim=-1)
        outs.append(torch.matmul(probs.to(v.dtype), v[:, hs]))
        parts = {}
        if "cross" in kinds:
            parts["cross"] = scores[..., txt_cols].softmax(-1) if joint_norm == "text_softmax" else probs[..., txt_cols]
        if "self" in kinds:
            slab = probs[..., img_cols]
            parts["self"] = slab / slab.sum(-1, keepdim=True)
        for kind, p in parts.items():
            part = p.amax(1) if reduce_max else p.sum(1)
            prev = reduced.get(kind)
            reduced[kind] = part if prev is None else (torch.maximum(prev, part) if reduce_max else prev.add_(part))
        del scores, probs, parts
    for kind, r in reduced.items():
        state.add(kind, resolution, r if reduce_max else r.div_(heads))
    out[cond, :, img_cols] = torch.cat(outs, dim=1).to(out.dtype)
    return out

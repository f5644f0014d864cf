"""Joint (image + text) attention with its probabilities recorded: the core of the transformer processors.

MMDiT (SD3/SD3.5) and FLUX.1 attend over one sequence of image and text tokens; SD3 puts the image
first, FLUX.1 the text. :func:`attend_and_record` returns SDPA's output for the whole batch (the very
call the layer's processor makes, so images do not change at all) and, from the scores of the
conditional rows' image queries (float32, a chunk of heads at a time), adds to the capture state:

- ``cross``: image query -> text key probabilities (the keys of ``text_part`` within the text), as
  ``text_softmax`` (a softmax over those text keys only: a map sums to 1 over tokens at each pixel,
  as a UNet's) or ``joint_slice`` (those columns of the joint softmax: what the layer really used);
- ``self``: the image -> image slice of the joint softmax, each row renormalised to sum 1 (the
  refinement A_self^tau . A_cross needs a row-stochastic matrix): that is the softmax over the image
  columns alone.

Only the columns a map needs are scored: cross maps alone cost a product over the text columns, not the
joint attention again. For ``joint_slice`` the normaliser is the layer's own row logsumexp where plain SDPA
runs the CPU flash kernel (no mask, a float dtype: ``_has_lse_kernel``): that kernel, called directly, gives
the very output SDPA gives (bit for bit) and the logsumexp, so the map is exp(q k_text^T * scale - lse).
Elsewhere (CUDA, masks) the normaliser is computed here from every column, as before. Scores are computed a head at a time where
a head's matrix is large (``state.SCORE_CHUNK_BYTES``: it stays in the CPU's cache while it is exponentiated and
added), and a self map's rows are divided as they are added. Reusing the probabilities for the output (as the UNet
processor does) was measured slower: an explicit softmax over every column with its P.V costs more than SDPA plus
only the needed columns. ``dmutils bench capture`` measures what capture costs (``ratio_sd3_512_bf16``, and
``..._with_self`` with the self maps).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from dmutils.attention.state import SCORE_CHUNK_BYTES, CaptureState

MAX_CHUNK_BYTES = SCORE_CHUNK_BYTES  # float32 scores computed at once; more heads are done in chunks


def attend_and_record(state: CaptureState, kinds: tuple[str, ...], resolution: int, query: torch.Tensor, key: torch.Tensor,
                      value: torch.Tensor, image: slice, text: slice | None, text_part: slice | None = None,
                      joint_norm: str = "joint_slice", max_chunk_bytes: int | None = None,
                      attn_mask: torch.Tensor | None = None, layer: str = "") -> torch.Tensor:
    """SDPA over (batch, heads, seq, d) tensors, recording ``kinds`` of the conditional rows' image
    queries into ``state`` under ``resolution``. ``image`` / ``text`` are the token slices of the
    sequence (``text`` None: no text in this attention); ``text_part`` a slice within the text.
    At most ``max_chunk_bytes`` (default: the module's ``MAX_CHUNK_BYTES``) of scores exist at once.
    ``attn_mask``: SDPA's mask (a padding mask, an ablation's), applied to the maps' scores as to the output."""
    lse = None
    if "cross" in kinds and joint_norm == "joint_slice" and text is not None and _has_lse_kernel(query, key, value, attn_mask):
        # the kernel plain SDPA dispatches to on the CPU (same output, bit for bit), with each row's logsumexp
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(query, key, value)
    else:
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask)  # the layer's output, as its processor computes it
    if kinds:
        record_joint(state, kinds, resolution, query, key, image, text, text_part, joint_norm, max_chunk_bytes, lse=lse,
                     mask=attn_mask, layer=layer)
    return out


def _has_lse_kernel(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: torch.Tensor | None) -> bool:
    """Whether plain SDPA would run the CPU flash kernel, which also returns the row logsumexp: no mask,
    CPU tensors of a float dtype, and SDPA's own choice the flash backend (torch's ``_fused_sdp_choice``).
    Elsewhere (CUDA, masks, other dtypes) the joint slice's normaliser is computed from every column."""
    if attn_mask is not None or query.device.type != "cpu" or query.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return False
    if not hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu"):
        return False
    try:
        return int(torch._fused_sdp_choice(query, key, value)) == int(torch.nn.attention.SDPBackend.FLASH_ATTENTION)
    except (AttributeError, RuntimeError):
        return False


def record_joint(state: CaptureState, kinds: tuple[str, ...], resolution: int, query: torch.Tensor, key: torch.Tensor,
                 image: slice, text: slice | None, text_part: slice | None = None, joint_norm: str = "joint_slice",
                 max_chunk_bytes: int | None = None, lse: torch.Tensor | None = None,
                 mask: torch.Tensor | None = None, layer: str = "") -> None:
    """Add the probabilities ``kinds`` of the conditional rows' image queries to ``state``.

    ``lse``: the attention's own row logsumexp (batch, heads, seq; float32), from the kernel that made
    the output; given, a ``joint_slice`` cross map is exp(q k_text^T * scale - lse) and costs the text
    columns only. ``mask``: SDPA's boolean or additive mask, broadcastable to (batch, heads, seq, seq).
    ``layer``: the layer's name, under which auto aggregation keeps its per-head cross maps.

    Only the score columns a map needs are computed (float32): the text part for ``text_softmax``
    cross maps, the image columns for self maps (the renormalised image slice of the joint softmax
    is the softmax over the image columns), every column for ``joint_slice`` only without ``lse``."""
    seq = key.shape[-2]
    img = range(seq)[image]
    img_cols = slice(img.start, img.stop)
    txt_all = txt_cols = None
    if text is not None:
        t = range(seq)[text]
        txt_all = slice(t.start, t.stop)
        tp = t[text_part] if text_part is not None else t
        txt_cols = slice(tp.start, tp.stop)
    cond = state.cond
    q = query[cond, :, img_cols] * query.shape[-1] ** -0.5  # scores in the layer's dtype (as SDPA's), softmax in float32
    k = key[cond]
    n, heads, queries = q.shape[:3]
    row_lse = lse[cond, :, img_cols].unsqueeze(-1) if lse is not None and joint_norm == "joint_slice" else None
    need_image = "self" in kinds or ("cross" in kinds and joint_norm == "joint_slice" and row_lse is None)
    cols = (img_cols.stop - img_cols.start if need_image else 0) + (seq - img_cols.stop + img_cols.start if "cross" in kinds else 0)
    per_head = n * queries * max(cols, 1) * 4 * 2  # scores and their softmax
    step = max(1, min(heads, (max_chunk_bytes or MAX_CHUNK_BYTES) // per_head))
    reduce_max = state.head_reduce == "max"
    bias = _bias(mask, cond, img_cols)
    reduced: dict[str, torch.Tensor] = {}
    kept: dict[str, list[torch.Tensor]] = {kind: [] for kind in kinds if state.keeps_heads(kind)}
    for h in range(0, heads, step):
        hs = slice(h, h + step)
        qh = q[:, hs]

        def scores(cols: slice) -> torch.Tensor:
            s = torch.matmul(qh, k[:, hs, cols].transpose(-1, -2)).float()
            return s if bias is None else s.add_((bias[:, hs] if bias.shape[1] > 1 else bias)[..., cols])

        s_img = scores(img_cols) if need_image else None
        parts: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}  # kind -> (probabilities, row divisor or None)
        if "cross" in kinds:
            if joint_norm == "text_softmax":
                parts["cross"] = _exp_rows_(scores(txt_cols))
            elif row_lse is not None:  # the text columns of the joint softmax, normalised by the layer's own logsumexp
                parts["cross"] = (scores(txt_cols).sub_(row_lse[:, hs]).exp_(), None)
            else:  # the text columns of the joint softmax: exp(score - logsumexp over every column)
                s_txt = scores(txt_all)
                norm = torch.logaddexp(s_img.logsumexp(-1, keepdim=True), s_txt.logsumexp(-1, keepdim=True))
                part = range(txt_all.stop - txt_all.start)[text_part] if text_part is not None else None
                s_txt = s_txt if part is None else s_txt[..., part.start:part.stop]
                parts["cross"] = ((s_txt - norm).exp(), None)
        if "self" in kinds:
            parts["self"] = _exp_rows_(s_img)  # in place: s_img is not needed after this
        for kind, (p, divisor) in parts.items():
            if reduce_max or kind in kept:
                p = p if divisor is None else p.div_(divisor)
                if kind in kept:
                    kept[kind].append(p)
                if reduce_max:
                    part = p.amax(1)
                    prev = reduced.get(kind)
                    reduced[kind] = part if prev is None else torch.maximum(prev, part)
                    continue
            total = reduced.setdefault(kind, p.new_zeros(p.shape[:1] + p.shape[2:]))
            for j in range(p.shape[1]):  # one pass per head over a matrix still in cache
                if divisor is None or kind in kept:
                    total.add_(p[:, j])
                else:
                    total.addcdiv_(p[:, j], divisor[:, j])
        del s_img, parts
    for kind, r in reduced.items():
        state.add(kind, resolution, r if reduce_max else r.div_(heads), heads=torch.cat(kept[kind], 1) if kind in kept else None,
                  layer=layer)


def _bias(mask: torch.Tensor | None, cond: slice, rows: slice) -> torch.Tensor | None:
    """SDPA's mask for the conditional rows' image queries as a float32 bias (batch|1, heads|1, queries|1, keys)."""
    if mask is None:
        return None
    m = mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape))
    m = m[cond] if m.shape[0] > 1 else m
    m = m[:, :, rows] if m.shape[2] > 1 else m
    if m.dtype == torch.bool:
        return torch.zeros(m.shape, dtype=torch.float32, device=m.device).masked_fill_(~m, float("-inf"))
    return m.float()


def _exp_rows_(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """exp(scores - row max), in place (a float32 buffer of the caller's), and its row sums: the softmax is their
    quotient, left to the caller, who divides as it adds (one pass over the matrix, not two)."""
    scores.sub_(scores.amax(-1, keepdim=True)).exp_()
    return scores, scores.sum(-1, keepdim=True)

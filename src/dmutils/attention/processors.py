"""Diffusers attention processors that record attention probabilities.

:class:`CaptureAttnProcessor` goes on a captured layer only (every other layer keeps its processor,
normally SDPA's ``AttnProcessor2_0``). It computes what ``AttnProcessor2_0`` computes; at a step
inside the window the conditional half of the CFG batch is computed with an explicit softmax, whose
probabilities are added to the :class:`~dmutils.attention.state.CaptureState`, and the unconditional
half with SDPA. Outside the window it calls the layer's original processor. The output equals the
default's within float tolerance, so images do not change.

The explicit probabilities are computed a few heads at a time (at most ``max_chunk_bytes`` of float32
scores per chunk) and reduced over heads at once, so self-attention at 64x64 (4096 x 4096 per head)
never holds every head's matrix: peak memory is one chunk, not ``batch x heads x 4096^2``.

In class-prompt mode (``state.class_context`` set) a cross-attention layer computes its output as
usual and in addition the probabilities of its queries against the class prompt's keys: the maps
come from the class prompt, the image from the caption.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import (
    Attention,
    AttnProcessor,
    AttnProcessor2_0,
)

from dmutils.attention.state import SCORE_CHUNK_BYTES, CaptureState

SUPPORTED = (AttnProcessor2_0, AttnProcessor)


def attention_probs(query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + mask) over keys, in float32: (batch, heads, queries, keys).

    The scale is SDPA's default, which is what ``AttnProcessor2_0`` uses; it is applied to the query
    (small) rather than to the scores (large), as SDPA does."""
    scores = torch.matmul(query * query.shape[-1] ** -0.5, key.transpose(-1, -2)).float()
    if mask is not None:
        scores = scores + mask.float()
    return scores.softmax(dim=-1)


class CaptureAttnProcessor:
    """``AttnProcessor2_0`` that records the probabilities of one layer into ``state``."""

    max_chunk_bytes = SCORE_CHUNK_BYTES  # float32 scores computed at once; more heads are done in chunks
    layer = ""  # the layer's name, set by capture: auto aggregation keeps each layer's heads apart

    def __init__(self, state: CaptureState, kind: str, resolution: int, original) -> None:
        if not isinstance(original, SUPPORTED):
            raise TypeError(f"cannot capture a layer whose processor is {type(original).__name__}; only the default "
                            f"processors are supported: call pipe.unet.set_attn_processor(AttnProcessor2_0()) first")
        self.state, self.kind, self.resolution, self.original = state, kind, resolution, original

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        state = self.state
        if not state.recording:
            return self.original(attn, hidden_states, encoder_hidden_states=encoder_hidden_states,
                                 attention_mask=attention_mask, temb=temb, **kwargs)
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch = hidden_states.shape[0]
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, context.shape[1], batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        if encoder_hidden_states is None:
            context = hidden_states
        elif attn.norm_cross:
            context = attn.norm_encoder_hidden_states(encoder_hidden_states)

        query = self._heads(attn, attn.to_q(hidden_states), attn.norm_q)
        key = self._heads(attn, attn.to_k(context), attn.norm_k)
        value = self._heads(attn, attn.to_v(context))

        cond = state.cond
        if self.kind == "cross" and state.class_context is not None:
            out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask)
            class_context = state.class_context.to(context.dtype)
            if attn.norm_cross:
                class_context = attn.norm_encoder_hidden_states(class_context)
            class_key = self._heads(attn, attn.to_k(class_context), attn.norm_k)
            self._record(query[cond], class_key, None, None)
        else:
            mask = None if attention_mask is None else attention_mask[cond]
            out_cond = self._record(query[cond], key[cond], value[cond], mask)
            if cond.start:  # the unconditional half, rows [0, start), with the fast kernel
                mask = None if attention_mask is None else attention_mask[: cond.start]
                out_uncond = F.scaled_dot_product_attention(query[: cond.start], key[: cond.start], value[: cond.start],
                                                            attn_mask=mask)
                out = torch.cat([out_uncond, out_cond])
            else:
                out = out_cond

        hidden_states = out.transpose(1, 2).reshape(batch, -1, out.shape[1] * out.shape[-1]).to(query.dtype)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor

    def _record(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor | None,
                mask: torch.Tensor | None) -> torch.Tensor | None:
        """Add the head-reduced probabilities of softmax(q k^T) to the state, a chunk of heads at a
        time; return probs @ value (batch, heads, queries, d) when ``value`` is given."""
        n, heads, queries = query.shape[:3]
        per_head = n * queries * key.shape[-2] * 4
        step = max(1, min(heads, self.max_chunk_bytes // max(per_head, 1)))
        reduce_max = self.state.head_reduce == "max"
        kept = [] if self.state.keeps_heads(self.kind) else None
        reduced, outs = None, []
        for h in range(0, heads, step):
            heads_h = slice(h, h + step)
            mask_h = None if mask is None else (mask[:, heads_h] if mask.shape[1] > 1 else mask)
            probs = attention_probs(query[:, heads_h], key[:, heads_h], mask_h)
            if value is not None:
                outs.append(torch.matmul(probs.to(value.dtype), value[:, heads_h]))
            part = probs.amax(1) if reduce_max else probs.sum(1)
            reduced = part if reduced is None else (torch.maximum(reduced, part) if reduce_max else reduced.add_(part))
            if kept is not None:
                kept.append(probs)
            del probs
        self.state.add(self.kind, self.resolution, reduced if reduce_max else reduced.div_(heads),
                       heads=None if kept is None else torch.cat(kept, 1), layer=self.layer)
        return torch.cat(outs, dim=1) if value is not None else None

    @staticmethod
    def _heads(attn: Attention, x: torch.Tensor, norm=None) -> torch.Tensor:
        """(batch, seq, heads * d) -> (batch, heads, seq, d), with the layer's q/k norm if any."""
        x = x.view(x.shape[0], -1, attn.heads, x.shape[-1] // attn.heads).transpose(1, 2)
        return x if norm is None else norm(x)

"""Cross-attention diffusion transformers: PixArt-Σ (``PixArtTransformer2DModel``) and SANA (``SanaTransformer2DModel``),
one adapter read from their descriptors (:mod:`dmutils.attention.adapters.families`).

Every block ``transformer_blocks.i`` has a self-attention ``attn1`` over the image tokens and a
cross-attention ``attn2`` from the image tokens to the text tokens (T5's for PixArt, Gemma-2's for SANA,
padding masked out); all blocks run on the patch grid (latent side / patch size). Cross maps are the
softmax probabilities of ``attn2`` over the text tokens (the conditional half of a CFG batch). Self maps:

- PixArt's ``attn1`` is softmax attention (``AttnProcessor2_0``): its probabilities, as for UNets.
- SANA's ``attn1`` is *linear* attention (``SanaLinearAttnProcessor2_0``): out_q = sum_k (phi(q).phi(k)) v_k /
  (sum_k phi(q).phi(k) + 1e-15) with phi = ReLU. There is no softmax, but the weights
  phi(q).phi(k) / sum_k' phi(q).phi(k') are exactly what the layer mixes its values with: non-negative rows
  that sum to 1. They are recorded as SANA's self maps (a query whose features are all zero mixes nothing:
  its row is put on itself); they are flatter than softmax maps (a kernel, no exponent), so tau refinement
  with them is weaker.

The recording processors below leave the layer's own processor to compute the output (the image cannot
change) and compute the probabilities of the conditional half on the side, a chunk of heads at a time.
PixArt's layers keep the UNet's :class:`~dmutils.attention.processors.CaptureAttnProcessor` (the same
processor class). Class-prompt cross-attention is not supported here (T5/Gemma class prompts would need
their padding mask): use prompts.class_prompt 'append' or 'none'.
"""
from __future__ import annotations

from typing import Any

import torch
from diffusers.models.attention_processor import Attention

from dmutils.attention.adapters.base import AttentionLayer, CaptureError
from dmutils.attention.adapters.transformer import TransformerAdapter
from dmutils.attention.processors import CaptureAttnProcessor, attention_probs
from dmutils.attention.state import CaptureState


class CrossAttentionDiTAdapter(TransformerAdapter):
    """PixArt-Σ, SANA and any DiT whose text enters by cross-attention only: the layer table from the
    descriptor (``attn1`` self, ``attn2`` cross), maps on the patch grid. Softmax layers get the UNet's
    :class:`~dmutils.attention.processors.CaptureAttnProcessor` (the same processor class); with
    ``linear_self`` (SANA) both get recorders that leave the layer's own processor to compute the output.
    ``cfg: halves`` (PixArt, which keeps its CFG flag local): :class:`TransformerAdapter` recognises the CFG batch."""

    def extra_hooks(self, state: CaptureState, class_prompts: list[str] | None) -> list:
        """No concept stream: the text enters these blocks only as cross-attention keys, it has no stream of its own."""
        if self.spec.map_space == "output":
            raise CaptureError(f"capture.map_space 'output' (ConceptAttention) needs a text stream, which {self.family} has not "
                               f"(its text only enters by cross-attention); set capture.map_space: attention")
        return []

    def recording_processor(self, layer: AttentionLayer, state: CaptureState, kinds: tuple[str, ...], resolution: int,
                            original) -> Any:
        if not self.desc.linear_self:
            return CaptureAttnProcessor(state, layer.kind, resolution, original)
        if layer.kind == "self":
            return LinearAttentionRecorder(state, resolution, original)
        return SoftmaxCrossAttentionRecorder(state, resolution, original)


def sana_text_ids(ids: torch.Tensor, text_len: int) -> torch.Tensor:
    """SANA prepends a long instruction to the prompt, encodes both and keeps the first and the last
    ``max_sequence_length - 1`` embeddings (pipeline_sana's ``select_index``): the same ids."""
    if text_len and ids.shape[1] > text_len:
        return torch.cat([ids[:, :1], ids[:, ids.shape[1] - text_len + 1:]], dim=1)
    return ids


class _SideRecorder:
    """Calls the layer's own processor for the output; when recording, adds the probabilities of the
    conditional half to the state, ``max_chunk_bytes`` of float32 weights (a chunk of heads) at a time."""

    max_chunk_bytes = CaptureAttnProcessor.max_chunk_bytes
    kind = ""
    layer = ""  # the layer's name, set by capture (auto aggregation)

    def __init__(self, state: CaptureState, resolution: int, original) -> None:
        self.state, self.resolution, self.original = state, resolution, original

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        out = self.original(attn, hidden_states, encoder_hidden_states=encoder_hidden_states, attention_mask=attention_mask,
                            **kwargs)
        if self.state.recording:
            cond = self.state.cond
            context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
            mask = None if attention_mask is None else attention_mask[cond]
            with torch.no_grad():
                self._record(attn, hidden_states[cond], context[cond], mask)
        return out

    def _record(self, attn: Attention, hidden: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None) -> None:
        query, key = attn.to_q(hidden), attn.to_k(context)
        if attn.norm_q is not None:  # SANA normalises across heads, before the split
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        n, queries, keys, heads = query.shape[0], query.shape[1], key.shape[1], attn.heads
        query = query.view(n, queries, heads, -1).transpose(1, 2)
        key = key.view(n, keys, heads, -1).transpose(1, 2)
        if mask is not None:
            mask = attn.prepare_attention_mask(mask, keys, n).view(n, heads, -1, keys)
        step = max(1, min(heads, self.max_chunk_bytes // max(n * queries * keys * 4, 1)))
        reduce_max = self.state.head_reduce == "max"
        kept = [] if self.state.keeps_heads(self.kind) else None
        reduced = None
        for h in range(0, heads, step):
            heads_h = slice(h, h + step)
            probs = self.weights(query[:, heads_h], key[:, heads_h], None if mask is None else mask[:, heads_h])
            part = probs.amax(1) if reduce_max else probs.sum(1)
            reduced = part if reduced is None else (torch.maximum(reduced, part) if reduce_max else reduced.add_(part))
            if kept is not None:
                kept.append(probs)
            del probs
        self.state.add(self.kind, self.resolution, reduced if reduce_max else reduced.div_(heads),
                       heads=None if kept is None else torch.cat(kept, 1), layer=self.layer)

    def weights(self, query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """(batch, heads, queries, keys) weights the layer mixes its values with, float32."""
        raise NotImplementedError


class SoftmaxCrossAttentionRecorder(_SideRecorder):
    """softmax(q k^T / sqrt(d) + mask) of SANA's cross-attention (what ``SanaAttnProcessor2_0`` computes with SDPA)."""

    kind = "cross"

    def weights(self, query, key, mask):
        return attention_probs(query, key, mask)


class LinearAttentionRecorder(_SideRecorder):
    """phi(q).phi(k) / (sum_k' phi(q).phi(k') + 1e-15), phi = ReLU: ``SanaLinearAttnProcessor2_0``'s weights.
    A query whose features are all zero mixes nothing (the layer outputs 0 for it): its row is put on
    itself, so that every row sums to 1 as the masks' tau refinement expects (a self-loop keeps that
    pixel's value when maps are propagated)."""

    kind = "self"

    def weights(self, query, key, mask):
        q, k = torch.relu(query.float()), torch.relu(key.float())
        scores = torch.matmul(q, k.transpose(-1, -2))
        total = torch.matmul(q, k.sum(-2, keepdim=True).transpose(-1, -2))  # (n, heads, queries, 1)
        weights = scores / (total + 1e-15)
        weights.diagonal(dim1=-2, dim2=-1).add_((total[..., 0] <= 0).float())
        return weights

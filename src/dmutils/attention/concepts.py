"""Concept tokens through a joint transformer's text stream (ConceptAttention, arXiv 2502.04320).

Class/concept tokens (the class prompt, "person horse", encoded like a caption) are carried through
the *text-stream* weights of every joint block (SD3's ``JointTransformerBlock``, FLUX.1's dual-stream
``FluxTransformerBlock``): the block's ``norm1_context`` modulation, the attention's ``add_q/k/v``
projections, ``to_add_out``, ``norm2_context`` and ``ff_context``. Concept queries attend to the
image keys and to the concept keys; the image never attends to the concepts, so the image (and the
caption's text stream) is exactly what it is without them. The stream runs on recorded steps only,
for the conditional rows.

Two maps per recorded layer, chosen by ``spec.map_space``:

- ``attention``: softmax over the concept keys of image query . concept key (the transformer form of
  class-prompt cross-attention: the image is generated from the caption, the map read against the
  class prompt);
- ``output``: image attention output . concept attention output (ConceptAttention's output-space
  map), a dot product over all heads; :meth:`AttentionCapture.maps` takes the softmax over concepts
  after averaging layers and steps.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from dmutils.attention.state import CaptureState


class ConceptStream:
    """The concept tokens' residual stream through ``blocks`` (joint blocks with a text stream)."""

    def __init__(self, state: CaptureState, denoiser: torch.nn.Module, blocks: list[torch.nn.Module], space: str,
                 part: slice | None) -> None:
        self.state, self.denoiser, self.blocks, self.space, self.part = state, denoiser, blocks, space, part
        self.hidden: torch.Tensor | None = None  # (N, C, dim): the concepts' residual stream now
        self._modulation: tuple | None = None  # the current block's norm1_context outputs for the concepts
        self._attn_out: torch.Tensor | None = None  # the current block's concept attention output, (N, C, heads * d)

    def hooks(self) -> list:
        """Forward hooks that start the stream per denoiser call and carry it through each block."""
        handles = [self.denoiser.register_forward_pre_hook(self._start, with_kwargs=True)]
        for block in self.blocks:
            handles.append(block.register_forward_pre_hook(self._before_block, with_kwargs=True))
            handles.append(block.register_forward_hook(self._after_block, with_kwargs=True))
        return handles

    @property
    def active(self) -> bool:
        return self.hidden is not None and self.state.recording

    def _start(self, module, args, kwargs) -> None:
        # capture's own pre-hook ran first (registered first) and set state.recording for this call
        context = self.state.class_context
        self.hidden = self.denoiser.context_embedder(context) if self.state.recording and context is not None else None

    def _before_block(self, block, args, kwargs) -> None:
        if not self.active:
            return
        temb = kwargs["temb"] if "temb" in kwargs else args[2]
        temb = temb[self.state.cond]
        if getattr(block, "context_pre_only", False):  # SD3's last block: AdaLayerNormContinuous, no stream after it
            self._modulation = (block.norm1_context(self.hidden, temb),)
        else:
            self._modulation = block.norm1_context(self.hidden, emb=temb)

    def normed(self) -> torch.Tensor:
        """The concepts as the current block's attention sees them (after ``norm1_context``)."""
        return self._modulation[0]

    def attend(self, attn, img_query: torch.Tensor, img_key: torch.Tensor, img_value: torch.Tensor, img_out: torch.Tensor,
               record: int | None, layer: str = "") -> None:
        """Concept attention of one layer for the conditional rows, all (N, heads, tokens, d). The concepts
        attend to [image, concepts]; with ``record`` (a resolution) the layer's map is added to the state."""
        c = self.normed()
        heads = img_query.shape[1]
        split = lambda x: x.view(x.shape[0], -1, heads, x.shape[-1] // heads).transpose(1, 2)
        cq, ck, cv = split(attn.add_q_proj(c)), split(attn.add_k_proj(c)), split(attn.add_v_proj(c))
        if attn.norm_added_q is not None:
            cq = attn.norm_added_q(cq)
        if attn.norm_added_k is not None:
            ck = attn.norm_added_k(ck)
        out = F.scaled_dot_product_attention(cq, torch.cat([img_key, ck], 2), torch.cat([img_value, cv], 2))
        self._attn_out = out.transpose(1, 2).flatten(2)
        if record is None:
            return
        part = slice(None) if self.part is None else self.part
        heads = None  # output-space maps have no heads
        if self.space == "output":  # (N, pixels, C): image output . concept output over every head
            maps = torch.matmul(img_out.transpose(1, 2).flatten(2).float(), self._attn_out[:, part].float().transpose(1, 2))
        else:
            scores = torch.matmul(img_query * img_query.shape[-1] ** -0.5, ck[:, :, part].transpose(-1, -2)).float()
            heads = scores.softmax(-1)
            maps = heads.amax(1) if self.state.head_reduce == "max" else heads.mean(1)
        self.state.add("cross", record, maps, heads=heads, layer=layer)

    def _after_block(self, block, args, kwargs, output) -> None:
        if not self.active or self._attn_out is None:
            return
        if getattr(block, "context_pre_only", False):
            self.hidden = None  # the text stream ends here
            return
        _, gate_msa, shift_mlp, scale_mlp, gate_mlp = self._modulation
        attn_out = block.attn.to_add_out(self._attn_out.to(self.hidden.dtype))
        hidden = self.hidden + gate_msa.unsqueeze(1) * attn_out
        normed = block.norm2_context(hidden) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
        self.hidden = hidden + gate_mlp.unsqueeze(1) * block.ff_context(normed)
        self._attn_out = None

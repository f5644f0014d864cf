"""Interventions on a model's attention, for studies: what a model's maps owe to one path of its attention.

In MMDiT (SD3) the text tokens attend to each other in every block, so a class word's key can take in its
neighbours' meaning as the blocks go. :func:`text_isolated` cuts that path: each text token attends to the
image and to itself only. The image queries' attention is untouched, so maps captured inside it
(``with text_isolated(pipe.transformer), capture(pipe, spec)``) are read exactly as without it.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, JointAttnProcessor2_0



class TextIsolatedJointProcessor(JointAttnProcessor2_0):
    """SD3's joint attention without text-to-text attention: a text token attends to the image and to itself."""

    @staticmethod
    def joint_mask(n_img: int, seq: int, device) -> torch.Tensor:
        """SDPA's boolean mask over [image, text] (True: may attend): the text-to-text block keeps its diagonal only."""
        allowed = torch.ones(seq, seq, dtype=torch.bool, device=device)
        allowed[n_img:, n_img:] = torch.eye(seq - n_img, dtype=torch.bool, device=device)
        return allowed

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, *args, **kwargs):
        if encoder_hidden_states is None:
            return super().__call__(attn, hidden_states, None, attention_mask, *args, **kwargs)
        n_img = hidden_states.shape[1]
        query, key, value, _ = joint_qkv(attn, hidden_states, encoder_hidden_states)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=self.joint_mask(n_img, query.shape[2], query.device))
        return joint_outputs(attn, out, n_img, True)


def joint_qkv(attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None):
    """Query, key and value (batch, heads, seq, d) of SD3's joint attention over [image, text], as
    ``JointAttnProcessor2_0`` makes them, and the text's slice of the sequence (None without text)."""
    query, key, value = (_heads(attn, p(hidden_states)) for p in (attn.to_q, attn.to_k, attn.to_v))
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    if encoder_hidden_states is None:
        return query, key, value, None
    eq, ek, ev = (_heads(attn, p(encoder_hidden_states)) for p in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj))
    if attn.norm_added_q is not None:
        eq = attn.norm_added_q(eq)
    if attn.norm_added_k is not None:
        ek = attn.norm_added_k(ek)
    n_img = query.shape[2]
    query, key, value = torch.cat([query, eq], 2), torch.cat([key, ek], 2), torch.cat([value, ev], 2)
    return query, key, value, slice(n_img, query.shape[2])


def joint_outputs(attn: Attention, out: torch.Tensor, n_img: int, has_text: bool):
    """The layer's outputs from the attention ``out`` (batch, heads, seq, d): the image's, and the text's when it had text."""
    out = out.transpose(1, 2).reshape(out.shape[0], -1, attn.heads * out.shape[-1])
    image_out = attn.to_out[1](attn.to_out[0](out[:, :n_img]))
    if not has_text:
        return image_out
    text_out = out[:, n_img:]
    if not attn.context_pre_only:
        text_out = attn.to_add_out(text_out)
    return image_out, text_out


def _heads(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    """(batch, seq, heads * d) -> (batch, heads, seq, d)."""
    return x.view(x.shape[0], -1, attn.heads, x.shape[-1] // attn.heads).transpose(1, 2)


@contextmanager
def text_isolated(transformer):
    """Every joint block of an ``SD3Transformer2DModel`` without text-to-text attention; the processors are restored on exit."""
    originals = dict(transformer.attn_processors)
    try:
        for block in transformer.transformer_blocks:
            if not isinstance(block.attn.processor, JointAttnProcessor2_0):
                raise TypeError(f"text_isolated needs SD3's JointAttnProcessor2_0, not {type(block.attn.processor).__name__}")
            block.attn.set_processor(TextIsolatedJointProcessor())
        yield transformer
    finally:
        transformer.set_attn_processor(originals)

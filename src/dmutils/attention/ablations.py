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

from dmutils.attention.adapters.mmdit import joint_outputs, joint_qkv


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

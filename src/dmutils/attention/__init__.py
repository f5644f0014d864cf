"""Attention capture: cross- and self-attention maps of a diffusers denoiser (UNet or transformer) while it generates.

    from dmutils.attention import CaptureSpec, capture
    spec = CaptureSpec.from_params(params.capture)            # cross@16 + self@32 by default
    with capture(pipe, spec, class_prompts=None) as rec:      # or class_prompts=["person horse", ...]
        out = pipe(prompts, generator=[torch.Generator().manual_seed(s) for s in seeds],
                   num_inference_steps=25, guidance_scale=7.5, output_type="np")
    maps = rec.maps()
    maps.words(0); maps.cross(0, 16); maps.aggregate(0, size=64)
    maps.word_map(0, "potted plant", size=64); maps.class_maps(0, {"person": "man"}, size=64)
    maps.self_attention(0, 32); maps.truncated(0)

Modules: ``spec`` (what to capture), ``capture`` (the context manager and hooks), ``adapters`` (a
descriptor per model family: its blocks, map grid and text layout, read by one adapter per kind of attention), ``processors``
(the UNet's recording attention processor), ``state`` (running sums, flat in steps), ``maps`` (results and
look-up by word), ``prompts`` (class-prompt appending / class-prompt cross-attention), ``ablations``
(interventions for studies: ``text_isolated`` cuts MMDiT's text-to-text attention).
"""
from dmutils.attention.adapters import CaptureError
from dmutils.attention.adapters.unet import attention_layers
from dmutils.attention.capture import AttentionCapture, AttentionLayer, capture
from dmutils.attention.maps import AttentionMaps, WordLookupError
from dmutils.attention.processors import CaptureAttnProcessor, attention_probs
from dmutils.attention.prompts import append_class_prompt, build_prompts, class_prompt
from dmutils.attention.spec import CaptureSpec

__all__ = ["AttentionCapture", "AttentionLayer", "AttentionMaps", "CaptureAttnProcessor", "CaptureError", "CaptureSpec",
           "WordLookupError", "append_class_prompt", "attention_layers", "attention_probs", "build_prompts", "capture",
           "class_prompt"]

"""FLUX.1 (schnell, dev): ``pipe.transformer`` is a ``FluxTransformer2DModel``.

Dual-stream blocks (``transformer_blocks.i.attn``, ``FluxAttnProcessor``) attend over [text, image]
with separate projections per stream; single-stream blocks (``single_transformer_blocks.j.attn``)
receive that sequence already concatenated and are not told where the text ends: the text length
comes from the transformer's ``encoder_hidden_states`` (capture's pre-hook) through the state.
Rotary positions are applied to queries and keys before the probabilities are taken, as the
processor does. The text is T5's (``text_encoder_2``; CLIP gives only the pooled vector). FLUX.1 has
no CFG batch (dev is guidance-distilled; true CFG with a negative prompt runs a second call per
step, which capture skips). Maps lie on the packed token grid (image side / 16), read from ``img_ids``.
"""
from __future__ import annotations

import torch
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_flux import (
    FluxAttnProcessor,
    FluxTransformer2DModel,
    _get_qkv_projections,
)

from dmutils.attention.adapters.base import AttentionLayer, DenoiserCall, TextSource
from dmutils.attention.adapters.transformer import TransformerAdapter, depth_of
from dmutils.attention.concepts import ConceptStream
from dmutils.attention.joint import attend_and_record
from dmutils.attention.state import CaptureState


class FluxCaptureProcessor:
    """``FluxAttnProcessor`` that records one layer's maps at steps inside the window (dual- or single-stream)."""

    def __init__(self, state: CaptureState, kinds: tuple[str, ...], resolution: int, original, joint_norm: str,
                 stream: ConceptStream | None = None) -> None:
        if type(original) is not FluxAttnProcessor:
            raise TypeError(f"cannot capture a layer whose processor is {type(original).__name__}; only FLUX.1's default "
                            f"FluxAttnProcessor is supported: call pipe.transformer.set_attn_processor(FluxAttnProcessor())")
        self.state, self.kinds, self.resolution, self.original, self.joint_norm = state, kinds, resolution, original, joint_norm
        self.stream = stream

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, image_rotary_emb: torch.Tensor | None = None) -> torch.Tensor:
        if not self.state.recording or attention_mask is not None:
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        query, key, value, eq, ek, ev = _get_qkv_projections(attn, hidden_states, encoder_hidden_states)
        query, key, value = (x.unflatten(-1, (-1, attn.head_dim)) for x in (query, key, value))
        query, key = attn.norm_q(query), attn.norm_k(key)
        if attn.added_kv_proj_dim is not None and encoder_hidden_states is not None:
            eq, ek, ev = (x.unflatten(-1, (-1, attn.head_dim)) for x in (eq, ek, ev))
            eq, ek = attn.norm_added_q(eq), attn.norm_added_k(ek)
            query, key, value = torch.cat([eq, query], 1), torch.cat([ek, key], 1), torch.cat([ev, value], 1)
            n_text = encoder_hidden_states.shape[1]
        else:  # a single-stream block: the text is the first state.text_len tokens of hidden_states
            n_text = self.state.text_len
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
        seq = query.shape[1]
        query, key, value = (x.transpose(1, 2) for x in (query, key, value))  # (batch, heads, seq, d)
        concepts = self.stream is not None and self.stream.active and encoder_hidden_states is not None
        kinds = tuple(k for k in self.kinds if k == "self") if concepts else self.kinds
        out = attend_and_record(self.state, kinds, self.resolution, query, key, value, image=slice(n_text, seq),
                                text=slice(0, n_text), joint_norm=self.joint_norm)
        if concepts:  # class/concept tokens read the image through this block's text-stream weights (no rotary: text ids are 0)
            c, img = self.state.cond, slice(n_text, seq)
            self.stream.attend(attn, query[c, :, img], key[c, :, img], value[c, :, img], out[c, :, img],
                               self.resolution if "cross" in self.kinds else None)
        out = out.transpose(1, 2).flatten(2, 3).to(query.dtype)
        if encoder_hidden_states is None:
            return out
        text_out, image_out = out.split_with_sizes([n_text, seq - n_text], dim=1)
        image_out = attn.to_out[1](attn.to_out[0](image_out.contiguous()))
        return image_out, attn.to_add_out(text_out.contiguous())


class FluxAdapter(TransformerAdapter):
    """FLUX.1: ``dual`` blocks (indices 0..D-1) then ``single`` blocks (D..D+S-1), every one joint."""

    family = "flux"

    @classmethod
    def matches(cls, pipe) -> bool:
        return isinstance(getattr(pipe, "transformer", None), FluxTransformer2DModel)

    def attention_layers(self) -> list[AttentionLayer]:
        dual, single = self.denoiser.transformer_blocks, self.denoiser.single_transformer_blocks
        n = len(dual) + len(single)
        layers = [AttentionLayer(f"transformer_blocks.{i}.attn", "dual", i, "joint", b.attn, depth_of(i, n))
                  for i, b in enumerate(dual)]
        layers += [AttentionLayer(f"single_transformer_blocks.{j}.attn", "single", len(dual) + j, "joint", b.attn,
                                  depth_of(len(dual) + j, n)) for j, b in enumerate(single)]
        return layers

    def in_streams(self, layer: AttentionLayer) -> bool:
        return self.spec.flux_streams in ("both", layer.block)

    def streams_note(self) -> str:
        return f", flux_streams={self.spec.flux_streams!r}"

    def read_call(self, args: tuple, kwargs: dict) -> DenoiserCall:
        sample = args[0] if args else kwargs["hidden_states"]
        context = args[1] if len(args) > 1 else kwargs["encoder_hidden_states"]
        t = args[3] if len(args) > 3 else kwargs["timestep"]
        img_ids = args[4] if len(args) > 4 else kwargs["img_ids"]
        img_ids = img_ids[0] if img_ids.ndim == 3 else img_ids
        grid = (int(img_ids[:, 1].max()) + 1, int(img_ids[:, 2].max()) + 1)
        return DenoiserCall(sample.shape[0], grid, 1000 * float(torch.as_tensor(t).flatten()[0]), context.shape[1])

    def map_shape(self, layer: AttentionLayer, call: DenoiserCall) -> tuple[int, int]:
        return call.latent_hw  # img_ids already give the packed token grid

    def describe_resolutions(self) -> str:
        return ("(FLUX.1's maps are its packed token grid, image side / 16: set capture.cross_resolutions / "
                "self_resolutions to that side)")

    def recording_processor(self, layer: AttentionLayer, state: CaptureState, kinds: tuple[str, ...], resolution: int,
                            original) -> FluxCaptureProcessor:
        return FluxCaptureProcessor(state, kinds, resolution, original, self.spec.joint_norm, self.stream)

    def has_concept_stream(self, layer: AttentionLayer) -> bool:
        return layer.block == "dual"  # single-stream blocks share one set of weights: no text stream to carry concepts

    def encode_class_prompts(self, prompts: list[str]) -> torch.Tensor:
        """The class prompts' T5 sequence (padded to the longest), as FLUX.1 encodes a caption."""
        length = max(len(self.pipe.tokenizer_2(p).input_ids) for p in prompts)
        with torch.no_grad():
            embeds = self.pipe.encode_prompt(prompt=prompts, prompt_2=None, device=self.denoiser.device, num_images_per_prompt=1,
                                             max_sequence_length=length)[0]
        return embeds.to(self.denoiser.dtype)

    def text_source(self) -> TextSource:
        return TextSource(self.pipe.text_encoder_2, self.pipe.tokenizer_2)

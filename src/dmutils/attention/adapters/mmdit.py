"""MMDiT joint attention (SD3, SD3.5): ``pipe.transformer`` is an ``SD3Transformer2DModel``.

Each ``JointTransformerBlock`` has one joint attention (``attn``, ``JointAttnProcessor2_0``) over
[image tokens, text tokens]; SD3.5's dual-attention blocks add ``attn2``, self-attention of the
image alone. The text sequence is CLIP-L + CLIP-G (77 tokens, channels concatenated) followed by
T5 (``max_sequence_length`` tokens, zeros when ``text_encoder_3`` is None); ``spec.text_part``
says which part the maps are over. Maps are on the patch grid (latent side / 2).
"""
from __future__ import annotations

import torch
from diffusers.models.attention_processor import Attention, JointAttnProcessor2_0
from diffusers.models.transformers.transformer_sd3 import SD3Transformer2DModel

from dmutils.attention.adapters.base import (
    AttentionLayer,
    CaptureError,
    DenoiserCall,
    TextSource,
)
from dmutils.attention.adapters.transformer import TransformerAdapter, depth_of
from dmutils.attention.concepts import ConceptStream
from dmutils.attention.joint import attend_and_record
from dmutils.attention.state import CaptureState

CLIP_TOKENS = 77


class JointCaptureProcessor:
    """``JointAttnProcessor2_0`` that records one layer's maps into ``state`` at steps inside the window."""

    def __init__(self, state: CaptureState, kinds: tuple[str, ...], resolution: int, original, text_part: slice | None,
                 joint_norm: str, stream: ConceptStream | None = None) -> None:
        if not isinstance(original, JointAttnProcessor2_0):
            raise TypeError(f"cannot capture a layer whose processor is {type(original).__name__}; only SD3's default "
                            "JointAttnProcessor2_0 is supported: call pipe.transformer.set_attn_processor(JointAttnProcessor2_0())")
        self.state, self.kinds, self.resolution, self.original = state, kinds, resolution, original
        self.text_part, self.joint_norm, self.stream = text_part, joint_norm, stream

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, *args, **kwargs) -> torch.Tensor:
        if not self.state.recording or attention_mask is not None:
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, *args, **kwargs)
        n_img = hidden_states.shape[1]
        query, key, value, text = joint_qkv(attn, hidden_states, encoder_hidden_states)
        joint_mask = getattr(self.original, "joint_mask", None)  # an ablation's mask (dmutils.attention.ablations), honoured
        mask = joint_mask(n_img, query.shape[2], query.device) if joint_mask is not None and text is not None else None
        concepts = self.stream is not None and self.stream.active and text is not None
        kinds = self.kinds if text is not None and not concepts else tuple(k for k in self.kinds if k == "self")
        out = attend_and_record(self.state, kinds, self.resolution, query, key, value, slice(0, n_img), text, self.text_part,
                                self.joint_norm, attn_mask=mask)
        if concepts:  # class/concept tokens read the image through this block's text-stream weights
            c, img = self.state.cond, slice(0, n_img)
            self.stream.attend(attn, query[c, :, img], key[c, :, img], value[c, :, img], out[c, :, img],
                               self.resolution if "cross" in self.kinds else None)
        return joint_outputs(attn, out, n_img, encoder_hidden_states is not None)


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


class MMDiTAdapter(TransformerAdapter):
    """SD3 / SD3.5: ``joint`` layers give cross and self maps, SD3.5's ``attn2`` self maps only."""

    family = "sd3"

    @classmethod
    def matches(cls, pipe) -> bool:
        return isinstance(getattr(pipe, "transformer", None), SD3Transformer2DModel)

    def attention_layers(self) -> list[AttentionLayer]:
        blocks = self.denoiser.transformer_blocks
        layers = []
        for i, block in enumerate(blocks):
            depth = depth_of(i, len(blocks))
            layers.append(AttentionLayer(f"transformer_blocks.{i}.attn", "joint", i, "joint", block.attn, depth))
            if getattr(block, "attn2", None) is not None:
                layers.append(AttentionLayer(f"transformer_blocks.{i}.attn2", "joint", i, "self", block.attn2, depth))
        return layers

    def read_call(self, args: tuple, kwargs: dict) -> DenoiserCall:
        sample = args[0] if args else kwargs["hidden_states"]
        context = args[1] if len(args) > 1 else kwargs["encoder_hidden_states"]
        t = args[3] if len(args) > 3 else kwargs["timestep"]
        return DenoiserCall(sample.shape[0], tuple(sample.shape[-2:]), float(torch.as_tensor(t).flatten()[0]), context.shape[1])

    def text_slice(self) -> slice:
        return slice(0, CLIP_TOKENS) if self.spec.text_part == "clip" else slice(CLIP_TOKENS, None)

    def recording_processor(self, layer: AttentionLayer, state: CaptureState, kinds: tuple[str, ...], resolution: int,
                            original) -> JointCaptureProcessor:
        return JointCaptureProcessor(state, kinds, resolution, original, self.text_slice(), self.spec.joint_norm, self.stream)

    def concept_part(self) -> slice | None:
        return self.text_slice()

    def encode_class_prompts(self, prompts: list[str]) -> torch.Tensor:
        """The class prompts as SD3 encodes a caption: CLIP's 77 positions then T5's (zeros without a T5)."""
        pipe = self.pipe
        t5 = getattr(pipe, "tokenizer_3", None)
        length = max(len(t5(p).input_ids) for p in prompts) if t5 is not None else 1
        with torch.no_grad():
            embeds = pipe.encode_prompt(prompt=prompts, prompt_2=None, prompt_3=None, device=self.denoiser.device,
                                        num_images_per_prompt=1, do_classifier_free_guidance=False, max_sequence_length=length)[0]
        return embeds.to(self.denoiser.dtype)

    def text_source(self) -> TextSource:
        pipe = self.pipe
        if self.spec.text_part == "t5":
            if getattr(pipe, "text_encoder_3", None) is None:
                raise CaptureError("capture.text_part is 't5' but this SD3 pipeline has no T5 (text_encoder_3 is None); "
                                 "set capture.text_part: clip or load the pipeline with its T5")
            return TextSource(pipe.text_encoder_3, pipe.tokenizer_3, self.text_slice())
        return TextSource(pipe.text_encoder, pipe.tokenizer, self.text_slice())

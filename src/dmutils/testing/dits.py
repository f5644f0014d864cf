"""Random-weight diffusion-transformer pipelines built offline (SD3/SD3.5, FLUX.1, PixArt-Σ, SANA), for tests
and benchmarks.

As :mod:`dmutils.testing.sd` does for UNets, these copy the *block structure and attention layout*
of the real models with small widths so they run in about a second on a CPU:

- :func:`tiny_sd3_pipeline`: SD3.5-shaped MMDiT (joint blocks, the first ones dual-attention with an
  ``attn2``, RMS q/k norm, the last block ``context_pre_only``), two CLIP encoders, and a T5 or none
  (SD3 allows ``text_encoder_3=None``: its T5 positions are then zeros), flow-matching Euler.
- :func:`tiny_flux_pipeline`: FLUX.1-shaped (dual-stream then single-stream blocks, rotary
  positions, text first), CLIP for the pooled vector and a T5 encoder with the sentencepiece-style
  fast tokenizer of :mod:`dmutils.testing.tokenizers` for the sequence; ``guidance_embeds`` as FLUX.1-dev (no CFG batch).
- :func:`save_tiny_sd3` / :func:`save_tiny_flux`: those pipelines written with ``save_pretrained``.

The VAEs downsample by 2, so a 32 px image has a 16x16 latent and, with patch size 2, an 8x8 map grid.

Cross-attention DiTs:

- :func:`tiny_pixart_sigma_pipeline`: ``PixArtSigmaPipeline``: ``PixArtTransformer2DModel`` (patch 2,
  attn1 softmax self-attention, attn2 cross-attention to T5 tokens with a padding mask, learned sigma:
  8 output channels), a T5 encoder with a sentencepiece tokenizer, an SD-style VAE (factor 8).
- :func:`tiny_sana_pipeline`: ``SanaPipeline``: ``SanaTransformer2DModel`` (patch 1, linear self-attention
  ``SanaLinearAttnProcessor2_0``, softmax cross-attention), a Gemma-2 encoder with a Gemma tokenizer, a
  deep-compression ``AutoencoderDC`` (factor 32), a flow DPM-Solver.

Both pipelines bin the requested size to their aspect-ratio table of ``transformer.config.sample_size``
(``use_resolution_binning``), the smallest of which is 256 px (PixArt, sample_size 32) and 512 px (SANA,
sample_size 16); so the real VAE factors are kept and a request of 32-64 px is generated at the bin size
(a 16x16 token grid for both) and resized back: seconds on a CPU.
:func:`save_tiny_pixart_sigma` / :func:`save_tiny_sana` write them with ``save_pretrained``.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from diffusers import (
    AutoencoderDC,
    AutoencoderKL,
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    PixArtTransformer2DModel,
    SanaTransformer2DModel,
    SD3Transformer2DModel,
)
from transformers import Gemma2Config, Gemma2Model

from dmutils.testing.sd import pipeline_class, tiny_text_encoder, tiny_tokenizer
from dmutils.testing.tokenizers import tiny_gemma_tokenizer

if TYPE_CHECKING:
    import diffusers


def _flow_vae(latent_channels: int, levels: int = 2, channels: int = 32) -> AutoencoderKL:
    """A VAE downsampling by 2**(levels-1) with the shift/scaling factors the flow pipelines read."""
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=latent_channels, block_out_channels=(channels,) * levels,
                         down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
                         layers_per_block=1, norm_num_groups=min(32, channels), scaling_factor=1.5, shift_factor=0.1).eval()


def tiny_sd3_transformer(sample_size: int = 16, layers: int = 4, dual_layers: int = 2, heads: int = 4, head_dim: int = 8,
                         joint_dim: int = 64, pooled_dim: int = 64) -> SD3Transformer2DModel:
    """SD3.5-medium's layout (the first blocks dual-attention, RMS q/k norm) with a small width."""
    return SD3Transformer2DModel(sample_size=sample_size, patch_size=2, in_channels=4, num_layers=layers, attention_head_dim=head_dim,
                                 num_attention_heads=heads, joint_attention_dim=joint_dim, caption_projection_dim=heads * head_dim,
                                 pooled_projection_dim=pooled_dim, out_channels=4, pos_embed_max_size=sample_size,
                                 dual_attention_layers=tuple(range(dual_layers)), qk_norm="rms_norm").eval()


def _tiny_t5(d_model: int):
    """A 2-layer T5 encoder and the tiny T5 tokenizer."""
    from transformers import T5Config, T5EncoderModel

    from dmutils.testing.tokenizers import tiny_t5_tokenizer

    tok = tiny_t5_tokenizer()
    config = T5Config(vocab_size=len(tok), d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=2, num_heads=d_model // 8,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    return T5EncoderModel(config).eval(), tok


def tiny_sd3_pipeline(seed: int = 0, sample_size: int = 16, t5: bool = False) -> "diffusers.StableDiffusion3Pipeline":
    """SD3.5-shaped: 32 px images, 16x16 latent, 8x8 patch grid, 4 joint blocks (0-1 with ``attn2``);
    CLIP-L-like (hidden 32) + CLIP-G-like (hidden 32) encoders; T5 (d_model 64) only when ``t5``."""
    torch.manual_seed(seed)
    tok = tiny_tokenizer()
    te1, te2 = tiny_text_encoder(tok, 32, projection=32), tiny_text_encoder(tok, 32, projection=32)
    te3, tok3 = _tiny_t5(64) if t5 else (None, None)
    pipe = pipeline_class("StableDiffusion3Pipeline")(transformer=tiny_sd3_transformer(sample_size), scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                                    vae=_flow_vae(4), text_encoder=te1, tokenizer=tok, text_encoder_2=te2, tokenizer_2=tok,
                                    text_encoder_3=te3, tokenizer_3=tok3)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny_sd3(folder: str | Path, seed: int = 0) -> Path:
    """Write an SD3.5-shaped pipeline folder (safetensors) that ``load_pipeline`` reads with family sd3 or auto."""
    folder = Path(folder)
    tiny_sd3_pipeline(seed).save_pretrained(folder, safe_serialization=True)
    return folder


def tiny_flux_transformer(layers: int = 2, single_layers: int = 4, heads: int = 4, head_dim: int = 8, joint_dim: int = 32,
                          pooled_dim: int = 32, in_channels: int = 16, guidance_embeds: bool = True):
    """FLUX.1's layout (dual-stream then single-stream blocks, 3-axis rotary positions) with a small width."""
    from diffusers import FluxTransformer2DModel

    rope = (head_dim // 4, head_dim // 4, head_dim // 2)
    return FluxTransformer2DModel(patch_size=1, in_channels=in_channels, num_layers=layers, num_single_layers=single_layers,
                                  attention_head_dim=head_dim, num_attention_heads=heads, joint_attention_dim=joint_dim,
                                  pooled_projection_dim=pooled_dim, guidance_embeds=guidance_embeds, axes_dims_rope=rope).eval()


def tiny_flux_pipeline(seed: int = 0, guidance_embeds: bool = True):
    """FLUX.1-shaped: 32 px images, 16x16 latent packed 2x2 into an 8x8 token grid, 2 dual-stream + 4
    single-stream blocks; CLIP (hidden 32, pooled) + T5 (d_model 32) text encoders. ``guidance_embeds``
    as FLUX.1-dev (True) or -schnell (False)."""
    torch.manual_seed(seed)
    tok = tiny_tokenizer()
    t5, t5_tok = _tiny_t5(32)
    pipe = pipeline_class("FluxPipeline")(scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0), vae=_flow_vae(4), text_encoder=tiny_text_encoder(tok, 32),
                        tokenizer=tok, text_encoder_2=t5, tokenizer_2=t5_tok,
                        transformer=tiny_flux_transformer(guidance_embeds=guidance_embeds))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny_flux(folder: str | Path, seed: int = 0, guidance_embeds: bool = True) -> Path:
    """Write a FLUX.1-shaped pipeline folder (safetensors) that ``load_pipeline`` reads with family flux or auto."""
    folder = Path(folder)
    tiny_flux_pipeline(seed, guidance_embeds).save_pretrained(folder, safe_serialization=True)
    return folder


def _in_dtype(dtype: torch.dtype, build):
    """``build()`` with torch's default dtype set to ``dtype`` (parameters created directly in it)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        return build()
    finally:
        torch.set_default_dtype(previous)


SD35_MEDIUM = dict(sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64, num_attention_heads=24,
                   joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048, out_channels=16,
                   pos_embed_max_size=384, dual_attention_layers=tuple(range(13)), qk_norm="rms_norm")
FLUX1 = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128, num_attention_heads=24,
             joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56))


def sd35_bench_pipeline(blocks: int = 24, dual_blocks: int | None = None, dtype: torch.dtype = torch.bfloat16, seed: int = 0,
                        **overrides):
    """SD3.5-medium's transformer config (random weights, in ``dtype``) with ``blocks`` joint blocks, the
    first ``dual_blocks`` dual-attention (default: the real 13/24 share), no VAE or text encoders: feed
    ``prompt_embeds`` (77 + 256 tokens of 4096) and ``output_type="latent"``. ``overrides`` change the
    config (e.g. fewer heads for a narrow model with the real token counts)."""
    torch.manual_seed(seed)
    dual = round(blocks * 13 / 24) if dual_blocks is None else dual_blocks
    config = {**SD35_MEDIUM, "num_layers": blocks, "dual_attention_layers": tuple(range(dual)), **overrides}
    config["caption_projection_dim"] = config["num_attention_heads"] * config["attention_head_dim"]  # the text stream's width
    transformer = _in_dtype(dtype, lambda: SD3Transformer2DModel(**config)).eval()
    pipe = pipeline_class("StableDiffusion3Pipeline")(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=None,
                                    text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
                                    text_encoder_3=None, tokenizer_3=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def flux_bench_pipeline(dual_blocks: int = 19, single_blocks: int = 38, dtype: torch.dtype = torch.bfloat16, seed: int = 0,
                        **overrides):
    """FLUX.1-dev's transformer config (random weights, in ``dtype``) with ``dual_blocks`` + ``single_blocks``
    blocks, no VAE or text encoders: feed ``prompt_embeds`` (512 T5 tokens of 4096) and ``pooled_prompt_embeds``."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    config = {**FLUX1, "num_layers": dual_blocks, "num_single_layers": single_blocks, **overrides}
    transformer = _in_dtype(dtype, lambda: FluxTransformer2DModel(**config)).eval()
    pipe = pipeline_class("FluxPipeline")(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=False), vae=None,
                        text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


TEXT_HIDDEN = 32  # the text encoders' width (caption_channels)


def tiny_pixart_transformer(layers: int = 4) -> PixArtTransformer2DModel:
    """PixArt-Σ's block layout (28 blocks of 16 heads x 72 in the real one) with 2 heads x 8."""
    return PixArtTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=layers,
                                    cross_attention_dim=16, caption_channels=TEXT_HIDDEN, sample_size=32, patch_size=2,
                                    attention_bias=True, norm_type="ada_norm_single", num_embeds_ada_norm=1000,
                                    norm_elementwise_affine=False, norm_eps=1e-6, interpolation_scale=None,
                                    use_additional_conditions=False).eval()


def tiny_sana_transformer(layers: int = 4) -> SanaTransformer2DModel:
    """SANA's block layout (linear self-attention, softmax cross-attention with its own head count) with small widths."""
    return SanaTransformer2DModel(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=layers,
                                  num_cross_attention_heads=2, cross_attention_head_dim=8, cross_attention_dim=16,
                                  caption_channels=TEXT_HIDDEN, mlp_ratio=2.5, sample_size=16, patch_size=1).eval()


def _gemma2(vocab: int) -> Gemma2Model:
    config = Gemma2Config(vocab_size=vocab, hidden_size=TEXT_HIDDEN, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=1024, pad_token_id=0,
                          eos_token_id=1, bos_token_id=2)
    return Gemma2Model(config).eval()


def _sd_vae() -> AutoencoderKL:
    """An SD-style VAE with four levels: factor 8, as PixArt's."""
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8,) * 4,
                         down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                         layers_per_block=1, norm_num_groups=4).eval()


def _dc_ae() -> AutoencoderDC:
    """A deep-compression autoencoder with six levels: factor 32, as SANA's."""
    return AutoencoderDC(in_channels=3, latent_channels=4, attention_head_dim=8, encoder_block_types="ResBlock",
                         decoder_block_types="ResBlock", encoder_block_out_channels=(8,) * 6, decoder_block_out_channels=(8,) * 6,
                         encoder_layers_per_block=(1,) * 6, decoder_layers_per_block=(1,) * 6,
                         encoder_qkv_multiscales=((),) * 6, decoder_qkv_multiscales=((),) * 6, scaling_factor=0.41407).eval()


def tiny_pixart_sigma_pipeline(seed: int = 0, layers: int = 4) -> "diffusers.PixArtSigmaPipeline":
    torch.manual_seed(seed)
    t5, tok = _tiny_t5(TEXT_HIDDEN)
    pipe = pipeline_class("PixArtSigmaPipeline")(tokenizer=tok, text_encoder=t5, vae=_sd_vae(), transformer=tiny_pixart_transformer(layers),
                               scheduler=DPMSolverMultistepScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sana_pipeline(seed: int = 0, layers: int = 4) -> "diffusers.SanaPipeline":
    torch.manual_seed(seed)
    tok = tiny_gemma_tokenizer()
    scheduler = DPMSolverMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    pipe = pipeline_class("SanaPipeline")(tokenizer=tok, text_encoder=_gemma2(len(tok)), vae=_dc_ae(), transformer=tiny_sana_transformer(layers),
                        scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny_pixart_sigma(folder: str | Path, seed: int = 0) -> Path:
    """A PixArt-Σ-shaped pipeline folder (``save_pretrained``), loadable with ``from_pretrained``."""
    tiny_pixart_sigma_pipeline(seed).save_pretrained(folder)
    return Path(folder)


def save_tiny_sana(folder: str | Path, seed: int = 0) -> Path:
    """A SANA-shaped pipeline folder (``save_pretrained``), loadable with ``from_pretrained``."""
    tiny_sana_pipeline(seed).save_pretrained(folder)
    return Path(folder)

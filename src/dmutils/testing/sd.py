"""Random-weight Stable Diffusion-family pipelines built offline, for tests and benchmarks.

Real weights cannot be downloaded here, so these builders copy the *block structure and attention
layout* of the real models with small channels, so they run in about a second on a CPU:

- :func:`tiny_sd15_pipeline`: SD 1.5 (CrossAttnDownBlock2D x3 + DownBlock2D, 8 heads, one text encoder).
- :func:`tiny_sd2_pipeline`: SD 2.x (heads (5, 10, 20, 20), ``use_linear_projection``, upcast attention).
- :func:`tiny_sdxl_pipeline`: SDXL (DownBlock2D + 2 CrossAttn blocks, transformer layers (1, 2, 3),
  two text encoders, ``addition_embed_type="text_time"``).
- :func:`sd15_unet` and :func:`sd15_bench_pipeline`: the real SD 1.5 UNet config (860M random
  parameters), for honest timings.
- :func:`save_tiny_sd15`: an SD 1.5-shaped pipeline folder written with ``save_pretrained``.

The VAEs downsample by 2 (not 8) so that a 32 px image has a 16x16 latent: attention maps are then
16/8/4 for SD1/SD2 and 8/4 for SDXL. The tokenizer is a real CLIP BPE tokenizer with a small vocab
(built by :func:`dmutils.toy.build.build_tokenizer_files`, byte-identical across processes) in which "aeroplane", "potted plant", "tv monitor" and "motorbike" split into several tokens.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
)

VOC_CLASS_WORDS = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "dining table",
                   "dog", "horse", "motorbike", "person", "potted plant", "sheep", "sofa", "train", "tv monitor"]
CAPTION_WORDS = ["man", "woman", "people", "child", "riding", "sitting", "standing", "near", "by", "at", "is", "are",
                 "street", "field", "room", "grass", "water", "sky", "road", "table", "dining", "plant", "tv", "white",
                 "black", "brown", "grey", "front", "side", "top", "under", "over", "holding", "two", "its", "his", "her"]
# words the tokenizer must split (multi-token class words are the point of the tests), and the pieces it knows.
SPLIT_WORDS = {"aeroplane": ["aero", "plane"], "potted": ["pot", "ted"], "monitor": ["moni", "tor"], "motorbike": ["motor", "bike"]}


def pipeline_class(name: str) -> type:
    """A diffusers pipeline class, imported when a tiny pipeline is built (not when this module is): its import pulls
    the IP-Adapter loader, quieted by :func:`dmutils.pipeline.bind_pil_image_processors` first, as loading does."""
    import diffusers

    from dmutils.pipeline import bind_pil_image_processors

    bind_pil_image_processors()
    return getattr(diffusers, name)

if TYPE_CHECKING:
    import diffusers


def vocab_words() -> list[str]:
    from dmutils.data.toyworld import vocabulary

    words = set(vocabulary()) | set(CAPTION_WORDS)
    for w in VOC_CLASS_WORDS:
        words |= set(w.split())
    return sorted(words)


def write_tiny_tokenizer(folder: str | Path) -> Path:
    """Write a small CLIP BPE vocabulary (``vocab.json`` + ``merges.txt``) into ``folder``, the same bytes in every process.

    Every vocabulary word becomes one token; the words of ``SPLIT_WORDS`` are left out (only their
    pieces are in), so BPE splits them into several tokens. Any other word falls back to byte-level characters.
    """
    from tokenizers import pre_tokenizers

    from dmutils.toy.build import build_tokenizer_files

    words = [w for w in vocab_words() if w not in SPLIT_WORDS] + [p for ps in SPLIT_WORDS.values() for p in ps]
    return build_tokenizer_files(Path(folder), words, alphabet=pre_tokenizers.ByteLevel.alphabet())


def tiny_tokenizer() -> CLIPTokenizer:
    """A CLIP tokenizer on the small vocab (``from_pretrained`` of a temp folder: transformers 5
    ignores ``vocab_file=`` arguments)."""
    with tempfile.TemporaryDirectory() as tmp:
        return CLIPTokenizer.from_pretrained(write_tiny_tokenizer(tmp), model_max_length=77)


def tiny_text_encoder(tok: CLIPTokenizer, hidden: int, layers: int = 2, projection: int | None = None,
                      positions: int = 77) -> CLIPTextModel:
    """``positions``: 77 as CLIP; HiDream's CLIPs read 128 tokens."""
    config = CLIPTextConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                            num_attention_heads=4, max_position_embeddings=positions, bos_token_id=tok.bos_token_id,
                            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, projection_dim=projection or hidden)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config).eval()


def _vae(levels: int = 2, channels: int = 32) -> AutoencoderKL:
    """A VAE that downsamples by 2**(levels-1)."""
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(channels,) * levels,
                         down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
                         layers_per_block=1, norm_num_groups=min(32, channels)).eval()


def _scheduler() -> DDIMScheduler:
    """SD's noise schedule (scaled_linear 0.00085-0.012) with a deterministic sampler."""
    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1)


def _sd_pipeline(unet: UNet2DConditionModel, text_hidden: int, vae: AutoencoderKL | None = None) -> "diffusers.StableDiffusionPipeline":
    tok = tiny_tokenizer()
    pipe = pipeline_class("StableDiffusionPipeline")(vae=vae or _vae(), text_encoder=tiny_text_encoder(tok, text_hidden), tokenizer=tok, unet=unet.eval(),
                                   scheduler=_scheduler(), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sd15_unet(sample_size: int = 16, cross_dim: int = 32) -> UNet2DConditionModel:
    """SD 1.5's UNet layout (2 layers a block, 8 heads everywhere) with channels 32/32/64/64."""
    return UNet2DConditionModel(
        sample_size=sample_size, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(32, 32, 64, 64),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",), up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        attention_head_dim=8, cross_attention_dim=cross_dim, norm_num_groups=8)


def tiny_sd15_pipeline(seed: int = 0, sample_size: int = 16) -> "diffusers.StableDiffusionPipeline":
    """SD 1.5-shaped: 32 px images, 16x16 latent, attention at 16/8/4 (and 2 in the mid block);
    ``sample_size=32`` gives the toy model's size (64 px, 32x32 latent)."""
    torch.manual_seed(seed)
    return _sd_pipeline(tiny_sd15_unet(sample_size), text_hidden=32)


def tiny_sd2_pipeline(seed: int = 0) -> "diffusers.StableDiffusionPipeline":
    """SD 2.x-shaped: heads (5, 10, 20, 20) of size 4, linear projections, upcast attention."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(20, 40, 80, 80),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",), up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        attention_head_dim=(5, 10, 20, 20), use_linear_projection=True, upcast_attention=True, cross_attention_dim=64,
        norm_num_groups=5)
    return _sd_pipeline(unet, text_hidden=64)


def tiny_sdxl_pipeline(seed: int = 0) -> "diffusers.StableDiffusionXLPipeline":
    """SDXL-shaped: no attention at the top level, transformer layers (1, 2, 3), two text encoders
    (hidden 32 + 64 = cross dim 96), text_time added embeddings."""
    torch.manual_seed(seed)
    tok = tiny_tokenizer()
    te1, te2 = tiny_text_encoder(tok, 32), tiny_text_encoder(tok, 64, projection=32)
    time_dim = 8
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(20, 40, 80),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(5, 10, 20), transformer_layers_per_block=(1, 2, 3), use_linear_projection=True,
        cross_attention_dim=32 + 64, addition_embed_type="text_time", addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=32 + 6 * time_dim, norm_num_groups=5)
    pipe = pipeline_class("StableDiffusionXLPipeline")(vae=_vae(), text_encoder=te1, text_encoder_2=te2, tokenizer=tok, tokenizer_2=tok,
                                     unet=unet.eval(), scheduler=_scheduler(), force_zeros_for_empty_prompt=True,
                                     add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny_sd15(folder: str | Path, seed: int = 0) -> Path:
    """Write an SD 1.5-shaped pipeline folder (safetensors) that ``load_pipeline`` can read."""
    folder = Path(folder)
    tiny_sd15_pipeline(seed).save_pretrained(folder, safe_serialization=True)
    return folder


def sd15_unet(sample_size: int = 32, dtype: torch.dtype = torch.bfloat16, seed: int = 0) -> UNet2DConditionModel:
    """The real SD 1.5 UNet config (320/640/1280/1280, 8 heads, cross dim 768), random weights,
    created directly in ``dtype`` (sample_size 32 = 256 px images)."""
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        unet = UNet2DConditionModel(
            sample_size=sample_size, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",), up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            attention_head_dim=8, cross_attention_dim=768)
    finally:
        torch.set_default_dtype(previous)
    return unet.eval()


def sd15_bench_pipeline(dtype: torch.dtype = torch.bfloat16, seed: int = 0) -> "diffusers.StableDiffusionPipeline":
    """A 256 px SD 1.5-shaped pipeline: the real UNet config plus a tiny text encoder (hidden 768)
    and a tiny 8x VAE, all random, all in ``dtype``."""
    unet = sd15_unet(32, dtype, seed)
    torch.manual_seed(seed)
    pipe = _sd_pipeline(unet, text_hidden=768, vae=_vae(levels=4, channels=32))
    return pipe.to(dtype=dtype)

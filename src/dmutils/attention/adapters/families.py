"""The family registry: one :class:`~dmutils.attention.adapters.base.Family` descriptor per family of pipelines.

:func:`family_for` gives the first descriptor whose denoiser class matches the pipeline's; order matters
only where one denoiser class is a subclass of another's.
"""
from __future__ import annotations

import torch

from dmutils.attention.adapters.base import Blocks, CaptureError, Family, TextPart
from dmutils.attention.adapters.dit import CrossAttentionDiTAdapter, sana_text_ids
from dmutils.attention.adapters.joint import JointAttentionAdapter
from dmutils.attention.adapters.transformer import ids_grid, patch_grid
from dmutils.attention.adapters.unet import UNetAdapter

CLIP_TOKENS = 77


def encode_sd3(pipe, prompts: list[str]) -> torch.Tensor:
    """The class prompts as SD3 encodes a caption: CLIP's 77 positions then T5's (zeros without a T5)."""
    t5 = getattr(pipe, "tokenizer_3", None)
    length = max(len(t5(p).input_ids) for p in prompts) if t5 is not None else 1
    return pipe.encode_prompt(prompt=prompts, prompt_2=None, prompt_3=None, device=pipe.transformer.device,
                              num_images_per_prompt=1, do_classifier_free_guidance=False, max_sequence_length=length)[0]


def encode_flux(pipe, prompts: list[str]) -> torch.Tensor:
    """The class prompts' T5 sequence (padded to the longest), as FLUX.1 encodes a caption."""
    length = max(len(pipe.tokenizer_2(p).input_ids) for p in prompts)
    return pipe.encode_prompt(prompt=prompts, prompt_2=None, device=pipe.transformer.device, num_images_per_prompt=1,
                              max_sequence_length=length)[0]


def img_shapes_grid(denoiser: torch.nn.Module, inputs: dict) -> tuple[int, int]:
    """Qwen-Image: the (frames, h, w) of the first image of the first sample, in packed tokens."""
    shape = inputs["img_shapes"][0]
    shape = shape[0] if isinstance(shape, (list, tuple)) and isinstance(shape[0], (list, tuple)) else shape
    return int(shape[1]), int(shape[2])


JOINT = ("dual", "single")
DIT_ATTNS = (("attn1", "self"), ("attn2", "cross"))
PATCH_NOTE = "patch grid, latent side / patch size"

UNET = Family("unet", UNetAdapter, denoiser_attr="unet",
              pipelines=("StableDiffusionPipeline", "StableDiffusionXLPipeline"))
SD3 = Family("sd3", JointAttentionAdapter, denoisers=("SD3Transformer2DModel",), pipelines=("StableDiffusion3Pipeline",),
             blocks=(Blocks("transformer_blocks", "joint", "dual", (("attn", "joint"), ("attn2", "self"))),),
             grid=patch_grid, grid_note=PATCH_NOTE + " (2)",
             text=(TextPart("clip", "text_encoder", "tokenizer", 0, CLIP_TOKENS),
                   TextPart("t5", "text_encoder_3", "tokenizer_3", CLIP_TOKENS)), encode=encode_sd3)
FLUX1 = Family("flux", JointAttentionAdapter, denoisers=("FluxTransformer2DModel",), pipelines=("FluxPipeline",),
               blocks=(Blocks("transformer_blocks", "dual", "dual"), Blocks("single_transformer_blocks", "single", "single")),
               text_first=True, grid=ids_grid, grid_note="packed token grid, image side / 16",
               text=(TextPart("t5", "text_encoder_2", "tokenizer_2"),), cfg="none", encode=encode_flux)
PIXART = Family("pixart", CrossAttentionDiTAdapter, denoisers=("PixArtTransformer2DModel",),
                pipelines=("PixArtSigmaPipeline", "PixArtAlphaPipeline"),
                blocks=(Blocks("transformer_blocks", "cross", "cross", DIT_ATTNS),), grid=patch_grid, grid_note=PATCH_NOTE,
                cfg="halves")
SANA = Family("sana", CrossAttentionDiTAdapter, denoisers=("SanaTransformer2DModel",), pipelines=("SanaPipeline",),
              blocks=(Blocks("transformer_blocks", "cross", "cross", DIT_ATTNS),), grid=patch_grid, grid_note=PATCH_NOTE,
              text_ids=sana_text_ids, linear_self=True)

FLUX2 = Family("flux2", JointAttentionAdapter, denoisers=("Flux2Transformer2DModel",),
               pipelines=("Flux2Pipeline", "Flux2KleinPipeline"),
               blocks=(Blocks("transformer_blocks", "dual", "dual"), Blocks("single_transformer_blocks", "single", "single")),
               text_first=True, grid=ids_grid, grid_note="packed token grid, image side / 16", cfg="none")

QWEN_TEMPLATE_TOKENS = 34  # pipeline_qwenimage's prompt_template_encode_start_idx: the template before the prompt


def qwen_text_ids(ids: torch.Tensor, text_len: int) -> torch.Tensor:
    """Qwen-Image drops its prompt template's first 34 tokens from the embeddings: the same ids."""
    ids = ids[:, QWEN_TEMPLATE_TOKENS:]
    return ids[:, :text_len] if text_len else ids


QWEN_IMAGE = Family("qwenimage", JointAttentionAdapter, denoisers=("QwenImageTransformer2DModel",), pipelines=("QwenImagePipeline",),
                    blocks=(Blocks("transformer_blocks", "dual", "dual"),), text_first=True, grid=img_shapes_grid,
                    grid_note="packed token grid, image side / 16", cfg="none", text_ids=qwen_text_ids)

DUAL_SINGLE = (Blocks("transformer_blocks", "dual", "dual"), Blocks("single_transformer_blocks", "single", "single"))
CHROMA = Family("chroma", JointAttentionAdapter, denoisers=("ChromaTransformer2DModel",), pipelines=("ChromaPipeline",),
                blocks=DUAL_SINGLE, text_first=True, grid=ids_grid, grid_note="packed token grid, image side / 16",
                cfg="none")
COGVIEW4 = Family("cogview4", JointAttentionAdapter, denoisers=("CogView4Transformer2DModel",), pipelines=("CogView4Pipeline",),
                  blocks=(Blocks("transformer_blocks", "dual", "dual", (("attn1", "joint"),)),), text_first=True,
                  grid=patch_grid, grid_note=PATCH_NOTE + " (2)", cfg="none")


def mask_lengths(inputs: dict) -> list[int]:
    """Lumina 2: each sample's text length, from the encoder attention mask the pipeline passes."""
    return inputs["encoder_attention_mask"].sum(1).tolist()


LUMINA2 = Family("lumina2", JointAttentionAdapter, denoisers=("Lumina2Transformer2DModel",), pipelines=("Lumina2Pipeline",),
                 blocks=(Blocks("layers", "joint", "single"),), text_first=True, grid=patch_grid, grid_note=PATCH_NOTE + " (2)",
                 cfg="none", text_lens=mask_lengths)

HIDREAM_TOKENS = 128  # the pipeline's max_sequence_length: T5 and Llama tokens each


def square_patch_grid(denoiser: torch.nn.Module, inputs: dict) -> tuple[int, int]:
    """HiDream: the patch grid of a square latent; a non-square one is padded to ``max_resolution`` tokens (their keys
    zeroed, not masked), which capture does not read."""
    h, w = patch_grid(denoiser, inputs)
    if h != w:
        raise CaptureError(f"HiDream pads a non-square image's {h}x{w} tokens to its max_resolution; capture reads square "
                           f"images only: set model.height equal to model.width")
    return h, w


HIDREAM_ATTN = (("block.attn1", "joint"),)
HIDREAM = Family("hidream", JointAttentionAdapter, denoisers=("HiDreamImageTransformer2DModel",), pipelines=("HiDreamImagePipeline",),
                 inputs=("hidden_states", "encoder_hidden_states_t5", "timesteps"),
                 blocks=(Blocks("double_stream_blocks", "dual", "dual", HIDREAM_ATTN),
                         Blocks("single_stream_blocks", "single", "single", HIDREAM_ATTN)),
                 grid=square_patch_grid, grid_note=PATCH_NOTE + " (2)",
                 text=(TextPart("llama", "text_encoder_4", "tokenizer_4", HIDREAM_TOKENS, 2 * HIDREAM_TOKENS),
                       TextPart("t5", "text_encoder_3", "tokenizer_3", 0, HIDREAM_TOKENS)))

ZIMAGE_MULTIPLE = 32  # transformer_z_image's SEQ_MULTI_OF: image and text tokens each padded to a multiple of it


def zimage_grid(denoiser: torch.nn.Module, inputs: dict) -> tuple[int, int]:
    """Z-Image: the patch grid of the first latent of the list (channels, frames, h, w)."""
    latent, p = inputs["x"][0], int(inputs.get("patch_size", 2))
    return latent.shape[-2] // p, latent.shape[-1] // p


def zimage_text_ids(ids: torch.Tensor, text_len: int) -> torch.Tensor:
    """Z-Image keeps each prompt's own tokens, padded to a multiple of 32 (``text_len``: the longest): the same ids."""
    return ids[:, :-(-text_len // ZIMAGE_MULTIPLE) * ZIMAGE_MULTIPLE] if text_len else ids


ZIMAGE = Family("zimage", JointAttentionAdapter, denoisers=("ZImageTransformer2DModel",), pipelines=("ZImagePipeline",),
                inputs=("x", "cap_feats", "t"), blocks=(Blocks("layers", "joint", "single", (("attention", "joint"),)),),
                grid=zimage_grid, grid_note=PATCH_NOTE + " (2)", cfg="halves", cond_first=True, text_ids=zimage_text_ids,
                pad_image=ZIMAGE_MULTIPLE)


def patch_tuple_grid(denoiser: torch.nn.Module, inputs: dict) -> tuple[int, int]:
    """HunyuanImage 2.1: the latent's (h, w) / its patch size, a tuple (h, w) or (t, h, w)."""
    hidden, p = inputs["hidden_states"], tuple(denoiser.config.patch_size)
    return hidden.shape[-2] // p[-2], hidden.shape[-1] // p[-1]


HUNYUAN_IMAGE = Family("hunyuanimage", JointAttentionAdapter, denoisers=("HunyuanImageTransformer2DModel",),
                       pipelines=("HunyuanImagePipeline",), blocks=DUAL_SINGLE, grid=patch_tuple_grid,
                       grid_note="patch grid, latent side / patch size (1: image side / 32)", cfg="none", text_ids=qwen_text_ids)

FAMILIES: tuple[Family, ...] = (UNET, SD3, FLUX1, PIXART, SANA, FLUX2, QWEN_IMAGE, CHROMA, COGVIEW4, LUMINA2, HIDREAM, ZIMAGE,
                                HUNYUAN_IMAGE)


def family_for(pipe) -> Family:
    """The descriptor of ``pipe``'s family; a one-line CaptureError naming the denoiser and the families when none fits."""
    for family in FAMILIES:
        if family.matches(pipe):
            return family
    denoiser = getattr(pipe, "transformer", None) or getattr(pipe, "unet", None)
    raise CaptureError(f"cannot capture attention from {type(pipe).__name__} (denoiser {type(denoiser).__name__}): supported "
                       f"families are {[f.name for f in FAMILIES]}")

"""Random-weight pipelines of the families added with the descriptors (FLUX.2 [klein] and [dev], Qwen-Image, Chroma,
CogView4, Lumina 2, HiDream, Z-Image, HunyuanImage 2.1), for tests.

As :mod:`dmutils.testing.dits` does, these keep the *block structure and attention layout* of the real
models with tiny widths (1-2 blocks of each kind, 2 heads x 8): 32 px images and an 8x8 token grid (Lumina 2, whose
pipeline fixes its VAE factor at 8: 128 px). Their text encoders (Qwen3, Qwen2.5-VL, Mistral 3, GLM-4, Gemma-2, Llama,
T5, ByT5, CLIP) are at the smallest config the class allows, 16 wide, with the tokenizers of
:mod:`dmutils.testing.tokenizers`; where the pipeline reads fixed hidden layers (FLUX.2 [klein]: 9, 18 and 27;
[dev]: 10, 20 and 30) the encoder has that many layers.
Each has a ``save_tiny_*`` that writes it with ``save_pretrained`` (``from_pretrained`` reads it back).
"""
from __future__ import annotations

from pathlib import Path

import torch

from dmutils.testing.sd import pipeline_class
from dmutils.testing.tokenizers import tiny_glm_tokenizer, tiny_qwen_tokenizer

TEXT_HIDDEN = 16


def _qwen3(vocab: int, layers: int = 28):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(vocab_size=vocab, hidden_size=TEXT_HIDDEN, intermediate_size=32, num_hidden_layers=layers,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=1024,
                         pad_token_id=0, eos_token_id=0, tie_word_embeddings=True)
    return Qwen3ForCausalLM(config).eval()


def _flux2_vae():
    """FLUX.2's VAE (2x2 patchified latents with batch-norm statistics) downsampling by 2, 4 latent channels."""
    from diffusers import AutoencoderKLFlux2

    return AutoencoderKLFlux2(latent_channels=4, block_out_channels=(16, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                              up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, norm_num_groups=8).eval()


def tiny_flux2_transformer(guidance_embeds: bool = False):
    """FLUX.2's layout (dual-stream blocks, then single-stream blocks with fused QKV + MLP, 4-axis rotary) with
    1 + 2 blocks of 2 heads x 8; text is three stacked encoder layers (3 x 16 channels)."""
    from diffusers import Flux2Transformer2DModel

    return Flux2Transformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=2, attention_head_dim=8,
                                   num_attention_heads=2, joint_attention_dim=3 * TEXT_HIDDEN, timestep_guidance_channels=16,
                                   axes_dims_rope=(2, 2, 2, 2), guidance_embeds=guidance_embeds).eval()


def tiny_flux2_klein_pipeline(seed: int = 0):
    """``Flux2KleinPipeline``: Qwen3 (28 layers of 16, the pipeline stacks layers 9, 18, 27), CFG by a second call."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    torch.manual_seed(seed)
    tok = tiny_qwen_tokenizer()
    pipe = pipeline_class("Flux2KleinPipeline")(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=_flux2_vae(),
                                                text_encoder=_qwen3(len(tok)), tokenizer=tok,
                                                transformer=tiny_flux2_transformer(), is_distilled=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny_flux2_klein(folder: str | Path, seed: int = 0) -> Path:
    """A FLUX.2 Klein-shaped pipeline folder (``save_pretrained``), loadable with ``from_pretrained``."""
    tiny_flux2_klein_pipeline(seed).save_pretrained(folder)
    return Path(folder)


def _qwen25_vl(vocab: int):
    """Qwen2.5-VL at the smallest config it allows: 2 text layers of 16 (multimodal rotary sections 1+1+2),
    a 1-block vision tower (never run: the pipeline encodes text only)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2]}
    text = dict(vocab_size=vocab, hidden_size=TEXT_HIDDEN, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=1, max_position_embeddings=2048, rope_parameters=rope, bos_token_id=None, eos_token_id=0,
                pad_token_id=0)
    vision = dict(depth=1, hidden_size=16, num_heads=2, intermediate_size=32, out_hidden_size=TEXT_HIDDEN, fullatt_block_indexes=[0])
    return Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(text_config=text, vision_config=vision)).eval()


def _qwen_image_vae():
    """Qwen-Image's causal 3-D VAE downsampling by 2 (one level), 4 latent channels."""
    from diffusers import AutoencoderKLQwenImage

    return AutoencoderKLQwenImage(base_dim=8, z_dim=4, dim_mult=[1, 1], num_res_blocks=1, temperal_downsample=[False],
                                  latents_mean=[0.0] * 4, latents_std=[1.0] * 4).eval()


def tiny_qwen_image_transformer():
    """Qwen-Image's layout (double-stream blocks, text first in the joint keys, 3-axis rotary for image and text)
    with 2 blocks of 2 heads x 8."""
    from diffusers import QwenImageTransformer2DModel

    return QwenImageTransformer2DModel(patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=8,
                                       num_attention_heads=2, joint_attention_dim=TEXT_HIDDEN, axes_dims_rope=(2, 2, 4)).eval()


def tiny_qwen_image_pipeline(seed: int = 0):
    """``QwenImagePipeline``: Qwen2.5-VL text encoder (its prompt template's 34 tokens dropped, as the real one's),
    true CFG by a second call when a negative prompt is given."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    torch.manual_seed(seed)
    tok = tiny_qwen_tokenizer()
    pipe = pipeline_class("QwenImagePipeline")(scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0), vae=_qwen_image_vae(),
                                               text_encoder=_qwen25_vl(len(tok)), tokenizer=tok,
                                               transformer=tiny_qwen_image_transformer())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny_qwen_image(folder: str | Path, seed: int = 0) -> Path:
    """A Qwen-Image-shaped pipeline folder (``save_pretrained``), loadable with ``from_pretrained``."""
    tiny_qwen_image_pipeline(seed).save_pretrained(folder)
    return Path(folder)


def tiny_chroma_transformer():
    """Chroma's layout (FLUX.1's dual- then single-stream blocks, pruned modulation from an approximator MLP, a text
    padding mask) with 1 + 2 blocks of 2 heads x 8; text from a 16-wide T5."""
    from diffusers import ChromaTransformer2DModel

    return ChromaTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=2, attention_head_dim=8,
                                    num_attention_heads=2, joint_attention_dim=TEXT_HIDDEN, axes_dims_rope=(2, 2, 4),
                                    approximator_num_channels=16, approximator_hidden_dim=16, approximator_layers=1).eval()


def tiny_chroma_pipeline(seed: int = 0):
    """``ChromaPipeline``: a T5 encoder (the sentencepiece tokenizer of :mod:`dmutils.testing.tokenizers`), FLUX.1's
    2x2 packing, CFG by a second call with the negative prompt."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from dmutils.testing.dits import _flow_vae, _tiny_t5

    torch.manual_seed(seed)
    t5, tok = _tiny_t5(TEXT_HIDDEN)
    pipe = pipeline_class("ChromaPipeline")(scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0), vae=_flow_vae(4, channels=8),
                                            text_encoder=t5, tokenizer=tok, transformer=tiny_chroma_transformer())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny_chroma(folder: str | Path, seed: int = 0) -> Path:
    """A Chroma-shaped pipeline folder (``save_pretrained``), loadable with ``from_pretrained``."""
    tiny_chroma_pipeline(seed).save_pretrained(folder)
    return Path(folder)


def _glm(vocab: int):
    """GLM-4 (CogView4's text encoder, which reads the second-to-last hidden layer) at 2 layers of 16."""
    from transformers import GlmConfig, GlmModel

    config = GlmConfig(vocab_size=vocab, hidden_size=TEXT_HIDDEN, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                       num_key_value_heads=1, head_dim=8, max_position_embeddings=1024, pad_token_id=0, eos_token_id=0)
    return GlmModel(config).eval()


def tiny_cogview4_transformer():
    """CogView4's layout (one sequence [text, image] per block with separate image/text modulation, 2-axis rotary on
    the image only) with 2 blocks of 2 heads x 8, patch 2."""
    from diffusers import CogView4Transformer2DModel

    return CogView4Transformer2DModel(patch_size=2, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=8,
                                      num_attention_heads=2, text_embed_dim=TEXT_HIDDEN, time_embed_dim=16, condition_dim=8,
                                      pos_embed_max_size=16, sample_size=16, rope_axes_dim=(16, 16)).eval()


def tiny_cogview4_pipeline(seed: int = 0):
    """``CogView4Pipeline``: a GLM-4 encoder with :func:`~dmutils.testing.tokenizers.tiny_glm_tokenizer` (the pipeline
    left-pads the ids to a multiple of 16 itself), CFG by a second call."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from dmutils.testing.dits import _flow_vae

    torch.manual_seed(seed)
    tok = tiny_glm_tokenizer()
    scheduler = FlowMatchEulerDiscreteScheduler(base_shift=0.25, max_shift=0.75, base_image_seq_len=256, use_dynamic_shifting=True,
                                                time_shift_type="linear")
    pipe = pipeline_class("CogView4Pipeline")(tokenizer=tok, text_encoder=_glm(len(tok)), vae=_flow_vae(4, channels=8),
                                              transformer=tiny_cogview4_transformer(), scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny_cogview4(folder: str | Path, seed: int = 0) -> Path:
    """A CogView4-shaped pipeline folder (``save_pretrained``), loadable with ``from_pretrained``."""
    tiny_cogview4_pipeline(seed).save_pretrained(folder)
    return Path(folder)


def tiny_lumina2_transformer():
    """Lumina 2's layout (text and image refiners, then single-stream blocks over each sample's [text, image, padding],
    grouped-query heads, 3-axis rotary) with 1 refiner and 2 blocks of 2 heads x 8, patch 2."""
    from diffusers import Lumina2Transformer2DModel

    return Lumina2Transformer2DModel(sample_size=16, patch_size=2, in_channels=4, hidden_size=16, num_layers=2, num_refiner_layers=1,
                                     num_attention_heads=2, num_kv_heads=1, multiple_of=16, axes_dim_rope=(2, 2, 4),
                                     axes_lens=(300, 64, 64), cap_feat_dim=TEXT_HIDDEN).eval()


def tiny_lumina2_pipeline(seed: int = 0):
    """``Lumina2Pipeline``: a Gemma-2 encoder (second-to-last layer) with the Gemma tokenizer of
    :mod:`dmutils.testing.tokenizers`; the pipeline puts a system prompt before the prompt; CFG by a second call. The
    pipeline fixes the VAE factor at 8: a factor-8 VAE, so a 128 px image has the 8x8 token grid."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from transformers import Gemma2Config, Gemma2Model

    from dmutils.testing.dits import _flow_vae
    from dmutils.testing.tokenizers import tiny_gemma_tokenizer

    torch.manual_seed(seed)
    tok = tiny_gemma_tokenizer()
    gemma = Gemma2Model(Gemma2Config(vocab_size=len(tok), hidden_size=TEXT_HIDDEN, intermediate_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=1024,
                                     pad_token_id=0, eos_token_id=1, bos_token_id=2)).eval()
    pipe = pipeline_class("Lumina2Pipeline")(transformer=tiny_lumina2_transformer(), scheduler=FlowMatchEulerDiscreteScheduler(),
                                             vae=_flow_vae(4, levels=4, channels=8), text_encoder=gemma, tokenizer=tok)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny_lumina2(folder: str | Path, seed: int = 0) -> Path:
    """A Lumina 2-shaped pipeline folder (``save_pretrained``), loadable with ``from_pretrained``."""
    tiny_lumina2_pipeline(seed).save_pretrained(folder)
    return Path(folder)


def tiny_hidream_transformer():
    """HiDream-I1's layout (double-stream then single-stream blocks with mixture-of-experts feed-forwards, image first,
    then T5 and Llama tokens, a Llama layer of its own appended in every block) with 1 + 1 blocks of 2 heads x 8."""
    from diffusers import HiDreamImageTransformer2DModel

    return HiDreamImageTransformer2DModel(patch_size=2, in_channels=4, out_channels=4, num_layers=1, num_single_layers=1,
                                          attention_head_dim=8, num_attention_heads=2, caption_channels=[TEXT_HIDDEN, TEXT_HIDDEN],
                                          text_emb_dim=32, num_routed_experts=2, num_activated_experts=1, axes_dims_rope=(4, 2, 2),
                                          max_resolution=(16, 16), llama_layers=[0, 1]).eval()


def tiny_hidream_pipeline(seed: int = 0):
    """``HiDreamImagePipeline``: two CLIPs with projection (the pooled vector, 16 + 16; 128 positions, as the pipeline
    encodes 128 CLIP tokens), a T5 and a 2-layer Llama (both 16 wide, 128 tokens each as the pipeline's default),
    flow-matching Euler, CFG as a [negative, positive] batch."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from transformers import LlamaConfig, LlamaForCausalLM

    from dmutils.testing.dits import _flow_vae, _tiny_t5
    from dmutils.testing.sd import tiny_text_encoder, tiny_tokenizer

    torch.manual_seed(seed)
    clip_tok, llama_tok = tiny_tokenizer(), tiny_qwen_tokenizer()
    t5, t5_tok = _tiny_t5(TEXT_HIDDEN)
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=len(llama_tok), hidden_size=TEXT_HIDDEN, intermediate_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=1024,
                                         pad_token_id=0, eos_token_id=0, bos_token_id=None)).eval()
    pipe = pipeline_class("HiDreamImagePipeline")(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=_flow_vae(4, channels=8),
        text_encoder=tiny_text_encoder(clip_tok, 32, projection=16, positions=128), tokenizer=clip_tok,
        text_encoder_2=tiny_text_encoder(clip_tok, 32, projection=16, positions=128), tokenizer_2=clip_tok, text_encoder_3=t5, tokenizer_3=t5_tok,
        text_encoder_4=llama, tokenizer_4=llama_tok, transformer=tiny_hidream_transformer())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny_hidream(folder: str | Path, seed: int = 0) -> Path:
    """A HiDream-I1-shaped pipeline folder (``save_pretrained``), loadable with ``from_pretrained``."""
    tiny_hidream_pipeline(seed).save_pretrained(folder)
    return Path(folder)


def tiny_zimage_transformer():
    """Z-Image's layout (image and text refiners, then single-stream blocks over [image, text], each padded to a multiple
    of 32, 3-axis rotary) with 1 refiner and 2 blocks of 2 heads x 8, patch 2."""
    from diffusers import ZImageTransformer2DModel

    return ZImageTransformer2DModel(in_channels=4, dim=16, n_layers=2, n_refiner_layers=1, n_heads=2, n_kv_heads=2,
                                    cap_feat_dim=TEXT_HIDDEN, axes_dims=[2, 2, 4], axes_lens=[1024, 64, 64]).eval()


def tiny_zimage_pipeline(seed: int = 0):
    """``ZImagePipeline``: a 2-layer Qwen3 (second-to-last layer) with the byte-level BPE tokenizer and its chat template;
    CFG as a [conditional, unconditional] batch."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from transformers import Qwen3Config, Qwen3Model

    from dmutils.testing.dits import _flow_vae

    torch.manual_seed(seed)
    tok = tiny_qwen_tokenizer()
    qwen = Qwen3Model(Qwen3Config(vocab_size=len(tok), hidden_size=TEXT_HIDDEN, intermediate_size=32, num_hidden_layers=2,
                                  num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=1024,
                                  pad_token_id=0, eos_token_id=0)).eval()
    pipe = pipeline_class("ZImagePipeline")(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=_flow_vae(4, channels=8),
                                            text_encoder=qwen, tokenizer=tok, transformer=tiny_zimage_transformer())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny_zimage(folder: str | Path, seed: int = 0) -> Path:
    """A Z-Image-shaped pipeline folder (``save_pretrained``), loadable with ``from_pretrained``."""
    tiny_zimage_pipeline(seed).save_pretrained(folder)
    return Path(folder)


def tiny_hunyuanimage_transformer():
    """HunyuanImage 2.1's layout (dual-stream then single-stream blocks, image first, a token refiner for the Qwen text,
    a ByT5 glyph projection, 2-axis rotary) with 1 + 1 blocks of 2 heads x 8, patch 1."""
    from diffusers import HunyuanImageTransformer2DModel

    return HunyuanImageTransformer2DModel(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=1,
                                          num_single_layers=1, num_refiner_layers=1, mlp_ratio=2.0, patch_size=(1, 1),
                                          text_embed_dim=TEXT_HIDDEN, text_embed_2_dim=TEXT_HIDDEN, rope_axes_dim=(4, 4)).eval()


def tiny_hunyuanimage_pipeline(seed: int = 0):
    """``HunyuanImagePipeline``: Qwen2.5-VL (its prompt template's 34 tokens dropped, as Qwen-Image's) and a ByT5 for
    quoted glyph text (zeros without quotes), a VAE downsampling by 4 (32 px: an 8x8 grid at patch 1), and an adaptive
    projected guider: CFG by a second call per condition."""
    from diffusers import AdaptiveProjectedMixGuidance, AutoencoderKLHunyuanImage, FlowMatchEulerDiscreteScheduler
    from transformers import ByT5Tokenizer, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    tok, byt5_tok = tiny_qwen_tokenizer(), ByT5Tokenizer()
    byt5 = T5EncoderModel(T5Config(vocab_size=len(byt5_tok), d_model=TEXT_HIDDEN, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                                   pad_token_id=byt5_tok.pad_token_id, eos_token_id=byt5_tok.eos_token_id)).eval()
    vae = AutoencoderKLHunyuanImage(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 32, 32),
                                    layers_per_block=1, spatial_compression_ratio=4, sample_size=32, scaling_factor=1.0).eval()
    pipe = pipeline_class("HunyuanImagePipeline")(scheduler=FlowMatchEulerDiscreteScheduler(shift=4.0), vae=vae,
                                                  text_encoder=_qwen25_vl(len(tok)), tokenizer=tok, text_encoder_2=byt5,
                                                  tokenizer_2=byt5_tok, transformer=tiny_hunyuanimage_transformer(),
                                                  guider=AdaptiveProjectedMixGuidance(guidance_scale=4.0))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny_hunyuanimage(folder: str | Path, seed: int = 0) -> Path:
    """A HunyuanImage 2.1-shaped pipeline folder (``save_pretrained``), loadable with ``from_pretrained``."""
    tiny_hunyuanimage_pipeline(seed).save_pretrained(folder)
    return Path(folder)


FLUX2_CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% for c in m['content'] %}{% if c['type'] == 'text' %}"
                       "{{ c['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}")


def _mistral3(vocab: int):
    """Mistral Small 3.1 (FLUX.2 [dev]'s text encoder) at 30 text layers of 16, as the pipeline stacks layers 10, 20 and
    30; a 1-block Pixtral vision tower (never run: the pipeline encodes text only)."""
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration

    text = dict(model_type="mistral", vocab_size=vocab, hidden_size=TEXT_HIDDEN, intermediate_size=32, num_hidden_layers=30,
                num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=1024, pad_token_id=0,
                eos_token_id=0, bos_token_id=None)
    vision = dict(model_type="pixtral", hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, head_dim=8,
                  patch_size=16, image_size=64)
    return Mistral3ForConditionalGeneration(Mistral3Config(text_config=text, vision_config=vision, image_token_index=0)).eval()


def tiny_flux2_dev_pipeline(seed: int = 0):
    """``Flux2Pipeline`` (FLUX.2 [dev]): Mistral Small 3.1's shape of encoder, guidance-distilled (a guidance embedding,
    no CFG). Its real tokenizer is a Pixtral processor, which needs torchvision (not installed here): the byte-level BPE
    tokenizer with a chat template over [{type: text}] contents stands in for it; for text prompts the processor only
    applies its tokenizer's chat template, as this does."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    torch.manual_seed(seed)
    tok = tiny_qwen_tokenizer()
    tok.chat_template = FLUX2_CHAT_TEMPLATE
    pipe = pipeline_class("Flux2Pipeline")(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=_flux2_vae(),
                                           text_encoder=_mistral3(len(tok)), tokenizer=tok,
                                           transformer=tiny_flux2_transformer(guidance_embeds=True))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny_flux2_dev(folder: str | Path, seed: int = 0) -> Path:
    """A FLUX.2 [dev]-shaped pipeline folder (``save_pretrained``), loadable with ``from_pretrained``."""
    tiny_flux2_dev_pipeline(seed).save_pretrained(folder)
    return Path(folder)

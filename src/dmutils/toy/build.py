"""The parts of the toy model, with the same classes as Stable Diffusion, scaled down.

- tokenizer: a CLIP BPE tokenizer over the toy world's vocabulary (every word one token; unknown words fall
  back to characters, as CLIP's do), written as vocab.json + merges.txt and loaded with ``from_pretrained``;
- text encoder: ``CLIPTextModel`` with 0 transformer layers (token + position embeddings, final layer norm).
  A jointly trained multi-layer causal encoder let the second class word absorb the first, and attention
  then localised only the first object; an encoder that does not mix tokens keeps each word's map its own;
- VAE: ``AutoencoderKL`` with a downsampling factor of 4 (64 px images, 16x16x4 latents);
- UNet: ``UNet2DConditionModel`` laid out like SD's (three cross-attention down blocks and a plain one,
  a cross-attention mid block), so its attention maps come at 16/8/4/2 as SD's come at 64/32/16/8 (at 512 px);
- scheduler: SD's scaled-linear betas, DDIM for sampling.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from dmutils.data.toyworld import vocabulary

IMAGE_SIZE = 64
LATENT_SIZE = 16
TEXT_DIM = 64
MAX_LENGTH = 77
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
PUNCTUATION = [",", ";", ".", "!", "?", "'", "-", "(", ")", ":"]


def _bpe(word: tuple[str, ...], ranks: dict[tuple[str, str], int]) -> tuple[str, ...]:
    """CLIP's BPE merge loop: repeatedly merge the lowest-ranked adjacent pair."""
    while len(word) > 1:
        pairs = [(ranks.get(p, 1 << 30), i, p) for i, p in enumerate(zip(word, word[1:]))]
        rank, _, best = min(pairs)
        if rank == 1 << 30:
            break
        out, i = [], 0
        while i < len(word):
            if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                out.append(word[i] + word[i + 1])
                i += 2
            else:
                out.append(word[i])
                i += 1
        word = tuple(out)
    return word


def build_tokenizer_files(folder: Path, words: list[str] | None = None, alphabet: Iterable[str] = ()) -> Path:
    """vocab.json + merges.txt in CLIP's format where each given word is a single token.

    Merges are appended word by word; a word's own merges always outrank later ones, so adding
    words never splits an earlier word (each word's merge path is complete before later ranks apply).
    ``alphabet`` adds base characters (and their end-of-word forms) for words to fall back to.
    Same words, same bytes: the ``tokenizers`` BPE trainer is not used because it breaks ties between
    equally frequent pairs by ids that depend on a per-process hash order, so two processes number
    (and rank) the same vocabulary differently, and a text encoder's embedding rows then mean other words.
    """
    words = sorted(set(words or vocabulary()))
    chars = sorted({ch for w in words + PUNCTUATION for ch in w} | set("abcdefghijklmnopqrstuvwxyz0123456789") | set(alphabet))
    vocab_tokens = chars + [c + "</w>" for c in chars]
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for w in words:
        symbols = _bpe(tuple(w[:-1]) + (w[-1] + "</w>",), ranks)
        while len(symbols) > 1:
            pair = (symbols[0], symbols[1])
            if pair not in ranks:
                ranks[pair] = len(merges)
                merges.append(pair)
            symbols = _bpe(symbols, ranks)
    for a, b in merges:
        if a + b not in vocab_tokens:
            vocab_tokens.append(a + b)
    vocab_tokens += [BOS, EOS]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab_tokens)}, indent=0))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return folder


def make_tokenizer(folder: Path):
    """Write the tokenizer folder and load it the way pipelines do (``from_pretrained``)."""
    from transformers import CLIPTokenizer

    folder = build_tokenizer_files(folder)
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": MAX_LENGTH, "bos_token": BOS,
              "eos_token": EOS, "unk_token": EOS, "pad_token": EOS, "do_lower_case": True}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (folder / "special_tokens_map.json").write_text(json.dumps({k: config[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")}, indent=2))
    tok = CLIPTokenizer.from_pretrained(folder)
    unsplit = [w for w in vocabulary() if len(tok.tokenize(w)) != 1]
    if unsplit:
        raise RuntimeError(f"toy tokenizer splits vocabulary words {unsplit}")
    return tok


def make_text_encoder(vocab_size: int, eos_token_id: int, bos_token_id: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=TEXT_DIM, intermediate_size=4 * TEXT_DIM, num_hidden_layers=0,
        num_attention_heads=4, max_position_embeddings=MAX_LENGTH, eos_token_id=eos_token_id,
        bos_token_id=bos_token_id, pad_token_id=eos_token_id, projection_dim=TEXT_DIM,
    )
    return CLIPTextModel(cfg)


def make_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 64), layers_per_block=1, latent_channels=4, norm_num_groups=8,
        sample_size=IMAGE_SIZE,
    )


def make_unet(channels: tuple[int, ...] = (32, 64, 128, 128), heads: int = 4):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=LATENT_SIZE, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=channels, layers_per_block=1, cross_attention_dim=TEXT_DIM,
        attention_head_dim=heads, norm_num_groups=16,
    )


def make_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon",
    )

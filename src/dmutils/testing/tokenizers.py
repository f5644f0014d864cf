"""Small T5 (sentencepiece Unigram) and Gemma (byte-fallback BPE) tokenizers built offline, for tests.

The diffusion transformers encode text with T5 (PixArt-Σ, SD3) or an LLM (SANA: Gemma-2); their real
tokenizers cannot be downloaded here. These are the same transformers classes (``T5Tokenizer`` =
``T5TokenizerFast``, ``GemmaTokenizer`` = ``GemmaTokenizerFast`` in transformers 5) on the small vocabulary
of :mod:`dmutils.testing.sd`, in which "aeroplane", "potted", "monitor" and "motorbike" split into several
tokens, as in the CLIP one. Special tokens as the real ones: T5 appends ``</s>``, Gemma prepends ``<bos>``.
"""
from __future__ import annotations

import string
from pathlib import Path

from tokenizers import Tokenizer, models, trainers
from transformers import GemmaTokenizer, T5Tokenizer

from dmutils.testing.sd import SPLIT_WORDS, vocab_words

_CHARS = string.ascii_letters + string.digits + string.punctuation


def _pieces() -> list[str]:
    """Whole words (spelt without the split ones) and the pieces of the split words."""
    return [w for w in vocab_words() if w not in SPLIT_WORDS] + [p for ps in SPLIT_WORDS.values() for p in ps]


def tiny_t5_tokenizer(model_max_length: int = 512) -> T5Tokenizer:
    """A T5 sentencepiece (Unigram, '▁' word starts) tokenizer: a word is one piece, the split words their
    pieces ('▁aero' 'plane'); any other text falls back to single characters."""
    split_tails = {p for ps in SPLIT_WORDS.values() for p in ps[1:]}
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -8.0)]
    vocab += [(("" if p in split_tails else "▁") + p, -5.0) for p in _pieces()]
    vocab += [(c, -10.0) for c in _CHARS] + [("▁" + c, -10.0) for c in _CHARS]
    seen: set[str] = set()
    vocab = [(p, s) for p, s in vocab if not (p in seen or seen.add(p))]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=model_max_length)


def tiny_gemma_tokenizer(model_max_length: int = 8192) -> GemmaTokenizer:
    """A Gemma-style tokenizer: BPE trained with the ``tokenizers`` trainer on the small vocabulary, spaces
    as '▁' glued to the next word, byte fallback (<0x00>..<0xFF>), ``<bos>`` first, right padding as SANA sets it."""
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    bpe = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    trainer = trainers.BpeTrainer(vocab_size=100_000, min_frequency=1, special_tokens=specials, show_progress=False,
                                  initial_alphabet=list(_CHARS) + ["▁"])
    split_tails = {p for ps in SPLIT_WORDS.values() for p in ps[1:]}
    corpus = [p for p in _pieces() if p in split_tails] + [s + p for p in _pieces() if p not in split_tails for s in ("", "▁")]
    bpe.train_from_iterator(corpus, trainer)
    model = bpe.get_vocab()
    vocab = dict(sorted(model.items(), key=lambda kv: kv[1]))
    for b in range(256):
        vocab.setdefault(f"<0x{b:02X}>", len(vocab))
    import json

    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in json.loads(bpe.to_str())["model"]["merges"]]
    tok = GemmaTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length, add_bos_token=True, add_eos_token=False)
    tok.padding_side = "right"
    return tok


def save_tokenizer(tokenizer, folder: str | Path) -> Path:
    """``save_pretrained`` into ``folder`` (a pipeline's ``tokenizer/``)."""
    folder = Path(folder)
    tokenizer.save_pretrained(folder)
    return folder


QWEN_TEMPLATE_WORDS = ("system user assistant Describe the image by detailing color shape size texture quantity text spatial "
                       "relationships of objects and background").split()
QWEN_CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                      "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def tiny_qwen_tokenizer(model_max_length: int = 32768):
    """A Qwen2-style tokenizer (byte-level BPE, 'Ġ' word starts, <|im_start|> / <|im_end|> chat markers and a
    chat template), the tokenizer of Qwen-Image's Qwen2.5-VL and FLUX.2 Klein's Qwen3. The words of Qwen-Image's
    prompt template are whole tokens, so its fixed prefix is 34 tokens as with the real tokenizer."""
    from tokenizers import pre_tokenizers
    from transformers import Qwen2Tokenizer

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=100_000, min_frequency=1, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    split_tails = {p for ps in SPLIT_WORDS.values() for p in ps[1:]}
    words = _pieces() + list(QWEN_TEMPLATE_WORDS)
    corpus = [p for p in words if p in split_tails] + [s + p for p in words if p not in split_tails for s in ("", " ")]
    bpe.train_from_iterator(corpus, trainer)
    import json

    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    tok = Qwen2Tokenizer(vocab=model["vocab"], merges=merges, model_max_length=model_max_length)
    tok.add_special_tokens({"additional_special_tokens": specials[1:]})
    tok.chat_template = QWEN_CHAT_TEMPLATE
    return tok


def tiny_glm_tokenizer():
    """GLM-4's shape of tokenizer (CogView4): the byte-level BPE above with ``[gMASK] <sop>`` put before every text,
    as GLM-4's own post-processor does (so an empty negative prompt is not zero tokens), padding on the left."""
    from tokenizers.processors import TemplateProcessing

    tok = tiny_qwen_tokenizer()
    specials = ["[gMASK]", "<sop>"]
    tok.add_special_tokens({"additional_special_tokens": specials})
    pairs = list(zip(specials, tok.convert_tokens_to_ids(specials)))
    tok._tokenizer.post_processor = TemplateProcessing(single="[gMASK] <sop> $A", pair="[gMASK] <sop> $A $B", special_tokens=pairs)
    tok.padding_side = tok.init_kwargs["padding_side"] = "left"  # init_kwargs: saved with it
    return tok

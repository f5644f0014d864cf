"""Word look-up in AttentionMaps for every tokenizer family: CLIP BPE, T5 sentencepiece, Gemma (SANA's LLM)."""
from __future__ import annotations

import pytest
import torch

from dmutils.attention import AttentionMaps, WordLookupError
from dmutils.testing.sd import tiny_tokenizer
from dmutils.testing.tokenizers import tiny_gemma_tokenizer, tiny_t5_tokenizer

TOKENIZERS = {"clip": tiny_tokenizer, "t5": tiny_t5_tokenizer, "gemma": tiny_gemma_tokenizer}
PROMPTS = ["an aeroplane, and a potted plant near a tv monitor", "A dog by the horse"]


@pytest.fixture(scope="module", params=sorted(TOKENIZERS))
def tok(request):
    return TOKENIZERS[request.param]()


def maps_for(tok, prompts, length, texts=True, offset=0):
    """Maps over ``offset + length`` text positions; the ids as the pipeline encodes them (padded, truncated)."""
    ids = tok(prompts, padding="max_length", max_length=length, truncation=True, return_tensors="pt").input_ids
    cross = {4: torch.rand(len(prompts), offset + length, 4, 4, generator=torch.Generator().manual_seed(0))}
    return AttentionMaps(cross=cross, self_attention={}, tokenizer=tok, prompts=prompts if texts else None, token_ids=ids,
                         token_offset=offset), ids


def decoded(tok, ids, positions):
    return tok.decode(ids[positions].tolist()).replace("▁", " ").strip()


@pytest.mark.parametrize("texts", [True, False], ids=["texts", "ids"])
def test_words_map_to_their_tokens(tok, texts):
    maps, ids = maps_for(tok, PROMPTS, 32, texts)
    assert maps.words(0) == ["an", "aeroplane", ",", "and", "a", "potted", "plant", "near", "a", "tv", "monitor"]
    assert [w.lower() for w in maps.words(1)] == ["a", "dog", "by", "the", "horse"]  # decoded ids: CLIP's are lower-case
    assert maps.words(1)[0] == "A" or not texts
    special = set(tok.all_special_ids)
    for word in ("aeroplane", "potted plant", "tv monitor", "near", ","):
        pos = maps.token_positions(0, word)
        assert pos == list(range(pos[0], pos[-1] + 1)) and not special & set(ids[0, pos].tolist())
        assert decoded(tok, ids[0], pos) == word.replace(" ,", ",")
    assert len(maps.token_positions(0, "aeroplane")) > 1  # a word the tokenizer splits
    assert maps.token_positions(1, "a dog") == maps.token_positions(1, "A DOG")  # case-insensitive
    assert len(maps.token_positions(0, "a")) == 2 * len(maps.token_positions(0, "a", occurrence="first"))
    assert not maps.truncated(0) and not maps.truncated(1)
    with pytest.raises(WordLookupError, match=r"'cat' is not in the prompt of sample 1.*\['[Aa]', 'dog'"):
        maps.word_map(1, "cat")
    assert maps.word_map(0, "potted plant").shape == (4, 4)


def test_special_tokens_belong_to_no_word(tok):
    maps, ids = maps_for(tok, ["a dog"], 8)
    lead = [k for k in range(8) if ids[0, k].item() == tok.bos_token_id and tok.bos_token_id is not None]
    covered = {p for w in maps.words(0) for p in maps.token_positions(0, w)}
    assert covered == {k for k in range(8) if ids[0, k].item() not in tok.all_special_ids}
    assert not covered & set(lead)
    assert maps.token_positions(0, "a") == [len(lead)]  # CLIP and Gemma put BOS first, T5 nothing


def test_truncation_names_the_lost_word(tok):
    long = "a photo of a " + " ".join(["red circle"] * 12) + " and a dog"
    prompts = [long, "a dog"]
    exact, ids = maps_for(tok, prompts, 16)
    assert exact.truncated(0) and not exact.truncated(1)
    kept = exact.token_positions(0, "circle")
    assert max(kept) < 16 and ids[0, max(kept)].item() not in tok.all_special_ids
    assert exact.token_positions(1, "dog")
    with pytest.raises(WordLookupError, match="'dog' of sample 0 was cut off"):
        exact.word_map(0, "dog")
    from_ids, _ = maps_for(tok, prompts, 16, texts=False)
    assert from_ids.truncated(0) and not from_ids.truncated(1)
    assert from_ids.words(0)[:4] == ["a", "photo", "of", "a"] and from_ids.words(1) == ["a", "dog"]
    assert from_ids.token_positions(0, "circle") == kept
    with pytest.raises(WordLookupError, match="may have been cut off"):
        from_ids.word_map(0, "dog")


def test_token_offset_reads_a_part_of_a_concatenated_sequence(tok):
    alone, _ = maps_for(tok, PROMPTS, 24)
    after_clip, _ = maps_for(tok, PROMPTS, 24, offset=77)  # SD3: CLIP's 77 positions, then this tokenizer's
    pos = alone.token_positions(0, "potted plant")
    assert after_clip.token_positions(0, "potted plant") == [77 + p for p in pos]
    torch.testing.assert_close(after_clip.word_map(0, "potted plant"), after_clip.aggregate(0)[[77 + p for p in pos]].mean(0))
    long = ["a photo of a " + " ".join(["red circle"] * 12) + " and a dog"]
    cut, _ = maps_for(tok, long, 16, offset=77)  # the limit is the maps' positions after the offset
    assert cut.truncated(0)
    with pytest.raises(WordLookupError, match="cut off"):
        cut.word_map(0, "dog")


def test_ids_decide_when_the_pipeline_changed_the_text(tok):
    """PixArt and SANA lower-case the prompt (SANA also prefixes an instruction): the ids the encoder saw win."""
    prompts = ["An AEROPLANE near a Dog"]
    seen = tok([p.lower() for p in prompts], padding="max_length", max_length=24, truncation=True, return_tensors="pt").input_ids
    cross = {4: torch.rand(1, 24, 4, 4)}
    maps = AttentionMaps(cross=cross, self_attention={}, tokenizer=tok, prompts=prompts, token_ids=seen)
    lower, _ = maps_for(tok, [p.lower() for p in prompts], 24)
    for word in ("aeroplane", "dog", "near a dog"):
        assert maps.token_positions(0, word) == lower.token_positions(0, word)
    assert decoded(tok, seen[0], maps.token_positions(0, "AEROPLANE")) == "aeroplane"

"""The result of a capture: :class:`AttentionMaps`, per sample, on the CPU.

    maps.words(i)                          # the words of sample i's (encoded) prompt
    maps.cross(i, 16)                      # (77 tokens, 16, 16): per-token cross-attention
    maps.aggregate(i, size=64)             # (77, 64, 64): resolutions upsampled and weighted
    maps.word_map(i, "potted plant", 64)   # (64, 64): all tokens of the words, reduced
    maps.class_maps(i, {"person": "man", "horse": "horse"}, 64)   # (2, 64, 64)
    maps.self_attention(i, 32)             # (1024, 1024): rows are query pixels
    maps.truncated(i)                      # was the prompt cut at 77 tokens?
    maps.head_weights(i, focus)            # capture.aggregate auto: {resolution: {layer: [weight per head]}}

Cross maps are probabilities over the text token positions (77 for CLIP; they sum to 1 over tokens at
every pixel), averaged over layers and recorded steps. Look-up by word works for any tokenizer (CLIP BPE,
T5 sentencepiece, LLM tokenizers such as Gemma's): a word is a run of letters/digits or one punctuation
mark of the prompt text, and its tokens are those whose character offsets (fast-tokenizer
``return_offsets_mapping``) overlap it, so a word the tokenizer splits ("aeroplane" -> "ae ro plane") maps to
all its tokens; special tokens (CLIP's BOS/EOS, T5's EOS, Gemma's <bos>) belong to no word. Matching is
case-insensitive. A word that is not in the prompt, or that was cut off by the tokenizer's length limit,
raises :class:`WordLookupError`. When the maps' text sequence is several encoders' outputs one after
another (SD3: CLIP's 77 positions, then T5's), ``token_offset`` says where this tokenizer's part starts.

With ``capture.aggregate: auto`` the maps also hold each layer's per-head maps (``heads``), and a cross map is
their weighted sum (:mod:`dmutils.attention.aggregate`), the weights chosen per sample from the maps of the
words looked up (``focus``: the class words for ``class_maps``; every word of the prompt by default).
"""
from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dmutils.attention.aggregate import aggregate


class WordLookupError(KeyError):
    """A word is not in a sample's prompt, or was lost to truncation; the message says which."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass
class _Prompt:
    words: list[tuple[str, list[int]]]  # (word as written, its token positions in the maps' text sequence)
    tokens: int  # content tokens of the prompt (all of them when the text is known)
    capacity: int  # content tokens the text encoder keeps
    kept: int  # positions < kept reach the model (the limit less the specials appended after the text)
    truncated: bool


_WORD = re.compile(r"\w+|[^\w\s]")  # a word: letters/digits, or one punctuation mark


class AttentionMaps:
    """Averaged attention maps of one generation (see the module docstring for the API)."""

    def __init__(self, cross: dict[int, torch.Tensor], self_attention: dict[int, torch.Tensor], tokenizer=None,
                 prompts: list[str] | None = None, token_ids: torch.Tensor | None = None, steps: list[int] | None = None,
                 num_steps: int = 0, resolution_weights: dict[int, float] | None = None, token_reduce: str = "mean",
                 max_length: int | None = None, token_offset: int = 0,
                 heads: dict[int, dict[str, torch.Tensor]] | None = None) -> None:
        """``heads`` (auto aggregation): per resolution, per layer, (N, heads, queries, keys). ``max_length``: the tokenizer's limit as the pipeline applied it (default: the tokenizer's
        ``model_max_length``, at most the maps' token positions after ``token_offset``); ``token_offset``:
        the position of this tokenizer's first token in the maps' text sequence (SD3's T5 part: 77)."""
        self._cross = cross  # res -> (N, T, h, w)
        self._self = self_attention  # res -> (N, hw, hw)
        self.tokenizer, self.prompts, self.token_ids = tokenizer, prompts, token_ids
        self.steps, self.num_steps = steps or [], num_steps
        self.resolution_weights, self.token_reduce = resolution_weights, token_reduce
        self.max_length, self.token_offset = max_length, token_offset
        self.heads = heads or {}
        self._auto: dict[tuple, tuple[torch.Tensor, dict[str, torch.Tensor]]] = {}
        self.num_samples = next(iter({**cross, **self_attention}.values())).shape[0]
        self._prompts: dict[int, _Prompt] = {}

    def __len__(self) -> int:
        return self.num_samples

    @property
    def cross_resolutions(self) -> list[int]:
        return sorted(self._cross, reverse=True)

    @property
    def self_resolutions(self) -> list[int]:
        return sorted(self._self, reverse=True)

    # -- raw maps -----------------------------------------------------------------------------
    def cross(self, i: int, resolution: int, focus: Sequence[int] | None = None) -> torch.Tensor:
        """(tokens, h, w) cross-attention probabilities of sample ``i`` at ``resolution``. With auto aggregation,
        heads and layers weighted from the maps of the token positions ``focus`` (default: every word)."""
        mean = self._get(self._cross, "cross", i, resolution)
        if resolution not in self.heads:
            return mean
        return self._weighted(i, resolution, focus)[0].T.reshape(mean.shape)

    def grid(self, resolution: int) -> tuple[int, int]:
        """(h, w) of the cross maps at ``resolution`` (a transformer's patch grid need not be square)."""
        return tuple(self._get(self._cross, "cross", 0, resolution).shape[-2:])

    def head_weights(self, i: int, focus: Sequence[int] | None = None) -> dict[int, dict[str, list[float]]]:
        """Auto aggregation's choice for sample ``i``: per resolution, per layer, the weight of each head (all sum
        to 1 at a resolution); empty with the mean."""
        return {res: {name: [round(float(x), 6) for x in w] for name, w in self._weighted(i, res, focus)[1].items()}
                for res in sorted(self.heads, reverse=True)}

    def _weighted(self, i: int, resolution: int, focus: Sequence[int] | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(queries, keys) weighted map and the weights, cached per sample, resolution and focus."""
        self._check_sample(i)
        focus = tuple(sorted(set(focus))) if focus else self._default_focus(i)
        key = (i, resolution, focus)
        if key not in self._auto:
            layers = {name: h[i] for name, h in self.heads[resolution].items()}
            self._auto[key] = aggregate(layers, focus)
        return self._auto[key]

    def _default_focus(self, i: int) -> tuple[int, ...]:
        """Every word's token positions; every text position when the words are not known."""
        try:
            p = self._prompt(i)
        except RuntimeError:
            p = None
        positions = sorted({k for _, pos in p.words for k in pos if k < p.kept}) if p is not None else []
        return tuple(positions) or tuple(range(next(iter(self._cross.values())).shape[1]))

    def self_attention(self, i: int, resolution: int) -> torch.Tensor:
        """(h*w, h*w) self-attention of sample ``i``; row q is where pixel q attends."""
        return self._get(self._self, "self", i, resolution)

    def _get(self, table: dict, kind: str, i: int, resolution: int) -> torch.Tensor:
        self._check_sample(i)
        if resolution not in table:
            raise KeyError(f"no {kind}-attention at resolution {resolution}; captured: {sorted(table, reverse=True)} "
                           f"(set capture.{kind}_resolutions)")
        return table[resolution][i]

    def aggregate(self, i: int, size: int | tuple[int, int] | None = None, weights: dict[int, float] | None = None,
                  focus: Sequence[int] | None = None) -> torch.Tensor:
        """(tokens, S, S): cross maps of every weighted resolution, upsampled bilinearly to ``size``
        (default: the largest captured) and averaged with ``weights`` (default: the spec's, else equal).
        ``focus``: the token positions auto aggregation weighs heads by (see :meth:`cross`)."""
        weights = weights or self.resolution_weights or {r: 1.0 for r in self._cross}
        unknown = sorted(set(weights) - set(self._cross))
        if unknown:
            raise KeyError(f"weights name resolutions {unknown} that were not captured; captured: {self.cross_resolutions}")
        if not self._cross:
            raise KeyError("no cross-attention was captured (capture.cross_resolutions is empty)")
        if size is None:
            size = self._cross[max(weights, key=lambda r: r)].shape[-2:]
        size = (size, size) if isinstance(size, int) else tuple(size)
        total = sum(weights.values())
        out = None
        for res, w in weights.items():
            if w == 0:
                continue
            m = self.cross(i, res, focus)
            up = m if tuple(m.shape[-2:]) == size else F.interpolate(m[None], size=size, mode="bilinear", align_corners=False)[0]
            out = up * (w / total) if out is None else out + up * (w / total)
        return out

    # -- words --------------------------------------------------------------------------------
    def words(self, i: int) -> list[str]:
        """The words of sample ``i``'s prompt that reached the model."""
        p = self._prompt(i)
        return [w for w, pos in p.words if pos[-1] < p.kept]

    def truncated(self, i: int) -> bool:
        """True when sample ``i``'s prompt was longer than the tokenizer's limit (77 tokens for CLIP). Without
        the prompt texts, True when the encoded ids fill every position (it may have been cut)."""
        return self._prompt(i).truncated

    def token_positions(self, i: int, word: str, occurrence: str = "all") -> list[int]:
        """Token positions in the maps' text sequence (0 = CLIP's BOS) of ``word`` (one or more words) in
        the prompt: of every occurrence, or of the ``"first"`` / ``"last"`` (in append mode the class prompt is last)."""
        p = self._prompt(i)
        query = [w.casefold() for w in _WORD.findall(word)]
        if not query:
            raise WordLookupError(f"empty word {word!r}")
        names = [w.casefold() for w, _ in p.words]
        found = [[pos for j in range(len(query)) for pos in p.words[s + j][1]]
                 for s in range(len(names) - len(query) + 1) if names[s:s + len(query)] == query]
        kept = [occ for occ in found if occ[-1] < p.kept]
        if occurrence not in ("all", "first", "last"):
            raise ValueError(f"occurrence must be 'all', 'first' or 'last', got {occurrence!r}")
        if occurrence != "all":
            kept = kept[:1] if occurrence == "first" else kept[-1:]
        if not kept:
            if found:
                raise WordLookupError(f"{word!r} of sample {i} was cut off: the prompt has {p.tokens} tokens but the "
                                      f"text encoder keeps {p.capacity}; shorten the prompt or put class words first")
            cut = (f" (the prompt fills all {p.capacity} tokens: it may have been cut off; pass rec.maps(prompts=...) to know)"
                   if p.truncated else "")
            raise WordLookupError(f"{word!r} is not in the prompt of sample {i}{cut}; its words are: {self.words(i)}")
        return sorted({pos for occ in kept for pos in occ})

    def word_map(self, i: int, word: str, size: int | tuple[int, int] | None = None, reduce: str | None = None,
                 occurrence: str = "all") -> torch.Tensor:
        """(S, S) aggregated map of ``word``, its tokens reduced with ``reduce`` (default: the spec's)."""
        positions = self.token_positions(i, word, occurrence)
        return self.reduce_tokens(self.aggregate(i, size, focus=positions)[positions], reduce)

    def class_maps(self, i: int, class_words: dict[str, str], size: int | tuple[int, int] | None = None,
                   occurrence: str = "all") -> torch.Tensor:
        """(C, S, S): the word map of each class's word, in the dict's order (auto aggregation: heads weighted
        by the maps of these words)."""
        positions = [self.token_positions(i, w, occurrence) for w in class_words.values()]
        aggregated = self.aggregate(i, size, focus=[k for pos in positions for k in pos])  # once for all classes
        return torch.stack([self.reduce_tokens(aggregated[pos]) for pos in positions])

    def reduce_tokens(self, maps: torch.Tensor, reduce: str | None = None) -> torch.Tensor:
        """(tokens of one word, ...) -> one map, with ``reduce`` (default: the spec's ``token_reduce``)."""
        reduce = reduce or self.token_reduce
        if reduce == "mean":
            return maps.mean(0)
        if reduce == "max":
            return maps.amax(0)
        if reduce == "sum":
            return maps.sum(0)
        raise ValueError(f"reduce must be 'mean', 'max' or 'sum', got {reduce!r}")

    # -- prompts ------------------------------------------------------------------------------
    def _check_sample(self, i: int) -> None:
        if not 0 <= i < self.num_samples:
            raise IndexError(f"sample {i} out of range: the batch has {self.num_samples} samples")

    def _prompt(self, i: int) -> _Prompt:
        self._check_sample(i)
        if i in self._prompts:
            return self._prompts[i]
        tok = self.tokenizer
        if tok is None or (self.prompts is None and self.token_ids is None):
            raise RuntimeError("look-up by word needs the prompts: the pipeline had no tokenizer/text encoder call to "
                               "record (prompt_embeds?); pass them: rec.maps(prompts=[...])")
        lead, trail = _special_layout(tok)
        limit = self._limit()
        kept, capacity = limit - trail, limit - trail - lead
        ids = self.token_ids[i].tolist() if self.token_ids is not None else None
        if self.prompts is not None and (ids is None or _encodes_as(tok, self.prompts[i], ids)):
            text, spans = _text_spans(tok, self.prompts[i], lead)
            if ids is not None and getattr(tok, "padding_side", "right") == "left":  # GLM-4 (CogView4): padding first
                shift = max(len(ids) - len(tok(self.prompts[i], truncation=False).input_ids), 0)
                spans = [(k + shift, s, e) for k, s, e in spans]
            tokens, truncated = len(spans), len(spans) > capacity
        else:
            text, spans = _decoded_spans(tok, ids, lead)  # the pipeline changed the text (lower-cased it, prefixed it)
            # without the text, ids that fill every slot may have been cut
            tokens = len(spans)
            truncated = tokens >= capacity
        off = self.token_offset
        words = [(w, [off + k for k in pos]) for w, pos in _group_words(text, spans)]
        p = _Prompt(words=words, tokens=tokens, capacity=capacity, kept=off + kept, truncated=truncated)
        self._prompts[i] = p
        return p

    def _limit(self) -> int:
        """Token positions the pipeline kept for this tokenizer (its max_length)."""
        if self.max_length:
            return self.max_length
        limit = self.tokenizer.model_max_length
        if self._cross:
            limit = min(limit, next(iter(self._cross.values())).shape[1] - self.token_offset)
        return limit


def _special_layout(tokenizer) -> tuple[int, int]:
    """How many special tokens the tokenizer puts before and after a text: CLIP (1, 1), T5 (0, 1), Gemma (1, 0)."""
    mask = tokenizer("a", add_special_tokens=True, return_special_tokens_mask=True)["special_tokens_mask"]
    content = [k for k, m in enumerate(mask) if not m]
    return content[0], len(mask) - content[-1] - 1


def _encodes_as(tokenizer, text: str, ids: list[int]) -> bool:
    """Does ``text`` encode (padded, truncated) to the ids the text encoder saw?"""
    try:
        return tokenizer(text, padding="max_length", max_length=len(ids), truncation=True).input_ids == ids
    except ValueError:  # no padding token
        enc = tokenizer(text, max_length=len(ids), truncation=True).input_ids
        return enc == ids[: len(enc)]


def _text_spans(tokenizer, text: str, lead: int) -> tuple[str, list[tuple[int, int, int]]]:
    """(text, [(position, start, end)]) of every content token of ``text``, untruncated: character offsets
    from a fast tokenizer, else the spans of the decoded ids."""
    if not getattr(tokenizer, "is_fast", False):
        return _decoded_spans(tokenizer, tokenizer(text, truncation=False).input_ids, lead)
    enc = tokenizer(text, truncation=False, return_offsets_mapping=True, return_special_tokens_mask=True)
    spans = [(k, s, e) for k, ((s, e), special) in enumerate(zip(enc["offset_mapping"], enc["special_tokens_mask"])) if not special]
    return text, spans


def _decoded_spans(tokenizer, ids: list[int], lead: int) -> tuple[str, list[tuple[int, int, int]]]:
    """(decoded text, [(position, start, end)]) of the content tokens of encoded ``ids`` (specials and padding,
    also left padding, dropped): the span of token k is what decoding it adds to the tokens before it."""
    pad = tokenizer.pad_token_id
    start = 0
    while start < len(ids) and ids[start] == pad and pad != tokenizer.eos_token_id:
        start += 1
    start += lead
    eos = tokenizer.eos_token_id  # the text ends at EOS (T5, CLIP), else at the padding (Gemma adds no EOS)
    stop = eos if eos in ids[start:] else pad
    end = ids.index(stop, start) if stop in ids[start:] else len(ids)
    content = ids[start:end]
    text = tokenizer.decode(content)
    spans, prev = [], 0
    for k in range(len(content)):
        cur = min(len(tokenizer.decode(content[: k + 1])), len(text))
        spans.append((start + k, prev, max(prev, cur)))
        prev = max(prev, cur)
    return text, spans


def _group_words(text: str, spans: list[tuple[int, int, int]]) -> list[tuple[str, list[int]]]:
    """Words of ``text`` with the positions of the tokens that overlap them; a token over whitespace only
    (sentencepiece's lone '▁') belongs to the word after it."""
    words = [(m.group(), m.start(), m.end()) for m in _WORD.finditer(text)]
    ends = [e for _, _, e in words]
    positions: list[list[int]] = [[] for _ in words]
    pending: list[int] = []
    for pos, s, e in spans:
        j = bisect_right(ends, s)  # the first word ending after the token starts
        hits = []
        while s < e and j < len(words) and words[j][1] < e:
            hits.append(j)
            j += 1
        if not hits:
            pending.append(pos)
            continue
        positions[hits[0]].extend(pending)
        pending = []
        for j in hits:
            positions[j].append(pos)
    return [(w, sorted(p)) for (w, _, _), p in zip(words, positions) if p]

"""The result of a capture: :class:`AttentionMaps`, per sample, on the CPU.

    maps.words(i)                          # the words of sample i's (encoded) prompt
    maps.cross(i, 16)                      # (77 tokens, 16, 16): per-token cross-attention
    maps.aggregate(i, size=64)             # (77, 64, 64): resolutions upsampled and weighted
    maps.word_map(i, "potted plant", 64)   # (64, 64): all tokens of the words, reduced
    maps.class_maps(i, {"person": "man", "horse": "horse"}, 64)   # (2, 64, 64)
    maps.self_attention(i, 32)             # (1024, 1024): rows are query pixels
    maps.truncated(i)                      # was the prompt cut at 77 tokens?

Cross maps are probabilities over the 77 token positions (they sum to 1 over tokens at every pixel),
averaged over layers and recorded steps. Look-up by word uses the pipeline's tokenizer: a word the
tokenizer splits ("aeroplane" -> "ae ro plane") maps to all its tokens; a word that is not in the
prompt, or that was cut off by the 77-token limit, raises :class:`WordLookupError`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


class WordLookupError(KeyError):
    """A word is not in a sample's prompt, or was lost to truncation; the message says which."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass
class _Prompt:
    ids: list[int]  # all token ids with BOS/EOS, untruncated when the text is known
    words: list[tuple[str, list[int]]]  # (word, token positions)
    kept: int  # positions < kept reach the model (max_length - 1: the last slot holds EOS)
    truncated: bool


class AttentionMaps:
    """Averaged attention maps of one generation (see the module docstring for the API)."""

    def __init__(self, cross: dict[int, torch.Tensor], self_attention: dict[int, torch.Tensor], tokenizer=None,
                 prompts: list[str] | None = None, token_ids: torch.Tensor | None = None, steps: list[int] | None = None,
                 num_steps: int = 0, resolution_weights: dict[int, float] | None = None, token_reduce: str = "mean") -> None:
        self._cross = cross  # res -> (N, T, h, w)
        self._self = self_attention  # res -> (N, hw, hw)
        self.tokenizer, self.prompts, self.token_ids = tokenizer, prompts, token_ids
        self.steps, self.num_steps = steps or [], num_steps
        self.resolution_weights, self.token_reduce = resolution_weights, token_reduce
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
    def cross(self, i: int, resolution: int) -> torch.Tensor:
        """(tokens, h, w) cross-attention probabilities of sample ``i`` at ``resolution``."""
        return self._get(self._cross, "cross", i, resolution)

    def self_attention(self, i: int, resolution: int) -> torch.Tensor:
        """(h*w, h*w) self-attention of sample ``i``; row q is where pixel q attends."""
        return self._get(self._self, "self", i, resolution)

    def _get(self, table: dict, kind: str, i: int, resolution: int) -> torch.Tensor:
        self._check_sample(i)
        if resolution not in table:
            raise KeyError(f"no {kind}-attention at resolution {resolution}; captured: {sorted(table, reverse=True)} "
                           f"(set capture.{kind}_resolutions)")
        return table[resolution][i]

    def aggregate(self, i: int, size: int | tuple[int, int] | None = None, weights: dict[int, float] | None = None) -> torch.Tensor:
        """(tokens, S, S): cross maps of every weighted resolution, upsampled bilinearly to ``size``
        (default: the largest captured) and averaged with ``weights`` (default: the spec's, else equal)."""
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
            m = self.cross(i, res)
            up = m if tuple(m.shape[-2:]) == size else F.interpolate(m[None], size=size, mode="bilinear", align_corners=False)[0]
            out = up * (w / total) if out is None else out + up * (w / total)
        return out

    # -- words --------------------------------------------------------------------------------
    def words(self, i: int) -> list[str]:
        """The words of sample ``i``'s prompt that reached the model."""
        p = self._prompt(i)
        return [w for w, pos in p.words if pos[-1] < p.kept]

    def truncated(self, i: int) -> bool:
        """True when sample ``i``'s prompt was longer than the tokenizer's limit (77 tokens). Without
        the prompt texts, True when the encoded ids fill every position (it may have been cut)."""
        return self._prompt(i).truncated

    def token_positions(self, i: int, word: str, occurrence: str = "all") -> list[int]:
        """Token positions (0 = BOS) of ``word`` (one or more words) in the prompt: of every
        occurrence, or of the ``"first"`` / ``"last"`` (in append mode the class prompt is last)."""
        p = self._prompt(i)
        query = [w for w, _ in _split_words(self.tokenizer, self.tokenizer(word, add_special_tokens=False).input_ids)]
        if not query:
            raise WordLookupError(f"empty word {word!r}")
        names = [w for w, _ in p.words]
        found = [[pos for j in range(len(query)) for pos in p.words[s + j][1]]
                 for s in range(len(names) - len(query) + 1) if names[s:s + len(query)] == query]
        kept = [occ for occ in found if occ[-1] < p.kept]
        if occurrence not in ("all", "first", "last"):
            raise ValueError(f"occurrence must be 'all', 'first' or 'last', got {occurrence!r}")
        if occurrence != "all":
            kept = kept[:1] if occurrence == "first" else kept[-1:]
        if not kept:
            if found:
                raise WordLookupError(f"{word!r} of sample {i} was cut off: the prompt has {len(p.ids) - 2} tokens but the "
                                      f"text encoder keeps {p.kept - 1}; shorten the prompt or put class words first")
            cut = " (the prompt fills all 77 tokens: it may have been cut off; pass rec.maps(prompts=...) to know)" if p.truncated else ""
            raise WordLookupError(f"{word!r} is not in the prompt of sample {i}{cut}; its words are: {self.words(i)}")
        return sorted({pos for occ in kept for pos in occ})

    def word_map(self, i: int, word: str, size: int | tuple[int, int] | None = None, reduce: str | None = None,
                 occurrence: str = "all") -> torch.Tensor:
        """(S, S) aggregated map of ``word``, its tokens reduced with ``reduce`` (default: the spec's)."""
        positions = self.token_positions(i, word, occurrence)
        return self._reduce(self.aggregate(i, size)[positions], reduce)

    def class_maps(self, i: int, class_words: dict[str, str], size: int | tuple[int, int] | None = None,
                   occurrence: str = "all") -> torch.Tensor:
        """(C, S, S): the word map of each class's word, in the dict's order."""
        aggregated = self.aggregate(i, size)  # once for all classes
        return torch.stack([self._reduce(aggregated[self.token_positions(i, w, occurrence)]) for w in class_words.values()])

    def _reduce(self, maps: torch.Tensor, reduce: str | None = None) -> torch.Tensor:
        """Tokens of one word -> one map."""
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
        max_len = tok.model_max_length
        if self.prompts is not None:
            ids = tok(self.prompts[i], truncation=False).input_ids
        else:
            ids = self.token_ids[i].tolist()
            end = ids.index(tok.eos_token_id, 1) if tok.eos_token_id in ids[1:] else len(ids) - 1
            ids = ids[: end + 1]
        # without the text, ids that fill every slot may have been cut
        truncated = len(ids) > max_len if self.prompts is not None else len(ids) >= max_len
        p = _Prompt(ids=ids, words=[(w, [1 + k for k in pos]) for w, pos in _split_words(tok, ids[1:-1])], kept=max_len - 1,
                    truncated=truncated)
        self._prompts[i] = p
        return p


def _split_words(tokenizer, ids: list[int]) -> list[tuple[str, list[int]]]:
    """Group CLIP BPE tokens into words: a word ends at a token with the '</w>' suffix."""
    groups, current = [], []
    for k, tok in enumerate(tokenizer.convert_ids_to_tokens(ids)):
        current.append(k)
        if tok.endswith("</w>"):
            groups.append(current)
            current = []
    if current:
        groups.append(current)
    return [(tokenizer.decode([ids[k] for k in g]).replace(" ", ""), g) for g in groups]

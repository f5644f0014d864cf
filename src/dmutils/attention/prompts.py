"""Class prompts (Dataset Diffusion): the class names of an image as words the maps can be read from.

- ``append``: the class prompt is appended to the caption, "a man riding a horse; person horse",
  and the image is generated from the whole text; maps are read at the appended class words.
- ``cross_attention``: the caption alone generates the image; the class prompt "person horse" is
  encoded separately and only used to compute maps (``capture(pipe, spec, class_prompts=[...])``).
- ``none``: the caption as it is.
"""
from __future__ import annotations

from collections.abc import Sequence

MODES = ("none", "append", "cross_attention")


def class_prompt(class_words: Sequence[str]) -> str:
    """'person horse': the class words joined by spaces, each once, in order."""
    words = [w.strip() for w in class_words if w and w.strip()]
    if not words:
        raise ValueError("a class prompt needs at least one class word")
    return " ".join(dict.fromkeys(words))


def append_class_prompt(caption: str, class_words: Sequence[str], separator: str = "; ") -> str:
    """'a man riding a horse; person horse'."""
    return caption.rstrip().rstrip(";") + separator + class_prompt(class_words)


def build_prompts(captions: Sequence[str], class_words: Sequence[Sequence[str]], mode: str = "append") -> tuple[list[str], list[str] | None]:
    """(prompts for the pipeline, class_prompts for :func:`capture` or None) for ``params.prompts.class_prompt``."""
    if mode not in MODES:
        raise ValueError(f"class_prompt mode must be one of {MODES}, got {mode!r}")
    if len(captions) != len(class_words):
        raise ValueError(f"{len(captions)} captions but {len(class_words)} class word lists: give one list per caption")
    if mode == "append":
        return [append_class_prompt(c, w) for c, w in zip(captions, class_words)], None
    if mode == "cross_attention":
        return list(captions), [class_prompt(w) for w in class_words]
    return list(captions), None

"""Prompt sources: which text generates sample ``i``, which classes it names, and which word's
attention map is read for each class.

Three sources (``params.prompts.source``):

- ``templates``: ``"a {0} and a {1}"`` filled with ``k`` distinct classes (``k`` drawn from
  ``prompts.classes_per_image``), each written as its name, a synonym or a sub-class word;
- ``captions``: a caption file in Dataset Diffusion's JSON format, a list of
  ``{"filename", "caption", "class_prompt"}``; ``class_prompt`` names the classes ("person horse"),
  its captions may already end in "; person horse" (then nothing is appended twice);
- ``retrieval``: a local caption corpus, one caption a line; captions that mention a class (its name,
  a synonym or a sub-class word, plural 's'/'es' allowed) are kept, the offline form of DiffuMask's
  retrieval-based prompts.

``prompts.class_prompt``: ``append`` writes "a man riding a horse; person horse" and reads each map at
the appended class name; ``none`` reads the word the caption itself uses; ``cross_attention`` keeps
the caption as the prompt and hands the class names to the capture as a separate class prompt.
The capture reads a class word at every occurrence in the prompt (tokens reduced by capture.token_reduce).

Everything about sample ``i`` derives from ``(run.seed, i)`` alone, so the same params give the same
sample whatever the batch size, the sharding or the order in which samples are made.
"""
from __future__ import annotations

import hashlib
import json
import re
import string
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from dmutils.config import ClassSpec, Params, PromptParams
from dmutils.errors import ParamsError


@dataclass(frozen=True)
class SampleSpec:
    """One sample to generate: ``prompt`` makes the image; ``words[c]`` is the word whose map labels class ``c``."""

    index: int
    id: str
    prompt: str
    classes: tuple[str, ...]
    words: dict[str, str] = field(hash=False)
    seed: int
    class_prompt: str | None = None  # only for class_prompt='cross_attention': the text the maps come from
    source: str | None = None  # caption file 'filename' or corpus line number

    def to_dict(self) -> dict:
        d = asdict(self)
        d["classes"] = list(self.classes)
        return d


def hash_int(*parts: object) -> int:
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def sample_seed(run_seed: int, index: int) -> int:
    """The generation seed of sample ``index``: a hash, so neighbouring samples get unrelated noise."""
    return hash_int("dmutils-sample", run_seed, index) % (2**31 - 1)


def sample_uniform(run_seed: int, index: int, purpose: str) -> float:
    """A uniform [0, 1) number fixed by (run seed, index, purpose), e.g. for the train/val split."""
    return hash_int("dmutils-uniform", purpose, run_seed, index) / 2**64


def sample_id(index: int) -> str:
    return f"syn_{index:06d}"


# ---------------------------------------------------------------------------------------------
# Class words
# ---------------------------------------------------------------------------------------------
def class_words(spec: ClassSpec, synonyms: bool = True, subclasses: bool = True) -> list[str]:
    """The words a prompt may use for a class: its name first."""
    return [spec.name, *(spec.synonyms if synonyms else []), *(spec.subclasses if subclasses else [])]


def template_words(spec: ClassSpec, prompts: PromptParams) -> list[str]:
    """The words a template prompt may draw for a class, as ``prompts.use_synonyms`` / ``use_subclasses`` allow."""
    return class_words(spec, prompts.use_synonyms, prompts.use_subclasses)


def _phrase_table(classes: list[ClassSpec]) -> dict[str, str]:
    """lower-case phrase -> class name, over names, synonyms and sub-classes."""
    table: dict[str, str] = {}
    for c in classes:
        for w in class_words(c):
            table.setdefault(w.lower(), c.name)
    return table


def parse_class_prompt(text: str, classes: list[ClassSpec]) -> list[str]:
    """'tv monitor dining table' -> ['tv monitor', 'dining table']: greedy longest match of class
    phrases (multi-word names allowed), duplicates dropped. Unknown words raise ParamsError."""
    table = _phrase_table(classes)
    tokens = text.lower().split()
    longest = max((len(p.split()) for p in table), default=1)
    out: list[str] = []
    i = 0
    while i < len(tokens):
        for n in range(min(longest, len(tokens) - i), 0, -1):
            name = table.get(" ".join(tokens[i : i + n]))
            if name is not None:
                if name not in out:
                    out.append(name)
                i += n
                break
        else:
            raise ParamsError(
                f"class prompt {text!r}: {tokens[i]!r} is not a class, synonym or sub-class word; "
                f"classes: {', '.join(c.name for c in classes)} (add it to a class's synonyms in params.classes)"
            )
    return out


def _word_pattern(words: list[str]) -> re.Pattern:
    alts = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
    return re.compile(rf"\b({alts})(?:e?s)?\b", re.IGNORECASE)


def _last(text: str, spec: ClassSpec) -> re.Match | None:
    hits = list(_word_pattern(class_words(spec)).finditer(text))
    return hits[-1] if hits else None


def find_class_word(text: str, spec: ClassSpec) -> str | None:
    """The last word (as written) in ``text`` that names ``spec``, plural allowed; None if absent."""
    m = _last(text, spec)
    return m.group(0) if m else None


# ---------------------------------------------------------------------------------------------
# Sources: each yields (text, class names, {class: word in text or None}, source label)
# ---------------------------------------------------------------------------------------------
_Base = tuple[str, list[str], dict[str, str | None], str | None]


def _template_slots(template: str) -> int:
    fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    bad = [f for f in fields if not f.isdigit()]
    if bad:
        raise ParamsError(f"prompt template {template!r}: use positional fields '{{0}}', '{{1}}', ..., not {bad}")
    return len({int(f) for f in fields})


class TemplateSource:
    """Templates over the class list; sample ``i`` draws its class count, classes and words from (seed, i)."""

    def __init__(self, params: Params):
        self.classes, p = params.classes, params.prompts
        self.by_slots: dict[int, list[str]] = {}
        for t in p.templates:
            self.by_slots.setdefault(_template_slots(t), []).append(t)
        for k in p.classes_per_image:
            if k > len(self.classes):
                raise ParamsError(f"prompts.classes_per_image has {k} but there are only {len(self.classes)} classes")
            if k not in self.by_slots:
                raise ParamsError(
                    f"prompts.classes_per_image has {k} but no template has {k} class slots; "
                    f"templates by slot count: {self.by_slots} (add one like 'a {{0}} and a {{1}}')"
                )
        self.counts = p.classes_per_image
        self.prompts = p
        self.run_seed = params.run.seed

    def __call__(self, index: int) -> _Base:
        rng = np.random.default_rng([hash_int("dmutils-prompt", self.run_seed, index) % 2**63])
        k = int(rng.choice(self.counts))
        picked = [self.classes[j] for j in rng.choice(len(self.classes), size=k, replace=False)]
        words = [str(rng.choice(template_words(c, self.prompts))) for c in picked]
        tpls = self.by_slots[k]
        text = tpls[int(rng.integers(len(tpls)))].format(*words)
        return text, [c.name for c in picked], {c.name: w for c, w in zip(picked, words)}, None


def read_caption_file(path: Path, classes: list[ClassSpec]) -> list[_Base]:
    """Dataset Diffusion's caption JSON; every class word is checked here, before any compute."""
    try:
        rows = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ParamsError(f"prompts.caption_file {path} not found") from None
    except json.JSONDecodeError as e:
        raise ParamsError(f"prompts.caption_file {path}: not valid JSON ({e})") from None
    if not isinstance(rows, list) or not rows:
        raise ParamsError(f"prompts.caption_file {path}: expected a non-empty JSON list of "
                          "{'filename', 'caption', 'class_prompt'} objects")
    out: list[_Base] = []
    for n, row in enumerate(rows):
        missing = {"caption", "class_prompt"} - set(row if isinstance(row, dict) else ())
        if missing:
            raise ParamsError(f"prompts.caption_file {path}: entry {n} lacks {sorted(missing)}; "
                              "each entry needs 'filename', 'caption' and 'class_prompt'")
        try:
            names = parse_class_prompt(row["class_prompt"], classes)
        except ParamsError as e:
            raise ParamsError(f"prompts.caption_file {path}, entry {n}: {e}") from None
        if not names:
            raise ParamsError(f"prompts.caption_file {path}, entry {n}: empty class_prompt")
        caption = row["caption"].strip()
        suffix = "; " + row["class_prompt"].strip()
        if caption.endswith(suffix):  # Dataset Diffusion's files carry the class prompt already
            caption = caption[: -len(suffix)].rstrip()
        by_name = {c.name: c for c in classes}
        out.append((caption, names, {c: find_class_word(caption, by_name[c]) for c in names}, row.get("filename", str(n))))
    return out


def read_corpus(path: Path, classes: list[ClassSpec], max_classes: int | None = None) -> list[_Base]:
    """Captions (one a line) that mention at least one class; classes listed in order of mention."""
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        raise ParamsError(f"prompts.corpus_file {path} not found") from None
    out: list[_Base] = []
    for n, line in enumerate(lines):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        found = sorted(((m.start(), c, m.group(0)) for c in classes for m in [_last(text, c)] if m), key=lambda t: t[0])
        if found and (max_classes is None or len(found) <= max_classes):
            out.append((text, [c.name for _, c, _ in found], {c.name: w for _, c, w in found}, f"line {n + 1}"))
    if not out:
        raise ParamsError(f"prompts.corpus_file {path}: no caption mentions any class or synonym of "
                          f"{', '.join(c.name for c in classes)}")
    return out


# ---------------------------------------------------------------------------------------------
# The sample specs
# ---------------------------------------------------------------------------------------------
class PromptPlan:
    """Maps a sample index to its :class:`SampleSpec`; bad sources fail when the plan is built."""

    def __init__(self, params: Params):
        self.params = params
        p = params.prompts
        if p.source == "templates":
            self._base = TemplateSource(params)
        else:
            attr = "caption_file" if p.source == "captions" else "corpus_file"
            file = getattr(p, attr)
            if not file:
                raise ParamsError(f"prompts.source is '{p.source}' but prompts.{attr} is not set; "
                                  f"set it, e.g. --set prompts.{attr}=path")
            path = params.resolve_path(file)
            rows = (read_caption_file(path, params.classes) if p.source == "captions"
                    else read_corpus(path, params.classes, max(p.classes_per_image)))
            if p.class_prompt == "none":
                for text, names, words, src in rows:
                    absent = [c for c in names if words[c] is None]
                    if absent:
                        raise ParamsError(f"{path} ({src}): caption {text!r} never writes class {absent} and "
                                          "prompts.class_prompt is 'none'; use 'append' or fix the caption")
            self._base = lambda i: rows[i % len(rows)]

    def __call__(self, index: int) -> SampleSpec:
        text, names, words, src = self._base(index)
        mode = self.params.prompts.class_prompt
        class_text = " ".join(names)
        if mode == "append":
            prompt, read = f"{text}; {class_text}", {c: c for c in names}
        elif mode == "cross_attention":
            prompt, read = text, {c: c for c in names}
        else:
            prompt, read = text, {c: str(words[c]) for c in names}
        return SampleSpec(index, sample_id(index), prompt, tuple(names), read, sample_seed(self.params.run.seed, index),
                          class_text if mode == "cross_attention" else None, src)

    def specs(self, indices) -> list[SampleSpec]:
        return [self(i) for i in indices]

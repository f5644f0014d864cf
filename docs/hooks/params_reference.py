"""MkDocs hook: the params reference page, generated from the pydantic schema at build time.

``docs/params-reference.md`` holds a hand-written introduction and the marker line below; this hook replaces
the marker with one table per section of :class:`dmutils.config.Params` (key, type, default, description),
walking ``model_fields`` recursively, so the page always matches the schema and is never edited by hand.
Registered under ``hooks:`` in ``mkdocs.yml``.
"""
from __future__ import annotations

import html
import json
import types
import typing
from typing import Any, Literal

from pydantic import BaseModel
from pydantic_core import PydanticUndefined, to_jsonable_python

MARKER = "<!-- params-reference -->"
PAGE = "params-reference.md"


def _submodel(annotation: Any) -> type[BaseModel] | None:
    """The section class of a field whose type is a pydantic model (or a list of them)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (list, tuple):
        args = typing.get_args(annotation)
        if len(args) == 1 and isinstance(args[0], type) and issubclass(args[0], BaseModel):
            return args[0]
    return None


def type_name(annotation: Any) -> str:
    """A short, readable type: ``int | None``, ``'mean' | 'max'``, ``list[int]``, ``tuple[float, float]``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join("None" if a is type(None) else type_name(a) for a in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(type_name(a) for a in args)}]"
    if annotation is Any:
        return "any"
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation)


def _constraints(field) -> str:
    """Bounds from ``Field(ge=..., lt=...)`` and ``pattern``, as text: ``>= 1``, ``< 1``."""
    out = []
    for meta in field.metadata:
        for attr, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"), ("pattern", "matches")):
            value = getattr(meta, attr, None)
            if value is not None:
                out.append(f"`{sign} {value}`")
    return ", ".join(out)


def default_text(field) -> str:
    """The default as a params file would write it (JSON is YAML): ``"toy"``, ``[16]``, ``true``, ``null``."""
    if field.default_factory is not None:
        value = field.default_factory()
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if isinstance(value, BaseModel):
        return "(section)"
    return json.dumps(to_jsonable_python(value))


def _cell(text: str) -> str:
    """Markdown table cell text: newlines folded, HTML special characters and pipes escaped."""
    return html.escape(" ".join(str(text).split()), quote=False).replace("|", "\\|")


def _code(text: str) -> str:
    """A code span in a table cell (Python-Markdown's tables do not split cells at pipes inside code spans)."""
    return f"`{' '.join(str(text).split())}`" if text else ""


def sections(model: type[BaseModel], prefix: str = "") -> list[tuple[str, type[BaseModel], list[tuple[str, Any]]]]:
    """``[(dotted section name, model class, [(field name, FieldInfo), ...])]``, depth first, in schema order.
    Fields that are sections themselves are listed in their parent (as "(section)") and get their own table."""
    rows = [(name, field) for name, field in model.model_fields.items()]
    out = [(prefix, model, rows)]
    for name, field in rows:
        sub = _submodel(field.annotation)
        if sub is not None:
            is_list = typing.get_origin(field.annotation) in (list, tuple)
            out += sections(sub, f"{prefix}{name}{'[]' if is_list else ''}.")
    return out


def render(model: type[BaseModel] | None = None) -> str:
    if model is None:
        from dmutils.config import Params

        model = Params
    parts = []
    for prefix, cls, rows in sections(model):
        if not prefix:  # the top level: its fields are the sections, each with its own table below
            parts.append("## Sections\n")
            parts.append("| section | what it holds |\n| --- | --- |")
            for name, field in rows:
                sub = _submodel(field.annotation)
                doc = (sub.__doc__ or "").strip().splitlines()[0] if sub else ""
                parts.append(f"| [`{name}`](#{name}) | {_cell(field.description or doc)} |")
            parts.append("")
            continue
        title = prefix.rstrip(".")
        anchor = title.replace(".", "").replace("[]", "")
        parts.append(f"## `{title}` {{#{anchor}}}\n")
        doc = " ".join((cls.__doc__ or "").split())
        if doc:
            parts.append(f"{doc}\n")
        parts.append("| key | type | default | description |\n| --- | --- | --- | --- |")
        for name, field in rows:
            sub = _submodel(field.annotation)
            kind = f"section `{prefix}{name}`" if sub and not typing.get_origin(field.annotation) else type_name(field.annotation)
            limits = _constraints(field)
            desc = field.description or ((sub.__doc__ or "").strip().splitlines()[0] if sub else "")
            desc = _cell(desc)
            if limits:  # code spans already
                desc = f"{desc} ({limits})" if desc else limits
            parts.append(f"| `{prefix}{name}` | {_code(kind) if not kind.startswith('section') else kind} | "
                         f"{_code(default_text(field))} | {desc} |")
        parts.append("")
    return "\n".join(parts)


def on_page_markdown(markdown: str, page, config, files) -> str:  # mkdocs hook
    if page.file.src_uri != PAGE:
        return markdown
    if MARKER not in markdown:
        raise ValueError(f"docs/{PAGE} must contain the line {MARKER!r}, which {__name__} replaces with the tables")
    return markdown.replace(MARKER, render())

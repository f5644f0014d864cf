"""Reading params: a YAML file, its ``extends`` chain (paths relative to the file), then command-line
overrides with dotted keys (``--set masks.tau=2``), validated against :mod:`dmutils.config.schema`.
Unknown keys and bad values raise :class:`~dmutils.errors.ParamsError` with a one-line message naming
the field and what is allowed, before any compute.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from dmutils.config.schema import Params
from dmutils.errors import ParamsError
from dmutils.paths import REPO_ROOT


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    path = path.resolve()
    if path in seen:
        raise ParamsError(f"{path}: 'extends' loops back to itself via {' -> '.join(map(str, seen))}")
    if not path.is_file():
        raise ParamsError(f"params file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: must hold a mapping of sections, got {type(data).__name__}")
    parent = data.pop("extends", None)
    if parent is None:
        return data
    base = _read_yaml((path.parent / parent), seen + (path,))
    return deep_merge(base, data)


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Merge ``over`` into a copy of ``base``; nested mappings merge, everything else replaces."""
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """``["masks.tau=2", "run.name=x"]`` -> nested dict; values are parsed as YAML scalars/lists."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ParamsError(f"override {item!r} must look like section.key=value, e.g. masks.tau=2")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.strip().split(".")
        if not all(parts):
            raise ParamsError(f"override {item!r} has an empty key part")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ParamsError(f"override {item!r} conflicts with another override of {p!r}")
        node[parts[-1]] = value
    return out


def _fields_of(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Valid field names at ``loc`` (the parent of an offending key)."""
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None:
            return []
        ann = field.annotation
        sub = next((a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if sub is None:
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                sub = ann
            else:
                return []
        model = sub
    return list(model.model_fields)


def _printable(text: str) -> str:
    """``text`` with control characters escaped (a key typed with a newline in it stays on the error's one line)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def explain(e: ValidationError, source: str) -> ParamsError:
    lines = []
    for err in e.errors():
        loc = tuple(err["loc"])
        dotted = _printable(".".join(str(p) for p in loc))
        if err["type"] == "extra_forbidden":
            valid = _fields_of(Params, loc[:-1])
            near = difflib.get_close_matches(str(loc[-1]), valid, n=1)
            hint = f"did you mean '{'.'.join(map(str, loc[:-1] + (near[0],)))}'?" if near else f"valid keys: {', '.join(valid)}"
            lines.append(f"unknown key '{dotted}' ({hint})")
        else:
            got = err.get("input")
            lines.append(f"'{dotted}' = {got!r} is not allowed: {err['msg']}")
    return ParamsError(f"{source}: " + "; ".join(lines))


def load_params(path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None) -> Params:
    """Read a params file (None = all defaults), apply ``extends`` and overrides, validate."""
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        p = Path(path)
        if not p.is_absolute() and not p.exists() and (REPO_ROOT / p).exists():
            p = REPO_ROOT / p
        data = _read_yaml(p)
        source = str(path)
    if overrides:
        over = overrides if isinstance(overrides, dict) else parse_overrides(overrides)
        data = deep_merge(data, over)
        source += " with overrides"
    try:
        return Params.model_validate(data)
    except ValidationError as e:
        raise explain(e, source) from None

"""The toy models' Hugging Face model cards (``models/<name>/README.md``) say what is true.

- the YAML front matter, read with ``huggingface_hub.ModelCard``, has the keys the Hub uses, matching the folder;
- the first ```python block runs as written (repo root as cwd) and makes a 64 px RGB image;
- every figure quoted as ``0.958 (path.json: key)`` is that JSON's value, to the digits written;
- every table whose first column names a JSON file holds that file's values under its ``key`` headers;
- the parameter counts are those of the loaded components;
- a ``{{figure:path.json:key}}`` placeholder is allowed only while its JSON does not exist yet.
"""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from dmutils.paths import REPO_ROOT

MODELS = ["toy-sd", "toy-sd3"]
REQUIRED_TAGS = {"toy", "synthetic", "segmentation", "diffusers"}
IMAGE_SIDE = 64

NUMBER = r"-?\d[\d,]*(?:\.\d+)?"
CITATION = re.compile(rf"(?P<value>{NUMBER}) \((?P<file>[\w./-]+\.json): (?P<key>[\w.]+)\)")
PLACEHOLDER = re.compile(r"\{\{figure:(?P<file>[\w./-]+\.json):(?P<key>[\w.]+)\}\}")


def card_path(name: str) -> Path:
    return REPO_ROOT / "models" / name / "README.md"


def card_text(name: str) -> str:
    return card_path(name).read_text(encoding="utf-8")


def json_file(rel: str) -> Path | None:
    """The results/summary file a card cites (repo-relative), where it is committed."""
    path = REPO_ROOT / rel
    return path if path.is_file() else None


def lookup(rel: str, key: str):
    path = json_file(rel)
    assert path is not None, f"cited file {rel} does not exist"
    value = json.loads(path.read_text())
    for part in key.split("."):
        assert isinstance(value, dict) and part in value, f"{rel} has no key {key!r}"
        value = value[part]
    return value


def same_figure(written: str, value) -> bool:
    """``written`` is ``value`` to the digits written (0.692 for 0.6915 or 0.6924; 12,000 for 12000)."""
    assert isinstance(value, (int, float)) and not isinstance(value, bool), f"{value!r} is not a number"
    text = written.replace(",", "")
    decimals = len(text.split(".")[1]) if "." in text else 0
    return math.isclose(float(text), value, abs_tol=0.5 * 10 ** -decimals + 1e-9)


def tables(text: str) -> list[list[list[str]]]:
    """Markdown tables as lists of rows of stripped cells (the |---| line dropped)."""
    out, rows = [], []
    for line in text.splitlines() + [""]:
        if line.lstrip().startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(re.fullmatch(r":?-+:?", c) for c in cells):
                rows.append(cells)
        elif rows:
            out.append(rows)
            rows = []
    return out


def code(cell: str) -> str | None:
    m = re.fullmatch(r"`([^`]+)`", cell)
    return m.group(1) if m else None


def model_index(name: str) -> dict:
    return json.loads((REPO_ROOT / "models" / name / "model_index.json").read_text())


@pytest.mark.parametrize("name", MODELS)
def test_front_matter_has_the_hub_keys(name):
    from huggingface_hub import ModelCard

    data = ModelCard.load(card_path(name)).data.to_dict()
    assert data.get("library_name") == "diffusers"
    assert data.get("pipeline_tag") == "text-to-image"
    tags = set(data.get("tags") or [])
    assert REQUIRED_TAGS <= tags, f"missing tags {REQUIRED_TAGS - tags}"
    assert model_index(name)["_class_name"] in tags, "the pipeline class is not among the tags"
    # The repository declares no licence (no LICENSE file, none in pyproject.toml): the card says 'other' and why.
    declared = any((REPO_ROOT / f).exists() for f in ("LICENSE", "LICENSE.md", "LICENSE.txt", "COPYING")) or \
        re.search(r"^license\s*=", (REPO_ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    if declared:
        assert data.get("license") in {"mit", "apache-2.0"}, "the repository now has a licence: put its id in the card"
    else:
        assert data.get("license") == "other"
        assert re.search(r"^## Licen[cs]e", card_text(name), re.MULTILINE), "license: other needs a Licence section saying why"


@pytest.mark.parametrize("name", MODELS)
def test_loading_snippet_runs_as_written_and_makes_a_64px_image(name, tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", card_text(name), re.DOTALL)
    assert blocks, "no ```python block"
    snippet = blocks[0]
    assert f'from_pretrained("models/{name}"' in snippet
    # The snippet as written, then a check that its `image` is what it says.
    out = tmp_path / "image.png"
    script = snippet + f"\nimage.save({str(out)!r})\n"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)  # plain diffusers: the snippet needs nothing from this repository
    r = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    from PIL import Image, ImageStat

    image = Image.open(out)
    assert image.size == (IMAGE_SIDE, IMAGE_SIDE) and image.mode == "RGB"
    assert max(ImageStat.Stat(image).stddev) > 5, "a flat image: the pipeline did not draw anything"
    assert f"({IMAGE_SIDE}, {IMAGE_SIDE})" in r.stdout  # the snippet's own print of image.size


@pytest.mark.parametrize("name", MODELS)
def test_quoted_figures_are_those_of_the_cited_json(name):
    text = card_text(name)
    cited = list(CITATION.finditer(text))
    assert cited, "no cited figures"
    wrong = [f"{m.group(0)}: the file has {lookup(m['file'], m['key'])!r}" for m in cited
             if not same_figure(m["value"], lookup(m["file"], m["key"]))]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("name", MODELS)
def test_tables_keyed_by_json_files_hold_their_values(name):
    checked = 0
    for rows in tables(card_text(name)):
        keys = [code(c) for c in rows[0][1:]]
        for row in rows[1:]:
            rel = code(row[0])
            if not (rel and rel.endswith(".json")):
                continue
            for key, cell in zip(keys, row[1:]):
                assert key, f"a table of {rel} has a column without a `key` header"
                if cell in ("—", "-"):  # the file has no such key (or null)
                    assert json_file(rel) and json.loads(json_file(rel).read_text()).get(key) is None, f"{rel}: {key}"
                elif isinstance(lookup(rel, key), str):
                    assert (code(cell) or cell) == lookup(rel, key), f"{rel}: {key} is {lookup(rel, key)!r}, the card says {cell}"
                else:
                    assert same_figure(cell, lookup(rel, key)), f"{rel}: {key} is {lookup(rel, key)!r}, the card says {cell}"
                checked += 1
    assert checked, "no table of JSON values"


@pytest.mark.parametrize("name", MODELS)
def test_parameter_counts_are_those_of_the_loaded_components(name):
    import diffusers
    import torch

    index = model_index(name)
    absent = {k: None for k, v in index.items() if v == [None, None]}  # e.g. SD3's T5, named as None as the card says
    pipe = getattr(diffusers, index["_class_name"]).from_pretrained(REPO_ROOT / "models" / name, **absent)
    real = {k: sum(p.numel() for p in m.parameters()) for k, m in pipe.components.items() if isinstance(m, torch.nn.Module)}
    counts = {}
    for rows in tables(card_text(name)):
        if "parameters" not in rows[0]:
            continue
        col = rows[0].index("parameters")
        for row in rows[1:]:
            if row[col] not in ("—", "-"):  # parts without weights: tokenizers, scheduler, the absent T5
                counts[code(row[0]) or row[0].strip("*")] = int(row[col].replace(",", ""))
    assert counts, "no table with a parameters column"
    assert {**real, "total": sum(real.values())} == counts


@pytest.mark.parametrize("name", MODELS)
def test_placeholders_wait_only_for_results_not_made_yet(name):
    late = [f"{m.group(0)} -> {lookup(m['file'], m['key']):.3f} ({m['file']}: {m['key']})"
            for m in PLACEHOLDER.finditer(card_text(name)) if json_file(m["file"]) is not None]
    assert not late, "the results exist: replace each placeholder with what follows its arrow:\n" + "\n".join(late)

"""Every figure the README and docs/ quote from a result file equals that file's value at the quoted precision.

A quoted figure is marked in one of three ways (the lead ties each to a committed JSON this way):

- prose: ``0.692 (from `results/toy-sd3/bench_toy_model.json`, key `attention_miou`)``, a few words allowed between
  the figure and the parenthesis (``0.958 of the named objects (from ...)``);
- a link whose title is the key: ``[0.692](results/toy-sd3/bench_toy_model.json "attention_miou")``;
- a table with a ``source`` column holding the file and columns headed by a key in backticks (`` `unet_steps` ``).

Keys are dotted paths into the JSON (``attention_miou_by_block.0``; a key that holds dots itself, such as a layer's
name, is matched whole). A file that is not committed yet is skipped.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
NUMBER = r"(\d[\d,]*(?:\.\d+)?)"
# the figure, then at most eight words without digits or brackets ("0.958 of the named objects"), then the marker
PROSE = re.compile(r"([+-]?" + NUMBER[1:] + r"\**(?:\s+[^\s\d()]+){0,8}\s*\(from\s+`([^`]+\.json)`,\s+key\s+`([^`]+)`\)")
# a figure may carry a sign ("[+2.1](results/claims.json "rows.0.segmenter.diff")"): differences are quoted with theirs
LINK = re.compile(r"\[([+-]?" + NUMBER[1:] + r"\]\(([^)\s]+\.json)\s+\"([^\"]+)\"\)")


def table_figures(page: Path, text: str) -> list[tuple[str, str, str, str]]:
    out = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("|") and i + 1 < len(lines) and re.match(r"^\|\s*-", lines[i + 1]):
            head = [c.strip() for c in lines[i].strip().strip("|").split("|")]
            j = i + 2
            if "source" in head:
                src = head.index("source")
                keys = {k: c.strip("`") for k, c in enumerate(head) if re.fullmatch(r"`[^`]+`", c)}
                while j < len(lines) and lines[j].startswith("|"):
                    cells = [c.strip() for c in lines[j].strip().strip("|").split("|")]
                    for k, key in keys.items():
                        if cells[k]:
                            out.append((f"{page.relative_to(REPO).as_posix()}:{j + 1}", cells[k], cells[src].strip("`"), key))
                    j += 1
            i = j
        else:
            i += 1
    return out


def quoted_figures() -> list[tuple[str, str, str, str]]:
    """(where, figure as written, file, key) for every marked figure."""
    out = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for pattern in (PROSE, LINK):
            for m in pattern.finditer(text):
                line = text.count("\n", 0, m.start()) + 1
                out.append((f"{page.relative_to(REPO).as_posix()}:{line}", m.group(1), m.group(2), m.group(3)))
        out += table_figures(page, text)
    return out


FIGURES = quoted_figures()


def test_figures_are_marked():
    """The pages do quote figures this way (a changed marker format would silently leave them unchecked)."""
    assert len(FIGURES) >= 50
    assert {f[0].split(":")[0] for f in FIGURES} >= {"README.md", "docs/toy-world.md", "docs/benchmarks.md",
                                                     "docs/research-notes.md"}


def test_every_marker_has_its_figure():
    """A ``(from `FILE.json`, key ...)`` marker too far from its figure would leave that figure unchecked."""
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        markers = len(re.findall(r"\(from\s+`[^`]+\.json`", text))
        assert len(PROSE.findall(text)) == markers, f"{page.relative_to(REPO)}: a marker does not follow its figure closely"


@pytest.mark.parametrize("where, figure, file, key", FIGURES, ids=[f"{f[0]}:{f[3]}" for f in FIGURES])
def test_quoted_figure_matches_its_file(where: str, figure: str, file: str, key: str):
    path = REPO / file
    assert path.is_file(), f"{where}: quotes {figure} from {file}, which is not committed"
    value = json.loads(path.read_text())
    if file.startswith("results/"):  # models/*/training_summary.json are the training runs' own records (seeds, steps, sources)
        assert isinstance(value.get("provenance"), dict), f"{where}: {file} has no provenance block (dmutils bench NAME --out FILE writes one)"
    parts = key.split(".")
    while parts:  # a number indexes a list: ratio_sd3_512_bf16_range.0
        if isinstance(value, list) and parts[0].isdigit() and int(parts[0]) < len(value):
            value = value[int(parts.pop(0))]
            continue
        # a dict key may hold dots itself (a layer's name: attention_heads.transformer_blocks.0.attn[0].miou): the longest
        n = next((n for n in range(len(parts), 0, -1) if isinstance(value, dict) and ".".join(parts[:n]) in value), 0)
        assert n, f"{where}: {file} has no key {key!r}"
        value, parts = value[".".join(parts[:n])], parts[n:]
    assert isinstance(value, (int, float)) and not isinstance(value, bool), f"{where}: {file} {key} = {value!r} is not a number"
    quoted = figure.replace(",", "").lstrip("+")
    decimals = len(quoted.split(".")[1]) if "." in quoted else 0
    expected = round(value, decimals)
    assert float(quoted) == pytest.approx(expected, abs=10 ** -(decimals + 3)), (
        f"{where} quotes {figure} but {file} {key} = {value} (rounds to {expected:.{decimals}f})")

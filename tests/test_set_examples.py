"""Every ``--set KEY=VALUE`` example we show users is a key the schema accepts.

Examples are collected from every command's ``--help``, the README and docs/, and the package's
own messages and docstrings (error hints such as ``--set real.root=<folder>``), then validated with
``load_params(None, [example])``; an example the defaults refuse for a reason other than its key or
type (a cross-field check, e.g. a backbone for another model) passes when one of the project's
params files accepts it, since examples are written for one (the README's paper table). Placeholders
(``--set key=value``, ``--set {key}=auto``) are skipped.
"""
import re
from pathlib import Path

import pytest

from dmutils import commands as cli
from dmutils.config import load_params
from dmutils.errors import ParamsError

REPO = Path(__file__).resolve().parents[1]
# --set KEY=VALUE, --set=KEY=VALUE, --set "KEY=VALUE"; argparse may wrap the help text between --set and KEY
# (a shell-quoted value, KEY="[[1, 2], [2, 2]]", is one value)
SET_EXAMPLE = re.compile(r"--set(?:\s+|=)[\"']?([^\s=\"'`]+)=(?:\"([^\"]*)\"|'([^']*)'|([^\s`\"']*))")
PLACEHOLDER_KEYS = {"key", "k", "KEY", "section.key"}


def examples(text: str) -> list[str]:
    out = []
    for key, *values in SET_EXAMPLE.findall(text):
        value = next((v for v in values if v), "")
        if key in PLACEHOLDER_KEYS or any(c in key for c in "{}<>"):
            continue
        value = value.rstrip(").,;:")
        if value.endswith("]") and "[" not in value:  # a usage synopsis: [--set masks.threshold=0.4]
            value = value[:-1]
        out.append(f"{key}={value}")
    return out


def help_text(command: str, capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        cli.main([command, "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


PARAMS_FILES = sorted((REPO / "params").rglob("*.yaml"))


def accepted_by_a_params_file(item: str) -> bool:
    for path in PARAMS_FILES:
        try:
            load_params(path, [item])
            return True
        except ParamsError:
            continue
    return False


def invalid(found: dict[str, list[str]]) -> list[str]:
    bad = []
    for where, items in found.items():
        for item in items:
            try:
                load_params(None, [item])
            except ParamsError as e:
                if "unknown key" in str(e) or not accepted_by_a_params_file(item):
                    bad.append(f"{where}: --set {item}: {e}")
    return bad


def test_examples_are_found():
    """The collector itself: quoted, wrapped, backticked and placeholder forms."""
    text = "e.g. --set\n    masks.tau=2 (repeatable); `--set capture.cross_resolutions=[8,16]`, --set \"run.seed=3\"; --set dataset.splice.grids=\"[[1, 2], [2, 2]]\" " \
           "[--set key=value ...] --set {key}=auto --set real.root=<folder>."
    assert examples(text) == ["masks.tau=2", "capture.cross_resolutions=[8,16]", "run.seed=3", "dataset.splice.grids=[[1, 2], [2, 2]]",
                              "real.root=<folder>"]
    assert invalid({"x": ["capture.tau=2"]}) and invalid({"x": ["masks.tau=two"]}) and not invalid({"x": ["masks.tau=2"]})
    # refused by the defaults' segmenter, accepted by the paper presets that train a DeepLabV3
    assert not invalid({"x": ["train.backbone=microsoft/resnet-50"]}) and invalid({"x": ["train.model=nonsense"]})


def test_help_examples_are_valid(capsys):
    found = {f"dmutils {c} --help": examples(help_text(c, capsys)) for c in cli.COMMANDS}
    for command in ("generate", "train", "evaluate"):  # the commands that take a params file show an example
        assert found[f"dmutils {command} --help"], f"no --set example in dmutils {command} --help"
    assert invalid(found) == []


def shown_mistakes(text: str) -> tuple[str, list[str]]:
    """The text without the commands shown failing on purpose (a ``$ ...`` line whose next line is an ``error:``), and
    those commands' examples."""
    lines, kept, mistakes = text.splitlines(), [], []
    for i, line in enumerate(lines):
        if line.startswith("$ ") and i + 1 < len(lines) and ": error:" in lines[i + 1]:
            mistakes += examples(line)
        else:
            kept.append(line)
    return "\n".join(kept), mistakes


def test_readme_and_docs_examples_are_valid():
    files = [REPO / "README.md", *sorted((REPO / "docs").glob("**/*.md"))]
    found, mistakes = {}, {}
    for f in files:
        text, mistakes[str(f.relative_to(REPO))] = shown_mistakes(f.read_text())
        found[str(f.relative_to(REPO))] = examples(text)
    assert sum(map(len, found.values())) >= 5, found  # the README shows several
    assert invalid(found) == []
    shown = [f"{f}: {m}" for f, ms in mistakes.items() for m in ms]
    assert shown, "docs/params.md shows mistakes and their errors"
    assert len(invalid(mistakes)) == len(shown), f"a mistake shown with its error is valid: {shown}"


def test_package_messages_and_docstrings_are_valid():
    files = sorted((REPO / "src" / "dmutils").rglob("*.py"))
    found = {str(f.relative_to(REPO)): examples(f.read_text()) for f in files}
    assert sum(map(len, found.values())) >= 3, found
    assert invalid(found) == []

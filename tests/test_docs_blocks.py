"""Every fenced code block of README.md and docs/**/*.md runs as written.

The rule is the fence's language:

- ``bash``: run by bash (``set -euo pipefail``), with this venv's ``bin`` first on PATH (``dmutils`` is
  ``python -m dmutils``);
- ``python``: run by this venv's python;
- ``yaml`` that is a params file (a top-level key is ``extends`` or a section of ``dmutils.config.Params``): must
  load with ``load_params``, as if it were a file in ``params/``;
- any other language (``console``, ``text``, ``sh-nocheck``, ...) is shown, never run. Use one of those for blocks that
  cannot run here: real weights, ``hf download``, SLURM, ``make``, commands shown with their output.

Every fence must name a language, so that nothing is left out by omission.

Where: a page's bash and python blocks run in page order in one working copy of the repository (a temp folder with
copies of ``src/`` and ``params/`` and a link to ``models/``), so later blocks see earlier blocks' files (the
quickstart: generate, then export, train, evaluate) and no test writes into the repository. Shell variables do not
carry from one block to the next. Pages whose runnable blocks start the same way (README.md's quickstart is
getting-started.md's) share those runs. Run one block with e.g. ``-k 'getting-started.md#4'``: the blocks before it on
its page run first.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from markdown_it import MarkdownIt

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
RUN = ("bash", "python")
# Documented commands written on another branch: until they are registered in dmutils.commands, a bash block's
# `dmutils <name> ...` prints a note instead of failing. Delete an entry once its command is merged.
BLOCK_TIMEOUT_S = 600


@dataclass(frozen=True)
class Block:
    page: Path
    number: int  # 1-based, among all fenced blocks of the page
    line: int
    lang: str
    code: str

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(REPO).as_posix()}#{self.number}"


def page_blocks(page: Path) -> list[Block]:
    tokens = MarkdownIt("commonmark").parse(page.read_text(encoding="utf-8"))
    fences = [t for t in tokens if t.type == "fence"]
    return [Block(page, k, f.map[0] + 1, (f.info.split() or [""])[0], f.content) for k, f in enumerate(fences, 1)]


BLOCKS = [b for page in PAGES for b in page_blocks(page)]


def is_params_file(code: str) -> bool:
    from dmutils.config import Params

    try:
        data = yaml.safe_load(code)
    except yaml.YAMLError:
        return True  # a broken params block should fail its test, not be skipped
    return isinstance(data, dict) and bool(({"extends"} | set(Params.model_fields)) & set(data))


def runnable_before(block: Block) -> list[Block]:
    """The runnable blocks of ``block``'s page up to and including it, in page order."""
    return [b for b in BLOCKS if b.page == block.page and b.lang in RUN and b.number <= block.number]


# ---------------------------------------------------------------------------------------------------------------------
# Working copies and running
# ---------------------------------------------------------------------------------------------------------------------
class Runner:
    """Runs blocks in working copies; a run of the same sequence of blocks (from the top of a page) happens once."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.bin = tmp / "bin"
        self.bin.mkdir()
        shim = self.bin / "dmutils"
        shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m dmutils "$@"\n')
        shim.chmod(0o755)
        from dmutils.commands import COMMANDS

        self.commands = set(COMMANDS)
        self.results: dict[tuple, tuple[bool, str, Path]] = {}  # blocks run so far -> (ok, output, working copy)
        self.state: dict[Path, tuple] = {}  # working copy -> the blocks run in it
        self.count = 0

    def fresh(self) -> Path:
        self.count += 1
        wd = self.tmp / f"repo{self.count}"
        wd.mkdir()
        shutil.copytree(REPO / "src", wd / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        shutil.copytree(REPO / "params", wd / "params")
        (wd / "models").symlink_to(REPO / "models", target_is_directory=True)
        self.state[wd] = ()
        return wd

    def env(self, wd: Path) -> dict[str, str]:
        env = dict(os.environ)
        env.update(PATH=os.pathsep.join([str(self.bin), str(Path(sys.executable).parent), env.get("PATH", "")]),
                   PYTHONPATH=str(wd / "src"), PYTHONDONTWRITEBYTECODE="1", HF_HUB_OFFLINE="1", MPLBACKEND="Agg",
                   TQDM_DISABLE="1",
                   OMP_NUM_THREADS="1")  # small blocks; on a shared CPU more threads only wait on each other
        return env

    def run_one(self, block: Block, wd: Path) -> tuple[bool, str]:
        if block.lang == "bash":
            used = set(re.findall(r"(?:^|[\s;&|(])dmutils\s+([a-z][a-z-]*)", block.code, re.M))
            unknown = used - self.commands
            if unknown:
                return False, f"{block.id}: unknown dmutils command(s) {sorted(unknown)}; registered: {sorted(self.commands)}"
            prelude = "set -euo pipefail\n"
            cmd = ["bash", "-c", prelude + block.code]
        else:
            script = self.tmp / f"block{self.count}_{block.page.stem}_{block.number}.py"
            script.write_text(block.code)
            cmd = [sys.executable, str(script)]
        try:
            r = subprocess.run(cmd, cwd=wd, env=self.env(wd), capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return False, f"{block.id} (line {block.line}) ran over {BLOCK_TIMEOUT_S} s"
        out = (r.stdout + r.stderr)[-6000:]
        if r.returncode:
            return False, f"{block.id} (line {block.line}) exited {r.returncode}:\n{out}"
        return True, out

    def ensure(self, blocks: list[Block]) -> tuple[bool, str]:
        """Run ``blocks[-1]`` after ``blocks[:-1]`` (each run once per distinct sequence)."""
        key = tuple((b.lang, b.code) for b in blocks)
        if key in self.results:
            ok, out, _ = self.results[key]
            return ok, out
        parent = key[:-1]
        if not parent:
            wd = self.fresh()
        else:
            ok, out = self.ensure(blocks[:-1])
            if not ok:
                self.results[key] = (False, f"an earlier block of this page failed: {out}", self.tmp)
                return self.results[key][:2]
            wd = self.results[parent][2]
            if self.state[wd] != parent:  # another page's blocks went on in that copy: replay this page's in a new one
                wd = self.fresh()
                for b in blocks[:-1]:
                    ok, out = self.run_one(b, wd)
                    if not ok:
                        self.results[key] = (False, out, wd)
                        return ok, out
        ok, out = self.run_one(blocks[-1], wd)
        self.state[wd] = key
        self.results[key] = (ok, out, wd)
        return ok, out


@pytest.fixture(scope="session")
def runner(tmp_path_factory) -> Runner:
    return Runner(tmp_path_factory.mktemp("docs_blocks"))


# ---------------------------------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------------------------------
def test_every_fence_names_a_language():
    bare = [f"{b.id} (line {b.line})" for b in BLOCKS if not b.lang]
    assert not bare, f"fences without a language (use text, console, bash, python, yaml, ...): {bare}"


def test_pages_have_runnable_blocks():
    """The quickstart and the Python API example are tested (a renamed fence would silently drop them)."""
    for page in ("README.md", "docs/getting-started.md"):
        langs = {b.lang for b in BLOCKS if b.page == REPO / page and b.lang in RUN}
        assert langs == {"bash", "python"}, f"{page}: runnable block languages {sorted(langs)}"


def test_the_readme_quickstart_is_the_getting_started_pages():
    """README.md's runnable blocks are getting-started.md's, character for character: their runs are shared (a
    one-line difference would run the quickstart twice, about 40 s)."""
    def runnable(page):
        return [b.code for b in BLOCKS if b.page == REPO / page and b.lang in RUN]
    readme, guide = runnable("README.md"), runnable("docs/getting-started.md")
    assert readme and readme == guide[:len(readme)]


@pytest.mark.slow
@pytest.mark.parametrize("block", [b for b in BLOCKS if b.lang in RUN], ids=lambda b: b.id)
def test_block_runs(block: Block, runner: Runner):
    ok, out = runner.ensure(runnable_before(block))
    assert ok, out


@pytest.fixture(scope="module")
def params_dir(tmp_path_factory) -> Path:
    """A copy of params/, where a block is written as a file beside the presets it extends."""
    d = tmp_path_factory.mktemp("docs_params") / "params"
    shutil.copytree(REPO / "params", d)
    return d


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.lang == "yaml" and is_params_file(b.code)], ids=lambda b: b.id)
def test_params_block_loads(block: Block, params_dir: Path):
    from dmutils.config import load_params

    path = params_dir / f"_docs_{block.page.stem}_{block.number}.yaml"
    path.write_text(block.code)
    load_params(path)  # raises ParamsError with a one-line message naming the bad key or value

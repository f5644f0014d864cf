"""What every study notebook calls, so notebooks stay thin and all write their report the same way.

A notebook's tagged ``parameters`` cell holds ``params_file``, ``overrides`` and ``run_dir``;
``dmutils run`` fills them, the plain papermill CLI can (``-p params_file params/toy.yaml``), and
opened in JupyterLab the defaults work. Then::

    ctx = nb.setup(params_file, overrides, run_dir)
    ctx.save_figure(fig, "iou_vs_threshold", caption="...", key=True)
    ctx.save_table(df, "per_class_iou", caption="...", key=True)
    ctx.conclude(study.conclusions(ctx.table("per_class_iou")))  # computed from the saved tables, shown and recorded

Every figure/table/status is also appended to ``<run_dir>/artifacts.jsonl``; the runner files
each line under the notebook that was running and the index shows the ``key`` ones.
"""
from __future__ import annotations

import io
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dmutils.config import Params, load_params
from dmutils.errors import ParamsError
from dmutils.paths import REPO_ROOT, atomic_write_bytes

ARTIFACTS = "artifacts.jsonl"
FIGURES = "figures"
TABLES = "tables"
FIGURE_DPI = 200
# Figure sizes in inches: one paper column and the full page width.
FIGSIZE = {"column": (3.5, 2.6), "wide": (7.0, 3.0), "square": (3.5, 3.5)}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def set_style() -> None:
    """One look for every figure: seaborn's paper context, white grid, 200-dpi tight saves."""
    import seaborn as sns

    sns.set_theme(
        context="paper",
        style="whitegrid",
        palette="colorblind",
        font_scale=1.1,
        rc={"figure.figsize": FIGSIZE["column"], "savefig.dpi": FIGURE_DPI, "savefig.bbox": "tight", "axes.titleweight": "bold"},
    )


def find_params_file(params_file: str | os.PathLike | None) -> Path | None:
    """A relative params path is tried against the working dir, the repo root, then notebooks/,
    so the same call works from the repo root, from notebooks/ and under ``dmutils run``."""
    if params_file is None or str(params_file).strip() == "":
        return None
    path = Path(params_file).expanduser()
    candidates = [path] if path.is_absolute() else [Path.cwd() / path, REPO_ROOT / path, REPO_ROOT / "notebooks" / path]
    for c in candidates:
        if c.is_file():
            return c.resolve()
    tried = ", ".join(str(c) for c in candidates)
    raise ParamsError(f"params file {str(params_file)!r} not found (tried {tried}); pass an existing YAML, e.g. params/toy.yaml")


def default_run_dir(params: Params) -> Path:
    return params.resolve_path(params.run.reports_dir) / params.run.name


@dataclass
class Context:
    """One notebook's view of a run: validated params and where its outputs go."""

    params: Params
    run_dir: Path
    params_file: Path | None = None
    overrides: list[str] = field(default_factory=list)

    @property
    def figures_dir(self) -> Path:
        return self.run_dir / FIGURES

    @property
    def tables_dir(self) -> Path:
        return self.run_dir / TABLES

    @property
    def seed(self) -> int:
        return self.params.run.seed

    def save_figure(self, fig: Any, name: str, caption: str | None = None, key: bool = False,
                    indicative: str | None = None) -> dict[str, Path]:
        """PNG (200 dpi, for the index and slides) and PDF (vector, for the paper) of a matplotlib figure.
        ``indicative``: why its numbers are only indicative (e.g. small samples); index.html marks it so."""
        _check_name(name)
        paths = {}
        for ext in ("png", "pdf"):
            buf = io.BytesIO()
            fig.savefig(buf, format=ext, dpi=FIGURE_DPI, bbox_inches="tight")
            paths[ext] = self.figures_dir / f"{name}.{ext}"
            atomic_write_bytes(paths[ext], buf.getvalue())
        self._record(kind="figure", name=name, caption=caption, key=key, files={k: _rel(p, self.run_dir) for k, p in paths.items()},
                     **({"indicative": indicative} if indicative else {}))
        return paths

    def save_table(self, df: Any, name: str, caption: str | None = None, key: bool = False, index: bool = False,
                   indicative: str | None = None) -> Path:
        """A pandas DataFrame as CSV in tables/ (``indicative``: as for :meth:`save_figure`)."""
        _check_name(name)
        path = self.tables_dir / f"{name}.csv"
        atomic_write_bytes(path, df.to_csv(index=index).encode())
        self._record(kind="table", name=name, caption=caption, key=key, files={"csv": _rel(path, self.run_dir)},
                     shape=list(df.shape), **({"indicative": indicative} if indicative else {}))
        return path

    def table(self, name: str, missing_ok: bool = False) -> Any:
        """A table this run saved, read back from its CSV (what conclusions are computed from); ``None`` when it is
        missing and ``missing_ok``."""
        import pandas as pd

        _check_name(name)
        path = self.tables_dir / f"{name}.csv"
        if missing_ok and not path.is_file():
            return None
        return pd.read_csv(path)

    def conclude(self, sentences: list[str]) -> list[str]:
        """The notebook's conclusions: shown as Markdown (one paragraph each) and recorded, so the index shows them
        under the notebook. The sentences are computed from the notebook's tables (``dmutils.studies.<study>.conclusions``),
        never typed: every number in them is a table cell, rounded."""
        sentences = [str(s) for s in sentences]
        self._record(kind="conclusions", name="conclusions", files={}, sentences=sentences)
        try:
            from IPython.display import Markdown, display

            display(Markdown("\n\n".join(sentences)))
        except ImportError:  # outside IPython: plain text
            print("\n\n".join(sentences))
        return sentences

    def placeholder(self, note: str) -> None:
        """Mark this notebook as a placeholder (a later issue fills it); the index says so."""
        self._record(kind="status", status="placeholder", note=note)
        print(f"PLACEHOLDER: {note}")

    def _record(self, **entry: Any) -> None:
        entry["time"] = time.time()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / ARTIFACTS, "a") as f:
            f.write(json.dumps(entry) + "\n")


def setup(params_file: str | os.PathLike | None = None, overrides: list[str] | str | None = None,
          run_dir: str | os.PathLike | None = None, style: bool = True) -> Context:
    """Load and validate the params, make the run folder, set the figure style.

    ``run_dir`` empty/None (a notebook opened by hand) means ``reports/<run.name>/``.
    ``overrides`` may be one "k=v" string (as ``papermill -p overrides k=v`` passes it) or a list.
    """
    if isinstance(overrides, str):
        overrides = [overrides] if overrides.strip() else []
    overrides = list(overrides or [])
    path = find_params_file(params_file)
    params = load_params(path, overrides)
    out = Path(run_dir).expanduser().resolve() if run_dir and str(run_dir).strip() else default_run_dir(params)
    for sub in (FIGURES, TABLES):
        (out / sub).mkdir(parents=True, exist_ok=True)
    if style:
        set_style()
    print(f"run '{params.run.name}' (seed {params.run.seed}, params {path or 'defaults'}"
          f"{', overrides ' + ' '.join(overrides) if overrides else ''}) -> {out}")
    return Context(params=params, run_dir=out, params_file=path, overrides=overrides)


def read_artifacts(run_dir: Path) -> list[dict[str, Any]]:
    """Every line of ``artifacts.jsonl`` (empty when the file is missing)."""
    path = Path(run_dir) / ARTIFACTS
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def conclusions(artifacts: list[dict[str, Any]]) -> list[str]:
    """The sentences of the last :meth:`Context.conclude` in ``artifacts`` (empty when there is none)."""
    found = [a for a in artifacts if a.get("kind") == "conclusions"]
    return list(found[-1]["sentences"]) if found else []


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"output name {name!r} must be a plain file stem (letters, digits, . _ -), e.g. 'iou_vs_threshold'")


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()

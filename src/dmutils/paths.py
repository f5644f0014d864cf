"""Where things live and how files are written: the repository and models folders (defined once),
atomic writes that readers never see half-done, and writability checks that leave nothing behind."""
from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from dmutils.errors import OutputDirError

REPO_ROOT = Path(__file__).resolve().parents[2]
MODELS_DIR = REPO_ROOT / "models"
RESULTS_DIR = REPO_ROOT / "results"  # benchmark JSONs with provenance, the figures the docs quote (results/ledger.yaml)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_partial_writes(root: Path) -> int:
    """Delete the temp files of :func:`atomic_write_bytes` calls that were killed before their rename (a
    SIGKILLed process or Ray actor): they are never part of a dataset, and a resumed run rewrites the file."""
    stale = [p for p in Path(root).rglob(".*.tmp") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)


def nearest_existing(path: Path) -> Path:
    """``path`` itself when it exists, else its closest existing ancestor (what creating it would write into)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def writable_problem(path: str | Path, what: str) -> str | None:
    """Why ``path`` cannot be used as an output folder, or None when it can.

    Nothing is left behind: a folder that does not exist yet is tested in its closest existing
    ancestor (a temp file made and deleted there), not created."""
    path = Path(path)
    base = nearest_existing(path)
    if not base.is_dir():
        return f"{what} {path}: {base} is a file, not a folder; set {what} to a folder"
    try:
        fd, tmp = tempfile.mkstemp(dir=base, prefix=".dmutils-write-test.")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        reason = e.strerror or type(e).__name__
        where = "" if base == path.absolute() else f" (it would be created in {base})"
        hint = "no space left on that disk" if e.errno == errno.ENOSPC else f"cannot create files in {base}: {reason}"
        return f"{what} {path} is not writable{where}: {hint}; set {what} to a folder you can write"
    return None


def ensure_writable_dir(path: str | Path, what: str) -> Path:
    """Create ``path`` (and parents) and make sure files can be written in it; raise :class:`OutputDirError` naming ``what``."""
    path = Path(path)
    problem = writable_problem(path, what)
    if problem:
        raise OutputDirError(problem)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputDirError(f"{what} {path}: cannot create it ({e.strerror or e}); set {what} to a folder you can write") from None
    return path

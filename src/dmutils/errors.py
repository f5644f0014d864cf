"""Errors a user's input causes, each a one-line message that names the bad thing and the fix.

All are :class:`dmutils.params.ParamsError` subclasses, so ``dmutils.cli.main`` prints them as one
line and exits 2, and each also keeps the built-in type callers may already catch
(``FileNotFoundError``, ``ValueError``, ``PermissionError``). This module imports nothing heavy:
the preflight and every command use it before torch is loaded.
"""
from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from dmutils.params import ParamsError


class DataError(ParamsError):
    """A data file exists but cannot be used (corrupt image, label of the wrong kind)."""


class DataNotFoundError(DataError, FileNotFoundError):
    """A data folder, split list or sample file is missing."""


class OutputDirError(ParamsError, PermissionError):
    """An output folder cannot be created or written."""


def one_line(text: object) -> str:
    """``text`` on one line: multi-line library messages (layouts, tracebacks' last words) joined by '; '."""
    return "; ".join(s.strip() for s in str(text).splitlines() if s.strip())


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

"""Errors a user's input causes, each a one-line message that names the bad thing and the fix.

:class:`UserError` is the root: ``dmutils.commands.main`` prints any of them as one line and exits 2.
Each subclass also keeps the built-in type callers may already catch (``FileNotFoundError``,
``ValueError``, ``PermissionError``). This module imports nothing from dmutils, so every layer can
raise them, the preflight included, before torch is loaded.
"""
from __future__ import annotations


class UserError(ValueError):
    """Something the user can fix (a setting, a path, a file); the message says what and how."""


class ParamsError(UserError):
    """A params file or override is wrong; the message says what and how to fix it."""


class DataError(UserError):
    """A data file exists but cannot be used (corrupt image, label of the wrong kind)."""


class DataNotFoundError(DataError, FileNotFoundError):
    """A data folder, split list or sample file is missing."""


class OutputDirError(UserError, PermissionError):
    """An output folder cannot be created or written."""


def one_line(text: object) -> str:
    """``text`` on one line: multi-line library messages (layouts, tracebacks' last words) joined by '; '."""
    return "; ".join(s.strip() for s in str(text).splitlines() if s.strip())


class FolderInUseError(UserError):
    """Another running dmutils job holds the folder's lock (:mod:`dmutils.locks`)."""


class DiskFullError(UserError):
    """The disk filled up part-way through a run; the message names the folder and the space still needed."""


class WorkersKilledError(UserError):
    """Post-processing workers kept being killed (the out-of-memory killer, a ``kill -9``) past the pool's restarts."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM caught where resuming needs more than a plain re-run; the message says how
    (``dmutils.commands.main`` puts it on its one line in place of 're-run to resume')."""

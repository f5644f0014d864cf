"""Every progress bar of dmutils, made by :func:`progress_bar` so that it suits where stderr goes.

- On a terminal: tqdm's live bar, as before.
- In a log (stderr a file or a pipe: a batch job, ``nohup``, CI): tqdm's ``\\r`` redraws would pile up into one
  endless line, so the bar becomes a plain ASCII line every :data:`LOG_INTERVAL_S` seconds, the first and the
  last always written.
- In a notebook: tqdm.auto's widget.
- ``--no-progress``: the command line calls :func:`silence` for the run, and no bar is drawn at all.
"""
from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

LOG_INTERVAL_S = 30.0  # a line this often in a log
_silenced = 0


@contextmanager
def silence() -> Iterator[None]:
    """No bar while the block runs (``--no-progress``), whatever the callers pass."""
    global _silenced
    _silenced += 1
    try:
        yield
    finally:
        _silenced -= 1


class _Lines:
    """A file for tqdm that turns each redraw ('\\r' + bar + padding) into one line of its own."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        line = text.replace("\r", "").rstrip()
        if line:
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(iterable=None, **kwargs):
    """``tqdm(iterable, **kwargs)`` for a terminal, a notebook or a log (the module's docstring says how each looks)."""
    from tqdm import autonotebook, std
    from tqdm.auto import tqdm

    kwargs["disable"] = kwargs.get("disable", False) or _silenced > 0
    stream = kwargs.get("file") or sys.stderr
    if autonotebook.tqdm is std.tqdm and not _isatty(stream):  # not a notebook widget, not a terminal: a log
        kwargs = {"mininterval": LOG_INTERVAL_S, "maxinterval": max(LOG_INTERVAL_S, 10.0), "ascii": True,
                  "ncols": 100, **kwargs, "file": _Lines(stream), "dynamic_ncols": False}
    return tqdm(iterable, **kwargs)


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed file
        return False


def write(line: str, stderr: bool = False) -> None:
    """A line that does not tear a live bar (``tqdm.write``); on stderr for warnings."""
    from tqdm.auto import tqdm

    tqdm.write(line, file=sys.stderr if stderr else None)

"""One job per folder: an advisory lock that two ``dmutils`` runs writing into one dataset folder cannot both hold.

Two ``generate`` runs on one folder would append the same samples to one manifest and race on every file.
:func:`folder_lock` takes ``fcntl.flock`` (exclusive, non-blocking) on ``<folder>/.dmutils.lock`` for the
whole run; the second run is refused in one line naming the first (PID, host, start time, command: what the
holder wrote into the file). The kernel drops a flock when its process dies, however it dies, so a lock file
a killed run left behind blocks nobody: its text is only a note, rewritten by the next holder.

On NFS, ``flock`` holds across machines only with NFSv4 or an NFSv3 mount that runs ``lockd``, not on a
``nolock`` mount (there it holds on one machine only); where the file system refuses locks altogether the
run goes on unlocked, with a warning.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dmutils.errors import FolderInUseError
from dmutils.paths import ensure_writable_dir

LOCK_NAME = ".dmutils.lock"


def _holder_note() -> str:
    return json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                       "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "command": " ".join(sys.argv)})


def describe_holder(text: str) -> str:
    """The note a holder wrote, as words: 'PID 12 on host h, started 2026-12-05 14:00:00 UTC: dmutils generate p.yaml'."""
    try:
        d = json.loads(text)
        return f"PID {d['pid']} on host {d['host']}, started {d['started']}: {d['command']}"
    except (ValueError, KeyError, TypeError):
        return "a process that left no note of itself"


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == path.stat().st_ino
    except FileNotFoundError:
        return False


@contextmanager
def folder_lock(folder: str | Path, what: str = "dataset.out_dir") -> Iterator[Path]:
    """Hold the lock of ``folder`` (created if missing) while the block runs; raise :class:`FolderInUseError`
    at once when another process holds it. ``what`` names the setting in errors about the folder itself.

    The holder deletes the lock file before releasing it, so a finished run leaves nothing behind; a newcomer
    that locked the file just deleted (it opened it a moment before) sees that the path now names another
    file, and tries again."""
    folder = ensure_writable_dir(folder, what)
    path = folder / LOCK_NAME
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = describe_holder(os.pread(fd, 4096, 0).decode(errors="replace"))
            os.close(fd)
            raise FolderInUseError(f"{folder} is in use by another dmutils job ({holder}); wait for it to end or stop it, "
                                   f"or give this run another folder") from None
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                os.close(fd)
                raise
            warnings.warn(f"{folder}: its file system does not support locks ({e.strerror}); nothing stops a second job "
                          "writing into it, so run one at a time", stacklevel=3)
            os.close(fd)
            yield folder
            return
        if _same_file(fd, path):
            break
        os.close(fd)  # locked a file its holder deleted on release: lock the one at the path now
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, _holder_note().encode(), 0)
        yield folder
    finally:
        Path(path).unlink(missing_ok=True)
        os.close(fd)

"""Where a figure comes from: the ``provenance`` block every result JSON under ``results/`` carries.

:func:`provenance` says which code (git commit, dirty tree), which command, which params (their digest), which
model weights (:func:`model_hash`), which library versions and which machine (cores, load average, device,
torch threads) made a result. ``tests/test_ledger.py`` refuses a result JSON without one, and
``results/ledger.yaml`` ties each figure quoted in the docs to its JSON and key.

Only the standard library, :mod:`dmutils.paths` and :mod:`dmutils.errors` are imported here (torch is read only when already
loaded), so every layer above can stamp what it writes.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import os
import platform
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from dmutils.errors import DataError, DataNotFoundError
from dmutils.paths import REPO_ROOT

VERSIONS = ["dmutils", "torch", "diffusers", "transformers", "accelerate", "safetensors", "numpy", "pandas",
            "pydantic", "pydensecrf2", "torchmetrics", "papermill", "nbconvert", "ipykernel"]
WEIGHT_SUFFIXES = (".safetensors", ".bin")


def _git(*args: str) -> str | None:
    try:
        r = subprocess.run(["git", "-C", str(REPO_ROOT), *args], check=False, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def git_info() -> dict[str, Any]:
    """Commit of the repository and whether tracked files differ from it (None outside git)."""
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def package_versions() -> dict[str, str | None]:
    """Versions from package metadata (no imports, so no torch start-up cost)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in VERSIONS:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def weight_files(folder: str | Path) -> list[Path]:
    """The weight files of a model folder (``*.safetensors``, ``*.bin``, any depth), sorted by relative path."""
    folder = Path(folder)
    return sorted((f for f in folder.rglob("*") if f.is_file() and f.suffix in WEIGHT_SUFFIXES),
                  key=lambda f: f.relative_to(folder).as_posix())


def model_hash_and_count(folder: str | Path) -> tuple[str, int]:
    """:func:`model_hash` and the number of weight files it covers."""
    folder = Path(folder)
    files = weight_files(folder) if folder.is_dir() else []
    if not files:
        what = "has no *.safetensors or *.bin weight file" if folder.is_dir() else "is not a folder"
        raise DataNotFoundError(f"model folder {folder} {what}: nothing to hash; pass the folder of a diffusers model")
    h = hashlib.sha256()
    for f in files:
        h.update(f.relative_to(folder).as_posix().encode() + b"\0")
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()[:16], len(files)


def model_hash(folder: str | Path) -> str:
    """A short sha256 over a model folder's weight files: their sorted relative paths and bytes (configs, logs and
    results kept beside the weights do not count). Same weights, same hash; raises
    :class:`~dmutils.errors.DataNotFoundError` when the folder holds no weight file."""
    return model_hash_and_count(folder)[0]


def _rel(path: str | Path) -> str:
    p = Path(path).absolute()
    try:
        return p.relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return str(p)


def load_average() -> list[float] | None:
    """The 1-, 5- and 15-minute load averages (None where the platform has none): how busy the machine was."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine(device: str | None = None) -> dict[str, Any]:
    """Cores, platform, device, torch threads (when torch is loaded) and load average, now."""
    torch = sys.modules.get("torch")
    if device is None and torch is not None:
        device = f"cuda ({torch.cuda.get_device_name()})" if torch.cuda.is_available() else "cpu"
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = None
    return {"cpu_count": os.cpu_count(), "cpus_usable": usable, "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(), "device": device,
            "torch_threads": torch.get_num_threads() if torch is not None else None, "load_average": load_average()}


def provenance(command: list[str] | str, params=None, model_dir: str | Path | None = None,
               device: str | None = None) -> dict[str, Any]:
    """The provenance block of a result: code, command, params digest, model weights, packages, machine.

    ``command``: the command line (a list is joined with shell quoting); ``params``: the
    :class:`~dmutils.config.Params` used (``params_digest``: ``params.digest()``); ``model_dir``: the model folder
    whose weights made the result (``model_hash``, ``model_files_hashed``); ``device``: the device it ran on
    (default: cuda when torch is loaded and sees one, else cpu)."""
    mhash, n = model_hash_and_count(model_dir) if model_dir is not None else (None, 0)
    return {
        **git_info(),
        "utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command if isinstance(command, str) else shlex.join(command),
        "params_digest": params.digest() if params is not None else None,
        "model_dir": _rel(model_dir) if model_dir is not None else None,
        "model_hash": mhash,
        "model_files_hashed": n,
        "packages": package_versions(),
        "machine": machine(device),
    }


def require_same_weights(result: dict, where: str | Path, model_dir: str | Path, rerun: str) -> None:
    """Raise :class:`~dmutils.errors.DataError` unless ``result`` (a result JSON read from ``where``) was made from the
    weights now in ``model_dir``: its ``provenance.model_hash`` against :func:`model_hash` of the folder. ``rerun``:
    the command that makes it again, named in the message."""
    recorded = (result.get("provenance") or {}).get("model_hash")
    now = model_hash(model_dir)
    if recorded != now:
        made = f"was made from other weights (hash {recorded}, model now {now})" if recorded else \
            f"has no provenance model_hash (model now {now}): it cannot be tied to these weights"
        raise DataError(f"{_rel(where)} {made}; re-run `{rerun}`")

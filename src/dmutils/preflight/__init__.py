"""``dmutils check PARAMS [--set k=v ...]``: what a run needs, checked in well under a second before hours of compute.

Each check is one small function ``check_x(params, ...) -> Outcome`` (a line saying what was found and
its problems); ``dmutils run``, ``generate`` and ``train`` call :func:`preflight` with the checks
they need, which raises one :class:`PreflightError` whose lines are the errors, each naming the
fix. Nothing is loaded: the model is checked from its files (``model_index.json``, configs,
safetensors headers), data from folder listings, split lists and one label per split, outputs by
writing and deleting a temp file. Hub ids are looked up in the local Hugging Face cache only
(``huggingface_hub.try_to_load_from_cache``: offline).

- model: ``model_index.json``; every component it lists (family-agnostic: SD, SDXL, SD3, Flux, PixArt,
  SANA read alike): its folder and config, the safetensors weights of weighted components (single
  file or sharded index), the tokenizer files.
Each checker is a module: ``model``, ``checkpoints``, ``data``, ``system`` (outputs, disk, device); ``core`` holds
:class:`Outcome`.

- real data: one small function per ``real.kind`` in :data:`REAL_DATA_CHECKS` (a new kind is one
  more entry); unknown kinds are skipped with a note.
- outputs: the folders written are writable; free disk against an estimate of the dataset's size.
- device: CUDA asked and not there; on CUDA, GPU memory against the weights' bytes in ``model.dtype``.
"""
from __future__ import annotations

import sys
from collections.abc import Callable

from dmutils.config import Params
from dmutils.preflight.checkpoints import check_checkpoints
from dmutils.preflight.core import Outcome, PreflightError, Problem, format_outcomes
from dmutils.preflight.data import REAL_DATA_CHECKS, check_real_data
from dmutils.preflight.model import (
    check_model,
    default_image_size,
    model_weight_files,
    parameter_count,
)
from dmutils.preflight.system import check_device, check_outputs, estimate_dataset_bytes

__all__ = ["CHECKS", "REAL_DATA_CHECKS", "Outcome", "PreflightError", "Problem", "check_checkpoints", "check_device",
           "check_model", "check_outputs", "check_real_data", "default_image_size", "estimate_dataset_bytes",
           "format_outcomes", "model_weight_files", "parameter_count", "preflight", "run_checks"]

# ---------------------------------------------------------------------------------------------
# running the checks
# ---------------------------------------------------------------------------------------------
CHECKS: dict[str, Callable[..., Outcome]] = {"model": check_model, "checkpoints": check_checkpoints, "real data": check_real_data,
                                             "outputs": check_outputs, "device": check_device}


def run_checks(params: Params, checks: dict[str, Callable[[Params], Outcome]] | None = None) -> dict[str, Outcome]:
    """Every check's outcome by name (the default: all of :data:`CHECKS`, what ``dmutils run`` needs)."""
    return {name: fn(params) for name, fn in (checks or CHECKS).items()}


def preflight(params: Params, checks: dict[str, Callable[[Params], Outcome]] | None = None, quiet: bool = False,
              warn_only: tuple[str, ...] = ()) -> dict[str, Outcome]:
    """Run the checks; raise :class:`PreflightError` (one line per error) when any fails. Errors of the
    checks in ``warn_only`` (what a partial run may not need) are warnings. Warnings go to stderr unless ``quiet``."""
    outcomes = run_checks(params, checks)
    for name in warn_only:
        if name in outcomes:
            outcomes[name].problems = [Problem("warning", p.message) if p.level == "error" else p for p in outcomes[name].problems]
    problems = [p for o in outcomes.values() for p in o.problems]
    if not quiet:
        for p in problems:
            if p.level == "warning":
                print(f"warning: {p.message}", file=sys.stderr)
    errors = [p.message for p in problems if p.level == "error"]
    if errors:
        raise PreflightError("\n".join(errors))
    return outcomes



"""The ``dmutils`` command. Each sub-command lives in the module that does its job; only that
module is imported, so ``dmutils run --help`` does not pay for torch.

A command module provides ``add_arguments(parser)`` and ``main(args) -> int | None``.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from dmutils.params import ParamsError

COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("dmutils.runner", "execute the study notebooks with papermill into reports/<run>/"),
    "generate": ("dmutils.dataset.generate", "generate a synthetic dataset (VOC layout) from a params file"),
    "remask": ("dmutils.dataset.remask", "re-make the masks of a dataset from its saved maps with new mask params"),
    "merge-shards": ("dmutils.dataset.shards", "merge dataset shards into one dataset"),
    "export": ("dmutils.dataset.export", "write a dataset as parquet shards + dataset card that datasets.load_dataset reads"),
    "splice": ("dmutils.dataset.splice", "write a mosaic (splicing) augmentation of a dataset"),
    "render-toy": ("dmutils.toyworld", "render the toy world's real train/val/test splits in VOC layout"),
    "train-toy-model": ("dmutils.toymodel.train", "train the embedded toy text-to-image model from scratch"),
    "train": ("dmutils.segment.train", "train a segmenter on real and/or synthetic data"),
    "evaluate": ("dmutils.segment.evaluate", "evaluate a trained segmenter (mIoU, per-class IoU)"),
    "bench": ("dmutils.bench", "benchmarks: capture, generate, toy-model, segmenter"),
    "check": ("dmutils.preflight", "preflight: model files, checkpoints, real data, output folders and disk, device (nothing is loaded)"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    rows = "\n".join(f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items())
    return f"usage: dmutils <command> [options]\n\ncommands:\n{rows}\n\n'dmutils <command> --help' for a command's options."


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        import difflib

        near = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f" (did you mean '{near[0]}'?)" if near else ""
        print(f"dmutils: unknown command '{name}'{hint}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, help_ = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"dmutils {name}", description=help_)
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    try:
        return int(module.main(args) or 0)
    except ParamsError as e:
        for line in str(e).splitlines() or [""]:  # a preflight error holds one line per failed check
            print(f"dmutils {name}: error: {line}", file=sys.stderr)
        return 2
    except OSError as e:  # last resort, for a path no check foresaw (a disk filling up mid-run); the checks name most
        if e.filename is None:
            raise
        print(f"dmutils {name}: error: {e.strerror or e}: {e.filename}; fix that path (space, permissions) and re-run",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dmutils {name}: interrupted; finished work is kept, re-run to resume", file=sys.stderr)
        return 130


def add_params_arguments(parser: argparse.ArgumentParser) -> None:
    """The params file and ``--set`` overrides, shared by every command that reads params."""
    parser.add_argument("params", nargs="?", default=None, help="params YAML (default: built-in defaults)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a param, e.g. --set capture.tau=2 (repeatable)")

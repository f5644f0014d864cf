"""The ``dmutils`` command line: the only modules that use argparse. One module a sub-command,
``dmutils.commands.<name>``, with ``add_arguments(parser)`` and ``main(args) -> int | None``; only the
one asked for is imported, and heavy libraries load inside ``main``, so ``--help`` stays fast.
"""
from __future__ import annotations

import argparse
import errno
import importlib
import signal
import sys
import threading
from contextlib import nullcontext

from dmutils.errors import Interrupted, UserError
from dmutils.progress import silence

COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("dmutils.commands.run", "execute the study notebooks with papermill into reports/<run>/"),
    "generate": ("dmutils.commands.generate", "generate a synthetic dataset (VOC layout) from a params file"),
    "remask": ("dmutils.commands.remask", "re-make the masks of a dataset from its saved maps with new mask params"),
    "merge-shards": ("dmutils.commands.merge_shards", "merge dataset shards into one dataset"),
    "export": ("dmutils.commands.export", "write a dataset as parquet shards + dataset card that datasets.load_dataset reads"),
    "preview": ("dmutils.commands.preview", "contact sheet of a dataset: image | mask | outlines per sample, class legend (PNG + HTML)"),
    "splice": ("dmutils.commands.splice", "write a mosaic (splicing) augmentation of a dataset"),
    "render-toy": ("dmutils.commands.render_toy", "render the toy world's real train/val/test splits in VOC layout"),
    "train-toy-model": ("dmutils.commands.train_toy_model", "train the embedded toy text-to-image model from scratch"),
    "train": ("dmutils.commands.train", "train a segmenter on real and/or synthetic data"),
    "evaluate": ("dmutils.commands.evaluate", "evaluate a trained segmenter (mIoU, per-class IoU)"),
    "bench": ("dmutils.commands.bench", "benchmarks: capture, generate, toy-model, segmenter"),
    "check": ("dmutils.commands.check", "preflight: model files, checkpoints, real data, output folders and disk, device (nothing is loaded)"),
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
    previous = _sigterm_as_interrupt()
    try:
        with silence() if getattr(args, "no_progress", False) else nullcontext():  # --no-progress: no bar anywhere
            return int(module.main(args) or 0)
    except UserError as e:
        for line in str(e).splitlines() or [""]:  # a preflight error holds one line per failed check
            print(f"dmutils {name}: error: {line}", file=sys.stderr)
        return 2
    except OSError as e:  # last resort, for a path no check foresaw (a disk filling up mid-run); the checks name most
        if e.errno in (errno.ENOSPC, errno.EDQUOT) and e.filename is None:
            print(f"dmutils {name}: error: no space left on the disk it writes to ({e.strerror}); free some space and re-run",
                  file=sys.stderr)
            return 2
        if e.filename is None:
            raise
        print(f"dmutils {name}: error: {e.strerror or e}: {e.filename}; fix that path (space, permissions) and re-run",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        how = str(e) if isinstance(e, Interrupted) else "re-run to resume"
        print(f"dmutils {name}: interrupted; finished work is kept, {how}", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _sigterm_as_interrupt():
    """SIGTERM (a scheduler's cancel, `kill`) ends a command as Ctrl-C does; the previous handler, or None
    off the main thread (where Python cannot set one)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, interrupt)

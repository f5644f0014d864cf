"""``dmutils run``: the command line of :mod:`dmutils.runner`."""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from dmutils.commands.common import add_params_arguments
from dmutils.runner import FALLBACK_KERNEL, KERNEL, run


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_params_arguments(parser)
    parser.add_argument("--only", default=None, metavar="PREFIXES",
                        help="run only the notebooks whose names start with these comma-separated prefixes, e.g. 01,03")
    parser.add_argument("--kernel", default=None,
                        help=f"Jupyter kernel (default: '{KERNEL}' when installed, else this interpreter's '{FALLBACK_KERNEL}')")


def main(args: argparse.Namespace) -> int:
    command = shlex.join(["dmutils", "run", *([args.params] if args.params else []), *(["--only", args.only] if args.only else []),
                          *(x for o in args.overrides for x in ("--set", o))])
    record = run(args.params, args.overrides, only=args.only, kernel=args.kernel, command=command)
    if record["status"] != "ok":
        print(f"dmutils run: error: {record['message']}", file=sys.stderr)
        return 1
    print(f"report: {Path(record['run_dir']) / 'index.html'}")
    return 0

"""``dmutils check``: the command line of :mod:`dmutils.preflight`."""
from __future__ import annotations

import argparse
import sys

from dmutils.commands.common import add_params_arguments
from dmutils.config import load_params
from dmutils.preflight import run_checks
from dmutils.preflight.core import format_outcomes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_params_arguments(parser)


def main(args: argparse.Namespace) -> int:
    params = load_params(args.params, args.overrides)
    outcomes = run_checks(params)
    print(format_outcomes(outcomes))
    failed = [n for n, o in outcomes.items() if not o.ok]
    if failed:
        print(f"dmutils check: {len(failed)} check(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 2
    return 0

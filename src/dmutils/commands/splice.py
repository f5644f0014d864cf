"""``dmutils splice``: the command line of :mod:`dmutils.dataset.splice`."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from dmutils.commands.common import add_params_arguments
from dmutils.config import Params, load_params
from dmutils.dataset.splice import splice_dataset


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", type=Path, help="source dataset folder (what 'dmutils generate' wrote)")
    add_params_arguments(parser)
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: <dataset>-spliced)")
    parser.add_argument("--no-progress", action="store_true")


def main(args: argparse.Namespace) -> int:
    params: Params = load_params(args.params, args.overrides)
    out = args.out or args.dataset.with_name(args.dataset.name + "-spliced")
    summary = splice_dataset(args.dataset, out, params.dataset.splice, params.run.seed, progress=not args.no_progress)
    print(json.dumps(summary, indent=2))
    return 0

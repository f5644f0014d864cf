"""``dmutils remask``: the command line of :mod:`dmutils.dataset.remask`."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from dmutils.dataset.remask import mask_overrides, remask_dataset


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", type=Path, help="dataset folder with saved maps (dataset.save_maps=true)")
    parser.add_argument("params", nargs="?", default=None, help="params YAML whose 'masks' section to use (optional)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="mask override, e.g. --set masks.threshold=0.4 (repeatable)")
    parser.add_argument("--out", type=Path, default=None, help="write a new dataset here (default: update in place)")
    parser.add_argument("--workers", type=int, default=None, help="post-processing processes (default: dataset.workers)")
    parser.add_argument("--no-progress", action="store_true")


def main(args: argparse.Namespace) -> int:
    summary = remask_dataset(args.dataset, mask_overrides(args.params, args.overrides), args.out, args.workers,
                             progress=not args.no_progress)
    print(json.dumps(summary, indent=2))
    return 0

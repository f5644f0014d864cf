"""``dmutils merge-shards``: the command line of :mod:`dmutils.dataset.shards`."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from dmutils.dataset.shards import merge_shards


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", type=Path, help="merged dataset folder (the params' dataset.out_dir)")
    parser.add_argument("shards", type=Path, nargs="*", help="shard folders (default: OUT/shards/*-of-*)")
    parser.add_argument("--partial", action="store_true", help="merge even when some shards of i-of-n are missing")


def main(args: argparse.Namespace) -> int:
    print(json.dumps(merge_shards(args.out, args.shards, args.partial), indent=2))
    return 0

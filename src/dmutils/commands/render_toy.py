"""``dmutils render-toy``: the command line of :mod:`dmutils.data.toyworld`."""
from __future__ import annotations

import argparse
from pathlib import Path

from dmutils.data.toyworld import write_real_splits


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", type=Path, help="output folder (VOC layout)")
    parser.add_argument("--train", type=int, default=400)
    parser.add_argument("--val", type=int, default=100)
    parser.add_argument("--test", type=int, default=200)
    parser.add_argument("--size", type=int, default=64)


def main(args: argparse.Namespace) -> int:
    from dmutils.paths import ensure_writable_dir

    ensure_writable_dir(args.out, "render-toy OUT")
    root = write_real_splits(args.out, {"train": args.train, "val": args.val, "test": args.test}, args.size)
    print(f"wrote toy real splits to {root}")
    return 0

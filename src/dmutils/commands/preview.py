"""``dmutils preview DATASET``: the command line of :mod:`dmutils.dataset.preview`."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from dmutils.dataset.preview import HTML, PNG, TILE, make_preview


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", type=Path, help="a dataset folder (VOC layout with dataset.json), e.g. one 'dmutils generate' wrote")
    parser.add_argument("--out", type=Path, default=None, help=f"folder for {PNG} and {HTML} (default: the dataset folder)")
    parser.add_argument("--max-images", type=_positive, default=32, metavar="N", help="show the first N samples (default 32)")
    parser.add_argument("--columns", type=_positive, default=3, help="samples per row of the PNG (default 3)")
    parser.add_argument("--tile", type=_positive, default=TILE, metavar="PX",
                        help=f"tile size in px (default {TILE}; smaller images are upscaled by a whole factor, nearest-neighbour)")


def main(args: argparse.Namespace) -> int:
    result = make_preview(args.dataset, args.out, max_images=args.max_images, columns=args.columns, tile=args.tile)
    print(json.dumps({"png": str(result["png"]), "html": str(result["html"]), "shown": len(result["shown"]),
                      "total": result["total"]}))
    return 0

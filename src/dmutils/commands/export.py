"""``dmutils export``: the command line of :mod:`dmutils.dataset.export`."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from dmutils.dataset.export import export_hf


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", type=Path, help="a dataset folder 'dmutils generate' wrote")
    parser.add_argument("--format", choices=["hf"], default="hf", help="hf: parquet shards + dataset card, for datasets.load_dataset")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: DATASET-hf beside DATASET)")
    parser.add_argument("--license", dest="licence", default=None, help="licence id for the card (default: the generator's)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")


def main(args: argparse.Namespace) -> int:
    out = args.out or args.dataset.parent / f"{args.dataset.name}-hf"
    print(json.dumps(export_hf(args.dataset, out, overwrite=args.overwrite, licence=args.licence), indent=2))
    return 0

"""``dmutils evaluate``: the command line of :mod:`dmutils.segment.evaluate`."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from dmutils.commands.common import add_params_arguments
from dmutils.segment.evaluate import evaluate


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, help="a folder written by 'dmutils train' (or its model/)")
    add_params_arguments(parser)
    parser.add_argument("--split", default=None, help="real split to evaluate (default real.test_split)")
    parser.add_argument("--tta", action="store_true", help="flip + multi-scale test-time augmentation")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def main(args: argparse.Namespace) -> int:
    import sys

    from dmutils.commands.common import describe_data
    from dmutils.config import load_params
    from dmutils.segment.data import open_real
    from dmutils.segment.models import load_segmenter

    params = load_params(args.params, args.overrides)
    seg = load_segmenter(args.checkpoint)
    dataset = open_real(params, args.split or params.real.test_split)
    print(describe_data("evaluating on", dataset), file=sys.stderr if args.json else sys.stdout)  # --json: stdout is JSON only
    result = evaluate(seg, dataset, tta=args.tta or params.train.tta, scales=params.train.tta_scales,
                      seen_classes=params.train.seen_classes, batch_size=params.train.eval_batch_size, progress=True)
    print(json.dumps(result.to_dict()) if args.json else result.summary())
    return 0

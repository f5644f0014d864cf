"""``dmutils bench NAME [--json]``: benchmarks that print figures (never timed tests).

Each benchmark is a module ``dmutils.benchmarks.<name>`` with ``add_arguments(parser)`` (optional)
and ``run(args) -> dict``; with ``--json`` the dict is printed as one JSON object.
"""
from __future__ import annotations

import argparse
import importlib
import json

BENCHMARKS = {
    "capture": "attention capture overhead and memory (ratio of generation time with/without capture)",
    "generate": "dataset throughput vs plain generation",
    "toy-model": "quality of the embedded toy model: presence rate, attention mIoU, speed, oracle mIoU",
    "segmenter": "segmenter trained on synthetic vs real toy data",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", choices=sorted(BENCHMARKS), help="; ".join(f"{k}: {v}" for k, v in BENCHMARKS.items()))
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="smaller sizes (smoke test of the benchmark itself)")
    parser.add_argument("--model", default=None, help="toy-model, segmenter: a toy model folder to measure or generate "
                        "with instead of the params' (e.g. models/toy-sd3; its family is read from model_index.json)")
    parser.add_argument("--ray", type=int, default=None, metavar="N", help="generate: N single-thread Ray actors against "
                        "one single-thread process (ray_parallel_efficiency, ray_identical)")
    parser.add_argument("--params", default=None, metavar="FILE", help="segmenter: the set-up to generate and train with "
                        "instead of params/toy.yaml (e.g. params/toy_sd3.yaml)")
    parser.add_argument("--seed", type=int, default=0, help="segmenter: run.seed (prompts, sample seeds, training), to see "
                        "how much its figures move between seeds")


MIN_REPEATS = 3  # a ratio from fewer pairs is within the noise of one measure


def format_result(result: dict, targets: dict[str, str]) -> tuple[list[str], list[str]]:
    """The lines to print (each figure with its target beside it, where it has one) and the warnings:
    a ratio resting on fewer than :data:`MIN_REPEATS` repeats."""
    width = max(map(len, result), default=0)
    lines = []
    for k, v in result.items():
        line = f"{k:<{width}}  {v:.4g}" if isinstance(v, float) else f"{k:<{width}}  {v}"
        lines.append(line + (f"  (target {targets[k]})" if k in targets else ""))
    warnings = [f"warning: {k.removesuffix('_repeats')} rests on {v} repeat(s), under {MIN_REPEATS}: noise, not a "
                f"measure (run without --quick)" for k, v in result.items()
                if k.endswith("_repeats") and isinstance(v, int) and v < MIN_REPEATS and k.removesuffix("_repeats") in result]
    return lines, warnings


def main(args: argparse.Namespace) -> int:
    import sys

    module = importlib.import_module(f"dmutils.benchmarks.{args.name.replace('-', '_')}")
    result = module.run(args)
    lines, warnings = format_result(result, getattr(module, "TARGETS", {}))
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        print("\n".join(lines))
    for w in warnings:
        print(w, file=sys.stderr)
    return 0

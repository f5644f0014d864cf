"""``dmutils bench NAME [--json] [--out FILE]``: benchmarks that print figures (never timed tests).

Each benchmark is a module ``dmutils.benchmarks.<name>`` with ``add_arguments(parser)`` (optional)
and ``run(args) -> dict``; with ``--json`` the dict is printed as one JSON object, with ``--out FILE`` it is
also written to FILE (atomically; e.g. ``results/bench_capture.json``). Both add a ``provenance`` block
(:func:`dmutils.provenance.provenance`: commit, command, params digest, model hash, packages, machine, and the
benchmark's ``seconds`` and the load average before and after it). A benchmark names what it used under the
key ``"_inputs"`` of its dict (``params``, ``model_dir``, ``device``; each optional), which is taken out here.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

BENCHMARKS = {
    "capture": "attention capture overhead and memory (ratio of generation time with/without capture)",
    "generate": "dataset throughput vs plain generation",
    "toy-model": "quality of the embedded toy model: presence rate, attention mIoU, speed, oracle mIoU",
    "segmenter": "segmenter trained on synthetic vs real toy data",
    "oracle-error": "the oracle's mIoU on real toy renders, and a bound on its error on generated images (a second labeller)",
    "claims": "the claims ledger: each paper claim measured over seeds, with intervals and a verdict",
    "noise-learning": "issue 24: does noise learning recover a clean segmenter from corrupted toy labels, and find them?",
    "open-vocab": "issue 24: seen real + unseen synthetic classes, seen / unseen / harmonic mIoU over seeds",
    "scaling": "issue 24: segmenter mIoU vs synthetic and real set sizes; synthetic images worth N real ones",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", choices=sorted(BENCHMARKS), help="; ".join(f"{k}: {v}" for k, v in BENCHMARKS.items()))
    parser.add_argument("--json", action="store_true", help="print one JSON object, with a provenance block")
    parser.add_argument("--out", default=None, metavar="FILE", help="also write that JSON object (with its provenance) to "
                        "FILE, e.g. results/bench_capture.json")
    parser.add_argument("--quick", action="store_true", help="smaller sizes (smoke test of the benchmark itself)")
    parser.add_argument("--model", default=None, help="toy-model, segmenter: a toy model folder to measure or generate "
                        "with instead of the params' (e.g. models/toy-sd3; its family is read from model_index.json)")
    parser.add_argument("--ray", type=int, default=None, metavar="N", help="generate: N single-thread Ray actors against "
                        "one single-thread process (ray_parallel_efficiency, ray_identical)")
    parser.add_argument("--params", default=None, metavar="FILE", help="segmenter: the set-up to generate and train with "
                        "instead of params/toy.yaml (e.g. params/toy_sd3.yaml)")
    parser.add_argument("--seed", type=int, default=0, help="segmenter: run.seed (prompts, sample seeds, training), to see "
                        "how much its figures move between seeds")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="toy-model: override a param of params/toy.yaml, e.g. --set capture.aggregate=auto (repeatable)")
    from dmutils.benchmarks import claims, study_options

    claims.add_arguments(parser)
    study_options.add_arguments(parser)  # --seeds, shared with claims


MIN_REPEATS = 3  # a ratio from fewer pairs is within the noise of one measure


def format_result(result: dict, targets: dict[str, str]) -> tuple[list[str], list[str]]:
    """The lines to print (each figure with its target beside it, where it has one) and the warnings:
    a ratio resting on fewer than :data:`MIN_REPEATS` repeats."""
    width = max(map(len, result), default=0)
    lines = []
    for k, v in result.items():
        if isinstance(v, list) and v and isinstance(v[0], dict):
            v = f"{len(v)} entries (see --json)"
        line = f"{k:<{width}}  {v:.4g}" if isinstance(v, float) else f"{k:<{width}}  {v}"
        lines.append(line + (f"  (target {targets[k]})" if k in targets else ""))
    warnings = [f"warning: {k.removesuffix('_repeats')} rests on {v} repeat(s), under {MIN_REPEATS}: noise, not a "
                f"measure (run without --quick)" for k, v in result.items()
                if k.endswith("_repeats") and isinstance(v, int) and v < MIN_REPEATS and k.removesuffix("_repeats") in result]
    return lines, warnings


def command_line(args: argparse.Namespace) -> list[str]:
    """The ``dmutils bench ...`` argv that gives ``args`` (the provenance's command)."""
    argv = ["dmutils", "bench", args.name]
    for flag in ("model", "params", "ray", "ledger"):
        if getattr(args, flag, None) is not None:
            argv += [f"--{flag}", str(getattr(args, flag))]
    for row in getattr(args, "only", None) or []:
        argv += ["--only", row]
    if getattr(args, "seed", 0):
        argv += ["--seed", str(args.seed)]
    from dmutils.benchmarks.study_options import command_flags

    argv += command_flags(args)
    for item in getattr(args, "overrides", None) or []:
        argv += ["--set", item]
    argv += [f"--{flag}" for flag in ("quick", "json") if getattr(args, flag, False)]
    if getattr(args, "out", None):
        argv += ["--out", str(args.out)]
    return argv


def main(args: argparse.Namespace) -> int:
    from dmutils.provenance import git_info, load_average, machine, provenance

    out = getattr(args, "out", None)
    if out:
        from dmutils.paths import writable_problem

        problem = writable_problem(Path(out).parent, "--out's folder")
        if problem:  # before the benchmark, not after an hour of it
            from dmutils.errors import OutputDirError

            raise OutputDirError(problem)
    module = importlib.import_module(f"dmutils.benchmarks.{args.name.replace('-', '_')}")
    git, load_start, t0 = git_info(), load_average(), time.perf_counter()  # the code as it was when the benchmark started
    result = module.run(args)
    seconds = time.perf_counter() - t0
    inputs = result.pop("_inputs", None) or {}
    if args.json or out:
        prov = provenance(command_line(args), inputs.get("params"), inputs.get("model_dir"), inputs.get("device"))
        prov |= git
        prov["seconds"] = round(seconds, 1)
        prov["machine"] = {**machine(inputs.get("device")), "load_average_start": load_start}
        result["provenance"] = prov
    if out:
        from dmutils.paths import atomic_write_bytes

        atomic_write_bytes(Path(out), (json.dumps(result, indent=2, sort_keys=True) + "\n").encode())
    figures = {k: v for k, v in result.items() if k != "provenance"}
    lines, warnings = format_result(figures, getattr(module, "TARGETS", {}))
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        print("\n".join(lines))
    for w in warnings:
        print(w, file=sys.stderr)
    return 0

"""Paired A/B timing: a time ratio that repeats on a shared, noisy machine.

Why paired and interleaved: on a machine whose load changes (other jobs start and stop), two
medians taken in separate blocks of runs measure the load as much as the code. Here A and B run
back to back (A B, then B A, A B, ...: the order alternates so that neither side always runs second),
each pair gives one ratio ``t_b / t_a`` under nearly the same load, and the median of those ratios
is reported with its spread (max - min) and the number of pairs. Each run should last >= ~1-2 s (size
the work: more steps, more samples): timer and scheduler noise are then small next to the run.

Usage (what the capture / generate benchmarks do)::

    from dmutils.benchmarks.timing import paired_ratio, ratio_entries

    r = paired_ratio(lambda: generate(plain), lambda: generate(captured), repeats=7, warmup=1)
    out |= ratio_entries("ratio_toy", r)  # ratio_toy, ratio_toy_spread, ratio_toy_range, ratio_toy_repeats

``paired_ratio`` returns ``{"ratio", "spread", "iqr", "min", "max", "repeats", "a_s", "b_s", "a_spread_s",
"b_spread_s", "ratios"}``: the median per-pair ratio t_b / t_a, max - min and min / max of the per-pair
ratios, the number of pairs, the median seconds of A and of B and their max - min, and every pair's ratio.
For a throughput ratio (B's throughput over A's, e.g. dataset over plain) pass the slower path as ``run_a``:
t_plain / t_dataset is the dataset's throughput divided by plain generation's.
"""
from __future__ import annotations

import os
import statistics
import sys
import time
from typing import Callable

Run = Callable[[], object]


def fixed_threads() -> int:
    """Set torch's intra-op threads to ``DMUTILS_BENCH_THREADS`` (default 1) and return it.

    Why 1 by default: on a machine shared with other jobs, two OpenMP threads on two busy cores wait
    for each other at every parallel op; measured on this project's 2-core machine under a load of ~8,
    10 toy steps took 154 s on 2 threads and 8-9 s on 1. One thread is what repeats; set
    ``DMUTILS_BENCH_THREADS=2`` on a quiet machine to measure the two-core speed."""
    import torch

    threads = int(os.environ.get("DMUTILS_BENCH_THREADS", 1))
    torch.set_num_threads(threads)
    return threads


def timed(run: Run, clock: Callable[[], float] = time.perf_counter) -> float:
    """Seconds of one call of ``run`` on ``clock`` (wall by default)."""
    start = clock()
    run()
    return clock() - start


def paired_ratio(run_a: Run, run_b: Run, repeats: int = 5, warmup: int = 1, min_seconds: float = 1.0,
                 label: str = "", clock: Callable[[], float] | None = None) -> dict:
    """Median of ``repeats`` per-pair ratios ``t_b / t_a`` after ``warmup`` untimed runs of each.

    ``clock``: ``time.perf_counter`` (wall, the default) or ``time.process_time`` (this process's CPU
    seconds: for work done in this process on a fixed number of threads, other jobs' load moves it less
    than wall time; under a load of 8-13 on 2 cores the per-pair toy capture ratios ranged 0.81-1.12 in
    wall time, 0.92-1.10 in CPU time). Pairs alternate their order (A B, B A, ...); with a ``label`` each
    pair is logged to stderr. Runs shorter than ``min_seconds`` (median) are reported on stderr: their
    ratio is at the mercy of timer and scheduler noise.
    """
    clock = clock or time.perf_counter
    if repeats < 1 or warmup < 0:
        raise ValueError(f"paired_ratio needs repeats >= 1 and warmup >= 0 (got {repeats}, {warmup})")
    for _ in range(warmup):
        run_a()
        run_b()
    a_times, b_times = [], []
    for i in range(repeats):
        if i % 2 == 0:
            a, b = timed(run_a, clock), timed(run_b, clock)
        else:
            b, a = timed(run_b, clock), timed(run_a, clock)
        a_times.append(a)
        b_times.append(b)
        if label:
            print(f"[timing] {label} pair {i + 1}/{repeats}: {a:.2f} s / {b:.2f} s, ratio {b / a:.3f}", file=sys.stderr, flush=True)
    ratios = [b / a for a, b in zip(a_times, b_times)]
    quartiles = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else [ratios[0]] * 3
    out = {"ratio": statistics.median(ratios), "spread": max(ratios) - min(ratios), "iqr": quartiles[2] - quartiles[0], "min": min(ratios), "max": max(ratios),
           "repeats": repeats, "a_s": statistics.median(a_times), "b_s": statistics.median(b_times),
           "a_spread_s": max(a_times) - min(a_times), "b_spread_s": max(b_times) - min(b_times), "ratios": ratios}
    if min(out["a_s"], out["b_s"]) < min_seconds:
        print(f"[timing] {label or 'paired_ratio'}: runs of {min(out['a_s'], out['b_s']):.2f} s are shorter than "
              f"{min_seconds} s; the ratio may not repeat (time more work per run)", file=sys.stderr, flush=True)
    return out


def ratio_entries(name: str, result: dict, digits: int = 4) -> dict:
    """The JSON entries of one paired ratio: ``name``, ``name_spread`` (max - min of the per-pair
    ratios), ``name_iqr`` (their interquartile range: the spread one outlying pair does not set),
    ``name_range`` ([min, max]) and ``name_repeats`` (number of pairs)."""
    return {name: round(result["ratio"], digits), f"{name}_spread": round(result["spread"], digits),
            f"{name}_iqr": round(result.get("iqr", result["spread"]), digits),
            f"{name}_range": [round(result["min"], digits), round(result["max"], digits)], f"{name}_repeats": result["repeats"]}

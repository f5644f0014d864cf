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
    out = {**_summary(ratios), "a_s": statistics.median(a_times), "b_s": statistics.median(b_times),
           "a_spread_s": max(a_times) - min(a_times), "b_spread_s": max(b_times) - min(b_times)}
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


def alternating_steps(denoiser, toggle: Callable[[bool], None], modules: dict, generate: Callable[[int], object], pairs: int,
                      warmup: int = 2, clock: Callable[[], float] = time.process_time) -> dict:
    """B over A, alternated step by step inside one generation: what a per-layer change (capture) costs.

    Why: on this project's CPU the same denoiser step's time varies from one run to the next (the machine's speed
    drifts), so two whole generations compared in turn differ by more than capture costs. Here ``generate(steps)``
    runs one generation of ``warmup + 2 * pairs`` denoiser calls; before each call ``toggle(on)`` switches B on or off
    (pairs alternate their order: A B, B A, ...). B changes only ``modules`` (name -> module: the captured layers),
    so each pair's extra time is the time spent in those modules with B less without it, measured within a second
    of each other; the pair's ratio is 1 + that extra / the A step's time. ``ratio`` is the median of the pairs'
    ratios, with ``spread``, ``iqr``, ``min``, ``max`` and ``ratios`` as :func:`paired_ratio`'s; ``a_s`` / ``b_s``:
    median seconds of an A step and of an A step plus the extra; ``steps_ratio``: the median of the whole steps'
    ratios B / A, which also holds any cost outside ``modules`` (none is expected) and the machine's noise."""
    if pairs < 1 or warmup < 0:
        raise ValueError(f"alternating_steps needs pairs >= 1 and warmup >= 0 (got {pairs}, {warmup})")
    steps: list[tuple[bool, float, float]] = []  # (B on, step seconds, seconds inside modules)
    inside, step_start = [0.0], [0.0]
    started: dict[int, float] = {}  # id(module) -> when its call began

    def before_step(module, args, kwargs) -> None:
        index = len(steps) - warmup  # warm-up steps alternate, the last one on
        on = index % 2 == 1 if index < 0 else (index % 2 == 1) == ((index // 2) % 2 == 0)
        toggle(on)
        inside[0] = 0.0
        step_start[0] = clock()
        steps.append((on, 0.0, 0.0))

    def after_step(module, args, kwargs, output) -> None:
        on, _, _ = steps[-1]
        steps[-1] = (on, clock() - step_start[0], inside[0])

    def before(module, args) -> None:
        started[id(module)] = clock()

    def after(module, args, output) -> None:
        inside[0] += clock() - started.pop(id(module))

    hooks = [denoiser.register_forward_pre_hook(before_step, with_kwargs=True),
             denoiser.register_forward_hook(after_step, with_kwargs=True)]
    for module in modules.values():
        hooks += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
    try:
        generate(warmup + 2 * pairs)
    finally:
        for hook in hooks:
            hook.remove()
        toggle(False)
    timed_steps = steps[warmup:]
    if len(timed_steps) != 2 * pairs:
        raise RuntimeError(f"alternating_steps: the generation made {len(steps)} denoiser calls, not {warmup + 2 * pairs}")
    ratios, steps_ratios, a_times, extras = [], [], [], []
    for first, second in zip(timed_steps[0::2], timed_steps[1::2]):
        b, a = (first, second) if first[0] else (second, first)
        extra = b[2] - a[2]
        ratios.append(1 + extra / a[1])
        steps_ratios.append(b[1] / a[1])
        a_times.append(a[1])
        extras.append(extra)
    a_s = statistics.median(a_times)
    return {**_summary(ratios), "a_s": a_s, "b_s": a_s + statistics.median(extras),
            "steps_ratio": statistics.median(steps_ratios), "steps_ratio_spread": max(steps_ratios) - min(steps_ratios)}


def _summary(ratios: list[float]) -> dict:
    """The per-pair ratios' median, spread (max - min), interquartile range, min, max, count and the ratios."""
    quartiles = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else [ratios[0]] * 3
    return {"ratio": statistics.median(ratios), "spread": max(ratios) - min(ratios), "iqr": quartiles[2] - quartiles[0],
            "min": min(ratios), "max": max(ratios), "repeats": len(ratios), "ratios": ratios}

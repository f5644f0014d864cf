"""``dmutils bench claims [--json] [--out FILE] [--ledger FILE] [--only ID] [--quick]``: the claims ledger.

Every claim of ``params/claims/toy.yaml`` (:mod:`dmutils.studies.claims`) measured on the embedded default
(``params/toy.yaml``, or ``--params``): per claim the paper's figure, the toy world's difference in mIoU points with its
95% interval over the ledger's seeds, for the masks against the oracle and for a segmenter on the real test split,
and a verdict. Each measure is cached in ``data/claims/<ledger>/`` as soon as it is made, so a stopped run resumes,
and a second run only summarises. The full ledger takes about an hour on 2 CPU cores; ``--only ID`` (repeatable)
runs some rows, ``--quick`` two seeds of 4 images and 4-step trainings (a smoke test of the machinery, not a measure).
On a shared or small CPU run it with ``OMP_NUM_THREADS=1``: two torch threads waiting on each other beside other jobs
made one 120-step training take 296 s; with one thread, beside the same jobs, 61-66 s. ``--seeds 1,2`` runs only those
seeds (a second process on a free core; both write the same cache, then one plain run summarises).
"""
from __future__ import annotations

import argparse
import json
import sys

from dmutils.config import load_params
from dmutils.paths import REPO_ROOT

LEDGER = "params/claims/toy.yaml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ledger", default=None, metavar="FILE", help=f"claims: the ledger file (default {LEDGER})")
    parser.add_argument("--only", action="append", default=None, metavar="ID", help="claims: run only this row (repeatable)")


def run(args: argparse.Namespace) -> dict:
    from dmutils.dataset.batch import pipeline_for
    from dmutils.studies import claims

    quick = getattr(args, "quick", False)
    params = load_params(getattr(args, "params", None) or REPO_ROOT / "params" / "toy.yaml",
                         {"model": {"num_inference_steps": 4}} if quick else None)
    ledger = claims.load_ledger(params, getattr(args, "ledger", None) or LEDGER)
    if quick:
        ledger.seeds, ledger.samples = ledger.seeds[:2], 4
        ledger.base = {**ledger.base, "train.steps": 4, "train.noise_learning.fold_steps": 2}
    rows = ledger.select(getattr(args, "only", None))
    cache = params.resolve_path(f"data/claims/{ledger.path.stem}{'-quick' if quick else ''}")
    seeds = _seeds(getattr(args, "seeds", None), ledger)
    claims.run_ledger(lambda: pipeline_for(params), params, ledger, cache, rows, seeds,
                      log=lambda line: print(line, file=sys.stderr, flush=True))
    import torch

    summary = claims.summarize(params, ledger, cache, rows)
    verdicts = [r["verdict"] for r in summary]
    trained = [json.loads(f.read_text()).get("train_seconds", 0.0) for f in sorted(cache.glob("seg-*.json"))]
    return {"rows": summary, "claims": len(summary), "holds": verdicts.count("holds"),
            "does_not_hold": verdicts.count("does not hold"), "inconclusive": verdicts.count("inconclusive"),
            "trainings": len(trained), "train_seconds_total": round(sum(trained), 1),
            "seeds": ledger.seeds, "samples": ledger.samples, "base": ledger.base, "torch_threads": torch.get_num_threads(),
            "ledger": str(ledger.path.relative_to(REPO_ROOT)) if ledger.path.is_relative_to(REPO_ROOT) else str(ledger.path),
            "_inputs": {"params": params, "model_dir": params.resolve_path(params.model.path)}}


def _seeds(seeds: list[int] | None, ledger) -> list[int] | None:
    """``--seeds``: compute only these of the ledger's seeds (e.g. a second process on another core); the summary
    still reads every seed from the cache."""
    if not seeds:
        return None
    from dmutils.errors import ParamsError

    unknown = [s for s in seeds if s not in ledger.seeds]
    if unknown:
        raise ParamsError(f"--seeds {' '.join(map(str, seeds))}: the ledger's seeds are {ledger.seeds}")
    return list(seeds)

"""``dmutils bench oracle-error``: how wrong is the oracle that every mask score is measured against?

On real toy renders of the test split (exact labels): the oracle's and the colour-and-shape heuristic's mIoU
(:mod:`dmutils.oracles.toy_heuristic`) and their agreement. On images the toy model generates with ``params/toy.yaml``
(no labels): the two labellers' agreement, and from it ``oracle_error_bound_generated``, the most that any mask mIoU
measured against the oracle there could be off its true value (the triangle inequality on 1 - IoU; see that module).
"""
from __future__ import annotations

import argparse
import tempfile

import numpy as np

from dmutils.config import load_params
from dmutils.paths import REPO_ROOT

TARGETS = {"oracle_miou_real": ">= 0.95"}


def run(args: argparse.Namespace) -> dict:
    from dmutils.data.toyworld import SPLIT_SEED_OFFSET, make_scene
    from dmutils.dataset.generate import generate_dataset
    from dmutils.oracles import get_oracle
    from dmutils.oracles.toy_heuristic import HeuristicLabeller, oracle_error
    from dmutils.segment.data import synthetic_dataset

    quick = getattr(args, "quick", False)
    n_real, n_generated = (24, 4) if quick else (200, 96)
    tmp = tempfile.TemporaryDirectory() if quick else None
    out_dir = f"{tmp.name}/synthetic" if quick else "data/bench-oracle-error/synthetic"
    over = {"dataset": {"out_dir": out_dir, "num_samples": n_generated, "val_fraction": 0.0}}
    if quick:
        over["model"] = {"num_inference_steps": 4}
    params = load_params(REPO_ROOT / "params" / "toy.yaml", over)
    scenes = [make_scene(SPLIT_SEED_OFFSET["test"] + i) for i in range(n_real)]
    generated = None
    model_dir = params.resolve_path(params.model.path)
    if (model_dir / "model_index.json").is_file():
        generate_dataset(params, progress=not getattr(args, "json", False))  # resumes: made once, then read
        dataset = synthetic_dataset(params, "train")
        generated = np.stack([dataset[i][0] for i in range(len(dataset))])
    oracle = get_oracle(params)
    result = oracle_error(oracle.model, HeuristicLabeller(), np.stack([s.image for s in scenes]),
                          np.stack([s.label for s in scenes]), generated)
    result |= {"generated_with": params.model.path, "guidance_scale": params.model.guidance_scale,
               "_inputs": {"params": params, "model_dir": oracle_folder(params)}}  # the oracle's weights: what is measured
    if tmp is not None:
        tmp.cleanup()
    return result


def oracle_folder(params):
    from dmutils.oracles import toy_unet

    return params.resolve_path(params.oracle.model) if params.oracle.model else toy_unet.DEFAULT_DIR

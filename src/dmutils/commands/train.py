"""``dmutils train``: the command line of :mod:`dmutils.segment.train`."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from dmutils.commands.common import add_params_arguments, describe_data
from dmutils.config import load_params
from dmutils.errors import ParamsError
from dmutils.paths import atomic_write_bytes
from dmutils.segment.data import (
    synthetic_dataset,
)
from dmutils.segment.train import train_segmenter


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_params_arguments(parser)
    parser.add_argument("--data", choices=["real", "synthetic", "both"], default="real", help="training data")
    parser.add_argument("--data-dir", type=Path, default=None, metavar="DIR",
                        help="the synthetic dataset folder to train on (default dataset.out_dir, data/<run>/synthetic)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default data/<run>/segmenter-<data>)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    parser.add_argument("--no-eval", action="store_true", help="skip the evaluation on the real test split")


def main(args: argparse.Namespace) -> int:
    from functools import partial

    from dmutils import preflight as pf
    from dmutils.segment.data import open_real
    from dmutils.segment.evaluate import evaluate

    params = load_params(args.params, args.overrides)
    if args.data_dir is not None:
        if args.data == "real":
            raise ParamsError("--data-dir names a synthetic dataset; add --data synthetic or --data both")
        params = params.model_copy(update={"dataset": params.dataset.model_copy(update={"out_dir": str(args.data_dir.resolve())})})
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    if world > 1 and (params.train.noise_learning.enabled or params.train.self_training):
        raise ParamsError("train.noise_learning and train.self_training run in one process; launch 'dmutils train' "
                          "without accelerate/torchrun for them, or turn them off")
    out = args.out or params.resolve_path(f"data/{{run}}/segmenter-{args.data}")
    checks = {"checkpoints": partial(pf.check_checkpoints, oracle=False), "outputs": partial(pf.check_outputs, dirs={"--out": out}),
              "device": partial(pf.check_device, which=("train",))}
    splits = ([params.real.train_split] if args.data != "synthetic" else []) + ([] if args.no_eval else [params.real.test_split])
    if splits:
        checks["real data"] = partial(pf.check_real_data, splits=splits)
    pf.preflight(params, checks)
    real_train = open_real(params, params.real.train_split) if args.data in ("real", "both") else None
    synthetic = synthetic_dataset(params) if args.data in ("synthetic", "both") else None
    if synthetic is not None and params.dataset.splice.enabled:  # fail before noise learning's hours, not after
        from dmutils.dataset.splice import check_grids

        check_grids(params.dataset.splice, len(synthetic), str(synthetic.root))
    if synthetic is not None and params.train.noise_learning.enabled:
        from dmutils.segment.noise import noise_learning

        synthetic, scores = noise_learning(params, synthetic, progress=True)
        out.mkdir(parents=True, exist_ok=True)
        scores.to_csv(out / "noise_scores.csv", index=False)
    mosaics = None
    if synthetic is not None and params.dataset.splice.enabled:  # DiffuMask's splicing, of the kept samples
        from dmutils.dataset.splice import MosaicSet, grids_that_fit

        splice_params, dropped = grids_that_fit(params.dataset.splice, len(synthetic))
        if dropped and rank == 0:
            print(f"warning: noise learning kept {len(synthetic)} samples, too few for the {dropped} mosaics of "
                  f"dataset.splice.grids; splicing with {splice_params.grids} only")
        mosaics = MosaicSet(synthetic, splice_params, params.run.seed)
    datasets = [d for d in (real_train, synthetic, mosaics) if d is not None]
    for role, d in (("real training data", real_train), ("synthetic training data", synthetic),
                    ("mosaics of the synthetic data (dataset.splice)", mosaics)):
        if d is not None and rank == 0:
            print(describe_data(role, d))
    result = train_segmenter(params, datasets, out, resume=args.resume)
    if rank != 0:
        return 0  # the main process reports and evaluates
    if synthetic is not None and params.train.self_training:
        from dmutils.segment.selftrain import self_train

        result = self_train(params, result.segmenter, synthetic, extra=[real_train] if real_train else [], out_dir=out / "self_trained")
    print(f"trained in {result.seconds:.1f}s, final loss {result.losses[-1]:.4f}; model in {result.out_dir / 'model'}")
    if not args.no_eval:
        test = open_real(params, params.real.test_split)
        metrics = evaluate(result.segmenter, test, tta=params.train.tta, scales=params.train.tta_scales,
                           seen_classes=params.train.seen_classes, batch_size=params.train.eval_batch_size)
        atomic_write_bytes(result.out_dir / "metrics.json", json.dumps(metrics.to_dict(), indent=2).encode())
        print(metrics.summary())
    return 0

"""``dmutils generate``: the command line of :mod:`dmutils.dataset.generate`."""
from __future__ import annotations

import argparse
from pathlib import Path

from dmutils.commands.common import add_params_arguments
from dmutils.config import Params, load_params
from dmutils.dataset.generate import format_summary, generate_dataset
from dmutils.dataset.layout import output_dir, parse_shard, shard_indices


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_params_arguments(parser)
    parser.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="the dataset folder to write (default dataset.out_dir, data/<run>/synthetic)")
    parser.add_argument("--shard", default=None, metavar="I/N", help="write shard I of N (0-based) to <out_dir>/shards/I-of-N")
    parser.add_argument("--overwrite", action="store_true", help="replace a dataset made with other params")
    parser.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                        help="generate on a Ray cluster's actors: ADDRESS (e.g. ray://head:10001 or auto), or alone for "
                             "RAY_ADDRESS / a local cluster (default: the params' ray.address); settings in the params' ray section")
    parser.add_argument("--no-progress", action="store_true")


def preflight_checks(params: Params, shard: tuple[int, int] | None = None) -> dict:
    """What ``dmutils generate`` needs: the model's files, a writable output folder with room, the device."""
    from functools import partial

    from dmutils import preflight as pf

    outputs = partial(pf.check_outputs, dirs={"dataset.out_dir": output_dir(params, shard)},
                      samples=len(shard_indices(params.dataset.num_samples, shard)))
    return {"model": pf.check_model, "outputs": outputs, "device": partial(pf.check_device, which=("model",))}


def main(args: argparse.Namespace) -> int:
    from dmutils.preflight import preflight

    params = load_params(args.params, args.overrides)
    if args.out is not None:  # like export/train/remask/splice --out: the same as --set dataset.out_dir=DIR
        params = params.model_copy(update={"dataset": params.dataset.model_copy(update={"out_dir": str(args.out.resolve())})})
    shard = parse_shard(args.shard)
    preflight(params, preflight_checks(params, shard))
    summary = generate_dataset(params, shard, progress=not args.no_progress, overwrite=args.overwrite,
                               ray=args.ray if args.ray is not None else params.ray.address)
    print(format_summary(summary))
    return 0

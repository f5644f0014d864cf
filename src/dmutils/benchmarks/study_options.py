"""The options of the recipe studies' benchmarks (``dmutils bench noise-learning | open-vocab | scaling``), in one
place because ``dmutils bench`` has one parser for every benchmark, and what they share: the params, the seeds, the
training steps, the cache folder and the ``--quick`` sizes."""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from dmutils.config import Params, load_params

QUICK_SEEDS = (0, 1)
QUICK_STEPS = 6
FLAGS = ("seeds", "steps", "cache", "test_images", "shares", "kinds", "unseen", "synthetic_sizes", "real_sizes",
         "synthetic_images", "arms")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("noise-learning, open-vocab, scaling (issue 24's recipe studies)")
    g.add_argument("--seeds", type=int, nargs="+", default=None, metavar="N",
                   help="training seeds (default 0 1 2; --quick 0 1); claims: compute only "
                   "these of the ledger's seeds (e.g. a second process), the summary reading every seed from the cache")
    g.add_argument("--steps", type=int, default=None, metavar="N", help="segmenter training steps (default the params' "
                   "train.steps: 320 at batch 16 in params/toy.yaml)")
    g.add_argument("--cache", type=Path, default=None, metavar="DIR", help="where each training's result is kept, by a "
                   "hash of its settings, so a stopped run resumes (default data/bench-<name>; --quick a temporary folder)")
    g.add_argument("--test-images", type=int, default=None, metavar="N", help="real test images (default 200)")
    g.add_argument("--shares", type=float, nargs="+", default=None, metavar="F",
                   help="noise-learning: shares of corrupted masks (default 0.1 0.2 0.4)")
    g.add_argument("--kinds", nargs="+", default=None, choices=["shifted", "swapped", "eroded"],
                   help="noise-learning: corruption kinds (default all three)")
    g.add_argument("--unseen", nargs="+", default=None, metavar="CLASS",
                   help="open-vocab: the unseen classes (default the params' last two)")
    g.add_argument("--synthetic-images", type=int, default=None, metavar="N",
                   help="open-vocab: synthetic images of the unseen classes (default 400)")
    g.add_argument("--synthetic-sizes", type=int, nargs="+", default=None, metavar="N",
                   help="scaling: nested synthetic subset sizes (default 100 200 400 800 1600 3200)")
    g.add_argument("--real-sizes", type=int, nargs="+", default=None, metavar="N",
                   help="scaling: real subset sizes (default 25 50 100 200 400 800)")
    g.add_argument("--arms", nargs="+", default=None, choices=["synthetic", "real", "real+synthetic"],
                   help="scaling: the curves trained (default all three; without real+synthetic no mixing gain)")


def command_flags(args: argparse.Namespace) -> list[str]:
    """These options as they were given (for the provenance's command line)."""
    argv = []
    for name in FLAGS:
        value = getattr(args, name, None)
        if value is None:
            continue
        argv += [f"--{name.replace('_', '-')}", *map(str, value if isinstance(value, list) else [value])]
    return argv


def study_params(args: argparse.Namespace) -> Params:
    """The set-up: ``--params`` or params/toy.yaml, with ``--steps``; ``--quick`` trains a tiny segformer at 32 px."""
    from dmutils.paths import REPO_ROOT
    from dmutils.studies.trainings import TINY_TRAIN, override

    params = load_params(getattr(args, "params", None) or REPO_ROOT / "params" / "toy.yaml")
    over = {}
    if getattr(args, "quick", False):
        over = {"train": {**TINY_TRAIN, "steps": QUICK_STEPS}}
    if getattr(args, "steps", None) is not None:
        over.setdefault("train", {})["steps"] = args.steps
    return override(params, over, "--steps") if over else params


def seeds(args: argparse.Namespace, default=(0, 1, 2)) -> tuple[int, ...]:
    value = getattr(args, "seeds", None)
    return tuple(value) if value else (QUICK_SEEDS if getattr(args, "quick", False) else tuple(default))


def apply(settings, args: argparse.Namespace, **fields: str) -> None:
    """Each option given on the command line onto its study setting (``attribute="option_name"``), lists as tuples;
    an option left out keeps the setting (0 is a size, not 'unset')."""
    for attr, name in fields.items():
        value = getattr(args, name, None)
        if value is not None:
            setattr(settings, attr, tuple(value) if isinstance(value, list) else value)


class CacheFolder:
    """``--cache``, or data/bench-<name> (a temporary folder, removed after, with ``--quick``)."""

    def __init__(self, args: argparse.Namespace, name: str):
        from dmutils.paths import REPO_ROOT

        given = getattr(args, "cache", None)
        self._tmp = tempfile.TemporaryDirectory() if getattr(args, "quick", False) and given is None else None
        self.path = Path(given) if given else Path(self._tmp.name) if self._tmp else REPO_ROOT / "data" / f"bench-{name}"

    def __enter__(self) -> Path:
        return self.path

    def __exit__(self, *exc) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()

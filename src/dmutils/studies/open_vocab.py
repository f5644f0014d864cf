"""Open vocabulary (issue 24): DiffuMask's zero-shot setting on the toy world.

Some classes are *seen* (real labels exist) and some *unseen* (only the generator knows them). The real training
images keep every object, but the pixels of the unseen classes are set to 255 (ignore): the segmenter is never told
what they are, nor that they are background. The generator is prompted with the unseen classes only
(``dmutils generate`` with ``classes`` cut to them), and its masks are mapped into the full label space. Two arms,
trained over seeds with the same ``params.train``:

- ``seen real``: the real set, unseen pixels ignored;
- ``seen real + unseen synthetic``: the same plus the synthetic set.

Both are scored on the full real test split as :func:`dmutils.segment.evaluate.split_groups` does: seen mIoU
(background counts as seen), unseen mIoU and their harmonic mean, with intervals over seeds and test images
(:func:`dmutils.stats.seeds_bootstrap`) and the paired difference of the two arms.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from dmutils import stats
from dmutils.config import Params
from dmutils.errors import ParamsError
from dmutils.studies import trainings as tr
from dmutils.studies import wording as w

ARMS = ("seen real", "seen real + unseen synthetic")
VERSION = 1


@dataclass
class OpenVocabSettings:
    unseen: tuple[str, ...] | None = None  # None: the params' last two classes
    seeds: tuple[int, ...] = (0, 1, 2)
    n_train: int = 400
    n_test: int = 200
    n_synthetic: int = 400
    image_size: int = 64


def unseen_classes(params: Params, settings: OpenVocabSettings) -> list[str]:
    """The unseen classes, checked: named classes of the params, at least one, and at least one left seen."""
    names = params.class_names
    unseen = list(settings.unseen) if settings.unseen else names[-2:]
    unknown = [c for c in unseen if c not in names]
    if unknown:
        raise ParamsError(f"unseen classes {unknown} are not among the params' classes {names}")
    if not unseen or len(set(unseen)) == len(names) or len(set(unseen)) != len(unseen):
        raise ParamsError(f"name distinct unseen classes, leaving at least one seen, e.g. {names[-2:]}; got {unseen}")
    return unseen


class Relabelled:
    """A dataset with its labels passed through a lookup table into another label space (``classes``)."""

    def __init__(self, dataset, lut: np.ndarray, classes: list[str], root: str):
        self.dataset, self.lut, self.classes, self.root = dataset, lut, list(classes), root

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        image, label = self.dataset[i]
        return image, self.lut[label]


def seen_only(real, unseen: list[str]) -> Relabelled:
    """The real set with the unseen classes' pixels set to 255 (ignored in the loss)."""
    lut = np.arange(256, dtype=np.uint8)
    lut[[real.classes.index(c) for c in unseen]] = 255
    return Relabelled(real, lut, real.classes, f"{getattr(real, 'root', 'real')}[unseen ignored]")


def into_label_space(synthetic, classes: list[str]) -> Relabelled:
    """A synthetic set made with some of the classes, its label values mapped to theirs in ``classes``."""
    lut = np.full(256, 255, dtype=np.uint8)
    for i, name in enumerate(synthetic.classes):
        lut[i] = classes.index(name)
    return Relabelled(synthetic, lut, classes, f"{getattr(synthetic, 'root', 'synthetic')}[in the full label space]")


def unseen_params(params: Params, unseen: list[str], out_dir: str | Path, n: int) -> Params:
    """Generation params that prompt only the unseen classes, into ``out_dir`` (one or two classes a prompt)."""
    classes = [c.model_dump(mode="json") for c in params.classes if c.name in unseen]
    per_image = [k for k in params.prompts.classes_per_image if k <= len(classes)] or [1]
    return tr.override(params, {"classes": classes, "prompts": {"classes_per_image": per_image},
                                "dataset": {"out_dir": str(out_dir), "num_samples": n, "val_fraction": 0.0}},
                       "the unseen classes' generation")


def synthetic_unseen(params: Params, unseen: list[str], folder: str | Path, n: int, pipe=None, progress: bool = False):
    """The unseen classes' synthetic set, generated once by ``dmutils generate``'s code into ``folder`` (resumed),
    in the full label space."""
    from dmutils.dataset.generate import generate_dataset
    from dmutils.segment.data import VOCLayoutDataset

    gen = unseen_params(params, unseen, Path(folder) / f"synthetic-unseen-{'-'.join(unseen)}", n)
    generate_dataset(gen, progress=progress, pipe=pipe)
    data = VOCLayoutDataset(gen.resolve_path(gen.dataset.out_dir), "train")
    if len(data) == 0:
        raise ParamsError(f"every generated image of {unseen} was rejected; check the model and dataset.min_area")
    return into_label_space(data, ["background", *params.class_names])


def group_statistic(classes: list[str], unseen: list[str], group: str):
    """``statistic(i, u)`` for :func:`dmutils.stats.seeds_bootstrap`: the seen, unseen or harmonic mIoU of summed
    counts (background counts as seen, as in :func:`dmutils.segment.evaluate.split_groups`)."""
    seen_cols = [k for k, c in enumerate(classes) if c not in unseen]
    unseen_cols = [k for k, c in enumerate(classes) if c in unseen]

    def of(cols):
        return lambda i, u: stats._mean_iou(i[..., cols], u[..., cols])

    if group == "seen":
        return of(seen_cols)
    if group == "unseen":
        return of(unseen_cols)
    return lambda i, u: stats.harmonic(of(seen_cols)(i, u), of(unseen_cols)(i, u))


@dataclass
class OpenVocabStudy:
    runs: pd.DataFrame  # arm, seed, miou, seen, unseen, harmonic, train_samples, cached
    counts: dict[tuple, dict] = field(default_factory=dict)  # (arm, seed) -> training
    classes: list[str] = field(default_factory=list)
    unseen: list[str] = field(default_factory=list)
    seeds: tuple[int, ...] = ()


def run_open_vocab(params: Params, settings: OpenVocabSettings, cache_dir: str | Path, pipe=None,
                   progress: bool = False) -> OpenVocabStudy:
    """Both arms over the seeds (cached under ``cache_dir``; the synthetic set is generated there once)."""
    tr.check_toy(params, "open-vocabulary")
    tr.check_sizes("seeds", settings.seeds, 0)
    tr.check_sizes("n_train, n_test and n_synthetic", [settings.n_train, settings.n_test, settings.n_synthetic], distinct=False)
    unseen = unseen_classes(params, settings)
    real, test = tr.real_splits(cache_dir, settings.n_train, settings.n_test, settings.image_size)
    classes = list(real.classes)
    seen_real = seen_only(real, unseen)
    synthetic = synthetic_unseen(params, unseen, cache_dir, settings.n_synthetic, pipe, progress)
    cache = tr.JsonCache(cache_dir)
    what = {"n_train": settings.n_train, "n_test": settings.n_test, "image_size": settings.image_size, "unseen": unseen,
            "version": VERSION}
    import json

    syn_hash = json.loads((Path(synthetic.dataset.root) / "dataset.json").read_text()).get("params_hash")
    rows, counts = [], {}
    for seed in settings.seeds:
        p = tr.with_seed(params, seed)
        for arm, sets, extra in ((ARMS[0], [seen_real], {}),
                                 (ARMS[1], [seen_real, synthetic], {"synthetic": syn_hash, "n_syn": len(synthetic)})):
            res, hit = cache.get_or_compute(tr.key("openvocab", p, arm=arm, **what, **extra),
                                            lambda: tr.train_and_count(p, sets, test, progress))
            counts[(arm, seed)] = res
            i, u = np.asarray(res["inter"], np.float64).sum(0), np.asarray(res["union"], np.float64).sum(0)
            groups = {g: float(group_statistic(classes, unseen, g)(i, u)) for g in ("seen", "unseen", "harmonic")}
            rows.append({"arm": arm, "seed": seed, "miou": res["miou"], **groups, "train_samples": res["train_samples"],
                         "train_seconds": res["train_seconds"], "cached": hit})
    return OpenVocabStudy(pd.DataFrame(rows), counts, classes, unseen, tuple(settings.seeds))


def open_vocab_table(study: OpenVocabStudy, boot_seed: int = 0) -> pd.DataFrame:
    """One row per arm and group (seen, unseen, harmonic): the score over seeds with its 95% interval (seeds and test
    images resampled), and the paired difference of the synthetic arm to the real-only one."""
    rows = []
    per_arm = {arm: [study.counts[(arm, s)] for s in study.seeds] for arm in ARMS}
    for group in ("seen", "unseen", "harmonic"):
        stat = group_statistic(study.classes, study.unseen, group)
        for arm in ARMS:
            row = {"group": group, "arm": arm, **tr.flat("miou", tr.interval(per_arm[arm], statistic=stat, seed=boot_seed))}
            if arm == ARMS[1]:
                row |= tr.flat("vs_real_only", tr.interval(per_arm[arm], per_arm[ARMS[0]], statistic=stat, seed=boot_seed))
            rows.append(row)
    return pd.DataFrame(rows)


def conclusions(table: pd.DataFrame) -> list[str]:
    """The study's answer per group (seen, unseen, harmonic), every number a cell of :func:`open_vocab_table`."""
    out = []
    for group, rows in table.groupby("group", sort=False):
        alone, both = rows[rows.arm == ARMS[0]].iloc[0], rows[rows.arm == ARMS[1]].iloc[0]
        lo, hi = both["vs_real_only_lo"], both["vs_real_only_hi"]
        out.append(f"{group}: {w.num(alone['miou'])} with the seen real labels alone, {w.num(both['miou'])} with the "
                   f"unseen classes' synthetic masks added: {w.signed(both['vs_real_only'])} {w.interval(lo, hi)}, "
                   f"{w.verdict(lo, hi)}.")
    return out

"""Scaling (issue 24): how does segmenter mIoU on the real test split grow with the number of synthetic images, with
the number of real ones, and with real ones plus the synthetic set? How many synthetic images is one real one worth?

- **Nested subsets.** One synthetic set is generated once (``dmutils generate``'s code, optionally on Ray); a size
  ``N`` is its first ``N`` accepted samples in index order, so each size contains the smaller ones and the curve is
  not re-drawn from new images at each point. Real sizes are the first ``N`` scenes of the toy world's training
  split, rendered as far as needed (800 extends the usual 400 with new scenes; the first 400 are the usual ones).
- **Fixed training.** Every point trains ``params.train`` (same steps and batch) with each seed: the curves compare
  data, not compute (a small set is seen more often).
- **Read-offs.** :func:`synthetic_equivalent` interpolates the synthetic curve (mIoU against log N) to the mIoU of
  each real size; :func:`mixing_gain` says, with a paired interval, whether real + synthetic beats real alone.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from dmutils.config import Params
from dmutils.errors import DataError
from dmutils.studies import trainings as tr
from dmutils.studies import wording as w

ARMS = ("synthetic", "real", "real+synthetic")
VERSION = 1


@dataclass
class ScalingSettings:
    synthetic_sizes: tuple[int, ...] = (100, 200, 400, 800, 1600, 3200)
    real_sizes: tuple[int, ...] = (25, 50, 100, 200, 400, 800)
    seeds: tuple[int, ...] = (0, 1, 2)
    n_test: int = 200
    image_size: int = 64
    mix_synthetic: int | None = None  # synthetic images added to each real size; None = the largest synthetic size
    oversample: float = 1.1  # generated / needed: room for rejected generations
    arms: tuple[str, ...] = ARMS  # the curves trained (leaving out real+synthetic leaves the mixing gain unmeasured)

    def check(self) -> ScalingSettings:
        unknown = sorted(set(self.arms) - set(ARMS))
        if unknown or not self.arms:
            raise DataError(f"scaling arms {unknown or '(none)'}: choose among {', '.join(ARMS)}")
        tr.check_sizes("synthetic sizes", self.synthetic_sizes)
        tr.check_sizes("real sizes", self.real_sizes)
        tr.check_sizes("seeds", self.seeds, 0)
        tr.check_sizes("n_test", [self.n_test])
        return self

    @property
    def mix(self) -> int:
        return self.mix_synthetic or max(self.synthetic_sizes)


def synthetic_set(params: Params, settings: ScalingSettings, folder: str | Path, ray: str | None = None, pipe=None,
                  progress: bool = False):
    """The one synthetic set every synthetic size is cut from: ``oversample`` x the largest size generated into
    ``folder/synthetic`` (resumed), every accepted sample (train and val) in index order."""
    from dmutils.dataset.generate import generate_dataset
    from dmutils.segment.data import VOCLayoutDataset

    need = max(max(settings.synthetic_sizes), settings.mix)
    gen = tr.override(params, {"dataset": {"out_dir": str(Path(folder) / "synthetic"),
                                           "num_samples": int(np.ceil(need * settings.oversample))}}, "the scaling set")
    generate_dataset(gen, progress=progress, pipe=pipe, ray=ray)
    root = gen.resolve_path(gen.dataset.out_dir)
    data = VOCLayoutDataset(root, "train")
    data.items += VOCLayoutDataset(root, "val").items
    data.items.sort(key=lambda item: item[0].name)  # syn_000123.jpg: index order
    if len(data) < need:
        raise DataError(f"{root} holds {len(data)} accepted samples, fewer than the {need} asked for (generations "
                        "were rejected); lower the largest of --synthetic-sizes, or raise ScalingSettings.oversample")
    return data, json.loads((root / "dataset.json").read_text()).get("params_hash")


@dataclass
class ScalingStudy:
    runs: pd.DataFrame  # arm, size, seed, miou, train_samples, train_seconds, cached
    counts: dict[tuple, dict] = field(default_factory=dict)  # (arm, size, seed) -> training
    settings: ScalingSettings = field(default_factory=ScalingSettings)


def run_scaling(params: Params, settings: ScalingSettings, cache_dir: str | Path, ray: str | None = None, pipe=None,
                progress: bool = False) -> ScalingStudy:
    """Every (arm, size, seed) trained and scored once (cached under ``cache_dir`` by settings)."""
    tr.check_toy(params, "scaling")
    settings.check()
    real, test = tr.real_splits(cache_dir, max(settings.real_sizes), settings.n_test, settings.image_size)
    synthetic, syn_hash = synthetic_set(params, settings, cache_dir, ray, pipe, progress)
    cache = tr.JsonCache(cache_dir)
    base = {"n_test": settings.n_test, "image_size": settings.image_size, "version": VERSION}
    mix = tr.first_n(synthetic, settings.mix)
    plan = ([("synthetic", n, lambda n=n: [tr.first_n(synthetic, n)], {"synthetic": syn_hash}) for n in settings.synthetic_sizes]
            + [("real", n, lambda n=n: [tr.first_n(real, n)], {}) for n in settings.real_sizes]
            + [("real+synthetic", n, lambda n=n: [tr.first_n(real, n), mix], {"synthetic": syn_hash, "mix": settings.mix})
               for n in settings.real_sizes])
    plan = [step for step in plan if step[0] in settings.arms]
    rows, counts = [], {}
    for seed in settings.seeds:
        p = tr.with_seed(params, seed)
        for arm, n, sets, extra in plan:
            res, hit = cache.get_or_compute(tr.key("scaling", p, arm=arm, size=n, **base, **extra),
                                            lambda: tr.train_and_count(p, sets(), test, progress))
            counts[(arm, n, seed)] = res
            rows.append({"arm": arm, "size": n, "seed": seed, "miou": res["miou"], "train_samples": res["train_samples"],
                         "train_seconds": res["train_seconds"], "cached": hit})
    return ScalingStudy(pd.DataFrame(rows), counts, settings)


def curves(study: ScalingStudy, boot_seed: int = 0) -> pd.DataFrame:
    """The figure's data: one row per (arm, size), mIoU over seeds with its 95% band (seeds and test images)."""
    rows = []
    for (arm, n), _ in study.runs.groupby(["arm", "size"], sort=False):
        res = [study.counts[(arm, n, s)] for s in study.settings.seeds]
        rows.append({"arm": arm, "size": int(n), **tr.flat("miou", tr.interval(res, seed=boot_seed))})
    return pd.DataFrame(rows)


def _log_interp(x_target: float, sizes: np.ndarray, mious: np.ndarray) -> float:
    """The synthetic size at which the curve (made non-decreasing, log-size interpolated) reaches ``x_target``;
    NaN when the curve never does (more synthetic images than measured would be needed)."""
    m = np.maximum.accumulate(mious)
    if x_target > m[-1] or np.isnan(x_target):
        return float("nan")
    if x_target <= m[0]:
        return float(sizes[0])
    k = int(np.argmax(m >= x_target))
    lo, hi = m[k - 1], m[k]
    t = 0.0 if hi == lo else (x_target - lo) / (hi - lo)
    return float(np.exp(np.log(sizes[k - 1]) + t * (np.log(sizes[k]) - np.log(sizes[k - 1]))))


def synthetic_equivalent(curve: pd.DataFrame) -> pd.DataFrame:
    """For each real size: how many synthetic images reach its mIoU (the synthetic curve interpolated on log size;
    ``at_most`` = the first measured size when the smallest synthetic set already does, NaN = beyond the largest) and
    the ratio synthetic / real images."""
    syn = curve[curve.arm == "synthetic"].sort_values("size")
    sizes, mious = syn["size"].to_numpy(float), syn["miou"].to_numpy(float)
    rows = []
    for _, r in curve[curve.arm == "real"].sort_values("size").iterrows():
        n_syn = _log_interp(r["miou"], sizes, mious) if len(sizes) else float("nan")
        rows.append({"real_images": int(r["size"]), "real_miou": r["miou"], "synthetic_images": n_syn,
                     "at_most": bool(len(sizes)) and n_syn == sizes[0],
                     "synthetic_per_real": n_syn / r["size"] if not np.isnan(n_syn) else float("nan")})
    return pd.DataFrame(rows)


def mixing_gain(study: ScalingStudy, boot_seed: int = 0) -> pd.DataFrame:
    """For each real size: mIoU of real + synthetic minus real alone (paired: same seeds, same test images) with its
    interval, and ``beats`` = the interval is above 0; no rows when either arm was left out."""
    rows = []
    seeds = study.settings.seeds
    if not {"real", "real+synthetic"} <= set(study.settings.arms):
        return pd.DataFrame(rows, columns=["real_images", "gain", "gain_lo", "gain_hi", "beats"])
    for n in study.settings.real_sizes:
        mixed = [study.counts[("real+synthetic", n, s)] for s in seeds]
        alone = [study.counts[("real", n, s)] for s in seeds]
        d = tr.interval(mixed, alone, seed=boot_seed)
        rows.append({"real_images": n, **tr.flat("gain", d), "beats": bool(d["ci_lo"] > 0)})
    return pd.DataFrame(rows)


def figure(curve: pd.DataFrame):
    """mIoU against training images (log axis), one line and band per arm (real + synthetic at its real size)."""
    import matplotlib.pyplot as plt

    from dmutils.nb import FIGSIZE

    fig, ax = plt.subplots(figsize=FIGSIZE["wide"])
    for arm, rows in curve.groupby("arm", sort=False):
        rows = rows.sort_values("size")
        ax.plot(rows["size"], rows["miou"], marker="o", label=arm)
        ax.fill_between(rows["size"], rows["miou_lo"], rows["miou_hi"], alpha=0.2)
    ax.set(xscale="log", xlabel="training images (real + synthetic: real images, synthetic set added)",
           ylabel="mIoU on the real test split", title="Scaling")
    ax.legend(frameon=False)
    return fig


def conclusions(equivalent: pd.DataFrame, gain: pd.DataFrame) -> list[str]:
    """The study's answers as sentences, every number a cell of its two tables (:mod:`dmutils.studies.wording`)."""
    out = []
    for _, r in equivalent.iterrows():
        real = f"{r['real_images']:g} real images (mIoU {w.num(r['real_miou'])})"
        if pd.isna(r["synthetic_images"]):
            out.append(f"{real}: no synthetic set measured reaches them; more synthetic images would be needed.")
        elif r["at_most"]:
            out.append(f"{real}: matched by the smallest synthetic set measured, {r['synthetic_images']:g} images, or fewer.")
        else:
            out.append(f"{real}: matched by about {w.num(r['synthetic_images'], 0)} synthetic images "
                       f"({w.num(r['synthetic_per_real'], 1)} per real image).")
    for _, r in gain.iterrows():
        out.append(f"Real + synthetic against {r['real_images']:g} real images alone: {w.signed(r['gain'])} "
                   f"{w.interval(r['gain_lo'], r['gain_hi'])}, {w.verdict(r['gain_lo'], r['gain_hi'])}.")
    return out

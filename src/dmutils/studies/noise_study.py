"""Noise learning, understood (issue 24): does DiffuMask's noise learning recover a clean segmenter, and does it find
the bad masks?

On generated data nobody knows which masks are wrong, so the question is asked where the answer is known: the toy
world's real training split, whose labels are exact. A known share of its masks is corrupted in a known way:

- ``shifted``: the label map translated by ``shift`` of the side in a random direction (vacated pixels background);
  the masks of a generator whose attention lags its image.
- ``swapped``: the object class ids permuted (a derangement of the foreground classes): a word read as another.
- ``eroded``: every object eroded by ``erode`` of the side, the lost rim background: masks that miss object edges,
  as a too-high threshold gives.

Each (kind, share, seed) trains a segmenter on the corrupted set without noise learning and with it
(:mod:`dmutils.segment.noise`, k-fold agreement; ``drop_fraction`` = the corruption share, and the default 0.2), and
each seed a clean one. All are scored on the real test split; intervals are over training seeds and test images
(:func:`dmutils.stats.seeds_bootstrap`), paired with the clean and the no-noise-learning trainings of the same seeds.
Which samples noise learning dropped against which were corrupted gives its detection precision and recall, and
the AUC of its agreement score (how well it ranks corrupted below clean, whatever the drop fraction).

:func:`dropped_vs_kept` asks the same of a synthetic set, where the oracle's labels stand in for the truth.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dmutils import stats
from dmutils.config import Params
from dmutils.errors import ParamsError
from dmutils.studies import trainings as tr
from dmutils.studies import wording as w

KINDS = ("shifted", "swapped", "eroded")
VERSION = 1  # bumped when what a cached training holds changes


@dataclass
class NoiseSettings:
    """What the study varies and how big it is (the full-scale defaults; ``--quick`` shrinks them)."""

    shares: tuple[float, ...] = (0.1, 0.2, 0.4)
    kinds: tuple[str, ...] = KINDS
    seeds: tuple[int, ...] = (0, 1, 2)
    n_train: int = 400
    n_test: int = 200
    image_size: int = 64
    default_drop: float = 0.2
    shift: float = 0.25  # fraction of the side a shifted label moves
    erode: float = 0.06  # fraction of the side an eroded object loses at its rim

    def check(self) -> NoiseSettings:
        unknown = [k for k in self.kinds if k not in KINDS]
        if unknown or not self.kinds:
            raise ParamsError(f"corruption kinds {unknown or list(self.kinds)} unknown; use some of {list(KINDS)}")
        if not self.shares or any(not 0 < s < 1 for s in self.shares):
            raise ParamsError(f"corruption shares must be in (0, 1), e.g. 0.1 0.2 0.4; got {list(self.shares)}")
        if not 0 < self.default_drop < 1:
            raise ParamsError(f"the default drop fraction must be in (0, 1), got {self.default_drop}")
        if not 0 < self.shift < 1 or not 0 < self.erode < 0.5:
            raise ParamsError(f"shift must be in (0, 1) and erode in (0, 0.5) (fractions of the side), got {self.shift}, {self.erode}")
        tr.check_sizes("seeds", self.seeds, 0)
        tr.check_sizes("n_train and n_test", [self.n_train, self.n_test], distinct=False)
        if min(round(s * self.n_train) for s in self.shares) < 1:
            raise ParamsError(f"a share of {min(self.shares)} of {self.n_train} training images corrupts none; raise n_train")
        return self

    def drops(self, share: float) -> list[float]:
        """The drop fractions noise learning is run at for a corruption share: the share itself and the default."""
        return sorted({round(share, 6), round(self.default_drop, 6)})


# ---------------------------------------------------------------------------------------------
# Corruption
# ---------------------------------------------------------------------------------------------
def corrupt(label: np.ndarray, kind: str, rng: np.random.Generator, num_classes: int, shift: float = 0.25,
            erode: float = 0.06) -> np.ndarray:
    """One label map corrupted the ``kind`` way (see the module's doc); 255 (ignore) stays 255."""
    side = min(label.shape)
    if kind == "shifted":
        angle = rng.uniform(0, 2 * np.pi)
        dy, dx = (int(round(shift * side * np.sin(angle))), int(round(shift * side * np.cos(angle))))
        out = np.zeros_like(label)
        h, w = label.shape
        out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = label[max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
        return out
    if kind == "swapped":
        ids = np.arange(1, num_classes)
        perm = ids
        while len(ids) > 1 and (perm == ids).any():  # a derangement: every class becomes another
            perm = rng.permutation(ids)
        lut = np.arange(256, dtype=np.uint8)
        lut[ids] = perm
        return lut[label]
    if kind == "eroded":
        from scipy.ndimage import binary_erosion

        r = max(1, int(round(erode * side)))
        out = label.copy()
        for c in np.unique(label):
            if c in (0, 255):
                continue
            m = label == c
            out[m & ~binary_erosion(m, iterations=r)] = 0
        return out
    raise ParamsError(f"corruption kind {kind!r} unknown; use one of {list(KINDS)}")


def corrupted_indices(n: int, share: float, seed: int, kind: str) -> np.ndarray:
    """Which of ``n`` samples a (kind, share, seed) corrupts: ``round(share * n)`` of them, sorted."""
    rng = np.random.default_rng([seed, KINDS.index(kind), int(round(share * 1e6)), 24])
    return np.sort(rng.choice(n, size=int(round(share * n)), replace=False))


class CorruptedDataset:
    """A dataset whose samples ``indices`` have their labels corrupted (deterministic per sample)."""

    def __init__(self, dataset, indices, kind: str, seed: int, shift: float = 0.25, erode: float = 0.06):
        self.dataset, self.kind, self.seed, self.shift, self.erode = dataset, kind, seed, shift, erode
        self.indices = {int(i) for i in indices}
        self.classes = list(dataset.classes)
        self.root = f"{getattr(dataset, 'root', 'dataset')}[{kind} {len(self.indices)}]"

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        image, label = self.dataset[i]
        if i in self.indices:
            rng = np.random.default_rng([self.seed, KINDS.index(self.kind), int(i), 7])
            label = corrupt(label, self.kind, rng, len(self.classes), self.shift, self.erode)
        return image, label


def detection(scores: pd.DataFrame, corrupted, dropped) -> dict[str, float]:
    """How well noise learning found the corrupted samples: precision and recall of the ``dropped`` ones, and the AUC
    of the agreement score (the chance a corrupted sample scores below a clean one; 0.5 = blind)."""
    corrupted, dropped = set(map(int, corrupted)), set(map(int, dropped))
    hit = len(corrupted & dropped)
    s = scores.set_index("index")["iou"].fillna(-1.0)  # NaN agreement counts as worst, as drop_noisy ranks it
    bad = s[s.index.isin(corrupted)].to_numpy()
    good = s[~s.index.isin(corrupted)].to_numpy()
    auc = float("nan")
    if len(bad) and len(good):
        auc = float(((bad[:, None] < good[None]).sum() + 0.5 * (bad[:, None] == good[None]).sum()) / (len(bad) * len(good)))
    return {"precision": hit / len(dropped) if dropped else float("nan"),
            "recall": hit / len(corrupted) if corrupted else float("nan"), "auc": auc}


# ---------------------------------------------------------------------------------------------
# The study
# ---------------------------------------------------------------------------------------------
@dataclass
class NoiseStudy:
    runs: pd.DataFrame  # one row a training: kind, share, seed, arm, drop, miou, precision, recall, auc, cached
    counts: dict[tuple, dict] = field(default_factory=dict)  # (kind, share, arm, drop, seed) -> cached training
    settings: NoiseSettings = field(default_factory=NoiseSettings)


def run_noise_study(params: Params, settings: NoiseSettings, cache_dir: str | Path, progress: bool = False) -> NoiseStudy:
    """Train every (kind, share, seed) with and without noise learning, and each seed clean; cached under ``cache_dir``."""
    from dmutils.segment.noise import drop_noisy, kfold_scores

    tr.check_toy(params, "noise-learning")
    settings.check()
    real, test = tr.real_splits(cache_dir, settings.n_train, settings.n_test, settings.image_size)
    if len(real) < params.train.noise_learning.folds:
        raise ParamsError(f"{len(real)} training images cannot be split into train.noise_learning.folds="
                          f"{params.train.noise_learning.folds} folds; raise n_train")
    cache = tr.JsonCache(cache_dir)
    data = {"n_train": settings.n_train, "n_test": settings.n_test, "image_size": settings.image_size, "version": VERSION}
    corruption = {"shift": settings.shift, "erode": settings.erode}
    rows, counts = [], {}

    def train(p: Params, sets: list, k: str, label: tuple, extra: dict) -> None:
        res, hit = cache.get_or_compute(k, lambda: tr.train_and_count(p, sets, test, progress))
        counts[label] = res
        rows.append({"kind": label[0], "share": label[1], "arm": label[2], "drop": label[3], "seed": label[4],
                     "miou": res["miou"], "train_samples": res["train_samples"], "train_seconds": res["train_seconds"],
                     "cached": hit, **extra})

    for seed in settings.seeds:
        p = tr.with_seed(params, seed)
        train(p, [real], tr.key("noise-clean", p, **data), ("clean", 0.0, "clean", 0.0, seed), {})
        for kind in settings.kinds:
            for share in settings.shares:
                bad = corrupted_indices(len(real), share, seed, kind)
                noisy = CorruptedDataset(real, bad, kind, seed, settings.shift, settings.erode)
                what = {**data, **corruption, "kind": kind, "share": share}
                train(p, [noisy], tr.key("noise-none", p, **what), (kind, share, "none", 0.0, seed), {})
                scores_key = tr.key("noise-scores", p, **what)
                hit = cache.get(scores_key)
                if hit is None:
                    scores = kfold_scores(p, noisy, progress)
                    cache.put(scores_key, {"scores": tr.records(scores)})
                else:
                    scores = pd.DataFrame(hit["scores"])
                for drop in settings.drops(share):
                    kept = drop_noisy(noisy, scores, drop)
                    dropped = sorted(set(range(len(noisy))) - set(kept.indices))
                    found = detection(scores, bad, dropped)
                    train(p, [kept], tr.key("noise-nl", p, **what, drop=drop), (kind, share, "noise learning", drop, seed),
                          found)
    return NoiseStudy(pd.DataFrame(rows), counts, settings)


def noise_table(study: NoiseStudy, boot_seed: int = 0) -> pd.DataFrame:
    """One row per (kind, share, arm): mIoU over seeds with its interval, the paired difference to the clean training
    (``vs_clean``) and, for noise learning, to no noise learning (``vs_none``), ``recovered`` (the share of the
    corruption's loss that noise learning wins back: (nl - none) / (clean - none)), and detection precision,
    recall and AUC averaged over seeds. ``reaches_clean``: the interval of ``vs_clean`` reaches 0."""
    seeds, c = list(study.settings.seeds), study.counts
    clean = [c[("clean", 0.0, "clean", 0.0, s)] for s in seeds]
    out = [{"kind": "clean", "share": 0.0, "arm": "clean", "drop": np.nan, **tr.flat("miou", tr.interval(clean, seed=boot_seed))}]
    runs = study.runs
    for (kind, share), _ in runs[runs.arm != "clean"].groupby(["kind", "share"], sort=False):
        none = [c[(kind, share, "none", 0.0, s)] for s in seeds]
        arms = [("none", 0.0)] + [("noise learning", d) for d in study.settings.drops(share)]
        for arm, drop in arms:
            res = [c[(kind, share, arm, drop, s)] for s in seeds]
            row = {"kind": kind, "share": share, "arm": arm, "drop": drop if arm != "none" else np.nan,
                   **tr.flat("miou", tr.interval(res, seed=boot_seed)),
                   **tr.flat("vs_clean", tr.interval(res, clean, seed=boot_seed))}
            if arm != "none":
                row |= tr.flat("vs_none", tr.interval(res, none, seed=boot_seed))
                gap = np.mean([r["miou"] for r in clean]) - np.mean([r["miou"] for r in none])
                gain = np.mean([r["miou"] for r in res]) - np.mean([r["miou"] for r in none])
                row["recovered"] = gain / gap if abs(gap) > 1e-9 else np.nan
                sub = runs[(runs.kind == kind) & (runs.share == share) & (runs.arm == arm) & (runs["drop"] == drop)]
                row |= {k: float(sub[k].mean()) for k in ("precision", "recall", "auc")}
            row["reaches_clean"] = bool(row["vs_clean_hi"] >= 0)
            out.append(row)
    return pd.DataFrame(out)


def answers(table: pd.DataFrame) -> dict[str, Any]:
    """The two questions in numbers, per corruption kind, at drop fraction = share: how often noise learning's
    mIoU reaches the clean one (interval of the difference reaching 0), how much of the loss it recovers, and
    its mean detection recall and AUC."""
    nl = table[(table.arm == "noise learning") & np.isclose(table["drop"], table["share"])]
    none = table[table.arm == "none"]
    out = {}
    for kind, rows in nl.groupby("kind", sort=False):
        out[kind] = {"reaches_clean": f"{int(rows.reaches_clean.sum())} of {len(rows)} shares",
                     "without_nl_reaches_clean": f"{int(none[none.kind == kind].reaches_clean.sum())} of {len(rows)} shares",
                     "recovered_mean": float(rows.recovered.mean()), "recall_mean": float(rows.recall.mean()),
                     "auc_mean": float(rows.auc.mean())}
    return out


def conclusions(table: pd.DataFrame) -> list[str]:
    """Per corruption kind and share, at drop fraction = share: what noise learning does to the segmenter against no
    noise learning, how much of the corruption's loss it wins back, and how well it finds the corrupted masks (every
    number a cell of :func:`noise_table`)."""
    out = []
    nl = table[(table.arm == "noise learning") & np.isclose(table["drop"], table["share"])]
    for _, r in nl.iterrows():
        lo, hi = r["vs_none_lo"], r["vs_none_hi"]
        out.append(f"{r['kind']} masks, a share of {r['share']:g}: noise learning against none {w.signed(r['vs_none'])} "
                   f"{w.interval(lo, hi)} mIoU, {w.verdict(lo, hi)}; share of the loss won back {w.num(r['recovered'])}; "
                   f"it finds the corrupted masks with recall {w.num(r['recall'])} and AUC {w.num(r['auc'])} "
                   "(chance: one half).")
    return out


# ---------------------------------------------------------------------------------------------
# (b) synthetic masks: did noise learning drop the bad ones?
# ---------------------------------------------------------------------------------------------
def dropped_vs_kept(scores: pd.DataFrame, masks, oracle_labels, num_classes: int, n_boot: int = stats.N_BOOT,
                    seed: int = 0) -> pd.DataFrame:
    """Oracle mIoU of the masks noise learning dropped and of those it kept (each pooled over its samples, with a
    bootstrap interval over them), and the difference dropped - kept with an interval (the groups resampled
    independently). ``scores``: noise learning's table (``index``, ``kept``; study 04 writes it as
    ``noise_scores``); ``masks[i]``, ``oracle_labels[i]``: sample ``i``'s mask and the oracle's labels of its image.
    If noise learning works, the dropped masks score well below the kept ones."""
    if not {"index", "kept"} <= set(scores.columns):
        raise ParamsError(f"noise-learning scores need the columns 'index' and 'kept', got {list(scores.columns)}")
    counts = {int(i): stats.confusion_counts(np.asarray(masks[int(i)]), np.asarray(oracle_labels[int(i)]), num_classes)
              for i in scores["index"]}
    rows, boots = [], {}
    rng = np.random.default_rng(seed)
    for group, kept in (("kept", True), ("dropped", False)):
        ids = scores.loc[scores["kept"] == kept, "index"].astype(int).tolist()
        inter = np.asarray([counts[i][0] for i in ids], np.float64).reshape(len(ids), num_classes)
        union = np.asarray([counts[i][1] for i in ids], np.float64).reshape(len(ids), num_classes)
        ci = stats.bootstrap_ci(inter, union, n_boot, seed)
        per_image = stats.pooled_miou(inter[:, None], union[:, None]) if len(ids) else np.array([])
        rows.append({"group": group, "samples": len(ids), "miou": ci["miou"], "ci_lo": ci["ci_lo"], "ci_hi": ci["ci_hi"],
                     "mean_image_iou": float(np.nanmean(per_image)) if len(ids) else float("nan")})
        if len(ids):
            w = rng.multinomial(len(ids), np.full(len(ids), 1 / len(ids)), size=n_boot)
            boots[group] = stats.pooled_miou(w[:, :, None] * inter[None], w[:, :, None] * union[None])
    diff = {"group": "dropped - kept", "samples": len(scores), "miou": rows[1]["miou"] - rows[0]["miou"],
            "ci_lo": float("nan"), "ci_hi": float("nan"), "mean_image_iou": rows[1]["mean_image_iou"] - rows[0]["mean_image_iou"]}
    if len(boots) == 2:
        d = boots["dropped"] - boots["kept"]
        d = d[~np.isnan(d)]
        if len(d):
            diff["ci_lo"], diff["ci_hi"] = (float(v) for v in np.quantile(d, [(1 - stats.LEVEL) / 2, (1 + stats.LEVEL) / 2]))
    return pd.DataFrame(rows + [diff])


def oracle_labels(params: Params, dataset) -> list[np.ndarray]:
    """The oracle's labels of every image of ``dataset`` (in dataset order): the stand-in truth for
    :func:`dropped_vs_kept` on generated images."""
    from dmutils.oracles import get_oracle

    oracle = get_oracle(params)
    images = [dataset[i][0] for i in range(len(dataset))]
    return list(oracle.predict(np.stack(images))) if images else []


def settings_dict(settings: NoiseSettings) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(settings).items()}

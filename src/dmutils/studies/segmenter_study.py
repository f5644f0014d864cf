"""Notebook 04: the papers' headline -- does a segmenter trained on synthetic masks reach one trained on real labels?

Four runs with the same ``params.train``, each measured on the real test split:
(a) real labels, (b) synthetic masks of the same size, (c) both, (d) synthetic after DiffuMask's
noise learning. Sizes are made equal by taking the first ``n`` samples of each set, with ``n`` the
smaller of the two, so rejected generations do not tilt the comparison.

With a ``cache_dir`` each run's evaluation (and the noise-learning scores) is kept under a hash of
what decides it, as study 05 keeps its scores: the ``train`` and ``real`` params, ``n``, the run, and
for the synthetic runs the params hash of the dataset (``dataset.json``). A rerun trains only what changed.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from dmutils.config import Params
from dmutils.paths import atomic_write_bytes
from dmutils.studies.thresholds import stable_hash

RUNS = {"a": "real", "b": "synthetic", "c": "real+synthetic", "d": "synthetic+noise learning"}


@dataclass
class SegmenterStudy:
    headline: pd.DataFrame  # run, data, train_samples, miou, ratio_to_real, train_seconds
    per_class: pd.DataFrame  # run, data, class, iou
    noise_scores: pd.DataFrame  # index, fold, iou, kept
    results: dict  # run -> EvalResult
    cached: dict | None = None  # run (and "noise_scores") -> whether it came from the cache

    @property
    def ratio(self) -> float:
        """mIoU of (b) synthetic / (a) real: the papers' headline number."""
        return float(self.headline.set_index("run").loc["b", "ratio_to_real"])


def first_n(dataset, n: int, tag: str):
    sub = torch.utils.data.Subset(dataset, list(range(n)))
    sub.classes, sub.root = dataset.classes, f"{getattr(dataset, 'root', 'dataset')}[{tag}]"
    return sub


def synthetic_all(params: Params):
    """Every written synthetic sample (train and val splits together: the real val split stays for tuning)."""
    from dmutils.segment.data import synthetic_dataset

    syn = synthetic_dataset(params, "train")
    syn.items = syn.items + synthetic_dataset(params, "val").items
    return syn


def run_key(params: Params, run: str, n: int, synthetic_hash: str | None) -> str:
    """Cache key of one run: everything its trained segmenter and evaluation depend on."""
    d = params.model_dump(mode="json")
    uses_synthetic = run != "a"
    return f"{run}-" + stable_hash({"run": run, "n": n, "train": d["train"], "real": d["real"], "seed": d["run"]["seed"],
                             "synthetic": synthetic_hash if uses_synthetic else None})


class _Cache:
    """JSON files in a folder, one a key (None: nothing is kept)."""

    def __init__(self, folder: str | Path | None):
        self.folder = Path(folder) if folder else None
        if self.folder:
            self.folder.mkdir(parents=True, exist_ok=True)

    def get(self, key: str) -> dict | None:
        f = self.folder / f"{key}.json" if self.folder else None
        return json.loads(f.read_text()) if f and f.is_file() else None

    def put(self, key: str, value: dict) -> None:
        if self.folder:
            atomic_write_bytes(self.folder / f"{key}.json", json.dumps(value).encode())


def _eval_from_dict(d: dict):
    from dmutils.segment.evaluate import EvalResult

    per_class = pd.Series({k: (np.nan if v is None else v) for k, v in d["per_class"].items()}, dtype=float)
    return EvalResult(d["miou"], per_class, np.asarray(d["confusion"]))


def run_study(params: Params, progress: bool = False, cache_dir: str | Path | None = None) -> SegmenterStudy:
    """Train and evaluate the four runs (cached under ``cache_dir`` when given); raises before training when a set is empty."""
    from dmutils.segment.data import check_same_classes, open_real
    from dmutils.segment.evaluate import evaluate
    from dmutils.segment.noise import drop_noisy, noise_learning
    from dmutils.segment.train import train_segmenter

    real, syn, test = open_real(params, params.real.train_split), synthetic_all(params), open_real(params, params.real.test_split)
    check_same_classes([real, syn, test])
    n = min(len(real), len(syn))
    if n < params.train.noise_learning.folds:
        raise ValueError(f"{len(syn)} synthetic and {len(real)} real training samples: need at least "
                         f"train.noise_learning.folds={params.train.noise_learning.folds}; raise dataset.num_samples")
    real, syn = first_n(real, n, f"first {n}"), first_n(syn, n, f"first {n}")
    synthetic_hash = json.loads((params.resolve_path(params.dataset.out_dir) / "dataset.json").read_text()).get("params_hash")
    cache, cached = _Cache(cache_dir), {}
    noise_key = run_key(params, "noise_scores", n, synthetic_hash)
    hit = cache.get(noise_key)
    if hit is not None:
        scores = pd.DataFrame(hit["scores"])
        kept = drop_noisy(syn, scores.drop(columns="kept"), params.train.noise_learning.drop_fraction)
    else:
        kept, scores = noise_learning(params, syn, progress=progress)
        cache.put(noise_key, {"scores": json.loads(scores.to_json(orient="records"))})
    cached["noise_scores"] = hit is not None
    data = {"a": [real], "b": [syn], "c": [real, syn], "d": [kept]}
    rows, per_class, results = [], [], {}
    for run, sets in data.items():
        key = run_key(params, run, n, synthetic_hash)
        hit = cache.get(key)
        if hit is not None:
            res, seconds = _eval_from_dict(hit["eval"]), hit["train_seconds"]
        else:
            trained = train_segmenter(params, sets, progress=progress)
            res, seconds = evaluate(trained.segmenter, test, batch_size=params.train.eval_batch_size), round(trained.seconds, 2)
            cache.put(key, {"eval": res.to_dict(), "train_seconds": seconds})
        cached[run] = hit is not None
        results[run] = res
        rows.append({"run": run, "data": RUNS[run], "train_samples": sum(map(len, sets)), "miou": res.miou,
                     "train_seconds": seconds, "cached": hit is not None})
        per_class += [{"run": run, "data": RUNS[run], "class": c, "iou": v} for c, v in res.per_class.items()]
    headline = pd.DataFrame(rows)
    real_miou = headline.loc[headline.run == "a", "miou"].item()
    headline.insert(4, "ratio_to_real", headline["miou"] / real_miou if real_miou > 0 else float("nan"))
    return SegmenterStudy(headline, pd.DataFrame(per_class), scores, results, cached)


def per_class_bars(per_class: pd.DataFrame):
    """Per-class IoU of the four runs as grouped bars (seaborn)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    from dmutils.nb import FIGSIZE

    fig, ax = plt.subplots(figsize=FIGSIZE["wide"])
    sns.barplot(per_class, x="class", y="iou", hue="data", ax=ax)
    ax.set(ylim=(0, 1), xlabel="", ylabel="IoU on the real test split", title="Per-class IoU")
    ax.legend(frameon=False, fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


# What `dmutils bench segmenter` trains on (the schema's sizes): its figures are the ones to quote.
BENCH_SAMPLES, BENCH_STEPS, BENCH_BATCH = 350, 500, 16


def indicative_note(headline: pd.DataFrame, params: Params) -> str | None:
    """Why these numbers are indicative (fewer images or training than the benchmark), or None when they are not."""
    n = int(headline.set_index("run").loc["a", "train_samples"])
    t = params.train
    if n >= BENCH_SAMPLES and t.steps * t.batch_size >= BENCH_STEPS * BENCH_BATCH:
        return None
    return (f"indicative: {n} training images a run and {t.steps} steps at batch {t.batch_size}; "
            f"`dmutils bench segmenter` ({BENCH_SAMPLES}+ images, {BENCH_STEPS} steps at batch {BENCH_BATCH}) gives the figures to quote")


def conclusions(headline: pd.DataFrame, gap: pd.DataFrame | None = None, dropped: pd.DataFrame | None = None) -> list[str]:
    """Study 04's findings, every number a cell of ``headline`` (:class:`SegmenterStudy`), ``gap``
    (:func:`dmutils.studies.colour_gap.real_vs_synthetic`) and ``dropped`` (:func:`dmutils.studies.noise_study.dropped_vs_kept`).
    The four runs are one training each, with no interval: their differences are indicative and say so; noise
    learning's dropped-vs-kept difference has an interval and gets a verdict."""
    from dmutils.studies.wording import interval, missing, num, signed, verdict

    out = []
    h = headline.set_index("run")
    if {"a", "b"} <= set(h.index) and not missing(h.loc["a", "miou"], h.loc["b", "miou"]):
        a, b = h.loc["a"], h.loc["b"]
        out.append(f"Trained on synthetic masks alone, the segmenter reaches {num(b.miou)} mIoU on the real test split against "
                   f"{num(a.miou)} with real labels, a ratio (b)/(a) of {num(b.ratio_to_real)} ({int(b.train_samples)} training "
                   "samples each); one training per run, so there is no interval and the gap is indicative, not a verdict.")
    rest = [f"{h.loc[r, 'data']} {num(h.loc[r, 'miou'])} (ratio {num(h.loc[r, 'ratio_to_real'])}, {int(h.loc[r, 'train_samples'])} samples)"
            for r in ("c", "d") if r in h.index and not missing(h.loc[r, "miou"])]
    if rest:
        out.append("The other runs, indicative in the same way: " + "; ".join(rest) + ".")
    if dropped is not None and len(dropped):
        d = dropped.set_index("group")
        if {"kept", "dropped", "dropped - kept"} <= set(d.index) and int(d.loc["dropped", "samples"]) > 0:
            k, x, diff = d.loc["kept"], d.loc["dropped"], d.loc["dropped - kept"]
            word = verdict(diff.ci_lo, diff.ci_hi, "it dropped better masks than it kept", "it dropped worse masks than it kept")
            out.append(f"Against the oracle, the {int(x.samples)} masks noise learning dropped score {num(x.miou)} mIoU and the "
                       f"{int(k.samples)} it kept {num(k.miou)}: {signed(diff.miou)} {interval(diff.ci_lo, diff.ci_hi)}, {word}.")
        elif "dropped" in d.index:
            out.append("Noise learning dropped no mask in this run.")
    if gap is not None and len(gap.dropna(subset=["hue_spread_ratio"])):
        g = gap.dropna(subset=["hue_spread_ratio"])
        r = g.loc[g["hue_spread_ratio"].idxmin()]
        out.append(f"The narrowest synthetic colours against real ones are {r['class']}'s: hue spread ratio {num(r.hue_spread_ratio)} "
                   f"(hue shift {signed(r.hue_shift)}, value shift {signed(r.value_shift)}); one guidance setting, no interval.")
    return out

"""Notebook 04: the papers' headline -- does a segmenter trained on synthetic masks reach one trained on real labels?

Four runs with the same ``params.train``, each measured on the real test split:
(a) real labels, (b) synthetic masks of the same size, (c) both, (d) synthetic after DiffuMask's
noise learning. Sizes are made equal by taking the first ``n`` samples of each set, with ``n`` the
smaller of the two, so rejected generations do not tilt the comparison.

- **Equal epochs.** (a) and (b) train ``study.segmenter_steps`` (default ``train.steps``) on their ``n`` images;
  (c), with twice the images, trains twice the steps, and (d), with the samples noise learning kept, proportionally
  fewer: every run sees each of its images equally often.
- **Seeds and intervals.** Every run trains once per seed of ``study.segmenter_seeds`` (the training seed, and noise
  learning's folds), scored image by image on the same test images; a run's mIoU is the mean over seeds with a 95%
  interval over seeds and images (:func:`dmutils.stats.seeds_bootstrap`), and each run is compared, paired, with its
  reference (:data:`REFERENCE`).

With a ``cache_dir`` each training's per-image counts (and the noise-learning scores) are kept under a hash of what
decides them, as study 05 keeps its scores: the ``train`` (with its steps and seed) and ``real`` params, ``n``, the
run, and for the synthetic runs the params hash of the dataset (``dataset.json``). A rerun trains only what changed.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from dmutils import stats
from dmutils.config import Params
from dmutils.studies import trainings as tr
from dmutils.studies.thresholds import stable_hash

RUNS = {"a": "real", "b": "synthetic", "c": "real+synthetic", "d": "synthetic+noise learning"}
REFERENCE = {"b": "a", "c": "a", "d": "b"}  # what each run is compared with: synthetic vs real, adding synthetic, noise learning
VERSION = 2  # of the cached trainings: per-image counts


@dataclass
class SegmenterStudy:
    headline: pd.DataFrame  # run, data, train_samples, steps, epochs, seeds, miou (+ interval), ratio_to_real, vs, diff (+ interval)
    per_class: pd.DataFrame  # run, data, seed, class, iou
    noise_scores: pd.DataFrame  # index, fold, iou, kept (the first seed's)
    counts: dict  # (run, seed) -> training: per-image inter/union, train_samples, train_seconds
    cached: dict | None = None  # run (and "noise_scores") -> whether every seed came from the cache

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
    """Cache key of one training: everything its trained segmenter and evaluation depend on."""
    d = params.model_dump(mode="json")
    uses_synthetic = run != "a"
    return f"{run}-" + stable_hash({"run": run, "n": n, "train": d["train"], "real": d["real"], "seed": d["run"]["seed"],
                                    "synthetic": synthetic_hash if uses_synthetic else None, "version": VERSION})


def equal_epochs(params: Params, samples: int, n: int) -> Params:
    """``params`` whose ``train.steps`` show ``samples`` images as often as ``study.segmenter_steps`` shows ``n``."""
    base = params.study.segmenter_steps or params.train.steps
    steps = max(1, round(base * samples / n))
    return params if steps == params.train.steps else tr.override(params, {"train": {"steps": steps}}, "study 04's equal epochs")


def run_study(params: Params, progress: bool = False, cache_dir: str | Path | None = None) -> SegmenterStudy:
    """Train and evaluate the four runs once per seed (cached under ``cache_dir`` when given); raises before training
    when a set is empty."""
    from dmutils.segment.data import check_same_classes, open_real
    from dmutils.segment.noise import drop_noisy, noise_learning

    real, syn, test = open_real(params, params.real.train_split), synthetic_all(params), open_real(params, params.real.test_split)
    check_same_classes([real, syn, test])
    n = min(len(real), len(syn))
    if n < params.train.noise_learning.folds:
        raise ValueError(f"{len(syn)} synthetic and {len(real)} real training samples: need at least "
                         f"train.noise_learning.folds={params.train.noise_learning.folds}; raise dataset.num_samples")
    real, syn = first_n(real, n, f"first {n}"), first_n(syn, n, f"first {n}")
    synthetic_hash = json.loads((params.resolve_path(params.dataset.out_dir) / "dataset.json").read_text()).get("params_hash")
    cache, cached, counts, first_scores = tr.JsonCache(cache_dir), {}, {}, None
    for seed in params.study.segmenter_seeds:
        p = tr.with_seed(params, seed)
        noise_key = run_key(p, "noise_scores", n, synthetic_hash)
        hit = cache.get(noise_key)
        if hit is not None:
            scores = pd.DataFrame(hit["scores"])
            kept = drop_noisy(syn, scores.drop(columns="kept"), p.train.noise_learning.drop_fraction)
        else:
            kept, scores = noise_learning(p, syn, progress=progress)
            cache.put(noise_key, {"scores": json.loads(scores.to_json(orient="records"))})
        first_scores = scores if first_scores is None else first_scores
        cached["noise_scores"] = cached.get("noise_scores", True) and hit is not None
        for run, sets in {"a": [real], "b": [syn], "c": [real, syn], "d": [kept]}.items():
            pr = equal_epochs(p, sum(map(len, sets)), n)
            res, hit = cache.get_or_compute(run_key(pr, run, n, synthetic_hash), lambda: tr.train_and_count(pr, sets, test, progress))
            counts[(run, seed)] = {**res, "steps": pr.train.steps, "cached": hit}
            cached[run] = cached.get(run, True) and hit
    headline, per_class = _tables(params, counts, test.classes)
    return SegmenterStudy(headline, per_class, first_scores, counts, cached)


def _tables(params: Params, counts: dict, classes) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The headline (per run: mIoU over seeds with its interval, the paired difference to its reference) and the
    per-class IoU of each run and seed."""
    seeds = list(params.study.segmenter_seeds)
    rows, per_class = [], []
    for run, data in RUNS.items():
        res = [counts[(run, s)] for s in seeds]
        ref = REFERENCE.get(run)
        diff = tr.flat("diff", tr.interval(res, [counts[(ref, s)] for s in seeds])) if ref else {"diff": np.nan, "diff_lo": np.nan, "diff_hi": np.nan}
        steps = res[0]["steps"]
        rows.append({"run": run, "data": data, "train_samples": res[0]["train_samples"], "steps": steps,
                     "epochs": round(steps * params.train.batch_size / res[0]["train_samples"], 1), "seeds": len(seeds),
                     **tr.flat("miou", tr.interval(res)), "vs": ref, **diff,
                     "train_seconds": round(sum(r["train_seconds"] for r in res), 2), "cached": all(r.get("cached", False) for r in res)})
        for s, r in zip(seeds, res):
            iou = stats.class_iou(*(np.asarray(r[k], np.float64).sum(0) for k in ("inter", "union")))
            per_class += [{"run": run, "data": data, "seed": s, "class": c, "iou": v} for c, v in zip(classes, iou)]
    headline = pd.DataFrame(rows)
    real_miou = headline.loc[headline.run == "a", "miou"].item()
    headline.insert(headline.columns.get_loc("miou_hi") + 1, "ratio_to_real", headline["miou"] / real_miou if real_miou > 0 else np.nan)
    return headline, pd.DataFrame(per_class)


def per_class_bars(per_class: pd.DataFrame):
    """Per-class IoU of the four runs as grouped bars (seaborn)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    from dmutils.nb import FIGSIZE

    fig, ax = plt.subplots(figsize=FIGSIZE["wide"])
    sns.barplot(per_class, x="class", y="iou", hue="data", errorbar=("ci", 95), seed=0, ax=ax)  # bars over the seeds
    ax.set(ylim=(0, 1), xlabel="", ylabel="IoU on the real test split", title="Per-class IoU")
    ax.legend(frameon=False, fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


# What `dmutils bench segmenter` trains on (the schema's sizes): its figures are the ones to quote.
BENCH_SAMPLES, BENCH_STEPS, BENCH_BATCH = 350, 500, 16


def indicative_note(headline: pd.DataFrame, params: Params) -> str | None:
    """Why these numbers are indicative (fewer images or training than the benchmark), or None when they are not."""
    n = int(headline.set_index("run").loc["a", "train_samples"])
    t, steps = params.train, params.study.segmenter_steps or params.train.steps
    if n >= BENCH_SAMPLES and steps * t.batch_size >= BENCH_STEPS * BENCH_BATCH:
        return None
    return (f"indicative: {n} training images a run and {steps} steps at batch {t.batch_size}; "
            f"`dmutils bench segmenter` ({BENCH_SAMPLES}+ images, {BENCH_STEPS} steps at batch {BENCH_BATCH}) gives the figures to quote")


def conclusions(headline: pd.DataFrame, gap: pd.DataFrame | None = None, dropped: pd.DataFrame | None = None) -> list[str]:
    """Study 04's findings, every number a cell of ``headline`` (:class:`SegmenterStudy`), ``gap``
    (:func:`dmutils.studies.colour_gap.real_vs_synthetic`) and ``dropped`` (:func:`dmutils.studies.noise_study.dropped_vs_kept`).
    Each run is read against its reference (:data:`REFERENCE`) by the interval of the paired difference over seeds and
    test images: a difference whose interval holds 0 is within noise."""
    from dmutils.studies.wording import interval, missing, num, signed, verdict

    out = []
    h = headline.set_index("run")

    def scored(r) -> str:
        return f"{num(r.miou)} {interval(r.miou_lo, r.miou_hi, sign=False)}"

    def against(r, above: str, below: str) -> str:
        return f"{signed(r['diff'])} {interval(r.diff_lo, r.diff_hi)}, {verdict(r.diff_lo, r.diff_hi, above, below)}"

    if {"a", "b"} <= set(h.index) and not missing(h.loc["a", "miou"], h.loc["b", "miou"]):
        a, b = h.loc["a"], h.loc["b"]
        out.append(f"Trained on synthetic masks alone, the segmenter reaches {scored(b)} mIoU on the real test split against "
                   f"{scored(a)} with real labels, a ratio (b)/(a) of {num(b.ratio_to_real)}: "
                   f"{against(b, 'better than real labels', 'worse than real labels')} ({int(b.seeds)} seeds, "
                   f"{int(b.train_samples)} training samples each, {b.epochs:g} epochs).")
    if {"a", "c"} <= set(h.index) and not missing(h.loc["c", "miou"]):
        c = h.loc["c"]
        out.append(f"Adding the synthetic masks to the real labels ({int(c.train_samples)} samples, the same {c.epochs:g} epochs, "
                   f"so {int(c.steps)} training steps against {int(h.loc['a', 'steps'])}) gives {scored(c)}: "
                   f"{against(c, 'better than real labels alone', 'worse than real labels alone')}; more steps alone could "
                   "explain part of a gain.")
    if {"b", "d"} <= set(h.index) and not missing(h.loc["d", "miou"]):
        d = h.loc["d"]
        out.append(f"Noise learning (the {int(d.train_samples)} synthetic samples it kept, {d.epochs:g} epochs, so "
                   f"{int(d.steps)} training steps) gives {scored(d)}: "
                   f"{against(d, 'better than all the synthetic masks', 'worse than all the synthetic masks')}.")
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

"""Notebook 04: the papers' headline -- does a segmenter trained on synthetic masks reach one trained on real labels?

Four runs with the same ``params.train``, each measured on the real test split:
(a) real labels, (b) synthetic masks of the same size, (c) both, (d) synthetic after DiffuMask's
noise learning. Sizes are made equal by taking the first ``n`` samples of each set, with ``n`` the
smaller of the two, so rejected generations do not tilt the comparison.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from dmutils.params import Params

RUNS = {"a": "real", "b": "synthetic", "c": "real+synthetic", "d": "synthetic+noise learning"}


@dataclass
class SegmenterStudy:
    headline: pd.DataFrame  # run, data, train_samples, miou, ratio_to_real, train_seconds
    per_class: pd.DataFrame  # run, data, class, iou
    noise_scores: pd.DataFrame  # index, fold, iou, kept
    results: dict  # run -> EvalResult

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
    from dmutils.segment.train import synthetic_dataset

    syn = synthetic_dataset(params, "train")
    syn.items = syn.items + synthetic_dataset(params, "val").items
    return syn


def run_study(params: Params, progress: bool = False) -> SegmenterStudy:
    """Train and evaluate the four runs; raises before training when a set is empty."""
    from dmutils.segment.data import check_same_classes, open_real
    from dmutils.segment.evaluate import evaluate
    from dmutils.segment.noise import noise_learning
    from dmutils.segment.train import train_segmenter

    real, syn, test = open_real(params, params.real.train_split), synthetic_all(params), open_real(params, params.real.test_split)
    check_same_classes([real, syn, test])
    n = min(len(real), len(syn))
    if n < params.train.noise_learning.folds:
        raise ValueError(f"{len(syn)} synthetic and {len(real)} real training samples: need at least "
                         f"train.noise_learning.folds={params.train.noise_learning.folds}; raise dataset.num_samples")
    real, syn = first_n(real, n, f"first {n}"), first_n(syn, n, f"first {n}")
    kept, scores = noise_learning(params, syn, progress=progress)
    data = {"a": [real], "b": [syn], "c": [real, syn], "d": [kept]}
    rows, per_class, results = [], [], {}
    for run, sets in data.items():
        trained = train_segmenter(params, sets, progress=progress)
        res = evaluate(trained.segmenter, test, batch_size=params.train.eval_batch_size)
        results[run] = res
        rows.append({"run": run, "data": RUNS[run], "train_samples": sum(map(len, sets)), "miou": res.miou,
                     "train_seconds": round(trained.seconds, 2)})
        per_class += [{"run": run, "data": RUNS[run], "class": c, "iou": v} for c, v in res.per_class.items()]
    headline = pd.DataFrame(rows)
    real_miou = headline.loc[headline.run == "a", "miou"].item()
    headline.insert(4, "ratio_to_real", headline["miou"] / real_miou if real_miou > 0 else float("nan"))
    return SegmenterStudy(headline, pd.DataFrame(per_class), scores, results)


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

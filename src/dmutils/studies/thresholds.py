"""Study 02: IoU of the masks against the oracle as a function of the threshold, tau and CRF.

DiffuMask (arXiv 2303.11681, fig. 4) picks the mask threshold by measuring, on generated images
labelled by a pretrained segmenter, the IoU at every threshold; here per class, with a confidence
band, and the best threshold per class is written as the table ``masks.threshold_mode=per_class``
reads. The steps, each a function of the one before::

    specs   = study_specs(params)                          # N prompts per class, one- and two-class
    samples = generate_samples(pipe, params, oracle)       # images + maps as dataset generation makes them
    records = sweep(samples, params)                       # one IoU per (sample, class, tau, crf, threshold)
    curves  = threshold_curves(records, params)            # per class: pooled IoU, 95% CI, n per threshold
    table   = threshold_table(best_thresholds(curves))     # class,threshold: the argmax of each curve
    tuned   = tuned_comparison(records, params, "tau")     # each tau at its own threshold, chosen on other images

IoU of a class in one image is the binary IoU of ``mask == class`` and ``oracle == class``, pixels
that either marks 255 (ignore) left out. An image whose oracle labels have no pixel of a class (the
model did not draw it: a generation failure, not a mask failure) has no IoU for that class at any
threshold, so every point of a curve averages the same images (``n``). Masks come from :func:`dmutils.masks.refine.make_mask` with
the params' mask settings, except that the threshold mode is ``fixed`` at the swept value, there is
no uncertain band (it would hide the pixels the threshold decides), and tau / CRF are the swept ones
(DenseCRF is slow: CRF-on masks are swept at the coarser ``study.crf_thresholds``).

Every record keeps its pixel counts (``inter``, ``union``: 0 and 0 where the oracle has no pixel of the
class), so a curve's point is the *pooled* IoU (counts summed over the images, as mIoU is defined), and its
95% interval is a bootstrap over whole images (:mod:`dmutils.stats`), recomputable from the saved records. A
comparison of taus or of CRF off/on scores each at its own best threshold chosen on other images (k-fold
cross-fitting), with the paired bootstrap interval of the difference: one fixed threshold would favour
whichever setting it happens to suit, and the best threshold picked on the scored images is optimistic.
Samples are generated with :func:`dmutils.dataset.batch.generate_batch`, the code the dataset
is made with, so the study measures exactly what generation would produce.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dmutils import stats
from dmutils.config import MaskParams, Params
from dmutils.dataset.pool import one_thread
from dmutils.dataset.prompts import SampleSpec, TemplateSource, template_words
from dmutils.errors import ParamsError
from dmutils.masks.refine import label_map, make_mask, remove_small_regions

CONFIDENCE = stats.LEVEL
FOLDS = 5  # cross-fitting of thresholds: each fold scored at the threshold chosen on the other four


@dataclass
class Sample:
    """One generated image with what its masks are made from and the oracle's labels."""

    spec: SampleSpec
    image: np.ndarray  # (H, W, 3) uint8
    cross: dict[int, np.ndarray]  # resolution -> (C, r, r) float32, C = len(spec.classes)
    self_attn: dict[int, np.ndarray] | None  # resolution -> (r*r, r*r) float32
    oracle: np.ndarray  # (H, W) uint8 labels in our class indices
    class_ids: list[int]


# ---------------------------------------------------------------------------------------------
# Prompts and generation
# ---------------------------------------------------------------------------------------------
def _seed(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "little")


def check(params: Params) -> None:
    """Errors that would otherwise surface after generation."""
    s, m = params.study, params.masks
    if m.refine == "affinity":
        raise ParamsError("study 02 sweeps the self-attention refinement (tau); masks.refine='affinity' needs a fitted "
                          "affinity model: set masks.refine='self_attention' or 'none' for the study")
    for name, values in (("thresholds", s.thresholds), ("crf_thresholds", s.crf_thresholds)):
        if values is not None and (not values or sorted(set(values)) != list(values) or not all(0 <= t <= 1 for t in values)):
            raise ParamsError(f"study.{name} must be increasing distinct values in [0, 1], got {values}")
    if not s.taus or any(t < 0 for t in s.taus):
        raise ParamsError(f"study.taus must be a non-empty list of integers >= 0, got {s.taus}")


def study_specs(params: Params) -> list[SampleSpec]:
    """``study.threshold_images_per_class`` prompts per class: alternately one-class and two-class
    (the second class drawn per prompt), from ``prompts.templates``, written as ``prompts.class_prompt`` says.

    Everything derives from (run.seed, class, j): same params, same prompts and seeds."""
    check(params)
    by_slots = TemplateSource(params.model_copy(update={"prompts": params.prompts.model_copy(update={"classes_per_image": [1]})})).by_slots
    mode, specs = params.prompts.class_prompt, []
    for c, cls in enumerate(params.classes):
        for j in range(params.study.threshold_images_per_class):
            rng = np.random.default_rng(_seed("dmutils-study02", params.run.seed, cls.name, j) % 2**63)
            k = 2 if j % 2 and 2 in by_slots and len(params.classes) > 1 else 1
            others = [o for o in params.classes if o.name != cls.name]
            picked = [cls] + ([others[int(rng.integers(len(others)))]] if k == 2 else [])
            words = [str(rng.choice(template_words(p, params.prompts))) for p in picked]
            templates = by_slots[k]
            text = templates[int(rng.integers(len(templates)))].format(*words)
            names = [p.name for p in picked]
            if mode == "append":
                prompt, read = f"{text}; {' '.join(names)}", {n: n for n in names}
            elif mode == "cross_attention":
                prompt, read = text, {n: n for n in names}
            else:
                prompt, read = text, dict(zip(names, words))
            index = len(specs)
            specs.append(SampleSpec(index, f"study02_{index:04d}", prompt, tuple(names), read,
                                    _seed("dmutils-study02-seed", params.run.seed, cls.name, j) % (2**31 - 1),
                                    " ".join(names) if mode == "cross_attention" else None))
    return specs


def generation_params(params: Params) -> Params:
    """The params samples are generated with: self-attention kept whenever a swept tau needs it."""
    tau = max([*params.study.taus, params.masks.tau])
    masks = params.masks.model_copy(update={"refine": "self_attention", "tau": tau})
    return params.model_copy(update={"masks": masks})


def generate_samples(pipe, params: Params, oracle, progress: bool = True) -> tuple[list[Sample], list[dict]]:
    """Generate the study's samples in batches of ``dataset.batch_size``; label them with ``oracle``.

    Returns the samples and the rejected ones (``{"prompt", "reason"}``: a class word not in the prompt)."""
    from dmutils.progress import progress_bar

    from dmutils.dataset.batch import generate_batch

    specs, gen_params = study_specs(params), generation_params(params)
    batch = params.dataset.batch_size
    samples, rejected = [], []
    for start in progress_bar(range(0, len(specs), batch), desc="study 02: generating", disable=not progress):
        chunk = specs[start:start + batch]
        items = generate_batch(pipe, chunk, gen_params, batch)
        labels = oracle.predict(np.stack([it["image"] for it in items]))
        for spec, item, lab in zip(chunk, items, labels):
            if item["reason"]:
                rejected.append({"prompt": spec.prompt, "reason": item["reason"]})
                continue
            samples.append(Sample(spec, item["image"], {r: m.astype(np.float32) for r, m in item["cross"].items()},
                                  {r: m.astype(np.float32) for r, m in item["self_attn"].items()} if item["self_attn"] else None,
                                  lab, [params.class_names.index(c) + 1 for c in spec.classes]))
    return samples, rejected


# ---------------------------------------------------------------------------------------------
# The sweep
# ---------------------------------------------------------------------------------------------
def main_condition(params: Params) -> tuple[int, bool]:
    """(tau, crf) of the params' own mask settings: the condition of the per-class curves."""
    from dmutils.masks.refine import uses_self_attention

    return (params.masks.tau if uses_self_attention(params.masks) else 0), params.masks.crf.enabled


def conditions(params: Params) -> list[tuple[int, bool]]:
    """Every (tau, crf) swept: each study tau at the params' CRF setting, and CRF off/on at the params' tau."""
    tau, crf = main_condition(params)
    out = [(int(t), crf) for t in params.study.taus] + [(tau, False), (tau, True)]
    return list(dict.fromkeys(out))


def mask_params(params: Params, tau: int, crf: bool, threshold: float | None = None) -> MaskParams:
    """The params' mask settings with the swept tau, CRF and fixed threshold, no uncertain band."""
    m = params.masks
    update = {"tau": int(tau), "refine": "self_attention" if tau > 0 else "none", "threshold_mode": "fixed",
              "uncertain_band": None, "crf": m.crf.model_copy(update={"enabled": bool(crf)})}
    if threshold is not None:
        update["threshold"] = float(threshold)
    return m.model_copy(update=update)


def class_counts(labels: np.ndarray, oracle: np.ndarray, class_id: int) -> tuple[int, int]:
    """Pixel counts (intersection, union) of ``labels == class_id`` and ``oracle == class_id``, pixels 255 in
    either left out; (0, 0) when the oracle has no pixel of the class, so such an image adds nothing to a pooled IoU."""
    keep = (labels != 255) & (oracle != 255)
    pred, true = (labels == class_id) & keep, (oracle == class_id) & keep
    if not true.any():
        return 0, 0
    return int((pred & true).sum()), int((pred | true).sum())


def class_ious(labels: np.ndarray, oracle: np.ndarray, class_id: int) -> float:
    """Binary IoU of ``labels == class_id`` against ``oracle == class_id``, pixels 255 in either left
    out; NaN when the oracle has no pixel of the class (the model did not draw it)."""
    keep = (labels != 255) & (oracle != 255)
    pred, true = (labels == class_id) & keep, (oracle == class_id) & keep
    if not true.any():
        return float("nan")
    return float((pred & true).sum()) / float((pred | true).sum())


def sample_counts(sample: Sample, mp: MaskParams, class_names: Sequence[str]) -> list[tuple[int, int]]:
    """(intersection, union) of each of the sample's classes for the mask ``make_mask`` makes with ``mp``."""
    labels, _ = make_mask(sample.cross, sample.image, mp, sample.class_ids, sample.self_attn, class_names=list(class_names))
    return [class_counts(labels, sample.oracle, k) for k in sample.class_ids]


def threshold_labels(sample: Sample, params: Params, tau: int, crf: bool, thresholds: Sequence[float]) -> list[np.ndarray]:
    """The labels ``make_mask`` gives at each threshold. Without CRF the scores do not depend on the
    threshold, so make_mask runs once and its last two steps (threshold, small-region removal) per
    threshold -- the same labels (tested); with CRF make_mask runs per threshold."""
    if crf:
        return [make_mask(sample.cross, sample.image, mask_params(params, tau, crf, t), sample.class_ids, sample.self_attn)[0]
                for t in thresholds]
    mp = mask_params(params, tau, crf)
    _, scores = make_mask(sample.cross, sample.image, mp, sample.class_ids, sample.self_attn)
    min_pixels = int(np.ceil(mp.min_area * scores[0].size))
    return [remove_small_regions(label_map(scores, sample.class_ids, t), min_pixels) for t in thresholds]




RECORD_COLUMNS = ["sample", "prompt", "seed", "class", "tau", "crf", "threshold", "iou", "inter", "union"]


def sweep(samples: Sequence[Sample], params: Params, progress: bool = False) -> pd.DataFrame:
    """One row per (sample, class, tau, crf, threshold) with its IoU and pixel counts (see the module docstring).

    CRF-on conditions are swept at ``study.crf_thresholds`` (all of ``study.thresholds`` when None)."""
    from dmutils.progress import progress_bar

    check(params)
    rows = []
    conds = conditions(params)
    with one_thread():
        for s in progress_bar(samples, desc="study 02: sweeping", disable=not progress):
            for tau, crf in conds:
                grid = params.study.crf_thresholds if crf and params.study.crf_thresholds is not None else params.study.thresholds
                for t, labels in zip(grid, threshold_labels(s, params, tau, crf, grid)):
                    for cls, k in zip(s.spec.classes, s.class_ids):
                        inter, union = class_counts(labels, s.oracle, k)
                        rows.append({"sample": s.spec.id, "prompt": s.spec.prompt, "seed": s.spec.seed, "class": cls,
                                     "tau": tau, "crf": crf, "threshold": float(t),
                                     "iou": inter / union if union else float("nan"), "inter": inter, "union": union})
    return pd.DataFrame(rows, columns=RECORD_COLUMNS)


# ---------------------------------------------------------------------------------------------
# Curves and the table
# ---------------------------------------------------------------------------------------------
def counts_by_image(records: pd.DataFrame, classes: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``inter``, ``union`` arrays ``[images, classes]`` from records (one row per sample and class at most);
    images without any union (the oracle found none of their classes) are left out: they hold no score."""
    samples, s_idx = np.unique(records["sample"].astype(str).to_numpy(), return_inverse=True)
    classes = list(classes) if classes is not None else sorted(records["class"].unique())
    c_idx = records["class"].map({c: k for k, c in enumerate(classes)}).to_numpy()
    inter = np.zeros((len(samples), len(classes)), dtype=np.int64)
    union = np.zeros_like(inter)
    np.add.at(inter, (s_idx, c_idx), records["inter"].to_numpy(np.int64))
    np.add.at(union, (s_idx, c_idx), records["union"].to_numpy(np.int64))
    keep = union.sum(1) > 0
    return inter[keep], union[keep]


def summarize(records: pd.DataFrame, seed: int = 0) -> dict[str, float]:
    """Pooled IoU of the records' classes (mean over classes of summed intersection / summed union) with its 95%
    bootstrap interval over whole images (:func:`dmutils.stats.bootstrap_ci`); n = images with a score."""
    r = stats.bootstrap_ci(*counts_by_image(records), seed=seed)
    return {"mean": r["miou"], "ci_lo": r["ci_lo"], "ci_hi": r["ci_hi"], "n": r["n"]}


def curves(records: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """Pooled IoU and its bootstrap interval per group of ``by`` columns (``threshold`` among them)."""
    rows = [{**dict(zip(by, key if isinstance(key, tuple) else (key,))), **summarize(g)}
            for key, g in records.groupby(list(by), sort=True)]
    return pd.DataFrame(rows, columns=[*by, "mean", "ci_lo", "ci_hi", "n"])


def _at(records: pd.DataFrame, tau: int | None = None, crf: bool | None = None) -> pd.DataFrame:
    keep = np.ones(len(records), dtype=bool)
    if tau is not None:
        keep &= records["tau"].to_numpy() == tau
    if crf is not None:
        keep &= records["crf"].to_numpy() == crf
    return records[keep]


def threshold_curves(records: pd.DataFrame, params: Params) -> pd.DataFrame:
    """Per class and threshold at the params' own tau and CRF setting: the DiffuMask figure."""
    tau, crf = main_condition(params)
    out = curves(_at(records, tau, crf), ["class", "threshold"])
    order = {c: k for k, c in enumerate(params.class_names)}
    return out.sort_values(["class", "threshold"], key=lambda s: s.map(order) if s.name == "class" else s).reset_index(drop=True)


def tau_curves(records: pd.DataFrame, params: Params) -> pd.DataFrame:
    """Per tau and threshold (every class instance pooled), at the params' CRF setting."""
    return curves(_at(records, crf=main_condition(params)[1]), ["tau", "threshold"])


def crf_curves(records: pd.DataFrame, params: Params) -> pd.DataFrame:
    """CRF off and on, per threshold (every class instance pooled), at the params' tau."""
    return curves(_at(records, tau=main_condition(params)[0]), ["crf", "threshold"])


def crf_figure(crf_table: pd.DataFrame):
    """:func:`crf_curves`' table drawn: pooled mIoU vs threshold with DenseCRF off and on (a legend saying so), 95%
    bands, the threshold axis over 0.05-0.95 whatever each condition's grid covers."""
    from dmutils import figures

    table = crf_table.assign(DenseCRF=crf_table["crf"].map({False: "off", True: "on"}))
    fig = figures.curves_with_band(table, "threshold", hue="DenseCRF", hue_order=["off", "on"], xlabel="threshold",
                                   title="IoU vs threshold, DenseCRF off/on", ylabel="pooled mIoU vs oracle")
    ax = fig.axes[0]
    ax.set_xlim(0.0, 1.0)
    ax.set_xticks(np.round(np.arange(0.05, 1.0, 0.15), 2))
    return fig


def _span(values) -> str:
    v = sorted(float(x) for x in values)
    return f"{v[0]:g}-{v[-1]:g}, {len(v)} values" if v else "none"


def crf_caption(crf_table: pd.DataFrame, params: Params) -> str:
    """The caption of :func:`crf_figure`: n, the protocol and each condition's threshold grid."""
    tau = main_condition(params)[0]
    grids = {crf: _span(g["threshold"]) for crf, g in crf_table.groupby("crf")}
    n = crf_table["n"].dropna()
    images = f"n = {int(n.min())}" + (f"-{int(n.max())}" if n.max() != n.min() else "")
    short = "" if params.study.crf_thresholds is None else (
        " DenseCRF on is swept at study.crf_thresholds only (DenseCRF is slow); --set study.crf_thresholds=null sweeps "
        "it over study.thresholds as CRF off.")
    return (f"Pooled mIoU against the oracle (every class instance pooled, {images} images per point) vs the mask "
            f"threshold, DenseCRF off (thresholds {grids.get(False, 'none')}) and on ({grids.get(True, 'none')}), with "
            f"95% bootstrap bands over images.{short} Protocol: guidance {params.model.guidance_scale:g}, "
            f"{params.model.num_inference_steps} steps; masks: the params' (tau {tau}, {params.masks.normalize}), a fixed "
            f"threshold at each swept value, no uncertain band.")


def sweep_counts(records: pd.DataFrame, samples: Sequence[str], classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """``inter``, ``union`` ``[images, thresholds, classes]`` of one (tau, crf) condition's records, rows in the
    order of ``samples`` (every condition's arrays share it, so they can be paired), and the thresholds."""
    grid = sorted(records["threshold"].unique())
    s_idx = records["sample"].astype(str).map({s: k for k, s in enumerate(samples)}).to_numpy()
    t_idx = records["threshold"].map({t: k for k, t in enumerate(grid)}).to_numpy()
    c_idx = records["class"].map({c: k for k, c in enumerate(classes)}).to_numpy()
    inter = np.zeros((len(samples), len(grid), len(classes)), dtype=np.int64)
    union = np.zeros_like(inter)
    np.add.at(inter, (s_idx, t_idx, c_idx), records["inter"].to_numpy(np.int64))
    np.add.at(union, (s_idx, t_idx, c_idx), records["union"].to_numpy(np.int64))
    return inter, union, [float(t) for t in grid]


def tuned_comparison(records: pd.DataFrame, params: Params, by: str = "tau", folds: int = FOLDS, seed: int = 0) -> pd.DataFrame:
    """Each tau (``by='tau'``, at the params' CRF setting) or CRF off/on (``by='crf'``, at the params' tau) at its
    own best threshold, chosen on other images: one row per setting with its cross-fitted mIoU (pooled over the
    classes the images name) and 95% bootstrap interval, the thresholds its folds chose, and the paired bootstrap
    difference against the params' own setting (``diff``, ``diff_lo``, ``diff_hi``; b minus the reference).

    Folds are drawn over the images (seeded), the same for every setting, so the difference is paired."""
    tau, crf = main_condition(params)
    sub = _at(records, crf=crf) if by == "tau" else _at(records, tau=tau)
    reference = tau if by == "tau" else crf
    classes = params.class_names
    settings = sorted(sub[by].unique())
    # images that hold a score in some setting (the oracle drew a named class); the same rows for every setting
    scored = records[records["union"] > 0]["sample"].astype(str).unique()
    samples = sorted(scored)
    fits, grids = {}, {}
    for v in settings:
        inter, union, grids[v] = sweep_counts(sub[sub[by] == v], samples, classes)
        fits[v] = stats.cross_fit(inter, union, folds, seed)
    rows = []
    for v in settings:
        f = fits[v]
        one = stats.bootstrap_ci(*f.scores, seed=seed)
        diff = stats.paired_bootstrap(fits[reference].scores, f.scores, seed=seed) if reference in fits else {}
        chosen = sorted({grids[v][c] for c in f.chosen})
        rows.append({by: v, "miou": one["miou"], "ci_lo": one["ci_lo"], "ci_hi": one["ci_hi"], "n": one["n"],
                     "thresholds": " ".join(f"{t:g}" for t in chosen), "diff": diff.get("diff", np.nan),
                     "diff_lo": diff.get("ci_lo", np.nan), "diff_hi": diff.get("ci_hi", np.nan)})
    return pd.DataFrame(rows, columns=[by, "miou", "ci_lo", "ci_hi", "n", "thresholds", "diff", "diff_lo", "diff_hi"])


def best_thresholds(curve: pd.DataFrame, fallback: float = 0.5) -> pd.DataFrame:
    """Per class the threshold where its pooled IoU is highest (the first one on ties); a class
    without any IoU gets ``fallback`` (``n = 0`` says so)."""
    rows = []
    for cls, g in curve.groupby("class", sort=False):
        g = g.sort_values("threshold")
        if g["mean"].notna().any():
            best = g.loc[g["mean"].idxmax()]
            rows.append({"class": cls, "threshold": float(best["threshold"]), "iou": best["mean"], "ci_lo": best["ci_lo"],
                         "ci_hi": best["ci_hi"], "n": int(best["n"])})
        else:
            rows.append({"class": cls, "threshold": float(fallback), "iou": float("nan"), "ci_lo": float("nan"),
                         "ci_hi": float("nan"), "n": 0})
    return pd.DataFrame(rows)


def threshold_table(best: pd.DataFrame) -> pd.DataFrame:
    """The ``class,threshold`` table that :func:`dmutils.masks.refine.read_threshold_table` reads."""
    return best[["class", "threshold"]].reset_index(drop=True)


def compare_modes(samples: Sequence[Sample], params: Params, table_path: str | Path) -> pd.DataFrame:
    """Pooled IoU (with its bootstrap interval) of the three threshold modes at the params' tau and CRF: fixed (``masks.threshold``),
    per class (the table at ``table_path``, read by make_mask itself) and adaptive (DiffuMask's per-image choice).

    The per-class row is measured on the images its table was chosen on: an optimistic estimate."""
    tau, crf = main_condition(params)
    base = mask_params(params, tau, crf)
    modes = {f"fixed {params.masks.threshold:g}": base,
             "per class": base.model_copy(update={"threshold_mode": "per_class", "threshold_table": str(table_path)}),
             "adaptive": base.model_copy(update={"threshold_mode": "adaptive"})}
    rows = []
    with one_thread():
        for name, mp in modes.items():
            recs = [{"sample": s.spec.id, "class": c, "inter": i, "union": u}
                    for s in samples for c, (i, u) in zip(s.spec.classes, sample_counts(s, mp, s.spec.classes))]
            rows.append({"mode": name, **summarize(pd.DataFrame(recs, columns=["sample", "class", "inter", "union"]))})
    return pd.DataFrame(rows)


def example_masks(samples: Sequence[Sample], params: Params, table_path: str | Path, k: int = 6) -> dict[str, list]:
    """The first ``k`` samples (one per class where possible) with the oracle's labels and the per-class-threshold mask."""
    tau, crf = main_condition(params)
    mp = mask_params(params, tau, crf).model_copy(update={"threshold_mode": "per_class", "threshold_table": str(table_path)})
    chosen, seen = [], set()
    for s in samples:
        if s.spec.classes[0] not in seen:
            chosen.append(s)
            seen.add(s.spec.classes[0])
    chosen = (chosen + [s for s in samples if all(s is not c for c in chosen)])[:k]
    with one_thread():
        masks = [make_mask(s.cross, s.image, mp, s.class_ids, s.self_attn, class_names=list(s.spec.classes))[0] for s in chosen]
    return {"images": [s.image for s in chosen], "oracle": [s.oracle for s in chosen], "masks": masks,
            "prompts": [s.spec.prompt for s in chosen]}


def examples_figure(ex: dict[str, list], params: Params):
    """:func:`example_masks` drawn: each image with its per-class-threshold mask's outlines, that mask and the
    oracle's labels in the flat class palette, the prompt and the image's mIoU against the oracle above."""
    from dmutils import figures

    k = len(params.class_names) + 1
    titles = [figures.column_title(p, figures.image_iou(m, o, k)) for p, m, o in zip(ex["prompts"], ex["masks"], ex["oracle"])]
    return figures.segmentation_grid(ex["images"], [ex["masks"], ex["oracle"]], ["mask", "oracle"], titles, params.class_names,
                                     title="Per-class-threshold masks beside the oracle's labels")


def examples_caption(ex: dict[str, list], params: Params) -> str:
    """The caption of :func:`examples_figure`: n and the protocol."""
    tau, crf = main_condition(params)
    return (f"{len(ex['images'])} study samples (one per class where possible): the image with the outlines of its mask "
            f"at the per-class thresholds (chosen on this study's records), that mask and the oracle's labels in the "
            f"fixed class palette, the prompt and the image's mIoU against the oracle (background included) above. "
            f"Protocol: guidance {params.model.guidance_scale:g}, {params.model.num_inference_steps} steps; masks: "
            f"tau {tau}, DenseCRF {'on' if crf else 'off'}, {params.masks.normalize}, per-class thresholds, no uncertain band.")


def stable_hash(obj: Any) -> str:
    """A short hash of a JSON-able object, stable across runs: the studies' cache keys."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def variant_maps(sample: Sample, params: Params) -> tuple[dict, dict | None]:
    """The sample's maps a variant reads: its own cross and self resolutions of the shared capture."""
    cross = {r: sample.cross[r] for r in params.capture.cross_resolutions}
    self_attn = {r: sample.self_attn[r] for r in params.capture.self_resolutions} if sample.self_attn else None
    return cross, self_attn


# ---------------------------------------------------------------------------------------------
# Conclusions
# ---------------------------------------------------------------------------------------------
def _setting(by: str, value) -> str:
    if by == "crf":
        return "DenseCRF on" if str(value).lower() in ("true", "1", "1.0") else "DenseCRF off"
    return f"{by}={value:g}" if isinstance(value, (int, float, np.integer, np.floating)) else f"{by}={value}"


def conclusions(best: pd.DataFrame, tuned: Mapping[str, pd.DataFrame], modes: pd.DataFrame | None = None) -> list[str]:
    """Study 02's findings, every number a cell of its tables: ``best`` (:func:`best_thresholds`), ``tuned``
    ({"tau": ..., "crf": ...} of :func:`tuned_comparison`) and ``modes`` (:func:`compare_modes`). A setting is better
    or worse than the params' own only when the paired interval of its difference excludes 0."""
    from dmutils.studies.wording import NEGLIGIBLE, interval, num, short, signed, verdict

    out = []
    b = best.dropna(subset=["iou"])
    if len(b):
        lo_t, hi_t = b.loc[b["threshold"].idxmin()], b.loc[b["threshold"].idxmax()]
        span = (f"Every class's best threshold is {short(lo_t.threshold)}" if lo_t.threshold == hi_t.threshold else
                f"The best threshold per class runs from {short(lo_t.threshold)} ({lo_t['class']}) to {short(hi_t.threshold)} ({hi_t['class']})")
        weak, strong = b.loc[b["iou"].idxmin()], b.loc[b["iou"].idxmax()]
        out.append(f"{span}; at it the weakest class is {weak['class']}, IoU {num(weak.iou)} {interval(weak.ci_lo, weak.ci_hi, sign=False)} "
                   f"on {int(weak.n)} images, the strongest {strong['class']}, {num(strong.iou)} {interval(strong.ci_lo, strong.ci_hi, sign=False)}.")
    for by, t in tuned.items():
        t = t.dropna(subset=["miou"])
        ref = t[(t["diff"] == 0) & (t["diff_lo"] == 0) & (t["diff_hi"] == 0)]
        if not len(ref) or len(t) < 2:
            continue
        r = ref.iloc[0]
        others = [
            f"{_setting(by, o[by])} {signed(o['diff'])} {interval(o.diff_lo, o.diff_hi)}, {verdict(o.diff_lo, o.diff_hi, value=o['diff'], negligible=NEGLIGIBLE)}"
            for _, o in t.iterrows() if o.name != ref.index[0]]
        out.append(f"Each {'τ' if by == 'tau' else 'CRF setting'} at its own threshold chosen on other images, against the params' "
                   f"{_setting(by, r[by])} (mIoU {num(r.miou)} {interval(r.ci_lo, r.ci_hi, sign=False)} at threshold {r.thresholds}): "
                   + "; ".join(others) + ".")
    if modes is not None and len(modes.dropna(subset=["mean"])) >= 2:
        m = modes.dropna(subset=["mean"])
        top = m.loc[m["mean"].idxmax()]
        rest = m.drop(index=top.name)
        apart = bool((top.ci_lo > rest["ci_hi"]).all())
        listed = "; ".join(f"{r['mode']} {num(r['mean'])} {interval(r.ci_lo, r.ci_hi, sign=False)}" for _, r in m.iterrows())
        out.append(f"Threshold modes (pooled mIoU): {listed}. The highest, {top['mode']}, "
                   + ("lies above every other mode's interval" if apart else "overlaps another mode's interval: the ranking is within noise")
                   + "; the per-class thresholds are scored on the images they were chosen on, so their figure is optimistic.")
    return out

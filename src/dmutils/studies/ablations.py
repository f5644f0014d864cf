"""Study 05: which choices matter -- mask mIoU against the oracle for a grid of params variants.

A grid (``study.ablation_grid``, YAML) names groups of variants; each variant is a dict of dotted
overrides of the run's params::

    groups:
      tau:
        "0": {masks.tau: 0}
        "2": {masks.tau: 2}

Generating is the expensive part, so variants share generated samples: they are grouped by the
settings that change what the model draws or what is captured (:func:`generation_key`: model,
classes, prompts, capture except the resolutions, seed), each group is generated once with the
union of the resolutions its variants read and self-attention kept, and each variant's masks are
made from those maps restricted to its own resolutions. Scores are cached on disk under a hash of
the variant's effective params (:func:`variant_hash`), so a rerun computes only what changed and
skips generation for groups whose variants are all cached. Caveat: capturing more layers runs
their attention through the capture processors, which can move the images by float rounding, so a
variant scored in a grid with other resolutions may differ from a fresh score in the 4th digit. The steps::

    variants = load_grid(params)                                   # [Variant(group, setting, overrides)]
    results  = run_grid(pipe_factory, params, variants, cache_dir)  # one row per variant: miou with intervals, n
    tables   = pivot_tables(results)                                # paper-style: one table per group

Error bars (:mod:`dmutils.stats`). A cached score keeps each image's per-class intersection and union, so
intervals are recomputed from the cache, never from pooled numbers: mIoU's 95% interval is a bootstrap over
whole images, and a variant's change against the baseline is a *paired* bootstrap over the images both scored
(matched by prompt and seed). A variant with a fixed threshold also keeps its counts at every threshold of
the study's grid (``study.thresholds``; ``study.crf_thresholds`` with DenseCRF), and its *tuned* score is at
its own best threshold chosen on other images (5-fold, the same folds for every variant): one shared fixed
threshold would favour the variants it happens to suit (tau 0's maps peak lower than tau 2's, so 0.5 is
off-optimum for tau 0), and a best threshold picked on the scored images is optimistic.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dmutils import stats
from dmutils.config import Params, deep_merge, explain
from dmutils.errors import ParamsError
from dmutils.studies.ablation_segmenter import training_only
from dmutils.studies.thresholds import (
    FOLDS,
    Sample,
    one_thread,
    stable_hash,
    study_specs,
    variant_maps,
)

BASELINE = ("baseline", "params")
GENERATION_SECTIONS = ("model", "classes", "prompts")
CAPTURE_SHARED = ("cross_resolutions", "self_resolutions")  # read per variant, not per generation
SCORE_VERSION = 2  # 2: per-image counts and the threshold sweep kept in the cache (1: pooled mIoU only)


@dataclass
class Variant:
    """One ablation setting: its group (a table of the report), its label and its dotted overrides."""

    group: str
    setting: str
    overrides: dict[str, Any] = field(default_factory=dict)
    segmenter: bool = False  # also scored by a segmenter trained on its data (dmutils.studies.ablation_segmenter)
    segmenter_overrides: dict[str, Any] = field(default_factory=dict)  # the grid's, for that training only

    @property
    def name(self) -> str:
        return f"{self.group}: {self.setting}"


# ---------------------------------------------------------------------------------------------
# The grid
# ---------------------------------------------------------------------------------------------
def _nest(dotted: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in dotted.items():
        parts = str(key).split(".")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def apply(params: Params, overrides: dict[str, Any], where: str = "variant") -> Params:
    """``params`` with dotted ``overrides`` applied and validated (a bad key names the variant)."""
    from pydantic import ValidationError

    try:
        return Params.model_validate(deep_merge(params.model_dump(mode="json"), _nest(overrides)))
    except ValidationError as e:
        raise explain(e, where) from None


def load_grid(params: Params, path: str | Path | None = None) -> list[Variant]:
    """The variants of the grid file (default ``study.ablation_grid``), the baseline first; every
    variant is validated here, before anything is generated."""
    path = path or params.study.ablation_grid
    if not path:
        raise ParamsError("study.ablation_grid is null: set it to a grid YAML, e.g. params/ablations/toy_small.yaml")
    file = params.resolve_path(str(path)) if not Path(path).is_absolute() else Path(path)
    if not file.is_file():
        raise ParamsError(f"study.ablation_grid {str(path)!r}: no such file ({file}); see params/ablations/ for examples")
    import yaml

    data = yaml.safe_load(file.read_text()) or {}
    groups = data.get("groups") if isinstance(data, dict) else None
    if not isinstance(groups, dict) or not groups:
        raise ParamsError(f"{file}: must hold 'groups: {{group: {{setting: {{dotted.key: value}}}}}}'")
    wanted = data.get("segmenter_variants") or []
    if not isinstance(wanted, list):
        raise ParamsError(f"{file}: segmenter_variants must be a list of variant names, e.g. [baseline, 'tau: 1']")
    seg_over = data.get("segmenter_overrides") or {}
    if not isinstance(seg_over, dict) or not all(str(k).startswith("train.") for k in seg_over):
        raise ParamsError(f"{file}: segmenter_overrides must be dotted train.* overrides, e.g. {{train.steps: 80}}")
    apply(params, seg_over, f"{file}: segmenter_overrides")
    variants = [Variant(*BASELINE)]
    for group, settings in groups.items():
        if not isinstance(settings, dict) or not settings:
            raise ParamsError(f"{file}: group {group!r} must map setting labels to override dicts")
        for setting, over in settings.items():
            if not isinstance(over, dict):
                raise ParamsError(f"{file}: {group}/{setting} must be a dict of dotted overrides, e.g. {{masks.tau: 2}}")
            v = Variant(str(group), str(setting), dict(over))
            v.segmenter = training_only(v.overrides)
            p = apply(params, v.overrides, f"{file}: variant '{v.name}'")
            if p.dataset.splice.enabled:  # mosaics need enough samples: say so before generating
                from dmutils.dataset.splice import check_grids

                check_grids(p.dataset.splice, p.study.ablation_samples, f"{file}: variant '{v.name}' (study.ablation_samples)")
            if p.masks.refine == "affinity":
                raise ParamsError(f"{file}: variant '{v.name}': masks.refine='affinity' is not ablated here (needs a fitted model)")
            variants.append(v)
    names = {v.name: v for v in variants} | {"baseline": variants[0]}
    unknown = [str(n) for n in wanted if str(n) not in names]
    if unknown:
        raise ParamsError(f"{file}: segmenter_variants names {unknown}, which are not variants; "
                          f"use 'baseline' or 'group: setting', one of {sorted(names)}")
    for n in wanted:
        names[str(n)].segmenter = True
    for v in variants:
        if v.segmenter:
            v.segmenter_overrides = dict(seg_over)
    return variants


# ---------------------------------------------------------------------------------------------
# Keys: what decides the samples, what decides a score
# ---------------------------------------------------------------------------------------------
def generation_key(params: Params) -> str:
    """Hash of the settings that change the generated images or their captured maps."""
    d = params.model_dump(mode="json")
    capture = {k: v for k, v in d["capture"].items() if k not in CAPTURE_SHARED}
    return stable_hash({**{k: d[k] for k in GENERATION_SECTIONS}, "capture": capture, "seed": d["run"]["seed"],
                  "samples": d["study"]["ablation_samples"], "oracle": d["oracle"]})


def variant_hash(params: Params) -> str:
    """Hash of everything a variant's masks depend on (the segmenter's cache key builds on it)."""
    d = params.model_dump(mode="json")
    return stable_hash({"generation": generation_key(params), "capture": d["capture"], "masks": d["masks"]})


def threshold_grid(params: Params) -> list[float]:
    """The thresholds a fixed-threshold variant is also scored at: ``study.thresholds``, or with DenseCRF (slow)
    ``study.crf_thresholds`` when set; none for per-class or adaptive thresholds (nothing to choose)."""
    if params.masks.threshold_mode != "fixed":
        return []
    s = params.study
    return list(s.crf_thresholds if params.masks.crf.enabled and s.crf_thresholds is not None else s.thresholds)


def score_key(params: Params) -> str:
    """The mask score's cache key: the masks' key, the threshold grid and :data:`SCORE_VERSION` (bumped when what
    a cached score holds changes, so older entries are recomputed rather than read without their counts)."""
    return stable_hash({"masks": variant_hash(params), "thresholds": threshold_grid(params), "score": SCORE_VERSION})


# ---------------------------------------------------------------------------------------------
# Samples
# ---------------------------------------------------------------------------------------------
def ablation_specs(params: Params):
    """``study.ablation_samples`` prompts, classes taken in turn (study 02's prompts, interleaved)."""
    n_cls = len(params.classes)
    per_class = -(-params.study.ablation_samples // n_cls)
    p = params.model_copy(update={"study": params.study.model_copy(update={"threshold_images_per_class": per_class})})
    specs = study_specs(p)
    order = sorted(range(len(specs)), key=lambda i: (i % per_class, i // per_class))
    return [specs[i] for i in order][: params.study.ablation_samples]


def generation_params(variants_params: Sequence[Params]) -> Params:
    """Params that generate once for all ``variants_params`` (same generation key): the union of
    their resolutions, self-attention kept at the largest tau."""
    first = variants_params[0]
    cross = sorted({r for p in variants_params for r in p.capture.cross_resolutions}, reverse=True)
    self_res = sorted({r for p in variants_params for r in p.capture.self_resolutions}, reverse=True)
    tau = max(1, *(p.masks.tau for p in variants_params))
    return first.model_copy(update={
        "capture": first.capture.model_copy(update={"cross_resolutions": cross, "self_resolutions": self_res}),
        "masks": first.masks.model_copy(update={"refine": "self_attention", "tau": tau})})


def generate(pipe, params: Params, oracle, specs=None) -> list[Sample]:
    """The ablation samples of ``params`` (from :func:`generation_params`), labelled by ``oracle``; ``specs``
    (default :func:`ablation_specs`) names other prompts, e.g. the dataset's own (the claims ledger's)."""
    from dmutils.dataset.batch import generate_batch

    specs, batch, samples = specs if specs is not None else ablation_specs(params), params.dataset.batch_size, []
    for start in range(0, len(specs), batch):
        chunk = specs[start:start + batch]
        items = generate_batch(pipe, chunk, params, batch)
        labels = oracle.predict(np.stack([it["image"] for it in items]))
        for spec, item, lab in zip(chunk, items, labels):
            if item["reason"]:
                continue
            samples.append(Sample(spec, item["image"], {r: m.astype(np.float32) for r, m in item["cross"].items()},
                                  {r: m.astype(np.float32) for r, m in (item["self_attn"] or {}).items()} or None,
                                  lab, [params.class_names.index(c) + 1 for c in spec.classes]))
    return samples


# ---------------------------------------------------------------------------------------------
# Scores
# ---------------------------------------------------------------------------------------------
def confusion(pred: np.ndarray, true: np.ndarray, num_classes: int) -> np.ndarray:
    """Confusion matrix (true x pred) over pixels that neither marks 255 (ignore)."""
    keep = (pred != 255) & (true != 255)
    idx = true[keep].astype(np.int64) * num_classes + pred[keep].astype(np.int64)
    return np.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def miou(conf: np.ndarray) -> float:
    """Mean IoU over the classes present in the labels or predictions (background included)."""
    inter = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - inter
    return float((inter[union > 0] / union[union > 0]).mean()) if (union > 0).any() else float("nan")


def _labels_at(sample: Sample, cross, self_attn, mp, grid: Sequence[float]) -> list[np.ndarray]:
    """``make_mask``'s labels at each threshold of ``grid``. Without DenseCRF the scores do not depend on the
    threshold, so make_mask runs once and its last steps (threshold, band, small regions) per threshold: the same
    labels (tested); with DenseCRF it runs per threshold."""
    from dmutils.masks.refine import label_map, make_mask, remove_small_regions

    if mp.crf.enabled:
        return [make_mask(cross, sample.image, mp.model_copy(update={"threshold": float(t)}), sample.class_ids, self_attn)[0]
                for t in grid]
    _, scores = make_mask(cross, sample.image, mp, sample.class_ids, self_attn)
    min_pixels = int(np.ceil(mp.min_area * scores[0].size))
    return [remove_small_regions(label_map(scores, sample.class_ids, float(t), mp.uncertain_band), min_pixels) for t in grid]


def score(samples: Sequence[Sample], params: Params) -> dict[str, Any]:
    """mIoU of the masks ``params`` make from ``samples`` against the oracle (pooled over images), with the
    fraction of pixels the masks leave as 255 (the uncertain band's cost), and what intervals are recomputed
    from: ``images`` (sample ids), ``inter`` / ``union`` ``[images][classes]`` at the params' own settings and,
    for a fixed threshold, ``sweep_inter`` / ``sweep_union`` ``[images][thresholds][classes]`` at each of
    ``thresholds`` (:func:`threshold_grid`)."""
    from dmutils.masks.refine import make_mask

    k = len(params.classes) + 1
    grid = threshold_grid(params)
    inter, union, sweep_i, sweep_u, ignored = [], [], [], [], []
    with one_thread():
        for s in samples:
            cross, self_attn = variant_maps(s, params)
            labels, _ = make_mask(cross, s.image, params.masks, s.class_ids, self_attn, class_names=list(s.spec.classes))
            i, u = stats.confusion_counts(labels, s.oracle, k)
            inter.append(i.tolist())
            union.append(u.tolist())
            ignored.append(float((labels == 255).mean()))
            if grid:
                at = [stats.confusion_counts(lab, s.oracle, k) for lab in _labels_at(s, cross, self_attn, params.masks, grid)]
                sweep_i.append([c[0].tolist() for c in at])
                sweep_u.append([c[1].tolist() for c in at])
    n = len(samples)
    out = {"miou": float(stats.pooled_miou(np.reshape(inter, (n, k)), np.reshape(union, (n, k)))) if n else float("nan"),
           "n": n, "ignored": float(np.mean(ignored)) if ignored else float("nan"),
           "images": [s.spec.id for s in samples], "num_classes": k, "inter": inter, "union": union, "thresholds": grid}
    if grid:
        out |= {"sweep_inter": sweep_i, "sweep_union": sweep_u}
    return out


COUNT_FIELDS = ("images", "num_classes", "inter", "union", "thresholds", "sweep_inter", "sweep_union")


def _aligned(res: dict, ids: Sequence[str]) -> dict[str, np.ndarray]:
    """A cached score's count arrays restricted to ``ids``, in that order."""
    row = {i: r for r, i in enumerate(res["images"])}
    take = np.asarray([row[i] for i in ids], dtype=np.int64)
    n, k, t = len(res["images"]), res["num_classes"], len(res["thresholds"])
    out = {"inter": np.reshape(res["inter"], (n, k)).astype(np.int64)[take],
           "union": np.reshape(res["union"], (n, k)).astype(np.int64)[take]}
    if t:
        out |= {"sweep_inter": np.reshape(res["sweep_inter"], (n, t, k)).astype(np.int64)[take],
                "sweep_union": np.reshape(res["sweep_union"], (n, t, k)).astype(np.int64)[take]}
    return out


def intervals(scores: dict[str, dict], baseline: str, folds: int = FOLDS, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Per variant, from its cached per-image counts: the 95% bootstrap interval of its mIoU (``miou_lo``,
    ``miou_hi``); its change against ``baseline`` with the paired bootstrap interval over the images both scored
    (``delta``, ``delta_lo``, ``delta_hi``); and the same at each one's own threshold chosen on other images
    (``tuned_*``; a variant without a threshold sweep is its own tuned score), with the thresholds chosen."""
    base = scores[baseline]
    out = {}
    for name, res in scores.items():
        shared = set(base["images"])
        ids = [i for i in res["images"] if i in shared]
        mine, ref = _aligned(res, ids), _aligned(base, ids)

        def tuned(a: dict) -> tuple[tuple[np.ndarray, np.ndarray], list[int]]:
            if "sweep_inter" not in a:
                return (a["inter"], a["union"]), []
            fit = stats.cross_fit(a["sweep_inter"], a["sweep_union"], folds, seed)
            return fit.scores, sorted(set(fit.chosen.tolist()))

        every = _aligned(res, res["images"])
        own = stats.bootstrap_ci(every["inter"], every["union"], seed=seed)
        delta = stats.paired_bootstrap((ref["inter"], ref["union"]), (mine["inter"], mine["union"]), seed=seed)
        (ti, tu), chosen = tuned(mine)
        (bi, bu), _ = tuned(ref)
        t_one = stats.bootstrap_ci(ti, tu, seed=seed)
        t_delta = stats.paired_bootstrap((bi, bu), (ti, tu), seed=seed)
        out[name] = {"miou_lo": own["ci_lo"], "miou_hi": own["ci_hi"], "delta": delta["diff"], "delta_lo": delta["ci_lo"],
                     "delta_hi": delta["ci_hi"], "paired_n": delta["n"], "tuned_miou": t_one["miou"], "tuned_lo": t_one["ci_lo"],
                     "tuned_hi": t_one["ci_hi"], "tuned_delta": t_delta["diff"], "tuned_delta_lo": t_delta["ci_lo"],
                     "tuned_delta_hi": t_delta["ci_hi"],
                     "tuned_thresholds": " ".join(f"{res['thresholds'][c]:g}" for c in chosen)}
    return out


# ---------------------------------------------------------------------------------------------
# The grid run
# ---------------------------------------------------------------------------------------------
def run_grid(pipe_factory: Callable[[], Any], params: Params, variants: Sequence[Variant], cache_dir: str | Path,
             oracle=None, progress: bool = True, test=None) -> pd.DataFrame:
    """Score every variant: one row each (variant, group, setting, miou, the interval columns of :func:`intervals`,
    n, ignored, cached, key, same_masks (a variant whose masks are the baseline's by construction: same score key, as
    when it changes only training; its mask score is the baseline's), protocol (how its masks were made, in words),
    and for ``Variant.segmenter`` ones segmenter_miou, train_samples, train_seconds; NaN otherwise).

    ``pipe_factory`` is called once, and only when some score is not cached; samples are generated
    once per generation key. ``oracle`` default: :func:`dmutils.oracles.get_oracle`; ``test`` (the
    segmenters' test set) default: the real test split; both loaded lazily."""
    from dmutils.progress import progress_bar

    from dmutils.figures import protocol
    from dmutils.paths import atomic_write_bytes
    from dmutils.studies import ablation_segmenter as seg

    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    vparams = {v.name: apply(params, v.overrides, f"variant '{v.name}'") for v in variants}
    keys = {v.name: score_key(vparams[v.name]) for v in variants}
    seg_params = {v.name: apply(vparams[v.name], v.segmenter_overrides, f"variant '{v.name}'") for v in variants if v.segmenter}
    # the segmenter's key builds on the masks' key (variant_hash), not the score's: a new score format retrains nothing
    seg_keys = {name: seg.segmenter_key(p, variant_hash(vparams[name])) for name, p in seg_params.items()}

    def cached(key: str) -> dict | None:
        f = cache / f"{key}.json"
        return {**json.loads(f.read_text()), "cached": True} if f.is_file() else None

    results = {v.name: cached(keys[v.name]) for v in variants}
    seg_results = {name: cached(key) for name, key in seg_keys.items()}
    todo: dict[str, list[Variant]] = {}
    for v in variants:
        if results[v.name] is None or (v.segmenter and seg_results[v.name] is None):
            todo.setdefault(generation_key(vparams[v.name]), []).append(v)
    pipe = pipe_factory() if todo else None
    if todo and oracle is None:
        from dmutils.oracles import get_oracle

        oracle = get_oracle(params)
    for group in progress_bar(list(todo.values()), desc="ablations: generation groups", disable=not progress):
        samples = generate(pipe, generation_params([vparams[v.name] for v in group]), oracle)
        for v in group:
            p = vparams[v.name]
            if results[v.name] is None:
                res = score(samples, p)
                results[v.name] = {**res, "cached": False}
                atomic_write_bytes(cache / f"{keys[v.name]}.json", json.dumps({**res, "variant": v.name}).encode())
            if v.segmenter and seg_results[v.name] is None:
                if test is None:
                    from dmutils.segment.data import open_real

                    test = open_real(params, params.real.test_split)
                res = seg.segmenter_score(samples, seg_params[v.name], test)
                seg_results[v.name] = {**res, "cached": False}
                atomic_write_bytes(cache / f"{seg_keys[v.name]}.json", json.dumps({**res, "variant": v.name}).encode())
    bars = intervals(results, variants[0].name)
    rows = []
    for v in variants:
        r, sr = results[v.name], seg_results.get(v.name) or seg.nan_score()
        rows.append({"variant": v.name, "group": v.group, "setting": v.setting, "miou": r["miou"], **bars[v.name], "n": r["n"],
                     "ignored": r["ignored"], "segmenter_miou": sr["segmenter_miou"], "train_samples": sr["train_samples"],
                     "train_seconds": sr["train_seconds"], "cached": r["cached"] and (sr.get("cached", True)),
                     "key": keys[v.name], "same_masks": v is not variants[0] and keys[v.name] == keys[variants[0].name],
                     "protocol": protocol(vparams[v.name])})
    return pd.DataFrame(rows)


PERCENT_COLUMNS = {"miou_lo": "lo", "miou_hi": "hi", "delta_lo": "Δ lo", "delta_hi": "Δ hi",
                   "tuned_miou": "tuned mIoU (%)", "tuned_lo": "tuned lo", "tuned_hi": "tuned hi",
                   "tuned_delta": "tuned Δ", "tuned_delta_lo": "tuned Δ lo", "tuned_delta_hi": "tuned Δ hi"}


def pivot_tables(results: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """One paper-style table per group: the baseline row, then the group's settings, mIoU in % and
    the change against the baseline; plus the segmenter's mIoU where the group has one.

    With :func:`intervals`' columns (``run_grid`` adds them) each figure has its 95% interval in points, the
    change is the paired one (images both scored), and the tuned columns give each setting at its own
    threshold chosen on other images, with the thresholds chosen."""
    base = results[results["group"] == BASELINE[0]]
    base_miou = float(base["miou"].iloc[0]) if len(base) else float("nan")
    base_seg = float(base["segmenter_miou"].iloc[0]) if len(base) and "segmenter_miou" in base else float("nan")
    bars = [c for c in PERCENT_COLUMNS if c in results]
    out = {}
    for group, g in results[results["group"] != BASELINE[0]].groupby("group", sort=False):
        t = pd.concat([base, g])
        has_seg = "segmenter_miou" in t and t["segmenter_miou"].iloc[1:].notna().any()
        paired = "delta" in t
        t = t[["setting", "miou", "n", *(["segmenter_miou"] if has_seg else []), *(["delta"] if paired else []), *bars,
               *(["tuned_thresholds"] if "tuned_thresholds" in t else [])]].copy()
        t["delta"] = (t["delta"] if paired else t["miou"] - base_miou) * 100
        t["miou"] = t["miou"] * 100
        for c in bars:
            t[c] = t[c] * 100
        names = {"miou": "mIoU (%)", "delta": "Δ vs baseline", **PERCENT_COLUMNS}
        if has_seg:
            t["segmenter_delta"] = (t["segmenter_miou"] - base_seg) * 100
            t["segmenter_miou"] = t["segmenter_miou"] * 100
            names |= {"segmenter_miou": "segmenter mIoU (%)", "segmenter_delta": "segmenter Δ"}
        out[str(group)] = t.rename(columns=names).reset_index(drop=True)
    return out


# ---------------------------------------------------------------------------------------------
# Conclusions
# ---------------------------------------------------------------------------------------------
def conclusions(results: Any, ledger: pd.DataFrame | None = None) -> list[str]:
    """Study 05's findings, every number a cell of the ``ablations`` table (:func:`run_grid`'s columns): the baseline,
    the variants whose masks are worse or better than it (the paired interval of the change at each variant's own
    threshold, chosen on other images, excludes 0), those within noise, and the segmenter scores (one short training
    each, no interval: indicative). Variants that change training only have the baseline's masks and are left to the
    segmenter sentence. ``ledger``: the claims ledger's rows for the grid's groups
    (:func:`dmutils.studies.claims.for_ablation_groups`), read as the segmenter-level evidence."""
    from dmutils.studies.wording import NEGLIGIBLE, NOISE, interval, missing, num, signed, verdict

    rows = results.to_dict("records")
    base = next((r for r in rows if r["group"] == "baseline"), None)
    if base is None:
        return []
    out = [f"The baseline (the run's params) makes masks of mIoU {num(base['miou'])} {interval(base['miou_lo'], base['miou_hi'], sign=False)} "
           f"against the oracle on {int(base['n'])} images, {num(base['tuned_miou'])} at its own threshold chosen on other images."]
    same = [r for r in rows if r is not base and r["tuned_delta"] == 0 and r["tuned_delta_lo"] == 0 and r["tuned_delta_hi"] == 0]
    masked = [r for r in rows if r is not base and r not in same and not missing(r["tuned_delta"])]
    by = {}
    for r in masked:
        by.setdefault(verdict(r["tuned_delta_lo"], r["tuned_delta_hi"], value=r["tuned_delta"], negligible=NEGLIGIBLE), []).append(r)

    def listed(group: list[dict]) -> str:
        return "; ".join(f"{r['variant']} ({signed(r['tuned_delta'])} {interval(r['tuned_delta_lo'], r['tuned_delta_hi'])}"
                         + (f", leaving a fraction {num(r['ignored'])} of the pixels unscored" if r.get("ignored", 0) > 0 else "") + ")"
                         for r in group)

    if by.get("worse"):
        out.append("Worse masks than the baseline (the change, each at its own threshold chosen on other images, with its "
                   f"interval): {listed(by['worse'])}.")
    out.append(f"Better masks than the baseline (the same measure): {listed(by['better'])}." if by.get("better") else
               "No variant makes better masks than the baseline beyond noise.")
    if by.get(NOISE):
        out.append("Within noise of the baseline: " + ", ".join(r["variant"] for r in by[NOISE]) + ".")
    scored = [r for r in rows if not missing(r["segmenter_miou"])]
    if len(scored) >= 2 and not missing(base["segmenter_miou"]):
        hi = max(scored, key=lambda r: r["segmenter_miou"])
        lo = min(scored, key=lambda r: r["segmenter_miou"])
        out.append(f"Segmenters trained on each main variant score from {num(lo['segmenter_miou'])} ({lo['variant']}) to "
                   f"{num(hi['segmenter_miou'])} ({hi['variant']}) on the real test split, the baseline {num(base['segmenter_miou'])}; "
                   "one short training each and no interval, so these differences are indicative, not verdicts.")
    return out + ledger_sentences(ledger)


def ledger_sentences(ledger: pd.DataFrame | None) -> list[str]:
    """The segmenter-level verdicts of the claims ledger's rows for the grid's groups, grouped by verdict."""
    from dmutils.studies.wording import interval, signed

    if ledger is None or not len(ledger):
        return []
    seeds = int(ledger["seeds"].max())
    out = [f"At the segmenter level, the claims ledger's rows that change settings of these groups (mIoU on the real "
           f"test split over {seeds} seeds, differences in points) read as follows."]
    for verdict, lead in (("holds", "Holding"), ("does not hold", "Reversed"), ("inconclusive", "Within noise")):
        rows = ledger[ledger["verdict"] == verdict].drop_duplicates("claim")
        if len(rows):
            out.append(f"{lead}: " + "; ".join(f"{r.claim} ({signed(r.diff, 1)} {interval(r.ci_lo, r.ci_hi, digits=1)})"
                                               for r in rows.itertuples()) + ".")
    return out


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------
def same_masks(results: pd.DataFrame) -> pd.Series:
    """Rows whose masks are the baseline's by construction (``run_grid``'s ``same_masks``, else the baseline's score
    key); False for all when the table has neither column."""
    if "same_masks" in results:
        return results["same_masks"].fillna(False).astype(bool)
    if "key" in results:
        base = results.loc[results["group"] == BASELINE[0], "key"]
        return (results["group"] != BASELINE[0]) & results["key"].eq(base.iloc[0] if len(base) else None)
    return pd.Series(False, index=results.index)


def _fit_axis(ax, values) -> None:
    """x limits around ``values`` and 0 (the baseline) with a small margin: the differences fill the axis."""
    v = np.asarray([x for x in np.ravel(values) if np.isfinite(x)] + [0.0])
    lo, hi = float(v.min()), float(v.max())
    pad = max(hi - lo, 0.5) * 0.08
    ax.set_xlim(lo - pad, hi + pad)


def _delta_rows(ax, rows: pd.DataFrame, columns: list[tuple[str, str, str, str, dict]]) -> list[float]:
    """Points of each ``(value, lo, hi, label, style)`` column in points (x 100) with their intervals, one line per
    row (top to bottom), offsets within a line; returns every value drawn (for the axis)."""
    y = np.arange(len(rows))[::-1].astype(float)
    shown = []
    for j, (col, lo, hi, label, style) in enumerate(columns):
        x = rows[col].to_numpy(float) * 100
        offset = (j - (len(columns) - 1) / 2) * 0.25
        err = None
        if lo in rows and hi in rows:
            lo_v, hi_v = rows[lo].to_numpy(float) * 100, rows[hi].to_numpy(float) * 100
            err = np.vstack([x - lo_v, hi_v - x]).clip(min=0)
            err = np.where(np.isfinite(err), err, 0)
            shown += [*lo_v, *hi_v]
        style = dict(style)
        ax.errorbar(x, y + offset, xerr=err, fmt=style.pop("fmt", "o"), capsize=2, lw=1, label=label, **style)
        shown += list(x)
    ax.set_yticks(y, rows["variant"])
    groups = rows["group"].to_numpy()
    for k in range(1, len(rows)):
        if groups[k] != groups[k - 1]:
            ax.axhline(y[k] + 0.5, color="0.85", lw=0.8)
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.axvline(0, color="black", lw=1, zorder=0, label="baseline (0)")
    return shown


def delta_figure(results: pd.DataFrame):
    """Mask mIoU of each variant minus the baseline's (points) with paired bootstrap 95% intervals over the images
    both scored: at the params' threshold and, where present, at each one's own threshold chosen on other images;
    a zero line; the axis fit to the differences. Variants with the baseline's masks (training only) are left out."""
    import matplotlib.pyplot as plt

    rows = results[(results["group"] != BASELINE[0]) & ~same_masks(results)]
    if not len(rows):
        raise ValueError("no variant changes the masks: nothing to compare against the baseline")
    columns = [("delta", "delta_lo", "delta_hi", "at the params' threshold", {"color": "C0"})]
    if "tuned_delta" in rows and rows["tuned_delta"].notna().any():
        columns.append(("tuned_delta", "tuned_delta_lo", "tuned_delta_hi", "each at its own threshold (cross-fitted)",
                        {"color": "C1", "fmt": "D", "mfc": "white", "ms": 4}))
    fig, ax = plt.subplots(figsize=(7.0, 1.6 + 0.3 * len(rows)), layout="constrained")
    _fit_axis(ax, _delta_rows(ax, rows, columns))
    ax.set(xlabel="Δ mask mIoU vs the baseline (points; oracle labels)", title="Ablations: masks, difference from the baseline")
    ax.grid(axis="y", visible=False)
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=3, fontsize="x-small", frameon=False)
    return fig


def segmenter_scored(results: pd.DataFrame) -> bool:
    """Whether the baseline and at least one variant were scored by a segmenter (:func:`segmenter_delta_figure` draws)."""
    seg = results["segmenter_miou"].notna() if "segmenter_miou" in results else pd.Series(False, index=results.index)
    base = results["group"] == BASELINE[0]
    return bool((seg & base).any() and (seg & ~base).any())


def segmenter_delta_figure(results: pd.DataFrame):
    """Segmenter mIoU on the real test split of each scored variant minus the baseline's (points, no intervals: one
    training per variant and no per-image counts kept), a zero line and the axis fit to the differences."""
    import matplotlib.pyplot as plt

    base = results.loc[results["group"] == BASELINE[0], "segmenter_miou"]
    rows = results[(results["group"] != BASELINE[0]) & results["segmenter_miou"].notna()].copy()
    if not segmenter_scored(results):
        raise ValueError("no variant (or no baseline) was scored by a segmenter")
    rows["seg_delta"] = rows["segmenter_miou"] - float(base.iloc[0])
    fig, ax = plt.subplots(figsize=(7.0, 1.6 + 0.3 * len(rows)), layout="constrained")
    _fit_axis(ax, _delta_rows(ax, rows, [("seg_delta", "", "", "one training each (no interval)", {"color": "C2"})]))
    ax.set(xlabel="Δ segmenter mIoU on the real test split vs the baseline (points)",
           title="Ablations: segmenters, difference from the baseline")
    ax.grid(axis="y", visible=False)
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=2, fontsize="x-small", frameon=False)
    return fig


def delta_caption(results: pd.DataFrame, params: Params) -> str:
    """The caption of :func:`delta_figure`: n, the protocol and what is left out."""
    from dmutils import figures

    base = results[results["group"] == BASELINE[0]].iloc[0]
    left = results.loc[same_masks(results), "variant"].tolist()
    paired = int(base["paired_n"]) if "paired_n" in base and pd.notna(base["paired_n"]) else int(base["n"])
    s = params.study
    grids = f"study.thresholds ({min(s.thresholds):g}-{max(s.thresholds):g})" + (
        f", or study.crf_thresholds ({min(s.crf_thresholds):g}-{max(s.crf_thresholds):g}) with DenseCRF on"
        if s.crf_thresholds else "")
    tuned = (f" Diamonds: each variant and the baseline at their own threshold of {grids}, chosen on other images "
             f"({FOLDS}-fold; per-class and adaptive thresholds as they are)." if "tuned_delta" in results else "")
    return (f"Mask mIoU against the oracle of each ablation variant minus the baseline's, in points, n = {paired} images "
            f"(the baseline's; a variant is paired on the images both scored), with paired bootstrap 95% intervals over "
            f"images ({stats.N_BOOT} resamples); 0 = the baseline. Circles: at the params' threshold.{tuned} "
            f"Baseline protocol: {figures.protocol(params)}; each variant changes only what its name says."
            + (f" Not drawn, their mask settings being the baseline's (they change only training, or repeat the "
               f"baseline's setting), so their masks are the baseline's: {', '.join(left)}." if left else ""))


def segmenter_caption(results: pd.DataFrame, params: Params) -> str:
    """The caption of :func:`segmenter_delta_figure`: n, the protocol, and why there are no intervals."""
    from dmutils import figures

    scored = results[results["segmenter_miou"].notna()]
    train = scored["train_samples"].dropna()
    sizes = f"{int(train.min())}-{int(train.max())}" if len(train) else "?"
    return (f"mIoU on the real test split of a segmenter trained on each main variant's masks minus the baseline's, in "
            f"points ({len(scored)} trainings, the baseline's included, of {sizes} synthetic images each, one seed: short and indicative). No "
            f"intervals: one training per variant and no per-image test counts are kept, so none can be computed; "
            f"0 = the baseline. Baseline protocol: {figures.protocol(params)}.")

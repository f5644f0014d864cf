"""Study 07, the claims ledger: each claim of the two papers measured on the toy world, over seeds, with a verdict.

A ledger file (``params/claims/toy.yaml``) lists the claims; each is a pair of settings, the one the paper credits
(``variant``) and the one it improves on (``reference``), as dotted overrides of the run's params. For every seed
(``seeds``: the run seed, so the prompts, the image seeds and the training seed) and every setting the ledger keeps
two measures, each cached on disk under a hash of everything it depends on, so an interrupted run resumes where it
stopped and a changed row recomputes only itself::

    ledger  = load_ledger(params, "params/claims/toy.yaml")      # validated before anything runs
    run_ledger(pipe_factory, params, ledger, cache_dir)          # per seed and setting: the two measures, cached
    table   = summarize(params, ledger, cache_dir)                # one row per claim: differences, intervals, verdicts

- **mask**: mIoU of the masks against the oracle on the seed's ``samples`` generated images (per-image counts,
  :func:`dmutils.studies.ablations.score`), each setting at its own threshold chosen on other images
  (cross-fitted) where it has a fixed threshold. Settings that generate the same images are compared image by image;
  settings with other prompts generate other images, and are compared unpaired.
- **segmenter**: mIoU on the real test split of a segmenter trained, with that seed, on the setting's data as the
  dataset would hold it (rejected samples dropped, mosaics with ``dataset.splice``, noise learning and self-training
  when set; ``data: real | both`` trains on the real training split alone or with the synthetic samples). Per-image
  counts on the test images, so two settings are compared image by image.

A claim's difference is the mean over seeds of the per-seed difference (variant minus reference); its 95% interval
is a two-level bootstrap (:func:`dmutils.stats.seeds_paired_bootstrap`: seeds, then images), and its verdict
(:func:`dmutils.stats.verdict`) reads that interval against the paper's sign. The papers' figures are segmenter mIoU
on VOC, so the segmenter measure is the one the verdict column reports; the mask measure says whether the masks
themselves moved. Settings that only change evaluation (``train.tta``) share their training.
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
from dmutils.config import Params
from dmutils.errors import ParamsError
from dmutils.studies import ablations
from dmutils.studies.thresholds import FOLDS, stable_hash

DATA = ("synthetic", "real", "both")
EVAL_ONLY = ("tta", "tta_scales", "eval_batch_size")  # train.* settings that change the evaluation, not the training
VERSION = 1  # bumped when what a cached result holds changes


@dataclass(frozen=True)
class Setting:
    """One side of a claim: dotted overrides of the run's params, and the segmenter's training data."""

    overrides: tuple[tuple[str, Any], ...]
    data: str = "synthetic"

    @property
    def as_dict(self) -> dict[str, Any]:
        return dict(self.overrides)


@dataclass
class Claim:
    id: str
    paper: str
    table: str
    claim: str
    paper_figure: str
    paper_delta: float | None
    reference: Setting
    variant: Setting
    direction: int = 1
    note: str = ""


@dataclass
class Ledger:
    path: Path
    seeds: list[int]
    samples: int
    base: dict[str, Any]
    claims: list[Claim] = field(default_factory=list)

    def select(self, ids: Sequence[str] | None) -> list[Claim]:
        if not ids:
            return list(self.claims)
        known = {c.id: c for c in self.claims}
        unknown = [i for i in ids if i not in known]
        if unknown:
            raise ParamsError(f"{self.path}: no claim {unknown}; the ledger has {sorted(known)}")
        return [known[i] for i in ids]


# ---------------------------------------------------------------------------------------------
# The ledger file
# ---------------------------------------------------------------------------------------------
def _setting(raw: Any, where: str) -> Setting:
    if not isinstance(raw, dict):
        raise ParamsError(f"{where} must be a dict of dotted overrides, e.g. {{masks.tau: 2}}, got {raw!r}")
    over = dict(raw)
    data = over.pop("data", "synthetic")
    if data not in DATA:
        raise ParamsError(f"{where}: data must be one of {list(DATA)}, got {data!r}")
    return Setting(tuple(sorted((str(k), _freeze(v)) for k, v in over.items())), data)


def _freeze(v: Any) -> Any:
    return tuple(_freeze(x) for x in v) if isinstance(v, list) else v


def load_ledger(params: Params, path: str | Path) -> Ledger:
    """The ledger file's claims, every setting validated against the params (a bad key names its row)."""
    import yaml

    file = Path(path) if Path(path).is_absolute() else params.resolve_path(str(path))
    if not file.is_file():
        raise ParamsError(f"claims ledger {str(path)!r}: no such file ({file}); see params/claims/toy.yaml")
    data = yaml.safe_load(file.read_text()) or {}
    rows = data.get("rows") if isinstance(data, dict) else None
    if not isinstance(rows, list) or not rows:
        raise ParamsError(f"{file}: must hold 'rows: [{{id, paper, claim, paper_figure, reference, variant}}, ...]'")
    seeds, samples, base = data.get("seeds", [0, 1, 2]), data.get("samples", 48), data.get("base") or {}
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds) or len(set(seeds)) != len(seeds):
        raise ParamsError(f"{file}: seeds must be a list of distinct integers, e.g. [0, 1, 2], got {seeds!r}")
    if not isinstance(samples, int) or samples < 2:
        raise ParamsError(f"{file}: samples must be an integer >= 2, got {samples!r}")
    ledger = Ledger(file, seeds, samples, dict(base))
    for k, row in enumerate(rows):
        where = f"{file}: row {k + 1}"
        if not isinstance(row, dict) or not {"id", "paper", "claim", "paper_figure", "reference", "variant"} <= set(row):
            raise ParamsError(f"{where} needs id, paper, claim, paper_figure, reference and variant")
        claim = Claim(str(row["id"]), str(row["paper"]), str(row.get("table", "")), str(row["claim"]), str(row["paper_figure"]),
                      None if row.get("paper_delta") is None else float(row["paper_delta"]),
                      _setting(row["reference"], f"{where} ({row['id']}) reference"),
                      _setting(row["variant"], f"{where} ({row['id']}) variant"), int(row.get("direction", 1)),
                      str(row.get("note", "")))
        if claim.id in {c.id for c in ledger.claims}:
            raise ParamsError(f"{where}: id {claim.id!r} appears twice; ids must be unique")
        for side, s in (("reference", claim.reference), ("variant", claim.variant)):
            setting_params(params, ledger, s, ledger.seeds[0], f"{where} ({claim.id}) {side}")
        ledger.claims.append(claim)
    return ledger


def setting_params(params: Params, ledger: Ledger, setting: Setting, seed: int, where: str = "claims ledger") -> Params:
    """The params of one setting at one seed: the run's, the ledger's base, the setting's overrides."""
    over = {**ledger.base, **{k: list(v) if isinstance(v, tuple) else v for k, v in setting.overrides},
            "run.seed": seed, "study.ablation_samples": ledger.samples}
    p = ablations.apply(params, over, where)
    if p.masks.refine == "affinity":
        raise ParamsError(f"{where}: masks.refine='affinity' needs a fitted model; the ledger does not measure it")
    return p


# ---------------------------------------------------------------------------------------------
# Keys
# ---------------------------------------------------------------------------------------------
def eval_config(p: Params) -> dict[str, Any]:
    return {"tta": p.train.tta, "scales": list(p.train.tta_scales) if p.train.tta else None}


def eval_name(p: Params) -> str:
    return stable_hash(eval_config(p))


def training_key(p: Params, data: str) -> str:
    """What a segmenter's weights depend on: the masks (unless it trains on real data alone), the training, the
    splicing, the real data and the seed; not the evaluation settings."""
    d = p.model_dump(mode="json")
    train = {k: v for k, v in d["train"].items() if k not in EVAL_ONLY}
    return "seg-" + stable_hash({"masks": ablations.variant_hash(p) if data != "real" else None, "data": data,
                                 "train": train, "splice": d["dataset"]["splice"] if data != "real" else None,
                                 "real": d["real"], "min_area": d["dataset"]["min_area"], "seed": d["run"]["seed"],
                                 "version": VERSION})


def mask_key(p: Params) -> str:
    return "mask-" + ablations.score_key(p)


def sample_specs(p: Params, samples: int):
    """The seed's prompts as the dataset would draw them (``prompts.source``): sample indices seed*samples onwards,
    so seeds differ in prompts as well as in image seeds."""
    from dmutils.dataset.prompts import PromptPlan

    start = p.run.seed * samples
    return PromptPlan(p).specs(range(start, start + samples))


# ---------------------------------------------------------------------------------------------
# Running: per seed, generate once per generation setting, then measure
# ---------------------------------------------------------------------------------------------
def _read(cache: Path, key: str) -> dict | None:
    f = cache / f"{key}.json"
    return json.loads(f.read_text()) if f.is_file() else None


def _write(cache: Path, key: str, value: dict) -> None:
    from dmutils.paths import atomic_write_bytes

    atomic_write_bytes(cache / f"{key}.json", json.dumps(value).encode())


def train_and_count(samples: Sequence | None, p: Params, data: str, test, real_train, evals: dict[str, Params]) -> dict:
    """Train one segmenter on the setting's data; per-image counts on ``test`` for each evaluation in ``evals``."""
    import time

    from dmutils.segment.evaluate import per_image_counts
    from dmutils.segment.train import train_segmenter
    from dmutils.studies.ablation_segmenter import training_data, training_set

    t0 = time.perf_counter()
    synthetic, rejected, dropped = [], 0, 0
    if data != "real":
        made, rejected = training_set(samples, p)
        synthetic = training_data(made, p)  # noise learning, then mosaics: as `dmutils train` does
        dropped = len(made) - len(synthetic[0])
    extra = [real_train] if data in ("real", "both") else []
    datasets = synthetic + extra
    seg = train_segmenter(p, datasets, progress=False).segmenter
    if synthetic and p.train.self_training:
        from dmutils.segment.selftrain import self_train

        seg = self_train(p, seg, synthetic[0], extra=extra).segmenter
    out = {"train_samples": sum(len(d) for d in datasets), "rejected": rejected, "dropped": dropped,
           "train_seconds": round(time.perf_counter() - t0, 2), "evals": {}}
    for name, ep in evals.items():
        inter, union = per_image_counts(seg, test, ep.train.tta, list(ep.train.tta_scales), ep.train.eval_batch_size)
        out["evals"][name] = {"config": eval_config(ep), "inter": inter.tolist(), "union": union.tolist(),
                              "miou": float(stats.pooled_miou(inter, union))}
    return out


def run_ledger(pipe_factory: Callable[[], Any], params: Params, ledger: Ledger, cache_dir: str | Path,
               claims: Sequence[Claim] | None = None, seeds: Sequence[int] | None = None,
               measures: Sequence[str] = ("mask", "segmenter"), oracle=None, test=None, real_train=None,
               log: Callable[[str], None] = print) -> None:
    """Compute whatever the cache lacks for ``claims`` (default all) at ``seeds`` (default the ledger's).
    Each result is written as soon as it is made: a run stopped at any point resumes from there."""
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    claims = list(claims or ledger.claims)
    settings = list(dict.fromkeys(s for c in claims for s in (c.reference, c.variant)))
    pipe = None
    for seed in seeds or ledger.seeds:
        sp = {s: setting_params(params, ledger, s, seed) for s in settings}
        evals: dict[str, dict[str, Params]] = {}
        for s in settings:
            if "segmenter" in measures:
                evals.setdefault(training_key(sp[s], s.data), {})[eval_name(sp[s])] = sp[s]
        todo_mask = {s for s in settings if s.data != "real" and "mask" in measures and _read(cache, mask_key(sp[s])) is None}
        todo_seg = {}
        for key, wanted in evals.items():
            have = _read(cache, key)
            if have is None or not set(wanted) <= set(have["evals"]):
                todo_seg[key] = wanted
        seg_of = {s: training_key(sp[s], s.data) for s in settings}
        groups: dict[str, list[Setting]] = {}
        for s in settings:
            if s.data != "real" and (s in todo_mask or seg_of[s] in todo_seg):
                groups.setdefault(ablations.generation_key(sp[s]), []).append(s)
        if (todo_seg or todo_mask) and oracle is None and groups:
            from dmutils.oracles import get_oracle

            oracle = get_oracle(params)
        if todo_seg and test is None:
            from dmutils.segment.data import open_real

            test = open_real(params, params.real.test_split)
        if any(s.data != "synthetic" for s in settings if seg_of[s] in todo_seg) and real_train is None:
            from dmutils.segment.data import open_real

            real_train = open_real(params, params.real.train_split)
        for group in groups.values():
            if pipe is None:
                pipe = pipe_factory()
            gp = ablations.generation_params([sp[s] for s in group])
            samples = ablations.generate(pipe, gp, oracle, sample_specs(gp, ledger.samples))
            log(f"seed {seed}: generated {len(samples)} samples for {len(group)} setting(s)")
            for s in group:
                p = sp[s]
                if s in todo_mask:
                    _write(cache, mask_key(p), {**ablations.score(samples, p), "seed": seed})
                    todo_mask.discard(s)
                key = seg_of[s]
                if key in todo_seg:
                    res = train_and_count(samples, p, s.data, test, real_train, todo_seg.pop(key))
                    _write(cache, key, {**res, "seed": seed})
                    log(f"seed {seed}: trained {key} on {res['train_samples']} samples in {res['train_seconds']} s")
        for s in settings:  # real data alone: no generation
            key = seg_of[s]
            if s.data == "real" and key in todo_seg:
                res = train_and_count(None, sp[s], "real", test, real_train, todo_seg.pop(key))
                _write(cache, key, {**res, "seed": seed})
                log(f"seed {seed}: trained {key} on real data in {res['train_seconds']} s")


# ---------------------------------------------------------------------------------------------
# Summarising: one row per claim
# ---------------------------------------------------------------------------------------------
def _tuned(res: dict) -> tuple[np.ndarray, np.ndarray]:
    """A cached mask score's per-image counts, at the threshold chosen on other images where it has a sweep."""
    n, k, t = len(res["images"]), res["num_classes"], len(res["thresholds"])
    if t:
        fit = stats.cross_fit(np.reshape(res["sweep_inter"], (n, t, k)), np.reshape(res["sweep_union"], (n, t, k)), FOLDS)
        return fit.scores
    return np.reshape(res["inter"], (n, k)), np.reshape(res["union"], (n, k))


def _mask_pairs(a: dict, b: dict, paired: bool):
    ca, cb = _tuned(a), _tuned(b)
    if not paired:
        return ca, cb
    row_a, row_b = {i: r for r, i in enumerate(a["images"])}, {i: r for r, i in enumerate(b["images"])}
    ids = [i for i in a["images"] if i in row_b]
    ia, ib = [row_a[i] for i in ids], [row_b[i] for i in ids]
    return (ca[0][ia], ca[1][ia]), (cb[0][ib], cb[1][ib])


def measure(params: Params, ledger: Ledger, claim: Claim, cache_dir: str | Path, seeds: Sequence[int] | None = None,
            boot_seed: int = 0) -> dict[str, Any]:
    """One claim's two measures from the cache: difference, interval, per-seed differences, verdict (NaN and
    'not run' where the cache lacks a seed; 'same masks' where both settings make the same masks)."""
    cache = Path(cache_dir)
    seeds = list(seeds or ledger.seeds)
    out: dict[str, Any] = {}
    ref = {s: setting_params(params, ledger, claim.reference, s) for s in seeds}
    var = {s: setting_params(params, ledger, claim.variant, s) for s in seeds}
    # mask
    same = claim.reference.data != "synthetic" or claim.variant.data != "synthetic" or \
        ablations.variant_hash(ref[seeds[0]]) == ablations.variant_hash(var[seeds[0]])
    if same:
        out["mask"] = {"verdict": "same masks" if claim.reference.data == claim.variant.data == "synthetic" else "n/a"}
    else:
        got = [(_read(cache, mask_key(ref[s])), _read(cache, mask_key(var[s]))) for s in seeds]
        if any(a is None or b is None for a, b in got):
            out["mask"] = {"verdict": "not run"}
        else:
            paired = ablations.generation_key(ref[seeds[0]]) == ablations.generation_key(var[seeds[0]])
            r = stats.seeds_paired_bootstrap([_mask_pairs(a, b, paired) for a, b in got], paired=paired, seed=boot_seed)
            out["mask"] = {**r, "paired": paired, "verdict": stats.verdict(r["ci_lo"], r["ci_hi"], claim.direction)}
    # segmenter
    got = [(_read(cache, training_key(ref[s], claim.reference.data)), _read(cache, training_key(var[s], claim.variant.data)))
           for s in seeds]
    ea, eb = eval_name(ref[seeds[0]]), eval_name(var[seeds[0]])
    if any(a is None or b is None or ea not in a["evals"] or eb not in b["evals"] for a, b in got):
        out["segmenter"] = {"verdict": "not run"}
    else:
        pairs = [((np.asarray(a["evals"][ea]["inter"]), np.asarray(a["evals"][ea]["union"])),
                  (np.asarray(b["evals"][eb]["inter"]), np.asarray(b["evals"][eb]["union"]))) for a, b in got]
        r = stats.seeds_paired_bootstrap(pairs, shared_images=True, seed=boot_seed)
        out["segmenter"] = {**r, "paired": True, "verdict": stats.verdict(r["ci_lo"], r["ci_hi"], claim.direction),
                            "train_samples": [[a["train_samples"], b["train_samples"]] for a, b in got]}
    return out


def summarize(params: Params, ledger: Ledger, cache_dir: str | Path, claims: Sequence[Claim] | None = None,
              seeds: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """The ledger's rows: the paper's figure beside the toy world's two measures, in mIoU points."""
    rows = []
    for c in claims or ledger.claims:
        m = measure(params, ledger, c, cache_dir, seeds)
        row = {"id": c.id, "paper": c.paper, "table": c.table, "claim": c.claim, "paper_figure": c.paper_figure,
               "paper_delta": c.paper_delta, "note": c.note, "reference": dict(c.reference.overrides) | {"data": c.reference.data},
               "variant": dict(c.variant.overrides) | {"data": c.variant.data}, "verdict": m["segmenter"]["verdict"]}
        for name, r in m.items():
            pts = {k: 100 * r[k] for k in ("diff", "ci_lo", "ci_hi", "miou_a", "miou_b") if k in r}
            row[name] = {"verdict": r["verdict"], **{k: round(v, 2) for k, v in pts.items()},
                         **({"per_seed": [round(100 * d, 2) for d in r["per_seed"]], "images": r["n"], "seeds": r["seeds"],
                             "paired": r["paired"]} if "per_seed" in r else {}),
                         **({"train_samples": r["train_samples"]} if "train_samples" in r else {})}
        rows.append(row)
    return rows


def table(rows: Sequence[dict]) -> pd.DataFrame:
    """The ledger as the report shows it: one line per claim, points of mIoU, the verdicts."""
    def fmt(r: dict) -> str:
        if "diff" not in r:
            return r["verdict"]
        return f"{r['diff']:+.1f} [{r['ci_lo']:+.1f}, {r['ci_hi']:+.1f}]"

    return pd.DataFrame([{"paper": r["paper"], "claim": r["claim"], "paper's figure": r["paper_figure"],
                          "paper Δ": r["paper_delta"], "segmenter Δ [95% CI]": fmt(r["segmenter"]),
                          "verdict": r["segmenter"]["verdict"], "mask Δ [95% CI]": fmt(r["mask"]),
                          "mask verdict": r["mask"]["verdict"]} for r in rows], index=[r["id"] for r in rows])


def changed_keys(row: dict) -> set[str]:
    """The settings a claim changes: the dotted keys whose value differs between its variant and its reference."""
    a, b = row["variant"], row["reference"]
    return {k for k in set(a) | set(b) if a.get(k) != b.get(k)}


def rows_changing(rows: Sequence[dict], keys: set[str]) -> list[dict]:
    """The ledger's rows whose claim changes any of the dotted ``keys`` (e.g. an ablation group's settings)."""
    return [r for r in rows if changed_keys(r) & set(keys)]


def for_ablation_groups(variants: Sequence[ablations.Variant], rows: Sequence[dict]) -> pd.DataFrame:
    """Study 05's segmenter-level evidence: per ablation group, the ledger rows whose claim changes one of the group's
    settings, with the segmenter's difference (points, 95% interval over seeds and images) and verdict."""
    out = []
    for group in dict.fromkeys(v.group for v in variants if v.overrides):
        keys = {k for v in variants if v.group == group for k in v.overrides}
        for r in rows_changing(rows, keys):
            s = r["segmenter"]
            out.append({"group": group, "claim": r["id"], "what": r["claim"], "diff": s.get("diff"), "ci_lo": s.get("ci_lo"),
                        "ci_hi": s.get("ci_hi"), "seeds": s.get("seeds"), "verdict": s["verdict"]})
    return pd.DataFrame(out, columns=["group", "claim", "what", "diff", "ci_lo", "ci_hi", "seeds", "verdict"])


def forest(rows: Sequence[dict]) -> pd.DataFrame:
    """Long form for the ledger's figure: one line per claim and measure (difference, interval, verdict), plus the
    paper's difference where it gives one."""
    out = []
    for r in rows:
        for name in ("segmenter", "mask"):
            m = r[name]
            if "diff" in m:
                out.append({"id": r["id"], "measure": name, "diff": m["diff"], "lo": m["ci_lo"], "hi": m["ci_hi"],
                            "verdict": m["verdict"]})
        if r["paper_delta"] is not None:
            out.append({"id": r["id"], "measure": "paper", "diff": r["paper_delta"], "lo": np.nan, "hi": np.nan,
                        "verdict": ""})
    return pd.DataFrame(out)


def conclusions(rows: Sequence[dict]) -> list[str]:
    """The ledger's findings as sentences, every number read from ``rows``: how many claims hold on the toy world,
    which, and which go the other way (segmenter measure; the masks' verdict beside it)."""
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["verdict"], []).append(r)
    seeds = max((r["segmenter"].get("seeds", 0) for r in rows), default=0)

    def name(r: dict) -> str:
        s = r["segmenter"]
        return f"{r['id']} ({s['diff']:+.1f} points, 95% CI [{s['ci_lo']:+.1f}, {s['ci_hi']:+.1f}])"

    out = [f"Of {len(rows)} claims measured over {seeds} seeds, {len(by.get('holds', []))} hold on the toy world, "
           f"{len(by.get('does not hold', []))} go the other way and {len(by.get('inconclusive', []))} are within noise "
           "(segmenter mIoU on the real test split)."]
    for verdict, lead in (("holds", "Holding"), ("does not hold", "Reversed"), ("inconclusive", "Within noise")):
        if by.get(verdict):
            out.append(f"{lead}: " + "; ".join(name(r) for r in by[verdict]) + ".")
    if by.get("not run"):
        out.append("Not run yet: " + ", ".join(r["id"] for r in by["not run"]) + ".")
    return out


def rerun(params: Params, ledger_path: str | Path, claim_id: str, cache_dir: str | Path, seed: int | None = None,
          pipe_factory: Callable[[], Any] | None = None) -> dict[str, Any]:
    """One claim's mask measure at one seed, computed afresh into ``cache_dir`` (the report's live check of the
    committed ledger: same settings, same seed, so the same figure up to float rounding)."""
    ledger = load_ledger(params, ledger_path)
    claim = ledger.select([claim_id])[0]
    seed = ledger.seeds[0] if seed is None else seed
    if pipe_factory is None:
        from dmutils.dataset.batch import pipeline_for

        def pipe_factory():
            return pipeline_for(params)
    run_ledger(pipe_factory, params, ledger, cache_dir, [claim], [seed], measures=("mask",), log=lambda line: None)
    return measure(params, ledger, claim, cache_dir, [seed])["mask"]


def markdown(rows: Sequence[dict], source: str = "results/claims.json") -> str:
    """The ledger as a markdown table for the README and docs, each figure a link to its key in ``source`` (the docs'
    figure test checks every one against the file)."""
    def link(value: float, key: str) -> str:
        return f"[{value:+.1f}]({source} \"{key}\")"

    def cell(r: dict, k: int, name: str) -> str:
        m = r[name]
        if "diff" not in m:
            return m["verdict"]
        at = f"rows.{k}.{name}"
        return f"{link(m['diff'], at + '.diff')} ({link(m['ci_lo'], at + '.ci_lo')} to {link(m['ci_hi'], at + '.ci_hi')})"

    lines = ["| claim | paper | paper's figure (VOC mIoU) | segmenter Δ (95% CI) | verdict | mask Δ (95% CI) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for k, r in enumerate(rows):
        lines.append(f"| `{r['id']}`: {r['claim']} | {r['paper']} | {r['paper_figure']} | {cell(r, k, 'segmenter')} | "
                     f"**{r['verdict']}** | {cell(r, k, 'mask')} |")
    return "\n".join(lines)

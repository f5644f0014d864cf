"""Study 06: the toy UNet and the toy MMDiT side by side -- does joint attention localise as cross-attention does?

Both models draw the same two-class prompts with the same seeds (``bench toy-model``'s protocol: guidance 7.5,
plain masks, the params' threshold), and each map is scored against the oracle's labels of its own image:
- per map kind: the UNet's cross-attention; the MMDiT's joint-softmax slice, text-only softmax, and concept tokens
  read in attention and in output space (ConceptAttention; :data:`dmutils.toy.probe.KINDS`). The best kind is chosen
  on the first half of the images (``miou_selection``) and the headline scores it on the other half (``miou_held_out``),
  so no score is of a choice made on the images it scores;
- per depth: the UNet's down and up blocks at the captured resolution; each of the MMDiT's blocks (best kind);
- per timestep window (best kind);
- per named word: the IoU of the first and of the second class the prompt names (best kind; a word absorbing its
  neighbour shows here);
- the MMDiT with text-to-text attention cut (:func:`dmutils.attention.ablations.text_isolated`; best kind);
- which route the MMDiT's caption takes (tokens, pooled vector: ``presence_by_route``);
- per aggregation (best kind): the mean over heads and layers, ``capture.aggregate: auto``, and the labels' choice,
  image by image, of the auto mask or one head's (``label-chosen head``: an oracle choice of one head per image, which a label-free
  choice can hardly beat); and per head (:func:`heads_table`), auto's mean weight and the head's mIoU alone (:mod:`dmutils.toy.heads`).
Every score is a generation of ``study.family_images`` images; results are cached under
``<run_dir>/model_families_cache/`` by a hash of the settings, of the model's weights (:func:`dmutils.provenance.model_hash`)
and of its config files, so a re-run costs nothing. The segmenter ratio is read from
``results/<model folder name>/bench_segmenter.json`` only when its provenance names the same weights.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

from dmutils.config import Params
from dmutils.paths import RESULTS_DIR, atomic_write_bytes
from dmutils.provenance import model_hash, require_same_weights

SCORES_VERSION = 4  # part of the cache key: raise it when score_model scores something new
AGGREGATES = ("mean", "auto")  # capture.aggregate, each scored on the best map kind
CEILING = "label-chosen head"  # the aggregation row of dmutils.toy.heads' ceiling
UNET_DEPTHS = ("down", "up")  # the toy UNet's blocks that hold maps at its 16x16 level (mid is coarser)


def model_params(params: Params, path: str) -> Params:
    """``params`` with another model, loaded as its model_index.json says, with its own scheduler."""
    from dmutils.toy.probe import other_model

    return params.model_copy(update={"model": params.model.model_copy(update=other_model(path))})


def model_key(params: Params, path: str, images: int, windows: int) -> str:
    """Hash of what decides the scores: the settings, the model's weights (:func:`model_hash`) and its config files
    (model_index.json and its components' .json/.txt: scheduler, tokenizers; not the training logs kept beside them)."""
    folder = params.resolve_path(path)
    h = hashlib.sha256(json.dumps([SCORES_VERSION, params.capture.model_dump(mode="json"), params.masks.threshold, params.masks.normalize,
                                   params.model.num_inference_steps, images, windows, model_hash(folder)], sort_keys=True).encode())
    for f in sorted(folder.rglob("*")):
        config_file = f.name == "model_index.json" or len(f.relative_to(folder).parts) > 1
        if f.is_file() and config_file and f.suffix in (".json", ".txt"):
            h.update(f.relative_to(folder).as_posix().encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:12]


def _settings(pipe, params: Params, windows: int):
    """The map kinds ({kind: CaptureSpec over every block and the params' window}), the depths ((label, blocks)) and the
    timestep windows of one model; a depth or window is read with :func:`dataclasses.replace` of its kind's spec."""
    from dmutils.studies.attention import equal_windows
    from dmutils.toy.probe import KINDS, kind_spec, protocol_spec

    transformer = getattr(pipe, "transformer", None)
    if transformer is None:
        kinds = {"cross": protocol_spec(params)}
        depths = [(b, {"blocks": (b,)}) for b in UNET_DEPTHS]
    else:
        grid = transformer.config.sample_size // transformer.config.patch_size
        kinds = {kind: kind_spec(params, grid, kind, None) for kind in KINDS}
        n = len(transformer.transformer_blocks)
        depths = [(f"block {b} ({(b + 0.5) / n:.2f})", {"transformer_blocks": (b,)}) for b in range(n)]
    return kinds, depths, [{"timestep_window": w} for w in equal_windows(windows)]


def score_model(params: Params, path: str, images: int, windows: int, orc=None, progress: bool = False) -> dict:
    """Scores of one model: rows (view, setting, miou, presence) and the best kind's examples."""
    from dmutils.attention.ablations import text_isolated
    from dmutils.attention.adapters.families import SD3
    from dmutils.oracles import toy_unet as oracle_mod
    from dmutils.pipeline import load_pipeline
    from dmutils.toy.probe import PROTOCOL_GUIDANCE, evaluate_model, uses_concepts

    mp = model_params(params, path)
    pipe = load_pipeline(mp.model, device="cpu")
    orc = orc or oracle_mod.load()
    kinds, depths, window_list = _settings(pipe, mp, windows)
    steps = mp.model.num_inference_steps

    def score(spec, class_prompts: bool) -> dict:
        return evaluate_model(pipe, mp, images, images, steps, orc, mp.masks.threshold, progress=progress, guidance=PROTOCOL_GUIDANCE,
                              spec=spec, class_prompts=class_prompts)

    rows, results = [], {}
    for kind, spec in kinds.items():
        results[kind] = r = score(spec, uses_concepts(kind))
        selection, held_out = split_miou(r, images)
        rows.append({"view": "map kind", "setting": kind, "miou": r["attention_miou"], "presence": r["presence_rate"],
                     "miou_selection": selection, "miou_held_out": held_out})
    best = max((row for row in rows if row["view"] == "map kind"), key=lambda row: row["miou_selection"])["setting"]
    views = [("depth", label, change) for label, change in depths]
    views += [("timestep window", "{:.2f}-{:.2f}".format(*w["timestep_window"]), w) for w in window_list]
    for view, label, change in views:
        r = score(dataclasses.replace(kinds[best], **change), uses_concepts(best))
        rows.append({"view": view, "setting": label, "miou": r["attention_miou"], "presence": r["presence_rate"]})
    rows += [{"view": "named word", "setting": word, "miou": iou, "presence": None} for word, iou in results[best]["iou_by_word"].items()]
    if SD3.matches(pipe):  # the ablation: text tokens attend to the image and themselves, not to each other
        with text_isolated(pipe.transformer):
            r = score(kinds[best], uses_concepts(best))
        rows.append({"view": "text-to-text attention", "setting": "cut", "miou": r["attention_miou"], "presence": r["presence_rate"]})
    if getattr(pipe, "transformer", None) is not None:
        from dmutils.toy.probe import presence_by_route

        rows += [{"view": "caption route", "setting": route, "miou": None, "presence": v}
                 for route, v in presence_by_route(pipe, orc, images, steps).items()]
    by_aggregate = {kinds[best].aggregate: results[best]}  # the best kind with the mean and with auto aggregation
    for aggregate in AGGREGATES:
        if aggregate not in by_aggregate:
            by_aggregate[aggregate] = score(dataclasses.replace(kinds[best], aggregate=aggregate), uses_concepts(best))
    rows += [{"view": "aggregation", "setting": a, "miou": by_aggregate[a]["attention_miou"], "presence": by_aggregate[a]["presence_rate"]}
             for a in AGGREGATES]
    chosen = by_aggregate["auto"]["heads"]
    rows.append({"view": "aggregation", "setting": CEILING, "miou": chosen["ceiling"], "presence": None})
    family = type(getattr(pipe, "transformer", None) or pipe.unet).__name__
    examples = {k: results[best][k][:4].tolist() for k in ("images", "preds", "targets")}
    return {"model": path, "family": family, "best_kind": best, "rows": rows, "examples": examples,
            "heads": [{"head": label, **v} for label, v in chosen["by_head"].items()]}


def split_miou(result: dict, images: int) -> tuple[float, float]:
    """The mask mIoU of the first half of the images (where a kind is chosen) and of the second (where it is scored)."""
    from dmutils.oracles import toy_unet as oracle_mod

    half = images // 2
    preds, targets = np.asarray(result["preds"]), np.asarray(result["targets"])
    return oracle_mod.miou(preds[:half], targets[:half]), oracle_mod.miou(preds[half:], targets[half:])


def protocol(params: Params) -> str:
    """How study 06 makes and scores its masks, in words (``bench toy-model``'s protocol, not the dataset's)."""
    from dmutils.toy.probe import PROTOCOL_GUIDANCE

    return (f"bench toy-model: guidance {PROTOCOL_GUIDANCE:g}, {params.model.num_inference_steps} steps; the attention "
            f"map alone (no self-attention refinement, no DenseCRF), {params.masks.normalize} normalisation, fixed "
            f"threshold {params.masks.threshold:g}")


def run_study(params: Params, cache_dir: str | Path, progress: bool = False) -> dict[str, dict]:
    """:func:`score_model` of every model in ``study.family_models``, read from ``cache_dir`` when scored before."""
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    s = params.study
    out = {}
    for path in s.family_models:
        f = cache / f"{Path(path).name}-{model_key(params, path, s.family_images, s.family_windows)}.json"
        if f.is_file():
            out[path] = {**json.loads(f.read_text()), "cached": True}
            continue
        res = score_model(params, path, s.family_images, s.family_windows, progress=progress)
        atomic_write_bytes(f, json.dumps(res).encode())
        out[path] = {**res, "cached": False}
    return out


def scores_table(results: dict[str, dict]) -> pd.DataFrame:
    """One row per model and setting: mask mIoU against the oracle and the presence of the named objects."""
    rows = [{"model": Path(m).name, "family": r["family"], **row, "cached": r["cached"]} for m, r in results.items() for row in r["rows"]]
    return pd.DataFrame(rows)


def heads_table(results: dict[str, dict]) -> pd.DataFrame:
    """One row per model and captured head (best map kind): auto aggregation's mean weight and the head's mask mIoU alone."""
    return pd.DataFrame([{"model": Path(m).name, **row} for m, r in results.items() for row in r["heads"]])


def heads_figure(heads: pd.DataFrame, table: pd.DataFrame):
    """Per model, each head's mIoU alone against the weight auto gave it, with the mean's, auto's and the label-chosen
    ceiling's mIoU as lines: does auto weigh the heads that localise, and how far could choosing heads go?"""
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(heads["model"]))
    fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 3.2), squeeze=False, sharey=True)
    for ax, model in zip(axes[0], models):
        h = heads[heads.model == model]
        ax.scatter(h["weight"], h["miou"], s=14, color="0.3", label="one head alone")
        lines = table[(table.model == model) & (table.view == "aggregation")]
        for setting, miou in lines[["setting", "miou"]].itertuples(index=False):
            ax.axhline(miou, linestyle={"mean": "--", "auto": "-"}.get(setting, ":"), color="C0", label=setting)
        ax.set(title=model, xlabel="auto's mean weight", ylabel="mask mIoU vs oracle" if ax is axes[0][0] else "")
    axes[0][-1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False, fontsize="small")
    return fig


def headline(results: dict[str, dict], segmenter_ratios: dict[str, float | None], params: Params) -> pd.DataFrame:
    """Per model: the best map kind (chosen on ``selected_on`` images) and its mIoU on ``scored_on`` other images,
    the presence of the named objects, the synthetic/real segmenter ratio where one was measured, and the protocol."""
    rows = []
    n = params.study.family_images
    for m, r in results.items():
        best = next(row for row in r["rows"] if row["view"] == "map kind" and row["setting"] == r["best_kind"])
        rows.append({"model": Path(m).name, "family": r["family"], "best_map_kind": r["best_kind"],
                     "attention_miou": best["miou_held_out"], "selected_on": n // 2, "scored_on": n - n // 2,
                     "presence_rate": best["presence"], "segmenter_ratio": segmenter_ratios.get(m), "protocol": protocol(params)})
    return pd.DataFrame(rows)


def segmenter_result(path: str) -> Path:
    """Where ``dmutils bench segmenter --model PATH --json --out ...`` is kept: ``results/<PATH's name>/bench_segmenter.json``."""
    return RESULTS_DIR / Path(path).name / "bench_segmenter.json"


def measured_segmenter_ratio(params: Params, path: str) -> float | None:
    """The ``ratio`` in :func:`segmenter_result` (None when it was not measured); raises
    :class:`~dmutils.errors.DataError` when that JSON was made from other weights than the model's now."""
    f = segmenter_result(path)
    if not f.is_file():
        return None
    data = json.loads(f.read_text())
    rel = f.relative_to(RESULTS_DIR.parent).as_posix()
    require_same_weights(data, f, params.resolve_path(path), f"dmutils bench segmenter --model {path} --json --out {rel}")
    return data.get("ratio")


def example_grid(results: dict[str, dict]):
    """Per model, its examples (four images of the same prompts and seeds): each image with the outlines of the best
    kind's attention mask, the oracle's labels and that mask in the flat class palette; the model, the prompt and the
    image's mIoU against the oracle above each column, a legend of every class."""
    from dmutils import figures
    from dmutils.toy.probe import CLASS_NAMES, two_class_prompts

    images, targets, preds, titles = [], [], [], []
    for m, r in results.items():
        ex = r["examples"]
        prompts = [p for p, _ in two_class_prompts(len(ex["images"]))]  # bench toy-model's order: image k is prompt k, seed k
        for img, pred, target, prompt in zip(ex["images"], ex["preds"], ex["targets"], prompts):
            images.append(np.asarray(img, dtype=np.uint8))
            preds.append(np.asarray(pred))
            targets.append(np.asarray(target))
            iou = figures.image_iou(preds[-1], targets[-1], len(CLASS_NAMES) + 1)
            titles.append(figures.column_title(prompt, iou, head=f"{Path(m).name} ({r['best_kind']})"))
    return figures.segmentation_grid(images, [preds, targets], ["attention mask", "oracle"], titles, CLASS_NAMES,
                                     title="Attention masks per model family (best map kind)")


def examples_caption(results: dict[str, dict], params: Params) -> str:
    """The caption of :func:`example_grid`: n and the protocol (bench toy-model's: guidance, plain masks, threshold)."""
    from dmutils.toy.probe import PROTOCOL_GUIDANCE

    shown = {Path(m).name: len(r["examples"]["images"]) for m, r in results.items()}
    return (f"Per model ({', '.join(f'{k}: {v} images' for k, v in shown.items())}, the first of "
            f"{params.study.family_images} scored; the same prompts and seeds for every model): the image with the "
            f"outlines of its best map kind's attention mask, that mask and the oracle's labels (unnamed classes as "
            f"background) in the fixed class palette, the prompt and the image's mIoU against the oracle (background "
            f"included) above. Protocol: guidance {PROTOCOL_GUIDANCE:g}, {params.model.num_inference_steps} steps, plain "
            f"attention masks (no refinement, no DenseCRF), {params.masks.normalize} normalisation, fixed threshold "
            f"{params.masks.threshold:g}.")


def scores_figure(table: pd.DataFrame):
    """Mask mIoU against the oracle per map kind, depth and timestep window, one panel each, a bar per model."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    views = ["map kind", "depth", "timestep window"]
    fig, axes = plt.subplots(1, 3, figsize=(10.5, 3.2), gridspec_kw={"width_ratios": [2, 3, 1.5]}, sharey=True)
    for ax, view in zip(axes, views):
        part = table[table.view == view]
        sns.barplot(part, x="setting", y="miou", hue="model", ax=ax, legend=ax is axes[-1])
        ax.set(title=view, xlabel="", ylabel="mask mIoU vs oracle" if ax is axes[0] else "")
        ax.tick_params(axis="x", labelrotation=45, labelsize="x-small")
    sns.move_legend(axes[-1], "upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    return fig


# ---------------------------------------------------------------------------------------------
# Conclusions
# ---------------------------------------------------------------------------------------------
def conclusions(head: pd.DataFrame, table: pd.DataFrame, heads: pd.DataFrame | None = None) -> list[str]:
    """Study 06's findings, every number a cell of ``head`` (:func:`headline`), ``table`` (:func:`scores_table`) or
    ``heads`` (:func:`heads_table`): do each model's words localise (its best map kind, chosen on other images than
    those it is scored on), does the caption reach the image through the tokens, do the class words stay apart (the
    IoU of the first and second named class; the MMDiT with text-to-text attention cut), and what auto aggregation
    gives against the mean, the best head alone and the labels' choice of heads. The scores have no interval (a few
    images per score), so comparisons between them are indicative."""
    from dmutils.studies.wording import NEGLIGIBLE, missing, num

    out = []
    for r in head.itertuples():
        ratio = (f", a synthetic/real segmenter ratio of {num(r.segmenter_ratio)}" if not missing(r.segmenter_ratio)
                 else ", no segmenter ratio measured")
        miou = num(r.attention_miou) if not missing(r.attention_miou) else "no score"
        presence = f", the named objects present at a rate {num(r.presence_rate)}" if not missing(r.presence_rate) else ""
        out.append(f"{r.model} ({r.family}): best map kind {r.best_map_kind}, chosen on {r.selected_on} images, scores mask "
                   f"mIoU {miou} against the oracle on {r.scored_on} other images{presence}{ratio}.")
    if len(head) >= 2:
        out.append("These mIoUs come from a few images per score and have no interval: a gap between models is indicative, not a verdict.")
    for model, g in table.groupby("model", sort=False):
        route = g[g["view"] == "caption route"].set_index("setting")["presence"].dropna()
        if {"both", "pooled_only"} <= set(route.index):
            survives = route["pooled_only"] >= route["both"]
            out.append(f"{model}: with the caption in the pooled vector only, the named objects are present at a rate "
                       f"{num(route['pooled_only'])} against {num(route['both'])} with both routes"
                       + (f" and {num(route['tokens_only'])} with the tokens only" if "tokens_only" in route.index else "")
                       + (": the objects are as present without the tokens as with them, so its maps need not localise them." if survives else "."))
        words = g[g["view"] == "named word"]["miou"].dropna()
        if len(words) == 2:
            gap = abs(words.iloc[0] - words.iloc[1])
            out.append(f"{model}: the first class a prompt names scores IoU {num(words.iloc[0])}, the second "
                       f"{num(words.iloc[1])}" + (", alike: no sign that one word took in the other's meaning."
                                                  if gap < NEGLIGIBLE else " (indicative: no interval)."))
        best = head[head["model"] == model]
        kind = g[(g["view"] == "map kind") & g["setting"].isin(best["best_map_kind"])]["miou"].dropna()
        cut = g[(g["view"] == "text-to-text attention") & (g["setting"] == "cut")]["miou"].dropna()
        if len(cut) and len(kind):
            small = abs(cut.iloc[0] - kind.iloc[0]) < NEGLIGIBLE
            out.append(f"{model}: cutting text-to-text attention gives mask mIoU {num(cut.iloc[0])} against "
                       f"{num(kind.iloc[0])} uncut (best map kind, the same images), "
                       + ("within noise: the class words' maps do not depend on text-to-text attention here." if small else "without an interval: indicative."))
        out += _aggregation_conclusion(model, g, None if heads is None else heads[heads["model"] == model])
    return out


def _aggregation_conclusion(model: str, g: pd.DataFrame, heads: pd.DataFrame | None) -> list[str]:
    """One sentence: auto against the mean, the best single head and the label-chosen ceiling (when scored)."""
    from dmutils.studies.wording import num

    agg = g[g["view"] == "aggregation"].set_index("setting")["miou"].dropna()
    if not {"mean", "auto", CEILING} <= set(agg.index):
        return []
    alone = ""
    if heads is not None and not heads.empty:
        best = heads.loc[heads["miou"].idxmax()]
        alone = f"; its best head alone ({best['head']}, auto's mean weight {num(best['weight'])}) {num(best['miou'])}"
    return [f"{model}: auto aggregation gives mask mIoU {num(agg['auto'])} against {num(agg['mean'])} with the mean over "
            f"heads and layers{alone}; choosing per image, with the labels, the best of the auto mask and every single "
            f"head's gives {num(agg[CEILING])}, the most a choice of one head per image could give (indicative: no interval)."]

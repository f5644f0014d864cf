"""Study 01: what the cross-attention maps of a prompt show, and what aggregation and refinement do.

One generation gives everything the study (and the interactive explorer) looks at::

    gen = generate(pipe, params, prompts, seeds, head_resolution=16)
    gen.maps()                  # AttentionMaps of the whole run (params.capture.timestep_window)
    gen.maps((0.0, 0.25))       # ... of the first quarter of the steps, without generating again
    gen.head_maps(i, "circle")  # {layer: (heads, r, r)}: the word's map in each head

Timestep windows come from *cumulative snapshots* of the capture's running sums, taken after every
denoising step with the pipeline's ``callback_on_step_end``: the maps of steps [a, b) are
``(S_b - S_a) / (n_b - n_a)``, exactly what a capture with that window records (the test checks it).
Per-head maps come from forward pre-hooks on the cross-attention layers of one resolution that
recompute the layer's probabilities per head with :func:`dmutils.attention.attention_probs` (the
capture itself keeps heads reduced, as it must to stay small).

The study captures every cross-attention resolution the model has (:func:`model_cross_resolutions`), not only
the params' ``capture.cross_resolutions``; the aggregate of them follows ``masks.resolution_weights`` as
:meth:`AttentionMaps.aggregate` does (None = every captured resolution, equal weights; else only the listed ones).

The rest are pure functions of the maps: per-resolution / per-window / per-tau grids for
:func:`dmutils.figures.map_grid`, the self-attention affinity of a pixel, the spread of heads, and
how well each map localises the oracle's mask of its class: the ROC AUC of the map's values as a score for "pixel
in the mask" (:func:`auc`; 0.5 = an uninformative map, unchanged by adding a constant or scaling, so a near-uniform
floor such as A_self^tau adds does not count against a map) and, secondary, the share of its mass inside the mask.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from dmutils.attention import (
    AttentionMaps,
    CaptureSpec,
    attention_layers,
    attention_probs,
    capture,
)
from dmutils.attention.adapters import UNetAdapter, adapter_for
from dmutils.attention.adapters.unet import side_at_level
from dmutils.attention.processors import CaptureAttnProcessor
from dmutils.config import MaskParams, Params
from dmutils.masks.refine import (
    combine_resolutions,
    make_mask,
    normalize,
    self_attention_refine,
    upsample,
)

STOPWORDS = frozenset({"a", "an", "the", "and", "of", "with", "on", "in", "to", "next", "at", "by", "is", "are", ";"})


# ---------------------------------------------------------------------------------------------
# One generation, kept for every view
# ---------------------------------------------------------------------------------------------
class _HeadRecorder:
    """Per-head cross-attention of the layers whose maps are ``resolution`` x ``resolution``."""

    def __init__(self, rec, resolution: int) -> None:
        self.rec, self.queries = rec, resolution * resolution
        self.resolution = resolution
        self.layers = [layer for layer in attention_layers(rec.unet) if layer.kind == "cross" and layer.block in rec.spec.blocks]
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        self.hooks = [layer.module.register_forward_pre_hook(functools.partial(self._hook, layer.name), with_kwargs=True)
                      for layer in self.layers]

    def _hook(self, name, module, args, kwargs) -> None:
        state = self.rec.state
        hidden = args[0] if args else kwargs["hidden_states"]
        if not state.recording or hidden.ndim != 3 or hidden.shape[1] != self.queries:
            return
        context = args[1] if len(args) > 1 else kwargs.get("encoder_hidden_states")
        if module.norm_cross:
            context = module.norm_encoder_hidden_states(context)
        heads = CaptureAttnProcessor._heads
        with torch.no_grad():
            probs = attention_probs(heads(module, module.to_q(hidden[state.cond]), module.norm_q),
                                    heads(module, module.to_k(context[state.cond]), module.norm_k))
        self.sums[name] = probs if name not in self.sums else self.sums[name] + probs
        self.counts[name] = self.counts.get(name, 0) + 1

    def remove(self) -> dict[str, torch.Tensor]:
        """Detach the hooks; per layer (N, heads, tokens, r, r), averaged over the recorded steps."""
        for h in self.hooks:
            h.remove()
        r = self.resolution
        return {name: (s / self.counts[name]).transpose(-1, -2).reshape(*s.shape[:2], s.shape[-1], r, r).cpu()
                for name, s in self.sums.items()}


@dataclasses.dataclass
class Generation:
    """Images and attention of one batch of prompts; any timestep window can be read without generating again."""

    prompts: list[str]
    seeds: list[int]
    images: np.ndarray  # (N, H, W, 3) uint8
    num_steps: int
    window: tuple[float, float]  # the params' capture window: what maps() returns by default
    heads: dict[str, torch.Tensor]  # layer name -> (N, heads, tokens, r, r)
    _rec: object = dataclasses.field(repr=False)
    _cumulative: list[tuple[dict, dict]] = dataclasses.field(repr=False)  # after s steps, s = 0..T
    _cache: dict = dataclasses.field(default_factory=dict, repr=False)

    def steps(self, window: tuple[float, float]) -> list[int]:
        """Step indices of ``window`` (fractions of the run, 0 = first step), as CaptureSpec counts them."""
        return CaptureSpec(timestep_window=tuple(window)).steps(self.num_steps)

    def maps(self, window: tuple[float, float] | None = None) -> AttentionMaps:
        """The maps of the steps in ``window`` (default: the params' capture window)."""
        window = tuple(float(w) for w in (window or self.window))
        if window not in self._cache:
            steps = self.steps(window)
            if not steps:
                raise ValueError(f"timestep window {window} holds none of the {self.num_steps} steps; widen it")
            (s0, c0), (s1, c1) = self._cumulative[steps[0]], self._cumulative[steps[-1] + 1]
            sums = {k: v - s0[k] if k in s0 else v for k, v in s1.items()}
            counts = {k: v - c0.get(k, 0) for k, v in c1.items()}
            rec = copy.copy(self._rec)
            rec.state = dataclasses.replace(rec.state, sums=sums, counts=counts, steps_recorded=list(steps))
            self._cache[window] = rec.maps(self.prompts)
        return self._cache[window]

    def head_maps(self, i: int, word: str) -> dict[str, torch.Tensor]:
        """{layer: (heads, r, r)}: ``word``'s map in every head of the recorded layers (tokens averaged)."""
        if not self.heads:
            raise ValueError("no per-head maps were recorded: pass head_resolution= to generate()")
        pos = self.maps().token_positions(i, word)
        return {name: h[i][:, pos].mean(1) for name, h in self.heads.items()}

    @property
    def nbytes(self) -> int:
        """Bytes held by the snapshots (what makes windows free to read)."""
        return sum(t.numel() * t.element_size() for sums, _ in self._cumulative for t in sums.values())


def model_cross_resolutions(pipe, params: Params) -> list[int]:
    """Every cross-attention map side the denoiser has at the params' image size, largest first (study 01 captures
    them all). A UNet's follow from its levels in ``capture.blocks`` (16/8/4/2 for the toy UNet at 64 px); a
    transformer's maps all lie on one patch grid: the params' ``capture.cross_resolutions``."""
    spec = CaptureSpec.from_params(params.capture)
    adapter = adapter_for(pipe, spec)
    if not isinstance(adapter, UNetAdapter):
        return sorted(set(spec.cross_resolutions), reverse=True)
    scale = int(getattr(pipe, "vae_scale_factor", 8))
    sample = adapter.denoiser.config.sample_size
    sample = sample[0] if isinstance(sample, (list, tuple)) else sample
    latent = (params.model.height or int(sample) * scale) // scale
    return sorted({side_at_level(latent, layer.level) for layer in adapter.selected_layers() if layer.kind == "cross"}, reverse=True)


def head_resolution(pipe, params: Params) -> int | None:
    """The finest cross-attention resolution of a UNet, where :func:`generate` records per-head maps; None for a
    transformer (its heads are not recorded per head here)."""
    if not isinstance(adapter_for(pipe, CaptureSpec.from_params(params.capture)), UNetAdapter):
        return None
    return max(model_cross_resolutions(pipe, params))


def generate(pipe, params: Params, prompts: Sequence[str], seeds: Sequence[int], head_resolution: int | None = None,
             cross_resolutions: Sequence[int] | str | None = None) -> Generation:
    """Generate ``prompts[k]`` with ``seeds[k]`` (one batch) and keep what every view needs.

    Settings come from ``params.model`` and ``params.capture``; the capture records every step so
    that any window can be read later (:meth:`Generation.maps`). ``cross_resolutions``: the cross-attention
    resolutions captured, ``"all"`` for every one the model has (:func:`model_cross_resolutions`); None = the
    params' ``capture.cross_resolutions``. The aggregate (and so tau and the masks) stays the dataset's: with no
    ``masks.resolution_weights``, the resolutions captured beyond the params' weigh nothing in it."""
    prompts, seeds = list(prompts), [int(s) for s in seeds]
    if not prompts or len(prompts) != len(seeds):
        raise ValueError(f"give one seed per prompt: {len(prompts)} prompts, {len(seeds)} seeds")
    spec = dataclasses.replace(CaptureSpec.from_params(params.capture, params.masks.resolution_weights), timestep_window=(0.0, 1.0))
    if isinstance(cross_resolutions, str):
        if cross_resolutions != "all":
            raise ValueError(f"cross_resolutions must be 'all', a list of map sides or None, got {cross_resolutions!r}")
        cross_resolutions = model_cross_resolutions(pipe, params)
    if cross_resolutions is not None:
        extra = {int(r) for r in cross_resolutions}
        weights = spec.resolution_weights
        if weights is None and extra - set(spec.cross_resolutions):  # the aggregate stays the dataset's: the params' resolutions
            weights = {r: 1.0 for r in spec.cross_resolutions if r in extra} or None
        spec = dataclasses.replace(spec, cross_resolutions=tuple(sorted(extra, reverse=True)), resolution_weights=weights)
    m = params.model
    cumulative: list[tuple[dict, dict]] = [({}, {})]

    def snapshot(pipeline, step, timestep, kwargs):
        state = rec.state
        cumulative.append(({k: v.clone() for k, v in state.sums.items()}, dict(state.counts)))
        return {}

    if head_resolution and not isinstance(adapter_for(pipe, spec), UNetAdapter):
        raise ValueError("per-head maps are recorded for UNets only: pass head_resolution=None for this model "
                         "(study.head_resolution gives None for it)")
    with torch.no_grad(), capture(pipe, spec) as rec:
        heads = _HeadRecorder(rec, head_resolution) if head_resolution else None
        try:
            out = pipe(prompts, num_inference_steps=m.num_inference_steps, guidance_scale=m.guidance_scale, height=m.height,
                       width=m.width, output_type="np", generator=[torch.Generator("cpu").manual_seed(s) for s in seeds],
                       callback_on_step_end=snapshot)
        finally:
            head_maps = heads.remove() if heads else {}
    if head_resolution and not head_maps:
        raise ValueError(f"no cross-attention layer works at {head_resolution}x{head_resolution}; "
                         f"captured cross resolutions: {rec.maps(prompts).cross_resolutions}")
    images = (np.clip(np.asarray(out.images), 0, 1) * 255).round().astype(np.uint8)
    return Generation(prompts, seeds, images, rec.state.num_steps, tuple(params.capture.timestep_window), head_maps,
                      rec, cumulative)


# ---------------------------------------------------------------------------------------------
# Words and maps
# ---------------------------------------------------------------------------------------------
def content_words(maps: AttentionMaps, i: int) -> list[str]:
    """The prompt's words without articles and conjunctions, each once, in order."""
    return list(dict.fromkeys(w for w in maps.words(i) if w.lower() not in STOPWORDS))


def class_words(prompt: str, params: Params) -> dict[str, str]:
    """{class: the word of ``prompt`` that names it}, in the order of the prompt (name, synonym or sub-class)."""
    from dmutils.dataset.prompts import find_class_word

    found = [(prompt.lower().rfind(w.lower()), c.name, w) for c in params.classes for w in [find_class_word(prompt, c)] if w]
    return {name: word for _, name, word in sorted(found)}


def _reduce(maps: torch.Tensor, how: str) -> torch.Tensor:
    return maps.mean(0) if how == "mean" else maps.amax(0) if how == "max" else maps.sum(0)


def word_maps_by_resolution(maps: AttentionMaps, i: int, words: Sequence[str]) -> dict[int, torch.Tensor]:
    """{resolution: (len(words), r, r)}: each word's tokens reduced as the capture says (the input of make_mask)."""
    positions = [maps.token_positions(i, w) for w in words]
    return {r: torch.stack([_reduce(maps.cross(i, r)[p], maps.token_reduce) for p in positions]) for r in maps.cross_resolutions}


def aggregate_resolutions(maps: AttentionMaps, by_res: Mapping[int, torch.Tensor]) -> torch.Tensor:
    """(C, R, R): the maps of :func:`word_maps_by_resolution` averaged as :meth:`AttentionMaps.aggregate` does: with
    ``masks.resolution_weights`` over the resolutions they list (a resolution they leave out weighs nothing), else
    equally over every captured resolution (DiffuMask's average)."""
    return combine_resolutions(*_weighted(by_res, maps.resolution_weights))


def _weighted(by_res: Mapping[int, torch.Tensor], weights: Mapping[int, float] | None):
    """The resolutions the weights use and the weights (None: all of them, equal)."""
    if weights is None:
        return dict(by_res), None
    return {r: m for r, m in by_res.items() if r in weights}, {r: float(w) for r, w in weights.items() if r in by_res}


def resolution_grid(maps: AttentionMaps, i: int, words: Sequence[str], size: int) -> tuple[list[list[np.ndarray]], list[str]]:
    """Rows: words; columns: each captured resolution at its own size, then the aggregate at ``size``."""
    by_res = word_maps_by_resolution(maps, i, words)
    agg = upsample(aggregate_resolutions(maps, by_res), (size, size))
    rows = [[by_res[r][k].numpy() for r in maps.cross_resolutions] + [agg[k].numpy()] for k in range(len(words))]
    return rows, [f"{r}x{r}" for r in maps.cross_resolutions] + ["aggregated"]


def equal_windows(k: int) -> list[tuple[float, float]]:
    """``k`` disjoint windows covering the run: (0, 1/k), (1/k, 2/k), ..."""
    if k < 1:
        raise ValueError(f"the number of timestep windows must be >= 1, got {k}")
    return [(j / k, (j + 1) / k) for j in range(k)]


def window_label(window: tuple[float, float], num_steps: int) -> str:
    steps = CaptureSpec(timestep_window=tuple(window)).steps(num_steps)
    return f"steps {steps[0] + 1}-{steps[-1] + 1}" if steps else "no steps"


def window_grid(gen: Generation, i: int, words: Sequence[str], windows: Sequence[tuple[float, float]], size: int):
    """Rows: words; columns: the aggregated map of each timestep window (0 = the noisiest steps)."""
    rows = [[gen.maps(w).word_map(i, word, size).numpy() for w in windows] for word in words]
    return rows, [window_label(w, gen.num_steps) for w in windows]


def head_grid(gen: Generation, i: int, word: str) -> tuple[list[list[np.ndarray]], list[str], list[str]]:
    """Rows: layers of the head resolution; columns: heads, then their mean."""
    per_layer = gen.head_maps(i, word)
    n = max(h.shape[0] for h in per_layer.values())
    rows = [[h[k].numpy() for k in range(h.shape[0])] + [h.mean(0).numpy()] for h in per_layer.values()]
    return rows, [_short(name) for name in per_layer], [f"head {k}" for k in range(n)] + ["mean"]


def _short(layer: str) -> str:
    """'up_blocks.1.attentions.0.transformer_blocks.0.attn2' -> 'up1.0'."""
    p = layer.split(".")
    return f"{p[0].split('_')[0]}{p[1]}.{p[3]}" if p[0] != "mid_block" else f"mid.{p[2]}"


def head_spread(gen: Generation, i: int, word: str) -> pd.DataFrame:
    """Per layer and head: spatial entropy of the word's map (1 = uniform) and its correlation with the heads' mean."""
    rows = []
    for name, h in gen.head_maps(i, word).items():
        mean = h.mean(0).flatten()
        for k, m in enumerate(h):
            p = m.flatten().clamp_min(0)
            p = p / p.sum().clamp_min(1e-12)
            entropy = float(-(p * p.clamp_min(1e-12).log()).sum() / math.log(p.numel()))
            corr = float(torch.corrcoef(torch.stack([m.flatten(), mean]))[0, 1]) if m.std() > 0 and mean.std() > 0 else float("nan")
            rows.append({"prompt": gen.prompts[i], "seed": gen.seeds[i], "word": word, "layer": _short(name), "head": k,
                         "entropy": entropy, "corr_with_mean": corr})
    return pd.DataFrame(rows)


def pixel_affinity(maps: AttentionMaps, i: int, resolution: int, pixel: tuple[int, int]) -> np.ndarray:
    """(r, r): where pixel (y, x) of the ``resolution`` grid attends in self-attention (its row of A_self)."""
    a = maps.self_attention(i, resolution)
    y, x = pixel
    if not (0 <= y < resolution and 0 <= x < resolution):
        raise ValueError(f"pixel {pixel} is outside the {resolution}x{resolution} self-attention grid")
    return a[y * resolution + x].reshape(resolution, resolution).numpy()


def peak_pixels(word_map: np.ndarray | torch.Tensor) -> dict[str, tuple[int, int]]:
    """The strongest and the weakest pixel of a map: an object pixel and a background pixel to probe."""
    m = np.asarray(word_map)
    return {"object": tuple(int(v) for v in np.unravel_index(m.argmax(), m.shape)),
            "background": tuple(int(v) for v in np.unravel_index(m.argmin(), m.shape))}


def tau_scores(maps: AttentionMaps, i: int, words: Mapping[str, str], taus: Sequence[int], mask_params: MaskParams,
               image: np.ndarray, class_ids: Sequence[int]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """{tau: (labels (H, W), scores (C, H, W))} from :func:`make_mask` with refinement by A_self^tau."""
    cross, _ = _weighted(word_maps_by_resolution(maps, i, list(words.values())), mask_params.resolution_weights)
    self_attn = {r: maps.self_attention(i, r) for r in maps.self_resolutions}
    out = {}
    for tau in taus:
        mp = mask_params.model_copy(update={"tau": int(tau), "refine": "self_attention" if tau > 0 else "none"})
        out[int(tau)] = make_mask(cross, image, mp, class_ids, self_attn or None)
    return out


# ---------------------------------------------------------------------------------------------
# The table: how well each map picks out its object
# ---------------------------------------------------------------------------------------------
def auc(scores: torch.Tensor | np.ndarray, mask: np.ndarray) -> float:
    """ROC AUC of the map ``scores`` as a score for "the pixel is in ``mask``": the chance that a random pixel of the
    mask scores above a random pixel outside it, ties counted half (the Mann-Whitney rank formula with average ranks).
    1 = every mask pixel above every other, 0.5 = uninformative (a constant map), 0 = reversed; unchanged by adding a
    constant or scaling by a positive factor. NaN when the mask is empty or covers the image, or a score is NaN."""
    from scipy.stats import rankdata

    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(mask, dtype=bool).ravel()
    if s.shape != y.shape:
        raise ValueError(f"scores and mask differ in size: {np.shape(scores)} and {np.shape(mask)}")
    pos = int(y.sum())
    neg = y.size - pos
    if pos == 0 or neg == 0 or np.isnan(s).any():
        return float("nan")
    ranks = rankdata(s)  # average ranks: a tie between a mask pixel and another counts half
    return float((ranks[y].sum() - pos * (pos + 1) / 2) / (pos * neg))


def _mass_in(m: torch.Tensor, mask: np.ndarray) -> float:
    m = m.clamp_min(0)
    total = float(m.sum())
    return float((m * torch.from_numpy(mask)).sum()) / total if total > 0 else float("nan")


def attention_in_mask(gen: Generation, params: Params, oracle_labels: np.ndarray, windows: Sequence[tuple[float, float]] = (),
                      taus: Sequence[int] = ()) -> pd.DataFrame:
    """How well each class word's map picks out the oracle's mask of that class.

    One row per (sample, class, map): ``cross@r`` (each captured resolution), ``aggregated``
    (:func:`aggregate_resolutions`), each timestep window, and ``tau=k`` (A_self^k . A_cross of the aggregate).
    ``auc``: the ROC AUC of the map's values for "pixel in the mask" (:func:`auc`; 0.5 = uninformative);
    ``mass_in_mask``: the share of the map's mass inside the mask, and ``mask_fraction``, the mask's share of the
    image, what a uniform map would put there (this share is lowered by a near-uniform floor that leaves the AUC as
    it is)."""
    rows = []
    names = params.class_names
    for i, prompt in enumerate(gen.prompts):
        maps = gen.maps()
        words = class_words(prompt, params)
        if not words:
            continue
        size = tuple(gen.images[i].shape[:2])
        by_res = word_maps_by_resolution(maps, i, list(words.values()))
        agg = aggregate_resolutions(maps, by_res)
        variants = {f"cross@{r}": upsample(m, size) for r, m in by_res.items()}
        variants["aggregated"] = upsample(agg, size)
        for w in windows:
            variants[f"window {window_label(w, gen.num_steps)}"] = upsample(
                aggregate_resolutions(maps, word_maps_by_resolution(gen.maps(w), i, list(words.values()))), size)
        self_attn = {r: maps.self_attention(i, r) for r in maps.self_resolutions}
        for tau in taus:
            if self_attn:
                variants[f"tau={tau}"] = upsample(self_attention_refine(agg, self_attn, int(tau)), size)
        for k, (cls, word) in enumerate(words.items()):
            mask = oracle_labels[i] == names.index(cls) + 1
            for name, m in variants.items():
                rows.append({"prompt": prompt, "seed": gen.seeds[i], "class": cls, "word": word, "map": name,
                             "auc": auc(m[k], mask), "mass_in_mask": _mass_in(m[k], mask), "mask_fraction": float(mask.mean())})
    return pd.DataFrame(rows, columns=["prompt", "seed", "class", "word", "map", "auc", "mass_in_mask", "mask_fraction"])


def normalized(m: torch.Tensor | np.ndarray) -> np.ndarray:
    """A map scaled to [0, 1] (for display next to masks)."""
    t = torch.as_tensor(np.asarray(m), dtype=torch.float32)
    return normalize(t[None])[0].numpy()


# ---------------------------------------------------------------------------------------------
# Conclusions
# ---------------------------------------------------------------------------------------------
CHANCE = 0.5  # the AUC of an uninformative map (a constant or uniform one)
KEYS = ["prompt", "seed", "class"]  # one (sample, class) row of attention_in_mask


def _boot_mean(x: np.ndarray, n_boot: int, rng: np.random.Generator) -> tuple[float, float]:
    """95% percentile interval of the mean of ``x`` over its rows resampled with replacement (NaN under 2 rows)."""
    from dmutils import stats

    if len(x) < 2:  # one row has no spread to resample: no interval, so no verdict
        return float("nan"), float("nan")
    boot = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(axis=1)
    lo, hi = np.quantile(boot, [(1 - stats.LEVEL) / 2, (1 + stats.LEVEL) / 2])
    return float(lo), float(hi)


def against_uniform(table: pd.DataFrame, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Per map of :func:`attention_in_mask`: its mean AUC over the ``n`` (sample, class) rows that have one and the
    95% percentile interval of that mean over the rows resampled (``auc_lo``, ``auc_hi``), against ``chance`` = 0.5,
    the AUC of an uninformative (uniform) map: an interval that holds 0.5 is a map that localises no better than
    uniform. Secondary: the mean share of the map's mass inside the mask (``mass_in_mask``) and what a uniform map
    puts there (``uniform``, the mean mask fraction)."""
    rows = []
    rng = np.random.default_rng(seed)
    for name, g in table.groupby("map", sort=False):
        g = g.dropna(subset=["auc"])
        x = g["auc"].to_numpy(np.float64)
        lo, hi = _boot_mean(x, n_boot, rng)
        rows.append({"map": name, "n": len(x), "auc": float(x.mean()) if len(x) else float("nan"), "auc_lo": lo, "auc_hi": hi,
                     "chance": CHANCE, "mass_in_mask": float(g["mass_in_mask"].mean()) if len(x) else float("nan"),
                     "uniform": float(g["mask_fraction"].mean()) if len(x) else float("nan")})
    return pd.DataFrame(rows, columns=["map", "n", "auc", "auc_lo", "auc_hi", "chance", "mass_in_mask", "uniform"])


def tau_vs_zero(table: pd.DataFrame, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Each ``tau=k`` (k > 0) of :func:`attention_in_mask` against ``tau=0`` on the same (sample, class) rows: the mean
    paired difference of AUC ``diff`` (tau=k minus tau=0) and its 95% percentile interval over the ``n`` rows that
    have both resampled (``diff_lo``, ``diff_hi``); ``auc`` and ``auc_tau0`` are the two means over those rows. An
    interval that holds 0 is a refinement within noise."""
    cols = ["map", "reference", "n", "auc", "auc_tau0", "diff", "diff_lo", "diff_hi"]
    taus = [m for m in table["map"].unique() if str(m).startswith("tau=")]
    if "tau=0" not in taus:
        return pd.DataFrame(columns=cols)
    wide = table[table["map"].isin(taus)].pivot_table(index=KEYS, columns="map", values="auc", aggfunc="first", dropna=False)
    rows = []
    rng = np.random.default_rng(seed)
    for m in sorted((t for t in taus if t != "tau=0"), key=lambda t: float(t.split("=")[1])):
        pair = wide[[m, "tau=0"]].dropna().to_numpy(np.float64)
        d = pair[:, 0] - pair[:, 1]
        lo, hi = _boot_mean(d, n_boot, rng)
        nan = float("nan")
        rows.append({"map": m, "reference": "tau=0", "n": len(d), "auc": float(pair[:, 0].mean()) if len(d) else nan,
                     "auc_tau0": float(pair[:, 1].mean()) if len(d) else nan, "diff": float(d.mean()) if len(d) else nan,
                     "diff_lo": lo, "diff_hi": hi})
    return pd.DataFrame(rows, columns=cols)


def auc_figure(vs_uniform: pd.DataFrame):
    """The figure of :func:`against_uniform`: each map's mean AUC with its 95% interval, a dashed line at 0.5 (an
    uninformative map); returns (figure, caption), the caption stating n."""
    from dmutils import figures

    t = vs_uniform.dropna(subset=["auc"])
    fig = figures.bar_with_ci(t, "map", "auc", "auc_lo", "auc_hi", title="How well each map picks out its object",
                              xlabel="map", ylabel="AUC (pixel in the mask)", size="wide")
    ax = fig.axes[0]
    ax.axhline(CHANCE, color="grey", linestyle="--", label="uninformative map")
    ax.set_ylim(0, 1)
    for label in ax.get_xticklabels():
        label.set(rotation=40, ha="right", rotation_mode="anchor")
    ax.legend(frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    lo, hi = (int(t["n"].min()), int(t["n"].max())) if len(t) else (0, 0)
    n = f"n = {lo}" if lo == hi else f"n = {lo} to {hi}"
    caption = (f"Mean ROC AUC of each map as a score for the oracle's mask of its class, with 95% bootstrap intervals over "
               f"the (sample, class) pairs ({n}); dashed: {CHANCE:g}, an uninformative map.")
    return fig, caption


def conclusions(vs_uniform: pd.DataFrame, heads: pd.DataFrame | None = None, tau_pairs: pd.DataFrame | None = None) -> list[str]:
    """Study 01's findings, every number a cell of ``vs_uniform`` (:func:`against_uniform`), ``tau_pairs``
    (:func:`tau_vs_zero`) or ``heads`` (:func:`head_spread`): how well the aggregated map and each resolution's
    localise the object (AUC against 0.5), what τ does to it against τ = 0 on the same rows, the timestep windows, and
    how much the heads agree."""
    from dmutils.studies.wording import NEGLIGIBLE, interval, missing, num, signed, verdict

    t = vs_uniform.dropna(subset=["auc"]).set_index("map")
    out = []

    def score(m: str) -> str:
        r = t.loc[m]
        return f"AUC {num(r['auc'])} {interval(r['auc_lo'], r['auc_hi'], sign=False)}"

    def call(m: str) -> str:
        r = t.loc[m]
        return verdict(r["auc_lo"] - r["chance"], r["auc_hi"] - r["chance"], "above chance", "below chance",
                       r["auc"] - r["chance"], NEGLIGIBLE)

    if "aggregated" in t.index:
        r = t.loc["aggregated"]
        res = [m for m in t.index if m.startswith("cross@")]
        per_res = ("; per resolution: " + ", ".join(f"{m} {score(m)} ({call(m)})" for m in res)) if len(res) > 1 else ""
        out.append(f"As a score for the oracle's mask of its class, the aggregated cross-attention of a class word has "
                   f"{score('aggregated')}, {call('aggregated')} (n = {int(r['n'])} sample-class pairs; {num(r['chance'], 1)} "
                   f"is an uninformative map){per_res}. Its share of mass inside the mask is {num(r['mass_in_mask'])}, where a "
                   f"uniform map puts {num(r['uniform'])}.")
    pairs = tau_pairs.dropna(subset=["diff"]) if tau_pairs is not None else None
    if pairs is not None and len(pairs):
        seq = "; ".join(f"{p.map} {signed(p.diff)} {interval(p.diff_lo, p.diff_hi)}, "
                        f"{verdict(p.diff_lo, p.diff_hi, 'better', 'worse', p.diff, NEGLIGIBLE)}" for p in pairs.itertuples())
        last = pairs.iloc[-1]
        s = (f"Self-attention refinement (A_self^tau · A_cross) against tau=0, AUC difference paired over the same "
             f"n = {int(last['n'])} sample-class pairs: {seq}; AUC {num(last['auc_tau0'])} at tau=0 and {num(last['auc'])} "
             f"at {last['map']}")
        calls = {verdict(p.diff_lo, p.diff_hi, "better", "worse", p.diff, NEGLIGIBLE) for p in pairs.itertuples()}
        if calls == {"better"}:
            s += ". On this run every tau ranks the object's pixels above the rest better than the cross-attention alone"
        elif calls == {"worse"}:
            s += ". On this run every tau ranks the object's pixels above the rest worse than the cross-attention alone"
        out.append(s + ".")
    windows = [m for m in t.index if m.startswith("window ")]
    if len(windows) >= 2:
        best = max(windows, key=lambda m: t.loc[m, "auc"])
        w = [windows[0], windows[-1]] + ([best] if best not in (windows[0], windows[-1]) else [])
        out.append("Over the denoising steps, the aggregated map of " + "; of ".join(
            f"{m.removeprefix('window ')} has {score(m)}, {call(m)}" for m in w)
            + (f"; the highest AUC is in {best.removeprefix('window ')}" if best not in (windows[0], windows[-1]) else "")
            + f" (n = {int(t.loc[windows[0], 'n'])} sample-class pairs).")
    if heads is not None and len(heads.dropna(subset=["corr_with_mean"])):
        h = heads.dropna(subset=["corr_with_mean"])
        lo, hi = h["corr_with_mean"].min(), h["corr_with_mean"].max()
        e = h["entropy"].dropna()
        ent = f", and their normalised spatial entropy from {num(e.min())} to {num(e.max())}" if len(e) and not missing(e.min()) else ""
        word = "differ" if lo < 0.5 else "largely agree"
        out.append(f"The heads {word}: a head's map correlates with the heads' mean from {num(lo)} to {num(hi)}{ent}; "
                   "the capture records their mean.")
    return out

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

The rest are pure functions of the maps: per-resolution / per-window / per-tau grids for
:func:`dmutils.figures.map_grid`, the self-attention affinity of a pixel, the spread of heads, and
how much of each map's mass falls inside the oracle's mask of its class.
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


def generate(pipe, params: Params, prompts: Sequence[str], seeds: Sequence[int], head_resolution: int | None = None) -> Generation:
    """Generate ``prompts[k]`` with ``seeds[k]`` (one batch) and keep what every view needs.

    Settings come from ``params.model`` and ``params.capture``; the capture records every step so
    that any window can be read later (:meth:`Generation.maps`)."""
    prompts, seeds = list(prompts), [int(s) for s in seeds]
    if not prompts or len(prompts) != len(seeds):
        raise ValueError(f"give one seed per prompt: {len(prompts)} prompts, {len(seeds)} seeds")
    spec = dataclasses.replace(CaptureSpec.from_params(params.capture, params.masks.resolution_weights), timestep_window=(0.0, 1.0))
    m = params.model
    cumulative: list[tuple[dict, dict]] = [({}, {})]

    def snapshot(pipeline, step, timestep, kwargs):
        state = rec.state
        cumulative.append(({k: v.clone() for k, v in state.sums.items()}, dict(state.counts)))
        return {}

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


def resolution_grid(maps: AttentionMaps, i: int, words: Sequence[str], size: int) -> tuple[list[list[np.ndarray]], list[str]]:
    """Rows: words; columns: each captured resolution at its own size, then the aggregate at ``size``."""
    by_res = word_maps_by_resolution(maps, i, words)
    weights = maps.resolution_weights
    agg = combine_resolutions({r: m for r, m in by_res.items()}, weights)
    agg = upsample(agg, (size, size))
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
    cross = word_maps_by_resolution(maps, i, list(words.values()))
    self_attn = {r: maps.self_attention(i, r) for r in maps.self_resolutions}
    out = {}
    for tau in taus:
        mp = mask_params.model_copy(update={"tau": int(tau), "refine": "self_attention" if tau > 0 else "none"})
        out[int(tau)] = make_mask(cross, image, mp, class_ids, self_attn or None)
    return out


# ---------------------------------------------------------------------------------------------
# The table: how much of each map lies on its object
# ---------------------------------------------------------------------------------------------
def _mass_in(m: torch.Tensor, mask: np.ndarray) -> float:
    m = m.clamp_min(0)
    total = float(m.sum())
    return float((m * torch.from_numpy(mask)).sum()) / total if total > 0 else float("nan")


def attention_in_mask(gen: Generation, params: Params, oracle_labels: np.ndarray, windows: Sequence[tuple[float, float]] = (),
                      taus: Sequence[int] = ()) -> pd.DataFrame:
    """Fraction of each class word's attention mass inside the oracle's mask of that class.

    One row per (sample, class, map): ``cross@r`` (one resolution), ``aggregated``, each timestep
    window, and ``tau=k`` (A_self^k . A_cross). ``mask_fraction`` is the mask's share of the image:
    what a uniform map would score."""
    rows = []
    names = params.class_names
    for i, prompt in enumerate(gen.prompts):
        maps = gen.maps()
        words = class_words(prompt, params)
        if not words:
            continue
        size = tuple(gen.images[i].shape[:2])
        by_res = word_maps_by_resolution(maps, i, list(words.values()))
        agg = combine_resolutions(by_res, maps.resolution_weights)
        variants = {f"cross@{r}": upsample(m, size) for r, m in by_res.items()}
        variants["aggregated"] = upsample(agg, size)
        for w in windows:
            variants[f"window {window_label(w, gen.num_steps)}"] = upsample(
                combine_resolutions(word_maps_by_resolution(gen.maps(w), i, list(words.values())), maps.resolution_weights), size)
        self_attn = {r: maps.self_attention(i, r) for r in maps.self_resolutions}
        for tau in taus:
            if self_attn:
                variants[f"tau={tau}"] = upsample(self_attention_refine(agg, self_attn, int(tau)), size)
        for k, (cls, word) in enumerate(words.items()):
            mask = oracle_labels[i] == names.index(cls) + 1
            for name, m in variants.items():
                rows.append({"prompt": prompt, "seed": gen.seeds[i], "class": cls, "word": word, "map": name,
                             "mass_in_mask": _mass_in(m[k], mask), "mask_fraction": float(mask.mean())})
    return pd.DataFrame(rows)


def normalized(m: torch.Tensor | np.ndarray) -> np.ndarray:
    """A map scaled to [0, 1] (for display next to masks)."""
    t = torch.as_tensor(np.asarray(m), dtype=torch.float32)
    return normalize(t[None])[0].numpy()


# ---------------------------------------------------------------------------------------------
# Conclusions
# ---------------------------------------------------------------------------------------------
def against_uniform(table: pd.DataFrame, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Per map of :func:`attention_in_mask`: the mean mass in the mask, what a uniform map puts there (the mean mask
    fraction), their difference ``excess`` and its 95% percentile interval over the (sample, class) rows resampled
    (``excess_lo``, ``excess_hi``); ``n`` rows. An interval that holds 0 is a map no better localised than uniform."""
    from dmutils import stats

    rows = []
    rng = np.random.default_rng(seed)
    for name, g in table.groupby("map", sort=False):
        g = g.dropna(subset=["mass_in_mask", "mask_fraction"])
        x = (g["mass_in_mask"] - g["mask_fraction"]).to_numpy(np.float64)
        lo = hi = float("nan")
        if len(x):
            boot = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(axis=1)
            lo, hi = (float(v) for v in np.quantile(boot, [(1 - stats.LEVEL) / 2, (1 + stats.LEVEL) / 2]))
        rows.append({"map": name, "mass_in_mask": float(g["mass_in_mask"].mean()) if len(x) else float("nan"),
                     "uniform": float(g["mask_fraction"].mean()) if len(x) else float("nan"),
                     "excess": float(x.mean()) if len(x) else float("nan"), "excess_lo": lo, "excess_hi": hi, "n": len(x)})
    return pd.DataFrame(rows, columns=["map", "mass_in_mask", "uniform", "excess", "excess_lo", "excess_hi", "n"])


def conclusions(vs_uniform: pd.DataFrame, heads: pd.DataFrame | None = None) -> list[str]:
    """Study 01's findings, every number a cell of ``vs_uniform`` (:func:`against_uniform`) or ``heads``
    (:func:`head_spread`): how far the aggregated map sits above a uniform one, what τ does to it, the timestep
    windows, and how much the heads agree."""
    from dmutils.studies.wording import NEGLIGIBLE, interval, missing, num, signed, verdict

    t = vs_uniform.dropna(subset=["mass_in_mask"]).set_index("map")
    out = []

    def against(m: str) -> str:
        r = t.loc[m]
        return (f"{signed(r.excess)} over uniform, interval {interval(r.excess_lo, r.excess_hi)}, "
                f"{verdict(r.excess_lo, r.excess_hi, 'above uniform', 'below uniform', r.excess, NEGLIGIBLE)}")

    if "aggregated" in t.index:
        r = t.loc["aggregated"]
        res = [m for m in t.index if m.startswith("cross@")]
        per_res = "; per resolution: " + ", ".join(f"{m} {num(t.loc[m, 'mass_in_mask'])}" for m in res) if len(res) > 1 else ""
        out.append(f"The aggregated cross-attention puts {num(r.mass_in_mask)} of a class word's mass inside the oracle's mask, "
                   f"where a uniform map puts {num(r.uniform)}: {against('aggregated')}{per_res}.")
    taus = sorted((m for m in t.index if m.startswith("tau=")), key=lambda m: float(m.split("=")[1]))
    if len(taus) >= 2:
        first, last = t.loc[taus[0]], t.loc[taus[-1]]
        falls = last.mass_in_mask < first.mass_in_mask
        towards = abs(last.excess) < abs(first.excess)
        seq = ", ".join(f"{num(t.loc[m, 'mass_in_mask'])} at {m}" for m in taus)
        # a move is called only when the two ends' intervals against uniform do not overlap and it is not negligible
        moved = (abs(last.mass_in_mask - first.mass_in_mask) >= NEGLIGIBLE
                 and (last.excess_hi < first.excess_lo or last.excess_lo > first.excess_hi))
        how = (f"moves the mass in the mask {'down' if falls else 'up'}, {'towards' if towards else 'away from'} the uniform level"
               if moved else "leaves the mass in the mask where it was, within noise")
        s = f"Self-attention refinement (A_self^tau · A_cross) {how}: {seq}; at {taus[-1]} it is {against(taus[-1])}"
        if moved and falls and towards:
            s += ". On this run the refinement spreads each class map over the image rather than concentrating it on the object"
        elif moved and not falls and not towards:
            s += ". On this run the refinement concentrates each class map on the object"
        out.append(s + ".")
    windows = [m for m in t.index if m.startswith("window ")]
    if len(windows) >= 2:
        best = max(windows, key=lambda m: t.loc[m, "mass_in_mask"])
        w = [windows[0], windows[-1]] + ([best] if best not in (windows[0], windows[-1]) else [])
        out.append("Over the denoising steps: " + "; ".join(
            f"{m.removeprefix('window ')} put {num(t.loc[m, 'mass_in_mask'])} inside ({against(m)})" for m in w)
            + (f"; the most is in {best.removeprefix('window ')}" if best not in (windows[0], windows[-1]) else "") + ".")
    if heads is not None and len(heads.dropna(subset=["corr_with_mean"])):
        h = heads.dropna(subset=["corr_with_mean"])
        lo, hi = h["corr_with_mean"].min(), h["corr_with_mean"].max()
        e = h["entropy"].dropna()
        ent = f", and their normalised spatial entropy from {num(e.min())} to {num(e.max())}" if len(e) and not missing(e.min()) else ""
        word = "differ" if lo < 0.5 else "largely agree"
        out.append(f"The heads {word}: a head's map correlates with the heads' mean from {num(lo)} to {num(hi)}{ent}; "
                   "the capture records their mean.")
    return out

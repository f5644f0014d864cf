"""``capture.aggregate: auto``: cross maps weighted per layer and per head, from the maps alone (no labels).

The mean over heads and layers lets layers that do not localise blur those that do (on the toy MMDiT only
block 0 localises), and lets a head that sends most of its attention to the start token count for little.
Auto aggregation, per sample and per resolution, from the maps of the words looked up (``focus``):

- a layer's weight is a softmax (temperature :data:`TEMPERATURE`) of its spatial concentration, one minus
  the normalised spatial entropy of its heads' mean map (study 01's ``head_spread``): a layer whose map
  of the words is spread over the whole image says little about where they are;
- a head is rescaled by the inverse of its mass on the words (GoCA's per-pixel rescaling, per head), so that
  heads count by the shape of their maps, not by how much attention they give to the words, but only when
  its rows are distributions over the text keys (UNet, ``text_softmax``): there every head has the same budget.
  A joint-attention slice (``joint_slice``) is not a distribution over the text; its mass on the words is what
  the layer reads from them, and it is kept.

The weights are the effective linear coefficients of each (layer, head) map, summing to 1; a pure function of
the maps, so deterministic. Measured on the toy models: docs/capture.md ("Auto aggregation").
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

TEMPERATURE = 0.1  # of the softmax over layers' concentrations (0.05-0.2 measured alike on both toy models)
STOCHASTIC_TOL = 1e-3  # rows that sum to 1 within this are distributions over the text keys


def concentration(maps: torch.Tensor) -> torch.Tensor:
    """(..., queries) non-negative maps -> (...): 1 - spatial entropy / log(queries); 0 = uniform, 1 = one pixel."""
    p = maps.clamp_min(0)
    p = p / p.sum(-1, keepdim=True).clamp_min(1e-12)
    entropy = -(p * p.clamp_min(1e-12).log()).sum(-1)
    return 1 - entropy / math.log(max(maps.shape[-1], 2))


def _stochastic(heads: torch.Tensor) -> bool:
    """Whether every row (a pixel's attention over the keys) sums to 1: the heads share one budget."""
    return bool(((heads.sum(-1) - 1).abs() < STOCHASTIC_TOL).all())


def auto_weights(layers: Mapping[str, torch.Tensor], focus: Sequence[int]) -> dict[str, torch.Tensor]:
    """Per layer, (heads,) weights of its heads' maps ``(heads, queries, keys)``, all summing to 1, chosen from
    the maps of the keys ``focus`` (the words looked up; their maps are averaged)."""
    focus = list(focus)
    words = {name: h[..., focus].mean(-1) for name, h in layers.items()}  # (heads, queries)
    conc = torch.stack([concentration(w.mean(0)) for w in words.values()])
    layer_w = torch.softmax(conc.double() / TEMPERATURE, 0)
    out = {}
    for (name, h), lw in zip(layers.items(), layer_w):
        scale = 1 / words[name].double().mean(-1).clamp_min(1e-12) if _stochastic(h) else torch.ones(h.shape[0], dtype=torch.float64)
        out[name] = lw * scale
    total = sum(w.sum() for w in out.values())
    return {name: (w / total).float() for name, w in out.items()}


def combine(layers: Mapping[str, torch.Tensor], weights: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """(queries, keys): the maps of every layer and head, weighted."""
    return sum((h * weights[name][:, None, None]).sum(0) for name, h in layers.items())

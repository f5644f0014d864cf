"""``capture.aggregate: auto``: cross maps combined per layer and per head from the maps alone (no labels).

The mean over heads and layers lets layers that do not localise blur those that do (on the toy MMDiT only
block 0 localises), and lets a head that sends most of its attention to the start token count for little.
Auto aggregation, per sample and per resolution, from the maps of the words looked up (``focus``):

- a layer's weight is a softmax (temperature :data:`TEMPERATURE`) of its spatial concentration, one minus
  the normalised spatial entropy of its heads' mean map (study 01's ``head_spread``): a layer whose map
  of the words is spread over the whole image says little about where they are; its heads share it equally;
- where a head's rows are distributions over the text keys (UNet cross-attention, ``text_softmax``), every head
  has the same budget, and how much of it a head gives the words says little about where they are: each head's map
  of each key is scaled to unit mass over the image, and the heads are combined by a weighted power mean with
  exponent :data:`POWER` (below 1, so a pixel counts where many heads put some mass rather than where one head puts
  a lot). A joint-attention slice (``joint_slice``) is not a distribution over the text; its mass on the words is
  what the layer reads from them, and it is combined linearly, mass kept. Both rules were chosen on the bench's
  images and checked on other seeds (docs/capture.md, "Auto aggregation").

The weights (one per layer and head, summing to 1) are recorded in the manifest; everything is a pure function of
the maps, so deterministic.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

TEMPERATURE = 0.1  # of the softmax over layers' concentrations (0.05-0.2 measured alike on both toy models)
POWER = 0.5  # of the mean over heads whose rows are distributions over the text keys
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
    """Per layer, (heads,) weights of its heads' maps ``(heads, queries, keys)``, all summing to 1: the softmax of the
    layers' concentration on the keys ``focus`` (the words looked up; their maps are averaged), equal over a layer's
    heads."""
    focus = list(focus)
    words = {name: h[..., focus].mean(-1) for name, h in layers.items()}  # (heads, queries)
    conc = torch.stack([concentration(w.mean(0)) for w in words.values()])
    layer_w = torch.softmax(conc.double() / TEMPERATURE, 0)
    out = {name: lw.expand(h.shape[0]) / h.shape[0] for (name, h), lw in zip(layers.items(), layer_w)}
    total = sum(w.sum() for w in out.values())
    return {name: (w / total).float() for name, w in out.items()}


def combine(layers: Mapping[str, torch.Tensor], weights: Mapping[str, torch.Tensor], power: float = 1.0) -> torch.Tensor:
    """(queries, keys): the maps of every layer and head, weighted; with ``power`` != 1, each head's map of each key
    at unit mass over the queries and combined by the weighted power mean (sum_h w_h x_h^power)^(1/power)."""
    if power == 1.0:
        return sum((h * weights[name][:, None, None]).sum(0) for name, h in layers.items())
    total = sum((weights[name].double()[:, None, None]
                 * (h.double().clamp_min(0) / h.double().clamp_min(0).sum(-2, keepdim=True).clamp_min(1e-12)) ** power).sum(0)
                for name, h in layers.items())
    return (total ** (1 / power)).float()


def aggregate(layers: Mapping[str, torch.Tensor], focus: Sequence[int]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(queries, keys) auto-aggregated map and the weights: the power mean where every layer's rows are distributions
    over the text keys, the linear combination otherwise (see the module docstring)."""
    weights = auto_weights(layers, focus)
    power = POWER if all(_stochastic(h) for h in layers.values()) else 1.0
    return combine(layers, weights, power), weights

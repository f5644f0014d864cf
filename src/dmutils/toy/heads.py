"""What ``capture.aggregate: auto`` chose, and what each of its choices gives, on the toy protocol's images.

With auto aggregation the capture keeps every layer's maps per head. For each image :class:`HeadChoices` records
the weight auto gave each head (:meth:`AttentionMaps.head_weights`, for the image's class words) and the mask each
head's map makes alone (made as the aggregated mask is). Over the images it reports,
per head, the mean weight and the mask mIoU of that head alone, and ``ceiling``: the mIoU when the labels choose,
image by image, the best of the aggregated mask and every single head's (best by that image's own mIoU). It is what an
oracle choice of one head per image gives: a label-free choice can hardly do better (not a strict bound: the pick is
per image, the mIoU over the images). A weighting of several heads can, where mixing maps beats every map mixed.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from dmutils.oracles import toy_unet as oracle_mod

MaskOf = Callable[[torch.Tensor, tuple[str, ...]], np.ndarray]  # (C, S, S) class maps, the classes -> (S, S) labels


def _label(resolution: int, layer: str, head: int, several: bool) -> str:
    """``"<layer>[<head>]"``, the resolution prefixed (``"16:"``) where several were captured."""
    return f"{resolution}:{layer}[{head}]" if several else f"{layer}[{head}]"


def single_head_maps(maps, i: int, classes: tuple[str, ...], size: int) -> dict[str, torch.Tensor]:
    """``{label: (C, size, size)}`` (:func:`_label`): sample ``i``'s class maps from each captured head alone, tokens
    reduced and upsampled as :meth:`AttentionMaps.class_maps` does."""
    positions = [maps.token_positions(i, c) for c in classes]
    several = len(maps.heads) > 1
    out = {}
    for res, layers in sorted(maps.heads.items(), reverse=True):
        grid = maps.grid(res)
        for name, heads in layers.items():
            for j, head in enumerate(heads[i]):  # (queries, keys)
                words = torch.stack([maps.reduce_tokens(head.T[pos]) for pos in positions]).reshape(len(classes), *grid)
                out[_label(res, name, j, several)] = F.interpolate(words[None], size=(size, size), mode="bilinear",
                                                                   align_corners=False)[0]
    return out


def head_labels(weights: dict[int, dict[str, list[float]]]) -> dict[str, float]:
    """:meth:`AttentionMaps.head_weights` flattened with :func:`single_head_maps`' labels."""
    several = len(weights) > 1
    return {_label(res, name, j, several): w
            for res, layers in sorted(weights.items(), reverse=True) for name, ws in layers.items() for j, w in enumerate(ws)}


class HeadChoices:
    """Accumulates, image by image, auto's weights and the single heads' masks (see the module docstring);
    ``mask_of`` makes a mask from class maps as the aggregated mask was made (:func:`dmutils.toy.probe.class_masks`)."""

    def __init__(self, mask_of: MaskOf) -> None:
        self.mask_of = mask_of
        self.weights: dict[str, list[float]] = defaultdict(list)
        self.preds: dict[str, list[np.ndarray]] = defaultdict(list)
        self.chosen: list[np.ndarray] = []

    def add(self, maps, i: int, classes: tuple[str, ...], size: int, aggregated: np.ndarray, truth: np.ndarray) -> None:
        """Sample ``i`` of ``maps``: its aggregated mask ``aggregated`` and the labels ``truth`` (for the ceiling only)."""
        positions = [k for c in classes for k in maps.token_positions(i, c)]
        for label, w in head_labels(maps.head_weights(i, positions)).items():
            self.weights[label].append(w)
        candidates = [aggregated]
        for label, m in single_head_maps(maps, i, classes, size).items():
            pred = self.mask_of(m, classes)
            self.preds[label].append(pred)
            candidates.append(pred)
        self.chosen.append(max(candidates, key=lambda pred: oracle_mod.miou(pred[None], truth[None])))

    def summary(self, targets: np.ndarray) -> dict:
        """``by_head``: {label: {"weight": mean weight, "miou": the head alone}}; ``ceiling``: see the module."""
        return {"by_head": {label: {"weight": round(float(np.mean(self.weights[label])), 4),
                                    "miou": round(oracle_mod.miou(np.stack(preds), targets), 4)}
                            for label, preds in self.preds.items()},
                "ceiling": round(oracle_mod.miou(np.stack(self.chosen), targets), 4)}

"""The capture state: running sums of attention probabilities, flat in the number of steps.

One float32 buffer per (kind, resolution) on the model's device, summed over layers and steps;
``counts`` says how many (layer, step) maps each holds. Nothing is kept per step.

With ``aggregate == "auto"`` the cross maps are also kept per layer and per head (summed over steps only) in
``heads``: the weights of :mod:`dmutils.attention.aggregate` are chosen from them after generation. With the
default ``"mean"`` nothing more is kept, so the default path costs what it did.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

# Float32 scores a recorder computes at once: a chunk of heads. Small enough that one head's scores at a 32x32 grid
# stay in the CPU's cache while they are exponentiated, normalised and added (one head at a time at 1024 x 1357 keys
# measured faster than all 24 at once: SD3.5-medium's self maps, one thread, bf16); small maps go many heads at once.
SCORE_CHUNK_BYTES = 4 * 2**20


@dataclass
class CaptureState:
    head_reduce: str = "mean"
    aggregate: str = "mean"
    sums: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)
    counts: dict[tuple[str, int], int] = field(default_factory=dict)
    shapes: dict[tuple[str, int], tuple[int, int]] = field(default_factory=dict)  # (h, w) of each map
    recording: bool = False  # the current UNet call is a step inside the window
    cond: slice = field(default_factory=lambda: slice(None))  # rows of the UNet batch that are the conditional half
    step: int = -1
    num_steps: int = 0
    steps_recorded: list[int] = field(default_factory=list)
    class_context: torch.Tensor | None = None  # class-prompt embeddings, (N, 77, D), or None
    text_len: int = 0  # text tokens in a transformer's joint sequence (FLUX.1's single-stream blocks need it)
    peak_bytes: int = 0
    heads: dict[tuple[int, str], torch.Tensor] = field(default_factory=dict)  # (resolution, layer) -> (N, heads, queries, keys)
    head_counts: dict[tuple[int, str], int] = field(default_factory=dict)

    def keeps_heads(self, kind: str) -> bool:
        """Whether a recorder should hand ``add`` its per-head maps of ``kind`` (auto aggregation of cross maps)."""
        return self.aggregate == "auto" and kind == "cross"

    def add(self, kind: str, resolution: int, reduced: torch.Tensor, heads: torch.Tensor | None = None,
            layer: str = "") -> None:
        """Add one layer's probabilities, already reduced over heads with ``head_reduce``: (N, queries, keys).
        With auto aggregation of cross maps, ``heads`` (N, heads, queries, keys) are kept under ``layer`` too
        (a recorder without heads, such as ConceptAttention's output space, counts as one head)."""
        if self.keeps_heads(kind):
            self._add_heads(resolution, layer, reduced[:, None] if heads is None else heads)
        reduced = reduced.float()
        key = (kind, resolution)
        buf = self.sums.get(key)
        if buf is None:
            self.sums[key] = reduced.clone()
            self.counts[key] = 1
            self.peak_bytes = max(self.peak_bytes, self.nbytes)
        else:
            buf += reduced
            self.counts[key] += 1

    def _add_heads(self, resolution: int, layer: str, heads: torch.Tensor) -> None:
        key = (resolution, layer)
        buf = self.heads.get(key)
        if buf is None:
            self.heads[key] = heads.float().clone()
            self.head_counts[key] = 1
            self.peak_bytes = max(self.peak_bytes, self.nbytes)
        else:
            buf += heads.float()
            self.head_counts[key] += 1

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.sums.values(), *self.heads.values()))

    def reset(self) -> None:
        """Forget the sums (a new generation starts)."""
        self.sums.clear()
        self.counts.clear()
        self.heads.clear()
        self.head_counts.clear()
        self.shapes.clear()
        self.steps_recorded.clear()
        self.step = -1

"""What to capture: :class:`CaptureSpec`, a frozen copy of ``params.capture`` checked on creation."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

KINDS = ("cross", "self")
BLOCKS = ("down", "mid", "up")
REDUCTIONS = ("mean", "max", "sum")
STREAMS = ("dual", "single", "both")
TEXT_PARTS = ("clip", "t5", "llama")
JOINT_NORMS = ("text_softmax", "joint_slice")
MAP_SPACES = ("attention", "output")
AGGREGATES = ("mean", "auto")


@dataclass(frozen=True)
class CaptureSpec:
    """Which attention probabilities are recorded while a pipeline generates.

    Resolutions are map side lengths (latent side / 2**level; 64/32/16/8 for SD at 512 px).
    ``timestep_window`` is a fraction of the denoising steps: step i of T is recorded when
    ``start <= i / T < end`` (0 = the first, noisiest step). Heads are reduced per layer with
    ``head_reduce``; layers and steps are averaged. Only the conditional half of a CFG batch is read.
    Transformers: ``transformer_blocks`` (indices) or ``depth`` (a fraction of the stack) pick blocks,
    and their maps are all on the patch grid; the other fields say how joint attention is read.
    """

    cross_resolutions: tuple[int, ...] = (16,)
    self_resolutions: tuple[int, ...] = (32,)
    blocks: tuple[str, ...] = BLOCKS
    timestep_window: tuple[float, float] = (0.0, 1.0)
    head_reduce: str = "mean"
    token_reduce: str = "mean"
    resolution_weights: dict[int, float] | None = None
    # transformers only (see dmutils.config.CaptureParams)
    transformer_blocks: tuple[int, ...] | None = None
    depth: tuple[float, float] = (0.0, 1.0)
    flux_streams: str = "both"
    text_part: str = "clip"
    joint_norm: str = "joint_slice"
    map_space: str = "attention"
    aggregate: str = "mean"  # cross maps over heads and layers: "mean", or "auto" (dmutils.attention.aggregate)

    def __post_init__(self) -> None:
        if self.transformer_blocks is not None:
            object.__setattr__(self, "transformer_blocks", tuple(self.transformer_blocks))
            if not self.transformer_blocks or any(int(b) != b or b < 0 for b in self.transformer_blocks):
                raise ValueError(f"transformer_blocks must be a non-empty list of block indices >= 0 (or None), "
                                 f"got {self.transformer_blocks}")
        object.__setattr__(self, "depth", tuple(self.depth))
        if not 0.0 <= self.depth[0] < self.depth[1] <= 1.0:
            raise ValueError(f"depth must be (start, end) with 0 <= start < end <= 1, got {self.depth}")
        for name, allowed in (("flux_streams", STREAMS), ("text_part", TEXT_PARTS), ("joint_norm", JOINT_NORMS),
                              ("map_space", MAP_SPACES), ("aggregate", AGGREGATES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("cross_resolutions", "self_resolutions", "blocks", "timestep_window"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if not self.cross_resolutions and not self.self_resolutions:
            raise ValueError("CaptureSpec captures nothing: give cross_resolutions and/or self_resolutions, e.g. (16,)")
        if any(int(r) != r or r < 1 for r in self.cross_resolutions + self.self_resolutions):
            raise ValueError(f"resolutions must be positive map side lengths such as 8/16/32/64, got "
                             f"cross={self.cross_resolutions} self={self.self_resolutions}")
        bad = [b for b in self.blocks if b not in BLOCKS]
        if bad or not self.blocks:
            raise ValueError(f"blocks must be a non-empty subset of {BLOCKS}, got {self.blocks}")
        lo, hi = self.timestep_window
        if not 0.0 <= lo < hi <= 1.0:
            raise ValueError(f"timestep_window must be (start, end) with 0 <= start < end <= 1, got {self.timestep_window}")
        if self.head_reduce not in ("mean", "max"):
            raise ValueError(f"head_reduce must be 'mean' or 'max', got {self.head_reduce!r}")
        if self.token_reduce not in REDUCTIONS:
            raise ValueError(f"token_reduce must be one of {REDUCTIONS}, got {self.token_reduce!r}")
        if self.resolution_weights is not None:
            missing = sorted(set(self.resolution_weights) - set(self.cross_resolutions))
            if missing:
                raise ValueError(f"resolution_weights name resolutions {missing} that are not captured "
                                 f"(cross_resolutions={self.cross_resolutions}); add them or drop the weights")
            if any(w < 0 for w in self.resolution_weights.values()) or not sum(self.resolution_weights.values()) > 0:
                raise ValueError(f"resolution_weights must be >= 0 with a positive sum, got {self.resolution_weights}")

    @classmethod
    def from_params(cls, capture: Any, resolution_weights: dict[int, float] | None = None) -> "CaptureSpec":
        """From ``params.capture`` (a :class:`dmutils.config.CaptureParams`); ``resolution_weights``
        (``params.masks.resolution_weights``) weight the aggregated maps."""
        return cls(cross_resolutions=tuple(capture.cross_resolutions), self_resolutions=tuple(capture.self_resolutions),
                   blocks=tuple(capture.blocks), timestep_window=tuple(capture.timestep_window),
                   head_reduce=capture.head_reduce, token_reduce=capture.token_reduce,
                   resolution_weights=dict(resolution_weights) if resolution_weights else None,
                   transformer_blocks=tuple(capture.transformer_blocks) if capture.transformer_blocks is not None else None,
                   depth=tuple(capture.depth), flux_streams=capture.flux_streams, text_part=capture.text_part,
                   joint_norm=capture.joint_norm, map_space=capture.map_space,
                   aggregate=capture.aggregate)

    def resolutions(self, kind: str) -> tuple[int, ...]:
        return self.cross_resolutions if kind == "cross" else self.self_resolutions

    def steps(self, num_steps: int) -> list[int]:
        """The step indices (0 = first) of ``num_steps`` that fall in the window."""
        lo, hi = self.timestep_window
        return [i for i in range(num_steps) if lo <= i / num_steps < hi]

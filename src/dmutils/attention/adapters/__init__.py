"""One adapter per model family; :func:`adapter_for` recognises a pipeline's family.

Order matters: the first adapter whose ``matches(pipe)`` is true serves the pipeline.
"""
from __future__ import annotations

from dmutils.attention.adapters.base import (
    AttentionLayer,
    CaptureError,
    DenoiserAdapter,
    DenoiserCall,
    TextSource,
)
from dmutils.attention.adapters.dit import PixArtAdapter, SanaAdapter
from dmutils.attention.adapters.flux import FluxAdapter
from dmutils.attention.adapters.mmdit import MMDiTAdapter
from dmutils.attention.adapters.unet import UNetAdapter

ADAPTERS: list[type[DenoiserAdapter]] = [UNetAdapter, MMDiTAdapter, FluxAdapter, PixArtAdapter, SanaAdapter]


def adapter_class(pipe) -> type[DenoiserAdapter]:
    """The adapter class of ``pipe``'s family; ValueError naming the denoiser when none fits."""
    for cls in ADAPTERS:
        if cls.matches(pipe):
            return cls
    denoiser = getattr(pipe, "transformer", None) or getattr(pipe, "unet", None)
    raise CaptureError(f"cannot capture attention from {type(pipe).__name__} (denoiser {type(denoiser).__name__}): supported "
                     f"families are {[cls.family for cls in ADAPTERS]}")


def adapter_for(pipe, spec) -> DenoiserAdapter:
    """An adapter for ``pipe`` that captures what ``spec`` asks."""
    return adapter_class(pipe)(pipe, spec)


__all__ = ["ADAPTERS", "AttentionLayer", "CaptureError", "DenoiserAdapter", "DenoiserCall", "FluxAdapter", "MMDiTAdapter",
           "PixArtAdapter", "SanaAdapter", "TextSource", "UNetAdapter", "adapter_class", "adapter_for"]

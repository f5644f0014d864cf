"""Model families: a descriptor each (:mod:`~dmutils.attention.adapters.families`), read by one adapter per kind
of attention; :func:`adapter_for` recognises a pipeline's family and builds its adapter.
"""
from __future__ import annotations

from dmutils.attention.adapters.base import (
    AttentionLayer,
    Blocks,
    CaptureError,
    DenoiserAdapter,
    DenoiserCall,
    Family,
    TextPart,
    TextSource,
)
from dmutils.attention.adapters.dit import CrossAttentionDiTAdapter
from dmutils.attention.adapters.families import FAMILIES, family_for
from dmutils.attention.adapters.joint import JointAttentionAdapter
from dmutils.attention.adapters.unet import UNetAdapter


def adapter_for(pipe, spec) -> DenoiserAdapter:
    """An adapter for ``pipe`` that captures what ``spec`` asks."""
    family = family_for(pipe)
    return family.adapter(pipe, spec, family)


__all__ = ["FAMILIES", "AttentionLayer", "Blocks", "CaptureError", "CrossAttentionDiTAdapter", "DenoiserAdapter", "DenoiserCall",
           "Family", "JointAttentionAdapter", "TextPart", "TextSource", "UNetAdapter", "adapter_for", "family_for"]

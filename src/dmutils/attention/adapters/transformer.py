"""What diffusion transformers share: one block stack, maps on the patch grid, flow-matching steps.

Blocks are chosen by index (``spec.transformer_blocks``) or by a fraction of the depth
(``spec.depth``: block i of n sits at (i + 0.5) / n); every block's maps have the same size, the
patch grid, so ``cross_resolutions`` / ``self_resolutions`` name its side (or are empty).
"""
from __future__ import annotations

from typing import Any

import torch

from dmutils.attention.adapters.base import (
    AttentionLayer,
    CaptureError,
    DenoiserAdapter,
    DenoiserCall,
)
from dmutils.attention.concepts import ConceptStream
from dmutils.attention.state import CaptureState


class TransformerAdapter(DenoiserAdapter):
    """Base of the transformer families: layer selection by block index or depth, the patch grid."""

    denoiser_attr = "transformer"
    uses_step_index = True
    stream: ConceptStream | None = None  # class/concept tokens carried through the text stream (class_prompts given)

    # -- concept tokens (class-prompt maps, ConceptAttention) ------------------------------------
    def concept_blocks(self) -> list[torch.nn.Module]:
        """The blocks with a text stream, in order: concept tokens go through all of them."""
        return list(self.denoiser.transformer_blocks)

    def concept_part(self) -> slice | None:
        """The positions of the concept sequence the maps are over (None: all)."""
        return None

    def has_concept_stream(self, layer: AttentionLayer) -> bool:
        """Whether ``layer`` is the joint attention of a block with a text stream."""
        return layer.kind == "joint"

    def layer_kinds(self, layer: AttentionLayer) -> tuple[str, ...]:
        kinds = super().layer_kinds(layer)
        if self.stream is not None and not self.has_concept_stream(layer):
            kinds = tuple(k for k in kinds if k != "cross")  # with concepts, cross maps come from the text-stream blocks
        return kinds

    def extra_hooks(self, state: CaptureState, class_prompts: list[str] | None) -> list:
        if class_prompts is None:
            if self.spec.map_space == "output":
                raise CaptureError("capture.map_space 'output' (ConceptAttention) reads concept tokens: give class prompts "
                                   "(prompts.class_prompt: cross_attention, or capture(pipe, spec, class_prompts=[...]))")
            return []
        self.stream = ConceptStream(state, self.denoiser, self.concept_blocks(), self.spec.map_space, self.concept_part())
        return self.stream.hooks()

    def install_extra(self, state: CaptureState, originals: dict[str, Any], installed: set[str], resolution: int) -> None:
        if self.stream is None:
            return
        for layer in self.attention_layers():  # blocks that record nothing still carry the concepts on
            if self.has_concept_stream(layer) and layer.name not in installed:
                original = originals[f"{layer.name}.processor"]
                self.set_processor(layer, self.recording_processor(layer, state, (), resolution, original))

    def num_blocks(self) -> int:
        """Blocks in the stack (the denominator of ``depth``)."""
        return 1 + max(layer.level for layer in self.attention_layers())

    def selected_layers(self) -> list[AttentionLayer]:
        spec, layers, n = self.spec, self.attention_layers(), self.num_blocks()
        if spec.transformer_blocks is not None:
            bad = sorted(b for b in spec.transformer_blocks if b >= n)
            if bad:
                raise CaptureError(f"transformer_blocks {bad} do not exist: the {self.family} transformer has blocks 0-{n - 1}")
            chosen = [layer for layer in layers if layer.level in spec.transformer_blocks]
        else:
            lo, hi = spec.depth
            chosen = [layer for layer in layers if lo <= layer.depth < hi]
        chosen = [layer for layer in chosen if self.in_streams(layer)]
        if not chosen:
            raise CaptureError(f"no {self.family} attention layer is selected by transformer_blocks={spec.transformer_blocks}, "
                             f"depth={spec.depth}{self.streams_note()} (the transformer has {n} blocks; block i sits at depth "
                             f"(i + 0.5) / {n})")
        return chosen

    def in_streams(self, layer: AttentionLayer) -> bool:
        """Whether the spec's stream choice keeps ``layer`` (only FLUX.1 has streams)."""
        return True

    def streams_note(self) -> str:
        return ""

    def patch_size(self) -> int:
        return int(self.denoiser.config.patch_size)

    def map_shape(self, layer: AttentionLayer, call: DenoiserCall) -> tuple[int, int]:
        return call.latent_hw[0] // self.patch_size(), call.latent_hw[1] // self.patch_size()

    def describe_resolutions(self) -> str:
        return (f"(a {self.family} transformer's maps are its patch grid, latent side / patch size {self.patch_size()}: set "
                f"capture.cross_resolutions / self_resolutions to that side)")


def depth_of(index: int, blocks: int) -> float:
    """Where block ``index`` of ``blocks`` sits in the stack: (index + 0.5) / blocks."""
    return (index + 0.5) / blocks

"""What diffusion transformers share: one block stack, maps on the patch grid, flow-matching steps.

Blocks are chosen by index (``spec.transformer_blocks``) or by a fraction of the depth
(``spec.depth``: block i of n sits at (i + 0.5) / n); every block's maps have the same size, the
patch grid, so ``cross_resolutions`` / ``self_resolutions`` name its side (or are empty).
"""
from __future__ import annotations

from dmutils.attention.adapters.base import CaptureError, AttentionLayer, DenoiserAdapter, DenoiserCall


class TransformerAdapter(DenoiserAdapter):
    """Base of the transformer families: layer selection by block index or depth, the patch grid."""

    denoiser_attr = "transformer"
    uses_step_index = True

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

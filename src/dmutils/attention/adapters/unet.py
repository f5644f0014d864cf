"""UNet cross-attention (SD 1.x, 2.x, XL): ``pipe.unet``, a separate cross- and self-attention per
transformer block, maps at the resolution level of their block."""
from __future__ import annotations

import torch
from diffusers.models.attention_processor import Attention

from dmutils.attention.adapters.base import (
    AttentionLayer,
    CaptureError,
    DenoiserAdapter,
    DenoiserCall,
)
from dmutils.attention.processors import CaptureAttnProcessor
from dmutils.attention.state import CaptureState


def attention_layers(unet: torch.nn.Module) -> list[AttentionLayer]:
    """Every ``Attention`` of a UNet2DConditionModel with its block, level and kind.

    ``down_blocks.i`` runs at level i (it downsamples at its end), ``mid_block`` at the lowest
    level, ``up_blocks.i`` at level n-1-i (it upsamples at its end)."""
    n = len(unet.down_blocks)
    layers = []
    for name, module in unet.named_modules():
        if not isinstance(module, Attention):
            continue
        parts = name.split(".")
        if parts[0] == "down_blocks":
            block, level = "down", int(parts[1])
        elif parts[0] == "up_blocks":
            block, level = "up", n - 1 - int(parts[1])
        elif parts[0] == "mid_block":
            block, level = "mid", n - 1
        else:
            continue
        layers.append(AttentionLayer(name, block, level, "cross" if module.is_cross_attention else "self", module))
    return layers


def side_at_level(latent: int, level: int) -> int:
    """Map side at ``level``: each Downsample2D (3x3, stride 2, padding 1) gives ceil(side / 2)."""
    for _ in range(level):
        latent = (latent + 1) // 2
    return latent


class UNetAdapter(DenoiserAdapter):
    """SD 1.x / 2.x / XL: ``spec.blocks`` (down / mid / up) selects layers, resolutions select levels."""

    def attention_layers(self) -> list[AttentionLayer]:
        return attention_layers(self.denoiser)

    def selected_layers(self) -> list[AttentionLayer]:
        if self.spec.map_space != "attention":
            raise CaptureError("capture.map_space 'output' (ConceptAttention) needs a joint-attention transformer (SD3, "
                               "FLUX.1); a UNet's maps are attention-space: set capture.map_space: attention")
        if self.spec.transformer_blocks is not None or tuple(self.spec.depth) != (0.0, 1.0):
            raise CaptureError("capture.transformer_blocks / capture.depth choose a transformer's blocks; a UNet's layers are "
                               "chosen by capture.blocks (down/mid/up) and the resolutions: drop those settings")
        layers = [layer for layer in self.attention_layers() if layer.block in self.spec.blocks]
        if not layers:
            raise CaptureError(f"the UNet has no attention layers in blocks {self.spec.blocks}")
        return layers

    def read_call(self, args: tuple, kwargs: dict) -> DenoiserCall:
        sample = args[0] if args else kwargs["sample"]
        t = args[1] if len(args) > 1 else kwargs["timestep"]
        return DenoiserCall(sample.shape[0], tuple(sample.shape[-2:]), float(torch.as_tensor(t).flatten()[0]))

    def map_shape(self, layer: AttentionLayer, call: DenoiserCall) -> tuple[int, int]:
        return side_at_level(call.latent_hw[0], layer.level), side_at_level(call.latent_hw[1], layer.level)

    def recording_processor(self, layer: AttentionLayer, state: CaptureState, kinds: tuple[str, ...], resolution: int,
                            original) -> CaptureAttnProcessor:
        return CaptureAttnProcessor(state, layer.kind, resolution, original)

    def encode_class_prompts(self, prompts: list[str]) -> torch.Tensor:
        with torch.no_grad():
            embeds = self.pipe.encode_prompt(prompt=prompts, device=self.denoiser.device, num_images_per_prompt=1,
                                             do_classifier_free_guidance=False)[0]
        return embeds.to(self.denoiser.dtype)

    def describe_resolutions(self) -> str:
        return f"in blocks {self.spec.blocks}; map side = latent side / 2**level"

"""The adapter interface: what :func:`dmutils.attention.capture` needs to know about one model family.

A family (UNet SD 1.x/2.x/XL, MMDiT SD3/SD3.5, FLUX.1, cross-attention DiTs) differs in where its
attention layers are, how a layer's map grid follows from the denoiser's input, how the text tokens
lie in the attention keys, and which recording processor computes a layer's probabilities. One
subclass of :class:`DenoiserAdapter` per family answers those questions; the capture context manager,
the running sums (:class:`~dmutils.attention.state.CaptureState`) and the maps above them are shared.

Adding a family is one file: subclass :class:`DenoiserAdapter`, implement the abstract methods and
put the class in ``ADAPTERS`` (``dmutils.attention.adapters``); :func:`adapter_for` picks the first
whose :meth:`~DenoiserAdapter.matches` accepts the pipeline.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from dmutils.attention.spec import CaptureSpec
from dmutils.attention.state import CaptureState
from dmutils.errors import ParamsError


class CaptureError(ParamsError):
    """A capture request that this pipeline cannot serve (a resolution, block or setting it lacks);
    the message says what exists. A ``ValueError``, printed as one line by ``dmutils``."""


@dataclass(frozen=True)
class AttentionLayer:
    """One attention layer of a denoiser.

    UNet: ``block`` is down / mid / up and ``level`` the resolution level (0 = full latent).
    Transformers: ``block`` is the group of blocks (``joint`` for SD3; ``dual`` / ``single`` for
    FLUX.1; ``cross`` for PixArt/SANA) and ``level`` the block's index in the whole stack.
    ``kind`` is cross / self (one kind of map), or joint (image and text in one attention: both
    kinds). ``depth`` is the block's place in the stack, (index + 0.5) / blocks, 0 = the input end.
    """

    name: str
    block: str
    level: int
    kind: str
    module: torch.nn.Module
    depth: float = 0.0


@dataclass(frozen=True)
class DenoiserCall:
    """What the capture needs from one denoiser call: the batch size, the latent grid the maps are
    computed from, and the timestep on the scheduler's scale (``scheduler.timesteps``)."""

    batch: int
    latent_hw: tuple[int, int]
    timestep: float
    text_len: int = 0  # text tokens in the joint sequence (transformers), 0 for UNets


@dataclass(frozen=True)
class TextSource:
    """Where the captured text keys come from: the encoder whose input ids are recorded for look-up
    by word, its tokenizer, and the key positions of that text in the attention (``None``: all)."""

    encoder: torch.nn.Module | None
    tokenizer: Any
    positions: slice | None = None


class DenoiserAdapter:
    """One model family's layout. Subclasses set ``family`` and ``denoiser_attr`` and implement the
    methods that raise ``NotImplementedError``; the rest has defaults that suit most families."""

    family: ClassVar[str] = ""
    denoiser_attr: ClassVar[str] = "unet"  # the pipeline attribute that holds the denoiser
    uses_step_index: ClassVar[bool] = False  # read the step from scheduler.step_index (flow matching) instead of timesteps

    def __init__(self, pipe, spec: CaptureSpec) -> None:
        self.pipe, self.spec = pipe, spec
        self.denoiser: torch.nn.Module = getattr(pipe, self.denoiser_attr)

    # -- recognising the family -----------------------------------------------------------------
    @classmethod
    def matches(cls, pipe) -> bool:
        """True when ``pipe`` is of this family (its denoiser's class, its processors)."""
        raise NotImplementedError

    # -- layers -------------------------------------------------------------------------------
    def attention_layers(self) -> list[AttentionLayer]:
        """Every attention layer of the denoiser, in execution order."""
        raise NotImplementedError

    def selected_layers(self) -> list[AttentionLayer]:
        """The layers ``spec`` lets capture (its blocks / depth / streams); never empty."""
        raise NotImplementedError

    def layer_kinds(self, layer: AttentionLayer) -> tuple[str, ...]:
        """The kinds of map (cross / self) a layer can give."""
        return ("cross", "self") if layer.kind == "joint" else (layer.kind,)

    # -- one denoiser call --------------------------------------------------------------------
    def read_call(self, args: tuple, kwargs: dict) -> DenoiserCall:
        """The batch, latent grid and timestep of a denoiser call (its forward pre-hook's arguments)."""
        raise NotImplementedError

    def map_shape(self, layer: AttentionLayer, call: DenoiserCall) -> tuple[int, int]:
        """(h, w) of the layer's maps for this call."""
        raise NotImplementedError

    def cfg_batch(self) -> bool:
        """True when the denoiser batch is [unconditional, conditional] (classifier-free guidance)."""
        return bool(getattr(self.pipe, "do_classifier_free_guidance", False))

    def recording_processor(self, layer: AttentionLayer, state: CaptureState, kinds: tuple[str, ...], resolution: int,
                            original) -> Any:
        """The processor that records ``kinds`` of ``layer`` into ``state`` under ``resolution``
        and otherwise computes what ``original`` computes."""
        raise NotImplementedError

    def describe_resolutions(self) -> str:
        """How map sizes follow from the input, for error messages."""
        return "map side = latent side / 2**level"

    # -- text ---------------------------------------------------------------------------------
    def text_source(self) -> TextSource:
        """The text encoder to watch and the tokenizer to look words up with."""
        pipe = self.pipe
        for encoder, tokenizer in (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2")):
            if getattr(pipe, encoder, None) is not None:
                return TextSource(getattr(pipe, encoder), getattr(pipe, tokenizer, None))
        return TextSource(None, getattr(pipe, "tokenizer", None))

    def text_ids(self, ids: torch.Tensor, text_len: int) -> torch.Tensor:
        """The recorded encoder input ids at the positions of the text keys the denoiser sees (``text_len``
        of them; 0 = unknown): as recorded, unless the pipeline drops embeddings (SANA)."""
        return ids

    def encode_class_prompts(self, prompts: list[str]) -> torch.Tensor:
        """Embeddings of the class prompts (class-prompt cross-attention mode), in the denoiser's dtype."""
        raise CaptureError(f"class-prompt cross-attention is not supported for the {self.family} family; "
                           f"set prompts.class_prompt to 'append' or 'none'")

    def extra_hooks(self, state: CaptureState, class_prompts: list[str] | None) -> list:
        """Hooks a family needs besides capture's own (e.g. a concept stream), registered after them."""
        return []

    def install_extra(self, state: CaptureState, originals: dict[str, Any], installed: set[str], resolution: int) -> None:
        """Processors a family needs on layers that record nothing (e.g. to carry concept tokens)."""

    # -- processors ---------------------------------------------------------------------------
    def processors(self) -> dict[str, Any]:
        """The denoiser's processors now, to restore on exit."""
        return dict(self.denoiser.attn_processors)

    def restore(self, originals: dict[str, Any]) -> None:
        self.denoiser.set_attn_processor(dict(originals))

    def set_processor(self, layer: AttentionLayer, processor) -> None:
        layer.module.set_processor(processor)

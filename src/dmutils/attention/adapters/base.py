"""The adapter interface and the family descriptor: what :func:`dmutils.attention.capture` needs to know.

A family differs from another in where its attention layers are, how a layer's map grid follows from
the denoiser's input, where the text tokens lie in the attention keys, and which encoder the words come
from. For the transformers of diffusers >= 0.35 that is data, not code: a :class:`Family` descriptor
(a frozen dataclass) names the denoiser class, its block lists and their streams, the text's place in the
keys, the grid and the text parts; one adapter class per *kind* of attention reads it
(:class:`~dmutils.attention.adapters.joint.JointAttentionAdapter` for joint image+text attention,
:class:`~dmutils.attention.adapters.dit.CrossAttentionDiTAdapter` for image-to-text cross-attention,
:class:`~dmutils.attention.adapters.unet.UNetAdapter`). The capture context manager, the running sums
(:class:`~dmutils.attention.state.CaptureState`) and the maps above them are shared.

Adding a family is one descriptor in ``dmutils.attention.adapters.families.FAMILIES``.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

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
    text_lens: tuple[int, ...] = ()  # each sample's own text length where the sequences are packed (Lumina 2)


@dataclass(frozen=True)
class TextSource:
    """Where the captured text keys come from: the encoder whose input ids are recorded for look-up
    by word, its tokenizer, and the key positions of that text in the attention (``None``: all)."""

    encoder: torch.nn.Module | None
    tokenizer: Any
    positions: slice | None = None


@dataclass(frozen=True)
class Blocks:
    """One list of blocks of a transformer: the denoiser attribute that holds them, the label its layers get
    (``AttentionLayer.block``), whether the text has its own stream in them (``dual``: separate text
    projections, ``single``: one sequence, one set of weights) and their attention modules as
    (attribute, kind) pairs, kind ``joint`` (image and text), ``self`` or ``cross``."""

    attr: str
    label: str
    stream: str = "dual"
    attns: tuple[tuple[str, str], ...] = (("attn", "joint"),)


@dataclass(frozen=True)
class TextPart:
    """A part of the text keys with its own encoder and tokenizer (pipeline attributes): positions
    ``start``..``stop`` of the text (``stop`` None: to the end). ``name`` is what ``capture.text_part`` names."""

    name: str
    encoder: str = "text_encoder"
    tokenizer: str = "tokenizer"
    start: int = 0
    stop: int | None = None


@dataclass(frozen=True)
class Family:
    """Everything capture needs to know about one family of pipelines.

    ``denoisers``: class names of the denoiser (any class in its MRO matches; empty: any); ``pipelines``: the
    diffusers pipelines it serves (documentation and presets); ``adapter``: the adapter class that reads the
    descriptor; ``blocks``: the block lists in execution order; ``text_first``: [text, image] in the joint
    keys (else [image, text]); ``grid(denoiser, inputs)``: the map grid (h, w) from the denoiser call's bound
    arguments, ``grid_note`` what it is in words; ``text``: the text parts, the first the default;
    ``cfg``: how a CFG batch is recognised (``flag``: ``pipe.do_classifier_free_guidance``; ``halves``: two
    identical latent halves; ``none``: no CFG batch, true CFG runs a second call per step, which capture
    skips); ``cond_first``: a CFG batch is [conditional, unconditional] (Z-Image), not the other way round;
    ``inputs``: the names of the denoiser's latent, text and timestep arguments (a list of latents or of texts: one a sample); ``text_ids(ids, text_len)``: the encoder ids at the positions the denoiser attends to, when the
    pipeline drops some; ``encode(pipe, prompts)``: class prompts as a caption is encoded (concept stream),
    None: refused; ``linear_self``: self-attention is linear (SANA); ``text_lens(inputs)``: each sample's text length,
    where each sample's sequence packs [its own text, the image, padding] (Lumina 2; text first); ``pad_image``: the
    image tokens are padded to a multiple of this before the text (Z-Image; image first)."""

    name: str
    adapter: type
    denoiser_attr: str = "transformer"
    denoisers: tuple[str, ...] = ()
    pipelines: tuple[str, ...] = ()
    blocks: tuple[Blocks, ...] = ()
    text_first: bool = False
    grid: Callable[[Any, dict], tuple[int, int]] | None = None
    grid_note: str = ""
    text: tuple[TextPart, ...] = (TextPart("text"),)
    cfg: str = "flag"
    cond_first: bool = False
    inputs: tuple[str, str, str] = ("hidden_states", "encoder_hidden_states", "timestep")
    text_ids: Callable[[torch.Tensor, int], torch.Tensor] | None = None
    encode: Callable[[Any, list[str]], torch.Tensor] | None = None
    linear_self: bool = False
    text_lens: Callable[[dict], Any] | None = None
    pad_image: int = 1

    def matches(self, pipe) -> bool:
        denoiser = getattr(pipe, self.denoiser_attr, None)
        if denoiser is None:
            return False
        return not self.denoisers or any(c.__name__ in self.denoisers for c in type(denoiser).__mro__)


def call_inputs(module: torch.nn.Module, args: tuple, kwargs: dict) -> dict:
    """A forward pre-hook's arguments by parameter name (the denoiser's ``forward`` signature)."""
    return inspect.signature(module.forward).bind_partial(*args, **kwargs).arguments


class DenoiserAdapter:
    """Capture's questions about a denoiser, answered from a family descriptor ``desc``. Subclasses implement
    the methods that raise ``NotImplementedError``; the rest has defaults that suit most families."""

    uses_step_index: ClassVar[bool] = False  # read the step from scheduler.step_index (flow matching) instead of timesteps

    def __init__(self, pipe, spec: CaptureSpec, desc: Family) -> None:
        self.pipe, self.spec, self.desc = pipe, spec, desc
        self.family = desc.name
        self.denoiser: torch.nn.Module = getattr(pipe, desc.denoiser_attr)

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
        """True when the denoiser batch is a CFG batch: [unconditional, conditional], or the other way round."""
        return bool(getattr(self.pipe, "do_classifier_free_guidance", False))

    def cond_rows(self, batch: int) -> slice:
        """The conditional rows of a denoiser batch of ``batch`` samples: one half of a CFG batch, else all."""
        if not self.cfg_batch():
            return slice(0, batch)
        return slice(0, batch // 2) if self.desc.cond_first else slice(batch // 2, batch)

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
        """The denoiser's processors now, to restore on exit, by ``<module>.processor``; read from its attention
        modules where the denoiser has no ``attn_processors`` (CogView4's lacks diffusers' AttentionMixin)."""
        if hasattr(self.denoiser, "attn_processors"):
            return dict(self.denoiser.attn_processors)
        return {f"{name}.processor": module.processor for name, module in self.denoiser.named_modules()
                if hasattr(module, "set_processor") and hasattr(module, "processor")}

    def restore(self, originals: dict[str, Any]) -> None:
        if hasattr(self.denoiser, "set_attn_processor"):
            self.denoiser.set_attn_processor(dict(originals))
            return
        for key, processor in originals.items():
            self.denoiser.get_submodule(key.removesuffix(".processor")).set_processor(processor)

    def set_processor(self, layer: AttentionLayer, processor) -> None:
        layer.module.set_processor(processor)

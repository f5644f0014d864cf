"""What diffusion transformers share, read from their :class:`~dmutils.attention.adapters.base.Family`
descriptor: block lists, maps on the patch grid, flow-matching steps, the text parts.

Blocks are chosen by index (``spec.transformer_blocks``, counted over every block list in order) or by a
fraction of the depth (``spec.depth``: block i of n sits at (i + 0.5) / n), and with two block lists by
stream (``spec.flux_streams``: dual / single / both); every block's maps have the same size, the patch
grid, so ``cross_resolutions`` / ``self_resolutions`` name its side (or are empty).
"""
from __future__ import annotations

from typing import Any

import torch

from dmutils.attention.adapters.base import (
    AttentionLayer,
    CaptureError,
    DenoiserAdapter,
    DenoiserCall,
    TextPart,
    TextSource,
    call_inputs,
)
from dmutils.attention.concepts import ConceptStream
from dmutils.attention.state import CaptureState


class TransformerAdapter(DenoiserAdapter):
    """Base of the transformer adapters: the layer table from the descriptor's blocks, selection by block
    index, depth or stream, the grid and the text from the descriptor."""

    uses_step_index = True
    stream: ConceptStream | None = None  # class/concept tokens carried through the text stream (class_prompts given)
    call: DenoiserCall | None = None  # the last denoiser call

    # -- layers -------------------------------------------------------------------------------
    def attention_layers(self) -> list[AttentionLayer]:
        lists = [(b, getattr(self.denoiser, b.attr)) for b in self.desc.blocks]
        n, layers, index = sum(len(blocks) for _, blocks in lists), [], 0
        for spec_blocks, blocks in lists:
            for i, block in enumerate(blocks):
                for attr, kind in spec_blocks.attns:
                    module = _submodule(block, attr)
                    if module is not None:
                        layers.append(AttentionLayer(f"{spec_blocks.attr}.{i}.{attr}", spec_blocks.label, index, kind, module,
                                                     depth_of(index, n)))
                index += 1
        return layers

    def num_blocks(self) -> int:
        """Blocks in the stack (the denominator of ``depth``)."""
        return sum(len(getattr(self.denoiser, b.attr)) for b in self.desc.blocks)

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
        """Whether ``spec.flux_streams`` keeps ``layer`` (only families with dual- and single-stream blocks have a choice)."""
        if len(self.desc.blocks) < 2:
            return True
        stream = next(b.stream for b in self.desc.blocks if b.label == layer.block)
        return self.spec.flux_streams in ("both", stream)

    def streams_note(self) -> str:
        return f", flux_streams={self.spec.flux_streams!r}" if len(self.desc.blocks) > 1 else ""

    # -- one call -----------------------------------------------------------------------------
    _cfg = False  # cfg "halves": whether the last call's latents were two identical halves

    def read_call(self, args: tuple, kwargs: dict) -> DenoiserCall:
        inputs = call_inputs(self.denoiser, args, kwargs)
        latent, text_name, t_name = self.desc.inputs
        hidden = inputs.get(latent, args[0] if args else None)
        text, t = inputs.get(text_name), inputs.get(t_name)
        if isinstance(text, (list, tuple)):  # one text a sample (Z-Image): the longest
            text_len = max(len(x) for x in text)
        else:
            text_len = 0 if text is None or not hasattr(text, "shape") else text.shape[1]
        lens = tuple(int(n) for n in self.desc.text_lens(inputs)) if self.desc.text_lens is not None else ()
        if self.desc.cfg == "halves":
            n = len(hidden)
            self._cfg = n % 2 == 0 and all(torch.equal(a, b) for a, b in zip(hidden[: n // 2], hidden[n // 2:]))
        self.call = DenoiserCall(len(hidden), tuple(self.desc.grid(self.denoiser, inputs)),
                                 0.0 if t is None else float(torch.as_tensor(t).flatten()[0]), text_len, lens)
        return self.call

    def map_shape(self, layer: AttentionLayer, call: DenoiserCall) -> tuple[int, int]:
        return call.latent_hw  # the descriptor's grid reader gives the map grid itself

    def describe_resolutions(self) -> str:
        return (f"(the {self.family} transformer's maps are its {self.desc.grid_note}: set capture.cross_resolutions / "
                f"self_resolutions to that side)")

    def cfg_batch(self) -> bool:
        """``flag``: the pipeline's flag; ``halves``: the pipeline keeps its flag local (PixArt) or may skip CFG at a step
        (Z-Image), so a CFG batch is recognised by its two identical latent halves."""
        if self.desc.cfg == "halves":
            return self._cfg
        return self.desc.cfg == "flag" and super().cfg_batch()

    # -- text ---------------------------------------------------------------------------------
    def text_part(self) -> TextPart:
        """The part of the text the maps are over: ``spec.text_part`` when the family has it, else its first."""
        parts = {p.name: p for p in self.desc.text}
        return parts.get(self.spec.text_part, self.desc.text[0])

    def text_slice(self) -> slice | None:
        """The positions of :meth:`text_part` within the text keys (None: all of them)."""
        part = self.text_part()
        return None if (part.start, part.stop) == (0, None) else slice(part.start, part.stop)

    def text_source(self) -> TextSource:
        part = self.text_part()
        encoder = getattr(self.pipe, part.encoder, None)
        if encoder is None and part is not self.desc.text[0]:  # the first part's absence only matters for word look-up
            raise CaptureError(f"capture.text_part is {part.name!r} but this {self.family.upper()} pipeline has no "
                               f"{part.name.upper()} ({part.encoder} is None); set capture.text_part: {self.desc.text[0].name} "
                               f"or load the pipeline with its {part.name.upper()}")
        return TextSource(encoder, getattr(self.pipe, part.tokenizer, None), self.text_slice())

    def text_ids(self, ids: torch.Tensor, text_len: int) -> torch.Tensor:
        return ids if self.desc.text_ids is None else self.desc.text_ids(ids, text_len)

    def encode_class_prompts(self, prompts: list[str]) -> torch.Tensor:
        if self.desc.encode is None:
            return super().encode_class_prompts(prompts)
        with torch.no_grad():
            return self.desc.encode(self.pipe, prompts).to(self.denoiser.dtype)

    # -- concept tokens (class-prompt maps, ConceptAttention) ------------------------------------
    def concept_blocks(self) -> list[torch.nn.Module]:
        """The blocks with a text stream, in order: concept tokens go through all of them."""
        return [block for b in self.desc.blocks if b.stream == "dual" for block in getattr(self.denoiser, b.attr)]

    def concept_part(self) -> slice | None:
        """The positions of the concept sequence the maps are over (None: all)."""
        return self.text_slice()

    def has_concept_stream(self, layer: AttentionLayer) -> bool:
        """Whether ``layer`` is the joint attention of a block with a text stream."""
        return layer.kind == "joint" and any(b.label == layer.block and b.stream == "dual" for b in self.desc.blocks)

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


def _submodule(block: torch.nn.Module, path: str) -> torch.nn.Module | None:
    """``block``'s module at a dotted ``path`` (HiDream wraps each block: ``block.attn1``), None where it has none."""
    try:
        return block.get_submodule(path)
    except AttributeError:
        return None


def depth_of(index: int, blocks: int) -> float:
    """Where block ``index`` of ``blocks`` sits in the stack: (index + 0.5) / blocks."""
    return (index + 0.5) / blocks


def patch_grid(denoiser: torch.nn.Module, inputs: dict) -> tuple[int, int]:
    """Latent (batch, channels, h, w) / the transformer's patch size (SD3, PixArt, SANA)."""
    hidden, p = inputs["hidden_states"], int(denoiser.config.patch_size)
    return hidden.shape[-2] // p, hidden.shape[-1] // p


def ids_grid(denoiser: torch.nn.Module, inputs: dict) -> tuple[int, int]:
    """The packed token grid from the image position ids, axes 1 and 2 (FLUX.1: (t, h, w); FLUX.2: (t, h, w, l))."""
    ids = inputs["img_ids"]
    ids = ids[0] if ids.ndim == 3 else ids
    return int(ids[:, 1].max() - ids[:, 1].min()) + 1, int(ids[:, 2].max() - ids[:, 2].min()) + 1

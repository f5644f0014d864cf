"""Joint image + text attention (SD3/SD3.5, FLUX.1, FLUX.2, Qwen-Image, ...), one adapter for all, read from a descriptor.

These transformers differ in how a layer makes its queries, keys and values (separate or fused
projections, q/k norms, rotary positions, a text stream or one sequence) but not in what happens next:
one call of SDPA (``F.scaled_dot_product_attention``) or of diffusers' ``dispatch_attention_fn`` over
the image and text tokens, with the text first or last. :class:`JointCaptureProcessor` therefore does
not re-implement any family's processor: it calls the layer's own, and while that runs, the attention
function it calls (the module global ``F`` or ``dispatch_attention_fn`` of the processor's module) is
:func:`~dmutils.attention.joint.attend_and_record`, which returns the same output (the same kernel) and
records the maps from the very queries and keys the layer attends with. The image tokens are the map
grid's h * w (:class:`DenoiserCall`), the text the rest of the keys, first or last as the descriptor says.

The swap of the module global lasts one processor call, on the thread that generates; a processor that
calls neither function (a custom one) is a one-line TypeError rather than silently empty maps.
"""
from __future__ import annotations

import contextlib
import sys
import threading
import types

import torch
import torch.nn.functional as F

from dmutils.attention.adapters.base import AttentionLayer
from dmutils.attention.adapters.transformer import TransformerAdapter
from dmutils.attention.concepts import ConceptStream
from dmutils.attention.joint import attend_and_record, record_joint
from dmutils.attention.state import CaptureState

_SWAP = threading.Lock()


class JointCaptureProcessor:
    """The layer's own processor, with its attention call recorded into ``state`` at steps inside the window."""

    def __init__(self, state: CaptureState, kinds: tuple[str, ...], resolution: int, original, n_image: int,
                 text_first: bool, text_part: slice | None, joint_norm: str, stream: ConceptStream | None = None,
                 concepts: bool = False, packed=None, text_start: int | None = None) -> None:
        self.state, self.kinds, self.resolution, self.original = state, kinds, resolution, original
        self.n_image, self.text_first, self.text_part, self.joint_norm = n_image, text_first, text_part, joint_norm
        self.stream, self.concepts = stream, concepts
        self.packed = packed  # () -> (text keys, per-sample text lengths) where each sample packs [its text, image, padding]
        self.text_start = n_image if text_start is None else text_start  # image first: where the text starts (after padding)
        self.layer = ""  # the layer's name, set by capture (auto aggregation keeps each layer's heads apart)
        # diffusers passes a processor only the keyword arguments its __call__ names: those of the original
        self.__dict__["__call__"] = original.__call__
        self._calls = 0

    def __call__(self, attn, *args, **kwargs):
        if not self.state.recording:
            return self.original(attn, *args, **kwargs)
        self._calls = 0
        with _swapped(type(self.original), self._sdpa, self._dispatch):
            out = self.original(attn, *args, **kwargs)
        if not self._calls:
            raise TypeError(f"cannot capture a layer whose processor is {type(self.original).__name__}: it calls neither SDPA "
                            f"nor dispatch_attention_fn; restore the family's default processor")
        return out

    # -- the attention call, as the processor makes it -------------------------------------------
    def _sdpa(self, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        """(batch, heads, seq, d), as ``F.scaled_dot_product_attention``."""
        if scale is not None and scale == query.shape[-1] ** -0.5:  # SDPA's own scale, passed explicitly (Lumina 2)
            scale = None
        if dropout_p or is_causal or scale is not None or enable_gqa:
            self._record_only(query, key, attn_mask)
            return F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p,
                                                  is_causal=is_causal, scale=scale, enable_gqa=enable_gqa)
        return self._attend(query, key, value, attn_mask)

    def _dispatch(self, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False,
                  attention_kwargs=None, *, backend=None, parallel_config=None):
        """(batch, seq, heads, d), as diffusers' ``dispatch_attention_fn``: the native backend is SDPA itself; another one
        (``set_attention_backend``) computes the output, and the maps are recorded beside it."""
        from diffusers.models.attention_dispatch import (
            AttentionBackendName,
            _AttentionBackendRegistry,
            dispatch_attention_fn,
        )

        q, k, v = (x.transpose(1, 2) for x in (query, key, value))
        chosen = backend if backend is not None else _AttentionBackendRegistry.get_active_backend()[0]
        native = chosen == AttentionBackendName.NATIVE  # by default, or set_attention_backend("native"): SDPA itself
        if not native or parallel_config is not None or attention_kwargs or dropout_p or is_causal or scale is not None \
                or enable_gqa:
            self._record_only(q, k, attn_mask)
            return dispatch_attention_fn(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                                         scale=scale, enable_gqa=enable_gqa, attention_kwargs=attention_kwargs,
                                         backend=backend, parallel_config=parallel_config)
        return self._attend(q, k, v, attn_mask).transpose(1, 2)

    # -- recording ------------------------------------------------------------------------------
    def _layout(self, seq: int) -> tuple[slice, slice | None]:
        """The image and text slices of a sequence of ``seq`` keys (no text: ``seq`` is the image alone)."""
        n_text = seq - self.n_image
        if n_text <= 0:
            return slice(0, seq), None
        if self.text_first:
            return slice(n_text, seq), slice(0, n_text)
        return slice(0, self.n_image), slice(self.text_start, seq)

    def _kinds(self, text: slice | None) -> tuple[str, ...]:
        concepts = self._concepts(text)
        return self.kinds if text is not None and not concepts else tuple(k for k in self.kinds if k == "self")

    def _concepts(self, text: slice | None) -> bool:
        return self.concepts and self.stream is not None and self.stream.active and text is not None

    def _attend(self, query, key, value, mask):
        self._calls += 1
        if key.shape[2] < self.n_image:  # not an attention over the image (a text-only or reference call): not recorded
            return F.scaled_dot_product_attention(query, key, value, attn_mask=mask)
        if self.packed is not None:  # the same SDPA call for the output; the maps from the unpacked sequences
            self._calls -= 1
            self._record_only(query, key, mask)
            return F.scaled_dot_product_attention(query, key, value, attn_mask=mask)
        image, text = self._layout(key.shape[2])
        out = attend_and_record(self.state, self._kinds(text), self.resolution, query, key, value, image, text, self.text_part,
                                self.joint_norm, attn_mask=mask, layer=self.layer)
        if self._concepts(text):  # class/concept tokens read the image through this block's text-stream weights
            c = self.state.cond
            self.stream.attend(self._module, query[c, :, image], key[c, :, image], value[c, :, image], out[c, :, image],
                               self.resolution if "cross" in self.kinds else None, layer=self.layer)
        return out

    def _record_only(self, query, key, mask):
        self._calls += 1
        if key.shape[2] >= self.n_image:
            if self.packed is not None:
                query, key, mask = self._unpack(query, key)
            image, text = self._layout(key.shape[2])
            kinds = self._kinds(text)
            if kinds:
                record_joint(self.state, kinds, self.resolution, query, key, image, text, self.text_part, self.joint_norm,
                             mask=mask, layer=self.layer)

    def _unpack(self, query, key):
        """Each sample's [text, image, padding] (its own text length) as [text padded to the text keys, image], the same
        layout for every sample, with a mask that keeps each one's own text and image: what the layer attended to."""
        n_text, lens = self.packed()
        lens = torch.as_tensor(lens, device=key.device).clamp(max=n_text)
        pos = torch.arange(n_text + self.n_image, device=key.device)
        text = pos[None, :n_text].expand(len(lens), -1)
        index = torch.cat([torch.minimum(text, (lens[:, None] - 1).clamp(min=0)), lens[:, None] + pos[None, :self.n_image]], 1)
        keep = torch.cat([text < lens[:, None], torch.ones(len(lens), self.n_image, dtype=torch.bool, device=key.device)], 1)

        def gather(x):
            return x.gather(2, index[:, None, :, None].expand(-1, x.shape[1], -1, x.shape[3]))

        return gather(query), gather(key), keep[:, None, None, :]

    _module = None  # the attention module of the current call (the concept stream projects with its text weights)


class _Functional(types.ModuleType):
    """``torch.nn.functional`` with one function replaced, for a processor module's global ``F``."""

    def __init__(self, sdpa) -> None:
        super().__init__("torch.nn.functional")
        self.scaled_dot_product_attention = sdpa

    def __getattr__(self, name):
        return getattr(F, name)


@contextlib.contextmanager
def _swapped(cls: type, sdpa, dispatch):
    """The attention functions of the modules that define ``cls`` and its bases, replaced for one call."""
    modules = {sys.modules[c.__module__] for c in cls.__mro__ if c is not object and c.__module__ in sys.modules}
    saved = []
    with _SWAP:
        try:
            for module in modules:
                if getattr(module, "F", None) is F:
                    saved.append((module, "F", F))
                    module.F = _Functional(sdpa)
                if "dispatch_attention_fn" in vars(module):
                    saved.append((module, "dispatch_attention_fn", module.dispatch_attention_fn))
                    module.dispatch_attention_fn = dispatch
            yield
        finally:
            for module, name, value in saved:
                setattr(module, name, value)


class JointAttentionAdapter(TransformerAdapter):
    """Every joint (image + text) transformer: layers, grid, text and CFG from the family descriptor; one
    recording processor that wraps each layer's own."""

    def recording_processor(self, layer: AttentionLayer, state: CaptureState, kinds: tuple[str, ...], resolution: int,
                            original) -> JointCaptureProcessor:
        h, w = self.map_shape(layer, self.call)
        packed = (lambda: (self.call.text_len, self.call.text_lens)) if self.desc.text_lens is not None else None
        pad = self.desc.pad_image
        proc = JointCaptureProcessor(state, kinds, resolution, original, h * w, self.desc.text_first, self.text_slice(),
                                     self.spec.joint_norm, self.stream, self.has_concept_stream(layer), packed,
                                     -(-h * w // pad) * pad)
        proc._module = layer.module
        return proc

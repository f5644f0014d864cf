"""``capture(pipe, spec)``: record attention maps while a diffusers pipeline generates, for any family.

    with capture(pipe, CaptureSpec.from_params(params.capture)) as rec:
        out = pipe(prompts, generator=[torch.Generator().manual_seed(s) for s in seeds], output_type="np")
    maps = rec.maps()          # an AttentionMaps, on the CPU

The family (UNet, MMDiT, FLUX.1, ...) is recognised from the pipeline; its adapter
(:mod:`dmutils.attention.adapters`) knows the denoiser, its attention layers, the map grid and
the recording processors. Like DAAM's ``trace``, capture works through public hooks only: a
forward pre-hook on the denoiser knows the step, the latent size and the CFG layout; at the first
step of each generation it puts the adapter's recording processor (``set_processor``) on exactly
the layers whose kind, block and resolution are asked for, and records only steps inside the
window. A pre-hook on the text encoder keeps the token ids the model saw, for look-up by word. On
exit, also when generation raises, the original processors are restored with
``set_attn_processor`` and the hooks removed.

One generation is kept: a second ``pipe(...)`` call inside the same block starts new maps.
With ``class_prompts`` (one per sample) cross-attention maps are taken against the separately
encoded class prompt ("person horse") while the image is generated from the caption, unchanged.
"""
from __future__ import annotations

import torch

from dmutils.attention.adapters import (
    AttentionLayer,
    CaptureError,
    DenoiserAdapter,
    DenoiserCall,
    adapter_for,
)
from dmutils.attention.maps import AttentionMaps
from dmutils.attention.spec import CaptureSpec
from dmutils.attention.state import CaptureState


class AttentionCapture:
    """The context manager behind :func:`capture`; ``rec.maps()`` after generation."""

    def __init__(self, pipe, spec: CaptureSpec | None = None, class_prompts: list[str] | None = None) -> None:
        if spec is None:
            from dmutils.config import CaptureParams

            spec = CaptureSpec.from_params(CaptureParams())
        self.pipe, self.spec = pipe, spec
        self.adapter: DenoiserAdapter = adapter_for(pipe, spec)
        self.denoiser = self.adapter.denoiser
        self.layers = self.adapter.selected_layers()
        text = self.adapter.text_source()
        self.text_encoder, self.tokenizer, self.text_positions = text.encoder, text.tokenizer, text.positions
        if class_prompts is not None and (isinstance(class_prompts, str) or not class_prompts
                                          or not all(isinstance(p, str) and p.strip() for p in class_prompts)):
            raise CaptureError("class_prompts must be a non-empty list of non-empty strings, one per prompt, "
                             "e.g. ['person horse', 'dog']")
        self.class_prompts = list(class_prompts) if class_prompts is not None else None
        self.state = CaptureState(head_reduce=self.spec.head_reduce, aggregate=self.spec.aggregate)
        self._encoded: list[torch.Tensor] = []  # token ids of every text-encoder call since the last generation began
        self.prompt_ids: torch.Tensor | None = None
        self._originals = None
        self._hooks: list = []
        self._window: set[int] = set()
        self._class_embeds: torch.Tensor | None = None  # (len(class_prompts), tokens, D)

    @property
    def unet(self) -> torch.nn.Module:
        """The denoiser (the name from when only UNets were captured)."""
        return self.denoiser

    # -- context ------------------------------------------------------------------------------
    def __enter__(self) -> "AttentionCapture":
        if self.class_prompts is not None:  # before the hooks: these ids are not the caption's
            self._class_embeds = self.adapter.encode_class_prompts(self.class_prompts)
        self._originals = self.adapter.processors()
        self._hooks.append(self.denoiser.register_forward_pre_hook(self._on_denoiser, with_kwargs=True))
        if self.text_encoder is not None:
            self._hooks.append(self.text_encoder.register_forward_pre_hook(self._on_text_encoder, with_kwargs=True))
        self._hooks += self.adapter.extra_hooks(self.state, self.class_prompts)
        return self

    def __exit__(self, *exc) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        self.adapter.restore(self._originals)
        self.state.recording = False

    # -- hooks --------------------------------------------------------------------------------
    def _on_text_encoder(self, module, args, kwargs) -> None:
        ids = args[0] if args else kwargs.get("input_ids")
        if ids is not None:
            self._encoded.append(ids.detach().cpu())

    def _on_denoiser(self, module, args, kwargs) -> None:
        call = self.adapter.read_call(args, kwargs)
        timesteps = self.pipe.scheduler.timesteps
        state = self.state
        index = getattr(self.pipe.scheduler, "step_index", False) if self.adapter.uses_step_index else False
        if index is not False:  # flow-matching schedulers count their steps: None before the first
            index = index or 0
            if state.step < 0 or index < state.step or (index == state.step and self._encoded):
                self._start_generation(call, len(timesteps))
            elif index == state.step:  # a second call at the same step (true CFG's negative prompt): not read
                state.recording = False
                return
            else:
                state.step = index
        else:
            first = timesteps is not None and len(timesteps) and call.timestep == float(timesteps[0])
            if state.step < 0 or first or state.step + 1 >= state.num_steps:
                self._start_generation(call, len(timesteps))
            else:
                state.step += 1
        state.recording = state.step in self._window
        if state.recording:
            state.steps_recorded.append(state.step)

    def _start_generation(self, call: DenoiserCall, num_steps: int) -> None:
        """Plan a new generation before its first denoiser step: check the request, install processors."""
        state, spec, adapter = self.state, self.spec, self.adapter
        state.reset()
        state.step, state.num_steps = 0, num_steps
        self._window = set(spec.steps(num_steps))
        if not self._window:
            raise CaptureError(f"timestep_window {spec.timestep_window} holds none of the {num_steps} steps; widen it "
                             f"or use more steps")
        state.cond = adapter.cond_rows(call.batch)
        state.text_len = call.text_len
        samples = state.cond.stop - state.cond.start
        self.prompt_ids, self._encoded = (self._encoded[0] if self._encoded else None), []
        if self._class_embeds is not None:
            n = len(self.class_prompts)
            if samples % n:
                raise CaptureError(f"{n} class_prompts for {samples} samples: give one class prompt per prompt")
            state.class_context = self._class_embeds.repeat_interleave(samples // n, dim=0)
        shapes = {layer.name: adapter.map_shape(layer, call) for layer in self.layers}
        available = {kind: sorted({shapes[layer.name][0] for layer in self.layers if kind in adapter.layer_kinds(layer)},
                                  reverse=True) for kind in ("cross", "self")}
        latent_h, latent_w = call.latent_hw
        for kind in ("cross", "self"):
            missing = sorted(set(spec.resolutions(kind)) - set(available[kind]))
            if missing:
                raise CaptureError(f"{kind}-attention resolution(s) {missing} do not exist for a {latent_h}x{latent_w} latent "
                                 f"{adapter.describe_resolutions()}; available: {available[kind]}")
        adapter.restore(self._originals)
        installed = set()
        for layer in self.layers:
            h, w = shapes[layer.name]
            kinds = tuple(kind for kind in adapter.layer_kinds(layer) if h in spec.resolutions(kind))
            if kinds:
                original = self._originals[f"{layer.name}.processor"]
                processor = adapter.recording_processor(layer, state, kinds, h, original)
                processor.layer = layer.name  # auto aggregation keeps each layer's heads under its name
                adapter.set_processor(layer, processor)
                installed.add(layer.name)
                for kind in kinds:
                    state.shapes[(kind, h)] = (h, w)
        if self.layers:
            adapter.install_extra(state, self._originals, installed, shapes[self.layers[0].name][0])

    # -- results ------------------------------------------------------------------------------
    def maps(self, prompts: list[str] | None = None) -> AttentionMaps:
        """The averaged maps of the last generation, moved to the CPU once.

        ``prompts`` (the captions given to the pipeline) are optional: with them truncation at 77
        tokens is known exactly; without them the token ids the text encoder saw are used."""
        state = self.state
        if not state.sums:
            raise RuntimeError("nothing was captured: call the pipeline inside the 'with capture(...)' block first")
        cross, self_attn = {}, {}
        for (kind, res), total in state.sums.items():
            mean = (total / state.counts[(kind, res)]).cpu()
            h, w = state.shapes[(kind, res)]
            if kind == "cross":
                if self.spec.map_space == "output":  # ConceptAttention: a softmax over concepts after averaging
                    mean = mean.softmax(-1)
                cross[res] = mean.transpose(1, 2).reshape(mean.shape[0], mean.shape[2], h, w)
            else:
                self_attn[res] = mean
        samples = next(iter(state.sums.values())).shape[0]
        if self.class_prompts is not None:
            texts, ids = _repeat(self.class_prompts, samples), None
        else:
            texts = _repeat(list(prompts), samples) if prompts is not None else None
            ids = self.prompt_ids.repeat_interleave(samples // self.prompt_ids.shape[0], 0) if self.prompt_ids is not None else None
            ids = self.adapter.text_ids(ids, state.text_len) if ids is not None else None
        return AttentionMaps(cross=cross, self_attention=self_attn, tokenizer=self.tokenizer, prompts=texts, token_ids=ids,
                             steps=list(state.steps_recorded), num_steps=state.num_steps,
                             resolution_weights=self.spec.resolution_weights, token_reduce=self.spec.token_reduce,
                             heads=self._head_maps())

    def _head_maps(self) -> dict[int, dict[str, torch.Tensor]] | None:
        """Auto aggregation: per resolution, per layer, (N, heads, queries, keys) averaged over steps, on the CPU."""
        state = self.state
        if not state.heads:
            return None
        out: dict[int, dict[str, torch.Tensor]] = {}
        for (res, layer), total in state.heads.items():
            mean = (total / state.head_counts[(res, layer)]).cpu()
            out.setdefault(res, {})[layer] = mean.softmax(-1) if self.spec.map_space == "output" else mean
        return out

    @property
    def nbytes(self) -> int:
        """Bytes of the capture state now (the running sums)."""
        return self.state.nbytes


def _repeat(texts: list[str], samples: int) -> list[str]:
    if samples % len(texts):
        raise CaptureError(f"{len(texts)} prompts for {samples} samples: give one prompt per sample")
    k = samples // len(texts)
    return [t for t in texts for _ in range(k)]


def capture(pipe, spec: CaptureSpec | None = None, class_prompts: list[str] | None = None) -> AttentionCapture:
    """Context manager: record attention of ``pipe`` as ``spec`` says (default: ``params.capture``'s defaults)."""
    return AttentionCapture(pipe, spec, class_prompts)


__all__ = ["AttentionCapture", "AttentionLayer", "capture"]

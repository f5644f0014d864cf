"""``capture(pipe, spec)``: record attention maps while a diffusers pipeline generates.

    with capture(pipe, CaptureSpec.from_params(params.capture)) as rec:
        out = pipe(prompts, generator=[torch.Generator().manual_seed(s) for s in seeds], output_type="np")
    maps = rec.maps()          # an AttentionMaps, on the CPU

Like DAAM's ``trace``, it works through public hooks only: a forward pre-hook on the UNet knows
the step (its call count within the scheduler's timesteps), the image size and the CFG layout; at
the first step of each generation it puts :class:`CaptureAttnProcessor` (``Attention.set_processor``)
on exactly the layers whose kind, block and resolution are asked for, and records only steps inside
the window. A pre-hook on the text encoder keeps the token ids the model saw, for look-up by word.
On exit, also when generation raises, the original processors are restored with
``unet.set_attn_processor`` and the hooks removed.

One generation is kept: a second ``pipe(...)`` call inside the same block starts new maps.
With ``class_prompts`` (one per sample) cross-attention maps are taken against the separately
encoded class prompt ("person horse") while the image is generated from the caption, unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.models.attention_processor import Attention

from dmutils.attention.maps import AttentionMaps
from dmutils.attention.processors import CaptureAttnProcessor
from dmutils.attention.spec import CaptureSpec
from dmutils.attention.state import CaptureState


@dataclass(frozen=True)
class AttentionLayer:
    """One attention layer of a UNet: ``level`` 0 is the full latent resolution."""

    name: str
    block: str  # down / mid / up
    level: int
    kind: str  # cross / self
    module: Attention


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


def _side(latent: int, level: int) -> int:
    """Map side at ``level``: each Downsample2D (3x3, stride 2, padding 1) gives ceil(side / 2)."""
    for _ in range(level):
        latent = (latent + 1) // 2
    return latent


class AttentionCapture:
    """The context manager behind :func:`capture`; ``rec.maps()`` after generation."""

    def __init__(self, pipe, spec: CaptureSpec | None = None, class_prompts: list[str] | None = None) -> None:
        if spec is None:
            from dmutils.params import CaptureParams

            spec = CaptureSpec.from_params(CaptureParams())
        self.pipe, self.spec = pipe, spec
        self.unet = pipe.unet
        self.layers = [layer for layer in attention_layers(self.unet) if layer.block in self.spec.blocks]
        if not self.layers:
            raise ValueError(f"the UNet has no attention layers in blocks {self.spec.blocks}")
        self.text_encoder, self.tokenizer = next(
            ((getattr(pipe, e, None), getattr(pipe, t, None)) for e, t in (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2"))
             if getattr(pipe, e, None) is not None), (None, getattr(pipe, "tokenizer", None)))
        if class_prompts is not None and (isinstance(class_prompts, str) or not class_prompts
                                          or not all(isinstance(p, str) and p.strip() for p in class_prompts)):
            raise ValueError("class_prompts must be a non-empty list of non-empty strings, one per prompt, "
                             "e.g. ['person horse', 'dog']")
        self.class_prompts = list(class_prompts) if class_prompts is not None else None
        self.state = CaptureState(head_reduce=self.spec.head_reduce)
        self._encoded: list[torch.Tensor] = []  # token ids of every text-encoder call since the last generation began
        self.prompt_ids: torch.Tensor | None = None
        self._originals = None
        self._hooks: list = []
        self._window: set[int] = set()
        self._class_embeds: torch.Tensor | None = None  # (len(class_prompts), 77, D)

    # -- context ------------------------------------------------------------------------------
    def __enter__(self) -> "AttentionCapture":
        if self.class_prompts is not None:  # before the hooks: these ids are not the caption's
            with torch.no_grad():
                embeds = self.pipe.encode_prompt(prompt=self.class_prompts, device=self.unet.device, num_images_per_prompt=1,
                                                 do_classifier_free_guidance=False)[0]
            self._class_embeds = embeds.to(self.unet.dtype)
        self._originals = dict(self.unet.attn_processors)
        self._hooks.append(self.unet.register_forward_pre_hook(self._on_unet, with_kwargs=True))
        if self.text_encoder is not None:
            self._hooks.append(self.text_encoder.register_forward_pre_hook(self._on_text_encoder, with_kwargs=True))
        return self

    def __exit__(self, *exc) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        self.unet.set_attn_processor(dict(self._originals))
        self.state.recording = False

    # -- hooks --------------------------------------------------------------------------------
    def _on_text_encoder(self, module, args, kwargs) -> None:
        ids = args[0] if args else kwargs.get("input_ids")
        if ids is not None:
            self._encoded.append(ids.detach().cpu())

    def _on_unet(self, module, args, kwargs) -> None:
        sample = args[0] if args else kwargs["sample"]
        t = args[1] if len(args) > 1 else kwargs["timestep"]
        timesteps = self.pipe.scheduler.timesteps
        state = self.state
        first = timesteps is not None and len(timesteps) and float(torch.as_tensor(t).flatten()[0]) == float(timesteps[0])
        if state.step < 0 or first or state.step + 1 >= state.num_steps:
            self._start_generation(sample, len(timesteps))
        else:
            state.step += 1
        state.recording = state.step in self._window
        if state.recording:
            state.steps_recorded.append(state.step)

    def _start_generation(self, sample: torch.Tensor, num_steps: int) -> None:
        """Plan a new generation before its first UNet step: check the request, install processors."""
        state, spec = self.state, self.spec
        state.reset()
        state.step, state.num_steps = 0, num_steps
        self._window = set(spec.steps(num_steps))
        if not self._window:
            raise ValueError(f"timestep_window {spec.timestep_window} holds none of the {num_steps} steps; widen it "
                             f"or use more steps")
        batch = sample.shape[0]
        cfg = bool(getattr(self.pipe, "do_classifier_free_guidance", False))
        state.cond = slice(batch // 2, batch) if cfg else slice(0, batch)
        samples = batch - state.cond.start
        self.prompt_ids, self._encoded = (self._encoded[0] if self._encoded else None), []
        if self._class_embeds is not None:
            n = len(self.class_prompts)
            if samples % n:
                raise ValueError(f"{n} class_prompts for {samples} samples: give one class prompt per prompt")
            state.class_context = self._class_embeds.repeat_interleave(samples // n, dim=0)
        latent_h, latent_w = sample.shape[-2:]
        available = {kind: sorted({_side(latent_h, layer.level) for layer in self.layers if layer.kind == kind}, reverse=True)
                     for kind in ("cross", "self")}
        for kind in ("cross", "self"):
            missing = sorted(set(spec.resolutions(kind)) - set(available[kind]))
            if missing:
                raise ValueError(f"{kind}-attention resolution(s) {missing} do not exist for a {latent_h}x{latent_w} latent in "
                                 f"blocks {spec.blocks}; available: {available[kind]} (map side = latent side / 2**level)")
        self.unet.set_attn_processor(dict(self._originals))
        for layer in self.layers:
            h = _side(latent_h, layer.level)
            if h in spec.resolutions(layer.kind):
                original = self._originals[f"{layer.name}.processor"]
                layer.module.set_processor(CaptureAttnProcessor(state, layer.kind, h, original))
                state.shapes[(layer.kind, h)] = (h, _side(latent_w, layer.level))

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
                cross[res] = mean.transpose(1, 2).reshape(mean.shape[0], mean.shape[2], h, w)
            else:
                self_attn[res] = mean
        samples = next(iter(state.sums.values())).shape[0]
        if self.class_prompts is not None:
            texts, ids = _repeat(self.class_prompts, samples), None
        else:
            texts = _repeat(list(prompts), samples) if prompts is not None else None
            ids = self.prompt_ids.repeat_interleave(samples // self.prompt_ids.shape[0], 0) if self.prompt_ids is not None else None
        return AttentionMaps(cross=cross, self_attention=self_attn, tokenizer=self.tokenizer, prompts=texts, token_ids=ids,
                             steps=list(state.steps_recorded), num_steps=state.num_steps,
                             resolution_weights=self.spec.resolution_weights, token_reduce=self.spec.token_reduce)

    @property
    def nbytes(self) -> int:
        """Bytes of the capture state now (the running sums)."""
        return self.state.nbytes


def _repeat(texts: list[str], samples: int) -> list[str]:
    if samples % len(texts):
        raise ValueError(f"{len(texts)} prompts for {samples} samples: give one prompt per sample")
    k = samples // len(texts)
    return [t for t in texts for _ in range(k)]


def capture(pipe, spec: CaptureSpec | None = None, class_prompts: list[str] | None = None) -> AttentionCapture:
    """Context manager: record attention of ``pipe`` as ``spec`` says (default: ``params.capture``'s defaults)."""
    return AttentionCapture(pipe, spec, class_prompts)

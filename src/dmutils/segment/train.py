"""Train a segmenter on one or more datasets: ``dmutils train params.yaml --data real|synthetic|both``.

Every batch is a function of (seed, step) only (``data.make_batch``) and the global RNG is reseeded
per step, so a run interrupted and resumed from its checkpoint ends with the same weights as an
uninterrupted one. AdamW with linear warmup then poly or cosine decay; optional EMA of weights;
mixed precision on CUDA only.

Several processes (``accelerate launch --multi_gpu -m dmutils train ...``, or ``torchrun -m dmutils train``, also
on CPUs): data-parallel with
accelerate's DDP. Every process draws the same global batch of ``train.batch_size`` for the step and
trains on its own slice; DDP averages the gradients, so the run follows the one-process run (up to
float reduction order and per-process BatchNorm statistics). Only the main process writes; checkpoints
hold the plain model, so a run resumes under any process count.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dmutils.config import Params
from dmutils.errors import DataError, DataNotFoundError, Interrupted, ParamsError
from dmutils.paths import atomic_write_bytes
from dmutils.progress import progress_bar
from dmutils.segment.data import (
    SegmentationDataset,
    TensorCache,
    check_same_classes,
    make_batch,
)
from dmutils.segment.models import (
    BACKBONE_STAGES,
    Segmenter,
    backbone_of,
    build_segmenter,
)


@dataclass
class TrainResult:
    segmenter: Segmenter  # the EMA weights when EMA is on
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    out_dir: Path | None = None


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ParamsError(f"train.device={name!r} but CUDA is not available here; use 'auto' or 'cpu'")
    return torch.device(name)


def distributed(train) -> "Accelerator | None":  # noqa: F821
    """An accelerate ``Accelerator`` when several processes were launched (WORLD_SIZE > 1), else None.
    CPU processes talk over gloo, GPU ones over NCCL (accelerate's choice)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate import Accelerator, DistributedDataParallelKwargs

    cpu = train.device == "cpu" or not torch.cuda.is_available()
    # Mask2Former's matcher can leave heads without a gradient in a step
    kwargs = DistributedDataParallelKwargs(find_unused_parameters=train.architecture == "mask2former")
    return Accelerator(cpu=cpu, kwargs_handlers=[kwargs])


class _LossOf(torch.nn.Module):
    """DDP syncs gradients for what runs through its forward: the segmenter's loss, here."""

    def __init__(self, seg: Segmenter):
        super().__init__()
        self.seg = seg

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.seg.loss(x, y)


def _scheduler(opt: torch.optim.Optimizer, train) -> torch.optim.lr_scheduler.LRScheduler:
    from transformers import get_scheduler

    name, kw = ("polynomial", {"power": 0.9}) if train.schedule == "poly" else ("cosine", {})
    return get_scheduler(name, opt, num_warmup_steps=int(train.warmup_fraction * train.steps),
                         num_training_steps=train.steps, scheduler_specific_kwargs=kw)


def param_groups(seg: Segmenter, train) -> list[dict]:
    """One group, or the backbone at ``train.backbone_lr_mult`` x lr and the rest at lr (the papers' recipes keep
    an ImageNet backbone at a tenth of the head's rate)."""
    if train.backbone_lr_mult == 1.0 or train.architecture not in BACKBONE_STAGES:
        return [{"params": list(seg.parameters())}]
    backbone = {id(p) for p in backbone_of(seg.model).parameters()}
    return [{"params": [p for p in seg.parameters() if id(p) in backbone], "lr": train.lr * train.backbone_lr_mult},
            {"params": [p for p in seg.parameters() if id(p) not in backbone]}]


def train_segmenter(params: Params, datasets: SegmentationDataset | list, out_dir: str | Path | None = None,
                    resume: bool = False, progress: bool = True) -> TrainResult:
    """Train ``params.train`` on the concatenation of ``datasets`` (same class lists).

    With ``out_dir`` a checkpoint is written every ``train.checkpoint_every`` steps and on Ctrl-C,
    and the final model goes to ``out_dir/model`` (``load_segmenter`` reads it); ``resume=True``
    continues from ``out_dir/checkpoint.pt``.
    """
    train, seed = params.train, params.run.seed
    datasets = datasets if isinstance(datasets, (list, tuple)) else [datasets]
    if not datasets or any(len(d) == 0 for d in datasets):
        raise DataError("every training dataset must hold at least one sample; check the split files")
    classes = check_same_classes(datasets)
    acc = distributed(train)
    rank, world = (acc.process_index, acc.num_processes) if acc else (0, 1)
    if train.batch_size % world:
        raise ParamsError(f"train.batch_size={train.batch_size} does not split over {world} processes; "
                          f"use a multiple of {world} (the global batch is the same whatever the process count)")
    main = rank == 0
    device = (acc.device if acc.device.type == "cuda" else torch.device("cpu")) if acc else pick_device(train.device)
    out = Path(out_dir) if out_dir is not None else None
    ckpt_path = out / "checkpoint.pt" if out else None
    if resume and not (ckpt_path and ckpt_path.is_file()):
        raise DataNotFoundError(f"nothing to resume: {ckpt_path} not found (drop --resume to start afresh)")

    data = torch.utils.data.ConcatDataset([TensorCache(d, train.image_size) if train.cache else d for d in datasets])
    torch.manual_seed(seed)
    seg = build_segmenter(train, classes).to(device)
    loss_of = acc.prepare_model(_LossOf(seg)) if acc else _LossOf(seg)
    # foreach: one fused update over all parameter tensors (the default only does this on CUDA)
    opt = torch.optim.AdamW(param_groups(seg, train), lr=train.lr, weight_decay=train.weight_decay, foreach=True)
    sched = _scheduler(opt, train)
    ema = (torch.optim.swa_utils.AveragedModel(seg, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(train.ema),
                                               use_buffers=True) if train.ema else None)
    amp = train.amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=amp and amp_dtype == torch.float16)
    digest = params.digest("train") + f"-{seed}-{[len(d) for d in datasets]}"

    start, losses, seconds = 0, [], 0.0
    if resume:
        state = torch.load(ckpt_path, map_location=device, weights_only=False)
        if state["digest"] != digest:
            raise ParamsError(f"{ckpt_path} was written with other train params, seed or data; "
                              "use the same ones to resume, or a new --out to start afresh")
        seg.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        start, losses, seconds = state["step"], state["losses"], state["seconds"]

    def checkpoint(step: int) -> None:
        if ckpt_path is None or not main:
            return
        import io

        buf = io.BytesIO()
        torch.save({"step": step, "model": seg.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "scaler": scaler.state_dict(), "ema": ema.state_dict() if ema else None, "losses": losses,
                    "seconds": seconds + time.perf_counter() - t0, "digest": digest}, buf)
        atomic_write_bytes(ckpt_path, buf.getvalue())

    seg.train()
    t0 = time.perf_counter()
    bar = progress_bar(range(start, train.steps), initial=start, total=train.steps, desc=f"train {train.architecture}",
                       disable=not progress or not main, leave=False)
    part = slice(rank * train.batch_size // world, (rank + 1) * train.batch_size // world)
    done = start
    try:
        for step in bar:
            x, y = make_batch(data, step, train.batch_size, train.image_size, seed, train.scale_range, train.flip,
                              train.photometric)
            torch.manual_seed(seed + step)  # dropout / point sampling: same per step on resume
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp):
                loss = loss_of(x[part].to(device), y[part].to(device))
            logged = acc.reduce(loss.detach(), "mean") if acc else loss.detach()  # the global batch's loss
            if not torch.isfinite(logged):
                raise FloatingPointError(f"loss is {loss.item()} at step {step}; lower train.lr (now {train.lr})")
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            if ema is not None:
                ema.update_parameters(seg)
            losses.append(logged.item())
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
            done = step + 1
            if done % train.checkpoint_every == 0 and done < train.steps:
                checkpoint(done)
    except KeyboardInterrupt:
        checkpoint(done)
        if ckpt_path is None or not main:
            raise
        raise Interrupted(f"re-run with --resume to continue from the checkpoint at step {done} of {train.steps} "
                          f"({ckpt_path})") from None
    seconds += time.perf_counter() - t0
    final = ema.module if ema is not None else seg
    final.eval()
    if out is not None and main:
        checkpoint(train.steps)
        final.save(out / "model")
        log = {"steps": train.steps, "seconds": seconds, "losses": losses, "seed": seed,
               "datasets": [str(getattr(d, "root", type(d).__name__)) for d in datasets],
               "params": params.model_dump(mode="json")}
        atomic_write_bytes(out / "train_log.json", json.dumps(log | {"processes": world}).encode())
    if acc:
        acc.wait_for_everyone()
    return TrainResult(final, losses, seconds, out)

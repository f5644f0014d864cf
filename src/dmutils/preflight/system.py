"""The machine: output folders writable, free disk against an estimate of the dataset's size, the device
(CUDA asked and not there; GPU memory against the weights' bytes)."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

from dmutils.config import Params
from dmutils.paths import nearest_existing, writable_problem
from dmutils.preflight.core import Outcome, human_size
from dmutils.preflight.model import (
    DTYPE_BYTES,
    default_image_size,
    model_folder,
    model_weight_files,
    parameter_count,
)

# Bytes per pixel of what generation writes, for the disk estimate (an upper-side guess, not a measurement of SD output):
# `dmutils render-toy` at 256 px wrote JPEG q95 4:4:4 at 0.26 B/px and palette PNG labels at 0.02 B/px (40 scenes);
# photos compress worse, so the estimate assumes about 4x and 7x that.
JPEG_BYTES_PER_PIXEL = 1.0


LABEL_BYTES_PER_PIXEL = 0.15


DISK_WARN_FRACTION = 0.9  # a dataset that leaves under 10% of its disk free is warned about


GPU_WARN_FRACTION = 0.8  # weights above this share of free GPU memory leave little room for activations


# ---------------------------------------------------------------------------------------------
# outputs
# ---------------------------------------------------------------------------------------------


def estimate_dataset_bytes(params: Params, side: int | None = None, samples: int | None = None) -> int:
    """Bytes ``dmutils generate`` writes for ``samples`` (default ``dataset.num_samples``): image, label and
    saved maps per sample."""
    h = params.model.height or side or 512
    w = params.model.width or side or 512
    per = h * w * (JPEG_BYTES_PER_PIXEL + LABEL_BYTES_PER_PIXEL)
    if params.dataset.save_maps:
        named = max(params.prompts.classes_per_image)
        per += 2 * named * sum(r * r for r in params.capture.cross_resolutions)  # float16 (C, r, r)
        if params.masks.refine == "self_attention" and params.masks.tau > 0:  # as dmutils.masks.refine.uses_self_attention
            per += 2 * sum(r**4 for r in params.capture.self_resolutions)  # float16 (r*r, r*r)
    return int(per * (params.dataset.num_samples if samples is None else samples))


def _samples_done(root: Path) -> int:
    """Samples a resumed generation will skip: the lines of the folder's manifest."""
    manifest = root / "manifest.jsonl"
    try:
        with open(manifest, "rb") as f:
            return sum(1 for _ in f)
    except OSError:
        return 0


def output_dirs(params: Params) -> dict[str, Path]:
    """The folders ``dmutils run`` (and ``dmutils train`` by default) write, by the param that names them."""
    return {"dataset.out_dir": params.resolve_path(params.dataset.out_dir),
            "run.reports_dir": params.resolve_path(params.run.reports_dir) / params.run.name,
            "train --out": params.resolve_path("data/{run}")}


def check_outputs(params: Params, dirs: dict[str, Path] | None = None, samples: int | None = None) -> Outcome:
    """Each output folder is writable, and the dataset's disk has room for the samples still to write
    (of ``samples``, default ``dataset.num_samples``; a shard writes fewer)."""
    out = Outcome()
    dirs = output_dirs(params) if dirs is None else dirs
    for what, path in dirs.items():
        problem = writable_problem(path, what)
        if problem:
            out.error(problem)
    summary = [", ".join(str(p) for p in dirs.values())]
    if "dataset.out_dir" in dirs and out.ok:
        root = dirs["dataset.out_dir"]
        todo = max(0, (params.dataset.num_samples if samples is None else samples) - _samples_done(root))
        need = estimate_dataset_bytes(params, default_image_size(model_folder(params)[0]), todo)
        where = nearest_existing(root)
        free = shutil.disk_usage(where).free
        summary.append(f"dataset ~{human_size(need)}, {human_size(free)} free")
        if need > free:
            out.error(f"dataset.out_dir {root}: {todo} samples to generate need about "
                      f"{human_size(need)} but {where} has {human_size(free)} free; free space, lower dataset.num_samples, "
                      "set dataset.save_maps=false, or choose another dataset.out_dir")
        elif need > DISK_WARN_FRACTION * free:
            out.warning(f"dataset.out_dir: the dataset (~{human_size(need)}) would leave under 10% of {where}'s "
                        f"{human_size(free)} free")
    out.summary = "; ".join(summary)
    return out


# ---------------------------------------------------------------------------------------------
# device
# ---------------------------------------------------------------------------------------------
def _maybe_cuda() -> bool:
    """False when a Linux machine shows no NVIDIA driver: for device 'auto' torch need not be imported to know."""
    if sys.platform.startswith("linux"):
        return Path("/proc/driver/nvidia/version").exists() or any(Path("/dev").glob("nvidia[0-9]*"))
    return sys.platform != "darwin"


def _cuda_available(asked_explicitly: bool = True) -> bool:
    """torch's answer; for 'auto' alone the cheap driver look-up may answer first (WSL and the like have
    no /dev/nvidia*, so an explicit 'cuda' always asks torch)."""
    if not asked_explicitly and not _maybe_cuda():
        return False
    import torch

    return torch.cuda.is_available()


CPU_WARN_PARAMS = 1_000_000_000  # above this a CPU takes many minutes to hours per image


def _warn_big_model_on_cpu(params: Params, out: Outcome) -> None:
    folder = model_folder(params)[0]
    if folder is None:
        return
    try:
        n = parameter_count(model_weight_files(folder))
    except Exception:  # the model check names what is wrong with the files
        return
    if n > CPU_WARN_PARAMS:
        out.warning(f"model.device -> cpu for a {n / 1e9:.1f}-billion-parameter model: expect many minutes to hours per "
                    "image; run on a GPU (model.device=cuda) or try a small model first")


def check_device(params: Params, which: tuple[str, ...] = ("model", "train")) -> Outcome:
    """``model.device`` / ``train.device``: CUDA asked but absent is an error; on CUDA the model's
    weights (safetensors sizes at ``model.dtype``) against free GPU memory."""
    out = Outcome()
    asked = {f"{w}.device": getattr(params, w).device for w in which}
    wants_cuda = {k: v for k, v in asked.items() if v.startswith("cuda") or v == "auto"}
    cuda = _cuda_available(any(v != "auto" for v in wants_cuda.values())) if wants_cuda else False
    for key, dev in wants_cuda.items():
        if dev != "auto" and not cuda:
            out.error(f"{key}={dev!r} but CUDA is not available here; use --set {key}=auto (or cpu)")
    used = {k: ("cuda" if v == "auto" else v) if cuda else "cpu" if v == "auto" else v for k, v in asked.items()}
    out.summary = ", ".join(f"{k} {v} -> {used[k]}" for k, v in asked.items())
    model_dev = used.get("model.device", "")
    if model_dev == "cpu":
        _warn_big_model_on_cpu(params, out)
    if cuda and model_dev.startswith("cuda") and out.ok:
        import torch

        folder = model_folder(params)[0]
        if folder is None:
            return out  # the model check reports it
        try:
            need = parameter_count(model_weight_files(folder)) * DTYPE_BYTES[params.model.dtype]
        except Exception:  # the model check names what is wrong with the files
            return out
        index = torch.device(model_dev).index or 0
        if index >= torch.cuda.device_count():
            return out.error(f"model.device={model_dev!r} but this machine has {torch.cuda.device_count()} GPU(s); use cuda:0..")
        free, total = torch.cuda.mem_get_info(index)
        out.summary += f"; weights {human_size(need)} in {params.model.dtype}, GPU {index} {human_size(free)} of {human_size(total)} free"
        if need > free:
            out.error(f"model weights need {human_size(need)} in {params.model.dtype} but GPU {index} has {human_size(free)} free; "
                      "use model.dtype=float16 or bfloat16, free the GPU, or pick another with model.device=cuda:N")
        elif need > GPU_WARN_FRACTION * free:
            out.warning(f"model weights ({human_size(need)} in {params.model.dtype}) take over {GPU_WARN_FRACTION:.0%} of GPU {index}'s "
                        f"{human_size(free)} free; generation may run out of memory (lower dataset.batch_size or use float16)")
    return out

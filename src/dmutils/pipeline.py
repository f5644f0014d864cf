"""Load the diffusion pipeline that generates: ``pipe = load_pipeline(params.model)``.

``from_pretrained`` of a local diffusers folder or a hub id (``use_safetensors=True``), the
pipeline class by ``params.model.family`` (sd: StableDiffusionPipeline, sdxl:
StableDiffusionXLPipeline), no safety checker, the scheduler replaced by class name when
``params.model.scheduler`` is set. A model that is not there fails before anything is loaded, with
what was looked for and how to get it.
"""
from __future__ import annotations

import difflib
from pathlib import Path

import torch

from dmutils.params import REPO_ROOT, ModelParams, ParamsError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class ModelNotFoundError(ParamsError, FileNotFoundError):
    """The model folder or hub id in ``model.path`` cannot be loaded; the message says how to fix it."""


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """'auto' (or None) -> cuda when available, else cpu."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _is_local(path: str) -> bool:
    """A local path rather than a hub id ('org/name')."""
    p = Path(path)
    return p.is_absolute() or path.startswith((".", "~")) or len(p.parts) != 2 or (REPO_ROOT / p.parts[0]).is_dir()


def _locate(path: str) -> str:
    """The folder to load, or the hub id; raises ModelNotFoundError for a missing folder."""
    candidates = [Path(path).expanduser(), REPO_ROOT / path]
    for folder in candidates:
        if folder.is_dir():
            if not (folder / "model_index.json").is_file():
                raise ModelNotFoundError(f"model.path {path!r}: {folder} is not a diffusers pipeline folder (no model_index.json); "
                                         f"save one with pipe.save_pretrained({str(folder)!r})")
            return str(folder)
    if _is_local(path):
        looked = " and ".join(str(c) for c in dict.fromkeys(candidates))
        raise ModelNotFoundError(f"model.path {path!r}: no such folder (looked in {looked}); download it, e.g. "
                                 f"`huggingface-cli download <hub id> --local-dir {path}`, or set model.path to an existing folder")
    return path


def bind_pil_image_processors() -> None:
    """Import-time quiet for diffusers' pipelines without torchvision (which nothing here needs).

    Every Stable Diffusion pipeline class imports diffusers' IP-Adapter loader, which imports transformers'
    ``CLIPImageProcessor`` and ``SiglipImageProcessor``; transformers 5 then falls back to their PIL classes
    and prints a warning for each, on every run. No image encoder is ever loaded here, so this binds the PIL
    classes first, which is what that fallback does, minus the warning. With torchvision it does nothing.
    """
    import sys

    from transformers.utils import is_torchvision_available

    if is_torchvision_available():
        return
    for name in ("CLIPImageProcessor", "SiglipImageProcessor"):
        pil = getattr(sys.modules["transformers"], f"{name}Pil", None)  # transformers < 5: no PIL classes, no warning
        if pil is not None:  # sys.modules, not an imported name: transformers replaces its lazy module on first use
            setattr(sys.modules["transformers"], name, pil)


def load_pipeline(model: ModelParams | str | Path, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None,
                  progress: bool = False):
    """A ready pipeline on ``device`` in ``dtype`` (defaults: those of ``model``; a bare path gets
    family 'sd', 'auto' device, float32)."""
    params = model if isinstance(model, ModelParams) else ModelParams(path=str(model))
    bind_pil_image_processors()
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    scheduler_cls = scheduler_class(params.scheduler) if params.scheduler else None
    source = _locate(params.path)
    dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype or DTYPES[params.dtype]
    device = resolve_device(device or params.device)
    cls, extra = (StableDiffusionXLPipeline, {}) if params.family == "sdxl" else (
        StableDiffusionPipeline, {"safety_checker": None, "requires_safety_checker": False})
    try:
        pipe = cls.from_pretrained(source, dtype=dtype, use_safetensors=True, **extra)
    except (OSError, ValueError) as e:
        where = f"folder {source}" if Path(source).is_dir() else f"hub id {source!r} (this machine may be offline)"
        raise ModelNotFoundError(f"model.path: cannot load {cls.__name__} from {where}: {str(e).splitlines()[0]}; download it "
                                 f"with `huggingface-cli download {params.path} --local-dir models/<name>` and set model.path "
                                 f"to that folder (safetensors weights are required)") from None
    if scheduler_cls is not None:
        pipe.scheduler = scheduler_cls.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=not progress)
    return pipe.to(device)


def scheduler_class(name: str) -> type:
    """A diffusers scheduler class by name (``model.scheduler``)."""
    import diffusers
    from diffusers import SchedulerMixin

    names = [n for n in dir(diffusers) if n.endswith("Scheduler") and n != "SchedulerMixin"]
    cls = getattr(diffusers, name, None)
    if not (isinstance(cls, type) and issubclass(cls, SchedulerMixin)):
        near = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        raise ParamsError(f"model.scheduler {name!r} is not a diffusers scheduler" + (f"; did you mean {near}?" if near else
                          f"; e.g. DDIMScheduler, EulerDiscreteScheduler, DPMSolverMultistepScheduler"))
    return cls

"""Load the diffusion pipeline that generates: ``pipe = load_pipeline(params.model)``.

``from_pretrained`` of a local diffusers folder or a hub id (``use_safetensors=True``), the
pipeline class by ``params.model.family`` (:data:`FAMILIES`: sd, sdxl, sd3 (SD3 and SD3.5), flux,
pixart (PixArt-Sigma), sana, flux2, flux2-klein, qwenimage, chroma, cogview4, lumina2, hidream, zimage,
hunyuanimage; ``auto``: the class named by the folder's ``model_index.json``
``_class_name``, or diffusers' own choice for a hub id), no safety checker, the scheduler replaced by
class name when ``params.model.scheduler`` is set. A model that is not there fails before anything is loaded, with
what was looked for and how to get it.
"""
from __future__ import annotations

import contextlib
import difflib
import inspect
import json
from pathlib import Path

import torch

from dmutils.config import ModelParams
from dmutils.errors import ParamsError
from dmutils.paths import REPO_ROOT

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
FAMILIES = {"sd": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline", "sd3": "StableDiffusion3Pipeline",
            "flux": "FluxPipeline", "pixart": "PixArtSigmaPipeline", "sana": "SanaPipeline", "flux2": "Flux2Pipeline",
            "flux2-klein": "Flux2KleinPipeline", "qwenimage": "QwenImagePipeline",
            "chroma": "ChromaPipeline", "cogview4": "CogView4Pipeline", "lumina2": "Lumina2Pipeline",
            "hidream": "HiDreamImagePipeline", "zimage": "ZImagePipeline",
            "hunyuanimage": "HunyuanImagePipeline"}


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
                                 f"`hf download <hub id> --local-dir {path}`, or set model.path to an existing folder")
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


@contextlib.contextmanager
def _loading_bars(show: bool):
    """diffusers' "Loading pipeline components" and transformers' checkpoint-shard bars: off unless ``show``
    (each library's switch, restored afterwards)."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    was = dlog.is_progress_bar_enabled(), tlog.is_progress_bar_enabled()
    if not show:
        dlog.disable_progress_bar()
        tlog.disable_progress_bar()
    try:
        yield
    finally:
        if was[0]:
            dlog.enable_progress_bar()
        if was[1]:
            tlog.enable_progress_bar()


def load_pipeline(model: ModelParams | str | Path, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None,
                  progress: bool = False):
    """A ready pipeline on ``device`` in ``dtype`` (defaults: those of ``model``; a bare path gets
    family 'sd', 'auto' device, float32)."""
    params = model if isinstance(model, ModelParams) else ModelParams(path=str(model))
    bind_pil_image_processors()
    scheduler_cls = scheduler_class(params.scheduler) if params.scheduler else None
    source = _locate(params.path)
    dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype or DTYPES[params.dtype]
    device = resolve_device(device or params.device)
    cls = pipeline_class(params.family, source)
    # a pipeline with a safety checker (SD 1.x/2.x) is loaded without one
    extra = {"safety_checker": None, "requires_safety_checker": False} if "safety_checker" in inspect.signature(cls).parameters else {}
    extra.update(_absent_components(source))
    try:
        with _loading_bars(progress):
            pipe = cls.from_pretrained(source, dtype=dtype, use_safetensors=True, **extra)
    except (OSError, ValueError) as e:
        where = f"folder {source}" if Path(source).is_dir() else f"hub id {source!r} (this machine may be offline)"
        raise ModelNotFoundError(f"model.path: cannot load {cls.__name__} from {where}: {str(e).splitlines()[0]}; download it "
                                 f"with `hf download {params.path} --local-dir models/<name>` and set model.path "
                                 f"to that folder (safetensors weights are required)") from None
    if scheduler_cls is not None:
        pipe.scheduler = scheduler_cls.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=not progress)
    return pipe.to(device)


def _class_name(folder: str) -> str | None:
    """``_class_name`` of a local pipeline folder's model_index.json (None for a hub id)."""
    index = Path(folder) / "model_index.json"
    if not index.is_file():
        return None
    name = json.loads(index.read_text()).get("_class_name")
    return name if isinstance(name, str) else None


def _absent_components(folder: str) -> dict[str, None]:
    """Components a local folder saved as absent (``[null, null]``, e.g. SD3 without its T5), passed
    as None: diffusers requires every non-optional component by name."""
    index = Path(folder) / "model_index.json"
    if not index.is_file():
        return {}
    return {k: None for k, v in json.loads(index.read_text()).items() if v == [None, None]}


def pipeline_class(family: str, source: str) -> type:
    """The diffusers pipeline class for ``model.family``; 'auto' takes the folder's ``_class_name``.
    A local folder whose pipeline is of another family than the one named is a ParamsError."""
    import diffusers

    if family not in FAMILIES and family != "auto":
        raise ParamsError(f"model.family {family!r} is not known; use 'auto' or one of {sorted(FAMILIES)}")
    saved = _class_name(source)
    if family == "auto":
        if saved is None:  # a hub id: diffusers reads its model_index.json itself
            return diffusers.DiffusionPipeline
        cls = getattr(diffusers, saved, None)
        if not (isinstance(cls, type) and issubclass(cls, diffusers.DiffusionPipeline)):
            raise ParamsError(f"model.path {source!r}: model_index.json names {saved!r}, which is not a diffusers pipeline "
                              f"class in diffusers {diffusers.__version__}; set model.family to one of {sorted(FAMILIES)}")
        return cls
    cls = getattr(diffusers, FAMILIES[family])
    if saved is not None and saved != cls.__name__:
        known = {v: k for k, v in FAMILIES.items()}
        hint = f"model.family: {known[saved]}" if saved in known else "model.family: auto"
        # an SD 1.x folder loads as SDXL's class only by mistake; pipelines of one family share their class
        raise ParamsError(f"model.family is {family!r} ({cls.__name__}) but {source} holds a {saved}; set {hint}")
    return cls


def scheduler_class(name: str) -> type:
    """A diffusers scheduler class by name (``model.scheduler``)."""
    import diffusers
    from diffusers import SchedulerMixin

    names = [n for n in dir(diffusers) if n.endswith("Scheduler") and n != "SchedulerMixin"]
    cls = getattr(diffusers, name, None)
    if not (isinstance(cls, type) and issubclass(cls, SchedulerMixin)):
        near = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        raise ParamsError(f"model.scheduler {name!r} is not a diffusers scheduler" + (f"; did you mean {near}?" if near else
                          "; e.g. DDIMScheduler, EulerDiscreteScheduler, DPMSolverMultistepScheduler"))
    return cls

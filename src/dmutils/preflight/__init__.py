"""``dmutils check PARAMS [--set k=v ...]``: what a run needs, checked in well under a second before hours of compute.

Each check is one small function ``check_x(params, ...) -> Outcome`` (a line saying what was found and
its problems); ``dmutils run``, ``generate`` and ``train`` call :func:`preflight` with the checks
they need, which raises one :class:`PreflightError` whose lines are the errors, each naming the
fix. Nothing is loaded: the model is checked from its files (``model_index.json``, configs,
safetensors headers), data from folder listings, split lists and one label per split, outputs by
writing and deleting a temp file. Hub ids are looked up in the local Hugging Face cache only
(``huggingface_hub.try_to_load_from_cache``: offline).

- model: ``model_index.json``; every component it lists (family-agnostic: SD, SDXL, SD3, Flux, PixArt,
  SANA read alike): its folder and config, the safetensors weights of weighted components (single
  file or sharded index), the tokenizer files.
- real data: one small function per ``real.kind`` in :data:`REAL_DATA_CHECKS` (a new kind is one
  more entry); unknown kinds are skipped with a note.
- outputs: the folders written are writable; free disk against an estimate of the dataset's size.
- device: CUDA asked and not there; on CUDA, GPU memory against the weights' bytes in ``model.dtype``.
"""
from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from dmutils.config import Params
from dmutils.errors import ParamsError, one_line
from dmutils.paths import REPO_ROOT, nearest_existing, writable_problem

WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "model.safetensors")
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "spiece.model", "tokenizer.model")
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
# Components our loader replaces instead of loading (dmutils.pipeline: safety_checker=None).
NOT_LOADED = {"safety_checker"}
# Bytes per pixel of what generation writes, for the disk estimate (an upper-side guess, not a measurement of SD output):
# `dmutils render-toy` at 256 px wrote JPEG q95 4:4:4 at 0.26 B/px and palette PNG labels at 0.02 B/px (40 scenes);
# photos compress worse, so the estimate assumes about 4x and 7x that.
JPEG_BYTES_PER_PIXEL = 1.0
LABEL_BYTES_PER_PIXEL = 0.15
DISK_WARN_FRACTION = 0.9  # a dataset that leaves under 10% of its disk free is warned about
GPU_WARN_FRACTION = 0.8  # weights above this share of free GPU memory leave little room for activations

Level = Literal["error", "warning", "note"]


class PreflightError(ParamsError):
    """One or more preflight checks failed; each line of the message is one error with its fix."""


@dataclass
class Problem:
    level: Level
    message: str


@dataclass
class Outcome:
    """What one check found: a one-line summary and its problems (none = ok)."""

    summary: str = ""
    problems: list[Problem] = field(default_factory=list)

    def error(self, message: str) -> "Outcome":
        self.problems.append(Problem("error", one_line(message)))
        return self

    def warning(self, message: str) -> "Outcome":
        self.problems.append(Problem("warning", one_line(message)))
        return self

    def note(self, message: str) -> "Outcome":
        self.problems.append(Problem("note", one_line(message)))
        return self

    @property
    def ok(self) -> bool:
        return not any(p.level == "error" for p in self.problems)


# ---------------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------------
def _looks_local(path: str) -> bool:
    """A local path rather than a hub id ('org/name'); the same rule as dmutils.pipeline (which imports torch)."""
    p = Path(path)
    return p.is_absolute() or path.startswith((".", "~")) or len(p.parts) != 2 or (REPO_ROOT / p.parts[0]).is_dir()


def _download_hint(repo_id: str) -> str:
    name = repo_id.rstrip("/").split("/")[-1]
    return (f"download it with `hf download {repo_id} --local-dir models/{name}` (huggingface_hub < 1.0: "
            f"`huggingface-cli download ...`) and add `--set model.path=models/{name}`")


def model_folder(params: Params) -> tuple[Path | None, str]:
    """The folder ``model.path`` loads from (a local folder, or the hub id's snapshot in the local
    HF cache) and where it came from; (None, why) when there is none."""
    path = params.model.path
    for folder in (Path(path).expanduser(), REPO_ROOT / path):
        if folder.is_dir():
            return folder, f"folder {folder}"
    if _looks_local(path):
        looked = " and ".join(dict.fromkeys(str(p) for p in (Path(path).expanduser().absolute(), REPO_ROOT / path)))
        return None, (f"model.path {path!r}: no such folder (looked in {looked}); set model.path to a diffusers pipeline "
                      f"folder, or download one, e.g. `hf download <hub id> --local-dir {path}`")
    from huggingface_hub import constants, try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(path, "model_index.json", cache_dir=constants.HF_HUB_CACHE)
    except ValueError as e:  # HFValidationError: not a well-formed 'org/name'
        return None, f"model.path {path!r} is neither a folder nor a valid hub id ({one_line(e)}); give a folder or 'org/name'"
    if isinstance(cached, str):
        return Path(cached).parent, f"hub id {path!r} from the local cache {Path(cached).parent}"
    return None, (f"model.path {path!r} is a hub id that is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}); "
                  f"{_download_hint(path)}")


def pipeline_components(folder: Path) -> tuple[str, dict[str, tuple[str, str]]]:
    """The pipeline class and ``{component: (library, class)}`` of ``model_index.json`` (null entries left out)."""
    index = json.loads((folder / "model_index.json").read_text())
    comps = {k: (v[0], v[1]) for k, v in index.items()
             if not k.startswith("_") and isinstance(v, list) and len(v) == 2 and v[0] and v[1]}
    return index.get("_class_name", "?"), comps


def component_kind(cls: str) -> str:
    """'scheduler', 'tokenizer', 'processor' or 'weights', from the class name model_index.json gives."""
    if cls.endswith("Scheduler"):
        return "scheduler"
    if "Tokenizer" in cls:
        return "tokenizer"
    if cls.endswith(("ImageProcessor", "FeatureExtractor")):
        return "processor"
    return "weights"


def weight_files(component: Path) -> list[Path] | str:
    """The safetensors files ``from_pretrained`` reads for a weighted component, or why there are none."""
    for name in WEIGHT_FILES:
        if (component / name).is_file():
            return [component / name]
    for name in WEIGHT_FILES:
        index = component / f"{name}.index.json"
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (ValueError, KeyError) as e:
                return f"{index} is not a valid shard index ({e}); re-download this component"
            missing = [s for s in shards if not (component / s).is_file()]
            if missing:
                return f"{component}: shards {missing[:3]}{' ...' if len(missing) > 3 else ''} listed in {index.name} are missing; re-download"
            return [component / s for s in shards]
    others = sorted(p.name for p in component.glob("*.safetensors"))
    if others:
        return (f"{component} has only {others[:3]} (a variant?), not {' or '.join(WEIGHT_FILES)}; rename or re-download "
                "the non-variant weights")
    if any(component.glob("*.bin")):
        return f"{component} has only PyTorch .bin weights; safetensors are required (re-download, or convert and save_pretrained)"
    return f"{component} has no weights ({' or '.join(WEIGHT_FILES)}, or a sharded .index.json); re-download this component"


def model_weight_files(folder: Path) -> list[Path]:
    """Every weight file the pipeline in ``folder`` loads (components with broken weights left out)."""
    _, comps = pipeline_components(folder)
    found = [weight_files(folder / n) for n, (_, c) in comps.items() if component_kind(c) == "weights" and n not in NOT_LOADED]
    return [f for files in found if isinstance(files, list) for f in files]


def parameter_count(files: list[Path]) -> int:
    """Number of parameters in safetensors files, from their headers (nothing is loaded)."""
    from safetensors import safe_open

    total = 0
    for f in files:
        with safe_open(str(f), framework="np") as st:
            for key in st.keys():
                n = 1
                for d in st.get_slice(key).get_shape():
                    n *= d
                total += n
    return total


def _check_component(folder: Path, name: str, cls: str, out: Outcome) -> list[Path]:
    """Problems of one component into ``out``; its weight files (empty when none or broken)."""
    comp = folder / name
    if not comp.is_dir():
        out.error(f"model {folder}: component folder '{name}' ({cls}) listed in model_index.json is missing; re-download the model")
        return []
    kind = component_kind(cls)
    if kind == "scheduler":
        if not (comp / "scheduler_config.json").is_file():
            out.error(f"model {comp}: no scheduler_config.json; re-download this component")
        return []
    if kind == "processor":
        if not (comp / "preprocessor_config.json").is_file():
            out.error(f"model {comp}: no preprocessor_config.json; re-download this component")
        return []
    if kind == "tokenizer":
        have = [f for f in TOKENIZER_FILES if (comp / f).is_file()]
        if not have:
            out.error(f"model {comp}: no tokenizer files (one of {', '.join(TOKENIZER_FILES)}); re-download this component")
        elif have == ["vocab.json"] and not (comp / "merges.txt").is_file() and "CLIP" in cls:
            out.error(f"model {comp}: vocab.json without merges.txt (a BPE tokenizer needs both); re-download this component")
        return []
    if not (comp / "config.json").is_file():
        out.error(f"model {comp}: no config.json; re-download this component")
    files = weight_files(comp)
    if isinstance(files, str):
        out.error(f"model {files}")
        return []
    try:
        parameter_count(files)  # reads every header: a truncated or corrupt download fails here, not after loading
    except Exception as e:  # safetensors raises its own error types
        out.error(f"model {comp}: weights unreadable ({one_line(e)}); re-download this component")
        return []
    return files


def check_model(params: Params) -> Outcome:
    """``model.path``: the pipeline folder (or cached hub snapshot) holds every file loading needs."""
    out = Outcome()
    folder, source = model_folder(params)
    if folder is None:
        return out.error(source)
    if not (folder / "model_index.json").is_file():
        return out.error(f"model.path {params.model.path!r}: {folder} is not a diffusers pipeline folder (no model_index.json); "
                         f"save one with pipe.save_pretrained({str(folder)!r})")
    try:
        cls, comps = pipeline_components(folder)
    except (ValueError, OSError) as e:
        return out.error(f"model {folder / 'model_index.json'} is unreadable ({one_line(e)}); re-download the model")
    files: list[Path] = []
    for name, (_, comp_cls) in comps.items():
        if name not in NOT_LOADED:
            files += _check_component(folder, name, comp_cls, out)
    size = sum(f.stat().st_size for f in files)
    out.summary = f"{cls} from {source}: {len(comps)} components, {_size(size)} of weights"
    return out


def default_image_size(folder: Path | None) -> int | None:
    """The side the pipeline generates by default: the denoiser's ``sample_size`` times the VAE's scale factor."""
    if folder is None:
        return None
    try:
        for denoiser in ("unet", "transformer"):
            cfg = folder / denoiser / "config.json"
            if cfg.is_file():
                sample = json.loads(cfg.read_text()).get("sample_size")
                vae = json.loads((folder / "vae" / "config.json").read_text())
                scale = 2 ** (len(vae.get("block_out_channels", [0] * 4)) - 1)
                return int(sample if isinstance(sample, int) else sample[0]) * scale
    except (OSError, ValueError, TypeError, IndexError):
        return None
    return None


# ---------------------------------------------------------------------------------------------
# transformers checkpoints (segmenter backbone, oracle)
# ---------------------------------------------------------------------------------------------
def checkpoint_problem(value: str, key: str) -> str | None:
    """Why the transformers checkpoint ``value`` (folder or hub id) named by param ``key`` cannot be loaded offline, or None."""
    for folder in (Path(value).expanduser(), REPO_ROOT / value):
        if folder.is_dir():
            if not (folder / "config.json").is_file():
                return f"{key} {value!r}: {folder} holds no config.json; give a folder written by save_pretrained"
            weights = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
            if not any((folder / w).is_file() for w in weights):
                return f"{key} {value!r}: {folder} holds no weights ({', '.join(weights)}); re-download it"
            return None
    if _looks_local(value):
        return f"{key} {value!r}: no such folder; set {key} to a folder written by save_pretrained, or to a hub id"
    from huggingface_hub import constants, try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(value, "config.json", cache_dir=constants.HF_HUB_CACHE)
    except ValueError as e:
        return f"{key} {value!r} is neither a folder nor a valid hub id ({one_line(e)})"
    if isinstance(cached, str):
        return None
    name = value.rstrip("/").split("/")[-1]
    return (f"{key} {value!r} is a hub id that is not in the local Hugging Face cache; download it with "
            f"`hf download {value} --local-dir models/{name}` and add `--set {key}=models/{name}`")


TOY_ORACLE = REPO_ROOT / "models" / "toy-oracle" / "model.safetensors"  # dmutils.oracles.toy_unet.DEFAULT_DIR (that module imports torch)


def check_checkpoints(params: Params, oracle: bool = True) -> Outcome:
    """``train.pretrained``, ``train.backbone`` (when set) and (``oracle``) the oracle the studies measure masks
    with (``oracle.model`` for a transformers oracle, the embedded toy oracle for 'toy'): there to load, offline."""
    named = {"train.pretrained": params.train.pretrained}
    if params.train.backbone is not None:
        named["train.backbone"] = params.train.backbone
    if oracle and params.oracle.kind == "transformers":
        named["oracle.model"] = params.oracle.model
    out = Outcome(", ".join(f"{k} {v or 'none (random init)'}" for k, v in named.items()) + (f", oracle {params.oracle.kind}" if oracle else ""))
    if oracle and params.oracle.kind == "toy" and not TOY_ORACLE.is_file():
        out.error(f"oracle.kind='toy' needs {TOY_ORACLE}; restore it with `git checkout models/toy-oracle` or re-make it with "
                  "`python -m dmutils.oracles.toy_unet`")
    for key, value in named.items():
        if value is None:
            if key == "oracle.model":
                out.error("oracle.kind='transformers' needs oracle.model (a segmentation checkpoint folder or hub id)")
            continue
        problem = checkpoint_problem(value, key)
        if problem:
            out.error(problem)
    return out


# ---------------------------------------------------------------------------------------------
# real data
# ---------------------------------------------------------------------------------------------
def _splits(params: Params, splits: list[str] | None = None) -> list[str]:
    """The splits to check: ``splits``, or all three that ``real`` names."""
    r = params.real
    return list(dict.fromkeys(splits if splits is not None else [r.train_split, r.val_split, r.test_split]))


def _split_key(params: Params, split: str) -> str:
    r = params.real
    return next(k for k in ("train_split", "val_split", "test_split") if getattr(r, k) == split)


def _check_first_sample(params: Params, split: str, image: Path, label: Path, read_label: Callable[[Path], object],
                        num_classes: int, out: Outcome) -> None:
    """A split's first sample: both files there, its label readable and its values within the class count."""
    kind = params.real.kind
    missing = [str(p) for p in (image, label) if not Path(p).is_file()]
    if missing:
        out.error(f"real data ({kind}, split {split!r}): {', '.join(missing)} listed but missing; fix the split list or the files")
        return
    try:
        values = sorted(set(read_label(label).ravel().tolist()) - {255})
    except (OSError, ValueError) as e:  # voc.read_label's DataError names the file and the fix
        out.error(f"real data: {one_line(e)}")
        return
    if values and values[-1] >= num_classes:
        out.error(f"real data ({kind}): {label} holds label {values[-1]} but the data has {num_classes} classes "
                  f"(0..{num_classes - 1}, 255 = ignore); is it a colour or instance PNG instead of class indices?")


def _compare_classes(params: Params, theirs: list[str], out: Outcome) -> None:
    """params.classes must name the data's classes in label order, or synthetic and real labels mean different things."""
    ours = params.class_names
    if ours != theirs:
        diff = next((f"#{i + 1} is {a!r} in params.classes but {b!r} in the data" for i, (a, b) in enumerate(zip(ours, theirs)) if a != b),
                    f"params.classes has {len(ours)} names, the data {len(theirs)}")
        out.warning(f"params.classes differ from the {params.real.kind} classes ({diff}): synthetic labels would not line up "
                    f"with the real ones; list the data's classes in its label order")


def _check_reader(params: Params, reader_name: str, how_to_get: str, names_in_data: Callable[[list[str]], list[str]],
                  splits: list[str] | None) -> Outcome:
    """Open each split with the project's reader (``dmutils.segment.data.<reader_name>``); check it has
    samples, its first sample's files, its first label's values against the class count, and the
    data's class names against ``params.classes``."""
    out = Outcome()
    root = params.resolve_path(params.real.root)
    if not root.is_dir():  # before importing the readers (torch): the common mistake costs no import
        return out.error(f"real.root {root} not found ({params.real.kind}); {how_to_get}, or --set real.root=<folder>")
    from dmutils.segment import data

    reader = getattr(data, reader_name)
    counts, classes = {}, None
    for split in _splits(params, splits):
        try:
            ds = reader(root, split)
        except (OSError, ValueError) as e:
            out.error(f"real data ({params.real.kind}, split {split!r}): {one_line(e)}")
            continue
        classes = list(ds.classes)
        counts[split] = len(ds)
        if not len(ds):
            out.error(f"real data ({params.real.kind}): split {split!r} under {root} has no samples; check the split list")
            continue
        _check_first_sample(params, split, *ds.items[0], ds.read_label, len(classes), out)
    if classes is not None:
        _compare_classes(params, names_in_data(classes), out)
    out.summary = f"{params.real.kind} at {root}: " + ", ".join(f"{s} {n}" for s, n in counts.items())
    return out


def check_voc_layout_real(params: Params, splits: list[str] | None = None) -> Outcome:
    """A folder this project wrote (``dmutils.data.voc`` layout + dataset.json), checked without the torch
    readers so the toy set-up's preflight stays well under a second."""
    from dmutils.data import voc

    out = Outcome()
    root = params.resolve_path(params.real.root)
    meta = root / "dataset.json"
    if not meta.is_file():
        return out.error(f"real.root {root} holds no dataset.json ({params.real.kind}); write it with `dmutils generate` or "
                         "`dmutils render-toy`, or --set real.root=<folder>")
    try:
        classes = json.loads(meta.read_text()).get("classes") or []
    except (OSError, ValueError) as e:
        return out.error(f"real data: {meta} is unreadable ({one_line(e)}); rewrite it or render the data again")
    if not classes:
        return out.error(f"real data: {meta} has no 'classes' list; add one (index = label value, 0 = background)")
    counts = {}
    for split in _splits(params, splits):
        try:
            ids = voc.read_split(root, split)
        except FileNotFoundError as e:
            out.error(f"real data ({params.real.kind}): {one_line(e)}; set real.{_split_key(params, split)} to one of them")
            continue
        counts[split] = len(ids)
        if not ids:
            out.error(f"real data ({params.real.kind}): split {split!r} under {root} has no samples; check the split list")
            continue
        _check_first_sample(params, split, root / voc.IMAGES / f"{ids[0]}.jpg", root / voc.LABELS / f"{ids[0]}.png",
                            voc.read_label, len(classes), out)
    _compare_classes(params, classes[1:] if classes[:1] == ["background"] else classes, out)
    out.summary = f"{params.real.kind} at {root}: " + ", ".join(f"{s} {n}" for s, n in counts.items())
    return out


def check_toy_real(params: Params, splits: list[str] | None = None) -> Outcome:
    root = params.resolve_path(params.real.root)
    if (root / "dataset.json").is_file():
        return check_voc_layout_real(params, splits)
    problem = writable_problem(root, "real.root")
    if problem:
        return Outcome().error(problem)
    return Outcome(f"toy at {root}: not there yet, rendered on first use ({params.real.toy_sizes})")


def check_voc_real(params: Params, splits: list[str] | None = None) -> Outcome:
    return _check_reader(params, "VOCDataset", "extract PASCAL VOC 2012's VOCtrainval_11-May-2012.tar (it unpacks to "
                         "VOCdevkit/VOC2012) so that this folder holds JPEGImages, SegmentationClass and ImageSets/Segmentation", lambda c: c[1:], splits)


def check_cityscapes_real(params: Params, splits: list[str] | None = None) -> Outcome:
    return _check_reader(params, "CityscapesDataset", "unzip leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip "
                         "(cityscapes-dataset.com) there, then run cityscapesscripts' createTrainIdLabelImgs", lambda c: c, splits)


def check_ade20k_real(params: Params, splits: list[str] | None = None) -> Outcome:
    return _check_reader(params, "ADE20KDataset", "unzip ADEChallengeData2016.zip (SceneParsing) so that this folder is or "
                         "holds ADEChallengeData2016/",
                         lambda c: c, splits)


def check_coco_real(params: Params, splits: list[str] | None = None) -> Outcome:
    """COCO 2017: ``annotations/instances_<split>.json`` and the image folder (checked by name, the JSON is not parsed)."""
    out = Outcome()
    root = params.resolve_path(params.real.root)
    if not root.is_dir():
        return out.error(f"real.root {root} not found (coco); extract COCO 2017 images and annotations_trainval2017.zip there, "
                         "or --set real.root=<folder>")
    found = []
    for split in _splits(params, splits):
        names = [split] if split.endswith("2017") else [split, f"{split}2017"]
        ann = next((a for a in (root / "annotations" / f"instances_{n}.json" for n in names) if a.is_file()), None)
        images = next((root / n for n in names if (root / n).is_dir()), None)
        if ann is None:
            out.error(f"real data (coco): no annotations/instances_{names[-1]}.json under {root}; extract annotations_trainval2017.zip there")
        if images is None:
            out.error(f"real data (coco): no image folder {names[-1]}/ under {root}; extract {names[-1]}.zip there")
        if ann is not None and images is not None:
            found.append(f"{split} {ann.name}")
    out.summary = f"coco at {root}: " + ", ".join(found)
    return out


# real.kind -> its check. A new kind is one function and one entry here.
REAL_DATA_CHECKS: dict[str, Callable[[Params, list[str] | None], Outcome]] = {
    "toy": check_toy_real, "voc_layout": check_voc_layout_real, "voc": check_voc_real,
    "cityscapes": check_cityscapes_real, "ade20k": check_ade20k_real, "coco": check_coco_real,
}


def check_real_data(params: Params, splits: list[str] | None = None) -> Outcome:
    """``real.kind`` / ``real.root``: the folders and split lists the readers open (``splits``, default all
    three of ``real``), and the class list."""
    check = REAL_DATA_CHECKS.get(params.real.kind)
    if check is None:
        return Outcome(f"{params.real.kind} at {params.real.root}").note(
            f"no preflight check for real.kind {params.real.kind!r}; not checked")
    return check(params, splits)


# ---------------------------------------------------------------------------------------------
# outputs
# ---------------------------------------------------------------------------------------------
def _size(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


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
        summary.append(f"dataset ~{_size(need)}, {_size(free)} free")
        if need > free:
            out.error(f"dataset.out_dir {root}: {todo} samples to generate need about "
                      f"{_size(need)} but {where} has {_size(free)} free; free space, lower dataset.num_samples, "
                      "set dataset.save_maps=false, or choose another dataset.out_dir")
        elif need > DISK_WARN_FRACTION * free:
            out.warning(f"dataset.out_dir: the dataset (~{_size(need)}) would leave under 10% of {where}'s "
                        f"{_size(free)} free")
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
        out.summary += f"; weights {_size(need)} in {params.model.dtype}, GPU {index} {_size(free)} of {_size(total)} free"
        if need > free:
            out.error(f"model weights need {_size(need)} in {params.model.dtype} but GPU {index} has {_size(free)} free; "
                      "use model.dtype=float16 or bfloat16, free the GPU, or pick another with model.device=cuda:N")
        elif need > GPU_WARN_FRACTION * free:
            out.warning(f"model weights ({_size(need)} in {params.model.dtype}) take over {GPU_WARN_FRACTION:.0%} of GPU {index}'s "
                        f"{_size(free)} free; generation may run out of memory (lower dataset.batch_size or use float16)")
    return out


# ---------------------------------------------------------------------------------------------
# running the checks
# ---------------------------------------------------------------------------------------------
CHECKS: dict[str, Callable[..., Outcome]] = {"model": check_model, "checkpoints": check_checkpoints, "real data": check_real_data,
                                             "outputs": check_outputs, "device": check_device}


def run_checks(params: Params, checks: dict[str, Callable[[Params], Outcome]] | None = None) -> dict[str, Outcome]:
    """Every check's outcome by name (the default: all of :data:`CHECKS`, what ``dmutils run`` needs)."""
    return {name: fn(params) for name, fn in (checks or CHECKS).items()}


def preflight(params: Params, checks: dict[str, Callable[[Params], Outcome]] | None = None, quiet: bool = False,
              warn_only: tuple[str, ...] = ()) -> dict[str, Outcome]:
    """Run the checks; raise :class:`PreflightError` (one line per error) when any fails. Errors of the
    checks in ``warn_only`` (what a partial run may not need) are warnings. Warnings go to stderr unless ``quiet``."""
    outcomes = run_checks(params, checks)
    for name in warn_only:
        if name in outcomes:
            outcomes[name].problems = [Problem("warning", p.message) if p.level == "error" else p for p in outcomes[name].problems]
    problems = [p for o in outcomes.values() for p in o.problems]
    if not quiet:
        for p in problems:
            if p.level == "warning":
                print(f"warning: {p.message}", file=sys.stderr)
    errors = [p.message for p in problems if p.level == "error"]
    if errors:
        raise PreflightError("\n".join(errors))
    return outcomes


def format_outcomes(outcomes: dict[str, Outcome]) -> str:
    """One line per check (ok / FAIL, what it found), then one indented line per problem."""
    width = max(map(len, outcomes))
    lines = []
    for name, o in outcomes.items():
        lines.append(f"{'ok' if o.ok else 'FAIL':<4}  {name:<{width}}  {o.summary}".rstrip())
        lines += [f"      {p.level}: {p.message}" for p in o.problems]
    return "\n".join(lines)

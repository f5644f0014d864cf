"""The model's files, checked without loading anything: ``model_index.json``, every component's folder and
config, the safetensors weights (single file or sharded index) and the tokenizer files; hub ids looked up in the
local Hugging Face cache only."""
from __future__ import annotations

import json
from pathlib import Path

from dmutils.config import Params
from dmutils.errors import one_line
from dmutils.paths import REPO_ROOT
from dmutils.preflight.core import Outcome, human_size

WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "model.safetensors")


TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "spiece.model", "tokenizer.model")
BYTE_TOKENIZERS = ("ByT5Tokenizer",)  # no vocabulary file (HunyuanImage's glyph encoder)


DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


# Components our loader replaces instead of loading (dmutils.pipeline: safety_checker=None).
NOT_LOADED = {"safety_checker"}


# ---------------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------------
def looks_local(path: str) -> bool:
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
    if looks_local(path):
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
    """'scheduler', 'guider', 'tokenizer', 'processor' or 'weights', from the class name model_index.json gives."""
    if cls.endswith("Scheduler"):
        return "scheduler"
    if cls.endswith("Guidance"):  # diffusers' guiders (HunyuanImage's AdaptiveProjectedMixGuidance): a config, no weights
        return "guider"
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
    if kind in ("scheduler", "guider"):
        if not (comp / f"{kind}_config.json").is_file():
            out.error(f"model {comp}: no {kind}_config.json; re-download this component")
        return []
    if kind == "processor":
        if not (comp / "preprocessor_config.json").is_file():
            out.error(f"model {comp}: no preprocessor_config.json; re-download this component")
        return []
    if kind == "tokenizer":
        have = [f for f in TOKENIZER_FILES if (comp / f).is_file()]
        if cls in BYTE_TOKENIZERS:  # bytes are the vocabulary: the config is the whole tokenizer
            if not (comp / "tokenizer_config.json").is_file():
                out.error(f"model {comp}: no tokenizer_config.json; re-download this component")
        elif not have:
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


# hub ids whose weights are gated: the licence is accepted on the model's page before a download works
GATED_PREFIXES = ("stabilityai/stable-diffusion-3", "black-forest-labs/FLUX.1-dev", "black-forest-labs/FLUX.2-dev")
# pipelines whose repository lacks a text encoder that is a gated model of its own (HiDream-I1: its Llama 3.1)
GATED_ENCODERS = {"HiDream-ai/HiDream-I1": ("text_encoder_4", "meta-llama/Meta-Llama-3.1-8B-Instruct")}


def gated_note(path: str) -> str | None:
    """The licence step for a gated hub model (or a gated text encoder it needs), None for any other path."""
    if looks_local(path):
        return None
    for prefix, (component, encoder) in GATED_ENCODERS.items():
        if path.startswith(prefix):
            return (f"model.path {path!r} needs {encoder} as its {component}, a gated model: accept its licence on "
                    f"https://huggingface.co/{encoder}, log in with 'hf auth login', and save the pipeline with it "
                    f"({component}/ and tokenizer_{component[-1]}/) into a local folder for model.path")
    if not path.startswith(GATED_PREFIXES):
        return None
    return (f"model.path {path!r} is a gated model: accept its licence on https://huggingface.co/{path} "
            "and log in with 'hf auth login' before the first download")


def check_model(params: Params) -> Outcome:
    """``model.path``: the pipeline folder (or cached hub snapshot) holds every file loading needs."""
    out = Outcome()
    if note := gated_note(params.model.path):
        out.warning(note)
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
    out.summary = f"{cls} from {source}: {len(comps)} components, {human_size(size)} of weights"
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

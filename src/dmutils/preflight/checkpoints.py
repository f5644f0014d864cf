"""Checkpoints a run starts from (a segmenter backbone, the oracle): there, and of the right kind."""
from __future__ import annotations

from pathlib import Path

from dmutils.config import Params
from dmutils.errors import one_line
from dmutils.paths import REPO_ROOT
from dmutils.preflight.core import Outcome
from dmutils.preflight.model import looks_local


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
    if looks_local(value):
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

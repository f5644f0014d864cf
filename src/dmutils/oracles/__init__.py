"""``get_oracle(params)``: what labels generated images as ground truth in the studies.

Every oracle has ``predict(images) -> labels``: (N, H, W, 3) uint8 in, (N, H, W) uint8 out in
*our* label space: 0 = background, ``k`` = ``params.class_names[k-1]``, 255 = ignore.

- ``oracle.kind='toy'``: the toy world's labeller (:mod:`dmutils.oracles.toy_unet`), its classes mapped to
  ours by name.
- ``oracle.kind='toy_heuristic'``: the toy world's colour-and-shape rules (:mod:`dmutils.oracles.toy_heuristic`), no
  learned weights: a second, independent labeller that measures the toy oracle's error on generated images.
- ``oracle.kind='transformers'``: a semantic-segmentation model of transformers, as DiffuMask used a
  pretrained Mask2Former. ``oracle.model`` is a folder (or hub id) with the model and its image
  processor; SegFormer/BEiT/DPT/UperNet-style models load with ``AutoModelForSemanticSegmentation``,
  Mask2Former/MaskFormer/OneFormer with ``AutoModelForUniversalSegmentation``; both are decoded with
  the processor's ``post_process_semantic_segmentation``.

Label mapping. ``oracle.class_map`` maps an oracle label name (the model's ``id2label``) to one of
our class names, or to ``"background"`` or ``"ignore"``. With no entry, an oracle label whose name
equals one of our class names (case-insensitive) maps to that class. **Every other oracle label
becomes background (0)**: a pixel the oracle calls "tree" is not any of our classes, which is
what background means for a class mask. Map a label to ``"ignore"`` (255) where the oracle is known
to confuse it with one of ours, so those pixels do not count in the IoU.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from dmutils.config import Params
from dmutils.errors import ParamsError
from dmutils.paths import REPO_ROOT

BACKGROUND, IGNORE = "background", "ignore"


class OracleError(ParamsError):
    """The oracle named in the params cannot be built; the message says how to fix it."""


def label_lookup(oracle_labels: Sequence[str], class_names: Sequence[str], class_map: Mapping[str, str] | None = None) -> np.ndarray:
    """A table ``lut[oracle id] -> our id`` (uint8) for the rules in the module docstring.

    Raises :class:`OracleError` for a ``class_map`` key the oracle does not have or a value that is
    none of our classes, 'background' or 'ignore'."""
    class_map = dict(class_map or {})
    ours = {name.lower(): k for k, name in enumerate(class_names, 1)}
    targets = {**ours, BACKGROUND: 0, IGNORE: 255}
    known = {name.lower() for name in oracle_labels}
    bad_keys = [k for k in class_map if k.lower() not in known]
    if bad_keys:
        raise OracleError(f"oracle.class_map names labels the oracle does not have: {bad_keys}; its labels are: "
                          f"{', '.join(oracle_labels)}")
    bad_values = {k: v for k, v in class_map.items() if v.lower() not in targets}
    if bad_values:
        raise OracleError(f"oracle.class_map maps to unknown classes {bad_values}; map each oracle label to one of "
                          f"{', '.join(class_names)}, 'background' or 'ignore'")
    lower_map = {k.lower(): v.lower() for k, v in class_map.items()}
    lut = np.zeros(len(oracle_labels), dtype=np.uint8)
    for i, name in enumerate(oracle_labels):
        target = lower_map.get(name.lower(), name.lower())
        lut[i] = targets.get(target, 0)
    return lut


class MappedOracle:
    """A labeller (``model.predict``: uint8 images -> its label ids) with its ``labels`` mapped to ours
    (:func:`label_lookup`); refuses a labeller that shares no class with the params, naming the way out (``hint``)."""

    def __init__(self, params: Params, model, labels: list[str], name: str, hint: str):
        self.model, self.labels = model, labels
        self.lut = label_lookup(self.labels, params.class_names, params.oracle.class_map)
        if not ((self.lut > 0) & (self.lut < 255)).any():
            raise OracleError(f"{name}'s classes {self.labels[1:]} share none with params.classes {params.class_names}; {hint}")

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self.lut[self.model.predict(_images(images))]


class ToyOracle(MappedOracle):
    """The toy world's labeller with its labels mapped to ours."""

    def __init__(self, params: Params, folder: str | Path | None = None):
        from dmutils.oracles import toy_unet as oracle

        super().__init__(params, oracle.load(folder or oracle.DEFAULT_DIR), ["background", *oracle.CLASS_NAMES],
                         "the toy oracle", "use oracle.kind='transformers' or map them with oracle.class_map")


class ToyHeuristicOracle(MappedOracle):
    """The toy world's colour-and-shape labeller with its labels mapped to ours."""

    def __init__(self, params: Params):
        from dmutils.oracles.toy_heuristic import HeuristicLabeller

        model = HeuristicLabeller()
        super().__init__(params, model, list(model.labels), "the toy heuristic", "map them with oracle.class_map")


class TransformersOracle:
    """A transformers segmentation model (folder or hub id) with its labels mapped to ours."""

    def __init__(self, params: Params, batch_size: int = 8):
        import torch
        from transformers import (
            AutoConfig,
            AutoImageProcessor,
            AutoModelForSemanticSegmentation,
            AutoModelForUniversalSegmentation,
        )
        from transformers.models.auto.modeling_auto import (
            MODEL_FOR_UNIVERSAL_SEGMENTATION_MAPPING_NAMES,
        )

        source = _locate(params.oracle.model)
        try:
            config = AutoConfig.from_pretrained(source)
            self.processor = AutoImageProcessor.from_pretrained(source)
            auto = (AutoModelForUniversalSegmentation if config.model_type in MODEL_FOR_UNIVERSAL_SEGMENTATION_MAPPING_NAMES
                    else AutoModelForSemanticSegmentation)
            self.model = auto.from_pretrained(source).eval()
        except (OSError, ValueError) as e:
            raise OracleError(f"oracle.model {params.oracle.model!r}: cannot load a segmentation model and image processor "
                              f"from {source}: {str(e).splitlines()[0]}") from None
        from dmutils.pipeline import resolve_device

        self.device = resolve_device("auto")
        self.model.to(self.device)
        self.torch, self.batch_size = torch, batch_size
        id2label = self.model.config.id2label
        self.labels = [str(id2label[i]) for i in range(len(id2label))]
        self.lut = label_lookup(self.labels, params.class_names, params.oracle.class_map)
        if not ((self.lut > 0) & (self.lut < 255)).any():
            raise OracleError(f"none of the oracle's labels maps to our classes {params.class_names}; set oracle.class_map "
                              f"(oracle label -> class), e.g. {{'{self.labels[min(1, len(self.labels) - 1)]}': '{params.class_names[0]}'}}")

    def predict(self, images: np.ndarray) -> np.ndarray:
        arr = _images(images)
        out = []
        for i in range(0, len(arr), self.batch_size):
            chunk = list(arr[i:i + self.batch_size])
            inputs = self.processor(images=chunk, return_tensors="pt").to(self.device)
            with self.torch.no_grad():
                outputs = self.model(**inputs)
            maps = self.processor.post_process_semantic_segmentation(outputs, target_sizes=[x.shape[:2] for x in chunk])
            out.extend(self.lut[m.cpu().numpy()] for m in maps)
        return np.stack(out)


def _images(images: np.ndarray) -> np.ndarray:
    arr = np.asarray(images)
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"the oracle expects (N, H, W, 3) uint8 images, got shape {arr.shape} dtype {arr.dtype}")
    return arr


def _locate(model: str | None) -> str:
    if not model:
        raise OracleError("oracle.kind='transformers' needs oracle.model: a folder with a segmentation model and its image "
                          "processor, e.g. models/mask2former-swin-large-ade-semantic")
    for folder in (Path(model).expanduser(), REPO_ROOT / model):
        if folder.is_dir():
            if not (folder / "config.json").is_file():
                raise OracleError(f"oracle.model {model!r}: {folder} has no config.json; save the model there with "
                                  f"model.save_pretrained(...) and processor.save_pretrained(...)")
            return str(folder)
    parts = Path(model).parts
    if model.startswith((".", "/", "~")) or len(parts) != 2 or (REPO_ROOT / parts[0]).is_dir():
        raise OracleError(f"oracle.model {model!r}: no such folder (looked in {Path(model).expanduser()} and {REPO_ROOT / model}); "
                          f"download it, e.g. `hf download facebook/mask2former-swin-large-ade-semantic "
                          f"--local-dir {model}`, or use oracle.kind='toy'")
    return model  # a hub id: from_pretrained says if it cannot be had


def get_oracle(params: Params):
    """The oracle of ``params.oracle`` (see the module docstring); fails before any image is made."""
    kind = params.oracle.kind
    if kind == "toy":
        return ToyOracle(params, params.oracle.model and params.resolve_path(params.oracle.model))
    if kind == "toy_heuristic":
        return ToyHeuristicOracle(params)
    if kind == "transformers":
        return TransformersOracle(params)
    raise OracleError(f"oracle.kind={kind!r}: the studies need an oracle to measure masks against; "
                      "set oracle.kind='toy' (toy world), 'toy_heuristic' or 'transformers' with oracle.model")

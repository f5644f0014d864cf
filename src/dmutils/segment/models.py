"""transformers segmenters behind one interface: ``loss(x, y)`` to train, ``scores(x)`` to predict.

SegFormer predicts per-pixel logits at a fraction of the input; Mask2Former predicts masks and
their classes, so its semantic scores are ``softmax(class) x sigmoid(mask)`` summed over queries
(what ``Mask2FormerImageProcessor.post_process_semantic_segmentation`` does) and its loss needs
one binary mask per class present, built here from the semantic label. DeepLabV3
(``dmutils.segment.deeplab``) predicts per-pixel logits like SegFormer. DeepLabV3 and Mask2Former take an
ImageNet-pretrained backbone through transformers' backbone API (``train.backbone``, ``dmutils.segment.backbones``).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dmutils.errors import DataError, DataNotFoundError, ParamsError, one_line
from dmutils.paths import atomic_write_bytes
from dmutils.segment.data import IGNORE_INDEX

# Small random-init configs for the 64-px toy world; TrainParams.config overrides keys of these.
# SegFormer strides (2, 2, 2, 2) give logits at 1/2 resolution (32 x 32 at 64 px) instead of 1/4,
# which is what small shapes need (measured in dmutils bench segmenter).
DEFAULT_CONFIGS: dict[str, dict] = {
    "segformer": dict(hidden_sizes=[32, 64, 128, 160], depths=[2, 2, 2, 2], num_attention_heads=[1, 2, 4, 8],
                      sr_ratios=[8, 4, 2, 1], patch_sizes=[7, 3, 3, 3], strides=[2, 2, 2, 2],
                      decoder_hidden_size=128, drop_path_rate=0.0, classifier_dropout_prob=0.0),
    "mask2former": dict(feature_size=64, mask_feature_size=64, hidden_dim=64, encoder_feedforward_dim=128,
                        encoder_layers=2, decoder_layers=3, num_attention_heads=4, dim_feedforward=128,
                        num_queries=16, train_num_points=1024,
                        backbone_config=dict(model_type="swin", image_size=64, patch_size=4, embed_dim=32,
                                             depths=[1, 1, 1, 1], num_heads=[1, 2, 4, 8], window_size=4,
                                             out_features=["stage1", "stage2", "stage3", "stage4"])),
    # DeepLabV3 (dmutils.segment.deeplab) on a small basic-block ResNet; with train.backbone the backbone's own
    # config replaces backbone_config and ASPP keeps the paper's 256 channels unless train.config says otherwise.
    "deeplabv3": dict(aspp_channels=64, classifier_dropout=0.0,
                      backbone_config=dict(model_type="resnet", embedding_size=16, hidden_sizes=[16, 32, 64, 128],
                                           depths=[1, 1, 1, 1], layer_type="basic", out_features=["stage4"])),
}
# Backbone stages each architecture's head reads.
BACKBONE_STAGES = {"deeplabv3": ["stage4"], "mask2former": ["stage1", "stage2", "stage3", "stage4"]}
# Architectures with per-pixel logits (``model(pixel_values, labels)`` -> loss, logits); the others predict masks.
PER_PIXEL = ("segformer", "deeplabv3")


def _classes(arch: str):
    import transformers

    if arch == "segformer":
        return transformers.SegformerConfig, transformers.SegformerForSemanticSegmentation
    if arch == "mask2former":
        return transformers.Mask2FormerConfig, transformers.Mask2FormerForUniversalSegmentation
    if arch == "deeplabv3":
        try:
            from dmutils.segment.deeplab import (
                DeepLabV3Config,
                DeepLabV3ForSemanticSegmentation,
            )
        except ImportError as e:
            raise ParamsError(f"train.architecture 'deeplabv3' needs transformers 5 (installed: {transformers.__version__}; "
                              f"{e}); upgrade transformers or use 'segformer'") from None

        return DeepLabV3Config, DeepLabV3ForSemanticSegmentation
    raise ParamsError(f"train.architecture {arch!r} unknown; use 'segformer', 'mask2former' or 'deeplabv3'")


class Segmenter(nn.Module):
    """A transformers segmentation model plus what is needed to use it: class names, input size."""

    def __init__(self, model: nn.Module, architecture: str, classes: list[str], image_size: int):
        super().__init__()
        self.model, self.architecture, self.classes, self.image_size = model, architecture, list(classes), image_size

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Training loss of a batch: images (B, 3, H, W), labels (B, H, W) long with 255 = ignore. A batch with no
        labelled pixel (self-training's pseudo-labels below the confidence everywhere) teaches nothing: loss 0, not
        the NaN of a mean over no pixel."""
        if not (y != 255).any():
            return sum(p.sum() for p in self.parameters()) * 0.0
        if self.architecture in PER_PIXEL:
            return self.model(pixel_values=x, labels=y).loss
        masks, classes = semantic_to_masks(y, self.num_classes)
        return self.model(pixel_values=x, mask_labels=masks, class_labels=classes).loss

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """Per-class scores (B, C, H, W) at the input's size (probabilities; argmax = prediction)."""
        if self.architecture in PER_PIXEL:
            logits = self.model(pixel_values=x).logits
            return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False).softmax(1)
        out = self.model(pixel_values=x)
        cls = out.class_queries_logits.softmax(-1)[..., :-1]  # drop the "no object" column
        masks = F.interpolate(out.masks_queries_logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        sem = torch.einsum("bqc,bqhw->bchw", cls, masks.sigmoid())
        return sem / sem.sum(1, keepdim=True).clamp_min(1e-6)

    def save(self, folder: str | Path) -> Path:
        """A folder that ``load_segmenter`` reads back: the transformers model + segmenter.json, written
        last and atomically, so a save cut short leaves no segmenter.json to read a half model with."""
        folder = Path(folder)
        (folder / "segmenter.json").unlink(missing_ok=True)
        self.model.save_pretrained(folder)
        meta = {"architecture": self.architecture, "classes": self.classes, "image_size": self.image_size}
        atomic_write_bytes(folder / "segmenter.json", json.dumps(meta, indent=2).encode())
        return folder


def semantic_to_masks(y: torch.Tensor, num_classes: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Mask2Former targets from a semantic label: per image, one binary mask per class present.

    Ignored pixels (255) belong to no mask; Mask2Former's point-sampled loss then treats them as
    background of every mask, a small bias accepted for the simplicity of the standard loss."""
    masks, classes = [], []
    for lab in y:
        present = [c for c in lab.unique().tolist() if c != IGNORE_INDEX and c < num_classes]
        classes.append(torch.tensor(present, dtype=torch.long, device=y.device))
        masks.append(torch.stack([(lab == c).float() for c in present]) if present
                     else lab.new_zeros((0, *lab.shape), dtype=torch.float))
    return masks, classes


def build_segmenter(train, classes: list[str]) -> Segmenter:
    """A segmenter from ``TrainParams``: random init from a small config, or a pretrained checkpoint
    (folder or hub id) with its head resized to ``classes``."""
    config_cls, model_cls = _classes(train.architecture)
    id2label = dict(enumerate(classes))
    label2id = {v: k for k, v in id2label.items()}
    if train.pretrained:
        try:
            model = model_cls.from_pretrained(train.pretrained, num_labels=len(classes), id2label=id2label,
                                              label2id=label2id, ignore_mismatched_sizes=True, **train.config)
        except OSError as e:  # transformers: not a folder, not in the cache, offline
            name = train.pretrained.rstrip("/").split("/")[-1]
            raise DataNotFoundError(f"train.pretrained {train.pretrained!r} cannot be loaded ({str(e).strip().splitlines()[0]}); "
                                    f"download it with `hf download {train.pretrained} --local-dir models/{name}` and set "
                                    f"train.pretrained=models/{name}, or null for a random init") from None
    else:
        kw = {**DEFAULT_CONFIGS[train.architecture], **train.config}
        if train.architecture == "deeplabv3":
            import dataclasses

            known = {f.name for f in dataclasses.fields(config_cls)}
            unknown = sorted(set(train.config) - known)
            if unknown:  # a transformers config keeps unknown keys silently; ours is small enough to check
                raise ParamsError(f"train.config does not fit DeepLabV3Config: unknown keys {unknown}; known: "
                                  "aspp_channels, atrous_rates, classifier_dropout, output_stride, backbone_config")
            kw.setdefault("output_stride", train.output_stride)
        if train.backbone:
            from dmutils.segment.backbones import backbone_config

            kw["backbone_config"] = backbone_config(train.backbone, BACKBONE_STAGES[train.architecture])
            if train.architecture == "deeplabv3" and "aspp_channels" not in train.config:
                kw.pop("aspp_channels")  # the paper's 256
        elif isinstance(kw.get("backbone_config"), dict):
            from transformers import AutoConfig

            bb = dict(kw["backbone_config"])
            kw["backbone_config"] = AutoConfig.for_model(bb.pop("model_type"), **bb)
        try:
            config = config_cls(num_labels=len(classes), id2label=id2label, label2id=label2id, **kw)
        except (TypeError, ValueError) as e:
            raise ParamsError(f"train.config does not fit {config_cls.__name__}: {' '.join(str(e).split())}") from None
        model = model_cls(config)
        if train.backbone:
            from dmutils.segment.backbones import load_pretrained_weights

            load_pretrained_weights(backbone_of(model), train.backbone, BACKBONE_STAGES[train.architecture])
    if train.architecture == "segformer":
        model.config.semantic_loss_ignore_index = IGNORE_INDEX
    return Segmenter(model, train.architecture, classes, train.image_size)


def backbone_of(model: nn.Module) -> nn.Module:
    """The backbone module inside a DeepLabV3 or Mask2Former model."""
    return model.backbone if hasattr(model, "backbone") else model.model.pixel_level_module.encoder


def load_segmenter(folder: str | Path) -> Segmenter:
    """Read back a folder written by ``Segmenter.save`` (or a training run's ``model/``)."""
    folder = Path(folder)
    if (folder / "model" / "segmenter.json").is_file():
        folder = folder / "model"
    meta_path = folder / "segmenter.json"
    if not meta_path.is_file():
        raise DataNotFoundError(f"{meta_path} not found; pass a folder written by 'dmutils train' (its model/ subfolder)")
    try:
        meta = json.loads(meta_path.read_text())
    except ValueError as e:
        raise DataError(f"{meta_path} is not valid JSON ({e}); train again or pass another checkpoint folder") from None
    _, model_cls = _classes(meta["architecture"])
    try:
        model = model_cls.from_pretrained(folder)
    except OSError as e:  # weights missing or unreadable
        raise DataError(f"{folder}: cannot load the segmenter ({one_line(e)}); pass a folder written by 'dmutils train'") from None
    return Segmenter(model, meta["architecture"], meta["classes"], meta["image_size"])

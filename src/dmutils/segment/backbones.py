"""ImageNet-pretrained backbones through transformers' backbone API (``AutoConfig`` / ``AutoBackbone``).

``train.backbone`` names a hub id (``microsoft/resnet-50``) or a folder written by ``save_pretrained``. A
segmenter is built from the backbone's *config* (so its saved folder reloads without the backbone), and the
pretrained weights are then copied in from ``AutoBackbone.from_pretrained``. transformers 5 builds every
composite model's backbone with random weights (``load_backbone`` is ``AutoBackbone.from_config``; the old
``use_pretrained_backbone`` flag is gone), so the copy is what makes the backbone pretrained.

Why transformers' ResNet and not timm's through ``TimmBackbone``: timm makes a dilated ResNet itself
(``output_stride``), but ``TimmBackbone.from_pretrained`` rebuilds its config without ``output_stride`` and
reads weights through timm's own names (hub ids, ``local-dir:`` folders in timm's layout), not a transformers
``save_pretrained`` folder. transformers' ResNet
loads from both and is dilated here (:func:`dilate_resnet`), as torchvision's ``replace_stride_with_dilation``
and mmsegmentation's ResNetV1c ``dilations`` do.
"""
from __future__ import annotations

from pathlib import Path

from torch import nn

from dmutils.errors import ParamsError
from dmutils.paths import REPO_ROOT


def resolve(name: str) -> str:
    """A local folder (as given, or relative to the repository root) when one exists, else the hub id."""
    for p in (Path(name).expanduser(), REPO_ROOT / name):
        if p.is_dir():
            return str(p)
    return name


def _fail(name: str, e: Exception) -> ParamsError:
    why = " ".join(str(e).split()).split(". ")[0][:200]
    return ParamsError(f"train.backbone {name!r} could not be loaded ({type(e).__name__}: {why}); give a hub id such as "
                       "microsoft/resnet-50 (downloaded once) or a folder written by save_pretrained")


def backbone_config(name: str, out_features: list[str]):
    """The backbone's transformers config with the stages a head reads (``stage1`` ... ``stage4``)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(resolve(name))
    except (OSError, ValueError, KeyError) as e:
        raise _fail(name, e) from None
    if not hasattr(config, "stage_names"):
        raise ParamsError(f"train.backbone {name!r} is a {config.model_type!r} model, which has no backbone stages; "
                          "use a backbone model such as microsoft/resnet-50")
    config.out_features = list(out_features)
    return config


def load_pretrained_weights(module: nn.Module, name: str, out_features: list[str]) -> None:
    """Copy the pretrained weights of ``name`` into ``module``, a backbone that ``load_backbone`` /
    ``AutoBackbone.from_config`` built from the same config.

    Read with ``from_pretrained`` of the backbone class AutoBackbone picked (``type(module)``), not with
    ``AutoBackbone.from_pretrained``: in transformers 5.24 the latter first asks the hub whether the name is a
    repository (``hf_api().repo_exists``), which rejects a local folder's path outright."""
    try:
        pretrained = type(module).from_pretrained(resolve(name), out_features=list(out_features))
    except (OSError, ValueError, KeyError) as e:
        raise _fail(name, e) from None
    missing, unexpected = module.load_state_dict(pretrained.state_dict(), strict=False)
    if missing or unexpected:
        raise ParamsError(f"train.backbone {name!r} does not fit the model built from its config "
                          f"(missing {missing[:3]}, unexpected {unexpected[:3]}); use a transformers ResNet backbone")


def dilate_resnet(backbone: nn.Module, output_stride: int) -> nn.Module:
    """Make a transformers ``ResNetBackbone`` atrous: the last stage (stride 16) or the last two (stride 8)
    keep their resolution, their 3x3 convolutions dilated by 2 and 4 instead (DeepLabV3, Chen et al. 2017,
    Sec. 3.1). Weight shapes do not change, so ImageNet weights load as they are."""
    stages = getattr(getattr(backbone, "encoder", None), "stages", None)
    if stages is None:
        raise ParamsError(f"train.output_stride needs a ResNet backbone (got {type(backbone).__name__}); "
                          "use train.output_stride=32 or a ResNet")
    n_dilated = {32: 0, 16: 1, 8: 2}[output_stride]
    dilation = 1
    for stage in list(stages)[len(stages) - n_dilated:]:
        dilation *= 2
        for conv in stage.modules():
            if isinstance(conv, nn.Conv2d):
                if conv.stride != (1, 1):
                    conv.stride = (1, 1)
                if conv.kernel_size == (3, 3):
                    conv.dilation, conv.padding = (dilation, dilation), (dilation, dilation)
    return backbone

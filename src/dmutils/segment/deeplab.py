"""DeepLabV3 (Chen et al. 2017, arXiv 1706.05587) as a transformers model: a (dilated) ResNet from
transformers' backbone API plus a hand-written ASPP head.

Written here because no library this project keeps has it: transformers has no DeepLabV3-ResNet model (only
MobileViT / MobileNetV2 DeepLabV3 heads). torchvision's ``DeepLabHead`` is the reference (tests check the ASPP
against it where torchvision is importable), but torchvision is not a dependency: it is in the development venv
only because timm needs it, and each torchvision wheel is built for one torch version while the Makefile picks
the torch build per machine. Being a ``PreTrainedModel`` with its own config, the model saves and reloads with
``save_pretrained`` / ``from_pretrained`` like the other segmenters.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import AutoConfig, PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.backbone_utils import load_backbone
from transformers.configuration_utils import SubConfigSpec
from transformers.modeling_outputs import SemanticSegmenterOutput

from dmutils.segment.backbones import dilate_resnet


@strict
class DeepLabV3Config(PreTrainedConfig):
    """Backbone config (a transformers ResNet), output stride and the ASPP head's sizes (the paper's:
    256 channels, rates 6/12/18 at output stride 16, doubled at 8)."""

    model_type = "dmutils_deeplabv3"
    sub_configs_defaults = {"backbone_config": SubConfigSpec(config_class=AutoConfig, model_type="resnet",
                                                             init_kwargs={"out_features": ["stage4"]})}

    backbone_config: dict | PreTrainedConfig | None = None
    output_stride: int = 16
    aspp_channels: int = 256
    atrous_rates: list[int] | tuple[int, ...] = (6, 12, 18)
    classifier_dropout: float = 0.1
    ignore_index: int = 255


def _conv_bn_relu(cin: int, cout: int, k: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=dilation * (k // 2), dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: a 1x1 branch, three dilated 3x3 branches and image pooling,
    concatenated and projected (DeepLabV3 Sec. 3.3)."""

    def __init__(self, cin: int, channels: int, rates: list[int]):
        super().__init__()
        self.branches = nn.ModuleList([_conv_bn_relu(cin, channels)] + [_conv_bn_relu(cin, channels, 3, r) for r in rates])
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, channels, 1, bias=False), nn.ReLU(inplace=True))
        self.project = _conv_bn_relu(channels * (len(rates) + 2), channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.pool(x).expand(-1, -1, *x.shape[-2:])  # BatchNorm-free: a 1x1 map has no batch statistics at batch 1
        return self.project(torch.cat([b(x) for b in self.branches] + [pooled], dim=1))


class DeepLabV3ForSemanticSegmentation(PreTrainedModel):
    """``model(pixel_values, labels)`` -> ``SemanticSegmenterOutput`` (logits at 1/output_stride, loss on
    logits upsampled to the labels, 255 ignored), the interface of transformers' SegFormer."""

    config_class = DeepLabV3Config
    main_input_name = "pixel_values"
    base_model_prefix = "deeplabv3"

    def __init__(self, config: DeepLabV3Config):
        super().__init__(config)
        self.backbone = load_backbone(config)
        if config.output_stride != 32:
            dilate_resnet(self.backbone, config.output_stride)
        rates = [r * 16 // config.output_stride for r in config.atrous_rates] if config.output_stride <= 16 else list(config.atrous_rates)
        self.aspp = ASPP(self.backbone.channels[-1], config.aspp_channels, rates)
        self.dropout = nn.Dropout2d(config.classifier_dropout)
        self.classifier = nn.Conv2d(config.aspp_channels, config.num_labels, 1)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        """ResNet's initialisation (He normal convolutions, unit BatchNorm), for the head and any weight a
        checkpoint lacks (a resized classifier)."""
        super()._init_weights(module)
        if module is self.classifier:
            init.normal_(module.weight, std=0.01)  # small logits at the start: loss near log(num_labels)
            init.zeros_(module.bias)
        elif isinstance(module, nn.Conv2d):
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, **kwargs) -> SemanticSegmenterOutput:
        features = self.backbone(pixel_values).feature_maps[-1]
        logits = self.classifier(self.dropout(self.aspp(features)))
        loss = None
        if labels is not None:
            up = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
            # mean over the labelled pixels; 0, not NaN, for a batch that is all ignore (a crop inside the uncertain
            # band, a self-training batch where no prediction is confident yet)
            valid = (labels != self.config.ignore_index).sum().clamp_min(1)
            loss = F.cross_entropy(up, labels, ignore_index=self.config.ignore_index, reduction="sum") / valid
        return SemanticSegmenterOutput(loss=loss, logits=logits)

"""DeepLabV3 and Mask2Former on a pretrained backbone (train.backbone): a tiny transformers ResNet saved with
save_pretrained stands in for microsoft/resnet-50."""
from __future__ import annotations

import pytest
import torch
from transformers import ResNetBackbone, ResNetConfig

from dmutils.config import load_params
from dmutils.errors import ParamsError
from dmutils.segment.models import backbone_of, build_segmenter, load_segmenter

CLASSES = ["background", "a", "b"]


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("bb") / "resnet"
    model = ResNetBackbone(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 16, 32], depths=[1, 1, 1, 1], out_features=["stage4"]))
    for p in model.parameters():  # away from any initialisation, so a copy is told from a fresh init
        p.data.normal_()
    model.save_pretrained(folder)
    return folder, {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("stride", [8, 16, 32])
def test_deeplabv3_output_stride(backbone, stride):
    folder, _ = backbone
    params = load_params(None, ["train.architecture=deeplabv3", f"train.backbone={folder}", f"train.output_stride={stride}"])
    seg = build_segmenter(params.train, CLASSES).eval()
    x = torch.randn(1, 3, 64, 64)
    assert seg.model(pixel_values=x).logits.shape == (1, 3, 64 // stride, 64 // stride)
    assert seg.scores(x).shape == (1, 3, 64, 64)


@pytest.mark.parametrize("arch", ["deeplabv3", "mask2former"])
def test_backbone_weights_are_the_pretrained_ones_and_reload(backbone, arch, tmp_path):
    folder, weights = backbone
    params = load_params(None, [f"train.architecture={arch}", f"train.backbone={folder}"])
    torch.manual_seed(1)
    seg = build_segmenter(params.train, CLASSES)
    got = backbone_of(seg.model).state_dict()
    assert set(weights) <= set(got) and all(torch.equal(got[k], weights[k]) for k in weights)
    x, y = torch.randn(2, 3, 64, 64), torch.randint(0, 3, (2, 64, 64))
    loss = seg.loss(x, y)
    loss.backward()
    assert torch.isfinite(loss) and any(p.grad is not None and p.grad.abs().sum() > 0 for p in backbone_of(seg.model).parameters())
    seg.eval()
    back = load_segmenter(seg.save(tmp_path / "seg")).eval()
    assert back.architecture == arch and torch.allclose(seg.scores(x), back.scores(x), atol=1e-5)


def test_deeplabv3_random_init_without_backbone():
    params = load_params(None, ["train.architecture=deeplabv3"])
    torch.manual_seed(0)
    seg = build_segmenter(params.train, CLASSES)
    loss = seg.loss(torch.randn(2, 3, 64, 64), torch.randint(0, 3, (2, 64, 64)))
    assert abs(loss.item() - torch.log(torch.tensor(3.0)).item()) < 0.2  # small classifier init: ~uniform predictions


def test_bad_backbone_is_a_one_line_error(tmp_path):
    with pytest.raises(ParamsError, match="train.backbone.*existing folder"):
        load_params(None, ["train.architecture=deeplabv3", f"train.backbone={tmp_path / 'missing'}"])
    with pytest.raises(ParamsError, match="train.backbone.*train.pretrained"):
        load_params(None, ["train.architecture=segformer", "train.backbone=microsoft/resnet-50"])
    (tmp_path / "empty").mkdir()
    params = load_params(None, ["train.architecture=deeplabv3", f"train.backbone={tmp_path / 'empty'}"])
    with pytest.raises(ParamsError, match="could not be loaded") as e:
        build_segmenter(params.train, CLASSES)
    assert "\n" not in str(e.value)


def test_deeplabv3_loss_is_zero_not_nan_when_every_pixel_is_ignored():
    seg = build_segmenter(load_params(None, ["train.architecture=deeplabv3"]).train, CLASSES)
    loss = seg.loss(torch.randn(2, 3, 64, 64), torch.full((2, 64, 64), 255))
    assert loss.item() == 0.0
    loss.backward()


def test_backbone_learning_rate_multiplier(backbone):
    from dmutils.segment.train import param_groups

    folder, _ = backbone
    for arch in ("deeplabv3", "mask2former"):
        train = load_params(None, [f"train.architecture={arch}", f"train.backbone={folder}", "train.lr=1e-3",
                                   "train.backbone_lr_mult=0.1"]).train
        seg = build_segmenter(train, CLASSES)
        groups = param_groups(seg, train)
        ids = [id(p) for g in groups for p in g["params"]]
        assert sorted(ids) == sorted(id(p) for p in seg.parameters())  # every parameter, once
        assert {id(p) for p in groups[0]["params"]} == {id(p) for p in backbone_of(seg.model).parameters()}
        opt = torch.optim.AdamW(groups, lr=train.lr)
        assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-4, 1e-3])
    segformer = load_params(None, ["train.backbone_lr_mult=0.1"]).train  # no backbone to single out: one group
    assert len(param_groups(build_segmenter(segformer, CLASSES), segformer)) == 1

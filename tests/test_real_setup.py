"""The real set-ups (``params/*_sd15.yaml``) and the paper presets (``params/papers/*.yaml``) end to end at tiny
sizes: an SD 1.5-shaped random-weight model folder (``save_tiny_sd15``) stands in for Stable Diffusion 1.x, a tiny
transformers ResNet saved with save_pretrained for the ImageNet backbone, and a few-image folder in each benchmark's
layout for VOC 2012, Cityscapes, ADE20K and COCO 2017. Everything else (classes, prompts, capture, masks, the
segmenter family and its training recipe) is the file's own."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from coco_maker import write_tiny_coco
from PIL import Image
from transformers import ResNetBackbone, ResNetConfig

from dmutils import runner
from dmutils.commands.train import main as train_main
from dmutils.config import load_params
from dmutils.data import voc
from dmutils.data.toyworld import make_scene
from dmutils.dataset.generate import generate_dataset
from dmutils.paths import REPO_ROOT
from dmutils.pipeline import load_pipeline
from dmutils.segment.data import open_real
from dmutils.segment.models import load_segmenter
from dmutils.testing.sd import save_tiny_sd15

LIVE_SD_IDS = {"stable-diffusion-v1-5/stable-diffusion-v1-5", "CompVis/stable-diffusion-v1-4", "stabilityai/stable-diffusion-2-1-base"}

PARAMS = REPO_ROOT / "params/voc_sd15.yaml"
VOC_IDS = [15, 12, 8, 13, 3, 7]  # person, dog, cat, horse, bird, car: what the toy scenes' objects stand for


def write_tiny_voc(root, n=4):
    """VOCdevkit/VOC2012 with ``n`` toy scenes, their objects relabelled to VOC ids; splits train/val."""
    base = root / "VOCdevkit" / "VOC2012"
    ids = []
    for i in range(n):
        scene = make_scene(i)
        label = np.where((scene.label > 0) & (scene.label < 255), np.take(VOC_IDS, (scene.label.astype(int) - 1) % len(VOC_IDS)),
                         scene.label).astype(np.uint8)
        sid = f"2007_{i:06d}"
        voc.write_sample(base, sid, scene.image, label)
        ids.append(sid)
    voc.write_split(base, "train", ids[: n // 2])
    voc.write_split(base, "val", ids[n // 2:])
    return base.parent


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("real")
    model = save_tiny_sd15(tmp / "sd15")
    real = write_tiny_voc(tmp)
    overrides = [f"model.path={model}", "model.dtype=float32", "model.device=cpu", "model.height=32", "model.width=32",
                 "model.num_inference_steps=2", "capture.self_resolutions=[16]", "dataset.num_samples=3",
                 "dataset.batch_size=3", "dataset.workers=0", "dataset.min_area=0", f"dataset.out_dir={tmp / 'synthetic'}",
                 f"real.root={real}", f"run.reports_dir={tmp / 'reports'}"]
    return tmp, overrides


def test_voc_sd15_generates_a_dataset_in_voc_layout(setup):
    tmp, overrides = setup
    params = load_params(PARAMS, overrides)
    assert len(params.classes) == 20 and params.capture.cross_resolutions == [16] and params.oracle.kind == "none"
    real = open_real(params, params.real.test_split)
    assert len(real) == 2 and real[0][1].max() in VOC_IDS

    summary = generate_dataset(params, progress=False)
    root = tmp / "synthetic"
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["classes"][0] == "background" and meta["classes"][1:] == params.class_names
    records = [json.loads(line) for line in (root / "manifest.jsonl").read_text().splitlines()]
    assert len(records) == 3 and all(r["model"] == str(tmp / "sd15") for r in records)
    written = [r for r in records if r["status"] == "ok"]
    assert summary["written"] == len(written)
    for r in written:
        assert (root / voc.IMAGES / f"{r['id']}.jpg").is_file()
        labels = voc.read_label(root / voc.LABELS / f"{r['id']}.png")
        assert labels.shape == (32, 32)
        named = {params.class_names.index(c) + 1 for c in r["classes"]}
        assert set(np.unique(labels)) <= named | {0, 255}


def test_runner_runs_notebook_03_on_voc_sd15(setup):
    tmp, overrides = setup
    record = runner.run(PARAMS, [*overrides, "run.name=voc_tiny"], only="03")
    assert record["status"] == "ok", record["message"]
    run_dir = tmp / "reports" / "voc_tiny"
    entry = next(e for e in record["notebooks"] if e["name"] == "03_generate_dataset")
    assert entry["status"] in ("ok", "placeholder") and entry["error"] is None
    assert (run_dir / "index.html").is_file() and (run_dir / entry["ipynb"]).is_file()
    saved = json.loads((run_dir / "run.json").read_text())
    assert saved["params"]["model"]["path"] == str(tmp / "sd15") and saved["params"]["real"]["kind"] == "voc"
    assert [e["status"] for e in saved["notebooks"] if e["name"] != "03_generate_dataset"] == ["not run"] * 4


# ---------------------------------------------------------------------------------------------
# Every real set-up and paper preset, generate -> train -> evaluate at tiny sizes
# ---------------------------------------------------------------------------------------------
PRESETS = ["voc_sd15", "cityscapes_sd15", "ade20k_sd15", "papers/diffumask_voc", "papers/dataset_diffusion_voc",
           "papers/dataset_diffusion_coco"]


def write_tiny_cityscapes(root, n=2):
    """leftImg8bit/val/<city>/*_leftImg8bit.png + gtFine/val/<city>/*_gtFine_labelTrainIds.png from toy scenes."""
    for i in range(n):
        scene = make_scene(100 + i)
        label = np.where(scene.label < 255, (scene.label.astype(int) * 3) % 19, 255).astype(np.uint8)  # train ids 0..18
        name = f"city_000000_{i:06d}"
        for sub, suffix, array in (("leftImg8bit", "leftImg8bit", scene.image), ("gtFine", "gtFine_labelTrainIds", label)):
            path = root / sub / "val" / "city" / f"{name}_{suffix}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(path)
    return root


def write_tiny_ade20k(root, n=2):
    """ADEChallengeData2016/{images,annotations}/validation from toy scenes (file labels 0 = other, 1..150)."""
    base = root / "ADEChallengeData2016"
    for i in range(n):
        scene = make_scene(200 + i)
        label = np.where(scene.label < 255, scene.label.astype(int) * 7 % 151, 0).astype(np.uint8)
        voc.write_image(base / "images" / "validation" / f"ADE_val_{i:08d}.jpg", scene.image)
        path = base / "annotations" / "validation" / f"ADE_val_{i:08d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(label).save(path)
    return root


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    """The tiny stand-ins every preset runs on: SD 1.x-shaped model, ResNet backbone, real data, prompt files."""
    tmp = tmp_path_factory.mktemp("presets")
    torch.manual_seed(0)
    backbone = tmp / "resnet"
    ResNetBackbone(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 16, 32], depths=[1, 1, 1, 1],
                                out_features=["stage4"])).save_pretrained(backbone)
    voc_captions = [{"filename": "a.jpg", "caption": "a man riding a horse", "class_prompt": "person horse"},
                    {"filename": "b.jpg", "caption": "a dog and a cat", "class_prompt": "dog cat"}]
    coco_captions = [{"filename": "a.jpg", "caption": "a dog sitting near a cat", "class_prompt": "dog cat"},
                     {"filename": "b.jpg", "caption": "a man at a dining table", "class_prompt": "person dining table"}]
    (tmp / "voc_prompts.json").write_text(json.dumps(voc_captions))
    (tmp / "coco_prompts.json").write_text(json.dumps(coco_captions))
    (tmp / "captions.txt").write_text("a photo of a dog on the grass\na photo of a bird in the sky\n")
    model = save_tiny_sd15(tmp / "sd15")
    return {"tmp": tmp, "model": model, "backbone": backbone, "voc": write_tiny_voc(tmp),
            "cityscapes": write_tiny_cityscapes(tmp / "cityscapes"), "ade20k": write_tiny_ade20k(tmp / "ade20k"),
            "coco": write_tiny_coco(tmp / "coco", "val")[0], "pipe": load_pipeline(str(model), device="cpu")}


def tiny_overrides(world, preset, params) -> list[str]:
    out = world["tmp"] / preset.replace("/", "_")
    cross = "[16, 8]" if len(params.capture.cross_resolutions) > 1 else "[16]"  # the tiny model's maps at 32 px: 16, 8, 4
    real = {"voc": world["voc"], "cityscapes": world["cityscapes"], "ade20k": world["ade20k"], "coco": world["coco"]}
    o = [f"model.path={world['model']}", "model.dtype=float32", "model.device=cpu", "model.height=32", "model.width=32",
         "model.num_inference_steps=2", f"capture.cross_resolutions={cross}", "capture.self_resolutions=[16]",
         "dataset.num_samples=5", "dataset.batch_size=5", "dataset.workers=0", "dataset.min_area=0", "dataset.val_fraction=0",
         f"dataset.out_dir={out / 'synthetic'}", f"real.root={real[params.real.kind]}", "real.test_split=val",
         f"run.reports_dir={out / 'reports'}", f"train.backbone={world['backbone']}", "train.device=cpu",
         "train.image_size=32", "train.steps=2", "train.batch_size=2", "train.eval_batch_size=2", "train.amp=false",
         "train.noise_learning.fold_steps=1", "masks.adaptive_candidates=[0.3, 0.5]"]
    if params.prompts.source == "captions":
        o.append(f"prompts.caption_file={world['tmp'] / ('coco_prompts.json' if params.real.kind == 'coco' else 'voc_prompts.json')}")
    if params.prompts.source == "retrieval":
        o.append(f"prompts.corpus_file={world['tmp'] / 'captions.txt'}")
    if params.dataset.splice.enabled:  # 5 samples fill no 3x3 mosaic; 2x2 is dropped if noise learning keeps < 4
        o.append("dataset.splice.grids=[[1, 2], [2, 2]]")
    if params.train.architecture == "mask2former":  # the preset's paper-size head, shrunk for a CPU test
        o += ["train.config.feature_size=64", "train.config.mask_feature_size=64", "train.config.hidden_dim=64",
              "train.config.encoder_feedforward_dim=32", "train.config.encoder_layers=1", "train.config.decoder_layers=2",
              "train.config.dim_feedforward=32", "train.config.num_queries=8", "train.config.train_num_points=256",
              "train.config.num_attention_heads=2"]
    return o


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_runs_end_to_end(tiny_world, preset):
    path = REPO_ROOT / "params" / f"{preset}.yaml"
    paper = load_params(path)
    assert paper.run.name == path.stem and paper.model.path in LIVE_SD_IDS
    assert paper.train.architecture in ("deeplabv3", "mask2former") and paper.train.backbone.startswith("microsoft/resnet-")
    params = load_params(path, tiny_overrides(tiny_world, preset, paper))
    # the preset's own method settings are what runs
    assert (params.masks, params.prompts.class_prompt, params.train.architecture) == (
        paper.masks.model_copy(update={"adaptive_candidates": [0.3, 0.5]}), paper.prompts.class_prompt, paper.train.architecture)

    summary = generate_dataset(params, progress=False, pipe=tiny_world["pipe"])
    assert summary["written"] >= 1, summary
    out = params.resolve_path(params.dataset.out_dir).parent / "segmenter"
    args = argparse.Namespace(params=str(path), overrides=tiny_overrides(tiny_world, preset, paper), data="synthetic",
                              data_dir=None, out=out, resume=False, no_eval=False)
    assert train_main(args) == 0
    final = out / "self_trained" if params.train.self_training else out  # Dataset Diffusion: a second, self-trained round
    metrics = json.loads((final / "metrics.json").read_text())
    classes = ["background"] + params.class_names
    assert list(metrics["per_class"]) == classes and 0.0 <= metrics["miou"] <= 1.0
    assert (out / "noise_scores.csv").is_file() == params.train.noise_learning.enabled  # DiffuMask's noise learning ran
    seg = load_segmenter(final / "model")
    assert seg.architecture == params.train.architecture and seg.classes == classes

"""``dmutils check``: each preflight check on small folders made here (no model is loaded, no hub access)."""
import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from dmutils import preflight as pf
from dmutils.config import load_params
from dmutils.data import voc
from dmutils.segment.data import VOC_CLASSES

# A Flux-shaped pipeline index: nothing in the model check may depend on the family.
FLUX_INDEX = {"_class_name": "FluxPipeline", "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
              "text_encoder": ["transformers", "CLIPTextModel"], "text_encoder_2": ["transformers", "T5EncoderModel"],
              "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "T5TokenizerFast"],
              "transformer": ["diffusers", "FluxTransformer2DModel"], "vae": ["diffusers", "AutoencoderKL"],
              "image_encoder": [None, None]}


def _weights(folder: Path, name: str, n: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text("{}")
    save_file({"w": np.zeros(n, np.float32)}, str(folder / name))


def make_pipeline_folder(root: Path) -> Path:
    """Files of a pipeline as save_pretrained lays them out, with tiny weights (1000 parameters in all)."""
    root.mkdir(parents=True)
    (root / "model_index.json").write_text(json.dumps(FLUX_INDEX))
    (root / "scheduler").mkdir()
    (root / "scheduler/scheduler_config.json").write_text("{}")
    _weights(root / "text_encoder", "model.safetensors", 100)
    _weights(root / "text_encoder_2", "model.safetensors", 200)
    (root / "tokenizer").mkdir()
    for f in ("vocab.json", "merges.txt"):
        (root / "tokenizer" / f).write_text("{}")
    (root / "tokenizer_2").mkdir()
    (root / "tokenizer_2/spiece.model").write_bytes(b"x")
    t = root / "transformer"  # sharded, as big transformers are saved
    t.mkdir()
    (t / "config.json").write_text(json.dumps({"sample_size": 32}))
    save_file({"a": np.zeros(300, np.float32)}, str(t / "diffusion_pytorch_model-00001-of-00002.safetensors"))
    save_file({"b": np.zeros(300, np.float32)}, str(t / "diffusion_pytorch_model-00002-of-00002.safetensors"))
    (t / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a": "diffusion_pytorch_model-00001-of-00002.safetensors", "b": "diffusion_pytorch_model-00002-of-00002.safetensors"}}))
    _weights(root / "vae", "diffusion_pytorch_model.safetensors", 100)
    (root / "vae/config.json").write_text(json.dumps({"block_out_channels": [8, 8, 8, 8]}))
    return root


def params_for(tmp_path, **sections):
    base = {"model": {"device": "cpu"}, "train": {"device": "cpu"},
            "dataset": {"out_dir": str(tmp_path / "out")}, "run": {"reports_dir": str(tmp_path / "reports")}}
    for k, v in sections.items():
        base[k] = {**base.get(k, {}), **v}
    return load_params(overrides=base)


def errors(outcome: pf.Outcome) -> list[str]:
    return [p.message for p in outcome.problems if p.level == "error"]


# -- the toy set-up ----------------------------------------------------------------------------
def test_toy_params_pass_every_check():
    outcomes = pf.run_checks(load_params("params/toy.yaml"))
    assert list(outcomes) == ["model", "checkpoints", "real data", "outputs", "device"]
    assert all(o.ok for o in outcomes.values()), pf.format_outcomes(outcomes)
    assert "StableDiffusionPipeline" in outcomes["model"].summary


# -- model -------------------------------------------------------------------------------------
def test_complete_pipeline_folder_passes_for_any_family(tmp_path):
    folder = make_pipeline_folder(tmp_path / "m")
    o = pf.check_model(params_for(tmp_path, model={"path": str(folder)}))
    assert o.ok, o.problems
    assert "FluxPipeline" in o.summary and "7 components" in o.summary
    assert pf.parameter_count(pf.model_weight_files(folder)) == 1000
    assert pf.default_image_size(folder) == 32 * 8


@pytest.mark.parametrize("breakage, expected", [
    (lambda m: (m / "vae/diffusion_pytorch_model.safetensors").unlink(), "vae has no weights"),
    (lambda m: (m / "text_encoder_2/model.safetensors").rename(m / "text_encoder_2/pytorch_model.bin"), "only PyTorch .bin"),
    (lambda m: (m / "transformer/diffusion_pytorch_model-00002-of-00002.safetensors").unlink(), "00002-of-00002"),
    (lambda m: (m / "tokenizer_2/spiece.model").unlink(), "tokenizer_2: no tokenizer files"),
    (lambda m: (m / "tokenizer/merges.txt").unlink(), "without merges.txt"),
    (lambda m: (m / "scheduler/scheduler_config.json").unlink(), "no scheduler_config.json"),
    (lambda m: (m / "vae/config.json").unlink(), "vae: no config.json"),
    (lambda m: __import__("shutil").rmtree(m / "text_encoder"), "component folder 'text_encoder'"),
    (lambda m: (m / "text_encoder/model.safetensors").write_bytes((m / "text_encoder/model.safetensors").read_bytes()[:-40]),
     "text_encoder: weights unreadable"),
    (lambda m: (m / "model_index.json").write_text("{not json"), "model_index.json is unreadable"),
])
def test_broken_pipeline_folder_names_the_component(tmp_path, breakage, expected):
    folder = make_pipeline_folder(tmp_path / "m")
    breakage(folder)
    errs = errors(pf.check_model(params_for(tmp_path, model={"path": str(folder)})))
    assert len(errs) == 1 and expected in errs[0], errs
    assert "\n" not in errs[0]


def test_missing_local_folder_and_uncached_hub_id(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    errs = errors(pf.check_model(params_for(tmp_path, model={"path": str(tmp_path / "nope")})))
    assert len(errs) == 1 and "no such folder" in errs[0]
    errs = errors(pf.check_model(params_for(tmp_path, model={"path": "some-org/some-model"})))
    assert len(errs) == 1 and "not in the local Hugging Face cache" in errs[0]
    assert "download some-org/some-model --local-dir models/some-model" in errs[0]
    assert "--set model.path=models/some-model" in errs[0]


def test_hub_id_in_the_local_cache_is_checked_in_its_snapshot(tmp_path, monkeypatch):
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    repo = cache / "models--some-org--some-model"
    make_pipeline_folder(repo / "snapshots" / ("a" * 40))
    (repo / "refs").mkdir()
    (repo / "refs/main").write_text("a" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    params = params_for(tmp_path, model={"path": "some-org/some-model"})
    o = pf.check_model(params)
    assert o.ok and "from the local cache" in o.summary, o.problems
    (repo / "snapshots" / ("a" * 40) / "vae/diffusion_pytorch_model.safetensors").unlink()  # an interrupted download
    assert "vae has no weights" in errors(pf.check_model(params))[0]


# -- real data ---------------------------------------------------------------------------------
def make_voc(root: Path, max_label: int = 20) -> Path:
    base = root / "VOC2012"
    for split, ids in (("train", ["a", "b"]), ("val", ["c"])):
        for i in ids:
            voc.write_image(base / voc.IMAGES / f"{i}.jpg", np.zeros((8, 8, 3), np.uint8))
            label = np.zeros((8, 8), np.uint8)
            label[0, :3] = [max_label, 255, 1]
            voc.write_label(base / voc.LABELS / f"{i}.png", label)
        voc.write_split(base, split, ids)
    return root


def voc_params(tmp_path, root: Path, **real):
    classes = [{"name": c} for c in VOC_CLASSES[1:]]
    return load_params(overrides={"classes": classes, "real": {"kind": "voc", "root": str(root), "train_split": "train",
                                                               "val_split": "val", "test_split": "val", **real}})


def test_voc_folder_passes_and_its_mistakes_are_named(tmp_path):
    root = make_voc(tmp_path / "VOCdevkit")
    o = pf.check_real_data(voc_params(tmp_path, root))
    assert o.ok and not o.problems and "train 2, val 1" in o.summary, o.problems

    errs = errors(pf.check_real_data(voc_params(tmp_path, tmp_path / "elsewhere")))
    assert len(errs) == 1 and "real.root" in errs[0] and "VOCtrainval_11-May-2012.tar" in errs[0]

    errs = errors(pf.check_real_data(voc_params(tmp_path, root, val_split="trainval", test_split="trainval")))
    assert len(errs) == 1 and "trainval.txt not found" in errs[0] and "'train', 'val'" in errs[0]

    bad = make_voc(tmp_path / "instances", max_label=40)  # e.g. SegmentationObject PNGs put where class labels belong
    errs = errors(pf.check_real_data(voc_params(tmp_path, bad)))
    assert errs and "holds label 40" in errs[0] and "21 classes" in errs[0]


def test_class_list_against_the_data_is_a_warning_naming_the_first_difference(tmp_path):
    root = make_voc(tmp_path / "VOCdevkit")
    params = voc_params(tmp_path, root)
    names = [{"name": c} for c in VOC_CLASSES[1:]]
    names[2], names[3] = names[3], names[2]
    o = pf.check_real_data(params.model_copy(update={"classes": load_params(overrides={"classes": names}).classes}))
    assert o.ok
    warnings = [p.message for p in o.problems if p.level == "warning"]
    assert len(warnings) == 1 and "#3 is 'boat' in params.classes but 'bird' in the data" in warnings[0]


def test_voc_layout_and_toy_real_data(tmp_path):
    from dmutils.data.toyworld import write_real_splits

    root = write_real_splits(tmp_path / "toy", {"train": 2, "val": 1, "test": 1}, image_size=16)
    o = pf.check_real_data(params_for(tmp_path, real={"kind": "voc_layout", "root": str(root)}))
    assert o.ok and not o.problems, o.problems
    (root / voc.LABELS / "toy_val_000000.png").write_bytes(b"not a png")
    errs = errors(pf.check_real_data(params_for(tmp_path, real={"kind": "toy", "root": str(root)})))
    assert len(errs) == 1 and "toy_val_000000.png: cannot read label" in errs[0]
    o = pf.check_real_data(params_for(tmp_path, real={"kind": "toy", "root": str(tmp_path / "not-yet")}))
    assert o.ok and "rendered on first use" in o.summary and not (tmp_path / "not-yet").exists()


def test_coco_check_and_unknown_kinds(tmp_path):
    """real.kind 'coco' is added to the schema on another branch: its check is ready, by folder names."""
    params = params_for(tmp_path, real={"root": str(tmp_path / "coco"), "train_split": "train", "val_split": "val",
                                        "test_split": "val"})
    object.__setattr__(params.real, "kind", "coco")
    errs = errors(pf.check_real_data(params))
    assert len(errs) == 1 and "real.root" in errs[0]
    (tmp_path / "coco/annotations").mkdir(parents=True)
    (tmp_path / "coco/annotations/instances_train2017.json").write_text("{}")
    (tmp_path / "coco/train2017").mkdir()
    errs = errors(pf.check_real_data(params))
    assert len(errs) == 2 and "instances_val2017.json" in errs[0] and "val2017/" in errs[1]
    object.__setattr__(params.real, "kind", "kitti")
    o = pf.check_real_data(params)
    assert o.ok and [p.level for p in o.problems] == ["note"] and "'kitti'" in o.problems[0].message


# -- outputs and disk ---------------------------------------------------------------------------
def test_unwritable_output_folders_are_named_and_nothing_is_created(tmp_path):
    (tmp_path / "a-file").write_text("x")
    params = params_for(tmp_path, dataset={"out_dir": str(tmp_path / "a-file/sub")})
    errs = errors(pf.check_outputs(params))
    assert len(errs) == 1 and errs[0].startswith("dataset.out_dir") and "is a file, not a folder" in errs[0]
    o = pf.check_outputs(params_for(tmp_path))
    assert o.ok and not (tmp_path / "out").exists() and not (tmp_path / "reports").exists()
    assert list(tmp_path.iterdir()) == [tmp_path / "a-file"]  # the write test left nothing behind


def test_disk_estimate_against_free_space(tmp_path, monkeypatch):
    params = params_for(tmp_path, model={"height": 512, "width": 512}, dataset={"num_samples": 1000},
                        capture={"cross_resolutions": [16], "self_resolutions": [32]}, masks={"tau": 1})
    need = pf.estimate_dataset_bytes(params)
    per_sample = 512 * 512 * (pf.system.JPEG_BYTES_PER_PIXEL + pf.system.LABEL_BYTES_PER_PIXEL) + 2 * 2 * 16 * 16 + 2 * 32**4
    assert need == int(1000 * per_sample)
    assert pf.estimate_dataset_bytes(params.model_copy(update={"masks": params.masks.model_copy(update={"tau": 0})})) < need
    monkeypatch.setattr(pf.system.shutil, "disk_usage", lambda p: type("U", (), {"free": need // 2})())
    errs = errors(pf.check_outputs(params))
    assert len(errs) == 1 and "1000 samples to generate need about" in errs[0] and "dataset.num_samples" in errs[0]
    (tmp_path / "out").mkdir()  # a resumed run: 600 samples done, 400 to go fit in half the full estimate
    (tmp_path / "out/manifest.jsonl").write_text("{}\n" * 600)
    o = pf.check_outputs(params)
    assert o.ok and [p.level for p in o.problems] == [], o.problems


# -- device --------------------------------------------------------------------------------------
def test_cuda_asked_but_absent(tmp_path, monkeypatch):
    monkeypatch.setattr(pf.system, "_cuda_available", lambda explicit=True: False)
    errs = errors(pf.check_device(params_for(tmp_path, model={"device": "cuda"}, train={"device": "cuda:1"})))
    assert errs == ["model.device='cuda' but CUDA is not available here; use --set model.device=auto (or cpu)",
                    "train.device='cuda:1' but CUDA is not available here; use --set train.device=auto (or cpu)"]
    assert pf.check_device(params_for(tmp_path, model={"device": "auto"})).ok


def test_gpu_memory_against_the_weights_in_model_dtype(tmp_path, monkeypatch):
    import torch

    folder = make_pipeline_folder(tmp_path / "m")  # 1000 parameters: 4000 bytes in float32, 2000 in float16
    monkeypatch.setattr(pf.system, "_cuda_available", lambda explicit=True: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i=0: (3000, 8000))
    p32 = params_for(tmp_path, model={"path": str(folder), "device": "cuda"})
    errs = errors(pf.check_device(p32, which=("model",)))
    assert len(errs) == 1 and "model.dtype=float16" in errs[0]
    o = pf.check_device(p32.model_copy(update={"model": p32.model.model_copy(update={"dtype": "float16"})}), which=("model",))
    assert o.ok and [p.level for p in o.problems] == [], o.problems  # 2000 of 3000 free: under the 80% warning line
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i=0: (2400, 8000))
    o = pf.check_device(p32.model_copy(update={"model": p32.model.model_copy(update={"dtype": "bfloat16"})}), which=("model",))
    assert o.ok and [p.level for p in o.problems] == ["warning"]


def test_big_model_on_cpu_is_a_warning(tmp_path, monkeypatch):
    folder = make_pipeline_folder(tmp_path / "m")  # 1000 parameters; the line lowered to 999 stands for 1 billion
    p = params_for(tmp_path, model={"path": str(folder), "device": "cpu"})
    assert pf.check_device(p, which=("model",)).problems == []
    monkeypatch.setattr(pf.system, "CPU_WARN_PARAMS", 999)
    o = pf.check_device(p, which=("model",))
    assert o.ok and [p.level for p in o.problems] == ["warning"] and "hours per image" in o.problems[0].message


@pytest.mark.parametrize("hub_id, gated", [("stabilityai/stable-diffusion-3.5-medium", True),
                                           ("stabilityai/stable-diffusion-3-medium-diffusers", True),
                                           ("black-forest-labs/FLUX.1-dev", True),
                                           ("black-forest-labs/FLUX.1-schnell", False),
                                           ("black-forest-labs/FLUX.2-dev", True),
                                           ("stable-diffusion-v1-5/stable-diffusion-v1-5", False)])
def test_gated_models_name_the_licence_step(tmp_path, hub_id, gated):
    o = pf.check_model(params_for(tmp_path, model={"path": hub_id}))
    notes = [p.message for p in o.problems if p.level == "warning" and "gated" in p.message]
    assert bool(notes) == gated
    assert not gated or (f"https://huggingface.co/{hub_id}" in notes[0] and "hf auth login" in notes[0])


def test_hidream_names_its_gated_llama(tmp_path):
    o = pf.check_model(params_for(tmp_path, model={"path": "HiDream-ai/HiDream-I1-Full"}))
    notes = [p.message for p in o.problems if p.level == "warning" and "gated" in p.message]
    assert len(notes) == 1 and "https://huggingface.co/meta-llama/Meta-Llama-3.1-8B-Instruct" in notes[0]
    assert "text_encoder_4" in notes[0]


# -- transformers checkpoints -----------------------------------------------------------------------
def test_pretrained_segmenter_and_oracle_checkpoints(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    assert pf.check_checkpoints(params_for(tmp_path)).ok  # random init: nothing to load
    errs = errors(pf.check_checkpoints(params_for(tmp_path, train={"pretrained": "nvidia/mit-b0"},
                                                  oracle={"kind": "transformers", "model": str(tmp_path / "oracle")})))
    assert len(errs) == 2
    assert "hf download nvidia/mit-b0 --local-dir models/mit-b0" in errs[0] and "--set train.pretrained=models/mit-b0" in errs[0]
    assert errs[1].startswith("oracle.model") and "no such folder" in errs[1]
    ckpt = tmp_path / "oracle"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    params = params_for(tmp_path, oracle={"kind": "transformers", "model": str(ckpt)})
    assert "holds no weights" in errors(pf.check_checkpoints(params))[0]
    save_file({"w": np.zeros(2, np.float32)}, str(ckpt / "model.safetensors"))
    assert pf.check_checkpoints(params).ok
    errs = errors(pf.check_checkpoints(params_for(tmp_path, train={"architecture": "deeplabv3", "backbone": "microsoft/resnet-50"})))
    assert len(errs) == 1 and "--set train.backbone=models/resnet-50" in errs[0]  # the papers' pretrained backbone
    assert pf.check_checkpoints(params_for(tmp_path, train={"architecture": "deeplabv3", "backbone": str(ckpt)})).ok


def test_toy_oracle_must_be_there_for_the_studies_only(tmp_path, monkeypatch):
    monkeypatch.setattr(pf.checkpoints, "TOY_ORACLE", tmp_path / "toy-oracle/model.safetensors")
    params = params_for(tmp_path)
    errs = errors(pf.check_checkpoints(params))
    assert len(errs) == 1 and "git checkout models/toy-oracle" in errs[0]
    assert pf.check_checkpoints(params, oracle=False).ok  # dmutils train does not use the oracle


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_pipelines_saved_by_diffusers_pass(tmp_path, family):
    """What save_pretrained writes for SD 1.5 and SDXL (two text encoders and tokenizers) is what the check expects."""
    from dmutils.testing import sd as tiny_models

    pipe = tiny_models.tiny_sdxl_pipeline() if family == "sdxl" else tiny_models.tiny_sd15_pipeline()
    pipe.save_pretrained(tmp_path / "m")
    params = params_for(tmp_path, model={"path": str(tmp_path / "m"), "family": family})
    o = pf.check_model(params)
    assert o.ok and not o.problems, o.problems
    n = sum(p.numel() for m in (pipe.unet, pipe.vae, pipe.text_encoder, getattr(pipe, "text_encoder_2", None)) if m is not None
            for p in m.state_dict().values())
    assert pf.parameter_count(pf.model_weight_files(tmp_path / "m")) == n


def test_generate_checks_a_shard_for_its_own_samples(tmp_path, monkeypatch):
    from dmutils.commands.generate import preflight_checks

    params = params_for(tmp_path, model={"height": 64, "width": 64}, dataset={"num_samples": 100})
    per_sample = pf.estimate_dataset_bytes(params, samples=1)
    monkeypatch.setattr(pf.system.shutil, "disk_usage", lambda p: type("U", (), {"free": 30 * per_sample})())
    assert "100 samples to generate" in errors(preflight_checks(params)["outputs"](params))[0]
    shard = preflight_checks(params, (0, 4))["outputs"](params)  # 25 samples into <out_dir>/shards/0-of-4
    assert shard.ok and "shards/0-of-4" in shard.summary

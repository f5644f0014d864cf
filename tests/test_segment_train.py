"""Training (SegFormer, Mask2Former), checkpoint/resume, noise learning and the train/evaluate commands."""
import json
import signal
import sys

import numpy as np
import pytest
import torch
import yaml

from dmutils.config import load_params
from dmutils.data import voc
from dmutils.data.toyworld import CLASS_NAMES, make_scene
from dmutils.errors import ParamsError
from dmutils.segment import data as seg_data
from dmutils.segment.data import VOCLayoutDataset
from dmutils.segment.models import build_segmenter, load_segmenter, semantic_to_masks
from dmutils.segment.noise import drop_noisy, noise_learning
from dmutils.segment.train import train_segmenter
from dmutils.testing.signals import stop_when

CLASSES = ["background", *CLASS_NAMES]
TINY_SEGFORMER = {"hidden_sizes": [8, 16, 16, 16], "depths": [1, 1, 1, 1], "num_attention_heads": [1, 1, 1, 1],
                  "decoder_hidden_size": 16}


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**train) -> "Params":  # noqa: F821
    base = {"config": TINY_SEGFORMER, "image_size": 32, "steps": 20, "batch_size": 4, "lr": 3e-3,
            "scale_range": [1.0, 1.0], "photometric": False, "checkpoint_every": 3}  # 20-step runs: no random distortion
    return load_params(overrides={"train": {**base, **train}})


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """12 toy scenes at 32 px in our VOC layout."""
    root = tmp_path_factory.mktemp("toy")
    ids = []
    for s in range(12):
        scene = make_scene(s, size=32)
        voc.write_sample(root, f"t{s}", scene.image, scene.label)
        ids.append(f"t{s}")
    voc.write_split(root, "train", ids)
    voc.write_split(root, "test", ids[:4])
    (root / "dataset.json").write_text(json.dumps({"classes": CLASSES}))
    return root


def test_short_training_reduces_loss_and_is_deterministic(toy):
    ds = VOCLayoutDataset(toy, "train")
    a = train_segmenter(tiny(steps=30), ds, progress=False)
    b = train_segmenter(tiny(steps=30), ds, progress=False)
    assert np.mean(a.losses[-5:]) < 0.8 * np.mean(a.losses[:5])
    assert a.losses == b.losses
    assert all(torch.equal(p, q) for p, q in zip(a.segmenter.state_dict().values(), b.segmenter.state_dict().values()))


def test_mask2former_trains_and_predicts_probabilities(toy):
    ds = VOCLayoutDataset(toy, "train")
    cfg = {"num_queries": 8, "decoder_layers": 2, "encoder_layers": 1, "train_num_points": 256,
           "backbone_config": {"model_type": "swin", "image_size": 32, "patch_size": 4, "embed_dim": 16,
                               "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2], "window_size": 2,
                               "out_features": ["stage1", "stage2", "stage3", "stage4"]}}
    r = train_segmenter(tiny(architecture="mask2former", config=cfg, steps=12, lr=1e-3), ds, progress=False)
    assert all(np.isfinite(r.losses)) and np.mean(r.losses[-3:]) < np.mean(r.losses[:3])
    p = r.segmenter.scores(torch.randn(2, 3, 32, 32))
    assert p.shape == (2, len(CLASSES), 32, 32) and torch.allclose(p.sum(1), torch.ones(2, 32, 32), atol=1e-4)


def test_semantic_label_becomes_one_mask_per_present_class():
    y = torch.tensor([[[0, 0, 3], [255, 3, 3]], [[255, 255, 255], [255, 255, 255]]])
    masks, classes = semantic_to_masks(y, 7)
    assert classes[0].tolist() == [0, 3] and masks[0].shape == (2, 2, 3)
    assert masks[0][1].tolist() == [[0, 0, 1], [0, 1, 1]] and masks[0][:, 1, 0].sum() == 0
    assert classes[1].numel() == 0 and masks[1].shape == (0, 2, 3)


def test_interrupted_then_resumed_equals_uninterrupted(toy, tmp_path, monkeypatch):
    ds = VOCLayoutDataset(toy, "train")
    params = tiny(steps=8, ema=0.9, photometric=True)  # the default's random distortion resumes exactly too
    full = train_segmenter(params, ds, tmp_path / "full", progress=False)
    assert train_segmenter(tiny(steps=8, ema=0.9), ds, progress=False).losses != full.losses  # it reaches the batches

    real_make_batch = seg_data.make_batch

    def interrupt_at_5(data, step, *a, **k):
        if step == 5:
            raise KeyboardInterrupt
        return real_make_batch(data, step, *a, **k)

    monkeypatch.setattr("dmutils.segment.train.make_batch", interrupt_at_5)
    with pytest.raises(KeyboardInterrupt):
        train_segmenter(params, ds, tmp_path / "cut", progress=False)
    assert torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=False)["step"] == 5
    monkeypatch.setattr("dmutils.segment.train.make_batch", real_make_batch)
    resumed = train_segmenter(params, ds, tmp_path / "cut", resume=True, progress=False)
    assert resumed.losses == full.losses
    for p, q in zip(full.segmenter.state_dict().values(), resumed.segmenter.state_dict().values()):
        assert torch.allclose(p, q)
    loaded = load_segmenter(tmp_path / "cut")
    x = torch.randn(1, 3, 32, 32)
    assert torch.allclose(loaded.scores(x), resumed.segmenter.scores(x), atol=1e-6)
    with pytest.raises(ParamsError, match="other train params"):
        train_segmenter(tiny(steps=8, lr=1e-2), ds, tmp_path / "cut", resume=True, progress=False)


def test_bad_architecture_and_missing_resume_fail_before_compute(toy, tmp_path):
    with pytest.raises(ParamsError, match="train.config does not fit DeepLabV3Config"):  # TINY_SEGFORMER's keys are not DeepLabV3's
        build_segmenter(tiny(architecture="deeplabv3").train, CLASSES)
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train_segmenter(tiny(), VOCLayoutDataset(toy, "train"), tmp_path / "none", resume=True)


class Corrupted(torch.utils.data.Dataset):
    """Toy samples whose masks at ``bad`` are replaced by one class over the whole image."""

    def __init__(self, base, bad):
        self.base, self.bad, self.classes, self.root = base, set(bad), base.classes, "corrupted"

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        image, label = self.base[i]
        return image, (np.full_like(label, 4) if i in self.bad else label)


def test_noise_learning_drops_the_corrupted_masks(toy):
    ds = Corrupted(VOCLayoutDataset(toy, "train"), bad=[2, 7, 9])
    params = tiny(steps=25, noise_learning={"folds": 3, "drop_fraction": 0.25})
    kept, scores = noise_learning(params, ds)
    assert len(scores) == 12 and sorted(scores["fold"].unique()) == [0, 1, 2]
    assert set(scores.loc[~scores["kept"], "index"]) == {2, 7, 9}
    assert sorted(kept.indices) == [i for i in range(12) if i not in (2, 7, 9)]


def test_drop_noisy_drops_lowest_scores_first():
    import pandas as pd

    ds = torch.utils.data.TensorDataset(torch.zeros(5))
    ds.classes = ["x"]
    scores = pd.DataFrame({"index": range(5), "iou": [0.9, float("nan"), 0.2, 0.8, 0.5]})
    assert drop_noisy(ds, scores, 0.4).indices == [0, 3, 4]


def test_train_and_evaluate_commands(toy, tmp_path, capsys):
    from dmutils.commands import main

    params = {"real": {"kind": "voc_layout", "root": str(toy), "train_split": "train", "test_split": "test"},
              "train": {"config": TINY_SEGFORMER, "image_size": 32, "steps": 4, "batch_size": 2}}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(params))
    out = tmp_path / "run"
    assert main(["train", str(tmp_path / "p.yaml"), "--data", "real", "--out", str(out), "--set", "train.lr=0.002"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["miou"] <= 1 and len(metrics["per_class"]) == len(CLASSES)
    n_train = len((toy / "ImageSets" / "Segmentation" / "train.txt").read_text().split())
    assert f"real training data: {toy}, split train, {n_train} images" in capsys.readouterr().out  # no surprise dataset
    assert main(["evaluate", str(out), str(tmp_path / "p.yaml"), "--json", "--tta"]) == 0
    captured = capsys.readouterr()
    n_test = len((toy / "ImageSets" / "Segmentation" / "test.txt").read_text().split())
    assert f"evaluating on: {toy}, split test, {n_test} images" in captured.err  # --json: stdout is the JSON alone
    printed = json.loads(captured.out.strip().splitlines()[-1])
    assert set(printed) >= {"miou", "per_class", "confusion"}
    assert main(["train", str(tmp_path / "p.yaml"), "--data", "real", "--set", "train.architecture=unet"]) == 2


# ``dmutils train`` whose step 2 (the one after the first checkpoint) waits: stopped there, the run has its checkpoint at
# step 2 and no more, whatever the machine's speed
STEP_2_WAITS = """
import sys, time
from dmutils.commands import main
from dmutils.segment import train
real = train.make_batch
def step_2_waits(data, step, *args, **kwargs):
    if step == 2:
        time.sleep(120)
    return real(data, step, *args, **kwargs)
train.make_batch = step_2_waits
sys.exit(main(sys.argv[1:]))
"""


def _train_args(params_file, out, *extra) -> list[str]:
    return ["train", str(params_file), "--data", "real", "--no-eval", "--out", str(out), "--set", "train.steps=4",
            "--set", "train.checkpoint_every=2", *extra]


def _stop_at_step_2(args: list[str], checkpoint, sig: int) -> tuple[int, str]:
    """Run ``dmutils ARGS`` in a subprocess, send ``sig`` once ``checkpoint`` exists; its exit code and output."""
    return stop_when([sys.executable, "-c", STEP_2_WAITS, *args], checkpoint.is_file, sig, "train")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_ctrl_c_or_cancel_during_train_says_resume_and_resumes_to_the_same_weights(toy, tmp_path, capsys, sig):
    """Ctrl-C or a scheduler's cancel of a real ``dmutils train``: exit 130, one line naming --resume and the step, a
    checkpoint and no temp file; ``--resume`` then ends with the weights of an uninterrupted run."""
    from dmutils.commands import main

    params = {"real": {"kind": "voc_layout", "root": str(toy), "train_split": "train", "test_split": "test"},
              "train": {"config": TINY_SEGFORMER, "image_size": 32, "batch_size": 2, "photometric": False}}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(params))
    cut = tmp_path / "cut"
    code, output = _stop_at_step_2(_train_args(tmp_path / "p.yaml", cut), cut / "checkpoint.pt", sig)
    lines = [x for x in output.splitlines() if "interrupted" in x]
    assert code == 130 and lines == [f"dmutils train: interrupted; finished work is kept, re-run with --resume to continue "
                                     f"from the checkpoint at step 2 of 4 ({cut / 'checkpoint.pt'})"], output
    assert "Traceback" not in output, output
    assert not list(cut.rglob("*.tmp")) and not (cut / "model").exists()
    assert torch.load(cut / "checkpoint.pt", weights_only=False)["step"] == 2

    assert main(_train_args(tmp_path / "p.yaml", cut, "--resume")) == 0
    assert main(_train_args(tmp_path / "p.yaml", tmp_path / "full")) == 0
    capsys.readouterr()
    resumed, full = load_segmenter(cut).state_dict(), load_segmenter(tmp_path / "full").state_dict()
    assert resumed.keys() == full.keys() and all(torch.equal(resumed[k], full[k]) for k in full)
    logs = [json.loads((d / "train_log.json").read_text())["losses"] for d in (cut, tmp_path / "full")]
    assert logs[0] == logs[1] and len(logs[0]) == 4

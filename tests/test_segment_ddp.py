"""Data-parallel segmenter training: ``torchrun --nproc_per_node 2 -m dmutils train`` (2 CPU processes,
gloo, accelerate's DDP) resumes a one-process checkpoint and follows the one-process loss curve.

Tolerance: DDP averages the two halves' gradients, which is the whole batch's gradient up to float
summation order, ignore-pixel weighting between halves and BatchNorm statistics per half (SegFormer's
decode head). On the tiny config below the largest relative difference over steps 4-9 was 1.1e-3
(measured on this machine); the test allows 5e-3."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from dmutils.config import load_params
from dmutils.data import voc
from dmutils.data.toyworld import CLASS_NAMES, make_scene
from dmutils.segment import data as seg_data
from dmutils.segment.data import VOCLayoutDataset
from dmutils.segment.train import train_segmenter

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]
TINY_SEGFORMER = {"hidden_sizes": [8, 16, 16, 16], "depths": [1, 1, 1, 1], "num_attention_heads": [1, 1, 1, 1],
                  "decoder_hidden_size": 16}
SRC = str(Path(__file__).resolve().parents[1] / "src")
STEPS, CUT = 10, 4
RTOL = 5e-3


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp") / "real"
    ids = []
    for s in range(12):
        scene = make_scene(s, size=32)
        voc.write_sample(root, f"t{s}", scene.image, scene.label)
        ids.append(f"t{s}")
    voc.write_split(root, "train", ids)
    (root / "dataset.json").write_text(json.dumps({"classes": ["background", *CLASS_NAMES]}))
    train = {"config": TINY_SEGFORMER, "image_size": 32, "steps": STEPS, "batch_size": 4, "lr": 3e-3, "ema": 0.9,
             "scale_range": [1.0, 1.0], "photometric": False, "checkpoint_every": CUT, "device": "cpu"}
    params_file = root.parent / "params.yaml"
    params_file.write_text(yaml.safe_dump({"train": train, "real": {"kind": "toy", "root": str(root)}}))
    return {"root": root, "file": params_file, "params": load_params(params_file)}


def test_two_processes_resume_one_process_checkpoint_and_follow_its_loss_curve(toy, tmp_path, monkeypatch):
    ds = VOCLayoutDataset(toy["root"], "train")
    full = train_segmenter(toy["params"], ds, tmp_path / "one", progress=False)

    real_make_batch = seg_data.make_batch

    def interrupt(data, step, *a, **k):
        if step == CUT:
            raise KeyboardInterrupt
        return real_make_batch(data, step, *a, **k)

    monkeypatch.setattr("dmutils.segment.train.make_batch", interrupt)
    with pytest.raises(KeyboardInterrupt):
        train_segmenter(toy["params"], ds, tmp_path / "two", progress=False)
    monkeypatch.setattr("dmutils.segment.train.make_batch", real_make_batch)

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "dmutils", "train",
           str(toy["file"]), "--data", "real", "--out", str(tmp_path / "two"), "--resume", "--no-eval"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, "\n".join(l for l in res.stderr.splitlines() if "rank0" in l)[-3000:]
    log = json.loads((tmp_path / "two" / "train_log.json").read_text())
    assert log["processes"] == 2 and len(log["losses"]) == STEPS
    assert log["losses"][:CUT] == full.losses[:CUT]  # from the one-process checkpoint
    np.testing.assert_allclose(log["losses"][CUT:], full.losses[CUT:], rtol=RTOL)
    assert log["losses"][CUT:] != full.losses[CUT:]  # the two processes did train those steps themselves
    # the EMA weights the main process saved follow the one-process ones too
    from dmutils.segment.models import load_segmenter

    x = torch.randn(2, 3, 32, 32)
    two = load_segmenter(tmp_path / "two").scores(x)
    one = full.segmenter.scores(x)
    assert torch.allclose(two, one, rtol=0.05, atol=0.05)

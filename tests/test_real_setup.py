"""The real set-up, ``params/voc_sd15.yaml``, end to end at tiny sizes: an SD 1.5-shaped random-weight
model folder (``save_tiny_sd15``) stands in for Stable Diffusion 1.5 and a 4-image VOC-layout folder for
PASCAL VOC 2012. Everything else (20 VOC classes, prompts, capture, masks) is the file's own."""
from __future__ import annotations

import json

import numpy as np
import pytest

from dmutils import runner
from dmutils.dataset.generate import generate_dataset
from dmutils.params import REPO_ROOT, load_params
from dmutils.segment.data import open_real
from dmutils.tiny_models import save_tiny_sd15
from dmutils.toyworld import make_scene
from dmutils import voc

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

"""``dmutils export --format hf``: the folder round-trips through ``datasets.load_dataset``."""
import json
import logging
import warnings

import numpy as np
import pytest

from dmutils.config import Params
from dmutils.data import voc
from dmutils.dataset.export import export_hf
from dmutils.dataset.layout import MANIFEST, META, Manifest, dataset_meta, write_splits
from dmutils.errors import ParamsError
from dmutils.paths import atomic_write_bytes


def _fake_dataset(root, n=5):
    """A dataset folder written with the generator's own writers: n samples, the last one rejected."""
    params = Params()
    meta = dataset_meta(params)
    root.mkdir(parents=True)
    atomic_write_bytes(root / META, json.dumps(meta).encode())
    rng = np.random.default_rng(0)
    manifest = Manifest(root / MANIFEST)
    names = meta["classes"]
    for i in range(n):
        sid = f"syn_{i:06d}"
        classes = [names[1 + i % 6], names[1 + (i + 2) % 6]]
        label = np.zeros((16, 16), np.uint8)
        label[:8, :8] = names.index(classes[0])
        label[8:, 8:] = names.index(classes[1])
        label[0, 15] = 255
        status = "ok" if i < n - 1 else "rejected"
        if status == "ok":
            voc.write_sample(root, sid, rng.integers(0, 255, (16, 16, 3), dtype=np.uint8), label)
        manifest.append({"index": i, "id": sid, "prompt": f"a {classes[0]} and a {classes[1]}", "seed": 1000 + i,
                         "classes": classes, "fractions": {c: 0.25 for c in classes}, "split": "val" if i == 1 else "train",
                         "status": status, "reason": None if status == "ok" else "empty mask: test"})
    write_splits(root, manifest.read())
    return meta


def test_export_round_trips_through_load_dataset(tmp_path, caplog):
    from datasets import load_dataset

    caplog.set_level(logging.WARNING)
    meta = _fake_dataset(tmp_path / "ds")
    summary = export_hf(tmp_path / "ds", tmp_path / "hf")
    assert summary["splits"] == {"train": 3, "validation": 1} and summary["rejected"] == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "The `splits` field in YAML is malformed" (a logger warning: see below)
        ds = load_dataset(str(tmp_path / "hf"), cache_dir=str(tmp_path / "cache"))
    assert "malformed" not in caplog.text
    assert sorted(ds) == ["train", "validation"]
    train = ds["train"]
    assert train.features["classes"].feature.names == meta["classes"]
    assert train.features["image"].__class__.__name__ == "Image"
    records = {r["id"]: r for r in Manifest(tmp_path / "ds" / MANIFEST).read().values()}
    for row in list(train) + list(ds["validation"]):
        rec = records[row["id"]]
        assert row["prompt"] == rec["prompt"] and row["seed"] == rec["seed"] and row["split"] == rec["split"]
        assert [meta["classes"][k] for k in row["classes"]] == rec["classes"]
        # labels come back as the same class ids, images as the same pixels
        assert np.array_equal(np.array(row["label"]), voc.read_label(tmp_path / "ds" / voc.LABELS / f"{row['id']}.png"))
        assert np.array_equal(np.array(row["image"].convert("RGB")), voc.read_image(tmp_path / "ds" / voc.IMAGES / f"{row['id']}.jpg"))
    card = (tmp_path / "hf" / "README.md").read_text()
    assert "models/toy-sd" in card and "license: other" in card and meta["params_hash"] in card
    assert "| ignore (255) |" in card and (tmp_path / "hf" / "samples.png").stat().st_size > 0
    # pixel share: 4 samples x 64 px per named class pair, 1 ignore pixel each, 256 px per label
    assert summary["pixel_share"]["ignore (255)"] == round(4 / (4 * 256), 4)
    assert abs(sum(summary["pixel_share"].values()) - 1) < 1e-3


def test_export_refuses_bad_input(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ParamsError, match="not a generated dataset"):
        export_hf(tmp_path / "empty", tmp_path / "hf")
    _fake_dataset(tmp_path / "ds")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("keep")
    with pytest.raises(ParamsError, match="not empty"):
        export_hf(tmp_path / "ds", tmp_path / "busy")
    assert (tmp_path / "busy" / "x").read_text() == "keep"

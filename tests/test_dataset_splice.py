"""Splicing mosaics keep image and mask aligned; palette PNGs round-trip; mosaics are reproducible."""
import json

import numpy as np
import pytest
import yaml

from dmutils.config import SpliceParams
from dmutils.data import voc
from dmutils.dataset.splice import photometric, splice, splice_dataset
from dmutils.errors import ParamsError

PAL = voc.PALETTE.astype(int)


def _tile(rng, size=64, classes=4):
    """Random blocks of class ids; the image is each id's palette colour (colour encodes the label)."""
    lab = np.zeros((size, size), np.uint8)
    for _ in range(4):
        y, x = rng.integers(0, size - 16, 2)
        h, w = rng.integers(12, 32, 2)
        lab[y:y + h, x:x + w] = rng.integers(1, classes + 1)
    return voc.PALETTE[lab].copy(), lab


def _decode(image):
    """The label each pixel's colour stands for (nearest of the first 5 palette colours)."""
    d = ((image[:, :, None, :].astype(int) - PAL[None, None, :5]) ** 2).sum(-1)
    return d.argmin(-1)


def _agreement(image, label):
    return float((_decode(image) == label).mean())


@pytest.mark.parametrize("grid", [(1, 2), (2, 2), (3, 3)])
def test_mosaic_keeps_image_and_mask_aligned(grid):
    rng = np.random.default_rng(grid[0] * 10 + grid[1])
    tiles = [_tile(rng) for _ in range(grid[0] * grid[1])]
    image, label = splice([t[0] for t in tiles], [t[1] for t in tiles], grid, (64, 64))
    assert image.shape == (64, 64, 3) and label.shape == (64, 64)
    assert _agreement(image, label) > 0.95
    shifted = np.roll(label, 3, axis=1)  # the test would see a misalignment of a few pixels
    assert _agreement(image, shifted) < _agreement(image, label) - 0.05
    assert set(np.unique(label)) <= set(np.unique(np.concatenate([t[1].ravel() for t in tiles])))


def test_tile_count_must_match_grid():
    img, lab = _tile(np.random.default_rng(0))
    with pytest.raises(ValueError, match="needs 4 tiles"):
        splice([img] * 3, [lab] * 3, (2, 2), (64, 64))


def test_photometric_changes_image_only_and_is_seeded():
    img, _ = _tile(np.random.default_rng(1))
    a = photometric(img, np.random.default_rng(5), blur=1.5, jitter=0.4)
    b = photometric(img, np.random.default_rng(5), blur=1.5, jitter=0.4)
    assert np.array_equal(a, b) and not np.array_equal(a, img) and a.shape == img.shape


def test_palette_png_round_trip(tmp_path):
    lab = np.random.default_rng(0).integers(0, 7, (20, 30)).astype(np.uint8)
    lab[0, :5] = voc.IGNORE_INDEX
    voc.write_label(tmp_path / "x.png", lab)
    from PIL import Image

    with Image.open(tmp_path / "x.png") as im:
        assert im.mode == "P" and im.getpalette()[3 * 255: 3 * 256] == [224, 224, 192]
    assert np.array_equal(voc.read_label(tmp_path / "x.png"), lab)


@pytest.fixture
def source(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "src"
    ids = []
    for k in range(12):
        img, lab = _tile(rng)
        voc.write_sample(root, f"s{k}", img, lab)
        ids.append(f"s{k}")
    voc.write_split(root, "train", ids[:10])
    voc.write_split(root, "val", ids[10:])
    (root / "dataset.json").write_text(json.dumps({"name": "src", "classes": ["background", "a", "b", "c", "d"]}))
    return root


def test_splice_dataset_writes_reproducible_voc_mosaics_from_train_only(source, tmp_path):
    params = SpliceParams(count=6, grids=[(1, 2), (2, 2), (3, 3)])
    s = splice_dataset(source, tmp_path / "a", params, seed=1, progress=False)
    splice_dataset(source, tmp_path / "b", params, seed=1, progress=False)
    assert s["written"] == 6 and sum(s["grids"].values()) == 6
    ids = voc.read_split(tmp_path / "a", "train")
    assert len(ids) == 6
    for i in ids:
        for sub, ext in ((voc.IMAGES, "jpg"), (voc.LABELS, "png")):
            assert (tmp_path / "a" / sub / f"{i}.{ext}").read_bytes() == (tmp_path / "b" / sub / f"{i}.{ext}").read_bytes()
        image, label = voc.read_image(tmp_path / "a" / voc.IMAGES / f"{i}.jpg"), voc.read_label(tmp_path / "a" / voc.LABELS / f"{i}.png")
        assert label.shape == (64, 64) and _agreement(image, label) > 0.9  # alignment survives JPEG
    used = {src for line in (tmp_path / "a/manifest.jsonl").read_text().splitlines() for src in json.loads(line)["sources"]}
    assert used <= {f"s{k}" for k in range(10)}  # never the val samples
    assert json.loads((tmp_path / "a/dataset.json").read_text())["classes"][0] == "background"


def test_splice_needs_enough_train_samples(source, tmp_path):
    voc.write_split(source, "train", ["s0", "s1", "s2"])
    with pytest.raises(ParamsError, match="needs at least 9"):
        splice_dataset(source, tmp_path / "x", SpliceParams(grids=[(3, 3)]), progress=False)


def test_mosaic_set_draws_what_splice_dataset_writes(source, tmp_path):
    """Training's on-the-fly mosaics (``dmutils train`` with dataset.splice.enabled) are the written ones."""
    from dmutils.dataset.splice import MosaicSet, mosaics
    from dmutils.segment.data import VOCLayoutDataset

    params = SpliceParams(count=5, grids=[(1, 2), (2, 2)])
    splice_dataset(source, tmp_path / "a", params, seed=3, progress=False)
    made = MosaicSet(VOCLayoutDataset(source, "train"), params, seed=3)
    assert len(made) == 5 and made.classes[0] == "background" and made.root.endswith("[mosaics]")
    for k, sid in enumerate(voc.read_split(tmp_path / "a", "train")):
        image, label = made[k]
        assert np.array_equal(label, voc.read_label(tmp_path / "a" / voc.LABELS / f"{sid}.png"))
        written = voc.read_image(tmp_path / "a" / voc.IMAGES / f"{sid}.jpg").astype(int)
        assert np.abs(written - image.astype(int)).mean() < 6  # the same image, through JPEG
    pairs = [made.source[j] for j in range(len(made.source))]
    listed = mosaics([p[0] for p in pairs], [p[1] for p in pairs], params, seed=3)
    assert all(np.array_equal(a[1], made[k][1]) and np.array_equal(a[0], made[k][0]) for k, a in enumerate(listed))
    with pytest.raises(IndexError):
        made[5]


def test_train_adds_mosaics_when_splicing_is_on(source, tmp_path, capsys):
    from dmutils.commands import main

    params = {"classes": [{"name": n} for n in ("a", "b", "c", "d")],
              "train": {"config": {"hidden_sizes": [8, 16, 16, 16], "depths": [1, 1, 1, 1], "num_attention_heads": [1, 1, 1, 1],
                                   "decoder_hidden_size": 16}, "image_size": 32, "steps": 2, "batch_size": 2},
              "dataset": {"splice": {"enabled": True, "count": 4, "grids": [[1, 2]]}}}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(params))
    assert main(["train", str(tmp_path / "p.yaml"), "--data", "synthetic", "--data-dir", str(source), "--no-eval",
                 "--out", str(tmp_path / "seg")]) == 0
    out = capsys.readouterr().out
    assert f"synthetic training data: {source}, split train, 10 images" in out
    assert f"mosaics of the synthetic data (dataset.splice): {source}[mosaics], 4 images" in out


def test_grids_that_fit_drops_only_the_mosaics_too_few_samples_can_fill():
    """Noise learning can keep fewer samples than the largest grid needs: splicing goes on with the grids that fit."""
    from dmutils.dataset.splice import grids_that_fit

    params = SpliceParams(enabled=True, grids=[(1, 2), (2, 2), (3, 3)])
    kept, dropped = grids_that_fit(params, 5)
    assert kept.grids == [(1, 2), (2, 2)] and dropped == [(3, 3)] and params.grids[-1] == (3, 3)
    assert grids_that_fit(params, 9) == (params, [])
    assert grids_that_fit(params, 1) == (params, [])  # none fit: MosaicSet's check says so in one line


def test_train_refuses_too_few_samples_for_a_mosaic_before_it_trains(source, tmp_path, capsys):
    from dmutils.commands import main

    params = {"classes": [{"name": n} for n in ("a", "b", "c", "d")], "dataset": {"splice": {"enabled": True, "grids": [[4, 4]]}}}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(params))
    assert main(["train", str(tmp_path / "p.yaml"), "--data", "synthetic", "--data-dir", str(source), "--no-eval",
                 "--out", str(tmp_path / "seg")]) == 2
    err = capsys.readouterr().err
    assert "has 10 train samples; a 16-tile mosaic needs at least 16" in err and "Traceback" not in err
    assert not (tmp_path / "seg").exists()

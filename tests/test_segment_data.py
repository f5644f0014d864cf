"""Readers of real datasets in their native layouts, and the torch augmentation."""
import json

import imgviz
import numpy as np
import pytest
import torch
from PIL import Image

from dmutils.data import voc
from dmutils.data.toyworld import CLASS_NAMES, make_scene
from dmutils.segment.data import (
    MEAN,
    STD,
    ADE20KDataset,
    CityscapesDataset,
    VOCDataset,
    VOCLayoutDataset,
    augment,
    check_same_classes,
    make_batch,
    photometric,
    photometric_normalized,
    to_tensors,
)


@pytest.fixture(scope="module")
def voc_sample():
    d = imgviz.data.voc()
    label = d["class_label"].astype(np.int64)
    return d["rgb"], np.where(label < 0, 255, label).astype(np.uint8), d["class_names"]


def write_vocdevkit(root, image, label, ids=("2011_000003",)):
    base = root / "VOCdevkit" / "VOC2012"
    for i in ids:
        voc.write_sample(base, i, image, label)
    voc.write_split(base, "val", list(ids))
    return base


def test_voc_reader_reads_the_real_voc_image(tmp_path, voc_sample):
    image, label, names = voc_sample
    write_vocdevkit(tmp_path, image, label)
    ds = VOCDataset(tmp_path / "VOCdevkit", "val")
    assert ds.classes == list(names) and len(ds) == 1
    got_image, got_label = ds[0]
    assert got_label.shape == label.shape and np.array_equal(got_label, label)
    assert np.abs(got_image.astype(int) - image.astype(int)).mean() < 3  # JPEG round trip
    assert set(np.unique(got_label)) == {0, 5, 9, 11, 15}


def test_voc_reader_prefers_augmented_labels(tmp_path, voc_sample):
    image, label, _ = voc_sample
    base = write_vocdevkit(tmp_path, image, label)
    aug = np.full_like(label, 7)
    voc.write_label(base / "SegmentationClassAug" / "2011_000003.png", aug)
    assert np.array_equal(VOCDataset(base, "val")[0][1], aug)


def test_missing_folder_names_the_expected_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match="JPEGImages.*expected layout"):
        VOCDataset(tmp_path, "val")
    with pytest.raises(FileNotFoundError, match="leftImg8bit"):
        CityscapesDataset(tmp_path, "val")
    with pytest.raises(FileNotFoundError, match="ADEChallengeData2016"):
        ADE20KDataset(tmp_path, "val")
    with pytest.raises(FileNotFoundError, match="dataset.json"):
        VOCLayoutDataset(tmp_path, "train")


def test_corrupt_image_error_names_the_file(tmp_path, voc_sample):
    image, label, _ = voc_sample
    base = write_vocdevkit(tmp_path, image, label)
    bad = base / "JPEGImages" / "2011_000003.jpg"
    bad.write_bytes(b"not a jpeg at all")
    with pytest.raises(ValueError, match="2011_000003.jpg"):
        VOCDataset(base, "val")[0]


def test_own_voc_layout_round_trip(tmp_path):
    scenes = [make_scene(s, size=32) for s in range(3)]
    for i, s in enumerate(scenes):
        voc.write_sample(tmp_path, f"s{i}", s.image, s.label)
    voc.write_split(tmp_path, "train", ["s0", "s1", "s2"])
    (tmp_path / "dataset.json").write_text(json.dumps({"classes": ["background", *CLASS_NAMES]}))
    ds = VOCLayoutDataset(tmp_path, "train")
    assert ds.classes == ["background", *CLASS_NAMES] and len(ds) == 3
    for (img, lab), s in zip([ds[i] for i in range(3)], scenes):
        assert np.array_equal(lab, s.label) and img.shape == s.image.shape
    with pytest.raises(FileNotFoundError, match="splits present: \\['train'\\]"):
        VOCLayoutDataset(tmp_path, "test")


def test_cityscapes_reader_pairs_images_with_train_ids(tmp_path):
    rng = np.random.default_rng(0)
    for city, n in [("aachen", 2), ("bremen", 1)]:
        for k in range(n):
            stem = f"{city}_{k:06d}_000019"
            (tmp_path / "leftImg8bit/val" / city).mkdir(parents=True, exist_ok=True)
            (tmp_path / "gtFine/val" / city).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (8, 16, 3), dtype=np.uint8)).save(tmp_path / "leftImg8bit/val" / city / f"{stem}_leftImg8bit.png")
            lab = np.full((8, 16), k, np.uint8)
            lab[0] = 255
            Image.fromarray(lab, mode="L").save(tmp_path / "gtFine/val" / city / f"{stem}_gtFine_labelTrainIds.png")
    ds = CityscapesDataset(tmp_path, "val")
    assert len(ds) == 3 and ds.num_classes == 19 and tuple(ds.palette[0]) == (128, 64, 128)
    img, lab = ds[1]
    assert img.shape == (8, 16, 3) and lab[0].tolist() == [255] * 16 and (lab[1:] == 1).all()


def test_ade20k_reader_ignores_other_and_shifts_ids(tmp_path):
    base = tmp_path / "ADEChallengeData2016"
    (base / "images/validation").mkdir(parents=True)
    (base / "annotations/validation").mkdir(parents=True)
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(base / "images/validation/ADE_val_00000001.jpg")
    raw = np.array([[0, 1, 2, 150, 150, 0]] * 4, np.uint8)
    Image.fromarray(raw, mode="L").save(base / "annotations/validation/ADE_val_00000001.png")
    ds = ADE20KDataset(tmp_path, "val")
    assert ds.num_classes == 150 and ds.classes[0] == "wall" and ds.classes[149] == "flag"
    assert ds[0][1][0].tolist() == [255, 0, 1, 149, 149, 255]
    with pytest.raises(ValueError, match="split 'test' unknown"):
        ADE20KDataset(tmp_path, "test")


def test_mixing_datasets_with_different_classes_is_refused(tmp_path, voc_sample):
    image, label, _ = voc_sample
    write_vocdevkit(tmp_path, image, label)
    (tmp_path / "own").mkdir()
    voc.write_sample(tmp_path / "own", "a", image, label)
    voc.write_split(tmp_path / "own", "val", ["a"])
    own = VOCLayoutDataset(tmp_path / "own", "val", classes=["background", "thing"])
    with pytest.raises(ValueError, match="class lists differ"):
        check_same_classes([VOCDataset(tmp_path / "VOCdevkit", "val"), own])


def test_augment_keeps_image_and_label_aligned():
    label = np.zeros((40, 60), np.uint8)
    label[:, 30:] = 2
    label[:5] = 255
    image = np.where(label[..., None] == 2, 255, 0).repeat(3, 2).astype(np.uint8)
    x, y = to_tensors(image, label)
    seen_flip = set()
    for seed in range(12):
        g = torch.Generator().manual_seed(seed)
        xa, ya = augment(x, y, 32, (0.5, 2.0), True, g)
        assert xa.shape == (3, 32, 32) and ya.shape == (32, 32)
        assert set(ya.unique().tolist()) <= {0, 2, 255}
        bright = xa[0] > 0
        for cls, expect in [(0, False), (2, True)]:
            m = ya == cls
            if m.sum() > 20:
                assert (bright[m] == expect).float().mean() > 0.75  # all but the blended boundary column
        if (ya == 2).any() and (ya == 0).any():
            cols = torch.nonzero(ya == 2)[:, 1].float().mean() > torch.nonzero(ya == 0)[:, 1].float().mean()
            seen_flip.add(bool(cols))
    assert seen_flip == {True, False}  # both orientations occur


def test_make_batch_depends_only_on_seed_and_step():
    data = [to_tensors(make_scene(s, size=32).image, make_scene(s, size=32).label) for s in range(5)]
    a = make_batch(data, 7, 4, 24, seed=1, scale_range=(0.8, 1.2), flip=True)
    b = make_batch(data, 7, 4, 24, seed=1, scale_range=(0.8, 1.2), flip=True)
    c = make_batch(data, 8, 4, 24, seed=1, scale_range=(0.8, 1.2), flip=True)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_photometric_batches_are_reproducible_and_leave_labels_alone():
    data = [to_tensors(make_scene(s, size=32).image, make_scene(s, size=32).label) for s in range(5)]
    plain = make_batch(data, 3, 4, 24, seed=1)
    a = make_batch(data, 3, 4, 24, seed=1, photometric=True)
    b = make_batch(data, 3, 4, 24, seed=1, photometric=True)
    assert torch.equal(a[0], b[0])  # a function of (seed, step): resumes see the same batch
    assert torch.equal(a[1], plain[1])  # labels never change
    assert a[0].shape == plain[0].shape and not torch.allclose(a[0], plain[0], atol=1e-3)
    # the distortion is photometric: the image still tells the labels apart as well as before
    checked = 0
    for x, xp, y in zip(a[0], plain[0], a[1]):
        fg, bg = y > 0, y == 0
        gap = lambda im: im.mean(0)[fg].mean() - im.mean(0)[bg].mean()  # noqa: E731
        if fg.sum() > 10 and bg.sum() > 10 and abs(gap(xp)) > 0.2:
            assert gap(x).sign() == gap(xp).sign()
            checked += 1
    assert checked


def test_photometric_normalized_round_trips_the_normalisation():
    x, _ = to_tensors(make_scene(0, size=32).image, make_scene(0, size=32).label)
    g = torch.Generator().manual_seed(0)
    unit = (x * STD + MEAN) * 2 - 1
    expect = ((photometric(unit[None], torch.Generator().manual_seed(0)) + 1) / 2 - MEAN) / STD
    assert torch.allclose(photometric_normalized(x[None], g), expect, atol=1e-5)

"""The COCO 2017 reader (real.kind: coco): semantic labels of the 80 thing classes from instance annotations."""
from __future__ import annotations

import json

import numpy as np
import pytest
from coco_maker import write_tiny_coco

from dmutils.config import load_params
from dmutils.errors import ParamsError
from dmutils.paths import REPO_ROOT
from dmutils.segment.data import COCO_CLASSES, COCODataset, open_real


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    return write_tiny_coco(tmp_path_factory.mktemp("coco"))


def test_labels_from_rle_with_overlap_and_crowd(coco):
    root, expected = coco
    ds = COCODataset(root, "val")
    assert len(ds) == 2 and ds.classes == COCO_CLASSES and len(ds.classes) == 81
    image, label = ds[0]
    assert image.shape == (12, 16, 3) and label.dtype == np.uint8
    np.testing.assert_array_equal(label, expected["000000000001.jpg"])
    assert ds.classes[17] == "dog" and ds.classes[16] == "cat" and ds.classes[1] == "person"


def test_polygon_label(coco):
    root, _ = coco
    _, label = COCODataset(root, "val2017")[1]
    assert set(np.unique(label)) == {0, 1, 16}
    assert (label[5:10, 5:10] == 1).all() and (label[:3, 12:] == 16).all()  # inside the square polygon; the RLE cat
    assert label[0, 0] == 0 and label[11, 11] == 0 and (label[:, :3] == 0).all()


def test_open_real_reads_coco_in_the_presets_label_space(coco):
    root, expected = coco
    params = load_params(REPO_ROOT / "params/papers/dataset_diffusion_coco.yaml", [f"real.root={root}"])
    assert ["background"] + params.class_names == COCO_CLASSES  # the preset lists the 80 classes in label order
    ds = open_real(params, params.real.test_split)
    np.testing.assert_array_equal(ds[0][1], expected["000000000001.jpg"])


def test_open_real_ignores_classes_the_run_does_not_list(coco):
    root, expected = coco
    params = load_params(None, ["real.kind=coco", f"real.root={root}", "classes=[{name: cat}, {name: dog}]"])
    ds = open_real(params, "val")
    assert ds.classes == ["background", "cat", "dog"] and len(ds) == 2
    want = expected["000000000001.jpg"].copy()
    want = np.select([want == 16, want == 17, want == 0], [1, 2, 0], 255).astype(np.uint8)  # person (crowd) was 255 already
    np.testing.assert_array_equal(ds[0][1], want)
    with pytest.raises(ParamsError, match=r"classes \['kitten'\] are not in COCODataset's label set"):
        open_real(load_params(None, ["real.kind=coco", f"real.root={root}", "classes=[{name: kitten}]"]), "val")


def test_missing_or_foreign_annotations_are_clear_errors(coco, tmp_path):
    with pytest.raises(FileNotFoundError, match="instances_train2017.json not found"):
        COCODataset(coco[0], "train")
    root, _ = write_tiny_coco(tmp_path / "other")
    path = root / "annotations" / "instances_val2017.json"
    data = json.loads(path.read_text())
    data["categories"][0]["name"] = "human"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="category 1 'human' is not COCO 2017's"):
        COCODataset(root, "val")

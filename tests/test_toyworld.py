"""The toy world: deterministic scenes, exact masks, captions that name exactly what is drawn."""
import numpy as np
import pytest
from PIL import Image, ImageDraw

from dmutils.data import toyworld, voc
from dmutils.data.toyworld import CLASS_NAMES, CLASSES, ToyObject, make_scene


def test_same_seed_same_scene_and_different_seed_differs():
    a, b, c = make_scene(7), make_scene(7), make_scene(8)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label) and a.caption == b.caption
    assert not np.array_equal(a.image, c.image)


@pytest.mark.parametrize("seed", range(40))
def test_caption_names_exactly_the_classes_in_the_mask(seed):
    s = make_scene(seed)
    in_mask = {CLASS_NAMES[i - 1] for i in np.unique(s.label) if i > 0}
    assert in_mask == set(s.classes)
    words = s.caption.replace(",", " ").split()
    for cls in CLASS_NAMES:
        spec = CLASSES[CLASS_NAMES.index(cls)]
        named = any(w in words for w in [cls, *spec["synonyms"]])
        assert named == (cls in s.classes), (s.caption, s.classes)
        if cls in s.classes:
            assert s.words[cls] in words


def test_mask_matches_the_drawn_shape():
    """A lone square drawn without supersampling tricks: label pixels are exactly the polygon's pixels."""
    obj = ToyObject("square", 0.5, 0.5, 0.5, 0.0, (0, 0, 255), 0.62)
    bg = np.full((64, 64, 3), 128, np.uint8)
    image, label = toyworld.render([obj], bg, supersample=1)
    ref = Image.new("L", (64, 64), 0)
    toyworld.draw_shape(ImageDraw.Draw(ref), obj, 64, CLASS_NAMES.index("square") + 1)
    assert np.array_equal(label, np.asarray(ref))
    assert (image[label > 0] == (0, 0, 255)).all()
    assert (image[label == 0] == 128).all()


def test_ring_has_a_hole_of_background():
    obj = ToyObject("ring", 0.5, 0.5, 0.6, 0.0, (255, 128, 0), 0.07)
    image, label = toyworld.render([obj], np.full((64, 64, 3), 100, np.uint8))
    assert label[32, 32] == 0 and (image[32, 32] == 100).all()
    assert label[32, 32 + 14] == CLASS_NAMES.index("ring") + 1


def test_every_class_renders_with_its_typical_colour():
    for cls in CLASS_NAMES:
        s = make_scene(3, classes=[cls])
        pix = s.image[s.label == CLASS_NAMES.index(cls) + 1].astype(float)
        assert len(pix) > 50
        assert pix.std(axis=1).mean() > 30  # saturated, unlike the grey backgrounds
        bg = s.image[s.label == 0].astype(float)
        assert bg.std(axis=1).mean() < pix.std(axis=1).mean()


def test_unknown_class_is_refused():
    with pytest.raises(ValueError, match="unknown toy classes"):
        make_scene(0, classes=["horse"])


def test_real_splits_in_voc_layout(tmp_path):
    toyworld.write_real_splits(tmp_path, {"train": 3, "test": 2})
    ids = voc.read_split(tmp_path, "train")
    assert ids == ["toy_train_000000", "toy_train_000001", "toy_train_000002"]
    label = voc.read_label(tmp_path / voc.LABELS / f"{ids[0]}.png")
    assert np.array_equal(label, make_scene(0).label)
    with Image.open(tmp_path / voc.LABELS / f"{ids[0]}.png") as im:
        assert im.mode == "P"
    assert voc.read_image(tmp_path / voc.IMAGES / f"{ids[0]}.jpg").shape == (64, 64, 3)
    with pytest.raises(FileNotFoundError, match="splits present"):
        voc.read_split(tmp_path, "val")

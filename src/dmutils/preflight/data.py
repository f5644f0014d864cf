"""Real data: one small check per ``real.kind`` in :data:`REAL_DATA_CHECKS`: the folders and split lists the
readers open, one label per split, and the class list against ``params.classes``."""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from dmutils.config import Params
from dmutils.errors import one_line
from dmutils.paths import writable_problem
from dmutils.preflight.core import Outcome


# ---------------------------------------------------------------------------------------------
# real data
# ---------------------------------------------------------------------------------------------
def _splits(params: Params, splits: list[str] | None = None) -> list[str]:
    """The splits to check: ``splits``, or all three that ``real`` names."""
    r = params.real
    return list(dict.fromkeys(splits if splits is not None else [r.train_split, r.val_split, r.test_split]))


def _split_key(params: Params, split: str) -> str:
    r = params.real
    return next(k for k in ("train_split", "val_split", "test_split") if getattr(r, k) == split)


def _check_first_sample(params: Params, split: str, image: Path, label: Path, read_label: Callable[[Path], object],
                        num_classes: int, out: Outcome) -> None:
    """A split's first sample: both files there, its label readable and its values within the class count."""
    kind = params.real.kind
    missing = [str(p) for p in (image, label) if not Path(p).is_file()]
    if missing:
        out.error(f"real data ({kind}, split {split!r}): {', '.join(missing)} listed but missing; fix the split list or the files")
        return
    try:
        values = sorted(set(read_label(label).ravel().tolist()) - {255})
    except (OSError, ValueError) as e:  # voc.read_label's DataError names the file and the fix
        out.error(f"real data: {one_line(e)}")
        return
    if values and values[-1] >= num_classes:
        out.error(f"real data ({kind}): {label} holds label {values[-1]} but the data has {num_classes} classes "
                  f"(0..{num_classes - 1}, 255 = ignore); is it a colour or instance PNG instead of class indices?")


def _compare_classes(params: Params, theirs: list[str], out: Outcome) -> None:
    """params.classes must name the data's classes in label order, or synthetic and real labels mean different things."""
    ours = params.class_names
    if ours != theirs:
        diff = next((f"#{i + 1} is {a!r} in params.classes but {b!r} in the data" for i, (a, b) in enumerate(zip(ours, theirs)) if a != b),
                    f"params.classes has {len(ours)} names, the data {len(theirs)}")
        out.warning(f"params.classes differ from the {params.real.kind} classes ({diff}): synthetic labels would not line up "
                    f"with the real ones; list the data's classes in its label order")


def _check_reader(params: Params, reader_name: str, how_to_get: str, names_in_data: Callable[[list[str]], list[str]],
                  splits: list[str] | None) -> Outcome:
    """Open each split with the project's reader (``dmutils.segment.data.<reader_name>``); check it has
    samples, its first sample's files, its first label's values against the class count, and the
    data's class names against ``params.classes``."""
    out = Outcome()
    root = params.resolve_path(params.real.root)
    if not root.is_dir():  # before importing the readers (torch): the common mistake costs no import
        return out.error(f"real.root {root} not found ({params.real.kind}); {how_to_get}, or --set real.root=<folder>")
    from dmutils.segment import data

    reader = getattr(data, reader_name)
    counts, classes = {}, None
    for split in _splits(params, splits):
        try:
            ds = reader(root, split)
        except (OSError, ValueError) as e:
            out.error(f"real data ({params.real.kind}, split {split!r}): {one_line(e)}")
            continue
        classes = list(ds.classes)
        counts[split] = len(ds)
        if not len(ds):
            out.error(f"real data ({params.real.kind}): split {split!r} under {root} has no samples; check the split list")
            continue
        _check_first_sample(params, split, *ds.items[0], ds.read_label, len(classes), out)
    if classes is not None:
        _compare_classes(params, names_in_data(classes), out)
    out.summary = f"{params.real.kind} at {root}: " + ", ".join(f"{s} {n}" for s, n in counts.items())
    return out


def check_voc_layout_real(params: Params, splits: list[str] | None = None) -> Outcome:
    """A folder this project wrote (``dmutils.data.voc`` layout + dataset.json), checked without the torch
    readers so the toy set-up's preflight stays well under a second."""
    from dmutils.data import voc

    out = Outcome()
    root = params.resolve_path(params.real.root)
    meta = root / "dataset.json"
    if not meta.is_file():
        return out.error(f"real.root {root} holds no dataset.json ({params.real.kind}); write it with `dmutils generate` or "
                         "`dmutils render-toy`, or --set real.root=<folder>")
    try:
        classes = json.loads(meta.read_text()).get("classes") or []
    except (OSError, ValueError) as e:
        return out.error(f"real data: {meta} is unreadable ({one_line(e)}); rewrite it or render the data again")
    if not classes:
        return out.error(f"real data: {meta} has no 'classes' list; add one (index = label value, 0 = background)")
    counts = {}
    for split in _splits(params, splits):
        try:
            ids = voc.read_split(root, split)
        except FileNotFoundError as e:
            out.error(f"real data ({params.real.kind}): {one_line(e)}; set real.{_split_key(params, split)} to one of them")
            continue
        counts[split] = len(ids)
        if not ids:
            out.error(f"real data ({params.real.kind}): split {split!r} under {root} has no samples; check the split list")
            continue
        _check_first_sample(params, split, root / voc.IMAGES / f"{ids[0]}.jpg", root / voc.LABELS / f"{ids[0]}.png",
                            voc.read_label, len(classes), out)
    _compare_classes(params, classes[1:] if classes[:1] == ["background"] else classes, out)
    out.summary = f"{params.real.kind} at {root}: " + ", ".join(f"{s} {n}" for s, n in counts.items())
    return out


def check_toy_real(params: Params, splits: list[str] | None = None) -> Outcome:
    root = params.resolve_path(params.real.root)
    if (root / "dataset.json").is_file():
        return check_voc_layout_real(params, splits)
    problem = writable_problem(root, "real.root")
    if problem:
        return Outcome().error(problem)
    return Outcome(f"toy at {root}: not there yet, rendered on first use ({params.real.toy_sizes})")


def check_voc_real(params: Params, splits: list[str] | None = None) -> Outcome:
    return _check_reader(params, "VOCDataset", "extract PASCAL VOC 2012's VOCtrainval_11-May-2012.tar (it unpacks to "
                         "VOCdevkit/VOC2012) so that this folder holds JPEGImages, SegmentationClass and ImageSets/Segmentation", lambda c: c[1:], splits)


def check_cityscapes_real(params: Params, splits: list[str] | None = None) -> Outcome:
    return _check_reader(params, "CityscapesDataset", "unzip leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip "
                         "(cityscapes-dataset.com) there, then run cityscapesscripts' createTrainIdLabelImgs", lambda c: c, splits)


def check_ade20k_real(params: Params, splits: list[str] | None = None) -> Outcome:
    return _check_reader(params, "ADE20KDataset", "unzip ADEChallengeData2016.zip (SceneParsing) so that this folder is or "
                         "holds ADEChallengeData2016/",
                         lambda c: c, splits)


def check_coco_real(params: Params, splits: list[str] | None = None) -> Outcome:
    """COCO 2017: ``annotations/instances_<split>.json`` and the image folder (checked by name, the JSON is not parsed)."""
    out = Outcome()
    root = params.resolve_path(params.real.root)
    if not root.is_dir():
        return out.error(f"real.root {root} not found (coco); extract COCO 2017 images and annotations_trainval2017.zip there, "
                         "or --set real.root=<folder>")
    found = []
    for split in _splits(params, splits):
        names = [split] if split.endswith("2017") else [split, f"{split}2017"]
        ann = next((a for a in (root / "annotations" / f"instances_{n}.json" for n in names) if a.is_file()), None)
        images = next((root / n for n in names if (root / n).is_dir()), None)
        if ann is None:
            out.error(f"real data (coco): no annotations/instances_{names[-1]}.json under {root}; extract annotations_trainval2017.zip there")
        if images is None:
            out.error(f"real data (coco): no image folder {names[-1]}/ under {root}; extract {names[-1]}.zip there")
        if ann is not None and images is not None:
            found.append(f"{split} {ann.name}")
    out.summary = f"coco at {root}: " + ", ".join(found)
    return out


# real.kind -> its check. A new kind is one function and one entry here.
REAL_DATA_CHECKS: dict[str, Callable[[Params, list[str] | None], Outcome]] = {
    "toy": check_toy_real, "voc_layout": check_voc_layout_real, "voc": check_voc_real,
    "cityscapes": check_cityscapes_real, "ade20k": check_ade20k_real, "coco": check_coco_real,
}


def check_real_data(params: Params, splits: list[str] | None = None) -> Outcome:
    """``real.kind`` / ``real.root``: the folders and split lists the readers open (``splits``, default all
    three of ``real``), and the class list."""
    check = REAL_DATA_CHECKS.get(params.real.kind)
    if check is None:
        return Outcome(f"{params.real.kind} at {params.real.root}").note(
            f"no preflight check for real.kind {params.real.kind!r}; not checked")
    return check(params, splits)

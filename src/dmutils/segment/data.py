"""Segmentation datasets in their native folder layouts, and the torch side of training on them.

Every reader returns ``(image uint8 (H, W, 3), label uint8 (H, W))`` with 255 = ignore and carries
``classes`` (names, index = label value) and ``palette`` ((256, 3) uint8), so training, evaluation
and plots never need to know where the data came from. Layouts:

- ``VOCDataset``: ``VOCdevkit/VOC2012/{JPEGImages, SegmentationClass[Aug], ImageSets/Segmentation}``
- ``CityscapesDataset``: ``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` and
  ``gtFine/<split>/<city>/*_gtFine_labelTrainIds.png`` (19 train ids, 255 = ignore)
- ``ADE20KDataset``: ``ADEChallengeData2016/{images,annotations}/{training,validation}``; the file's
  0 ("other") becomes 255 and classes shift by -1, so label 0 = wall (the mmseg ``reduce_zero_label``
  convention)
- ``VOCLayoutDataset``: what this project writes (``dmutils.data.voc``), class names from ``dataset.json``
- ``COCODataset``: COCO 2017 ``{train,val}2017/<id>.jpg`` and ``annotations/instances_{train,val}2017.json``; the
  80 thing classes as a semantic label made from the instance masks with pycocotools (category ids -> 1..80,
  0 = background; crowd regions and pixels claimed by instances of two different classes are 255, as Dataset
  Diffusion evaluates COCO)
"""
from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dmutils.config import Params
from dmutils.data import voc
from dmutils.errors import DataError, DataNotFoundError, ParamsError, one_line

IGNORE_INDEX = voc.IGNORE_INDEX

VOC_CLASSES = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor"]
CITYSCAPES_CLASSES = ["road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
                      "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
                      "bicycle"]
CITYSCAPES_COLORS = [(128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
                     (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
                     (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32)]
ADE20K_CLASSES = [
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet", "sidewalk",
    "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water", "painting", "sofa",
    "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp",
    "bathtub", "railing", "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink",
    "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table", "pillow",
    "screen door", "stairway", "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill",
    "bench", "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight",
    "booth", "television receiver", "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator",
    "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer",
    "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven",
    "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher",
    "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier",
    "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag"]
assert len(ADE20K_CLASSES) == 150
# COCO 2017's 80 thing categories: (category id, name) in id order; label value = position + 1.
COCO_CATEGORIES = [
    (1, "person"), (2, "bicycle"), (3, "car"), (4, "motorcycle"), (5, "airplane"), (6, "bus"), (7, "train"), (8, "truck"),
    (9, "boat"), (10, "traffic light"), (11, "fire hydrant"), (13, "stop sign"), (14, "parking meter"), (15, "bench"),
    (16, "bird"), (17, "cat"), (18, "dog"), (19, "horse"), (20, "sheep"), (21, "cow"), (22, "elephant"), (23, "bear"),
    (24, "zebra"), (25, "giraffe"), (27, "backpack"), (28, "umbrella"), (31, "handbag"), (32, "tie"), (33, "suitcase"),
    (34, "frisbee"), (35, "skis"), (36, "snowboard"), (37, "sports ball"), (38, "kite"), (39, "baseball bat"),
    (40, "baseball glove"), (41, "skateboard"), (42, "surfboard"), (43, "tennis racket"), (44, "bottle"),
    (46, "wine glass"), (47, "cup"), (48, "fork"), (49, "knife"), (50, "spoon"), (51, "bowl"), (52, "banana"),
    (53, "apple"), (54, "sandwich"), (55, "orange"), (56, "broccoli"), (57, "carrot"), (58, "hot dog"), (59, "pizza"),
    (60, "donut"), (61, "cake"), (62, "chair"), (63, "couch"), (64, "potted plant"), (65, "bed"), (67, "dining table"),
    (70, "toilet"), (72, "tv"), (73, "laptop"), (74, "mouse"), (75, "remote"), (76, "keyboard"), (77, "cell phone"),
    (78, "microwave"), (79, "oven"), (80, "toaster"), (81, "sink"), (82, "refrigerator"), (84, "book"), (85, "clock"),
    (86, "vase"), (87, "scissors"), (88, "teddy bear"), (89, "hair drier"), (90, "toothbrush")]
COCO_CLASSES = ["background"] + [name for _, name in COCO_CATEGORIES]
assert len(COCO_CATEGORIES) == 80


def _palette(colors: list[tuple[int, int, int]]) -> np.ndarray:
    pal = voc.voc_palette().copy()
    pal[: len(colors)] = colors
    return pal


class SegmentationDataset(torch.utils.data.Dataset):
    """Base of the readers: subclasses fill ``items`` with (image path, label path) pairs."""

    classes: list[str]
    palette: np.ndarray = voc.PALETTE
    layout: str = ""

    def __init__(self, root: str | Path, split: str):
        self.root, self.split = Path(root), split
        self.items: list[tuple[Path, Path]] = []

    def __len__(self) -> int:
        return len(self.items)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def _missing(self, what: Path) -> DataNotFoundError:
        return DataNotFoundError(f"{type(self).__name__}: {what} not found; expected layout: {one_line(self.layout)}")

    def read_label(self, path: Path) -> np.ndarray:
        return voc.read_label(path)  # raises DataError naming the file when it is missing or unreadable

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        img_path, lab_path = self.items[i]
        image, label = voc.read_image(img_path), self.read_label(lab_path)
        if image.shape[:2] != label.shape:
            raise DataError(f"{img_path} is {image.shape[:2]} but its label {lab_path} is {label.shape}; fix or remove this pair")
        return image, label


class VOCDataset(SegmentationDataset):
    """PASCAL VOC 2012; ``root`` may be the VOCdevkit or its VOC2012 folder. Uses the augmented
    labels (SegmentationClassAug, 10,582 train ids in ``train_aug.txt``) when that folder exists."""

    classes = VOC_CLASSES
    layout = ("VOCdevkit/VOC2012/JPEGImages/<id>.jpg\nVOCdevkit/VOC2012/SegmentationClass[Aug]/<id>.png\n"
              "VOCdevkit/VOC2012/ImageSets/Segmentation/<split>.txt")

    def __init__(self, root: str | Path, split: str = "val"):
        super().__init__(root, split)
        base = self.root / "VOC2012" if (self.root / "VOC2012").is_dir() else self.root
        for sub in (voc.IMAGES, voc.SPLITS):
            if not (base / sub).is_dir():
                raise self._missing(base / sub)
        labels = base / "SegmentationClassAug"
        if not labels.is_dir():
            labels = base / voc.LABELS
            if not labels.is_dir():
                raise self._missing(labels)
        ids = voc.read_split(base, split)
        self.items = [(base / voc.IMAGES / f"{i}.jpg", labels / f"{i}.png") for i in ids]


class VOCLayoutDataset(SegmentationDataset):
    """A dataset this project wrote (toy real splits, synthetic sets): VOC layout + dataset.json."""

    layout = "<root>/dataset.json (\"classes\": [...])\n<root>/JPEGImages/<id>.jpg\n<root>/SegmentationClass/<id>.png\n<root>/ImageSets/Segmentation/<split>.txt"

    def __init__(self, root: str | Path, split: str = "train", classes: list[str] | None = None):
        super().__init__(root, split)
        meta = self.root / "dataset.json"
        if classes is None:
            if not meta.is_file():
                raise self._missing(meta)
            try:
                classes = json.loads(meta.read_text()).get("classes")
            except ValueError as e:
                raise DataError(f"{meta} is not valid JSON ({e}); rewrite it or make the dataset again") from None
            if not classes:
                raise DataError(f"{meta} has no 'classes' list; add one (index = label value, 0 = background)")
        self.classes = list(classes)
        if not (self.root / voc.SPLITS).is_dir():
            raise self._missing(self.root / voc.SPLITS)
        ids = voc.read_split(self.root, split)
        self.items = [(self.root / voc.IMAGES / f"{i}.jpg", self.root / voc.LABELS / f"{i}.png") for i in ids]


class CityscapesDataset(SegmentationDataset):
    """Cityscapes fine annotations as train ids (made by cityscapesscripts' createTrainIdLabelImgs)."""

    classes = CITYSCAPES_CLASSES
    palette = _palette(CITYSCAPES_COLORS)
    layout = ("<root>/leftImg8bit/<split>/<city>/<name>_leftImg8bit.png\n"
              "<root>/gtFine/<split>/<city>/<name>_gtFine_labelTrainIds.png")

    def __init__(self, root: str | Path, split: str = "val"):
        super().__init__(root, split)
        img_dir, lab_dir = self.root / "leftImg8bit" / split, self.root / "gtFine" / split
        for d in (img_dir, lab_dir):
            if not d.is_dir():
                raise self._missing(d)
        for img in sorted(img_dir.glob("*/*_leftImg8bit.png")):
            lab = lab_dir / img.parent.name / img.name.replace("_leftImg8bit.png", "_gtFine_labelTrainIds.png")
            if not lab.is_file():
                raise DataNotFoundError(f"{lab} not found for {img}; run cityscapesscripts' createTrainIdLabelImgs")
            self.items.append((img, lab))


class ADE20KDataset(SegmentationDataset):
    """ADE20K SceneParsing (150 classes); 'other' (0 in the files) is ignored and ids shift by -1."""

    classes = ADE20K_CLASSES
    layout = ("ADEChallengeData2016/images/{training,validation}/<id>.jpg\n"
              "ADEChallengeData2016/annotations/{training,validation}/<id>.png")
    SPLITS = {"train": "training", "val": "validation", "training": "training", "validation": "validation"}

    def __init__(self, root: str | Path, split: str = "val"):
        super().__init__(root, split)
        if split not in self.SPLITS:
            raise DataError(f"ADE20K split {split!r} unknown; use one of {sorted(self.SPLITS)}")
        base = self.root / "ADEChallengeData2016" if (self.root / "ADEChallengeData2016").is_dir() else self.root
        img_dir, lab_dir = base / "images" / self.SPLITS[split], base / "annotations" / self.SPLITS[split]
        for d in (img_dir, lab_dir):
            if not d.is_dir():
                raise self._missing(d)
        self.items = [(p, lab_dir / f"{p.stem}.png") for p in sorted(img_dir.glob("*.jpg"))]

    def read_label(self, path: Path) -> np.ndarray:
        return super().read_label(path) - np.uint8(1)  # 0 -> 255 (uint8 wrap), k -> k - 1


class COCODataset(SegmentationDataset):
    """COCO 2017 instances as semantic labels of the 80 thing classes (``pycocotools`` decodes polygons and RLE).

    A pixel takes the class of the instances covering it; a crowd region (``iscrowd=1``) or a pixel covered by
    instances of two different classes is ignored (255), never guessed. Labels are made on read, not written."""

    classes = COCO_CLASSES
    layout = ("<root>/{train,val}2017/<file_name>.jpg\n<root>/annotations/instances_{train,val}2017.json")
    LABEL_OF_CATEGORY = {cid: i + 1 for i, (cid, _) in enumerate(COCO_CATEGORIES)}

    def __init__(self, root: str | Path, split: str = "val"):
        super().__init__(root, split)
        name = split if split.endswith("2017") else f"{split}2017"
        ann_file, img_dir = self.root / "annotations" / f"instances_{name}.json", self.root / name
        for what in (ann_file, img_dir):
            if not what.exists():
                raise self._missing(what)
        from pycocotools.coco import COCO

        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
            self.coco = COCO(str(ann_file))
        names = dict(COCO_CATEGORIES)
        for cid, cat in self.coco.cats.items():
            if names.get(cid) != cat["name"]:
                raise ValueError(f"{ann_file}: category {cid} {cat['name']!r} is not COCO 2017's ({names.get(cid)!r}); "
                                 "the reader knows the 80 thing categories of instances_*2017.json")
        self.image_ids = sorted(self.coco.imgs)
        self.items = [(img_dir / self.coco.imgs[i]["file_name"], ann_file) for i in self.image_ids]

    def label(self, index: int) -> np.ndarray:
        """The semantic label of image ``index`` (H, W) uint8."""
        info = self.coco.imgs[self.image_ids[index]]
        h, w = info["height"], info["width"]
        label = np.zeros((h, w), np.uint8)
        crowd = np.zeros((h, w), bool)
        classes_at = np.zeros((h, w), np.uint8)  # distinct classes covering each pixel
        anns = self.coco.loadAnns(self.coco.getAnnIds(imgIds=info["id"], iscrowd=None))
        for cls in sorted({a["category_id"] for a in anns}):
            mask = np.zeros((h, w), bool)
            for a in anns:
                if a["category_id"] != cls:
                    continue
                m = self.coco.annToMask(a).astype(bool)
                if a.get("iscrowd", 0):
                    crowd |= m
                else:
                    mask |= m
            label[mask] = self.LABEL_OF_CATEGORY[cls]
            classes_at += mask
        label[(classes_at > 1) | crowd] = IGNORE_INDEX
        return label

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        image, label = voc.read_image(self.items[i][0]), self.label(i)
        if image.shape[:2] != label.shape:
            raise ValueError(f"{self.items[i][0]} is {image.shape[:2]} but its annotation says {label.shape}")
        return image, label


READERS = {"voc": VOCDataset, "cityscapes": CityscapesDataset, "ade20k": ADE20KDataset, "voc_layout": VOCLayoutDataset,
           "coco": COCODataset}


def synthetic_dataset(params: Params, split: str = "train") -> SegmentationDataset:
    """The synthetic set that ``dmutils generate`` wrote for these params (``dataset.out_dir``)."""
    root = params.resolve_path(params.dataset.out_dir)
    if not (root / "dataset.json").is_file():
        raise DataNotFoundError(f"no synthetic dataset at {root}; run 'dmutils generate' with these params first")
    return VOCLayoutDataset(root, split)


class ArrayDataset(torch.utils.data.Dataset):
    """Samples held in memory as (image uint8 HWC, label uint8 HW) pairs, e.g. masks made on the fly
    by the ablation study; reads like the folder datasets (``classes``, ``root`` for logs)."""

    def __init__(self, pairs: list[tuple[np.ndarray, np.ndarray]], classes: list[str], root: str = "in memory"):
        self.pairs, self.classes, self.root = list(pairs), list(classes), root

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.pairs[i]


class LabelSpaceDataset(torch.utils.data.Dataset):
    """A benchmark read in the label space of a run: ``classes`` = background + the params' classes, matched by
    name. The benchmark's classes the run does not list become 255 (ignored), so a run over ADE20K's 30 most
    frequent classes is scored on those; a benchmark without a background class (Cityscapes) never shows label 0."""

    def __init__(self, dataset: SegmentationDataset, classes: list[str]):
        self.dataset, self.classes = dataset, list(classes)
        self.root, self.split, self.palette = dataset.root, getattr(dataset, "split", ""), dataset.palette
        missing = [c for c in self.classes[1:] if c not in dataset.classes]
        if missing:
            raise ParamsError(f"classes {missing} are not in {type(dataset).__name__}'s label set; name classes as the "
                              f"benchmark does, e.g. {', '.join(c for c in dataset.classes[:6] if c != 'background')}, ...")
        self.lut = np.full(256, IGNORE_INDEX, np.uint8)
        for i, name in enumerate(dataset.classes):
            self.lut[i] = self.classes.index(name) if name in self.classes else IGNORE_INDEX

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        image, label = self.dataset[i]
        return image, self.lut[label]


def open_real(params, split: str) -> SegmentationDataset:
    """The real dataset of ``params.real`` (toy splits are rendered on first use). A benchmark (VOC, Cityscapes,
    ADE20K, COCO) is read in the run's label space, background + ``params.classes`` (:class:`LabelSpaceDataset`),
    the label space of its synthetic datasets, unless the two are the same already."""
    real = params.real
    root = params.resolve_path(real.root)
    if real.kind == "toy":
        if not (root / "dataset.json").is_file():
            from dmutils.data.toyworld import write_real_splits
            from dmutils.paths import ensure_writable_dir

            ensure_writable_dir(root, "real.root")
            write_real_splits(root, real.toy_sizes)
        return VOCLayoutDataset(root, split)
    dataset = READERS[real.kind](root, split)
    classes = ["background"] + params.class_names
    if real.kind == "voc_layout" or list(dataset.classes) == classes:
        return dataset
    return LabelSpaceDataset(dataset, classes)


def check_same_classes(datasets: list[SegmentationDataset]) -> list[str]:
    """Mixed datasets must share one label set; say which differ instead of training on nonsense."""
    first = list(datasets[0].classes)
    for ds in datasets[1:]:
        if list(ds.classes) != first:
            raise DataError(f"class lists differ: {ds.root} has {list(ds.classes)}, {datasets[0].root} has {first}; "
                             "mix only datasets with the same classes in the same order")
    return first


# ---------------------------------------------------------------------------------------------
# torch side: tensors and augmentation
# ---------------------------------------------------------------------------------------------
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def to_tensors(image: np.ndarray, label: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 HWC / HW -> normalised float (3, H, W) and long (H, W)."""
    x = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float().div(255)  # a copy: inputs may be read-only
    return (x - MEAN) / STD, torch.from_numpy(np.array(label, dtype=np.int64))


def resize_pair(x: torch.Tensor, y: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Bilinear for the image, nearest for the label (labels are indices, never blended)."""
    x = F.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0]
    y = F.interpolate(y[None, None].float(), size=size, mode="nearest")[0, 0].long()
    return x, y


def augment(x: torch.Tensor, y: torch.Tensor, size: int, scale_range: tuple[float, float], flip: bool,
            generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random scale, random crop (padding with ignore when smaller), random horizontal flip.

    The image is first resized so its short side is ``size``, then scaled by a factor drawn from
    ``scale_range``; all randomness comes from ``generator`` so a step's batch is reproducible.
    """
    h, w = y.shape
    lo, hi = scale_range
    s = (lo + (hi - lo) * torch.rand((), generator=generator).item()) * size / min(h, w)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    x, y = resize_pair(x, y, (nh, nw))
    ph, pw = max(0, size - nh), max(0, size - nw)
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), value=0.0)
        y = F.pad(y, (0, pw, 0, ph), value=IGNORE_INDEX)
        nh, nw = y.shape
    top = int(torch.randint(0, nh - size + 1, (), generator=generator))
    left = int(torch.randint(0, nw - size + 1, (), generator=generator))
    x, y = x[:, top:top + size, left:left + size], y[top:top + size, left:left + size]
    if flip and torch.rand((), generator=generator).item() < 0.5:
        x, y = x.flip(-1), y.flip(-1)
    return x, y


def photometric(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Photometric distortion of a batch (N, 3, H, W) in [-1, 1]: global tint, gain, contrast, softness
    (3x3 binomial blur on half of the images), pixel noise.

    The changes that separate one image source from another (a generator's colour casts and soft
    edges, a camera's noise) without moving a pixel's label: the oracle learns with it, and so may a
    segmenter (``train.photometric``), as mmsegmentation's PhotoMetricDistortion does for VOC.
    """
    n = x.shape[0]
    r = lambda *s: torch.rand(*s, generator=generator)  # noqa: E731
    x = x * (0.7 + 0.6 * r(n, 1, 1, 1)) + (r(n, 3, 1, 1) - 0.5) * 0.5
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = mean + (x - mean) * (0.7 + 0.6 * r(n, 1, 1, 1))
    blur = r(n) < 0.5
    if blur.any():
        k = torch.tensor([1.0, 2.0, 1.0])
        k = (k[:, None] * k[None]) / 16
        xb = F.conv2d(F.pad(x[blur], (1, 1, 1, 1), mode="replicate"), k.expand(3, 1, 3, 3).contiguous(), groups=3)
        x = x.clone()
        x[blur] = xb
    x = x + torch.randn(x.shape, generator=generator) * 0.08 * r(n, 1, 1, 1)
    return x.clamp(-1.5, 1.5)


def photometric_normalized(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``photometric`` on a batch normalised with ImageNet's mean and std (what ``to_tensors`` gives)."""
    unit = (x * STD + MEAN) * 2 - 1
    return ((photometric(unit, generator) + 1) / 2 - MEAN) / STD


class TensorCache(torch.utils.data.Dataset):
    """Decoded samples kept in memory as tensors at a fixed short side (small datasets: decode once)."""

    def __init__(self, dataset: torch.utils.data.Dataset, short_side: int | None = None):
        self.samples = []
        for i in range(len(dataset)):
            x, y = to_tensors(*dataset[i])
            if short_side is not None and min(y.shape) != short_side:
                s = short_side / min(y.shape)
                x, y = resize_pair(x, y, (round(y.shape[0] * s), round(y.shape[1] * s)))
            self.samples.append((x, y))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.samples[i]


def make_batch(dataset, step: int, batch_size: int, size: int, seed: int, scale_range=(1.0, 1.0),
               flip: bool = False, photometric: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch number ``step``: indices and augmentation are a function of (seed, step) only, so a
    resumed run sees exactly the batches an uninterrupted one would."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    idx = torch.randint(0, len(dataset), (batch_size,), generator=g).tolist()
    xs, ys = zip(*(augment(*_as_tensors(dataset[i]), size, scale_range, flip, g) for i in idx))
    x = torch.stack(xs)
    return (photometric_normalized(x, g) if photometric else x), torch.stack(ys)


def _as_tensors(sample) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = sample
    return (x, y) if isinstance(x, torch.Tensor) else to_tensors(x, y)


def center_inputs(image: np.ndarray, size: int) -> torch.Tensor:
    """An evaluation input: normalised, short side resized to ``size`` (aspect kept)."""
    x, _ = to_tensors(image, np.zeros(image.shape[:2], np.uint8))
    s = size / min(x.shape[1:])
    if s != 1:
        x = F.interpolate(x[None], size=(math.ceil(x.shape[1] * s - 1e-6), math.ceil(x.shape[2] * s - 1e-6)),
                          mode="bilinear", align_corners=False)[0]
    return x

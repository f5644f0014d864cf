"""A tiny COCO 2017-format folder for tests: instances JSON (polygons, compressed RLE, a crowd in uncompressed RLE)
and the images it names. ``expected_labels`` are the semantic labels the reader must produce, built with numpy."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from dmutils.data import voc
from dmutils.segment.data import COCO_CATEGORIES

DOG, CAT, PERSON = 18, 17, 1  # COCO category ids; labels 17, 16, 1 (ids 12 and 26 are unused, so ids shift)


def _box(h: int, w: int, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[rows[0]:rows[1], cols[0]:cols[1]] = 1
    return m


def _rle(m: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(m))
    return {"size": rle["size"], "counts": rle["counts"].decode()}


def _uncompressed_rle(m: np.ndarray) -> dict:
    flat = m.flatten(order="F")
    counts, value, run = [], 0, 0
    for v in flat:
        if v != value:
            counts.append(run)
            value, run = v, 0
        run += 1
    counts.append(run)
    return {"size": list(m.shape), "counts": counts}


def write_tiny_coco(root: Path, split: str = "val", seed: int = 0) -> tuple[Path, dict[str, np.ndarray]]:
    """``root/annotations/instances_<split>2017.json`` + ``root/<split>2017/*.jpg``; returns (root, file -> label)."""
    root = Path(root)
    h, w = 12, 16
    rng = np.random.default_rng(seed)
    dog_a, dog_b = _box(h, w, (0, 4), (0, 5)), _box(h, w, (0, 2), (4, 7))   # two dogs, overlapping: still dog
    cat = _box(h, w, (2, 6), (3, 8))                                        # overlaps dog_a at rows 2-3, cols 3-4
    crowd = _box(h, w, (8, 12), (0, 3))                                     # a crowd of people
    anns = [(1, DOG, _rle(dog_a), 0), (1, DOG, _rle(dog_b), 0), (1, CAT, _rle(cat), 0), (1, PERSON, _uncompressed_rle(crowd), 1),
            # image 2: a person as a polygon (a square with corners at pixel centres 4 and 10) and a cat as RLE
            (2, PERSON, [[4, 4, 10, 4, 10, 10, 4, 10]], 0), (2, CAT, _rle(_box(h, w, (0, 3), (12, 16))), 0)]
    expected1 = np.zeros((h, w), np.uint8)
    expected1[(dog_a | dog_b).astype(bool)] = 17
    expected1[cat.astype(bool)] = 16
    expected1[(dog_a & cat).astype(bool)] = 255
    expected1[crowd.astype(bool)] = 255
    images = [{"id": 1, "file_name": "000000000001.jpg", "height": h, "width": w},
              {"id": 2, "file_name": "000000000002.jpg", "height": h, "width": w}]
    annotations = []
    for n, (image_id, cid, seg, crowd_flag) in enumerate(anns, start=1):
        annotations.append({"id": n, "image_id": image_id, "category_id": cid, "segmentation": seg, "iscrowd": crowd_flag,
                            "area": 1.0, "bbox": [0, 0, 1, 1]})
    data = {"images": images, "annotations": annotations,
            "categories": [{"id": cid, "name": name, "supercategory": "thing"} for cid, name in COCO_CATEGORIES]}
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(data))
    for im in images:
        voc.write_image(root / f"{split}2017" / im["file_name"], rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    return root, {"000000000001.jpg": expected1}

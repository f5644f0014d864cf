"""``dmutils preview``: the contact sheet's grid, tiles, legend and page, and its one-line errors.

Datasets are written with the generator's own writers (no model): small palette labels with two
classes, an ignore band, and a rejected sample that has no files.
"""
import json
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from dmutils import commands as cli
from dmutils.config import Params
from dmutils.data import voc
from dmutils.dataset import preview as pv
from dmutils.dataset.layout import MANIFEST, META, Manifest, dataset_meta, write_splits

SIZE = 32


def write_dataset(root: Path, n: int = 6, ignore: bool = True) -> dict:
    """n samples of SIZE px, the last one rejected; sample 1 in val. Prompts hold HTML specials."""
    params = Params()
    meta = dataset_meta(params)
    root.mkdir(parents=True)
    voc.atomic_write_bytes(root / META, json.dumps(meta).encode())
    rng = np.random.default_rng(0)
    names = meta["classes"]
    manifest = Manifest(root / MANIFEST)
    for i in range(n):
        sid = f"syn_{i:06d}"
        a, b = names[1 + i % 6], names[1 + (i + 2) % 6]
        label = np.zeros((SIZE, SIZE), np.uint8)
        label[4:14, 4:14] = names.index(a)
        label[18:30, 16:28] = names.index(b)
        if ignore:
            label[3, 3:15] = voc.IGNORE_INDEX  # an uncertain band above the first object
        ok = i < n - 1
        if ok:
            voc.write_sample(root, sid, rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8), label)
        manifest.append({"index": i, "id": sid, "prompt": f"a <{a}> & a {b}", "seed": 100 + i, "classes": [a, b],
                         "fractions": {}, "split": "val" if i == 1 else "train", "status": "ok" if ok else "rejected",
                         "reason": None if ok else "empty mask: test"})
    write_splits(root, manifest.read())
    return meta


class PageParser(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids, self.legend, self.images = [], [], 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section" and "data-id" in a:
            self.ids.append(a["data-id"])
        if tag == "li" and "data-class" in a:
            self.legend.append(a["data-class"])
        if tag == "img" and a.get("src", "").startswith("data:image/png;base64,"):
            self.images += 1


def read_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        return np.array(img.convert("RGB"))


def crop(sheet: np.ndarray, box) -> np.ndarray:
    x0, y0, x1, y1 = box
    return sheet[y0:y1, x0:x1]


def test_sheet_grid_and_tiles(tmp_path):
    root = tmp_path / "ds"
    meta = write_dataset(root)
    result = pv.make_preview(root, columns=2, tile=96)
    assert result["png"] == root / "preview.png" and result["html"] == root / "preview.html"
    ids = [f"syn_{i:06d}" for i in range(5)]  # the rejected sample has no files and is not shown
    assert result["shown"] == ids and result["total"] == 5 and result["grid"] == (3, 2)
    sheet = read_png(result["png"])
    scale = 96 // SIZE  # 32 px -> 96 px: whole-number nearest-neighbour upscale
    card_w = 3 * SIZE * scale + 2 * pv.GAP
    assert sheet.shape[1] == 2 * pv.PAD + 2 * card_w + pv.CARD_GAP
    boxes = result["boxes"]
    assert sheet.shape[0] == max(b["image"][3] for b in boxes.values()) + pv.PAD
    # a grid: same x per column, same y per row, the three tiles side by side at the tile size
    for n, sid in enumerate(ids):
        r, c = divmod(n, 2)
        first = boxes[ids[c]]["image"]
        assert boxes[sid]["image"][0] == first[0] and boxes[sid]["image"][1] == boxes[ids[2 * r]]["image"][1]
        for p, panel in enumerate(pv.PANELS):
            x0, y0, x1, y1 = boxes[sid][panel]
            assert (x1 - x0, y1 - y0) == (SIZE * scale, SIZE * scale) and x0 == first[0] + p * (SIZE * scale + pv.GAP)
    lut = pv.colour_table(meta)
    for sid in ids:
        image = voc.read_image(root / voc.IMAGES / f"{sid}.jpg").repeat(scale, 0).repeat(scale, 1)
        label = voc.read_label(root / voc.LABELS / f"{sid}.png").repeat(scale, 0).repeat(scale, 1)
        assert np.array_equal(crop(sheet, boxes[sid]["image"]), image)
        assert np.array_equal(crop(sheet, boxes[sid]["mask"]), lut[label])  # flat palette colours, nothing blended
        outlined = crop(sheet, boxes[sid]["outlines"])
        edge = pv.outline_mask(label)
        inner = pv.outline_mask(label, pv.OUTLINE + 1) & ~edge
        assert np.array_equal(outlined[edge], lut[label][edge])  # each class's border in its own colour
        assert (outlined[inner] == 255).all()
        rest = ~(edge | inner)
        assert np.array_equal(outlined[rest], image[rest])  # everywhere else the image, untouched
        for k in set(np.unique(label)) - {0, voc.IGNORE_INDEX}:
            assert (edge & (label == k)).any(), f"class {k} has no outline in {sid}"
        assert not (edge & ((label == 0) | (label == voc.IGNORE_INDEX))).any()


def test_page_names_every_sample_and_class(tmp_path):
    root = tmp_path / "ds"
    meta = write_dataset(root)
    result = pv.make_preview(root, out=tmp_path / "out")
    assert result["png"].parent == tmp_path / "out" and not (root / "preview.png").exists()
    page = result["html"].read_text()
    parsed = PageParser()
    parsed.feed(page)
    assert parsed.ids == result["shown"] == [f"syn_{i:06d}" for i in range(5)]
    assert parsed.legend == meta["classes"] + ["ignore (255)"]
    assert parsed.images == 3 * 5
    assert "a &lt;circle&gt; &amp; a triangle" in page and "<circle>" not in page  # prompts escaped
    assert "seed 100" in page and "val" in page


def test_no_ignore_entry_without_ignore_pixels_and_max_images(tmp_path):
    root = tmp_path / "ds"
    meta = write_dataset(root, ignore=False)
    result = pv.make_preview(root, max_images=3)
    assert result["shown"] == ["syn_000000", "syn_000001", "syn_000002"] and result["total"] == 5
    parsed = PageParser()
    parsed.feed(result["html"].read_text())
    assert parsed.legend == meta["classes"]
    assert "3 of 5 samples" in result["html"].read_text()


def test_other_datasets_without_prompts(tmp_path):
    """The toy world's real splits: a dataset.json without params, no manifest; 64 px tiles upscaled x3."""
    from dmutils.data.toyworld import CLASS_NAMES, write_real_splits

    root = write_real_splits(tmp_path / "real", {"train": 2, "val": 1})
    result = pv.make_preview(root)
    assert result["shown"] == ["toy_train_000000", "toy_train_000001", "toy_val_000000"]
    x0, y0, x1, y1 = result["boxes"]["toy_val_000000"]["mask"]
    assert (x1 - x0, y1 - y0) == (192, 192)
    parsed = PageParser()
    parsed.feed(result["html"].read_text())
    assert parsed.legend[: 1 + len(CLASS_NAMES)] == ["background", *CLASS_NAMES]


def test_large_images_are_shrunk_to_the_tile():
    assert pv.tile_size(64, 64) == (192, 192) and pv.tile_size(50, 40) == (150, 120)
    assert pv.tile_size(512, 512) == (192, 192) and pv.tile_size(512, 768) == (128, 192)
    lut = voc.PALETTE.copy()
    label = np.zeros((400, 400), np.uint8)
    label[100:300, 100:300] = 1
    tiles = pv.make_tiles(np.zeros((400, 400, 3), np.uint8), label, lut, tile=100)
    assert all(t.shape == (100, 100, 3) for t in tiles.values())
    assert set(map(tuple, tiles["mask"].reshape(-1, 3))) == {(0, 0, 0), tuple(lut[1])}  # nearest: no blended colours


@pytest.mark.parametrize("case", ["missing", "empty", "file", "no-splits"])
def test_bad_folder_is_one_line(tmp_path, capsys, case):
    target = tmp_path / "x"
    if case == "empty":
        target.mkdir()
    elif case == "file":
        target.write_text("not a folder")
    elif case == "no-splits":
        target.mkdir()
        (target / META).write_text(json.dumps({"classes": ["background", "a"]}))
    assert cli.main(["preview", str(target)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dmutils preview: error: ") and str(target) in err[0]
    assert not (target / "preview.png").exists() if target.is_dir() else True


def test_cli_exit_code_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "dmutils", "preview", str(tmp_path / "nope")], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    want = f"dmutils preview: error: {tmp_path / 'nope'} does not exist; give a dataset folder ('dmutils generate' writes one)"
    assert proc.stderr.strip().splitlines() == [want]


def test_cli_writes_both_files(tmp_path, capsys):
    write_dataset(tmp_path / "ds", n=3)
    assert cli.main(["preview", str(tmp_path / "ds"), "--max-images", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == {"png": str(tmp_path / "ds" / "preview.png"), "html": str(tmp_path / "ds" / "preview.html"),
                   "shown": 1, "total": 2}

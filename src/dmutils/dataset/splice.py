"""DiffuMask's splicing augmentation: mosaics of 1x2, 2x2 or 3x3 generated samples with their masks.

A mosaic has the **dataset's image size** (not the grid's r*H x c*W): every tile is centre-cropped to
its cell's aspect ratio and resized into the cell (image: bilinear/antialiased, mask: nearest), so
loaders and segmenters see one image size, and what splicing is for -- smaller objects, several
instances and classes per image -- comes from the shrinking. Cropping rather than squeezing keeps
shapes undistorted; the mask is cropped and resized with the same boxes, so it stays aligned.
Cells split the side as evenly as integers allow (64 px in 3 rows: 21, 21, 22).

Photometric options (``dataset.splice.blur``, ``color_jitter``) change the image only, after
splicing: a Gaussian blur of radius ``U(0, blur)`` px and brightness/contrast/saturation factors
in ``[1 - j, 1 + j]`` (PIL's ImageEnhance). Mosaic ``k`` draws its grid, tiles and jitter from
(run.seed, k), so the same params give the same mosaics.

Mosaics are drawn from the source's ``train`` split only (val images never leak into training
mosaics) and written as a new VOC-layout dataset whose ``train`` split lists them all.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from dmutils.config import SpliceParams
from dmutils.data import voc
from dmutils.dataset.prompts import hash_int
from dmutils.errors import ParamsError
from dmutils.locks import folder_lock
from dmutils.paths import atomic_write_bytes
from dmutils.progress import progress_bar


def _edges(n: int, parts: int) -> list[int]:
    return [round(n * k / parts) for k in range(parts + 1)]


def _crop_to_aspect(h: int, w: int, ch: int, cw: int) -> tuple[int, int, int, int]:
    """Centre box (left, top, right, bottom) of an h x w tile with the aspect ratio ch : cw."""
    if w * ch > h * cw:  # too wide
        nw = max(1, round(h * cw / ch))
        left = (w - nw) // 2
        return left, 0, left + nw, h
    nh = max(1, round(w * ch / cw))
    top = (h - nh) // 2
    return 0, top, w, top + nh


def splice(images: list[np.ndarray], labels: list[np.ndarray], grid: tuple[int, int], size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """One mosaic of ``rows * cols`` tiles (row-major) at ``size`` = (H, W): image (H, W, 3), label (H, W)."""
    rows, cols = grid
    if len(images) != rows * cols or len(labels) != rows * cols:
        raise ValueError(f"a {rows}x{cols} mosaic needs {rows * cols} tiles, got {len(images)} images, {len(labels)} labels")
    H, W = size
    ys, xs = _edges(H, rows), _edges(W, cols)
    out_img = np.zeros((H, W, 3), np.uint8)
    out_lab = np.zeros((H, W), np.uint8)
    for k, (img, lab) in enumerate(zip(images, labels)):
        if img.shape[:2] != lab.shape:
            raise ValueError(f"tile {k}: image {img.shape[:2]} and label {lab.shape} differ in size")
        r, c = divmod(k, cols)
        ch, cw = ys[r + 1] - ys[r], xs[c + 1] - xs[c]
        box = _crop_to_aspect(*lab.shape, ch, cw)
        tile = Image.fromarray(img).resize((cw, ch), Image.BILINEAR, box=box)
        tlab = Image.fromarray(lab).resize((cw, ch), Image.NEAREST, box=box)
        out_img[ys[r]:ys[r + 1], xs[c]:xs[c + 1]] = np.asarray(tile)
        out_lab[ys[r]:ys[r + 1], xs[c]:xs[c + 1]] = np.asarray(tlab)
    return out_img, out_lab


def photometric(image: np.ndarray, rng: np.random.Generator, blur: float, jitter: float) -> np.ndarray:
    """Gaussian blur and colour jitter; the label is untouched (pixels do not move)."""
    img = Image.fromarray(image)
    if jitter > 0:
        for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
            img = enhance(img).enhance(float(rng.uniform(1 - jitter, 1 + jitter)))
    if blur > 0:
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0, blur))))
    return np.asarray(img)


def draw_mosaic(k: int, n: int, splice_params: SpliceParams, seed: int) -> tuple[tuple[int, int], list[int], np.random.Generator]:
    """Mosaic ``k`` of a source of ``n`` samples: its grid, the indices of its tiles (row-major, no
    repeats) and the generator its photometric jitter draws from, all from (seed, k) alone."""
    grids = [tuple(g) for g in splice_params.grids]
    rng = np.random.default_rng([hash_int("dmutils-splice", seed, k) % 2**63])
    grid = grids[int(rng.integers(len(grids)))]
    return grid, [int(j) for j in rng.choice(n, size=grid[0] * grid[1], replace=False)], rng


def check_grids(splice_params: SpliceParams, n: int, what: str) -> None:
    grids = [tuple(g) for g in splice_params.grids]
    bad = [g for g in grids if len(g) != 2 or min(g) < 1]
    if bad or not grids:
        raise ParamsError(f"dataset.splice.grids must be a non-empty list of [rows, cols] with rows, cols >= 1; got {splice_params.grids}")
    need = max(r * c for r, c in grids)
    if n < need:
        raise ParamsError(f"{what} has {n} train samples; a {need}-tile mosaic needs at least {need} "
                          f"(generate more or drop the larger grids from dataset.splice.grids)")


def grids_that_fit(splice_params: SpliceParams, n: int) -> tuple[SpliceParams, list[tuple[int, int]]]:
    """The splice settings with only the grids ``n`` samples can fill, and the grids dropped: noise learning may
    leave fewer samples than the largest mosaic needs, after the count was checked on the whole dataset."""
    grids = [tuple(g) for g in splice_params.grids]
    fit = [g for g in grids if g[0] * g[1] <= n]
    if not fit:
        return splice_params, []  # MosaicSet's check says what is wrong
    return splice_params.model_copy(update={"grids": fit}), [g for g in grids if g not in fit]


class MosaicSet:
    """DiffuMask's mosaics of a dataset's samples, made when read: mosaic ``k`` is drawn from (seed, k) as
    :func:`splice_dataset` draws it, from ``source[j]`` = (image, label). ``dmutils train`` adds one to the synthetic
    data when ``dataset.splice.enabled``, and the studies to their in-memory samples, without writing a dataset."""

    def __init__(self, source, splice_params: SpliceParams, seed: int = 0):
        self.root = f"{getattr(source, 'root', 'samples')}[mosaics]"
        check_grids(splice_params, len(source), str(getattr(source, "root", "the sample list")))
        self.source, self.params, self.seed = source, splice_params, seed
        self.classes = list(getattr(source, "classes", []))
        self.size = np.asarray(source[0][0]).shape[:2]

    def __len__(self) -> int:
        return self.params.count or len(self.source)

    def __getitem__(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= k < len(self):
            raise IndexError(k)
        grid, tiles, rng = draw_mosaic(k, len(self.source), self.params, self.seed)
        images, labels = zip(*(self.source[j] for j in tiles))
        image, label = splice(list(images), list(labels), grid, self.size)
        return photometric(image, rng, self.params.blur, self.params.color_jitter), label


def mosaics(images: list[np.ndarray], labels: list[np.ndarray], splice_params: SpliceParams,
            seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Every mosaic of in-memory samples, as a list (:class:`MosaicSet` read to the end)."""
    made = MosaicSet(list(zip(images, labels)), splice_params, seed)
    return [made[k] for k in range(len(made))]


def _read_meta(src: Path) -> dict:
    from dmutils.dataset.layout import read_meta

    return read_meta(src)


def splice_dataset(src: str | Path, out: str | Path, splice_params: SpliceParams, seed: int = 0,
                   progress: bool = True) -> dict:
    """Write ``splice_params.count`` mosaics of ``src``'s train samples to ``out`` (VOC layout); returns a summary."""
    src, out = Path(src), Path(out)
    meta = _read_meta(src)
    ids = voc.read_split(src, "train")
    check_grids(splice_params, len(ids), str(src))
    if out.resolve() == src.resolve():
        raise ParamsError("splice output must be a new folder, not the source dataset")
    with folder_lock(out, "--out"):  # one job a folder
        first = voc.read_image(src / voc.IMAGES / f"{ids[0]}.jpg")
        size = first.shape[:2]
        count = splice_params.count or len(ids)
        manifest, written = [], []
        for k in progress_bar(range(count), desc="splice", unit="mosaic", disable=not progress):
            grid, tiles, rng = draw_mosaic(k, len(ids), splice_params, seed)
            picks = [ids[j] for j in tiles]
            images = [voc.read_image(src / voc.IMAGES / f"{i}.jpg") for i in picks]
            labels = [voc.read_label(src / voc.LABELS / f"{i}.png") for i in picks]
            image, label = splice(images, labels, grid, size)
            image = photometric(image, rng, splice_params.blur, splice_params.color_jitter)
            sid = f"splice_{k:06d}"
            voc.write_sample(out, sid, image, label)
            present = [int(v) for v in np.unique(label) if v != voc.IGNORE_INDEX]
            manifest.append({"id": sid, "grid": list(grid), "sources": picks, "labels": present})
            written.append(sid)
        voc.write_split(out, "train", written)
        atomic_write_bytes(out / "manifest.jsonl", "".join(json.dumps(m, sort_keys=True) + "\n" for m in manifest).encode())
        new_meta = {k: v for k, v in meta.items() if k in ("classes", "palette", "image_size")}
        new_meta.update(name=f"{meta.get('name', src.name)}-spliced", source=str(src), seed=seed,
                        splice=splice_params.model_dump(mode="json"))
        atomic_write_bytes(out / "dataset.json", json.dumps(new_meta, indent=2, sort_keys=True).encode())
        grid_counts: dict[str, int] = {}
        for m in manifest:
            key = "x".join(map(str, m["grid"]))
            grid_counts[key] = grid_counts.get(key, 0) + 1
        return {"out_dir": str(out), "written": len(written), "grids": grid_counts}

"""PASCAL VOC 2012 layout: palette PNG labels, atomic sample writes, split lists.

Every dataset this project writes (the toy world's real splits and every synthetic set) uses
this layout, so standard VOC loaders read them unchanged::

    root/JPEGImages/<id>.jpg
    root/SegmentationClass/<id>.png      palette PNG, 0 = background, 255 = ignore
    root/ImageSets/Segmentation/<split>.txt
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from dmutils.errors import DataError, DataNotFoundError
from dmutils.paths import atomic_write_bytes

IGNORE_INDEX = 255
IMAGES = "JPEGImages"
LABELS = "SegmentationClass"
SPLITS = "ImageSets/Segmentation"


def voc_palette(n: int = 256) -> np.ndarray:
    """The standard VOC colour map (bit-interleaved), shape (n, 3) uint8; index 255 is (224, 224, 192)."""
    pal = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    return pal


PALETTE = voc_palette()


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    import io

    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def label_to_png(label: np.ndarray) -> bytes:
    """A (H, W) uint8 label map as palette-PNG bytes with the VOC palette."""
    if label.ndim != 2:
        raise ValueError(f"label must be (H, W), got shape {label.shape}")
    img = Image.fromarray(label.astype(np.uint8), mode="P")
    img.putpalette(PALETTE.reshape(-1).tolist())
    return _encode(img, "PNG", optimize=False)


def write_label(path: Path, label: np.ndarray) -> None:
    atomic_write_bytes(Path(path), label_to_png(label))


def write_image(path: Path, image: np.ndarray | Image.Image, quality: int = 95) -> None:
    img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))
    atomic_write_bytes(Path(path), _encode(img.convert("RGB"), "JPEG", quality=quality, subsampling=0))


def read_label(path: Path) -> np.ndarray:
    """A palette PNG's indices (not its colours) as (H, W) uint8."""
    try:
        with Image.open(path) as img:
            mode = img.mode
            label = np.array(img, dtype=np.uint8) if mode in ("P", "L") else None
    except FileNotFoundError:
        raise DataNotFoundError(f"{path}: label file not found; fix the split list or restore the file") from None
    except (OSError, ValueError, SyntaxError) as e:  # PIL: OSError for unknown formats, ValueError/SyntaxError for broken headers
        raise DataError(f"{path}: cannot read label ({e}); replace or remove this file") from None
    if label is None:
        raise DataError(f"{path}: expected a palette (P) or grey (L) PNG of class indices, got mode {mode}")
    return label


def read_image(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as img:
            return np.array(img.convert("RGB"))
    except FileNotFoundError:
        raise DataNotFoundError(f"{path}: image file not found; fix the split list or restore the file") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise DataError(f"{path}: cannot read image ({e}); replace or remove this file (a generated one: delete it and "
                        "re-run to regenerate)") from None


def write_sample(root: Path, sample_id: str, image, label: np.ndarray) -> None:
    """Image then label, each atomically; callers write their manifest line last."""
    root = Path(root)
    write_image(root / IMAGES / f"{sample_id}.jpg", image)
    write_label(root / LABELS / f"{sample_id}.png", label)


def write_split(root: Path, split: str, ids: list[str]) -> None:
    atomic_write_bytes(Path(root) / SPLITS / f"{split}.txt", "".join(f"{i}\n" for i in ids).encode())


def read_split(root: Path, split: str) -> list[str]:
    path = Path(root) / SPLITS / f"{split}.txt"
    if not path.is_file():
        have = sorted(p.stem for p in (Path(root) / SPLITS).glob("*.txt"))
        raise DataNotFoundError(f"{path} not found; splits present: {have or 'none'}")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]

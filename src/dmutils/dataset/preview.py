"""``dmutils preview DATASET [--out DIR] [--max-images N]``: a contact sheet of a dataset folder, to see at a
glance whether its masks are any good.

Writes two files into the dataset folder (or ``--out``)::

    preview.png    a grid of samples: image | mask (flat palette colours) | image with class outlines,
                   each under its sample id, split, seed and prompt; a class legend on top
    preview.html   the same samples and legend as one self-contained page (images embedded as data URIs),
                   the prompt as selectable text

Any folder in this project's VOC layout with a ``dataset.json`` naming its classes can be previewed
(a generated set, a spliced or remasked one, the toy world's real splits); prompts and seeds come from
``manifest.jsonl`` when it has them. Samples are the ones the split lists name (rejected samples have
no files), in manifest index order, the first ``max_images`` of them.

Small images (the toy world's 64 px) are upscaled by a whole factor with nearest-neighbour, so one
source pixel is a block of screen pixels and a mask's pixels can be read; larger ones are shrunk to the
tile size (the label with nearest-neighbour, never blended). Outlines are each class region's inner
border in its legend colour, drawn on the tile (not a blended overlay); background and the ignore label
(255) are not outlined, the ignore band shows in the mask tile. ``dmutils generate`` writes a preview at
the end of a complete run (not of a shard); ``merge-shards`` and ``remask`` write one for the dataset
they make.
"""
from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dmutils.data import voc
from dmutils.dataset.layout import MANIFEST, Manifest, read_meta
from dmutils.errors import DataError, DataNotFoundError, ParamsError
from dmutils.paths import ensure_writable_dir

PNG = "preview.png"
HTML = "preview.html"
TILE = 192            # px: a tile's longer side (64 px images: x3)
OUTLINE = 2           # px: outline width on the tile (class colour), plus 1 px of white inside it
GAP = 6               # px between the three tiles of a sample
CARD_GAP = 24         # px between samples
PAD = 16              # px around the sheet
FONT_SIZE = 14
LINE = FONT_SIZE + 5  # px per text line
CAPTION_LINES = 3     # id line + up to two prompt lines
SWATCH = 16
BG, INK, MUTED = (255, 255, 255), (20, 20, 20), (110, 110, 110)
PANELS = ("image", "mask", "outlines")


@dataclass
class Sample:
    id: str
    split: str
    prompt: str | None = None
    seed: int | None = None
    classes: list[str] = field(default_factory=list)
    index: int | None = None


# ---------------------------------------------------------------------------------------------
# Reading the dataset
# ---------------------------------------------------------------------------------------------
def read_dataset(root: Path) -> tuple[dict, list[Sample]]:
    """The folder's ``dataset.json`` and its written samples in order; one-line errors for a folder that is not one."""

    root = Path(root)
    if not root.exists():
        raise DataNotFoundError(f"{root} does not exist; give a dataset folder ('dmutils generate' writes one)")
    if not root.is_dir():
        raise DataError(f"{root} is a file, not a dataset folder; give the folder that holds dataset.json and JPEGImages/")
    meta = read_meta(root)
    classes = meta.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise DataError(f"{root / 'dataset.json'} names no classes (a 'classes' list, background first); "
                        "give a dataset folder this project wrote")
    split_dir = root / voc.SPLITS
    names = sorted(p.stem for p in split_dir.glob("*.txt")) if split_dir.is_dir() else []
    if not names:
        raise DataNotFoundError(f"{root} has no split lists ({voc.SPLITS}/*.txt): not a dataset in VOC layout; "
                                "give a folder 'dmutils generate' wrote")
    order = {"train": 0, "val": 1, "test": 2}
    ids: dict[str, str] = {}
    for split in sorted(names, key=lambda s: (order.get(s, 3), s)):
        for sid in voc.read_split(root, split):
            ids.setdefault(sid, split)
    if not ids:
        raise DataError(f"{root}: the split lists name no sample (every sample rejected?); nothing to preview")
    records = {}
    if (root / MANIFEST).is_file():
        try:
            records = {r["id"]: r for r in Manifest(root / MANIFEST).read().values()}
        except (KeyError, TypeError):  # a manifest of another shape (splice writes one without 'index')
            records = {}
    samples = []
    for sid, split in ids.items():
        r = records.get(sid, {})
        samples.append(Sample(sid, split, r.get("prompt"), r.get("seed"), list(r.get("classes") or []), r.get("index")))
    samples.sort(key=lambda s: (s.index is None, s.index if s.index is not None else 0))  # stable: split order otherwise
    return meta, samples


def colour_table(meta: dict) -> np.ndarray:
    """(256, 3) uint8: the dataset's own palette for its classes, the VOC palette elsewhere, its ignore colour at 255."""
    lut = voc.PALETTE.copy()
    for k, rgb in enumerate(meta.get("palette") or []):
        lut[k] = rgb
    if meta.get("ignore_color"):
        lut[voc.IGNORE_INDEX] = meta["ignore_color"]
    return lut


# ---------------------------------------------------------------------------------------------
# Tiles
# ---------------------------------------------------------------------------------------------
def tile_size(h: int, w: int, tile: int = TILE) -> tuple[int, int]:
    """(height, width) of a tile: a whole-number upscale when the image is smaller than ``tile``, else shrunk to fit."""
    longer = max(h, w)
    if longer <= tile:
        k = tile // longer
        return h * k, w * k
    return max(1, round(h * tile / longer)), max(1, round(w * tile / longer))


def outline_mask(label: np.ndarray, width: int = OUTLINE) -> np.ndarray:
    """Pixels on the inner border (``width`` px) of each class region; background (0) and ignore (255) excluded."""
    from scipy import ndimage

    size = 2 * width + 1
    border = (ndimage.maximum_filter(label, size=size) != label) | (ndimage.minimum_filter(label, size=size) != label)
    return border & (label != 0) & (label != voc.IGNORE_INDEX)


def make_tiles(image: np.ndarray, label: np.ndarray, lut: np.ndarray, tile: int = TILE) -> dict[str, np.ndarray]:
    """The three (H, W, 3) uint8 tiles of one sample: image, mask, image with class outlines."""
    from PIL import Image

    h, w = tile_size(*label.shape, tile=tile)
    if (h, w) == label.shape:
        img, lab = image, label
    elif h >= label.shape[0]:  # whole-number upscale: repeat pixels
        k = h // label.shape[0]
        img, lab = image.repeat(k, 0).repeat(k, 1), label.repeat(k, 0).repeat(k, 1)
    else:
        img = np.array(Image.fromarray(image).resize((w, h), Image.LANCZOS))
        lab = np.array(Image.fromarray(label).resize((w, h), Image.NEAREST))
    coloured = lut[lab]
    outlined = img.copy()
    edge = outline_mask(lab, OUTLINE)
    outlined[outline_mask(lab, OUTLINE + 1) & ~edge] = 255  # a white inner line: the outline reads on any colour
    outlined[edge] = coloured[edge]
    return {"image": img, "mask": coloured, "outlines": outlined}


# ---------------------------------------------------------------------------------------------
# The sheet
# ---------------------------------------------------------------------------------------------
def _font(size: int = FONT_SIZE):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _wrap(text: str, font, width: int, lines: int) -> list[str]:
    """Greedy word wrap to ``width`` px, at most ``lines`` lines (the last cut with an ellipsis)."""
    out, cur = [], ""
    for word in text.split():
        trial = f"{cur} {word}".strip()
        if font.getlength(trial) <= width or not cur:
            cur = trial
        else:
            out.append(cur)
            cur = word
    if cur:
        out.append(cur)
    if len(out) > lines:
        out = out[:lines]
        last = out[-1]
        while last and font.getlength(last + " ...") > width:
            last = last[:-1]
        out[-1] = last.rstrip() + " ..."
    return out


def _fit(text: str, font, width: int) -> str:
    while text and font.getlength(text) > width:
        text = text[:-2] + "…" if len(text) > 2 else ""
    return text


def legend_entries(meta: dict, labels: list[np.ndarray], lut: np.ndarray) -> list[tuple[str, tuple[int, int, int]]]:
    """(name, colour) per class of ``dataset.json`` (background first), then label values no class names (if any),
    then 'ignore (255)' when a shown label has ignore pixels."""
    classes = meta["classes"]
    present = np.unique(np.concatenate([np.unique(lab) for lab in labels])) if labels else np.array([], np.uint8)
    entries = [(name, tuple(int(c) for c in lut[k])) for k, name in enumerate(classes)]
    entries += [(f"label {v} (not in dataset.json)", tuple(int(c) for c in lut[v]))
                for v in present if len(classes) <= v < voc.IGNORE_INDEX]
    if voc.IGNORE_INDEX in present:
        entries.append((f"ignore ({voc.IGNORE_INDEX})", tuple(int(c) for c in lut[voc.IGNORE_INDEX])))
    return entries


def _caption(s: Sample) -> str:
    parts = [s.id, s.split] + ([f"seed {s.seed}"] if s.seed is not None else [])
    return " · ".join(parts)


def render_sheet(title: str, legend: list[tuple[str, tuple]], samples: list[Sample], tiles: list[dict[str, np.ndarray]],
                 columns: int) -> tuple[Any, dict[str, dict[str, list[int]]], tuple[int, int]]:
    """The contact sheet as a PIL image, each sample's tile boxes ``[x0, y0, x1, y1]``, and (rows, columns)."""
    from PIL import Image, ImageDraw

    font, small = _font(), _font(FONT_SIZE - 1)
    th = max(t["image"].shape[0] for t in tiles)
    tw = max(t["image"].shape[1] for t in tiles)
    card_w, card_h = 3 * tw + 2 * GAP, CAPTION_LINES * LINE + th
    cols = max(1, min(columns, len(samples)))
    rows = -(-len(samples) // cols)
    width = 2 * PAD + cols * card_w + (cols - 1) * CARD_GAP
    # header: title line, panel key line, legend rows (wrapped to the sheet width)
    items, x, legend_rows = [], PAD, 1
    for name, rgb in legend:
        w = SWATCH + 6 + int(np.ceil(font.getlength(name))) + 18
        if x + w > width - PAD and x > PAD:
            x, legend_rows = PAD, legend_rows + 1
        items.append((x, legend_rows - 1, name, rgb))
        x += w
    header_h = 2 * LINE + legend_rows * (SWATCH + 8) + 10
    height = PAD + header_h + rows * card_h + (rows - 1) * CARD_GAP + PAD
    sheet = Image.new("RGB", (width, height), BG)
    draw = ImageDraw.Draw(sheet)
    draw.text((PAD, PAD), _fit(title, font, width - 2 * PAD), fill=INK, font=font)
    draw.text((PAD, PAD + LINE), "each sample: image | mask (flat label colours) | image with class outlines",
              fill=MUTED, font=small)
    top = PAD + 2 * LINE + 4
    for x, row, name, rgb in items:
        y = top + row * (SWATCH + 8)
        draw.rectangle([x, y, x + SWATCH - 1, y + SWATCH - 1], fill=rgb, outline=MUTED)
        draw.text((x + SWATCH + 6, y + SWATCH // 2), name, fill=INK, font=font, anchor="lm")
    y0 = PAD + header_h
    boxes: dict[str, dict[str, list[int]]] = {}
    for n, (s, t) in enumerate(zip(samples, tiles)):
        r, c = divmod(n, cols)
        cx, cy = PAD + c * (card_w + CARD_GAP), y0 + r * (card_h + CARD_GAP)
        draw.text((cx, cy), _fit(_caption(s), font, card_w), fill=INK, font=font)
        prompt = s.prompt if s.prompt is not None else "(no prompt)"
        for k, line in enumerate(_wrap(prompt, small, card_w, CAPTION_LINES - 1)):
            draw.text((cx, cy + (k + 1) * LINE), line, fill=MUTED, font=small)
        boxes[s.id] = {}
        for p, panel in enumerate(PANELS):
            arr = t[panel]
            px, py = cx + p * (tw + GAP), cy + CAPTION_LINES * LINE
            sheet.paste(Image.fromarray(arr), (px, py))
            boxes[s.id][panel] = [px, py, px + arr.shape[1], py + arr.shape[0]]
    return sheet, boxes, (rows, cols)


# ---------------------------------------------------------------------------------------------
# The page
# ---------------------------------------------------------------------------------------------
def _data_uri(arr: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", optimize=False)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def render_html(title: str, legend: list[tuple[str, tuple]], samples: list[Sample], tiles: list[dict[str, np.ndarray]],
                note: str, png_name: str) -> str:
    esc = html.escape
    swatches = "\n".join(
        f'<li class="legend-item" data-class="{esc(name)}"><span class="swatch" style="background:rgb{rgb}"></span>{esc(name)}</li>'
        for name, rgb in legend)
    cards = []
    for s, t in zip(samples, tiles):
        imgs = "".join(f'<figure><img src="{_data_uri(t[p])}" alt="{esc(s.id)} {p}" width="{t[p].shape[1]}" '
                       f'height="{t[p].shape[0]}"><figcaption>{p}</figcaption></figure>' for p in PANELS)
        classes = f'<div class="classes">classes: {esc(", ".join(s.classes))}</div>' if s.classes else ""
        prompt = esc(s.prompt) if s.prompt is not None else "<i>no prompt</i>"
        cards.append(f'<section class="sample" data-id="{esc(s.id)}"><div class="head"><b>{esc(s.id)}</b> · {esc(s.split)}'
                     f'{f" · seed {s.seed}" if s.seed is not None else ""}</div><div class="prompt">{prompt}</div>'
                     f'{classes}<div class="tiles">{imgs}</div></section>')
    body = "\n".join(cards)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #141414; }}
.note {{ color: #555; }}
ul.legend {{ list-style: none; padding: 0; display: flex; flex-wrap: wrap; gap: .4em 1.4em; }}
.swatch {{ display: inline-block; width: 1em; height: 1em; border: 1px solid #777; margin-right: .4em; vertical-align: -.15em; }}
.grid {{ display: flex; flex-wrap: wrap; gap: 1.5em; }}
.sample {{ max-width: {3 * TILE + 40}px; }}
.head {{ font-size: .95em; }} .prompt {{ color: #444; margin: .2em 0; }} .classes {{ color: #777; font-size: .85em; }}
.tiles {{ display: flex; gap: 6px; }} figure {{ margin: 0; }} figcaption {{ font-size: .75em; color: #777; text-align: center; }}
img {{ image-rendering: pixelated; display: block; }}
</style></head><body>
<h1>{esc(title)}</h1>
<p class="note">{esc(note)} Each sample: the image, its mask in flat label colours, and the image with each class's
outline in its legend colour. The same sheet as one picture: <a href="{esc(png_name)}">{esc(png_name)}</a>.</p>
<h2>Classes</h2>
<ul class="legend">
{swatches}
</ul>
<h2>Samples</h2>
<div class="grid">
{body}
</div>
</body></html>
"""


# ---------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------
def make_preview(root: str | Path, out: str | Path | None = None, max_images: int = 32, columns: int = 3,
                 tile: int = TILE) -> dict[str, Any]:
    """Write ``preview.png`` and ``preview.html`` of dataset ``root`` into ``out`` (default: ``root``).

    Returns ``{"png": Path, "html": Path, "shown": [ids], "total": n, "grid": (rows, columns),
    "boxes": {id: {"image"|"mask"|"outlines": [x0, y0, x1, y1]}}}`` (boxes: where each tile is in the PNG)."""
    if max_images < 1 or columns < 1 or tile < 8:
        raise ParamsError(f"max_images ({max_images}) and columns ({columns}) must be >= 1 and tile ({tile}) >= 8")
    root = Path(root)
    meta, samples = read_dataset(root)
    out = ensure_writable_dir(Path(out) if out is not None else root, "--out")
    shown = samples[:max_images]
    lut = colour_table(meta)
    labels, tiles = [], []
    for s in shown:
        image = voc.read_image(root / voc.IMAGES / f"{s.id}.jpg")
        label = voc.read_label(root / voc.LABELS / f"{s.id}.png")
        if image.shape[:2] != label.shape:
            raise DataError(f"{root / voc.LABELS / s.id}.png is {label.shape[1]}x{label.shape[0]} but its image is "
                            f"{image.shape[1]}x{image.shape[0]}; make the sample again")
        labels.append(label)
        tiles.append(make_tiles(image, label, lut, tile))
    legend = legend_entries(meta, labels, lut)
    name = meta.get("name") or root.name
    count = f"{len(shown)} of {len(samples)} samples" if len(shown) < len(samples) else f"{len(samples)} samples"
    title = f"{name}: {count}" + (f" · params {meta['params_hash']}" if meta.get("params_hash") else "")
    model = (meta.get("params") or {}).get("model", {}).get("path")
    # no folder path: the page stays the same bytes wherever the dataset was made (shards merged = one run)
    note = (f"Generated with {model}; " if model else "") + f"{count} shown, in manifest order."
    sheet, boxes, grid = render_sheet(title, legend, shown, tiles, columns)
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    png, page = out / PNG, out / HTML
    voc.atomic_write_bytes(png, buf.getvalue())
    voc.atomic_write_bytes(page, render_html(title, legend, shown, tiles, note, PNG).encode())
    return {"png": png, "html": page, "shown": [s.id for s in shown], "total": len(samples), "grid": grid, "boxes": boxes}


def with_preview(summary: dict[str, Any], shard: tuple[int, int] | None = None) -> dict[str, Any]:
    """Write the contact sheet of a complete dataset (not of a shard: ``merge-shards`` writes the merged one's) when it
    holds a written sample; ``summary["preview"]`` is its PNG's path, or None. After the timing: not in samples/s."""
    if shard is not None or not summary["written"]:
        return {**summary, "preview": None}
    return {**summary, "preview": str(make_preview(summary["out_dir"])["png"])}

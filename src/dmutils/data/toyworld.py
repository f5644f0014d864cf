"""The toy world: scenes rendered with exact per-pixel class masks and natural captions.

It plays the part of the real world (VOC's photos) for every study that runs here: the embedded
model is trained on it, its real splits are what segmenters are measured on, and its masks are
exact, so every number is checkable. Deterministic per seed.
"""
from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from dmutils.config.schema import TOY_CLASSES as CLASSES

# typical hue (0-1) per class.
CLASS_NAMES = [c["name"] for c in CLASSES]
HUES = {"circle": 0.0, "square": 0.62, "triangle": 0.33, "star": 0.14, "cross": 0.8, "ring": 0.07}
COLOR_WORDS = [(0.0, "red"), (0.07, "orange"), (0.14, "yellow"), (0.33, "green"), (0.5, "cyan"), (0.62, "blue"), (0.8, "purple"), (0.92, "pink")]
SIZE_WORDS = {"small": (0.18, 0.26), "large": (0.36, 0.46)}
TEMPLATES_1 = ["a {a}", "a photo of a {a}", "a picture of a {a}", "an image of a {a}", "a {a} on a {bg} background"]
TEMPLATES_2 = ["a {a} and a {b}", "a photo of a {a} and a {b}", "a {a} next to a {b}", "a {a} with a {b}", "a picture of a {a} and a {b}"]
TEMPLATES_3 = ["a {a}, a {b} and a {c}", "a photo of a {a}, a {b} and a {c}", "a {a} with a {b} and a {c}"]
BACKGROUNDS = ["noise", "stripes", "gradient", "plain"]
BG_WORDS = {"noise": "noisy", "stripes": "striped", "gradient": "shaded", "plain": "plain"}
# every word a caption or template can use: the toy tokenizer's vocabulary is built from this.
EXTRA_WORDS = ["a", "an", "the", "of", "and", "with", "next", "to", "on", "in", "photo", "picture", "image",
               "background", "object", "objects", "shape", "shapes", "big", "tiny", "medium", "two", "three", "one"]


def vocabulary() -> list[str]:
    words = set(EXTRA_WORDS) | {w for _, w in COLOR_WORDS} | set(SIZE_WORDS) | set(BG_WORDS.values())
    for c in CLASSES:
        words |= {c["name"], *c["synonyms"], *c["subclasses"]}
    return sorted(words)


def color_word(hue: float) -> str:
    """Nearest colour name on the hue circle."""
    return min(COLOR_WORDS, key=lambda hw: min(abs(hue - hw[0]), 1 - abs(hue - hw[0])))[1]


@dataclass
class ToyObject:
    cls: str
    cx: float  # centre, fraction of the side
    cy: float
    size: float  # diameter, fraction of the side
    angle: float  # degrees
    rgb: tuple[int, int, int]
    hue: float


@dataclass
class Scene:
    """One rendered scene: image (H, W, 3) uint8, label (H, W) uint8 (0 = background), caption."""

    image: np.ndarray
    label: np.ndarray
    caption: str
    objects: list[ToyObject]
    background: str
    seed: int
    words: dict[str, str] = field(default_factory=dict)  # class -> the word the caption uses

    @property
    def classes(self) -> list[str]:
        return [o.cls for o in self.objects]


# ---------------------------------------------------------------------------------------------
# Shapes
# ---------------------------------------------------------------------------------------------
def _regular(cx, cy, r, n, angle, inner=None):
    pts = []
    k = 2 * n if inner else n
    for i in range(k):
        rr = (inner if (inner and i % 2) else 1.0) * r
        t = math.radians(angle) + 2 * math.pi * i / k - math.pi / 2
        pts.append((cx + rr * math.cos(t), cy + rr * math.sin(t)))
    return pts


def _cross(cx, cy, r, angle, arm=0.34):
    a = arm * r
    base = [(-a, -r), (a, -r), (a, -a), (r, -a), (r, a), (a, a), (a, r), (-a, r), (-a, a), (-r, a), (-r, -a), (-a, -a)]
    t = math.radians(angle)
    c, s = math.cos(t), math.sin(t)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in base]


def draw_shape(draw: ImageDraw.ImageDraw, obj: ToyObject, side: int, fill) -> None:
    """Draw one object's silhouette with ``fill`` (an RGB colour or a class index)."""
    cx, cy, r = obj.cx * side, obj.cy * side, obj.size * side / 2
    if obj.cls == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif obj.cls == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif obj.cls == "square":
        draw.polygon(_regular(cx, cy, r * 1.05, 4, obj.angle + 45), fill=fill)
    elif obj.cls == "triangle":
        draw.polygon(_regular(cx, cy, r * 1.1, 3, obj.angle), fill=fill)
    elif obj.cls == "star":
        draw.polygon(_regular(cx, cy, r * 1.15, 5, obj.angle, inner=0.45), fill=fill)
    elif obj.cls == "cross":
        draw.polygon(_cross(cx, cy, r, obj.angle), fill=fill)
    else:
        raise ValueError(f"unknown toy class {obj.cls!r}; known: {CLASS_NAMES}")


def _ring_hole(draw, obj, side, fill):
    cx, cy, r = obj.cx * side, obj.cy * side, obj.size * side / 2 * 0.52
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)


# ---------------------------------------------------------------------------------------------
# Scenes
# ---------------------------------------------------------------------------------------------
def _background(rng: np.random.Generator, kind: str, side: int) -> np.ndarray:
    """Textured, low-saturation backgrounds: objects must stand out by shape and colour, not be trivial."""
    base = rng.uniform(0.35, 0.8)
    tint = rng.uniform(-0.05, 0.05, size=3)
    yy, xx = np.mgrid[0:side, 0:side] / side
    if kind == "noise":
        v = base + rng.normal(0, 0.06, size=(side, side))
        v = np.asarray(Image.fromarray(((v.clip(0, 1)) * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(1.0))) / 255
    elif kind == "stripes":
        t = math.radians(rng.uniform(0, 180))
        period = rng.uniform(0.08, 0.2)
        v = base + 0.07 * np.sign(np.sin(2 * math.pi * (xx * math.cos(t) + yy * math.sin(t)) / period))
    elif kind == "gradient":
        t = math.radians(rng.uniform(0, 360))
        v = base + 0.25 * ((xx - 0.5) * math.cos(t) + (yy - 0.5) * math.sin(t))
    else:
        v = np.full((side, side), base)
    rgb = np.clip(v[..., None] + tint, 0, 1)
    return (rgb * 255).astype(np.uint8)


def _object_colour(rng: np.random.Generator, cls: str) -> tuple[tuple[int, int, int], float]:
    hue = (HUES[cls] + rng.normal(0, 0.025)) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, rng.uniform(0.7, 1.0), rng.uniform(0.65, 1.0))
    return (int(r * 255), int(g * 255), int(b * 255)), hue


def sample_layout(rng: np.random.Generator, classes: list[str], max_tries: int = 200) -> list[ToyObject]:
    """Place objects with little overlap (each keeps most of itself visible)."""
    objs: list[ToyObject] = []
    for cls in classes:
        for _ in range(max_tries):
            size = rng.uniform(0.22, 0.44) if len(classes) > 1 else rng.uniform(0.3, 0.55)
            cx, cy = rng.uniform(size / 2 + 0.02, 1 - size / 2 - 0.02, size=2)
            if all(math.hypot(cx - o.cx, cy - o.cy) > 0.45 * (size + o.size) for o in objs):
                break
        rgb, hue = _object_colour(rng, cls)
        objs.append(ToyObject(cls, float(cx), float(cy), float(size), float(rng.uniform(0, 360)), rgb, float(hue)))
    return objs


def render(objects: list[ToyObject], background: np.ndarray, supersample: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Image and exact label map: shapes drawn at ``supersample`` x, image box-filtered down,
    label taken at pixel centres (so the mask is exactly the drawn shape at this resolution)."""
    side = background.shape[0]
    big = side * supersample
    img = Image.fromarray(background).resize((big, big), Image.NEAREST)
    lab = Image.new("L", (big, big), 0)
    d_img, d_lab = ImageDraw.Draw(img), ImageDraw.Draw(lab)
    bg_big = np.asarray(img).copy()
    for obj in objects:
        idx = CLASS_NAMES.index(obj.cls) + 1
        draw_shape(d_img, obj, big, obj.rgb)
        draw_shape(d_lab, obj, big, idx)
        if obj.cls == "ring":
            hole = Image.new("L", (big, big), 0)
            _ring_hole(ImageDraw.Draw(hole), obj, big, 255)
            m = np.asarray(hole) > 0
            arr = np.asarray(img).copy()
            arr[m] = bg_big[m]
            img = Image.fromarray(arr)
            d_img = ImageDraw.Draw(img)
            _ring_hole(d_lab, obj, big, 0)
    image = np.asarray(img.resize((side, side), Image.BOX))
    off = supersample // 2
    label = np.asarray(lab)[off::supersample, off::supersample].copy()
    return image, label


def caption_for(rng: np.random.Generator, objects: list[ToyObject], background: str, synonyms: bool = True) -> tuple[str, dict[str, str]]:
    """A caption that names exactly the objects present, with optional colour/size adjectives."""
    words, phrases = {}, []
    for o in objects:
        spec = CLASSES[CLASS_NAMES.index(o.cls)]
        noun = o.cls if (not synonyms or rng.random() < 0.6) else str(rng.choice(spec["synonyms"]))
        words[o.cls] = noun
        adj = []
        if rng.random() < 0.2:
            adj.append("small" if o.size < 0.3 else "large")
        if rng.random() < 0.6:
            adj.append(color_word(o.hue))
        phrases.append(" ".join(adj + [noun]))
    tpl = [TEMPLATES_1, TEMPLATES_2, TEMPLATES_3][len(objects) - 1][rng.integers(0, [5, 5, 3][len(objects) - 1])]
    cap = tpl.format(a=phrases[0], b=phrases[1] if len(phrases) > 1 else "", c=phrases[2] if len(phrases) > 2 else "",
                     bg=BG_WORDS[background])
    cap = cap.replace("a orange", "an orange")
    return cap, words


def make_scene(seed: int, size: int = 64, n_objects: int | None = None, classes: list[str] | None = None) -> Scene:
    """One scene, deterministic in ``seed`` (and the optional fixed classes)."""
    rng = np.random.default_rng(seed)
    if classes is None:
        n = n_objects or int(rng.choice([1, 2, 3], p=[0.3, 0.5, 0.2]))
        classes = [str(c) for c in rng.choice(CLASS_NAMES, size=n, replace=False)]
    unknown = [c for c in classes if c not in CLASS_NAMES]
    if unknown:
        raise ValueError(f"unknown toy classes {unknown}; known: {CLASS_NAMES}")
    bg_kind = str(rng.choice(BACKGROUNDS))
    objects = sample_layout(rng, classes)
    image, label = render(objects, _background(rng, bg_kind, size))
    caption, words = caption_for(rng, objects, bg_kind)
    return Scene(image, label, caption, objects, bg_kind, seed, words)


# ---------------------------------------------------------------------------------------------
# Real splits in VOC layout
# ---------------------------------------------------------------------------------------------
SPLIT_SEED_OFFSET = {"train": 0, "val": 1_000_000, "test": 2_000_000}


def write_real_splits(root: Path, sizes: dict[str, int], image_size: int = 64) -> Path:
    """The toy world's real train/val/test splits, with the same writer as synthetic datasets."""
    import json

    from dmutils.progress import progress_bar

    from dmutils.data import voc
    from dmutils.paths import atomic_write_bytes

    root = Path(root)
    for split, n in sizes.items():
        if split not in SPLIT_SEED_OFFSET:
            raise ValueError(f"unknown split {split!r}; use {list(SPLIT_SEED_OFFSET)}")
        ids = []
        for i in progress_bar(range(n), desc=f"toy {split}", leave=False):
            sid = f"toy_{split}_{i:06d}"
            ids.append(sid)
            if (root / voc.LABELS / f"{sid}.png").exists():
                continue
            scene = make_scene(SPLIT_SEED_OFFSET[split] + i, size=image_size)
            voc.write_sample(root, sid, scene.image, scene.label)
        voc.write_split(root, split, ids)
    meta = {"name": "toy-real", "classes": ["background", *CLASS_NAMES], "image_size": image_size, "sizes": sizes}
    atomic_write_bytes(root / "dataset.json", json.dumps(meta, indent=2).encode())
    return root

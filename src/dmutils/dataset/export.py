"""``dmutils export DATASET --format hf [--out DIR]``: a dataset folder others can load with
``datasets.load_dataset(DIR)`` (or push to the Hub as it is).

The folder is what the Hub's own uploader writes, so nothing here is a format of ours::

    DIR/README.md                          dataset card: YAML header (licence, features, configs) + text
    DIR/data/train-00000-of-00001.parquet  one row per written sample (rejected ones are left out)
    DIR/data/validation-00000-of-00001.parquet
    DIR/samples.png                        the card's figure: images beside their coloured labels

Rows are built with :mod:`datasets` (``Features`` with ``Image`` for image and label, class names as a
``ClassLabel`` sequence) and written with ``Dataset.to_parquet``: the features go into the parquet
schema, so ``load_dataset`` gives back PIL images and class names without reading the card. The image
and label bytes are the dataset's files unchanged (JPEG, palette PNG: 0 = background, 255 = ignore).
"""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from dmutils.data import voc
from dmutils.dataset.layout import MANIFEST, META, Manifest
from dmutils.errors import ParamsError
from dmutils.paths import atomic_write_bytes

SPLITS = {"train": "train", "val": "validation"}  # our split name -> the Hub's
ROWS_PER_SHARD = 1000
FIGURE = "samples.png"

# Licences of the generators this project's params name; a local folder may carry its own in a
# model card (README.md with a 'license:' header), which wins.
KNOWN_LICENCES = {
    "runwayml/stable-diffusion-v1-5": "creativeml-openrail-m",
    "stable-diffusion-v1-5/stable-diffusion-v1-5": "creativeml-openrail-m",
    "CompVis/stable-diffusion-v1-4": "creativeml-openrail-m",
    "stabilityai/stable-diffusion-2-1": "openrail++",
    "stabilityai/stable-diffusion-2-1-base": "openrail++",
    "stabilityai/stable-diffusion-xl-base-1.0": "openrail++",
}
TOY_MODEL_NOTE = "this project's toy model, trained from scratch on its synthetic toy world (no third-party weights)"


def model_licence(model_path: str, root: Path | None = None) -> str:
    """The generator's licence id: a local model card's 'license:' header, a known hub id, else 'unknown'."""
    from dmutils.paths import REPO_ROOT

    for base in (root, REPO_ROOT, Path.cwd()):
        card = Path(base or ".") / model_path / "README.md"
        if card.is_file():
            text = card.read_text(errors="replace")
            if text.startswith("---"):
                import yaml

                head = yaml.safe_load(text.split("---")[1]) or {}
                if head.get("license"):
                    return str(head["license"])
    if Path(model_path).name == "toy-sd":
        return "other"
    return KNOWN_LICENCES.get(model_path, "unknown")


def _features(class_names: list[str]):
    from datasets import ClassLabel, Features, Image, List, Value

    return Features({
        "image": Image(), "label": Image(), "id": Value("string"), "index": Value("int64"), "prompt": Value("string"),
        "seed": Value("int64"), "classes": List(ClassLabel(names=class_names)), "class_fractions": List(Value("float32")),
        "split": Value("string"),
    })


def _rows(root: Path, records: list[dict]) -> dict[str, list]:
    cols: dict[str, list] = {k: [] for k in ("image", "label", "id", "index", "prompt", "seed", "classes", "class_fractions", "split")}
    for r in records:
        sid = r["id"]
        cols["image"].append({"bytes": (root / voc.IMAGES / f"{sid}.jpg").read_bytes(), "path": f"{sid}.jpg"})
        cols["label"].append({"bytes": (root / voc.LABELS / f"{sid}.png").read_bytes(), "path": f"{sid}.png"})
        cols["id"].append(sid)
        cols["index"].append(r["index"])
        cols["prompt"].append(r["prompt"])
        cols["seed"].append(r["seed"])
        cols["classes"].append(list(r["classes"]))
        cols["class_fractions"].append([float(r["fractions"].get(c, 0.0)) for c in r["classes"]])
        cols["split"].append(r["split"])
    return cols


def pixel_shares(root: Path, records: list[dict], class_names: list[str]) -> dict[str, float]:
    """Share of all label pixels per class, background and ignore (255) included."""
    counts = np.zeros(256, np.int64)
    for r in records:
        counts += np.bincount(voc.read_label(root / voc.LABELS / f"{r['id']}.png").ravel(), minlength=256)
    total = max(int(counts.sum()), 1)
    shares = {name: counts[k] / total for k, name in enumerate(class_names)}
    shares["ignore (255)"] = counts[voc.IGNORE_INDEX] / total
    return {k: round(float(v), 4) for k, v in shares.items()}


def sample_figure(root: Path, records: list[dict], n: int = 4) -> bytes:
    """PNG: the first ``n`` samples, each image above its label in the VOC palette (PIL only: same bytes every time)."""
    from PIL import Image

    pairs = []
    for r in records[:n]:
        img = Image.open(root / voc.IMAGES / f"{r['id']}.jpg").convert("RGB")
        with Image.open(root / voc.LABELS / f"{r['id']}.png") as lab:
            pairs.append((img, lab.convert("RGB").resize(img.size, Image.NEAREST)))
    w, h = max(p[0].width for p in pairs), max(p[0].height for p in pairs)
    scale = max(1, 128 // max(w, h))
    sheet = Image.new("RGB", (len(pairs) * w * scale, 2 * h * scale), "white")
    for i, (img, lab) in enumerate(pairs):
        sheet.paste(img.resize((img.width * scale, img.height * scale), Image.NEAREST), (i * w * scale, 0))
        sheet.paste(lab.resize((lab.width * scale, lab.height * scale), Image.NEAREST), (i * w * scale, h * scale))
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    return buf.getvalue()


def dataset_card(meta: dict, counts: dict[str, int], rejected: int, per_class: dict[str, int],
                 shares: dict[str, float], licence: str, features, nbytes: dict[str, int] | None = None) -> str:
    import yaml

    params = meta["params"]
    model = params["model"]["path"]
    splits = [{"split": SPLITS[s], "path": f"data/{SPLITS[s]}-*"} for s in SPLITS if counts.get(SPLITS[s])]
    header = {"license": licence, "task_categories": ["image-segmentation"], "tags": ["synthetic", "semantic-segmentation",
              "diffusion-generated", "dmutils"], "pretty_name": meta["name"],
              "configs": [{"config_name": "default", "data_files": splits}],
              "dataset_info": {"features": features._to_yaml_list(),
                               # the fields datasets' SplitInfo reads (a split without num_bytes is 'malformed')
                               "splits": [{"name": k, "num_bytes": int((nbytes or {}).get(k, 0)), "num_examples": v}
                                          for k, v in counts.items() if v]}}
    model_line = f"`{model}`: {TOY_MODEL_NOTE};" if Path(model).name == "toy-sd" else f"`{model}`,"
    shares_rows = "\n".join(f"| {c} | {s:.4f} |" for c, s in shares.items())
    class_rows = "\n".join(f"| {c} | {n} |" for c, n in per_class.items())
    return f"""---
{yaml.safe_dump(header, sort_keys=False).strip()}
---

# {meta['name']}

A synthetic semantic-segmentation dataset: images generated by a text-to-image diffusion model and labels made
from its cross-attention maps (DiffuMask, arXiv 2303.11681; Dataset Diffusion, arXiv 2309.14303) by `dmutils generate`,
exported with `dmutils export --format hf`.

- **Generator:** {model_line} {params['model']['num_inference_steps']} steps, guidance {params['model']['guidance_scale']}.
- **Generator licence:** `{licence}`. Generated images inherit the generator's use restrictions; read its licence before use.
- **Params hash:** `{meta['params_hash']}` (every setting that decides the data is below).
- **Counts:** {', '.join(f'{k} {v}' for k, v in counts.items())}; {rejected} generated samples were rejected by the
  generator's checks and are not included.

```python
from datasets import load_dataset
ds = load_dataset("path/to/this/folder")
ds["train"][0]["image"], ds["train"][0]["label"]   # PIL images; label: palette PNG of class ids, 255 = ignore
ds["train"].features["classes"].feature.names      # class names, index = label value
```

## Classes

Label value = index in `{meta['classes']}`; 255 = ignore (uncertain pixels).

| class | samples naming it |
| --- | --- |
{class_rows}

## Per-class pixel share (all labels)

| class | share of pixels |
| --- | --- |
{shares_rows}

## Samples

![first samples: images (top) and labels (bottom)]({FIGURE})

## Params

```json
{json.dumps(params, indent=2, sort_keys=True)}
```
"""


def export_hf(dataset_dir: str | Path, out: str | Path, overwrite: bool = False, licence: str | None = None) -> dict[str, Any]:
    """Write ``dataset_dir`` (a folder ``dmutils generate`` made) as a Hugging Face dataset folder ``out``."""
    from datasets import Dataset

    root, out = Path(dataset_dir), Path(out)
    if not (root / META).is_file() or not (root / MANIFEST).is_file():
        raise ParamsError(f"{root} is not a generated dataset (no {META} or {MANIFEST}); give the folder 'dmutils generate' wrote")
    if out.resolve() == root.resolve() or root.resolve() in out.resolve().parents:
        raise ParamsError(f"--out {out} is inside the dataset {root}; choose a folder outside it")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ParamsError(f"{out} is not empty; choose another --out or pass --overwrite to replace it")
        shutil.rmtree(out)
    meta = json.loads((root / META).read_text())
    class_names = meta["classes"]
    records = sorted(Manifest(root / MANIFEST).read().values(), key=lambda r: r["index"])
    ok = [r for r in records if r["status"] == "ok"]
    if not ok:
        raise ParamsError(f"{root} holds no written sample ({len(records)} rejected); nothing to export")
    features = _features(class_names)
    counts, nbytes = {}, {}
    (out / "data").mkdir(parents=True, exist_ok=True)
    for ours, hub in SPLITS.items():
        recs = [r for r in ok if r["split"] == ours]
        counts[hub], nbytes[hub] = len(recs), 0
        shards = max(1, -(-len(recs) // ROWS_PER_SHARD))
        for k in range(shards if recs else 0):
            part = recs[k * ROWS_PER_SHARD:(k + 1) * ROWS_PER_SHARD]
            shard = Dataset.from_dict(_rows(root, part), features=features)
            nbytes[hub] += shard.data.nbytes  # the Arrow size, as datasets counts a split's num_bytes
            shard.to_parquet(out / "data" / f"{hub}-{k:05d}-of-{shards:05d}.parquet")
    per_class = {c: sum(c in r["classes"] for r in ok) for c in class_names[1:]}
    shares = pixel_shares(root, ok, class_names)
    licence = licence or model_licence(meta["params"]["model"]["path"])
    atomic_write_bytes(out / FIGURE, sample_figure(root, ok))
    card = dataset_card(meta, counts, len(records) - len(ok), per_class, shares, licence, features, nbytes)
    atomic_write_bytes(out / "README.md", card.encode())
    return {"out_dir": str(out), "splits": counts, "rejected": len(records) - len(ok), "licence": licence, "pixel_share": shares}

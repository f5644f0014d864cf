"""Notebook 03: what a generated dataset holds, read back from its files (not from the generator's memory).

Everything comes from ``manifest.jsonl`` (one record per sample: classes, split, status, reject
reason, pixel fraction of each named class) and the label PNGs, so the report of a resumed or
merged dataset is the same as that of one generated in one go.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from dmutils.data import voc
from dmutils.dataset.layout import MANIFEST, Manifest

IGNORE = 255


def read_records(root: str | Path) -> list[dict]:
    """The manifest's records in index order; a clear error when ``root`` is no generated dataset."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: generate the dataset first (dmutils generate, or notebook 03)")
    return [r for _, r in sorted(Manifest(path).read().items())]


def sample_table(records: list[dict]) -> pd.DataFrame:
    """One row per sample: id, prompt, seed, classes ('+'-joined), split, status, reason."""
    return pd.DataFrame([{"index": r["index"], "id": r["id"], "prompt": r["prompt"], "seed": r["seed"],
                          "classes": "+".join(r["classes"]), "split": r["split"], "status": r["status"],
                          "reason": r.get("reason")} for r in records])


def class_table(root: str | Path, records: list[dict], class_names: list[str]) -> pd.DataFrame:
    """Per class (plus background and ignore): written samples naming it, its mean pixel fraction in
    those samples (manifest) and its share of all labelled pixels (label PNGs, so 255 counts too)."""
    ok = [r for r in records if r["status"] == "ok"]
    counts = np.zeros(256, dtype=np.int64)
    for r in ok:
        counts += np.bincount(voc.read_label(Path(root) / voc.LABELS / f"{r['id']}.png").ravel(), minlength=256)
    total = max(int(counts.sum()), 1)
    rows = [{"class": "background", "samples": len(ok), "mean_fraction": np.nan, "pixel_share": counts[0] / total}]
    for k, c in enumerate(class_names, 1):
        fr = [r["fractions"][c] for r in ok if c in r["classes"]]
        rows.append({"class": c, "samples": len(fr), "mean_fraction": float(np.mean(fr)) if fr else np.nan,
                     "pixel_share": counts[k] / total})
    rows.append({"class": "ignore", "samples": sum(1 for r in ok if _has_ignore(root, r)), "mean_fraction": np.nan,
                 "pixel_share": counts[IGNORE] / total})
    return pd.DataFrame(rows)


def _has_ignore(root: str | Path, record: dict) -> bool:
    return bool((voc.read_label(Path(root) / voc.LABELS / f"{record['id']}.png") == IGNORE).any())


def rejections(records: list[dict]) -> pd.DataFrame:
    """Rejected samples: id, prompt, classes, the reason's kind (text before ':') and the full reason."""
    rows = [{"id": r["id"], "prompt": r["prompt"], "classes": "+".join(r["classes"]),
             "kind": r["reason"].split(":")[0], "reason": r["reason"]} for r in records if r["status"] != "ok"]
    return pd.DataFrame(rows, columns=["id", "prompt", "classes", "kind", "reason"])


def reason_counts(records: list[dict]) -> pd.DataFrame:
    """How many samples each kind of reason rejected, and how many were written ('ok')."""
    kinds = ["ok" if r["status"] == "ok" else r["reason"].split(":")[0] for r in records]
    out = pd.Series(kinds, dtype=object).value_counts().rename_axis("outcome").reset_index(name="samples")
    out["fraction"] = out["samples"] / max(len(records), 1)
    return out


def throughput(summary: dict) -> pd.DataFrame:
    """Generation speed of this run (``generate_dataset``'s summary); 0 samples generated now = resumed."""
    return pd.DataFrame([{"generated_now": summary["generated_now"], "skipped_done": summary["skipped_done"],
                          "written": summary["written"], "rejected": summary["rejected"], "seconds": summary["seconds"],
                          "samples_per_s": summary["samples_per_s"]}])


def sample_grid(root: str | Path, records: list[dict], class_names: list[str], n: int = 6, oracle=None):
    """The first ``n`` written samples: each image with its mask's outlines, the mask in the flat palette, the
    ``oracle``'s labels when given (with the per-image mIoU against them in the titles), and an ignore (255) row
    only when some shown mask has an ignore region."""
    from dmutils import figures

    ok = [r for r in records if r["status"] == "ok"][:n]
    if not ok:
        raise ValueError("no written samples to show: every sample was rejected (see the rejection table)")
    root = Path(root)
    images = [voc.read_image(root / voc.IMAGES / f"{r['id']}.jpg") for r in ok]
    labels = [voc.read_label(root / voc.LABELS / f"{r['id']}.png") for r in ok]
    rows, names = [labels], ["mask"]
    truth = list(oracle.predict(np.stack(images))) if oracle is not None else None
    if truth is not None:
        rows.append(truth)
        names.append("oracle")
    if any((lab == IGNORE).any() for lab in labels):
        rows.append([np.where(lab == IGNORE, IGNORE, 0).astype(np.uint8) for lab in labels])
        names.append("ignore (255)")
    k = len(class_names) + 1
    titles = [figures.column_title(r["prompt"], figures.image_iou(lab, t, k) if truth is not None else None)
              + (f"\nignore {float((lab == IGNORE).mean()):.0%}" if (lab == IGNORE).any() else "")
              for r, lab, t in zip(ok, labels, truth or [None] * len(ok))]
    return figures.segmentation_grid(images, rows, names, titles, class_names, title="Generated samples and their masks")


def sample_caption(params, records: list[dict], shown: int, oracle: bool) -> str:
    """The caption of :func:`sample_grid`: what is shown, of how many written samples, under which protocol."""
    from dmutils import figures

    written = sum(r["status"] == "ok" for r in records)
    iou = " and its mIoU against the oracle's labels (per image, background included)" if oracle else ""
    return (f"The first {min(shown, written)} of {written} written samples (n = {len(records)} generated): the image with "
            f"its mask's outlines, the mask in the fixed class palette{iou}; the prompt above each column. "
            f"Protocol: {figures.protocol(params)}.")


def conclusions(speed: pd.DataFrame, classes: pd.DataFrame, outcomes: pd.DataFrame) -> list[str]:
    """Study 03's findings, every number a cell of ``speed`` (:func:`throughput`), ``classes`` (:func:`class_table`)
    and ``outcomes`` (:func:`reason_counts`): what was written and why the rest was not, which class has the fewest
    pixels, and how fast this run generated."""
    from dmutils.studies.wording import num, short

    out = []
    s = speed.iloc[0]
    ok = outcomes[outcomes["outcome"] == "ok"]
    bad = outcomes[outcomes["outcome"] != "ok"]
    share = f" (a fraction {num(ok.iloc[0].fraction)} of all samples)" if len(ok) else ""
    why = ("; rejected: " + ", ".join(f"{r.outcome} {int(r.samples)}" for r in bad.itertuples()) if len(bad)
           else "; none was rejected")
    out.append(f"{int(s.written)} samples written{share}{why}.")
    named = classes[~classes["class"].isin(["background", "ignore"])]
    never = named[named["samples"] == 0]
    drawn = named[named["samples"] > 0]
    if len(drawn):
        lo, hi = drawn.loc[drawn["pixel_share"].idxmin()], drawn.loc[drawn["pixel_share"].idxmax()]
        bg = classes[classes["class"] == "background"]
        out.append(f"The class with the fewest labelled pixels is {lo['class']}, a share {num(lo.pixel_share)} of all pixels in "
                   f"{int(lo.samples)} samples; the most has {hi['class']}, {num(hi.pixel_share)} in {int(hi.samples)} samples"
                   + (f"; background covers {num(bg.iloc[0].pixel_share)}" if len(bg) else "") + ".")
    if len(never):
        out.append("No written sample names " + ", ".join(never["class"]) + " (never prompted, or every attempt rejected).")
    if s.generated_now > 0:
        out.append(f"This run generated {int(s.generated_now)} samples in {short(s.seconds)} s, {short(s.samples_per_s)} samples/s "
                   "(this machine's throughput, not a property of the method).")
    else:
        out.append(f"Nothing was generated now: {int(s.skipped_done)} samples were resumed from an earlier run with the same params.")
    return out

"""Where a generator's colours leave the real ones: per-class hue, saturation and value of two datasets.

Classifier-free guidance pulls each class towards its most typical look. On the toy model at SD's
guidance 7.5 every star came out one bright yellow (hue 0.159 +- 0.011, value 0.97, against real
0.136 +- 0.021, 0.81), so a segmenter trained on them read the darker real stars as orange rings.
A shifted mean or a much narrower spread here says the images, not the masks, carry the gap.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from PIL import Image

from dmutils.segment.data import IGNORE_INDEX


def _circular_mean(hue: np.ndarray) -> float:
    """Mean of hues in [0, 1) on the colour circle (red at 0.98 and 0.02 average to 0, not 0.5)."""
    angle = 2 * np.pi * hue
    return float(np.arctan2(np.sin(angle).mean(), np.cos(angle).mean()) / (2 * np.pi) % 1.0)


def _hue_difference(a, b):
    """Signed circular difference a - b, in (-0.5, 0.5]."""
    return (np.asarray(a) - np.asarray(b) + 0.5) % 1.0 - 0.5


def class_colours(dataset, limit: int | None = None, min_pixels: int = 10) -> pd.DataFrame:
    """One row per (sample, class present): ``sample``, ``label``, ``class``, ``hue`` (circular mean),
    ``saturation``, ``value`` (medians over the class's pixels)."""
    rows = []
    for i in range(len(dataset) if limit is None else min(limit, len(dataset))):
        image, label = dataset[i]
        hsv = np.asarray(Image.fromarray(image).convert("HSV"), dtype=np.float64).reshape(-1, 3) / 255.0
        flat = label.reshape(-1)
        for k in np.unique(flat):
            if k == 0 or k == IGNORE_INDEX or (flat == k).sum() < min_pixels:
                continue
            px = hsv[flat == k]
            rows.append({"sample": i, "label": int(k), "class": dataset.classes[k], "hue": _circular_mean(px[:, 0]),
                         "saturation": float(np.median(px[:, 1])), "value": float(np.median(px[:, 2]))})
    return pd.DataFrame(rows, columns=["sample", "label", "class", "hue", "saturation", "value"])


def _summary(colours: pd.DataFrame) -> pd.DataFrame:
    def one(g):
        centre = _circular_mean(g["hue"].to_numpy())
        return pd.Series({"samples": float(len(g)), "hue": centre, "hue_std": float(np.sqrt(np.mean(_hue_difference(g["hue"], centre) ** 2))),
                          "saturation": g["saturation"].mean(), "value": g["value"].mean(), "value_std": g["value"].std(ddof=0)})
    return colours.groupby(["label", "class"])[["hue", "saturation", "value"]].apply(one).droplevel("label")


def colour_gap(real: pd.DataFrame, synthetic: pd.DataFrame) -> pd.DataFrame:
    """Per class (of ``class_colours`` tables): real and synthetic means and spreads, and the shifts synthetic - real."""
    if real.empty or synthetic.empty:  # no object pixels in one set: nothing to compare
        return pd.DataFrame(columns=["class", "hue_shift", "value_shift", "hue_spread_ratio"])
    r, s = _summary(real), _summary(synthetic)
    out = r.merge(s, left_index=True, right_index=True, suffixes=("_real", "_synthetic"))
    out["hue_shift"] = _hue_difference(out["hue_synthetic"], out["hue_real"])
    out["value_shift"] = out["value_synthetic"] - out["value_real"]
    out["hue_spread_ratio"] = out["hue_std_synthetic"] / out["hue_std_real"].where(out["hue_std_real"] > 0)
    for c in ("samples_real", "samples_synthetic"):
        out[c] = out[c].astype(int)
    return out.reset_index()


def real_vs_synthetic(params, limit: int = 200) -> pd.DataFrame:
    """``colour_gap`` of the first ``limit`` samples of the real training split and of the run's synthetic set."""
    from dmutils.segment.data import open_real
    from dmutils.studies.segmenter_study import synthetic_all

    return colour_gap(class_colours(open_real(params, params.real.train_split), limit),
                      class_colours(synthetic_all(params), limit))

"""Plot helpers shared by the study notebooks, so every figure of the report looks the same.

- :func:`overlay` / :func:`image_grid`: images with label masks blended in the VOC palette
  (255 = ignore in the palette's cream), a legend of the classes shown.
- :func:`map_grid`: a grid of score/attention maps with row and column titles and one colour bar
  per row (or for the whole grid), as the papers' per-resolution / per-timestep figures.
- :func:`curves_with_band`: mean curves with their confidence band from a tidy table (the
  IoU-vs-threshold figure of DiffuMask); the plotted numbers are the table's, nothing is re-estimated.

Panels have one fixed size (:data:`PANEL` inches), so grids of the same shape have the same size
across notebooks; line figures use :data:`dmutils.nb.FIGSIZE`. Call :func:`dmutils.nb.set_style`
first (``nb.setup`` does).
"""
from __future__ import annotations

import textwrap
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Patch

from dmutils.data.voc import PALETTE
from dmutils.nb import FIGSIZE

PANEL = 1.35  # inches per image/map panel
IGNORE = 255


def overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """``image`` (H, W, 3) uint8 with ``labels`` (H, W) blended in the VOC palette; background stays as is."""
    image, labels = np.asarray(image), np.asarray(labels)
    if image.shape[:2] != labels.shape:
        raise ValueError(f"labels {labels.shape} do not match the image {image.shape[:2]}; upsample the mask first")
    colour = PALETTE[labels].astype(np.float32)
    blend = np.where((labels > 0)[..., None], (1 - alpha) * image + alpha * colour, image)
    return blend.round().astype(np.uint8)


def class_legend(ax, class_names: Sequence[str], labels: Sequence[np.ndarray] | None = None, ignore: bool = True, **kw) -> None:
    """A palette legend on ``ax``: the classes present in ``labels`` (all when None), plus 'ignore'."""
    present = set(np.unique(np.concatenate([np.asarray(x).ravel() for x in labels]))) if labels is not None else None
    handles = [Patch(color=PALETTE[k] / 255, label=name) for k, name in enumerate(class_names, 1)
               if present is None or k in present]
    if ignore and (present is None or IGNORE in present):
        handles.append(Patch(color=PALETTE[IGNORE] / 255, label="ignore (255)"))
    if handles:
        ax.legend(handles=handles, **{"loc": "upper left", "bbox_to_anchor": (1.02, 1.0), "fontsize": "small", "frameon": False, **kw})


def _grid(rows: int, cols: int, extra_width: float = 0.0, panel_width: float = PANEL):
    fig, axes = plt.subplots(rows, cols, figsize=(cols * panel_width + extra_width, rows * PANEL + 0.35), squeeze=False,
                             layout="constrained")  # places colour bars, legends and the suptitle without overlaps
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
    return fig, axes


def image_grid(images: Sequence[np.ndarray], labels: Sequence[np.ndarray | None] | None = None, titles: Sequence[str] | None = None,
               ncols: int | None = None, class_names: Sequence[str] | None = None, title: str | None = None, alpha: float = 0.55):
    """Images (with their label overlays when ``labels`` is given) in a grid; a class legend when
    ``class_names`` is given (label k = ``class_names[k-1]``)."""
    n = len(images)
    if n == 0:
        raise ValueError("image_grid needs at least one image")
    ncols = ncols or min(n, 6)
    nrows = -(-n // ncols)
    fig, axes = _grid(nrows, ncols, extra_width=1.2 if class_names else 0.0)
    shown = []
    for k, ax in enumerate(axes.flat):
        if k >= n:
            ax.axis("off")
            continue
        lab = labels[k] if labels is not None else None
        ax.imshow(overlay(images[k], lab, alpha) if lab is not None else images[k], interpolation="nearest")
        if lab is not None:
            shown.append(lab)
        if titles is not None:
            ax.set_title(textwrap.fill(titles[k], 24), fontsize="x-small", fontweight="normal")
    if class_names is not None:
        class_legend(axes[0, -1], class_names, shown or None)
    if title:
        fig.suptitle(title)
    return fig


def map_grid(maps: Sequence[Sequence[np.ndarray | None]], row_labels: Sequence[str], col_labels: Sequence[str],
             title: str | None = None, cmap: str = "viridis", share: str = "row", colorbar_label: str = "attention",
             vmin: float | None = None, vmax: float | None = None):
    """``maps[r][c]`` (h, w) arrays (None = empty panel) with row/column titles and colour bars.

    ``share='row'``: one colour scale and bar per row (rows are words or classes whose attention
    differs in scale); ``'all'``: one for the grid; ``'none'``: one per panel.
    """
    if share not in ("row", "all", "none"):
        raise ValueError(f"share must be 'row', 'all' or 'none', got {share!r}")
    rows, cols = len(maps), max(len(r) for r in maps)
    if len(row_labels) != rows or len(col_labels) != cols:
        raise ValueError(f"{rows}x{cols} maps need {rows} row labels and {cols} column labels, "
                         f"got {len(row_labels)} and {len(col_labels)}")
    fig, axes = _grid(rows, cols, extra_width=0.6, panel_width=PANEL + (0.7 if share == "none" else 0.0))

    def bounds(arrays):
        vals = [np.asarray(a, dtype=np.float32) for a in arrays if a is not None]
        lo = vmin if vmin is not None else min(float(v.min()) for v in vals)
        hi = vmax if vmax is not None else max(float(v.max()) for v in vals)
        return lo, hi if hi > lo else lo + 1e-8

    every = bounds(m for r in maps for m in r)
    for r, row in enumerate(maps):
        row_bounds = bounds(row) if share == "row" else every
        im = None
        for c in range(cols):
            ax = axes[r, c]
            m = row[c] if c < len(row) else None
            if m is None:
                ax.axis("off")
                continue
            lo, hi = bounds([m]) if share == "none" else row_bounds
            im = ax.imshow(np.asarray(m, dtype=np.float32), cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
            if share == "none":
                fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03).ax.tick_params(labelsize="x-small")
            if r == 0:
                ax.set_title(col_labels[c], fontsize="small")
            if c == 0:
                ax.set_ylabel(row_labels[r], fontsize="small")
        if share == "row" and im is not None:
            bar = fig.colorbar(im, ax=list(axes[r]), fraction=0.046 / max(cols, 1) * 3, pad=0.02,
                               label=colorbar_label if r == rows // 2 else None)
            bar.ax.tick_params(labelsize="x-small")
    if share == "all":
        fig.colorbar(im, ax=axes.ravel().tolist(), fraction=0.03, pad=0.02, label=colorbar_label).ax.tick_params(labelsize="x-small")
    if title:
        fig.suptitle(title)
    return fig


def mark(ax, pixel: tuple[int, int], label: str | None = None, colour: str = "red") -> None:
    """A cross at ``pixel`` (y, x) on an image/map axis, e.g. the query pixel of a self-attention row."""
    y, x = pixel
    ax.scatter([x], [y], marker="x", s=40, color=colour, linewidths=1.5)
    if label:
        ax.annotate(label, (x, y), xytext=(3, 3), textcoords="offset points", color=colour, fontsize="x-small")


def curves_with_band(df, x: str, y: str = "mean", lo: str = "ci_lo", hi: str = "ci_hi", hue: str | None = None,
                     title: str | None = None, xlabel: str | None = None, ylabel: str | None = None, marks=None,
                     ax=None, size: str = "wide", hue_order: Sequence | None = None):
    """Lines of ``y`` against ``x`` with a shaded ``[lo, hi]`` band, one per ``hue`` value.

    ``marks`` (optional) is a table with columns ``hue``, ``x`` and ``y`` drawn as points (e.g.
    the best threshold per class). Returns the figure.
    """
    import seaborn as sns

    fig, ax = (plt.subplots(figsize=FIGSIZE[size]) if ax is None else (ax.figure, ax))
    groups = [(None, df)] if hue is None else [(h, df[df[hue] == h]) for h in (hue_order or list(dict.fromkeys(df[hue])))]
    colours = sns.color_palette("colorblind", len(groups))
    for (name, g), colour in zip(groups, colours):
        g = g.sort_values(x)
        ax.plot(g[x], g[y], color=colour, marker="o", markersize=3, label=None if name is None else str(name))
        ax.fill_between(g[x], g[lo], g[hi], color=colour, alpha=0.2, linewidth=0)
        if marks is not None:
            m = marks if hue is None else marks[marks[hue] == name]
            ax.scatter(m[x], m[y], color=colour, marker="*", s=90, zorder=5, edgecolor="black", linewidth=0.5)
    ax.set_xlabel(xlabel or x)
    ax.set_ylabel(ylabel or y)
    if title:
        ax.set_title(title)
    if hue is not None:
        ax.legend(title=hue, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False, fontsize="small")
    fig.tight_layout()
    return fig


def bar_with_ci(df, x: str, y: str = "mean", lo: str | None = "ci_lo", hi: str | None = "ci_hi", title: str | None = None,
                xlabel: str | None = None, ylabel: str | None = None, size: str = "column"):
    """Bars of ``y`` per ``x`` with ``[lo, hi]`` error bars (none when ``lo``/``hi`` are None), from a table."""
    import seaborn as sns

    fig, ax = plt.subplots(figsize=FIGSIZE[size])
    colours = sns.color_palette("colorblind", len(df))
    yerr = np.vstack([df[y] - df[lo], df[hi] - df[y]]).clip(min=0) if lo and hi else None
    ax.bar(df[x].astype(str), df[y], yerr=yerr, color=colours, capsize=3)
    ax.set_xlabel(xlabel or x)
    ax.set_ylabel(ylabel or y)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig

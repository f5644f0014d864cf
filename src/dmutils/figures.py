"""Plot helpers shared by the study notebooks, so every figure of the report looks the same.

- :func:`overlay` / :func:`image_grid`: images with label masks blended in the VOC palette
  (255 = ignore in the palette's cream), a legend of the classes shown.
- :func:`segmentation_grid`: masks as a reviewer reads them -- each image with its mask's *outlines*
  (nothing blended, so a class's colour never mixes with the image's), flat-palette mask panels beside
  it (one fixed palette: class k is always ``PALETTE[k]``), a full legend of the class names, and the
  prompt and per-image IoU in each column's title (:func:`image_iou`); :func:`protocol` words the
  generation and mask settings for captions.
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

from dmutils import stats
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


def full_legend(fig, class_names: Sequence[str], ignore: bool = False, **kw) -> None:
    """A figure legend of every class of the fixed palette (background first), whether shown or not, plus
    'ignore (255)' when ``ignore``; outside the panels on the right (constrained layout makes room)."""
    handles = [Patch(facecolor=PALETTE[0] / 255, edgecolor="grey", label="background")]
    handles += [Patch(color=PALETTE[k] / 255, label=name) for k, name in enumerate(class_names, 1)]
    if ignore:
        handles.append(Patch(facecolor=PALETTE[IGNORE] / 255, edgecolor="grey", label="ignore (255)"))
    fig.legend(handles=handles, **{"loc": "outside right upper", "fontsize": "small", "frameon": False, "title": "classes", **kw})


def flat_mask(labels: np.ndarray) -> np.ndarray:
    """``labels`` (H, W) as an RGB image in the fixed palette: nothing of the image blended in."""
    return PALETTE[np.asarray(labels)].astype(np.uint8)


def draw_outlines(ax, labels: np.ndarray, width: float = 1.2) -> None:
    """Each labelled region's boundary in its class colour over a white halo, so it shows on any image (a red
    outline on a red circle stays visible) and hides none of its pixels; 0 and 255 are not outlined."""
    labels = np.asarray(labels)
    for k in np.unique(labels):
        if k in (0, IGNORE):
            continue
        region = (labels == k).astype(np.float32)
        ax.contour(region, levels=[0.5], colors="white", linewidths=width + 1.6)
        ax.contour(region, levels=[0.5], colors=[PALETTE[k] / 255], linewidths=width)


def image_iou(pred: np.ndarray, true: np.ndarray, num_classes: int) -> float:
    """One image's mIoU of ``pred`` against ``true``: mean over the classes (background included) either marks,
    pixels 255 in either left out; NaN when no class is present."""
    inter, union = stats.confusion_counts(np.asarray(pred), np.asarray(true), num_classes)
    return float(stats.pooled_miou(inter[None], union[None]))


def protocol(params) -> str:
    """The generation and mask settings of ``params`` in words, for a caption (guidance, refinement, threshold)."""
    m = params.masks
    refine = {"none": "no refinement", "self_attention": f"self-attention refinement (tau {m.tau})",
              "affinity": "learned-affinity refinement"}[m.refine]
    threshold = {"fixed": f"fixed threshold {m.threshold:g}", "per_class": "per-class thresholds",
                 "adaptive": "adaptive threshold"}.get(m.threshold_mode, m.threshold_mode)
    band = f", uncertain band [{m.uncertain_band[0]:g}, {m.uncertain_band[1]:g}) left as 255" if m.uncertain_band else ""
    return (f"guidance {params.model.guidance_scale:g}, {params.model.num_inference_steps} steps; masks: {refine}, "
            f"DenseCRF {'on' if m.crf.enabled else 'off'}, {threshold}{band}")


def column_title(prompt: str, iou: float | None = None, head: str | None = None, width: int = 22) -> str:
    """A column's title: ``head`` (e.g. the model), the prompt wrapped to ``width`` characters, and 'IoU 0.83' when known."""
    lines = ([head] if head else []) + textwrap.wrap(repr(prompt), width)
    if iou is not None and not np.isnan(iou):
        lines.append(f"IoU {iou:.2f}")
    return "\n".join(lines)


def segmentation_grid(images: Sequence[np.ndarray], masks: Sequence[Sequence[np.ndarray]], row_labels: Sequence[str],
                      titles: Sequence[str], class_names: Sequence[str], outline: int | None = 0, title: str | None = None):
    """One column per image: the image with the outlines of ``masks[outline]`` (plain when None), then one
    flat-palette row per mask set (``masks[r][c]``, labelled ``row_labels[r]``); ``titles[c]`` above each column
    (prompt, IoU); a legend of every class name (and 'ignore' when some mask has 255)."""
    n = len(images)
    if n == 0:
        raise ValueError("segmentation_grid needs at least one image")
    if len(row_labels) != len(masks) or any(len(m) != n for m in masks) or len(titles) != n:
        raise ValueError(f"{n} images need {n} titles and {len(masks)} mask rows of {n} masks with one label each")
    fig, axes = _grid(len(masks) + 1, n, extra_width=1.4, panel_width=PANEL + 0.15)
    for c in range(n):
        axes[0, c].imshow(images[c], interpolation="nearest")
        if outline is not None:
            draw_outlines(axes[0, c], masks[outline][c])
        axes[0, c].set_title(titles[c], fontsize="x-small", fontweight="normal")
        for r, row in enumerate(masks, 1):
            axes[r, c].imshow(flat_mask(row[c]), interpolation="nearest")
    axes[0, 0].set_ylabel("image" + (f" +\n{row_labels[outline]} outlines" if outline is not None else ""), fontsize="x-small")
    for r, label in enumerate(row_labels, 1):
        axes[r, 0].set_ylabel(label, fontsize="x-small")
    ignore = any((np.asarray(m) == IGNORE).any() for row in masks for m in row)
    full_legend(fig, class_names, ignore=ignore)
    if title:
        fig.suptitle(title)
    return fig


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

"""The interactive attention explorer behind ``notebooks/explore_attention.ipynb``.

Type a prompt and a seed, generate once, then change the word, resolution, timestep window, tau,
threshold, uncertain band and CRF: only the mask is recomputed, from the kept maps (a timestep
window is read from the per-step snapshots of :func:`dmutils.studies.attention.generate`).

    ex = Explorer(pipe, params)
    ex.generate("a red circle and a blue square", seed=0)
    fig = ex.render(word="circle", window=(0.0, 0.5), tau=2)   # what every control change redraws
    ex.widget()                                                # the ipywidgets controls (JupyterLab)

:meth:`render` and :meth:`table` are plain functions of the settings, so the notebook also runs
headless under papermill (widgets then show as static output).
"""
from __future__ import annotations

from dataclasses import dataclass

import matplotlib.pyplot as plt
import pandas as pd

from dmutils import figures
from dmutils.config import Params
from dmutils.masks.refine import (
    combine_resolutions,
    make_mask,
    self_attention_refine,
    upsample,
)
from dmutils.studies import attention as study


@dataclass
class View:
    """What the controls say; None = the params' value."""

    word: str | None = None
    resolution: str | int = "aggregated"
    window: tuple[float, float] | None = None
    tau: int | None = None
    threshold: float | None = None
    band: tuple[float, float] | None = None
    crf: bool | None = None


class Explorer:
    """One generation at a time, and masks of it under any settings."""

    def __init__(self, pipe, params: Params):
        self.pipe, self.params = pipe, params
        self.gen: study.Generation | None = None

    # -- generation ---------------------------------------------------------------------------
    def generate(self, prompt: str, seed: int = 0) -> None:
        if not prompt or not prompt.strip():
            raise ValueError("type a prompt, e.g. 'a red circle and a blue square'")
        self.gen = study.generate(self.pipe, self.params, [prompt.strip()], [int(seed)])

    def _need(self) -> study.Generation:
        if self.gen is None:
            raise RuntimeError("nothing generated yet: call generate(prompt, seed) first")
        return self.gen

    @property
    def words(self) -> list[str]:
        gen = self._need()
        return study.content_words(gen.maps(), 0)

    @property
    def class_words(self) -> dict[str, str]:
        return study.class_words(self._need().prompts[0], self.params)

    # -- views --------------------------------------------------------------------------------
    def settings(self, view: View) -> dict:
        """The view with the params' values filled in."""
        m = self.params.masks
        words = self.words
        word = view.word or next(iter(self.class_words.values()), words[0] if words else None)
        tau = m.tau if view.tau is None else int(view.tau)
        return {"word": word, "resolution": view.resolution, "window": tuple(view.window or self._need().window),
                "tau": tau, "threshold": m.threshold if view.threshold is None else float(view.threshold),
                "band": view.band, "crf": m.crf.enabled if view.crf is None else bool(view.crf)}

    def compute(self, view: View | None = None, **kw) -> dict:
        """The word's score map (H, W), the labels (H, W) and the class scores of the view."""
        view = view or View(**kw)
        s, gen = self.settings(view), self._need()
        maps = gen.maps(s["window"])
        image = gen.images[0]
        res = maps.cross_resolutions if s["resolution"] == "aggregated" else [int(s["resolution"])]
        weights = self.params.masks.resolution_weights if s["resolution"] == "aggregated" else None
        self_attn = {r: maps.self_attention(0, r) for r in maps.self_resolutions}
        if s["tau"] > 0 and not self_attn:
            raise ValueError("tau > 0 needs self-attention: capture it (capture.self_resolutions) or set tau to 0")

        def maps_of(words: list[str]) -> dict:
            by_res = study.word_maps_by_resolution(maps, 0, words)
            return {r: by_res[r] for r in res}

        word_score = combine_resolutions(maps_of([s["word"]]), weights)
        if s["tau"] > 0:
            word_score = self_attention_refine(word_score, self_attn, s["tau"])
        out = {"settings": s, "word_map": upsample(word_score, image.shape[:2])[0].numpy(), "labels": None, "scores": None}
        cw = self.class_words
        if cw:
            mp = self.params.masks.model_copy(update={
                "tau": s["tau"], "refine": "self_attention" if s["tau"] > 0 else "none", "threshold_mode": "fixed",
                "threshold": s["threshold"], "uncertain_band": s["band"], "resolution_weights": weights,
                "crf": self.params.masks.crf.model_copy(update={"enabled": s["crf"]})})
            ids = [self.params.class_names.index(c) + 1 for c in cw]
            out["labels"], out["scores"] = make_mask(maps_of(list(cw.values())), image, mp, ids, self_attn or None)
        return out

    def table(self, view: View | None = None, **kw) -> pd.DataFrame:
        """Per class of the prompt: its word, the share of pixels it labels, and of ignored pixels."""
        r = self.compute(view, **kw)
        rows = []
        if r["labels"] is not None:
            for k, (cls, word) in enumerate(self.class_words.items()):
                cid = self.params.class_names.index(cls) + 1
                rows.append({"class": cls, "word": word, "pixel_fraction": float((r["labels"] == cid).mean()),
                             "ignore_fraction": float((r["labels"] == 255).mean()), "mean_score": float(r["scores"][k].mean())})
        return pd.DataFrame(rows, columns=["class", "word", "pixel_fraction", "ignore_fraction", "mean_score"])

    def render(self, view: View | None = None, **kw):
        """Image | the word's map | the mask overlay, titled with the settings."""
        r = self.compute(view, **kw)
        s, gen = r["settings"], self._need()
        fig, axes = plt.subplots(1, 3, figsize=(3 * figures.PANEL * 1.6 + 1.6, figures.PANEL * 1.6 + 0.6), layout="constrained")
        for ax in axes:
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
        axes[0].imshow(gen.images[0])
        axes[0].set_title(f"seed {gen.seeds[0]}", fontsize="small")
        im = axes[1].imshow(r["word_map"], cmap="viridis")
        fig.colorbar(im, ax=axes[1], fraction=0.046, pad=0.02, label="attention")
        axes[1].set_title(f"'{s['word']}' ({s['resolution']}, tau={s['tau']})", fontsize="small")
        if r["labels"] is not None:
            axes[2].imshow(figures.overlay(gen.images[0], r["labels"]))
            figures.class_legend(axes[2], self.params.class_names, [r["labels"]])
            band = f", band {s['band'][0]:.2f}-{s['band'][1]:.2f}" if s["band"] else ""
            axes[2].set_title(f"mask: thr {s['threshold']:.2f}{band}{', CRF' if s['crf'] else ''}", fontsize="small")
        else:
            axes[2].text(0.5, 0.5, "no class word\nin the prompt", ha="center", va="center", transform=axes[2].transAxes)
        fig.suptitle(f"'{gen.prompts[0]}' - {study.window_label(s['window'], gen.num_steps)} of {gen.num_steps}")
        return fig

    # -- widgets ------------------------------------------------------------------------------
    def widget(self, prompt: str | None = None, seed: int | None = None):
        """Controls and the live figure (ipywidgets); generate with the button, everything else re-renders."""
        import ipywidgets as w
        from IPython.display import display

        gen = self.gen
        steps = gen.num_steps if gen else self.params.model.num_inference_steps
        m = self.params.masks
        c = {
            "prompt": w.Text(value=prompt or (gen.prompts[0] if gen else self.params.study.attention_prompts[0]), description="prompt",
                             layout=w.Layout(width="60%")),
            "seed": w.IntText(value=seed if seed is not None else (gen.seeds[0] if gen else self.params.study.attention_seeds[0]),
                              description="seed"),
            "word": w.Dropdown(options=self.words if gen else [], description="word"),
            "resolution": w.Dropdown(options=["aggregated", *(gen.maps().cross_resolutions if gen else [])], description="resolution"),
            "window": w.FloatRangeSlider(value=tuple(self.params.capture.timestep_window), min=0, max=1, step=1 / steps,
                                         description="timesteps", readout_format=".2f"),
            "tau": w.IntSlider(value=m.tau, min=0, max=max(8, *self.params.study.taus), description="tau"),
            "threshold": w.FloatSlider(value=m.threshold, min=0, max=1, step=0.05, description="threshold"),
            "band_on": w.Checkbox(value=m.uncertain_band is not None, description="uncertain band"),
            "band": w.FloatRangeSlider(value=tuple(m.uncertain_band or (0.3, 0.5)), min=0, max=1, step=0.05, description="band"),
            "crf": w.Checkbox(value=m.crf.enabled, description="DenseCRF"),
        }
        button, out = w.Button(description="generate", button_style="primary"), w.Output()
        if gen and self.class_words:
            c["word"].value = next(iter(self.class_words.values()))

        def refresh(*_):
            if self.gen is None:
                return
            with out:
                out.clear_output(wait=True)
                try:
                    fig = self.render(word=c["word"].value, resolution=c["resolution"].value, window=c["window"].value,
                                      tau=c["tau"].value, threshold=c["threshold"].value,
                                      band=c["band"].value if c["band_on"].value else None, crf=c["crf"].value)
                    display(fig)
                    plt.close(fig)
                except ValueError as e:  # e.g. an empty timestep window: say so, keep the controls
                    print(f"cannot draw this view: {e}")

        def on_generate(_):
            with out:
                out.clear_output(wait=True)
                print("generating ...")
            self.generate(c["prompt"].value, c["seed"].value)
            c["word"].options = self.words
            c["word"].value = next(iter(self.class_words.values()), self.words[0])
            c["resolution"].options = ["aggregated", *self.gen.maps().cross_resolutions]
            refresh()

        button.on_click(on_generate)
        for key in ("word", "resolution", "window", "tau", "threshold", "band_on", "band", "crf"):
            c[key].observe(refresh, names="value")
        refresh()
        return w.VBox([w.HBox([c["prompt"], c["seed"], button]), w.HBox([c["word"], c["resolution"], c["window"]]),
                       w.HBox([c["tau"], c["threshold"], c["crf"]]), w.HBox([c["band_on"], c["band"]]), out])

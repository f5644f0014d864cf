"""The report's mask figures on small inputs: outlines instead of blends, flat-palette masks, a full class legend,
prompts and IoU in the titles, an ignore row only when there is an ignore region."""
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from dmutils import figures
from dmutils.data import voc

CLASSES = ["circle", "square", "triangle"]


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def square_labels(k: int, size: int = 16, band: bool = False) -> np.ndarray:
    lab = np.zeros((size, size), np.uint8)
    lab[4:12, 4:12] = k
    if band:
        lab[3, 3:13] = 255
    return lab


def legend_names(fig) -> list[str]:
    return [t.get_text() for leg in fig.legends for t in leg.get_texts()]


def test_segmentation_grid_outlines_the_mask_and_draws_flat_palette_panels():
    image = np.full((16, 16, 3), 200, np.uint8)
    image[4:12, 4:12] = (220, 30, 30)  # a red square: a blended red overlay would hide in it
    lab = square_labels(1)
    fig = figures.segmentation_grid([image], [[lab]], ["mask"], ["'a circle'"], CLASSES)
    top, flat = fig.axes[0], fig.axes[1]
    assert np.array_equal(top.images[0].get_array(), image)  # the image is not blended ...
    assert top.collections  # ... its mask is drawn as contour lines
    assert np.array_equal(flat.images[0].get_array(), voc.PALETTE[lab])  # the mask panel is the palette, nothing else
    assert legend_names(fig) == ["background", *CLASSES]  # every class, shown or not; no 'ignore' without 255


def test_image_iou_and_column_titles():
    a, b = square_labels(1), square_labels(1)
    assert figures.image_iou(a, b, 4) == 1.0
    b[4:12, 4:8] = 0  # half the square lost: class 1 IoU 0.5, background 192 / 224
    assert figures.image_iou(a, b, 4) == pytest.approx((0.5 + 192 / 224) / 2)
    title = figures.column_title("a circle and a square", 0.8312, head="toy-sd")
    assert title.splitlines()[0] == "toy-sd" and "IoU 0.83" in title and "circle" in title
    assert "IoU" not in figures.column_title("a circle", None)


def test_protocol_words_guidance_refinement_and_threshold():
    from dmutils.config import Params

    p = Params().model_copy(deep=True)
    text = figures.protocol(p)
    assert f"guidance {p.model.guidance_scale:g}" in text and "threshold" in text and "refinement" in text
    assert "DenseCRF" in text


def write_dataset(root, bands: list[bool]) -> list[dict]:
    records = []
    for i, band in enumerate(bands):
        image = np.full((16, 16, 3), 128, np.uint8)
        voc.write_sample(root, f"s{i}", image, square_labels(i % 3 + 1, band=band))
        records.append({"index": i, "id": f"s{i}", "prompt": f"a {CLASSES[i % 3]}", "status": "ok"})
    return records


class FixedOracle:
    """Labels every image with the square of class 1."""

    def predict(self, images):
        return np.stack([square_labels(1) for _ in images])


def test_dataset_samples_drop_the_ignore_row_without_a_band(tmp_path):
    from dmutils.studies import dataset_report as report

    records = write_dataset(tmp_path, [False, False])
    fig = report.sample_grid(tmp_path, records, CLASSES, n=2)
    labels = [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()]
    assert len(fig.axes) == 2 * 2 and labels[1:] == ["mask"]  # image and mask rows only
    assert "ignore (255)" not in legend_names(fig)
    assert legend_names(fig) == ["background", *CLASSES]
    assert "'a circle'" in fig.axes[0].get_title() and "IoU" not in fig.axes[0].get_title()


def test_dataset_samples_with_a_band_and_an_oracle(tmp_path):
    from dmutils.studies import dataset_report as report

    records = write_dataset(tmp_path, [True, False])
    fig = report.sample_grid(tmp_path, records, CLASSES, n=2, oracle=FixedOracle())
    labels = [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()]
    assert labels[1:] == ["mask", "oracle", "ignore (255)"]
    assert "ignore (255)" in legend_names(fig)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert "IoU 1.00" in titles[0] and "ignore" in titles[0]  # the first image's mask is the oracle's square
    assert "IoU" in titles[1] and "ignore" not in titles[1]


def test_dataset_caption_states_n_and_the_protocol():
    from dmutils.config import Params
    from dmutils.studies import dataset_report as report

    records = [{"status": "ok"}] * 5 + [{"status": "rejected"}]
    text = report.sample_caption(Params(), records, 6, oracle=True)
    assert "5 of 5 written" in text and "n = 6" in text and "guidance" in text and "threshold" in text


def test_model_families_examples_have_prompts_iou_and_a_legend():
    from dmutils.data.toyworld import CLASS_NAMES
    from dmutils.studies import model_families as study
    from dmutils.toy.probe import two_class_prompts

    image = np.full((16, 16, 3), 128, np.uint8).tolist()
    ex = {"images": [image, image], "preds": [square_labels(1).tolist()] * 2, "targets": [square_labels(1).tolist()] * 2}
    results = {"models/toy-sd": {"family": "UNet2DConditionModel", "best_kind": "cross", "examples": ex, "rows": []}}
    fig = study.example_grid(results)
    titles = [" ".join(ax.get_title().split()) for ax in fig.axes if ax.get_title()]  # prompts are wrapped
    prompts = [p for p, _ in two_class_prompts(2)]
    assert len(titles) == 2 and all(p in t and "IoU 1.00" in t and "toy-sd (cross)" in t for p, t in zip(prompts, titles))
    assert legend_names(fig) == ["background", *CLASS_NAMES]
    assert fig.axes[0].collections  # outlines, not a blend


def ablation_results() -> pd.DataFrame:
    """A baseline, two mask variants 1-2 points off it, and a training-only one (the baseline's masks)."""
    rows = [("baseline", "params", 0.0, 0.0, 0.0, 0.30, False), ("tau", "1", 0.012, -0.004, 0.025, 0.31, False),
            ("crf", "off", -0.021, -0.035, -0.008, 0.29, False), ("splicing", "on", 0.0, 0.0, 0.0, 0.27, True)]
    return pd.DataFrame([{"variant": "baseline: params" if g == "baseline" else f"{g}: {s}", "group": g, "setting": s,
                          "miou": 0.80 + d, "delta": d, "delta_lo": lo, "delta_hi": hi, "tuned_delta": d / 2,
                          "tuned_delta_lo": lo, "tuned_delta_hi": hi, "n": 24, "paired_n": 24, "segmenter_miou": seg,
                          "train_samples": 20, "same_masks": same, "key": "base" if same or g == "baseline" else g}
                         for g, s, d, lo, hi, seg, same in rows])


def test_ablation_deltas_have_intervals_a_zero_line_and_a_fitted_axis():
    from dmutils.studies import ablations

    results = ablation_results()
    fig = ablations.delta_figure(results)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["tau: 1", "crf: off"]  # no baseline, no training-only variant
    bars = [c for c in ax.containers if c.has_xerr]
    assert len(bars) == 2  # at the params' threshold and at each one's own threshold, both with intervals
    x = np.sort(bars[0].lines[0].get_xdata())
    assert np.allclose(x, [-2.1, 1.2])  # differences in points, not mIoU
    lo, hi = ax.get_xlim()
    assert -4.5 < lo < -3.5 and 2.5 < hi < 3.5  # fit to the intervals (-3.5 to 2.5), not from 0 to the mIoU
    assert any(np.allclose(line.get_xdata(), 0) for line in ax.get_lines())  # the baseline's zero line
    assert "baseline" in legend_names(fig)[0]
    # without run_grid's same_masks column, the baseline's score key tells the training-only variants
    fig = ablations.delta_figure(results.drop(columns="same_masks"))
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["tau: 1", "crf: off"]


def test_ablation_captions_state_n_the_protocol_and_what_is_left_out():
    from dmutils.config import Params
    from dmutils.studies import ablations

    results, params = ablation_results(), Params()
    text = ablations.delta_caption(results, params)
    assert "n = 24 images" in text and "95%" in text and "guidance" in text and "threshold" in text
    assert "splicing: on" in text  # named as not drawn
    seg = ablations.segmenter_caption(results, params)
    assert "No intervals" in seg and "guidance" in seg


def test_segmenter_deltas_are_points_without_intervals():
    from dmutils.studies import ablations

    results = ablation_results()
    assert ablations.segmenter_scored(results)
    fig = ablations.segmenter_delta_figure(results)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["tau: 1", "crf: off", "splicing: on"]
    assert not any(c.has_xerr for c in ax.containers)
    assert np.allclose(np.sort(ax.containers[0].lines[0].get_xdata()), [-3, -1, 1])
    assert not ablations.segmenter_scored(results.assign(segmenter_miou=[np.nan, 0.3, 0.3, 0.3]))


def test_crf_figure_has_an_off_on_legend_and_the_whole_threshold_axis():
    from dmutils.config import Params
    from dmutils.studies import thresholds

    off = [{"crf": False, "threshold": t, "mean": 0.5, "ci_lo": 0.4, "ci_hi": 0.6, "n": 12} for t in (0.05, 0.5, 0.95)]
    on = [{"crf": True, "threshold": t, "mean": 0.6, "ci_lo": 0.5, "ci_hi": 0.7, "n": 12} for t in (0.2, 0.7)]
    table = pd.DataFrame(off + on)
    ax = thresholds.crf_figure(table).axes[0]
    legend = ax.get_legend()
    assert legend.get_title().get_text() == "DenseCRF" and [t.get_text() for t in legend.get_texts()] == ["off", "on"]
    lo, hi = ax.get_xlim()
    assert lo <= 0.05 and hi >= 0.95
    text = thresholds.crf_caption(table, Params())
    assert "n = 12" in text and "0.05-0.95" in text and "0.2-0.7" in text and "guidance" in text and "threshold" in text


def test_threshold_examples_outline_the_mask_beside_the_oracle():
    from dmutils.config import Params
    from dmutils.studies import thresholds

    params = Params()
    image = np.full((16, 16, 3), 128, np.uint8)
    ex = {"images": [image], "masks": [square_labels(1)], "oracle": [square_labels(1)], "prompts": ["a circle"]}
    fig = thresholds.examples_figure(ex, params)
    assert [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()][1:] == ["mask", "oracle"]
    assert "'a circle'" in fig.axes[0].get_title() and "IoU 1.00" in fig.axes[0].get_title()
    assert legend_names(fig) == ["background", *params.class_names]
    text = thresholds.examples_caption(ex, params)
    assert text.startswith("1 study samples") and "guidance" in text and "per-class thresholds" in text

"""The report's mask figures on small inputs: outlines instead of blends, flat-palette masks, a full class legend,
prompts and IoU in the titles, an ignore row only when there is an ignore region."""
import matplotlib.pyplot as plt
import numpy as np
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

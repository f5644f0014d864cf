"""Per-class colour statistics: the images' side of the synthetic-vs-real gap."""
import colorsys

import numpy as np
import pytest

from dmutils.studies.colour_gap import class_colours, colour_gap


class _Set:
    """Solid-colour objects on grey: class k is a square of the given (hue, value) per sample."""

    classes = ["background", "circle", "star"]

    def __init__(self, colours):
        self.items = colours

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        image = np.full((16, 16, 3), 128, np.uint8)
        label = np.zeros((16, 16), np.uint8)
        for k, (hue, value) in self.items[i].items():
            rgb = np.array(colorsys.hsv_to_rgb(hue, 0.9, value)) * 255
            rows = slice(0, 8) if k == 1 else slice(8, 16)
            image[rows, :8], label[rows, :8] = rgb.round().astype(np.uint8), k
        label[0, 15] = 255  # ignore pixels are no class
        return image, label


def test_hues_average_on_the_colour_circle_and_shifts_are_signed():
    real = _Set([{1: (0.98, 0.8), 2: (0.13, 0.8)}, {1: (0.02, 0.8), 2: (0.15, 0.8)}])
    synthetic = _Set([{1: (0.03, 1.0), 2: (0.16, 1.0)}, {1: (0.03, 1.0), 2: (0.16, 1.0)}])
    colours = class_colours(real)
    assert list(colours["class"]) == ["circle", "star", "circle", "star"]
    gap = colour_gap(colours, class_colours(synthetic)).set_index("class")
    hue = gap.loc["circle", "hue_real"]
    assert min(hue, 1 - hue) < 0.01  # 0.98 and 0.02 meet at red, not at cyan (0.5)
    assert gap.loc["circle", "hue_shift"] == pytest.approx(0.03, abs=0.01)  # across red, not -0.97
    assert gap.loc["star", "hue_shift"] == pytest.approx(0.02, abs=0.01)
    assert gap.loc["star", "value_shift"] == pytest.approx(0.2, abs=0.02)
    assert gap.loc["star", "hue_spread_ratio"] == pytest.approx(0.0, abs=0.05)  # one colour vs two: collapsed
    assert (gap["samples_real"] == 2).all()


def test_classes_missing_from_one_set_are_left_out():
    gap = colour_gap(class_colours(_Set([{1: (0.5, 0.8)}])), class_colours(_Set([{1: (0.5, 0.8)}, {2: (0.1, 0.8)}])))
    assert list(gap["class"]) == ["circle"] and gap.loc[0, "hue_shift"] == pytest.approx(0.0, abs=0.01)


def test_a_set_without_objects_gives_an_empty_table():
    gap = colour_gap(class_colours(_Set([{}])), class_colours(_Set([{1: (0.5, 0.8)}])))
    assert gap.empty and "hue_shift" in gap.columns

"""The segmenter benchmark end to end at --quick sizes: the JSON object issue #7 asks for."""
import argparse
import json

import pytest

from dmutils import bench
from dmutils.toyworld import CLASS_NAMES


@pytest.mark.slow
def test_bench_segmenter_quick_prints_the_headline_keys_and_per_class_iou(capsys):
    assert bench.main(argparse.Namespace(name="segmenter", json=True, quick=True)) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("miou_real", "miou_synthetic", "ratio", "train_seconds", "mask_miou_vs_oracle", "miou_synthetic_oracle_labels"):
        assert out[key] is not None and out[key] >= 0, key
    assert out["ratio"] == pytest.approx(out["miou_synthetic"] / out["miou_real"])
    assert out["steps"] == 20 and out["train_samples"] <= 48
    for split in ("real", "synthetic"):
        per_class = out[f"per_class_{split}"]
        assert sorted(per_class) == sorted(["background", *CLASS_NAMES])
        assert all(v is None or 0 <= v <= 1 for v in per_class.values())
    assert out["guidance_scale"] == 2.0 and out["use_subclasses"] is False  # params/toy.yaml's generation settings
    gap = out["colour_gap"]
    assert gap and set(gap) <= set(CLASS_NAMES)
    assert all(-0.5 < g["hue_shift"] <= 0.5 and -1 <= g["value_shift"] <= 1 for g in gap.values())


@pytest.mark.slow
def test_bench_toy_model_quick_measures_at_the_protocol_and_at_the_params_guidance(capsys):
    assert bench.main(argparse.Namespace(name="toy-model", json=True, quick=True)) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["guidance_scale"] == 7.5 and out["params_guidance_scale"] == 2.0
    for key in ("presence_rate", "attention_miou", "presence_rate_at_params_guidance", "attention_miou_at_params_guidance"):
        assert 0 <= out[key] <= 1, key
    # the same prompts and seeds at two guidance scales give different images, so different scores
    assert (out["presence_rate"], out["attention_miou"]) != (out["presence_rate_at_params_guidance"], out["attention_miou_at_params_guidance"])

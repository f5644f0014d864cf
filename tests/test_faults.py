"""Faults a user meets, each ending in one clear line (docs/faults.md lists them)."""
import time

import pytest

from dmutils.commands import main


def one_error_line(capsys, argv: list[str]) -> str:
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "\n" not in err and "Traceback" not in err, err
    return err


def test_ray_address_that_does_not_answer_is_one_line_quickly(capsys, monkeypatch, tmp_path):
    pytest.importorskip("ray")
    from dmutils.dataset import ray_backend

    monkeypatch.setattr(ray_backend, "PROBE_TIMEOUT_S", 2.0)
    t = time.monotonic()
    # a fresh folder: a finished dataset at the params' out_dir would end the run before Ray is asked for
    err = one_error_line(capsys, ["generate", "params/toy.yaml", "--out", str(tmp_path / "ds"), "--ray", "127.0.0.1:1"])
    assert time.monotonic() - t < 15
    assert "127.0.0.1:1" in err and "ray start --head" in err and "'--ray' alone" in err and "no '--ray'" in err


def test_train_data_dir_names_the_synthetic_folder(capsys, tmp_path):
    err = one_error_line(capsys, ["train", "--data", "synthetic", "--data-dir", str(tmp_path / "elsewhere"), "--no-eval",
                                  "--out", str(tmp_path / "seg")])
    assert f"no synthetic dataset at {tmp_path / 'elsewhere'}" in err
    assert "--data synthetic" in one_error_line(capsys, ["train", "--data-dir", str(tmp_path), "--out", str(tmp_path / "seg")])
    assert not (tmp_path / "seg").exists()


def test_describe_data_names_folder_split_and_count():
    import numpy as np

    from dmutils.commands.common import describe_data
    from dmutils.segment.data import ArrayDataset

    pair = (np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), np.uint8))
    ds = ArrayDataset([pair] * 3, ["background", "a"], root="/data/x")
    ds.split = "val"
    assert describe_data("evaluating on", ds) == "evaluating on: /data/x, split val, 3 images"


def test_generate_out_is_the_dataset_folder(capsys, tmp_path):
    (tmp_path / "a-file").write_text("x")  # a folder under a file cannot be made: the preflight names it, nothing runs
    err = one_error_line(capsys, ["generate", "params/toy.yaml", "--out", str(tmp_path / "a-file" / "ds")])
    assert f"dataset.out_dir {tmp_path / 'a-file' / 'ds'}: {tmp_path / 'a-file'} is a file" in err, err


def test_bench_prints_targets_and_warns_on_few_repeats():
    from dmutils.benchmarks import segmenter
    from dmutils.commands.bench import format_result

    lines, warnings = format_result({"ratio": 0.756, "ratio_repeats": 1, "other": 2.0, "other_repeats": 3},
                                    {"ratio": ">= 0.90"})
    assert lines[0].split() == ["ratio", "0.756", "(target", ">=", "0.90)"] and "target" not in lines[2]
    assert len(warnings) == 1 and "ratio rests on 1 repeat(s), under 3" in warnings[0]
    assert segmenter.TARGETS["ratio"] == ">= 0.90"


def test_no_progress_silences_the_loading_bars(capsys):
    from diffusers.utils import logging as dlog

    from dmutils.pipeline import load_pipeline

    load_pipeline("models/toy-sd", device="cpu", progress=True)
    assert "Loading pipeline components" in capsys.readouterr().err  # the bar this test is about
    load_pipeline("models/toy-sd", device="cpu")  # progress=False: what generate --no-progress loads with
    assert capsys.readouterr().err == ""
    assert dlog.is_progress_bar_enabled()  # the library's switch is restored


def test_sigterm_ends_a_command_as_ctrl_c_does(capsys, monkeypatch):
    import os
    import signal
    import sys
    import types

    from dmutils import commands

    fake = types.ModuleType("dmutils_test_sleeper")
    fake.add_arguments = lambda parser: None

    def sleeper(args):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
        return 0

    fake.main = sleeper
    monkeypatch.setitem(sys.modules, "dmutils_test_sleeper", fake)
    monkeypatch.setitem(commands.COMMANDS, "sleeper", ("dmutils_test_sleeper", "test"))
    before = signal.getsignal(signal.SIGTERM)
    t = time.monotonic()
    assert main(["sleeper"]) == 130 and time.monotonic() - t < 4
    assert "interrupted; finished work is kept, re-run to resume" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is before

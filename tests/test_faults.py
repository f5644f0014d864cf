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


# --- one job a folder (dmutils.locks) ---------------------------------------------------------------------------
HOLD_LOCK = "import sys\nfrom dmutils.locks import folder_lock\nwith folder_lock(sys.argv[1]):\n    print('locked', flush=True)\n    sys.stdin.read()\n"


def _lock_holder(folder):
    """Another process holding ``folder``'s lock until its stdin closes (or it is killed)."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(folder)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "locked", "the holder could not take the lock"
    return proc


def test_second_job_on_a_folder_is_refused_naming_the_first(capsys, tmp_path):
    import socket

    from dmutils.errors import FolderInUseError
    from dmutils.locks import LOCK_NAME, folder_lock

    folder = tmp_path / "ds"
    holder = _lock_holder(folder)
    try:
        err = one_error_line(capsys, ["generate", "params/toy.yaml", "--no-progress", "--out", str(folder)])
        assert f"{folder} is in use by another dmutils job (PID {holder.pid} on host {socket.gethostname()}, started " in err
        assert "-c " in err and "wait for it to end" in err, err  # the holder's command line
        assert [p.name for p in folder.iterdir()] == [LOCK_NAME]  # refused before writing anything
        with pytest.raises(FolderInUseError, match=f"PID {holder.pid}"):  # remask, splice, merge-shards take the same lock
            with folder_lock(folder):
                pass
    finally:
        holder.stdin.close()
        assert holder.wait(timeout=30) == 0
    assert not (folder / LOCK_NAME).exists()  # a finished holder leaves nothing behind
    with folder_lock(folder):  # and the folder is free again
        pass


def test_lock_left_by_a_killed_job_does_not_block(tmp_path):
    import json
    import os

    from dmutils.locks import LOCK_NAME, folder_lock

    folder = tmp_path / "ds"
    holder = _lock_holder(folder)
    holder.kill()  # SIGKILL: no clean-up runs, the note stays; the kernel drops the flock
    holder.wait(timeout=30)
    assert json.loads((folder / LOCK_NAME).read_text())["pid"] == holder.pid
    with folder_lock(folder):
        assert json.loads((folder / LOCK_NAME).read_text())["pid"] == os.getpid()
    (folder / LOCK_NAME).write_text("not a note")  # a stale file of any content
    with folder_lock(folder):
        pass
    assert not (folder / LOCK_NAME).exists()


# --- bars in logs (dmutils.progress) ----------------------------------------------------------------------------
def test_bars_in_a_log_are_plain_lines_every_interval(monkeypatch):
    import io

    from dmutils import progress

    log = io.StringIO()  # not a terminal, as a batch job's log file or a pipe
    for _ in progress.progress_bar(range(50), desc="generate ds", file=log):  # LOG_INTERVAL_S (30 s) never passes
        pass
    lines = log.getvalue().splitlines(keepends=True)
    assert "\r" not in log.getvalue() and all(line.endswith("\n") for line in lines)
    assert [line.split("|")[0] for line in lines] == ["generate ds:   0%", "generate ds: 100%"]  # the first and the last
    assert "50/50" in lines[-1] and lines[-1].isascii()
    monkeypatch.setattr(progress, "LOG_INTERVAL_S", 0.0)  # an interval that always passes: a line per update
    log = io.StringIO()
    for _ in progress.progress_bar(range(3), desc="x", file=log, leave=False):
        pass
    assert [line.split("|")[0] for line in log.getvalue().splitlines()] == ["x:   0%", "x:  33%", "x:  67%", "x: 100%"]


def test_no_progress_silences_every_bar(capsys, monkeypatch):
    import sys
    import types

    from dmutils import commands
    from dmutils.progress import progress_bar

    fake = types.ModuleType("dmutils_test_bars")

    def add_arguments(parser):
        parser.add_argument("--no-progress", action="store_true")

    def bars(args):
        for _ in progress_bar(range(3), desc="a bar its caller did not disable"):
            pass
        return 0

    fake.add_arguments, fake.main = add_arguments, bars
    monkeypatch.setitem(sys.modules, "dmutils_test_bars", fake)
    monkeypatch.setitem(commands.COMMANDS, "bars", ("dmutils_test_bars", "test"))
    assert main(["bars"]) == 0 and "a bar its caller did not disable" in capsys.readouterr().err
    assert main(["bars", "--no-progress"]) == 0 and capsys.readouterr().err == ""


def test_every_bar_is_made_by_the_one_helper():
    import re
    from pathlib import Path

    import dmutils

    src = Path(dmutils.__file__).parent
    direct = [f"{p.relative_to(src)}:{n}" for p in src.rglob("*.py") if p.name != "progress.py"
              for n, line in enumerate(p.read_text().splitlines(), 1) if re.search(r"\bfrom tqdm|\bimport tqdm|\btqdm\(", line)]
    assert not direct, f"make bars with dmutils.progress.progress_bar (it suits terminals, logs, --no-progress): {direct}"

"""``dmutils generate --ray ADDRESS`` against a cluster started by ``ray start --head`` (a separate
process, as a user or SLURM script would), with a driver killed mid-run and resumed by a rerun.

The head runs with ``--block`` in its own session, so the fixture stops exactly the processes it
started (``ray stop`` would stop every Ray process of this user on the machine). Slow: a Ray head's
start-up and two driver processes that import torch, plus their actors."""
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("ray")

from test_dataset_ray import N, _tiny_params, files_of  # noqa: E402

from dmutils.data import voc  # noqa: E402
from dmutils.dataset.generate import generate_dataset  # noqa: E402

pytestmark = pytest.mark.slow
SRC = str(Path(__file__).resolve().parents[1] / "src")
# Ray 2.60 clusters require a token; the head and its drivers share this one (not the user's ~/.ray/auth_token)
TOKEN = secrets.token_hex(32)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": TOKEN}


def _start_head(log: Path, temp_dir: str, attempts: int = 3) -> tuple[subprocess.Popen, int]:
    """``ray start --head --block`` in its own session; retried, as Ray gives a node 30 s (fixed) to
    register and a loaded machine can miss that. Ready when Ray says so (the GCS port opens earlier)."""
    ray_bin = Path(sys.executable).with_name("ray")
    for _ in range(attempts):
        port = _free_port()
        with open(log, "wb") as f:  # to a file: a full pipe would block the head
            proc = subprocess.Popen([str(ray_bin), "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
                                     "--object-store-memory=100000000", "--include-dashboard=false", "--disable-usage-stats",
                                     f"--temp-dir={temp_dir}"],
                                    env=_env(), start_new_session=True, stdout=f, stderr=subprocess.STDOUT)
        deadline = time.time() + 180
        while time.time() < deadline and proc.poll() is None and "Ray runtime started" not in log.read_text(errors="replace"):
            time.sleep(0.5)
        if proc.poll() is None and "Ray runtime started" in log.read_text(errors="replace"):
            return proc, port
        _stop(proc)
    raise AssertionError(f"ray start --head did not come up in {attempts} attempts: {log.read_text(errors='replace')[-2000:]}")


def _stop(proc: subprocess.Popen, grace_s: float = 5) -> None:
    """SIGTERM (--block: the head takes its raylet and workers down with it), then, after ``grace_s``, SIGKILL to its
    session: a graceful stop of the head measured ~30 s, and nothing of a test cluster is worth keeping."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # its own session: only what this fixture started
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("raycluster")
    params_file, params = _tiny_params(tmp)
    generate_dataset(params, progress=False)
    # its own temp dir (short: Ray's socket paths must fit 107 bytes), so that the address file it leaves
    # there never makes a later ray.init() join this dead cluster
    temp_dir = tempfile.mkdtemp(prefix="dmray", dir="/tmp")
    proc, port = _start_head(tmp / "head.log", temp_dir)
    try:
        yield {"address": f"127.0.0.1:{port}", "file": params_file, "ref": files_of(tmp / "ref")}
    finally:
        _stop(proc)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _generate_cmd(head, out: Path) -> list[str]:
    return [sys.executable, "-m", "dmutils", "generate", str(head["file"]), "--set", f"dataset.out_dir={out}",
            "--ray", head["address"], "--no-progress"]


def test_killed_driver_resumes_on_a_ray_start_cluster(head, tmp_path):
    """The first driver is SIGKILLed as soon as the first sample file lands (its actors are mid-run: N
    samples in blocks of 2 on 2 actors, so at least one block is still to come); a second one, joined to
    the same cluster by address, generates only what has no manifest line and the dataset equals the
    single-process one. Killing at the first file, not at the first manifest line, leaves no race: the
    manifest lines of the first blocks can arrive together with the last block's."""
    out = tmp_path / "ds"
    manifest = out / "manifest.jsonl"
    images = out / voc.IMAGES
    err = open(tmp_path / "first.err", "w+")  # a file, not a pipe that could fill up and block the driver
    first = subprocess.Popen(_generate_cmd(head, out), env=_env(), stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and first.poll() is None and not (images.is_dir() and any(images.iterdir())):
            time.sleep(0.02)
        assert first.poll() is None, f"driver ended before it was killed: {(tmp_path / 'first.err').read_text()[-2000:]}"
        assert images.is_dir() and any(images.iterdir()), "the cluster wrote no sample in 240 s"
        first.send_signal(signal.SIGKILL)
    finally:
        if first.poll() is None:
            first.kill()
        first.wait(timeout=30)
        err.close()
    done_before = len(manifest.read_text().splitlines()) if manifest.is_file() else 0
    assert done_before < N
    second = subprocess.run(_generate_cmd(head, out), env=_env(), capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    assert f"generated now {N - done_before} " in second.stdout and f"{done_before} already done" in second.stdout
    assert files_of(out) == head["ref"]


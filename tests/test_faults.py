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


def test_ray_address_that_does_not_answer_is_one_line_quickly(capsys, monkeypatch):
    pytest.importorskip("ray")
    from dmutils.dataset import ray_backend

    monkeypatch.setattr(ray_backend, "PROBE_TIMEOUT_S", 2.0)
    t = time.monotonic()
    err = one_error_line(capsys, ["generate", "params/toy.yaml", "--ray", "127.0.0.1:1"])  # loopback, nothing listens
    assert time.monotonic() - t < 15
    assert "127.0.0.1:1" in err and "ray start --head" in err and "'--ray' alone" in err and "no '--ray'" in err

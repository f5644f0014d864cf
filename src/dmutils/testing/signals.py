"""Stop a real command with a signal at a chosen moment, as a user's Ctrl-C or a scheduler's cancel would: the
interruption tests of generate, train and run share it."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable


def stop_when(cmd: list[str], ready: Callable[[], bool], sig: int, what: str = "the command",
              timeout: float = 240) -> tuple[int, str]:
    """Run ``cmd`` in a new session, send ``sig`` to its process group once ``ready()``; its exit code and output
    (stdout and stderr together). Fails if ``cmd`` ends first; kills the group if it does not end within 120 s."""
    # SIGINT back to its default: a shell that started the tests in the background may have set it to ignore
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + timeout
    try:
        while time.time() < deadline and proc.poll() is None and not ready():
            time.sleep(0.02)
        if proc.poll() is not None:
            raise AssertionError(f"{what} ended before it could be stopped: {proc.stdout.read().decode()[-2000:]}")
        os.killpg(proc.pid, sig)
        output = proc.communicate(timeout=120)[0].decode()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return proc.returncode, output

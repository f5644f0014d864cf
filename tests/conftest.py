"""Shared test set-up: kept minimal; fixtures of one area live in that area's test file."""
import os

# Figures in tests (and in notebooks they run) render off-screen.
os.environ.setdefault("MPLBACKEND", "Agg")


import pytest  # noqa: E402


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a test module: on a shared 2-core machine, OpenMP threads waiting on
    each other cost 4-30x. Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

"""The post-processing process pool: one torch thread a worker, forked from a fork server that imported
torch and the mask code once, at a lower CPU priority so that generation keeps the cores."""
from __future__ import annotations

import contextlib
import os
from concurrent.futures import ProcessPoolExecutor


# ---------------------------------------------------------------------------------------------
# Post-processing of one sample (worker side): mask, checks, files
# ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def one_thread():
    """Masks are many small tensor ops run on one torch thread everywhere: inline and worker results
    are then the same bytes, and on a shared CPU more threads would only wait on each other."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _init_worker() -> None:
    """One torch thread, and a lower CPU priority: where cores are few, generation keeps them and
    post-processing runs in its gaps (the last batch's masks are the only ones waited for)."""
    if hasattr(os, "nice"):
        os.nice(10)
    import torch

    torch.set_num_threads(1)
    import dmutils.masks.refine  # noqa: F401  (import cost paid at start-up, while the first batch generates)


class Finished:
    """A finished 'future' for the inline path (workers = 0)."""

    def __init__(self, value):
        self.value = value

    def done(self) -> bool:
        return True

    def result(self):
        return self.value


def make_pool(workers: int) -> ProcessPoolExecutor | None:
    """Post-processing workers, forked from a fork server that has imported torch and the mask code once.

    Why a fork server: a spawned worker imports torch afresh, ~3 s of one core per worker and per
    ``generate_dataset`` call (measured: 3.4 s CPU; 158 s wall at nice 10 on the busy 2-core machine),
    taken from generation on a small CPU. The server is started once per process and imports them once;
    later pools fork from it in under a second (0.7 s there), which is what studies and benchmarks that
    call ``generate_dataset`` / ``remask_dataset`` many times pay. It is a clean single-threaded process,
    so forking it is safe, unlike forking the main process, whose torch threads are running."""
    if workers <= 0:
        return None
    import multiprocessing

    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["dmutils.masks.refine", "dmutils.dataset.labelling"])
    else:
        context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker)
    for _ in range(workers):  # start the processes now, not when the first sample is ready
        pool.submit(int)
    return pool

"""The post-processing process pool: one torch thread a worker, forked from a fork server that imported
torch and the mask code once, at a lower CPU priority so that generation keeps the cores. A killed worker
(the out-of-memory killer, a ``kill -9``) costs a new pool and the jobs not yet collected, run again."""
from __future__ import annotations

import contextlib
import os
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from dmutils.errors import WorkersKilledError
from dmutils.paths import remove_partial_writes
from dmutils.progress import write

MAX_RESTARTS = 3  # a job that kills its worker every time (one sample too big for memory) ends the run after this


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


def make_pool(workers: int, root: str | Path | None = None) -> Pool | None:
    """Post-processing workers, forked from a fork server that has imported torch and the mask code once;
    None for ``workers`` 0 (post-processing inline). ``root``: the folder the jobs write into, cleared of
    a killed worker's temp files when the pool restarts.

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
    return Pool(workers, context, root)


class Task:
    """A job in a :class:`Pool`: its function and argument are kept until it is collected, so it can run again."""

    def __init__(self, pool: Pool, fn, arg):
        self.pool, self.fn, self.arg = pool, fn, arg
        self.future: Future | None = None

    def done(self) -> bool:
        return self.future is not None and self.future.done()

    def result(self):
        return self.pool.collect(self)


class Pool:
    """A process pool that survives a killed worker: a ``ProcessPoolExecutor`` breaks as a whole when one worker
    dies, so the jobs not yet collected are run again in a new one, at most :data:`MAX_RESTARTS` times. A job is
    a function of its argument that writes its files atomically (``finish_sample``, ``remask_sample``), so a
    redone job writes the same bytes; results are still collected in submission order by the caller."""

    def __init__(self, workers: int, context, root: str | Path | None = None):
        self.workers, self.context, self.root, self.restarts = workers, context, root, 0
        self.live: dict[int, Task] = {}  # submitted, not yet collected
        self.executor = self._start()

    def _start(self) -> ProcessPoolExecutor:
        executor = ProcessPoolExecutor(self.workers, mp_context=self.context, initializer=_init_worker)
        for _ in range(self.workers):  # start the processes now, not when the first sample is ready
            executor.submit(int)
        return executor

    def submit(self, fn, arg) -> Task:
        task = Task(self, fn, arg)
        self.live[id(task)] = task
        try:
            task.future = self.executor.submit(fn, arg)
        except BrokenProcessPool:  # broken before this job: it is resubmitted with the others
            self._restart()
        return task

    def collect(self, task: Task):
        """The task's result, after as many restarts as a killed worker takes."""
        while True:
            try:
                value = task.future.result()
            except BrokenProcessPool:
                self._restart()
                continue
            self.live.pop(id(task), None)
            return value

    def _restart(self) -> None:
        self.executor.shutdown(wait=True)  # a broken executor has settled every future by then
        redo = [t for t in self.live.values() if t.future is None or _broken(t.future)]
        self.restarts += 1
        if self.restarts > MAX_RESTARTS:
            raise WorkersKilledError(
                f"a post-processing worker was killed {self.restarts} times (the out-of-memory killer, or a kill -9); "
                f"finished samples are kept: lower dataset.workers (now {self.workers}; 0 post-processes in the main "
                "process) or free memory, and re-run to resume")
        if self.root is not None:
            remove_partial_writes(Path(self.root))  # the killed worker's half-written files; no worker runs now
        write(f"warning: a post-processing worker was killed; its pool is restarted ({self.restarts} of "
              f"{MAX_RESTARTS}) and the {len(redo)} samples not yet done are redone", stderr=True)
        self.executor = self._start()
        for t in redo:
            t.future = self.executor.submit(t.fn, t.arg)

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        self.executor.shutdown(wait=wait, cancel_futures=cancel_futures)


def _broken(future: Future) -> bool:
    """Lost with its pool (a job that finished, or raised its own error, before the break keeps its outcome)."""
    return not future.done() or future.cancelled() or isinstance(future.exception(), BrokenProcessPool)

"""Executors: where stage tasks run. The runner only calls ``submit`` and ``shutdown``.

* ``inline``  — in this thread, one at a time (``workers: 1``): the least overhead.
* ``thread``  — a thread pool: Polars releases the GIL, so Polars-heavy stages overlap well.
* ``process`` — a process pool (spawn): for CPU-bound pure-Python stages. Stage kinds and
  ``kind: python`` functions must be importable by module path.

Ray and Prefect executors (issue 6) implement the same two methods; stage code does not change.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
from abc import ABC, abstractmethod
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor

from ductwork.core.contract import ProgressFn, _no_progress
from ductwork.core.execute import StageResult, StageTask, execute_stage
from ductwork.errors import UsageError, did_you_mean


class Executor(ABC):
    name: str = "executor"

    def __init__(self, workers: int) -> None:
        self.workers = max(1, workers)

    @abstractmethod
    def submit(self, task: StageTask, progress: ProgressFn = _no_progress) -> Future[StageResult]:
        """Start a stage task and return a future of its result."""

    def shutdown(self, *, cancel: bool = False) -> None:  # noqa: B027 - optional hook
        """Release workers."""


class InlineExecutor(Executor):
    name = "inline"

    def __init__(self, workers: int = 1) -> None:
        super().__init__(1)

    def submit(self, task: StageTask, progress: ProgressFn = _no_progress) -> Future[StageResult]:
        fut: Future[StageResult] = Future()
        fut.set_result(execute_stage(task, progress))
        return fut


class ThreadExecutor(Executor):
    name = "thread"

    def __init__(self, workers: int) -> None:
        super().__init__(workers)
        self._pool = ThreadPoolExecutor(
            max_workers=self.workers, thread_name_prefix="ductwork-stage"
        )

    def submit(self, task: StageTask, progress: ProgressFn = _no_progress) -> Future[StageResult]:
        return self._pool.submit(execute_stage, task, progress)

    def shutdown(self, *, cancel: bool = False) -> None:
        self._pool.shutdown(wait=True, cancel_futures=cancel)


def _warm_up() -> None:
    """Import the stage machinery in a fresh worker while the runner is still planning."""
    import ductwork.core.execute  # noqa: F401


class ProcessExecutor(Executor):
    """A process pool (forkserver where available, else spawn). Progress is not streamed back.

    The workers are started (and import ductwork) as soon as the executor is made, so their
    start-up overlaps with the runner's planning instead of delaying the first stages.
    """

    name = "process"

    def __init__(self, workers: int) -> None:
        super().__init__(workers)
        # forkserver: one clean server process imports ductwork and Polars once, and workers
        # are forked from it (no threads are forked, unlike plain fork); spawn elsewhere
        method = (
            "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
        )
        ctx = multiprocessing.get_context(method)
        if method == "forkserver":
            ctx.set_forkserver_preload(["ductwork.core.execute", "polars"])
        self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=ctx)
        for _ in range(self.workers):
            self._pool.submit(_warm_up)

    def _get_pool(self) -> ProcessPoolExecutor:
        return self._pool

    def submit(self, task: StageTask, progress: ProgressFn = _no_progress) -> Future[StageResult]:
        if task.kind_cls is not None and task.kind_cls.__module__ == "__main__":
            msg = (
                f"stage '{task.stage}': its kind is defined in __main__, which a process pool "
                "cannot import; move it into a module or use pool: thread"
            )
            raise UsageError(msg)
        shipped = StageTask(**{**task.__dict__, "kind_cls": None})
        try:
            pickle.dumps(shipped)
        except Exception as exc:  # a lambda, a local function, a function defined in __main__
            msg = (
                f"stage '{task.stage}' cannot be sent to a worker process: {exc}; its function "
                "must be importable (defined at the top level of a module, not in __main__, a "
                "notebook or another function)"
            )
            raise UsageError(
                msg, hint="Move the function into a module, or use pool: thread."
            ) from exc
        return self._get_pool().submit(execute_stage, shipped)

    def shutdown(self, *, cancel: bool = False) -> None:
        self._pool.shutdown(wait=True, cancel_futures=cancel)


POOLS: dict[str, type[Executor]] = {
    "inline": InlineExecutor,
    "thread": ThreadExecutor,
    "process": ProcessExecutor,
}


def make_executor(kind: str, workers: int, pool: str) -> Executor:
    """Build the executor named in the pipeline, Settings or ``--executor``."""
    if kind != "local":
        msg = f"executor '{kind}' is not available{did_you_mean(kind, ['local'])}"
        raise UsageError(msg, hint="Available: local (ray and prefect are planned).")
    if workers <= 1:
        return InlineExecutor()
    if pool not in POOLS:
        msg = f"unknown pool '{pool}'{did_you_mean(pool, POOLS)}"
        raise UsageError(msg, hint="Use pool: thread or pool: process.")
    return POOLS[pool](workers)


def default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))

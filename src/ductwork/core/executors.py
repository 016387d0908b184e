"""Executors: where stage tasks run. The runner calls ``run_walk``, ``submit`` and ``shutdown``.

* ``inline``  — in this thread, one at a time (``workers: 1``): the least overhead.
* ``thread``  — a thread pool: Polars releases the GIL, so Polars-heavy stages overlap well.
* ``process`` — a process pool (spawn): for CPU-bound pure-Python stages. Stage kinds and
  ``kind: python`` functions must be importable by module path.
* ``ray``     — each stage is a Ray task (:mod:`ductwork.engines.ray`).
* ``prefect`` — the run is a Prefect flow, each stage a Prefect task
  (:mod:`ductwork.engines.prefect`).

Every executor runs :func:`~ductwork.core.execute.execute_stage`; artifacts move through the
store, never through the executor. Retries (``retries:``/``retry_delay:``) re-run an attempt
that failed transiently (:func:`~ductwork.core.execute.is_transient`), the same everywhere:
here by :func:`run_with_retries`, on Ray and Prefect by their own retry machinery.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
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

    def run_walk(self, pipeline: str, run_id: str, walk: Callable[[], None]) -> None:
        """Run the runner's walk over the DAG (which calls ``submit``). Prefect wraps it in a
        flow so the run shows in its UI; the others just call it."""
        walk()


def run_with_retries(task: StageTask, progress: ProgressFn = _no_progress) -> StageResult:
    """Run a stage, re-running a transiently failed attempt up to ``task.retries`` times.

    Data, spec and usage errors are never retried: the same inputs fail the same way. Each
    attempt starts from the same inputs in a fresh work dir, and publication is atomic, so a
    failed attempt leaves nothing behind that a later one could trip over.
    """
    started = time.time()
    attempt = 1
    while True:
        result = execute_stage(task, progress)
        error = result.error or {}
        if result.ok or attempt > task.retries or not error.get("transient"):
            result.started, result.attempts = started, attempt
            return result
        note = f"attempt {attempt} failed ({error.get('message')}); retrying"
        if task.retry_delay:
            note += f" in {task.retry_delay:g} s"
        result.logs.append(note)
        time.sleep(task.retry_delay)
        attempt += 1


class InlineExecutor(Executor):
    name = "inline"

    def __init__(self, workers: int = 1) -> None:
        super().__init__(1)

    def submit(self, task: StageTask, progress: ProgressFn = _no_progress) -> Future[StageResult]:
        fut: Future[StageResult] = Future()
        fut.set_result(run_with_retries(task, progress))
        return fut


class ThreadExecutor(Executor):
    name = "thread"

    def __init__(self, workers: int) -> None:
        super().__init__(workers)
        self._pool = ThreadPoolExecutor(
            max_workers=self.workers, thread_name_prefix="ductwork-stage"
        )

    def submit(self, task: StageTask, progress: ProgressFn = _no_progress) -> Future[StageResult]:
        return self._pool.submit(run_with_retries, task, progress)

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
        return self._get_pool().submit(run_with_retries, shipped)

    def shutdown(self, *, cancel: bool = False) -> None:
        self._pool.shutdown(wait=True, cancel_futures=cancel)


POOLS: dict[str, type[Executor]] = {
    "inline": InlineExecutor,
    "thread": ThreadExecutor,
    "process": ProcessExecutor,
}


EXECUTORS = ("local", "ray", "prefect")


def make_executor(
    kind: str,
    workers: int,
    pool: str,
    *,
    address: str | None = None,
    store_root: str = "",
    local_root: str = "",
) -> Executor:
    """Build the executor named in the pipeline, Settings or ``--executor``.

    Ray and Prefect are imported only here, when asked for; without them installed the
    error names the extra to install. ``store_root`` is where workers reach the artifact store
    (a path, or an object-store URL); ``local_root`` is this machine's store directory (for
    state such as Prefect's home).
    """
    if kind == "ray":
        from ductwork.engines.ray import RayExecutor

        return RayExecutor(workers, address=address, store_root=store_root)
    if kind == "prefect":
        from ductwork.engines.prefect import PrefectExecutor

        return PrefectExecutor(workers, store_root=local_root or store_root)
    if kind != "local":
        msg = f"unknown executor '{kind}'{did_you_mean(kind, EXECUTORS)}"
        raise UsageError(msg, hint="Use executor: local, ray or prefect (docs/executors.md).")
    if workers <= 1:
        return InlineExecutor()
    if pool not in POOLS:
        msg = f"unknown pool '{pool}'{did_you_mean(pool, POOLS)}"
        raise UsageError(msg, hint="Use pool: thread or pool: process.")
    return POOLS[pool](workers)


def default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))

"""Hyperparameter search with Optuna: the engine of the ``tune`` stage kind.

:func:`tune` prepares the evaluation data once (cross-validation folds of train, with the
feature transform refitted within each fold, or train and val), opens or resumes the study in
Optuna storage, runs the trials the study still needs — in this process, in threads, or in
worker processes that share the study through its storage — and returns the best params and
the trials table; :func:`write_plots` draws the optimization history and the importances.

Storage: by default one journal file per study under ``<store>/optuna/``
(``JournalStorage(JournalFileBackend(...))``): appends under a file lock, safe for parallel
trials in threads and in processes on one host, and several times cheaper per trial than
SQLite through ``RDBStorage`` (measured: ~8 ms vs ~40 ms per trial, and SQLite slowed down
further with two writers; SQLite is not meant for concurrent writers). A database URL
(``postgresql://...``, ``mysql://...``, ``sqlite:///file.db``) uses ``RDBStorage`` with
heartbeats (a trial whose process died is failed after the grace period and retried); SQLite
files get a 60 s lock timeout. ``postgresql://`` means psycopg 3 (``postgresql+psycopg://``).

A PostgreSQL study is shared (:class:`_Budget`): every process claims its next trial in the
database under an advisory lock on the study, so the stage's processes and ``ductwork
tune-worker`` processes on other machines (:func:`join`) together run exactly ``n_trials``.

Parallel trials default to processes (this one and ``n_jobs - 1`` spawned workers):
scikit-learn's per-tree and per-fold Python work holds the GIL, so threads only overlap the
native parts. Measured on 2 cores (bench/bench_tune.py: random forest, 0.9 s trials): a trial
in a thread ran ~40% slower than alone, in a process ~4%; n_jobs=2 was 1.52x faster than
n_jobs=1 with processes and 1.39x with threads over 16 trials, 1.77x and 1.28x over 48.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import re
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import optuna
import polars as pl
from optuna.trial import FrozenTrial, TrialState

from ductwork.errors import DataError, DuctworkError, SourceError, UsageError
from ductwork.ml import estimators
from ductwork.ml.scoring import Objective, default_objective, objective, score

if TYPE_CHECKING:
    from ductwork.core.contract import StageContext
    from ductwork.stages.tune import SearchParam, TuneParams

STORE_DIR = "optuna"
HISTORY_PNG = "optimization_history.png"
IMPORTANCES_PNG = "param_importances.png"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# scikit-learn scorers that only take two classes
_BINARY_SCORERS = ("roc_auc", "average_precision", "f1", "precision", "recall")
_MAX_LOGGED_WARNINGS = 20

Matrix = Any  # a numpy array (or a scipy sparse matrix from a transform)


@dataclass(frozen=True)
class Fold:
    """One train/score pair of the evaluation, features already computed."""

    X_train: Matrix
    y_train: np.ndarray
    X_score: Matrix
    y_score: np.ndarray


@dataclass(frozen=True)
class Evaluation:
    """How trials are scored: ``cv`` folds of train, or train -> val (one fold)."""

    mode: Literal["cv", "val"]
    folds: list[Fold]
    task: estimators.Task
    classes: list[Any]  # the target's classes (classification), in encoded order


@dataclass
class TuneResult:
    study: optuna.Study
    metric: Objective
    best_params: dict[str, Any]
    trials: pl.DataFrame


# ----------------------------------------------------------------------------- the search
def tune(
    params: TuneParams,
    *,
    train: pl.DataFrame,
    val: pl.DataFrame | None,
    transform: Path | None,
    study_name: str,
    ctx: StageContext,
) -> TuneResult:
    """Run the trials ``study_name`` still needs and return the study's best params."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    stage = ctx.stage
    evaluation = prepare(params, train=train, val=val, transform=transform, stage=stage, ctx=ctx)
    task = evaluation.task
    metric = _objective(params, task, len(evaluation.classes), stage)
    _check_search_names(params, task, stage)

    target = storage_target(params, ctx, study_name)
    shown = target.shown
    study = _open_study(target.open(stage), study_name, metric, stage, shown)
    existing, _ = _search(
        study, params, evaluation, metric, target, ctx, n_jobs=params.n_jobs, worker=False
    )

    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if not complete:
        raise _no_complete_trial(trials, stage, study_name)
    best = study.best_trial
    counts = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    ctx.metric(
        study=study_name,
        trials_run=len(trials) - len(existing),
        trials_total=len(trials),
        complete=counts["complete"],
        pruned=counts["pruned"],
        failed=counts["fail"],
        best_value=best.value,
        best_trial=best.number,
    )
    best_params = {
        "params": {**params.params, **best.params},
        "searched": sorted(params.search_space),
        "model": params.model,
        "task": task,
        "metric": metric.name,
        "direction": metric.direction,
        "value": best.value,
        "trial": best.number,
        "study": study_name,
        "storage": shown,
        "n_trials_total": len(trials),
        "n_complete": counts["complete"],
        "n_pruned": counts["pruned"],
        "n_failed": counts["fail"],
        "cv": params.cv,
    }
    return TuneResult(
        study=study,
        metric=metric,
        best_params=best_params,
        trials=trials_table(trials, list(params.search_space)),
    )


def join(
    params: TuneParams,
    *,
    train: pl.DataFrame,
    val: pl.DataFrame | None,
    transform: Path | None,
    study_name: str,
    ctx: StageContext,
    n_jobs: int | None = None,
) -> dict[str, Any]:
    """Run trials of a shared study (PostgreSQL) until it has ``n_trials``; publish nothing.

    What ``ductwork tune-worker`` runs on another machine next to the stage: the same folds,
    objective and study name, trials claimed from the same budget in the database, so the
    trials run by all the processes together are exactly what the stage asks for.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    stage = ctx.stage
    target = storage_target(params, ctx, study_name)
    if not target.shared:
        msg = (
            f"stage '{stage}': a tune worker joins a study in PostgreSQL, and the storage is "
            f"{target.shown}"
        )
        hint = (
            "Set storage: postgresql://user@host/db on the stage (workers on one machine need "
            "nothing: use n_jobs)."
        )
        raise UsageError(msg, hint=hint)
    evaluation = prepare(params, train=train, val=val, transform=transform, stage=stage, ctx=ctx)
    metric = _objective(params, evaluation.task, len(evaluation.classes), stage)
    _check_search_names(params, evaluation.task, stage)
    study = _open_study(target.open(stage), study_name, metric, stage, target.shown)
    existing, ran = _search(
        study, params, evaluation, metric, target, ctx, n_jobs=n_jobs or params.n_jobs, worker=True
    )
    trials = study.get_trials(deepcopy=False)
    counts = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    return {
        "study": study_name,
        "storage": target.shown,
        "n_trials": params.n_trials,
        "trials_run": ran,  # by this worker
        "trials_added": len(trials) - len(existing),  # by every worker while this one ran
        "trials_total": len(trials),
        "finished": counts["complete"] + counts["pruned"],
        **counts,
    }


def _search(
    study: optuna.Study,
    params: TuneParams,
    evaluation: Evaluation,
    metric: Objective,
    target: StorageTarget,
    ctx: StageContext,
    *,
    n_jobs: int,
    worker: bool,
) -> tuple[list[FrozenTrial], int]:
    """Run the trials the study still needs; return the trials it had before and how many
    trials this process (with its threads and worker processes) ran."""
    study_name = study.study_name
    budget: _Budget | None = None
    if target.shared:
        budget = _Budget(target.url or "", study_name)
        existing, done, remaining = budget.start(study, params.n_trials, keep=worker)
    else:
        existing = study.get_trials(deepcopy=False)
        done = sum(t.state in FINISHED for t in existing)
        remaining = max(0, params.n_trials - done)
    # a resumed study continues the sampler's stream instead of replaying its first draws;
    # a worker on another machine draws its own stream
    salt = os.getpid() if worker else 0
    study.sampler = optuna.samplers.TPESampler(seed=(params.seed + len(existing) + salt) % 2**32)
    study.pruner = _pruner(params, evaluation)
    if done or worker:
        ctx.log(
            f"study '{study_name}' has {done} finished trials; {remaining} more to run"
            + (" (shared with other workers)" if budget is not None else "")
        )
    if params.pruner == "median" and evaluation.mode == "val" and not worker:
        ctx.log("pruner: median needs cv folds to compare; scoring on val prunes nothing")

    ctx.progress(min(done, params.n_trials), params.n_trials, "trials")
    try:
        ran = _run_search(
            study,
            params,
            evaluation,
            metric,
            target,
            ctx,
            n_jobs,
            budget,
            done,
            remaining,
            existing,
        )
    finally:
        if budget is not None:
            budget.close()
    return existing, ran


def _run_search(
    study: optuna.Study,
    params: TuneParams,
    evaluation: Evaluation,
    metric: Objective,
    target: StorageTarget,
    ctx: StageContext,
    n_jobs: int,
    budget: _Budget | None,
    done: int,
    remaining: int,
    existing: list[FrozenTrial],
) -> int:
    """Run the trials in processes, claimed threads (a shared study) or threads."""
    running = budget is not None and budget.in_flight(study) > 0
    processes = n_jobs > 1 and params.parallel == "process" and remaining > 1
    if processes and _daemonic():
        ctx.log("parallel: process is not possible in a daemonic process; using threads")
        processes = False
    ran = 0
    if processes:
        ran = _optimize_processes(
            study,
            params,
            evaluation,
            metric,
            remaining,
            done,
            len(existing),
            target,
            ctx,
            n_jobs=n_jobs,
            budget=budget,
        )
    elif budget is not None and (remaining or running):
        # this process claims trials from the database (and waits for other workers' last
        # trials, to retry one whose worker dies)
        threads = min(n_jobs, max(1, remaining))
        ran = _optimize_claimed_threads(
            study, params, evaluation, metric, done, len(existing), target, ctx, threads, budget
        )
    elif remaining:
        _optimize_threads(
            study, params, evaluation, metric, remaining, done, len(existing), ctx, n_jobs
        )
        ran = remaining
    return ran


def _pruner(params: TuneParams, evaluation: Evaluation) -> optuna.pruners.BasePruner:
    if params.pruner == "median" and evaluation.mode == "cv":
        return optuna.pruners.MedianPruner()
    return optuna.pruners.NopPruner()


def _optimize_threads(
    study: optuna.Study,
    params: TuneParams,
    evaluation: Evaluation,
    metric: Objective,
    remaining: int,
    done: int,
    first: int,
    ctx: StageContext,
    n_jobs: int,
) -> None:
    """Run the trials in this process: one at a time, or ``n_jobs`` threads."""
    lock = threading.Lock()
    finished = [done]

    def report(_: optuna.Study, trial: FrozenTrial) -> None:
        if trial.state in FINISHED:
            with lock:
                finished[0] += 1
                ctx.progress(min(finished[0], params.n_trials), params.n_trials, "trials")

    n_jobs = min(n_jobs, remaining)
    threads = max(1, cpu_count() // n_jobs) if n_jobs > 1 else None
    objective_fn = make_objective(params, evaluation, metric, threads=threads)
    # failed trials are logged here, one line each, instead of by Optuna with a traceback
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            study.optimize(
                objective_fn,
                n_trials=remaining,
                timeout=params.timeout,
                n_jobs=n_jobs,
                catch=(ValueError,),
                callbacks=[report],
            )
    finally:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        _log_failures(ctx, study, first=first)
    for line in _warning_lines(caught):
        ctx.log(line)


@dataclass(frozen=True)
class _Job:
    """What a worker process needs to run its share of the trials."""

    params: TuneParams
    study_name: str
    storage: StorageTarget
    evaluation: str  # the directory save_evaluation wrote
    metric: Objective
    seed: int
    threads: int
    trials: int  # trials to run, across all workers
    deadline: float | None  # time.time() after which no trial starts
    parent: int  # the stage's process: a worker whose parent is gone starts no trial


class _Claims:
    """Trials handed out across processes: one lock, counters in shared memory.

    With a ``budget`` (a study shared through PostgreSQL) the trials are counted in the
    database instead, under a lock there, so processes on other machines take part.
    """

    def __init__(self, mpc: Any, budget: _Budget | None = None) -> None:
        self.lock = mpc.Lock()
        self.claimed = mpc.RawValue("i", 0)  # trials started
        self.running = mpc.RawValue("i", 0)  # trials started and not yet told to the storage
        self.finished = mpc.RawValue("i", 0)  # complete or pruned
        self.stop = mpc.RawValue("i", 0)  # set when a worker failed: start no more
        self.budget = budget

    def take(self, job: _Job, study: optuna.Study) -> bool:
        """Claim the next trial: from the shared budget in the database, or :meth:`claim`."""
        if self.budget is not None:
            return self._claim_shared(job, study, self.budget)
        return self.claim(job)

    def claim(self, job: _Job) -> bool:
        """Take the next trial, unless all are taken, the time is up or the run stopped."""
        with self.lock:
            late = job.deadline is not None and time.time() >= job.deadline
            # like Optuna's timeout, the first trial always starts
            if self.stop.value or self.claimed.value >= job.trials:
                return False
            if (late and self.claimed.value > 0) or not _alive(job.parent):
                return False
            self.claimed.value += 1
            self.running.value += 1
            return True

    def _claim_shared(self, job: _Job, study: optuna.Study, budget: _Budget) -> bool:
        while True:
            with self.lock:
                late = job.deadline is not None and time.time() >= job.deadline
                if self.stop.value or not _alive(job.parent):
                    return False
                if late and self.claimed.value > 0:
                    return False
            verdict = budget.claim(study)
            if verdict == "run":  # the database lock is held until the trial exists
                with self.lock:
                    self.claimed.value += 1
                    self.running.value += 1
                return True
            if verdict == "done":
                return False
            time.sleep(budget.poll)  # others' trials are running: one may need a retry

    def done(self, trial: FrozenTrial | None) -> None:
        if trial is None and self.budget is not None:
            self.budget.release()  # the trial was not created (an error before it)
        with self.lock:
            if trial is None:
                self.running.value -= 1
            elif trial.state in FINISHED:
                self.finished.value += 1

    def wrap(self, fn: Callable[[optuna.Trial], float]) -> Callable[[optuna.Trial], float]:
        """The objective, releasing the budget's database lock once Optuna created the trial."""
        budget = self.budget
        if budget is None:
            return fn
        import socket

        who = f"{socket.gethostname()}:{os.getpid()}"

        def run(trial: optuna.Trial) -> float:
            budget.release()
            trial.set_user_attr(WORKER_ATTR, who)  # which machine and process ran it
            return fn(trial)

        return run


def _run_claimed(
    study: optuna.Study, objective_fn: Callable[[optuna.Trial], float], job: _Job, claims: _Claims
) -> None:
    """Run trials while there are some to claim (in the stage's process or a worker)."""
    run = claims.wrap(objective_fn)
    while claims.take(job, study):
        try:
            study.optimize(
                run,
                n_trials=1,
                catch=(ValueError,),
                callbacks=[lambda _, trial: claims.done(trial)],
            )
        finally:
            claims.done(None)


BUDGET_ATTR = "ductwork_trial_budget"  # study user attr: {n_trials, trials}
WORKER_ATTR = "ductwork_worker"  # trial user attr: host:pid of the process that ran it


class _Budget:
    """The trials of a study shared through PostgreSQL, counted in the database.

    A trial is claimed under a PostgreSQL advisory lock on the study (on a connection of the
    claiming thread, held until Optuna created the trial), so processes on any machine share
    one count. The budget is the number of trials the study may have: ``n_trials`` plus the
    failed trials it had when the stage started (a session's own failures are not replaced,
    as without a database). A trial failed by its heartbeat and retried does not count: its
    retry (a WAITING trial, taken first by whoever claims next) does. A process with nothing to
    claim waits while other trials run: if one's worker dies, its trial goes stale after the
    grace period, and the next claim fails it and runs the retry.
    """

    poll = 0.5  # seconds between looks at a study whose last trials run elsewhere

    def __init__(self, url: str, study: str) -> None:
        from ductwork.core.locks import advisory_key

        self.url = url
        self.study = study
        self.key = advisory_key(f"ductwork:tune:{study}")
        self._engine: Any = None
        self._local = threading.local()

    def __getstate__(self) -> dict[str, Any]:  # to worker processes: no engine, no lock
        return {"url": self.url, "study": self.study, "key": self.key}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._engine = None
        self._local = threading.local()

    def acquire(self) -> None:
        import sqlalchemy

        if self._engine is None:
            self._engine = sqlalchemy.create_engine(self.url, pool_pre_ping=True)
        try:
            conn = self._engine.connect()
        except sqlalchemy.exc.SQLAlchemyError as exc:  # the server went away
            reason = _first_line(exc)
            secret = _password(self.url)
            if secret:
                reason = reason.replace(secret, "***")
            msg = f"study '{self.study}': cannot take the trial lock in PostgreSQL: {reason}"
            hint = "Check the server, then run again: the study resumes."
            raise SourceError(msg, hint=hint) from None
        try:
            conn.execute(sqlalchemy.text("select pg_advisory_lock(:k)"), {"k": self.key})
            conn.commit()
        except BaseException:
            conn.close()
            raise
        self._local.conn = conn

    def close(self) -> None:
        """Close this process's connections (the lock's; the study's are Optuna's)."""
        self.release()
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def release(self) -> None:
        import sqlalchemy

        conn = getattr(self._local, "conn", None)
        if conn is None:
            return
        self._local.conn = None
        try:
            conn.execute(sqlalchemy.text("select pg_advisory_unlock(:k)"), {"k": self.key})
            conn.commit()
        finally:
            conn.close()

    def start(
        self, study: optuna.Study, n_trials: int, *, keep: bool
    ) -> tuple[list[FrozenTrial], int, int]:
        """Set the budget for ``n_trials`` (a worker keeps one the stage set for the same
        ``n_trials``); return the trials so far, the finished ones and how many more to run."""
        self.acquire()
        try:
            _fail_stale(study)
            trials = study.get_trials(deepcopy=False)
            finished = sum(t.state in FINISHED for t in trials)
            flying = sum(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials)
            current = study.user_attrs.get(BUDGET_ATTR)
            if not (keep and isinstance(current, dict) and current.get("n_trials") == n_trials):
                failed = _slots(trials) - finished - flying
                study.set_user_attr(
                    BUDGET_ATTR, {"n_trials": n_trials, "trials": n_trials + failed}
                )
        finally:
            self.release()
        return trials, finished, max(0, n_trials - finished - flying)

    def claim(self, study: optuna.Study) -> Literal["run", "wait", "done"]:
        """``run`` (the lock is held: release it once the trial exists), ``wait`` or ``done``."""
        self.acquire()
        try:
            _fail_stale(study)
            trials = study.get_trials(deepcopy=False)
            budget = study.user_attrs.get(BUDGET_ATTR) or {}
            waiting = any(t.state == TrialState.WAITING for t in trials)
            if waiting or _slots(trials) < int(budget.get("trials", 0)):
                return "run"
            running = any(t.state == TrialState.RUNNING for t in trials)
        except BaseException:
            self.release()
            raise
        self.release()
        return "wait" if running else "done"

    def in_flight(self, study: optuna.Study) -> int:
        states = (TrialState.RUNNING, TrialState.WAITING)
        return len(study.get_trials(deepcopy=False, states=states))


def _slots(trials: list[FrozenTrial]) -> int:
    """Trials that count against the budget: all but those failed by heartbeat and retried."""
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", ())}
    return len(trials) - len(retried)


def _fail_stale(study: optuna.Study) -> None:
    """Fail the running trials whose heartbeat stopped (their retries become WAITING)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def _optimize_claimed_threads(
    study: optuna.Study,
    params: TuneParams,
    evaluation: Evaluation,
    metric: Objective,
    done: int,
    first: int,
    target: StorageTarget,
    ctx: StageContext,
    n_jobs: int,
    budget: _Budget,
) -> int:
    """Claim trials from the shared study's budget in this process (``n_jobs`` threads);
    return how many ran."""
    import multiprocessing as mp

    claims = _Claims(mp.get_context("spawn"), budget)
    deadline = time.time() + params.timeout if params.timeout is not None else None
    job = _Job(
        params=params,
        study_name=study.study_name,
        storage=target,
        evaluation="",
        metric=metric,
        seed=params.seed,
        threads=max(1, cpu_count() // n_jobs),
        trials=params.n_trials,
        deadline=deadline,
        parent=os.getpid(),
    )
    threads = max(1, cpu_count() // n_jobs) if n_jobs > 1 else None
    objective_fn = make_objective(params, evaluation, metric, threads=threads)
    progress_lock = threading.Lock()

    def loop() -> None:
        run = claims.wrap(objective_fn)
        try:
            while claims.take(job, study):
                try:
                    study.optimize(run, n_trials=1, catch=(ValueError,), callbacks=[report])
                finally:
                    claims.done(None)
        except BaseException:
            claims.stop.value = 1  # the other threads start no more trials
            raise

    def report(_: optuna.Study, trial: FrozenTrial) -> None:
        claims.done(trial)
        with progress_lock:
            ctx.progress(
                min(done + claims.finished.value, params.n_trials), params.n_trials, "trials"
            )

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if n_jobs == 1:
                loop()
            else:
                from concurrent.futures import ThreadPoolExecutor

                with ThreadPoolExecutor(n_jobs, thread_name_prefix="ductwork-tune") as pool:
                    for future in [pool.submit(loop) for _ in range(n_jobs)]:
                        future.result()
    finally:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        _log_failures(ctx, study, first=first)
    for line in _warning_lines(caught):
        ctx.log(line)
    return int(claims.claimed.value)


def _optimize_processes(
    study: optuna.Study,
    params: TuneParams,
    evaluation: Evaluation,
    metric: Objective,
    remaining: int,
    done: int,
    first: int,
    target: StorageTarget,
    ctx: StageContext,
    *,
    n_jobs: int,
    budget: _Budget | None = None,
) -> int:
    """Run the trials in this process and ``n_jobs - 1`` worker processes sharing the study.

    Scikit-learn's per-tree and per-fold Python work holds the GIL, so threads overlap only the
    parts in native code; processes run whole trials at once. The workers are spawned at the
    start and this process runs trials while they import scikit-learn, so their start-up is
    not waited for. Every process claims trials from shared counters, so exactly
    ``remaining`` trials run. The folds are saved once as ``.npy`` files that the workers map
    (copy on write) instead of each receiving a copy.
    """
    import multiprocessing as mp
    import queue
    import shutil
    from multiprocessing.connection import wait

    from threadpoolctl import threadpool_limits

    n_procs = min(n_jobs, remaining)
    directory = ctx.tmp_dir / "tune-folds"
    save_evaluation(evaluation, directory)
    mpc: Any = mp.get_context("spawn")
    claims = _Claims(mpc, budget)
    messages: Any = mpc.Queue()
    deadline = time.time() + params.timeout if params.timeout is not None else None
    threads = max(1, cpu_count() // n_procs)

    def job(i: int) -> _Job:
        return _Job(
            params=params,
            study_name=study.study_name,
            storage=target,
            evaluation=str(directory),
            metric=metric,
            seed=(params.seed + first + 7919 * i) % 2**32,
            threads=threads,
            trials=remaining,
            deadline=deadline,
            parent=os.getpid(),
        )

    procs = [
        mpc.Process(
            target=_worker,
            args=(job(i), claims, messages),
            name=f"ductwork-tune-{i}",
            daemon=True,
        )
        for i in range(1, n_procs)
    ]
    received: list[tuple[str, Any]] = []

    def drain() -> None:
        while True:
            try:
                received.append(messages.get_nowait())
            except queue.Empty:
                return

    def report(_: optuna.Study, trial: FrozenTrial) -> None:
        drain()
        if any(kind == "error" for kind, _ in received):
            claims.stop.value = 1
        ctx.progress(min(done + claims.finished.value, params.n_trials), params.n_trials, "trials")

    objective_fn = make_objective(params, evaluation, metric, threads=threads)
    own = job(0)
    started: list[Any] = []
    stopped: list[Any] = []
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        for proc in procs:
            proc.start()  # spawn: returns at once; the worker imports while we run trials
            started.append(proc)
        ctx.log(f"running {remaining} trials in this process and {len(procs)} worker processes")
        with threadpool_limits(threads), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run = claims.wrap(objective_fn)
            while claims.take(own, study):
                try:
                    study.optimize(
                        run,
                        n_trials=1,
                        catch=(ValueError,),
                        callbacks=[lambda s, t: claims.done(t), report],
                    )
                finally:
                    claims.done(None)
        # every trial is claimed: wait for the workers' last ones
        reported = -1
        while claims.running.value > 0 and any(p.is_alive() for p in started):
            wait([p.sentinel for p in started], timeout=0.25)
            drain()
            if claims.finished.value != reported:
                reported = claims.finished.value
                ctx.progress(min(done + reported, params.n_trials), params.n_trials, "trials")
        # the workers still alive have no trial: still starting, or about to see there is none
        stopped = [proc for proc in started if proc.is_alive()]
        for proc in stopped:
            proc.terminate()
        for proc in started:
            proc.join()
        drain()
    except BaseException:
        for proc in started:
            if proc.is_alive():
                proc.terminate()
        for proc in started:
            proc.join()
        raise
    finally:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        messages.close()
        shutil.rmtree(directory, ignore_errors=True)
        _log_failures(ctx, study, first=first)
    ctx.progress(min(done + claims.finished.value, params.n_trials), params.n_trials, "trials")
    lines = _warning_lines(caught)
    lines += [line for kind, value in received if kind == "warnings" for line in value]
    for line in dict.fromkeys(lines):
        ctx.log(line)
    errors = [value for kind, value in received if kind == "error"]
    if errors:
        raise _worker_error(errors[0], ctx.stage)
    for proc in started:
        if proc.exitcode != 0 and proc not in stopped:
            ctx.log(
                f"a tuning worker process exited with code {proc.exitcode} without running "
                "trials (a script that runs ductwork needs `if __name__ == '__main__':`, as "
                "worker processes import the main module); the trials ran in this process"
            )
    return int(claims.claimed.value)


def _worker(job: _Job, claims: _Claims, messages: Any) -> None:
    """A worker process: claim trials until none is left."""
    try:
        from threadpoolctl import threadpool_limits

        optuna.logging.set_verbosity(optuna.logging.ERROR)
        evaluation = load_evaluation(Path(job.evaluation))
        study = optuna.load_study(
            study_name=job.study_name,
            storage=job.storage.open(),
            sampler=optuna.samplers.TPESampler(seed=job.seed),
            pruner=_pruner(job.params, evaluation),
        )
        objective_fn = make_objective(job.params, evaluation, job.metric, threads=job.threads)
        with threadpool_limits(job.threads), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _run_claimed(study, objective_fn, job, claims)
        messages.put(("warnings", _warning_lines(caught)))
    except BaseException as exc:
        hint = exc.hint if isinstance(exc, DuctworkError) else None
        message = exc.message if isinstance(exc, DuctworkError) else _first_line(exc)
        messages.put(("error", (type(exc).__name__, message, hint)))
        raise SystemExit(1) from None


def _daemonic() -> bool:
    """A daemonic process (a multiprocessing.Pool worker) may not start processes."""
    import multiprocessing as mp

    return bool(mp.current_process().daemon)


def _alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would send CTRL_C_EVENT there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _worker_error(error: tuple[str, str, str | None], stage: str) -> BaseException:
    name, message, hint = error
    import ductwork.errors as errors

    cls = getattr(errors, name, None)
    if isinstance(cls, type) and issubclass(cls, DuctworkError) and cls is not errors.StageFailed:
        try:
            return cls(message, hint=hint)
        except TypeError:
            pass
    if name == "KeyboardInterrupt":
        return KeyboardInterrupt()
    return RuntimeError(f"stage '{stage}': a tuning worker failed: {name}: {message}")


def save_evaluation(evaluation: Evaluation, directory: Path) -> None:
    """Write the folds for worker processes: dense arrays as ``.npy``, anything else pickled."""
    directory.mkdir(parents=True, exist_ok=True)
    for i, fold in enumerate(evaluation.folds):
        for name in _FOLD_PARTS:
            value = getattr(fold, name)
            if isinstance(value, np.ndarray) and value.dtype != object:
                np.save(directory / f"{i}.{name}.npy", value, allow_pickle=False)
            else:
                (directory / f"{i}.{name}.pkl").write_bytes(pickle.dumps(value, protocol=5))
    meta = (evaluation.mode, evaluation.task, evaluation.classes, len(evaluation.folds))
    (directory / "evaluation.pkl").write_bytes(pickle.dumps(meta, protocol=5))


def load_evaluation(directory: Path) -> Evaluation:
    """The folds :func:`save_evaluation` wrote, dense arrays memory-mapped (copy on write)."""
    mode, task, classes, n = pickle.loads((directory / "evaluation.pkl").read_bytes())
    folds = []
    for i in range(n):
        parts: dict[str, Any] = {}
        for name in _FOLD_PARTS:
            npy = directory / f"{i}.{name}.npy"
            if npy.exists():
                parts[name] = np.load(npy, mmap_mode="c", allow_pickle=False)
            else:
                parts[name] = pickle.loads((directory / f"{i}.{name}.pkl").read_bytes())
        folds.append(Fold(**parts))
    return Evaluation(mode, folds, task, classes)


_FOLD_PARTS = ("X_train", "y_train", "X_score", "y_score")


def make_objective(
    params: TuneParams, evaluation: Evaluation, metric: Objective, *, threads: int | None = None
) -> Callable[[optuna.Trial], float]:
    """The Optuna objective: the metric (in its own sign) averaged over the folds.

    With ``threads`` (parallel trials: ``cores // n_jobs``), OpenMP (HistGradientBoosting,
    LightGBM) is limited to that many threads in the trial's thread, and an estimator
    ``n_jobs`` the user did not set is set to it (XGBoost would take every core otherwise).
    """
    from sklearn.base import clone
    from threadpoolctl import threadpool_limits

    space = params.search_space
    template = estimators.build(
        params.model,
        {**params.params, **{n: s.example() for n, s in space.items()}},
        evaluation.task,
        seed=params.seed,
    )
    if (
        threads is not None
        and "n_jobs" in template.get_params(deep=False)
        and "n_jobs" not in params.params
        and "n_jobs" not in space
    ):
        template.set_params(n_jobs=threads)
    prune = params.pruner == "median" and evaluation.mode == "cv"

    def run_trial(trial: optuna.Trial) -> float:
        values = {name: suggest(trial, name, spec) for name, spec in space.items()}
        model = clone(template).set_params(**values)
        scores: list[float] = []
        for step, fold in enumerate(evaluation.folds):
            try:
                with (
                    threadpool_limits(threads, user_api="openmp")
                    if threads is not None
                    else contextlib.nullcontext()
                ):
                    fitted = clone(model).fit(fold.X_train, fold.y_train)
                    scores.append(score(metric, fitted, fold.X_score, fold.y_score))
            except (ValueError, AttributeError) as exc:  # a bad combination of params, or
                # a metric the model cannot give (log_loss without predict_proba): a FAIL trial
                trial.set_user_attr("error", f"{type(exc).__name__}: {_first_line(exc)}")
                raise ValueError(str(exc)) from None
            if prune:
                trial.report(float(np.mean(scores)), step)
                if trial.should_prune():
                    raise optuna.TrialPruned
        return float(np.mean(scores))

    return run_trial


def cpu_count() -> int:
    """The cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def suggest(trial: optuna.Trial, name: str, spec: SearchParam) -> Any:
    """Draw one value of ``spec`` through Optuna's suggest API."""
    if spec.type == "categorical":
        return trial.suggest_categorical(name, list(spec.choices or []))
    assert spec.low is not None and spec.high is not None
    if spec.type == "int":
        return trial.suggest_int(
            name, int(spec.low), int(spec.high), step=int(spec.step or 1), log=spec.log
        )
    return trial.suggest_float(
        name, float(spec.low), float(spec.high), step=spec.step, log=spec.log
    )


# ----------------------------------------------------------------------------- data
def prepare(
    params: TuneParams,
    *,
    train: pl.DataFrame,
    val: pl.DataFrame | None,
    transform: Path | None,
    stage: str,
    ctx: StageContext | None = None,
) -> Evaluation:
    """The folds every trial is scored on, features computed once per fold."""
    from ductwork.ml.features import split_xy

    if train.height == 0:
        msg = f"stage '{stage}': the train input has no rows; there is nothing to tune on"
        raise DataError(msg)
    X, y_series = split_xy(train, params.target, stage)
    assert y_series is not None
    task = params.task or _infer_task(y_series, stage)
    y_raw = y_series.to_numpy()
    y, classes = _encode(y_series, task, stage)

    fitted: Any = None
    if transform is not None:
        from ductwork.ml.features import load_transform

        fitted, _ = load_transform(transform)
    else:
        _require_numeric(X, stage)

    if params.cv:
        if val is not None and val.height and ctx is not None:
            ctx.log(f"cv: {params.cv} folds of train; the val input is not used")
        folds = []
        for train_idx, score_idx in _splitter(params, task, y, stage).split(np.zeros(len(y)), y):
            folds.append(
                _fold(
                    fitted,
                    X[train_idx],
                    y_raw[train_idx],
                    y[train_idx],
                    X[score_idx],
                    y[score_idx],
                    stage,
                    refit=True,
                )
            )
        return Evaluation("cv", folds, task, classes)

    if val is None or val.height == 0:
        msg = (
            f"stage '{stage}': nothing to score trials on: cv is 0 and the val input is "
            f"{'missing' if val is None else 'empty'}"
        )
        hint = (
            "Set cv: 5 (cross-validation on train), or give a non-empty val split: "
            "inputs: {train: split.train, val: split.val}"
        )
        raise DataError(msg, hint=hint)
    try:
        X_val, y_val_series = split_xy(val, params.target, stage)
    except DataError as exc:
        msg = exc.message.replace(f"stage '{stage}':", f"stage '{stage}' (val input):", 1)
        raise DataError(msg, hint=exc.hint) from None
    assert y_val_series is not None
    if transform is None:
        _require_numeric(X_val, stage)
    missing = [c for c in X.columns if c not in X_val.columns]
    if missing:
        msg = f"stage '{stage}': the val input has no column '{missing[0]}' (train has it)"
        raise DataError(msg)
    y_val = _encode_like(y_val_series, task, classes, stage)
    fold = _fold(fitted, X, y_raw, y, X_val.select(X.columns), y_val, stage, refit=False)
    return Evaluation("val", [fold], task, classes)


def _fold(
    fitted: Any,
    X_train: pl.DataFrame,
    y_train_raw: np.ndarray,
    y_train: np.ndarray,
    X_score: pl.DataFrame,
    y_score: np.ndarray,
    stage: str,
    *,
    refit: bool,
) -> Fold:
    """Features for one fold: with ``refit`` the transform is refitted on the fold's train rows
    (cross-validation: no leakage into the fold's score), else used as fitted (val split: the
    features train will see)."""
    if fitted is None:
        return Fold(_matrix(X_train), y_train, _matrix(X_score), y_score)
    try:
        if refit:
            from sklearn.base import clone

            transform = clone(fitted)
            # fit_transform, not fit().transform(): target encoding cross-fits the train rows
            A = transform.fit_transform(X_train, y_train_raw)
        else:
            transform = fitted
            A = transform.transform(X_train)
        B = transform.transform(X_score)
    except DataError as exc:
        msg = f"stage '{stage}': the feature transform failed: {exc.message}"
        raise DataError(msg, hint=exc.hint) from None
    return Fold(_matrix(A), y_train, _matrix(B), y_score)


def _matrix(X: Any) -> Matrix:
    if isinstance(X, pl.DataFrame):
        return X.select(pl.all().cast(pl.Float64)).to_numpy()
    if hasattr(X, "to_numpy"):
        return X.to_numpy(dtype=np.float64)
    if hasattr(X, "tocsr"):  # scipy sparse
        return X.tocsr()
    return np.asarray(X, dtype=np.float64)


def _require_numeric(X: pl.DataFrame, stage: str) -> None:
    for name, dtype in X.schema.items():
        if not (dtype.is_numeric() or dtype == pl.Boolean):
            msg = (
                f"stage '{stage}': column '{name}' is {dtype}, not a number; without a "
                "transform input every column but the target is a model feature"
            )
            hint = (
                "Add a features stage that encodes it (or drops it) and pass its transform: "
                "inputs: {train: split.train, val: split.val, transform: features.transform}"
            )
            raise DataError(msg, hint=hint)


def _infer_task(y: pl.Series, stage: str) -> estimators.Task:
    from ductwork.ml.features import infer_task

    return infer_task(y, stage)


def _encode(y: pl.Series, task: str, stage: str) -> tuple[np.ndarray, list[Any]]:
    """Classes as 0..n-1 in sorted order (so binary metrics score the last class)."""
    if task == "regression":
        if not (y.dtype.is_numeric() or y.dtype == pl.Boolean):
            msg = f"stage '{stage}': task is regression, but target '{y.name}' is {y.dtype}"
            raise DataError(msg)
        return y.cast(pl.Float64).to_numpy(), []
    classes = y.unique().sort().to_list()
    index = {c: i for i, c in enumerate(classes)}
    return np.asarray([index[v] for v in y.to_list()], dtype=np.int64), classes


def _encode_like(y: pl.Series, task: str, classes: list[Any], stage: str) -> np.ndarray:
    if task == "regression":
        return _encode(y, task, stage)[0]
    index = {c: i for i, c in enumerate(classes)}
    unseen = [v for v in y.unique().to_list() if v not in index]
    if unseen:
        msg = (
            f"stage '{stage}': the val input has target values that train does not: "
            f"{', '.join(repr(v) for v in unseen[:5])}"
        )
        raise DataError(msg, hint="Use a stratified split so every class is in train.")
    return np.asarray([index[v] for v in y.to_list()], dtype=np.int64)


def _splitter(params: TuneParams, task: str, y: np.ndarray, stage: str) -> Any:
    from sklearn.model_selection import KFold, StratifiedKFold

    if task == "regression":
        if len(y) < params.cv:
            msg = f"stage '{stage}': cv: {params.cv} needs at least {params.cv} train rows"
            raise DataError(msg)
        return KFold(n_splits=params.cv, shuffle=True, random_state=params.seed)
    counts = np.bincount(y)
    if counts.min() < params.cv:
        msg = (
            f"stage '{stage}': cv: {params.cv} needs at least {params.cv} train rows of every "
            f"class; the smallest class has {int(counts.min())}"
        )
        raise DataError(msg, hint="Use fewer folds, or merge rare classes upstream.")
    return StratifiedKFold(n_splits=params.cv, shuffle=True, random_state=params.seed)


# ----------------------------------------------------------------------------- checks
def _objective(params: TuneParams, task: str, n_classes: int, stage: str) -> Objective:
    if params.metric is None:
        return default_objective(task, n_classes)
    try:
        obj = objective(params.metric, task)
    except UsageError as exc:
        msg = f"stage '{stage}': {exc.message}"
        raise UsageError(msg, hint=exc.hint) from None
    if task == "classification" and n_classes > 2 and obj.scorer in _BINARY_SCORERS:
        msg = f"stage '{stage}': metric '{obj.name}' is for two classes; the target has {n_classes}"
        raise UsageError(msg, hint="Use roc_auc_ovr, f1_macro, balanced_accuracy or log_loss.")
    return obj


def _check_search_names(params: TuneParams, task: str, stage: str) -> None:
    """Every searched name is a param of the estimator (with a "did you mean")."""
    try:
        estimators.build(
            params.model,
            {**params.params, **{n: s.example() for n, s in params.search_space.items()}},
            task,  # type: ignore[arg-type]
            seed=params.seed,
        )
    except UsageError as exc:
        msg = f"stage '{stage}': {exc.message}"
        raise UsageError(msg, hint=exc.hint) from None


def _first_line(exc: object) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _log_failures(ctx: StageContext, study: optuna.Study, *, first: int) -> None:
    failed = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
        if t.number >= first and "error" in t.user_attrs
    ]
    for t in failed[:_MAX_LOGGED_WARNINGS]:
        ctx.log(f"trial {t.number} failed: {t.user_attrs['error']} (params {t.params})")
    if len(failed) > _MAX_LOGGED_WARNINGS:
        ctx.log(f"... and {len(failed) - _MAX_LOGGED_WARNINGS} more failed trials")


def _no_complete_trial(trials: list[FrozenTrial], stage: str, study: str) -> DuctworkError:
    failed = [t for t in trials if t.state == TrialState.FAIL]
    reason = next((t.user_attrs["error"] for t in failed if "error" in t.user_attrs), None)
    if failed and reason:
        msg = (
            f"stage '{stage}': no trial of study '{study}' completed; {len(failed)} failed, "
            f"the first with {reason}"
        )
        return DataError(msg, hint="Check the search space and the fixed params.")
    msg = f"stage '{stage}': no trial of study '{study}' completed ({len(trials)} trials)"
    return DataError(msg, hint="Raise n_trials or timeout, or set pruner: none.")


def _warning_lines(caught: list[warnings.WarningMessage]) -> list[str]:
    """Distinct warnings, one line each, at most _MAX_LOGGED_WARNINGS (and a line saying so)."""
    seen: dict[str, None] = {}
    for w in caught:
        seen[f"{w.category.__name__}: {_first_line(w.message)}"] = None
    lines = list(seen)
    if len(lines) > _MAX_LOGGED_WARNINGS:
        more = len(lines) - _MAX_LOGGED_WARNINGS
        lines = [*lines[:_MAX_LOGGED_WARNINGS], f"... and {more} more distinct warnings"]
    return lines


# ----------------------------------------------------------------------------- storage
@dataclass(frozen=True)
class StorageTarget:
    """Where a study lives, in a form worker processes can reopen: a journal file or a URL."""

    journal: str | None = None  # the journal file's path
    url: str | None = None  # a database URL (with its secrets: never show it)
    shown: str = ""  # how to show it: the path relative to the store, or the redacted URL
    heartbeat_interval: int | None = None  # database storage: running trials' heartbeats
    grace_period: int | None = None  # without a heartbeat this long a running trial is failed
    max_retry: int = 1  # re-runs of a trial failed by its heartbeat

    @property
    def shared(self) -> bool:
        """A PostgreSQL study: trials are counted in the database, workers may join it."""
        return self.url is not None and _scheme(self.url) in ("postgresql", "postgres")

    def open(self, stage: str = "") -> optuna.storages.BaseStorage:
        if self.journal is not None:
            from optuna.storages.journal import JournalFileBackend

            return optuna.storages.JournalStorage(JournalFileBackend(self.journal))
        assert self.url is not None
        engine_kwargs = {"connect_args": {"timeout": 60}} if self.url.startswith("sqlite") else None
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental" (since Optuna 2.8)
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                heartbeat: dict[str, Any] = {}
                if self.heartbeat_interval is not None:
                    retry = optuna.storages.RetryHeartbeatStaleTrialCallback
                    heartbeat = {
                        "heartbeat_interval": self.heartbeat_interval,
                        "grace_period": self.grace_period or 3 * self.heartbeat_interval,
                        "heartbeat_stale_trial_callback": retry(max_retry=self.max_retry),
                    }
                return optuna.storages.RDBStorage(
                    self.url, engine_kwargs=engine_kwargs, **heartbeat
                )
        except Exception as exc:  # sqlalchemy's errors: bad URL, unreachable server, no driver
            reason = _first_line(exc)
            secret = _password(self.url)
            if secret:
                reason = reason.replace(secret, "***")
            msg = f"stage '{stage}': cannot open the Optuna storage {self.shown}: {reason}"
            raise SourceError(msg) from None


def storage_target(params: TuneParams, ctx: StageContext, study_name: str) -> StorageTarget:
    """The study's storage: a journal file under the store, or the ``storage`` URL."""
    url = params.storage_url()
    if url is None:
        directory = ctx.store_root / STORE_DIR
        directory.mkdir(parents=True, exist_ok=True)
        name = journal_file_name(study_name)
        return StorageTarget(journal=str(directory / name), shown=f"{STORE_DIR}/{name}")
    shown = params.shown_storage() or ""
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        # SQLAlchemy reads sqlite:///rel.db from the working directory: use the project's
        path = ctx.resolve_path(url.removeprefix("sqlite:///"), what="storage")
        path.parent.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{path}"
    if url.split("://", 1)[0] in ("postgresql", "postgres"):
        # SQLAlchemy's default PostgreSQL driver is psycopg2; ductwork's sql extra has psycopg 3
        from ductwork.errors import import_optional

        import_optional("psycopg", extra="sql", feature=f"stage '{ctx.stage}': storage {shown}")
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    return StorageTarget(
        url=url,
        shown=shown,
        heartbeat_interval=params.heartbeat_interval,
        grace_period=params.grace_period,
        max_retry=params.max_retry,
    )


def _scheme(url: str) -> str:
    """The database of a SQLAlchemy URL: ``postgresql`` for ``postgresql+psycopg://...``."""
    return url.split("://", 1)[0].split("+", 1)[0].lower()


def journal_file_name(study: str) -> str:
    """A file name for a study's journal: the name made file-safe, with a hash if changed."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", study).strip("._")[:100] or "study"
    if safe != study:
        safe += "-" + hashlib.sha256(study.encode()).hexdigest()[:8]
    return f"{safe}.journal"


def _password(url: str) -> str | None:
    from urllib.parse import urlsplit

    try:
        return urlsplit(url).password
    except ValueError:
        return None


def _open_study(
    storage: optuna.storages.BaseStorage, name: str, metric: Objective, stage: str, shown: str
) -> optuna.Study:
    study = optuna.create_study(
        storage=storage, study_name=name, direction=metric.direction, load_if_exists=True
    )
    if study.direction.name.lower() != metric.direction:
        msg = (
            f"stage '{stage}': study '{name}' in {shown} was made to "
            f"{study.direction.name.lower()}, but {metric.name} is to {metric.direction}"
        )
        raise UsageError(msg, hint="Name another study (study: ...) for this metric.")
    recorded = study.user_attrs.get("metric")
    if recorded is None:
        study.set_user_attr("metric", metric.name)
    elif recorded != metric.name:
        msg = f"stage '{stage}': study '{name}' in {shown} optimizes {recorded}, not {metric.name}"
        raise UsageError(msg, hint="Name another study (study: ...) for this metric.")
    return study


# ----------------------------------------------------------------------------- outputs
def trials_table(trials: list[FrozenTrial], names: list[str]) -> pl.DataFrame:
    """One row per trial: number, state, value, params_<name>, duration_s."""
    columns: dict[str, pl.Series] = {
        "number": pl.Series("number", [t.number for t in trials], dtype=pl.Int64),
        "state": pl.Series("state", [t.state.name for t in trials], dtype=pl.String),
        "value": pl.Series(
            "value",
            [t.value if t.state == TrialState.COMPLETE else None for t in trials],
            dtype=pl.Float64,
        ),
    }
    seen = list(names) + sorted({n for t in trials for n in t.params} - set(names))
    for name in seen:
        column = f"params_{name}"
        columns[column] = _param_series(column, [t.params.get(name) for t in trials])
    columns["duration_s"] = pl.Series(
        "duration_s",
        [t.duration.total_seconds() if t.duration is not None else None for t in trials],
        dtype=pl.Float64,
    )
    return pl.DataFrame(list(columns.values()))


def _param_series(name: str, values: list[Any]) -> pl.Series:
    kinds = {type(v) for v in values if v is not None}
    if kinds <= {int, float} and kinds != {bool}:
        dtype = pl.Int64 if kinds == {int} else pl.Float64
        return pl.Series(name, values, dtype=dtype)
    if len(kinds) == 1:
        return pl.Series(name, values)
    return pl.Series(name, [None if v is None else str(v) for v in values], dtype=pl.String)


def write_plots(study: optuna.Study, directory: Path, *, metric: Objective, seed: int) -> None:
    """optimization_history.png and param_importances.png (or a PNG saying why it is absent)."""
    directory.mkdir(parents=True, exist_ok=True)
    trials = study.get_trials(deepcopy=False)
    _history_plot(directory / HISTORY_PNG, trials, metric)
    importances, reason = _importances(study, trials, seed)
    _importance_plot(directory / IMPORTANCES_PNG, importances, reason, metric)


def _importances(
    study: optuna.Study, trials: list[FrozenTrial], seed: int
) -> tuple[dict[str, float], str | None]:
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if len(complete) < 2:
        return {}, f"Parameter importances need 2 complete trials; the study has {len(complete)}."
    names = sorted({n for t in complete for n in t.params})
    if not names:
        return {}, "Parameter importances need a searched param; the trials have none."
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            found = optuna.importance.get_param_importances(study, evaluator=evaluator)
    except (ValueError, RuntimeError) as exc:
        return {}, f"Parameter importances could not be computed: {exc}"
    return {k: float(v) for k, v in found.items()}, None


_STYLE: Any = {
    "svg.hashsalt": "ductwork",
    "path.simplify": True,
    "font.family": ["DejaVu Sans"],
    "font.size": 9.0,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "figure.dpi": 100,
    "savefig.dpi": 100,
}


def _save(fig: Any, path: Path) -> None:
    fig.savefig(path, format="png", dpi=100, metadata={"Software": None})
    fig.clear()


def _history_plot(path: Path, trials: list[FrozenTrial], metric: Objective) -> None:
    import matplotlib as mpl
    from matplotlib.figure import Figure

    with mpl.rc_context(_STYLE):
        fig = Figure(figsize=(7.0, 4.2), dpi=100, layout="constrained")
        ax = fig.subplots()
        done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
        pruned = [t for t in trials if t.state == TrialState.PRUNED]
        if done:
            xs = [t.number for t in done]
            ys = [float(t.value) for t in done if t.value is not None]
            pick = max if metric.direction == "maximize" else min
            best: list[float] = []
            for y in ys:
                best.append(y if not best else pick(best[-1], y))
            ax.scatter(xs, ys, s=18, color="#1f77b4", label="complete trial", zorder=3)
            ax.step(xs, best, where="post", color="#d62728", label="best so far", zorder=2)
        if pruned:  # their partial scores are not comparable: marked along the bottom
            px = [t.number for t in pruned]
            ax.scatter(
                px,
                [0.03] * len(px),
                s=22,
                marker="x",
                color="#7f7f7f",
                label="pruned trial",
                transform=ax.get_xaxis_transform(),
                clip_on=False,
            )
        if not done and not pruned:
            ax.text(0.5, 0.5, "No finished trials", ha="center", va="center")
        ax.set_xlabel("trial")
        ax.set_ylabel(f"{metric.name} ({metric.direction})")
        ax.set_title("Optimization history")
        if done or pruned:
            ax.legend(loc="best", fontsize=8)
        _save(fig, path)


def _importance_plot(
    path: Path, importances: dict[str, float], reason: str | None, metric: Objective
) -> None:
    import matplotlib as mpl
    from matplotlib.figure import Figure

    with mpl.rc_context(_STYLE):
        height = max(2.5, 0.9 + 0.35 * len(importances))
        fig = Figure(figsize=(7.0, height), dpi=100, layout="constrained")
        ax = fig.subplots()
        if reason is not None or not importances:
            ax.set_axis_off()
            ax.text(0.5, 0.5, reason or "No importances", ha="center", va="center", wrap=True)
        else:
            ordered = sorted(importances.items(), key=lambda kv: (kv[1], kv[0]))
            names = [k for k, _ in ordered]
            values = [v for _, v in ordered]
            ax.barh(names, values, color="#1f77b4")
            for i, v in enumerate(values):
                ax.text(v, i, f" {v:.2f}", va="center", fontsize=8)
            ax.set_xlim(0, max(1.0, max(values) * 1.15) if values else 1.0)
            ax.set_xlabel(f"importance for {metric.name} (fANOVA, sums to 1)")
        ax.set_title("Parameter importances")
        _save(fig, path)

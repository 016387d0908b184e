"""Distributed tuning: the tune stage's study in a real PostgreSQL, shared by several processes.

The stage runs with ``storage: postgresql://...`` (rewritten to psycopg 3) and heartbeats; its
own ``n_jobs`` processes and a ``ductwork tune-worker`` process claim trials from the study's
budget in the database, so together they run exactly ``n_trials``. A worker killed with
``kill -9`` in the middle of a trial leaves a RUNNING trial whose heartbeat stops: it is failed
after the grace period and retried by a live process. The CLI runs in subprocesses, as on
separate machines; the study is read back with Optuna.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pytest

pytest.importorskip("optuna", reason="the ml extra is not installed")
pytest.importorskip("sklearn", reason="the ml extra is not installed")
pytest.importorskip("psycopg", reason="the sql extra is not installed (psycopg)")

import optuna
from optuna.trial import TrialState

from ductwork import api

pytestmark = pytest.mark.postgres


# ------------------------------------------------------------------------------ helpers
def _project(
    root: Path, dsn: str, *, study: str, n_trials: int, n_jobs: int, trees: int = 100
) -> Path:
    """A pipeline: extract the breast cancer table, tune a random forest in PostgreSQL."""
    from sklearn.datasets import load_breast_cancer

    X, y = load_breast_cancer(return_X_y=True, as_frame=True)
    frame = pl.from_pandas(X).rename(lambda c: c.replace(" ", "_"))
    frame = frame.with_columns(pl.Series("target", y.to_numpy()))
    (root / "data").mkdir(parents=True)
    frame.write_parquet(root / "data" / "cancer.parquet")
    spec = {
        "pipeline": "tunepg",
        "stages": [
            {"name": "data", "kind": "extract", "params": {"path": "data/cancer.parquet"}},
            {
                "name": "tune",
                "kind": "tune",
                "inputs": {"train": "data"},
                "params": {
                    "target": "target",
                    "model": "random_forest",
                    "params": {"n_estimators": trees},
                    "search_space": {
                        "max_depth": {"low": 2, "high": 8},
                        "min_samples_leaf": {"low": 1, "high": 20},
                    },
                    "n_trials": n_trials,
                    "cv": 3,
                    "pruner": "none",
                    "n_jobs": n_jobs,
                    "storage": dsn,  # postgresql://: ductwork uses psycopg 3
                    "study": study,
                    "heartbeat_interval": 1,
                    "grace_period": 3,
                },
            },
        ],
    }
    path = root / "pipeline.yaml"
    path.write_text(json.dumps(spec, indent=2), encoding="utf-8")  # JSON is YAML
    return path


@pytest.fixture(scope="module", autouse=True)
def _bytecode(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Compiled modules cached for the subprocesses, even where PYTHONDONTWRITEBYTECODE is set
    (a cold ``import sklearn`` then takes seconds in each process and worker)."""
    _ENV.clear()
    _ENV.update({k: v for k, v in os.environ.items() if not k.startswith("DUCTWORK_")})
    _ENV.pop("PYTHONDONTWRITEBYTECODE", None)
    _ENV["PYTHONPYCACHEPREFIX"] = str(tmp_path_factory.mktemp("pycache"))
    _ENV["PYTHONUNBUFFERED"] = "1"


_ENV: dict[str, str] = {}


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "ductwork", *args]


def _run(*args: str, timeout: float = 120) -> list[dict[str, Any]]:
    done = subprocess.run(
        _cli(*args, "--json"), capture_output=True, text=True, env=_ENV, timeout=timeout
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def _status(events: list[dict[str, Any]], stage: str) -> str:
    finished = next(e for e in events if e.get("event") == "run_finished")
    return str(next(s["status"] for s in finished["stages"] if s["stage"] == stage))


def _trials(dsn: str, study: str) -> list[optuna.trial.FrozenTrial]:
    url = "postgresql+psycopg://" + dsn.split("://", 1)[1]
    try:
        loaded = optuna.load_study(study_name=study, storage=url)
    except KeyError:  # not created yet
        return []
    return loaded.get_trials(deepcopy=False)


def _wait(what: str, check: Callable[[], bool], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=30)


# ------------------------------------------------------------------------------ tests
def test_the_stage_processes_and_a_tune_worker_share_one_study(
    tmp_path: Path, postgres_dsn: str
) -> None:
    study = f"share-{uuid.uuid4().hex[:8]}"
    n = 40
    pipeline = _project(tmp_path, postgres_dsn, study=study, n_trials=n, n_jobs=2)
    _run("run", str(pipeline), "--to", "data")

    # a worker "on another machine" starts first; the stage (2 processes) joins its study
    worker = subprocess.Popen(
        _cli("tune-worker", str(pipeline), "--stage", "tune", "-j", "1", "--json"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_ENV,
    )
    try:
        _wait("the tune worker's first trial", lambda: len(_trials(postgres_dsn, study)) > 0)
        events = _run("run", str(pipeline))
        out, err = worker.communicate(timeout=120)
    finally:
        _stop(worker)
    assert worker.returncode == 0, err[-2000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["schema"] == "ductwork.tune_worker/v1"
    assert summary["study"] == study and summary["storage"] == postgres_dsn
    assert _status(events, "tune") == "ok"

    trials = _trials(postgres_dsn, study)
    assert len(trials) == n  # exactly n_trials across three processes, none twice
    assert sorted(t.number for t in trials) == list(range(n))
    assert {t.state for t in trials} == {TrialState.COMPLETE}
    by = {t.user_attrs["ductwork_worker"] for t in trials}
    assert len(by) == 3, by  # the stage's process, its worker process and the tune worker
    worker_pid = f":{worker.pid}"
    ran = sum(t.user_attrs["ductwork_worker"].endswith(worker_pid) for t in trials)
    assert 0 < ran < n and summary["trials_run"] == ran

    # the stage's outputs are made from the whole shared study
    best = api.artifact(pipeline, "tune")
    url = "postgresql+psycopg://" + postgres_dsn.split("://", 1)[1]
    shared = optuna.load_study(study_name=study, storage=url)
    assert best["n_trials_total"] == n and best["n_complete"] == n
    assert best["trial"] == shared.best_trial.number
    assert best["value"] == pytest.approx(shared.best_value)
    assert api.artifact(pipeline, "tune", "trials").height == n

    # nothing changed: the stage is cached, and the study gets no trial more
    again = _run("run", str(pipeline))
    assert _status(again, "tune") == "cached"
    assert len(_trials(postgres_dsn, study)) == n


def test_a_worker_killed_mid_trial_loses_that_trial_only(tmp_path: Path, postgres_dsn: str) -> None:
    study = f"kill-{uuid.uuid4().hex[:8]}"
    n = 12
    pipeline = _project(tmp_path, postgres_dsn, study=study, n_trials=n, n_jobs=2)
    _run("run", str(pipeline), "--to", "data")

    worker = subprocess.Popen(
        _cli("tune-worker", str(pipeline), "--stage", "tune", "-j", "1", "--json"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=_ENV,
    )
    killed: list[optuna.trial.FrozenTrial] = []

    def running_in_worker() -> bool:
        killed[:] = [
            t
            for t in _trials(postgres_dsn, study)
            if t.state == TrialState.RUNNING
            and t.user_attrs.get("ductwork_worker", "").endswith(f":{worker.pid}")
        ]
        return bool(killed)

    try:
        _wait("a trial running in the tune worker", running_in_worker)
        os.kill(worker.pid, signal.SIGKILL)  # in the middle of that trial
        worker.wait(timeout=30)
    finally:
        _stop(worker)
    lost = killed[0]
    assert _trials(postgres_dsn, study)[lost.number].state == TrialState.RUNNING

    # the stage runs the rest; its heartbeat check fails the dead trial and runs its retry
    started = time.monotonic()
    events = _run("run", str(pipeline))
    assert _status(events, "tune") == "ok"
    assert time.monotonic() - started < 60

    trials = _trials(postgres_dsn, study)
    states = [t.state for t in trials]
    assert states.count(TrialState.FAIL) == 1 and trials[lost.number].state == TrialState.FAIL
    assert states.count(TrialState.COMPLETE) == n  # the study completes: one trial lost
    assert len(trials) == n + 1
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == lost.number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert retries[0].params == lost.params  # the same trial, run again

    best = api.artifact(pipeline, "tune")
    assert (best["n_complete"], best["n_failed"], best["n_trials_total"]) == (n, 1, n + 1)


def test_a_postgres_study_without_other_workers_runs_exactly_n_trials(
    tmp_path: Path, postgres_dsn: str
) -> None:
    """One process (n_jobs: 1) claims from the database too, and a larger n_trials resumes."""
    study = f"solo-{uuid.uuid4().hex[:8]}"
    pipeline = _project(tmp_path, postgres_dsn, study=study, n_trials=4, n_jobs=1, trees=10)
    _run("run", str(pipeline))
    assert [t.state for t in _trials(postgres_dsn, study)] == [TrialState.COMPLETE] * 4
    text = pipeline.read_text(encoding="utf-8").replace('"n_trials": 4', '"n_trials": 7')
    pipeline.write_text(text, encoding="utf-8")
    events = _run("run", str(pipeline))
    assert _status(events, "tune") == "ok"
    trials = _trials(postgres_dsn, study)
    assert len(trials) == 7 and {t.state for t in trials} == {TrialState.COMPLETE}
    assert api.artifact(pipeline, "tune")["n_trials_total"] == 7


def test_a_tune_worker_needs_a_postgres_study_and_a_tune_stage(tmp_path: Path) -> None:
    from ductwork.errors import UsageError

    pipeline = _project(tmp_path, "sqlite:///studies.db", study="s", n_trials=2, n_jobs=1, trees=5)
    api.run(pipeline, to=["data"])
    with pytest.raises(UsageError, match="joins a study in PostgreSQL") as err:
        api.tune_worker(pipeline, "tune")
    assert err.value.hint is not None and "postgresql://" in err.value.hint
    with pytest.raises(UsageError, match="is kind extract"):
        api.tune_worker(pipeline, "data")
    with pytest.raises(UsageError, match="did you mean 'tune'"):
        api.tune_worker(pipeline, "tun")

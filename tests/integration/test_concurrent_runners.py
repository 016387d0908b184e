"""Two runner processes on one project (one store, one records database) with a slow stage.

The per-stage lock (a file lock with SQLite records, a PostgreSQL advisory lock with
PostgreSQL records) makes the slow stage's function run once: the runner that did not compute
it waits, then reports it ``cached``. A runner killed while it holds a lock blocks nobody.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

import pytest

from ductwork.core.records import Records

pytestmark = pytest.mark.timeout(180)  # a runner that never finishes fails the test, not CI
STEPS = """
import os
import time
from pathlib import Path

import polars as pl


def src():
    return pl.DataFrame({"x": [1, 2, 3], "g": ["a", "b", "a"]})


def slow(src: pl.LazyFrame) -> pl.LazyFrame:
    with open("calls.txt", "a") as f:  # who computed it, and how often
        f.write(f"{os.getpid()}\\n")
    hold = os.environ.get("HOLD_FILE")
    deadline = time.time() + (60 if hold else 1.0)
    while time.time() < deadline and not (hold and Path(hold).exists()):
        time.sleep(0.02)
    return src.with_columns(pl.col("x") * 10)


def side():
    return pl.DataFrame({"y": [1]})
"""

PIPELINE = """
pipeline: concurrent
executor: {workers: 2}
stages:
  - {name: src, kind: python, uses: "STEPS:src"}
  - {name: slow, kind: python, uses: "STEPS:slow"}
  - {name: side, kind: python, uses: "STEPS:side", inputs: []}
  - name: after
    kind: transform
    inputs: [slow]
    params: {sql: "select g, sum(x) as total from slow group by g order by g"}
"""


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def project(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Path, str | None]]:
    """A project directory and its DUCTWORK_DATABASE_URL (None: SQLite in the store)."""
    module = f"csteps_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(STEPS))
    (tmp_path / "pipeline.yaml").write_text(PIPELINE.replace("STEPS", module))
    if request.param == "sqlite":
        yield tmp_path, None
        return
    psycopg = pytest.importorskip("psycopg")
    dsn = request.getfixturevalue("postgres_dsn")
    schema = f"c_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(dsn, autocommit=True) as con:
        con.execute(f"create schema {schema}")
    try:
        yield tmp_path, f"{dsn}?options={quote(f'-csearch_path={schema}')}"
    finally:
        with psycopg.connect(dsn, autocommit=True) as con:
            con.execute(f"drop schema {schema} cascade")


class Runner:
    """``ductwork run --json`` in its own process; its JSON lines are read as they come."""

    def __init__(self, cwd: Path, url: str | None, env: dict[str, str] | None = None) -> None:
        full = {**os.environ, "NO_COLOR": "1", **(env or {})}
        full.pop("DUCTWORK_DATABASE_URL", None)
        if url:
            full["DUCTWORK_DATABASE_URL"] = url
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ductwork", "run", "--json"],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=full,
        )
        self.lines: list[dict[str, Any]] = []

    def read_until(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 60) -> None:
        """Read events until one matches (the runner must still be going)."""
        if any(predicate(e) for e in self.lines):
            return
        stdout: IO[str] | None = self.proc.stdout
        assert stdout is not None
        deadline = time.time() + timeout
        while time.time() < deadline:
            line = stdout.readline()
            if not line:
                pytest.fail(
                    f"the runner ended early: {self.proc.stderr.read() if self.proc.stderr else ''}"
                )
            self.lines.append(json.loads(line))
            if predicate(self.lines[-1]):
                return
        pytest.fail("timed out waiting for the runner")

    def finish(self, timeout: float = 120) -> dict[str, Any]:
        out, err = self.proc.communicate(timeout=timeout)
        self.lines += [json.loads(line) for line in out.splitlines() if line.strip()]
        assert self.proc.returncode == 0, err
        summary = self.lines[-1]
        assert summary["event"] == "run_finished", summary
        return summary

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=30)


def stage(summary: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in summary["stages"] if s["stage"] == name)


def open_records(root: Path, url: str | None) -> Records:
    return Records(url or root / ".ductwork" / "records.db")


def check_records(root: Path, url: str | None, run_ids: set[str]) -> None:
    """One cache entry per fingerprint; every manifest's object exists; lineage resolves."""
    r = open_records(root, url)
    try:
        cache = r._query("select fingerprint, run_id from stage_cache")
        assert len(cache) == 4  # src, slow, side, after: once each
        assert {c["run_id"] for c in cache} <= run_ids
        fps = [c["fingerprint"] for c in cache]
        assert len(fps) == len(set(fps))
        artifacts = r.artifacts()
        assert len(artifacts) == 4
        for a in artifacts:
            assert a["run_id"] in run_ids
            assert list((root / ".ductwork" / "objects").glob(f"{a['sha256']}*"))
            producers = r.producers(a["sha256"])
            assert {p["run_id"] for p in producers} == run_ids  # both runs used every output
        slow_runs = r._query("select status from stage_runs where stage='slow' order by status")
        assert [s["status"] for s in slow_runs] == ["cached", "ok"]
        assert {x["status"] for x in r.runs()} == {"ok"}
    finally:
        r.close()
    env = {**os.environ, "NO_COLOR": "1"}
    env.pop("DUCTWORK_DATABASE_URL", None)
    if url:
        env["DUCTWORK_DATABASE_URL"] = url

    def cli(*args: str) -> Any:
        p = subprocess.run(
            [sys.executable, "-m", "ductwork", *args, "--json"],
            cwd=root,
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout)

    listed = cli("artifacts")["artifacts"]
    assert {a["sha256"] for a in listed} == {a["sha256"] for a in artifacts}
    tree = cli("lineage", "after")["lineage"]
    assert tree["in_store"]
    assert tree["inputs"]["slow"]["inputs"]["src"]["in_store"]


def calls(root: Path) -> list[str]:
    path = root / "calls.txt"
    return path.read_text().split() if path.exists() else []


def test_two_runners_started_at_once_compute_the_slow_stage_once(
    project: tuple[Path, str | None],
) -> None:
    root, url = project
    runners = [Runner(root, url), Runner(root, url)]
    try:
        summaries = [r.finish() for r in runners]
    finally:
        for r in runners:
            r.kill()
    assert [s["status"] for s in summaries] == ["ok", "ok"]
    assert len(calls(root)) == 1
    slow = sorted((stage(s, "slow")["status"], stage(s, "slow")["reason"]) for s in summaries)
    assert [status for status, _ in slow] == ["cached", "ok"]
    assert stage(summaries[0], "after")["outputs"] == stage(summaries[1], "after")["outputs"]
    check_records(root, url, {s["run_id"] for s in summaries})


def test_the_second_runner_waits_for_the_first_and_goes_on_with_other_stages(
    project: tuple[Path, str | None],
) -> None:
    root, url = project
    hold = root / "hold"
    first = Runner(root, url, {"HOLD_FILE": str(hold)})
    second: Runner | None = None
    try:
        deadline = time.time() + 60
        while not calls(root):  # the first runner is inside the slow stage, holding its lock
            assert first.proc.poll() is None and time.time() < deadline
            time.sleep(0.05)
        second = Runner(root, url)
        waiting = "waiting for another runner computing"
        second.read_until(lambda e: waiting in str(e.get("unit", "")) and e["stage"] == "slow")
        second.read_until(lambda e: e["event"] == "stage_finished" and e["stage"] == "side")
        assert not any(  # other stages went on; the slow one still waits
            e["event"] == "stage_finished" and e["stage"] in ("slow", "after") for e in second.lines
        )
        hold.touch()
        one, two = first.finish(), second.finish()
    finally:
        hold.touch()
        first.kill()
        if second is not None:
            second.kill()
    assert calls(root) == [str(first.proc.pid)]
    assert stage(one, "slow")["status"] == "ok"
    assert stage(two, "slow")["status"] == "cached"
    assert stage(two, "slow")["reason"] == f"computed by another runner (run {one['run_id']})"
    assert stage(two, "after")["status"] == "cached"
    check_records(root, url, {one["run_id"], two["run_id"]})


def test_a_runner_killed_while_holding_a_lock_does_not_block_the_next(
    project: tuple[Path, str | None],
) -> None:
    root, url = project
    hold = root / "never"
    victim = Runner(root, url, {"HOLD_FILE": str(hold)})
    try:
        deadline = time.time() + 60
        while not calls(root):
            assert victim.proc.poll() is None and time.time() < deadline
            time.sleep(0.05)
        os.kill(victim.proc.pid, signal.SIGKILL)
        victim.proc.wait(timeout=30)
    finally:
        victim.kill()
    started = time.time()
    summary = Runner(root, url).finish(timeout=60)
    assert time.time() - started < 30
    assert summary["status"] == "ok"
    assert stage(summary, "slow")["status"] == "ok"
    assert len(calls(root)) == 2  # the killed runner's attempt, then this one
    r = open_records(root, url)
    try:
        assert sorted(x["status"] for x in r.runs()) == ["interrupted", "ok"]
    finally:
        r.close()

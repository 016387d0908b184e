"""Run records and lineage in SQLite (WAL): runs, stage runs, and the artifacts they used.

Many processes may run pipelines on one project at once. SQLite in WAL mode lets readers work
while one writer commits; writers take the lock with ``BEGIN IMMEDIATE`` and wait (busy
timeout, then retries with backoff) instead of failing with "database is locked".
"""

from __future__ import annotations

import json
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from ductwork.errors import StoreError

SCHEMA_VERSION = 1

_SCHEMA = """
create table if not exists meta (key text primary key, value text not null);
create table if not exists runs (
    run_id text primary key,
    pipeline text not null,
    spec_path text,
    status text not null,            -- running | ok | failed | interrupted
    started real not null,
    ended real,
    options text not null default '{}',
    summary text
);
create index if not exists runs_pipeline on runs(pipeline, started);
create table if not exists stage_runs (
    run_id text not null references runs(run_id) on delete cascade,
    stage text not null,
    kind text not null,
    status text not null,            -- ok | cached | failed | skipped | saved
    fingerprint text,
    components text,
    started real,
    ended real,
    duration_s real,
    rows_in integer,
    rows_out integer,
    metrics text,
    error text,
    primary key (run_id, stage)
);
create index if not exists stage_runs_stage on stage_runs(stage, ended);
create index if not exists stage_runs_fp on stage_runs(fingerprint);
create table if not exists artifacts (   -- the manifest of each artifact (first producer)
    sha256 text primary key,
    type text not null,
    rows integer,
    bytes integer,
    schema text,
    stage text,
    run_id text,
    fingerprint text,
    created real not null
);
create table if not exists stage_run_io (
    run_id text not null,
    stage text not null,
    direction text not null,         -- in | out
    name text not null,
    sha256 text not null,
    primary key (run_id, stage, direction, name)
);
create index if not exists stage_run_io_sha on stage_run_io(sha256, direction);
create table if not exists stage_cache (
    fingerprint text primary key,
    stage text not null,
    run_id text not null,
    entry text not null,             -- JSON: outputs (sha, type, rows, bytes, schema), metrics
    created real not null
);
"""

T = TypeVar("T")


class Records:
    """Access to the run records database. One connection per thread."""

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 60.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        conn = self._conn()
        self._retry(lambda: conn.executescript(_SCHEMA))
        self._write(
            lambda c: c.execute(
                "insert or ignore into meta(key, value) values ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )
        )

    # -- connections ------------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = sqlite3.connect(
                    self.path,
                    timeout=self.busy_timeout_s,
                    isolation_level=None,
                    check_same_thread=False,
                )
                conn.row_factory = sqlite3.Row
                self._retry(lambda: conn.execute("pragma journal_mode=wal"))
                conn.execute("pragma synchronous=normal")
                conn.execute(f"pragma busy_timeout={int(self.busy_timeout_s * 1000)}")
                conn.execute("pragma foreign_keys=on")
            except sqlite3.DatabaseError as exc:
                msg = f"cannot open the run records at {self.path}: {exc}"
                raise StoreError(msg) from exc
            self._local.conn = conn
        return conn

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def _retry(self, fn: Callable[[], T], attempts: int = 50) -> T:
        delay = 0.01
        for i in range(attempts):
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                text = str(exc)
                if ("locked" not in text and "busy" not in text) or i == attempts - 1:
                    raise
                time.sleep(delay * (1 + random.random()))
                delay = min(delay * 2, 1.0)
        msg = "unreachable"
        raise AssertionError(msg)

    def _write(self, fn: Callable[[sqlite3.Connection], Any], *, immediate: bool = True) -> None:
        conn = self._conn()

        def attempt() -> None:
            conn.execute("begin immediate" if immediate else "begin")
            try:
                fn(conn)
            except BaseException:
                conn.execute("rollback")
                raise
            conn.execute("commit")

        self._retry(attempt)

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        conn = self._conn()
        rows = self._retry(lambda: conn.execute(sql, params).fetchall())
        return [dict(r) for r in rows]

    # -- runs -------------------------------------------------------------------------------
    def start_run(
        self, run_id: str, pipeline: str, spec_path: str | None, options: Mapping[str, Any]
    ) -> None:
        self._write(
            lambda c: c.execute(
                "insert into runs(run_id, pipeline, spec_path, status, started, options) values (?,?,?,?,?,?)",
                (
                    run_id,
                    pipeline,
                    spec_path,
                    "running",
                    time.time(),
                    json.dumps(options, default=str),
                ),
            )
        )

    def finish_run(self, run_id: str, status: str, summary: Mapping[str, Any]) -> None:
        self._write(
            lambda c: c.execute(
                "update runs set status=?, ended=?, summary=? where run_id=?",
                (status, time.time(), json.dumps(summary, default=str), run_id),
            )
        )

    def record_stage(
        self,
        *,
        run_id: str,
        stage: str,
        kind: str,
        status: str,
        fingerprint: str | None,
        components: Mapping[str, Any] | None,
        started: float | None,
        ended: float | None,
        rows_in: int | None,
        rows_out: int | None,
        metrics: Mapping[str, Any] | None,
        error: str | None,
        inputs: Mapping[str, Mapping[str, Any]],
        outputs: Mapping[str, Mapping[str, Any]],
        cache_entry: Mapping[str, Any] | None = None,
    ) -> None:
        """Record one stage run, the artifacts it read and wrote and its cache entry, atomically."""
        duration = (ended - started) if (started is not None and ended is not None) else None

        def write(c: sqlite3.Connection) -> None:
            c.execute(
                "insert or replace into stage_runs(run_id, stage, kind, status, fingerprint, components,"
                " started, ended, duration_s, rows_in, rows_out, metrics, error)"
                " values (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    run_id,
                    stage,
                    kind,
                    status,
                    fingerprint,
                    json.dumps(components, default=str) if components is not None else None,
                    started,
                    ended,
                    duration,
                    rows_in,
                    rows_out,
                    json.dumps(metrics, default=str) if metrics else None,
                    error,
                ),
            )
            now = time.time()
            if cache_entry is not None:
                c.execute(
                    "insert or replace into stage_cache(fingerprint, stage, run_id, entry, created)"
                    " values (?,?,?,?,?)",
                    (
                        cache_entry["fingerprint"],
                        stage,
                        run_id,
                        json.dumps(cache_entry, default=str),
                        now,
                    ),
                )
            for direction, items in (("in", inputs), ("out", outputs)):
                for name, art in items.items():
                    c.execute(
                        "insert or replace into stage_run_io(run_id, stage, direction, name, sha256)"
                        " values (?,?,?,?,?)",
                        (run_id, stage, direction, name, art["sha256"]),
                    )
                    if direction == "out":
                        c.execute(
                            "insert or ignore into artifacts(sha256, type, rows, bytes, schema, stage,"
                            " run_id, fingerprint, created) values (?,?,?,?,?,?,?,?,?)",
                            (
                                art["sha256"],
                                art["type"],
                                art.get("rows"),
                                art.get("bytes"),
                                json.dumps(art.get("schema")) if art.get("schema") else None,
                                stage,
                                run_id,
                                fingerprint,
                                now,
                            ),
                        )

        self._write(write)

    def mark_interrupted(self) -> int:
        """Runs still 'running' whose process is gone are marked interrupted (best effort)."""
        rows = self._query("select run_id, options from runs where status='running'")
        stale = []
        for r in rows:
            pid = json.loads(r["options"] or "{}").get("pid")
            if pid is None or not _pid_alive(int(pid)):
                stale.append(r["run_id"])
        if stale:
            self._write(
                lambda c: c.executemany(
                    "update runs set status='interrupted' where run_id=?", [(s,) for s in stale]
                )
            )
        return len(stale)

    def cache_get(self, fingerprint: str) -> dict[str, Any] | None:
        rows = self._query("select entry from stage_cache where fingerprint=?", (fingerprint,))
        return json.loads(rows[0]["entry"]) if rows else None

    def cache_prune(self, keep: set[str]) -> int:
        """Delete cache entries whose outputs are not all in ``keep``."""
        drop = []
        for r in self._query("select fingerprint, entry from stage_cache"):
            shas = {o["sha256"] for o in json.loads(r["entry"]).get("outputs", {}).values()}
            if not shas <= keep:
                drop.append((r["fingerprint"],))
        if drop:
            self._write(
                lambda c: c.executemany("delete from stage_cache where fingerprint=?", drop)
            )
        return len(drop)

    # -- queries ----------------------------------------------------------------------------
    def runs(self, limit: int = 20, pipeline: str | None = None) -> list[dict[str, Any]]:
        if pipeline:
            return self._query(
                "select * from runs where pipeline=? order by started desc limit ?",
                (pipeline, limit),
            )
        return self._query("select * from runs order by started desc limit ?", (limit,))

    def run(self, run_id: str) -> dict[str, Any] | None:
        rows = self._query(
            "select * from runs where run_id=? or run_id like ?", (run_id, f"{run_id}%")
        )
        return rows[0] if rows else None

    def stage_runs(self, run_id: str) -> list[dict[str, Any]]:
        return self._query("select * from stage_runs where run_id=? order by started", (run_id,))

    def last_stage_run(
        self, stage: str, pipeline: str, statuses: Sequence[str] = ("ok", "cached")
    ) -> dict[str, Any] | None:
        marks = ",".join("?" for _ in statuses)
        rows = self._query(
            f"select s.* from stage_runs s join runs r using(run_id) where s.stage=? and r.pipeline=?"
            f" and s.status in ({marks}) order by coalesce(s.ended, s.started) desc limit 1",
            (stage, pipeline, *statuses),
        )
        return rows[0] if rows else None

    def stage_io(self, run_id: str, stage: str) -> dict[str, dict[str, str]]:
        out: dict[str, dict[str, str]] = {"in": {}, "out": {}}
        for r in self._query(
            "select direction, name, sha256 from stage_run_io where run_id=? and stage=?",
            (run_id, stage),
        ):
            out[r["direction"]][r["name"]] = r["sha256"]
        return out

    def producers(self, sha: str) -> list[dict[str, Any]]:
        """Stage runs that wrote this artifact, newest first."""
        return self._query(
            "select s.*, io.name as output, r.pipeline from stage_run_io io"
            " join stage_runs s on s.run_id=io.run_id and s.stage=io.stage"
            " join runs r on r.run_id=io.run_id"
            " where io.sha256=? and io.direction='out' order by s.started desc",
            (sha,),
        )

    def consumers(self, sha: str) -> list[dict[str, Any]]:
        return self._query(
            "select s.run_id, s.stage, io.name as input from stage_run_io io"
            " join stage_runs s on s.run_id=io.run_id and s.stage=io.stage"
            " where io.sha256=? and io.direction='in' order by s.started desc",
            (sha,),
        )

    def artifacts(self, limit: int = 100) -> list[dict[str, Any]]:
        """Artifact manifests, newest first, with the stage output that first produced them."""
        return self._query(
            "select a.*, io.name as output from artifacts a"
            " left join stage_run_io io on io.sha256=a.sha256 and io.direction='out'"
            " and io.run_id=a.run_id and io.stage=a.stage"
            " order by a.created desc limit ?",
            (limit,),
        )

    def artifact(self, sha: str) -> dict[str, Any] | None:
        rows = self._query("select * from artifacts where sha256=?", (sha,))
        return rows[0] if rows else None

    def referenced_by_latest_runs(self, keep_runs: int) -> set[str]:
        """Artifacts read or written by the latest ``keep_runs`` runs of each pipeline."""
        rows = self._query(
            "select io.sha256 from stage_run_io io where io.run_id in ("
            " select run_id from (select run_id, row_number() over"
            " (partition by pipeline order by started desc) as n from runs) where n <= ?)",
            (keep_runs,),
        )
        return {r["sha256"] for r in rows}

    def running_runs(self) -> list[dict[str, Any]]:
        return self._query("select * from runs where status='running'")


def _pid_alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

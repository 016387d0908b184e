"""Run records and lineage: runs, stage runs, the artifacts they used, and the stage cache.

Two backends share one API (:class:`Records`) and one set of queries:

* **SQLite** (the default, ``<store>/records.db``) in WAL mode: readers work while one writer
  commits; writers take the lock with ``BEGIN IMMEDIATE`` and wait (busy timeout, then
  retries with backoff) instead of failing with "database is locked". Many processes of one
  machine may run pipelines on one project at once.
* **PostgreSQL** (``DUCTWORK_DATABASE_URL=postgresql://…``, see :mod:`.records_pg`): runners
  on several machines share one database; JSON columns are ``jsonb``; serialization failures
  and deadlocks are retried with backoff.

Whatever the backend, a stage run, its lineage rows (``stage_run_io``), the manifests of the
artifacts it wrote and its stage-cache entry are committed in ONE transaction, so a reader
never sees a cache entry without its lineage. JSON columns are returned as JSON text on both
backends (callers ``json.loads`` them). The schema is versioned: :data:`MIGRATIONS` is applied
in order, each in the transaction that records it in ``schema_migrations``.
"""

from __future__ import annotations

import json
import os
import random
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from ductwork.core.locks import FileStageLocks, NoStageLocks, StageLocks
from ductwork.errors import StoreError, UsageError

T = TypeVar("T")


@dataclass(frozen=True)
class Migration:
    """One step of the schema. Its statements run in one transaction with its record row."""

    version: int
    name: str
    sqlite: tuple[str, ...]
    postgresql: tuple[str, ...]


def _v1(real: str, integer: str, json_type: str) -> tuple[str, ...]:
    """The first schema (what ``meta.schema_version = 1`` databases already have)."""
    return (
        "create table if not exists meta (key text primary key, value text not null)",
        f"""create table if not exists runs (
            run_id text primary key,
            pipeline text not null,
            spec_path text,
            status text not null,            -- running | ok | failed | interrupted
            started {real} not null,
            ended {real},
            options {json_type} not null default '{{}}',
            summary {json_type}
        )""",
        "create index if not exists runs_pipeline on runs(pipeline, started)",
        f"""create table if not exists stage_runs (
            run_id text not null references runs(run_id) on delete cascade,
            stage text not null,
            kind text not null,
            status text not null,            -- ok | cached | failed | skipped | saved
            fingerprint text,
            components {json_type},
            started {real},
            ended {real},
            duration_s {real},
            rows_in {integer},
            rows_out {integer},
            metrics {json_type},
            error text,
            primary key (run_id, stage)
        )""",
        "create index if not exists stage_runs_stage on stage_runs(stage, ended)",
        "create index if not exists stage_runs_fp on stage_runs(fingerprint)",
        f"""create table if not exists artifacts (   -- the manifest of each artifact (first producer)
            sha256 text primary key,
            type text not null,
            rows {integer},
            bytes {integer},
            schema {json_type},
            stage text,
            run_id text,
            fingerprint text,
            created {real} not null
        )""",
        """create table if not exists stage_run_io (
            run_id text not null,
            stage text not null,
            direction text not null,         -- in | out
            name text not null,
            sha256 text not null,
            primary key (run_id, stage, direction, name)
        )""",
        "create index if not exists stage_run_io_sha on stage_run_io(sha256, direction)",
        f"""create table if not exists stage_cache (
            fingerprint text primary key,
            stage text not null,
            run_id text not null,
            entry {json_type} not null,      -- outputs (sha, type, rows, bytes, schema), metrics
            created {real} not null
        )""",
    )


# The ordered schema history. Append only: never edit a released step, add the next one.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "runs, stage runs, manifests, lineage, stage cache",
        sqlite=_v1("real", "integer", "text"),
        postgresql=_v1("double precision", "bigint", "jsonb"),
    ),
    Migration(
        2,
        "runs.host: the machine a run ran on (several runners can share one database)",
        sqlite=("alter table runs add column host text",),
        postgresql=("alter table runs add column if not exists host text",),
    ),
)
SCHEMA_VERSION = MIGRATIONS[-1].version

MIGRATIONS_TABLE = (
    "create table if not exists schema_migrations ("
    " version integer primary key, name text not null, applied {real} not null)"
)


def pending_migrations(current: int, where: str) -> list[Migration]:
    """The steps after ``current``; a database newer than this code is an error."""
    if current > SCHEMA_VERSION:
        msg = (
            f"the run records in {where} have schema version {current}, newer than this "
            f"ductwork knows (up to {SCHEMA_VERSION})"
        )
        raise StoreError(
            msg,
            hint="Upgrade ductwork (pip install -U ductwork) wherever this database is used.",
        )
    return [m for m in MIGRATIONS if m.version > current]


class Tx(Protocol):
    """What a write sees: statements with ``?`` placeholders, inside one transaction."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any: ...

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> Any: ...


class Backend(Protocol):
    """A database behind :class:`Records`: connections, transactions, retries, migrations."""

    dialect: str  # "sqlite" | "postgresql"
    where: str  # for messages: the file, or the URL with its password masked

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]: ...

    def write(self, fn: Callable[[Tx], Any]) -> None: ...

    def migrate(self) -> None: ...

    def claim_run(self, run_id: str) -> None:
        """Mark ``run_id`` as owned by this live process (before its row exists)."""
        ...

    def release_run(self, run_id: str) -> None: ...

    def run_is_live(self, run: Mapping[str, Any]) -> bool:
        """Whether the process of a run still 'running' is alive (True when unknowable)."""
        ...

    def stage_locks(self) -> StageLocks: ...

    def close(self) -> None: ...


def is_postgres_url(url: str) -> bool:
    scheme = url.split(":", 1)[0].lower()
    return scheme in ("postgresql", "postgres") or scheme.startswith("postgresql+")


def open_records(url: str | None, *, default: Path, base_dir: Path) -> Records:
    """The records named by ``DUCTWORK_DATABASE_URL`` (unset: the SQLite file ``default``).

    ``sqlite:///relative.db`` is relative to ``base_dir`` (the project), ``sqlite:////abs.db``
    absolute; ``postgresql://user:password@host:5432/db`` is PostgreSQL.
    """
    if url is None:
        return Records(default)
    if url.startswith("sqlite:///"):
        db = Path(url.removeprefix("sqlite:///"))
        return Records(db if db.is_absolute() else base_dir / db)
    if is_postgres_url(url):
        return Records(url)
    scheme = url.split(":", 1)[0] if ":" in url else url[:20]
    msg = f"run records in '{scheme}' databases are not supported"
    raise UsageError(
        msg,
        hint="Set DUCTWORK_DATABASE_URL to postgresql://user:password@host:5432/db or "
        "sqlite:///file.db, or leave it unset (records.db in the store).",
    )


class Records:
    """Access to the run records: a SQLite file, or a ``postgresql://`` URL."""

    def __init__(self, location: str | Path, *, busy_timeout_s: float = 60.0) -> None:
        self.path: Path | None
        self.backend: Backend
        if isinstance(location, str) and is_postgres_url(location):
            from ductwork.core.records_pg import PostgresBackend

            self.path = None
            self.backend = PostgresBackend(location)
        else:
            self.path = Path(location)
            self.backend = SQLiteBackend(self.path, busy_timeout_s=busy_timeout_s)
        try:
            self.backend.migrate()
        except BaseException:
            self.backend.close()
            raise

    @property
    def where(self) -> str:
        """The database, for messages (passwords masked)."""
        return self.backend.where

    def close(self) -> None:
        self.backend.close()

    def stage_locks(self) -> StageLocks:
        """Per-fingerprint locks shared by every runner of these records (see ``locks``)."""
        return self.backend.stage_locks()

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        return self.backend.query(sql, params)

    def _write(self, fn: Callable[[Tx], Any]) -> None:
        self.backend.write(fn)

    # -- runs -------------------------------------------------------------------------------
    def start_run(
        self, run_id: str, pipeline: str, spec_path: str | None, options: Mapping[str, Any]
    ) -> None:
        self.backend.claim_run(run_id)
        self._write(
            lambda c: c.execute(
                "insert into runs(run_id, pipeline, spec_path, status, started, options, host)"
                " values (?,?,?,?,?,?,?) on conflict (run_id) do nothing",  # a retried commit
                (
                    run_id,
                    pipeline,
                    spec_path,
                    "running",
                    time.time(),
                    _dumps(options),
                    _HOST,
                ),
            )
        )

    def finish_run(self, run_id: str, status: str, summary: Mapping[str, Any]) -> None:
        self._write(
            lambda c: c.execute(
                "update runs set status=?, ended=?, summary=? where run_id=?",
                (status, time.time(), _dumps(summary), run_id),
            )
        )
        self.backend.release_run(run_id)

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
        now = time.time()
        io_rows = [
            (run_id, stage, direction, name, art["sha256"])
            for direction, items in (("in", inputs), ("out", outputs))
            for name, art in sorted(items.items())
        ]
        manifests = [
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
            )
            for _, art in sorted(outputs.items(), key=lambda kv: str(kv[1]["sha256"]))
        ]

        def write(c: Tx) -> None:
            c.execute(
                "insert into stage_runs(run_id, stage, kind, status, fingerprint, components,"
                " started, ended, duration_s, rows_in, rows_out, metrics, error)"
                " values (?,?,?,?,?,?,?,?,?,?,?,?,?)"
                " on conflict (run_id, stage) do update set kind=excluded.kind,"
                " status=excluded.status, fingerprint=excluded.fingerprint,"
                " components=excluded.components, started=excluded.started,"
                " ended=excluded.ended, duration_s=excluded.duration_s,"
                " rows_in=excluded.rows_in, rows_out=excluded.rows_out,"
                " metrics=excluded.metrics, error=excluded.error",
                (
                    run_id,
                    stage,
                    kind,
                    status,
                    fingerprint,
                    _dumps(components) if components is not None else None,
                    started,
                    ended,
                    duration,
                    rows_in,
                    rows_out,
                    _dumps(metrics) if metrics else None,
                    error,
                ),
            )
            if cache_entry is not None:
                c.execute(
                    "insert into stage_cache(fingerprint, stage, run_id, entry, created)"
                    " values (?,?,?,?,?) on conflict (fingerprint) do update set"
                    " stage=excluded.stage, run_id=excluded.run_id, entry=excluded.entry,"
                    " created=excluded.created",
                    (cache_entry["fingerprint"], stage, run_id, _dumps(cache_entry), now),
                )
            if io_rows:
                c.executemany(
                    "insert into stage_run_io(run_id, stage, direction, name, sha256)"
                    " values (?,?,?,?,?) on conflict (run_id, stage, direction, name)"
                    " do update set sha256=excluded.sha256",
                    io_rows,
                )
            if manifests:
                c.executemany(
                    "insert into artifacts(sha256, type, rows, bytes, schema, stage, run_id,"
                    " fingerprint, created) values (?,?,?,?,?,?,?,?,?)"
                    " on conflict (sha256) do nothing",
                    manifests,
                )

        self._write(write)

    def mark_interrupted(self) -> int:
        """Runs still 'running' whose process is gone are marked interrupted (best effort)."""
        rows = self._query("select run_id, options, host from runs where status='running'")
        stale = [r["run_id"] for r in rows if not self.backend.run_is_live(r)]
        if stale:
            self._write(
                lambda c: c.executemany(
                    "update runs set status='interrupted' where run_id=? and status='running'",
                    [(s,) for s in stale],
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
            "select * from runs where run_id=? or run_id like ? order by started desc",
            (run_id, f"{run_id}%"),
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
            " (partition by pipeline order by started desc) as n from runs) as latest"
            " where n <= ?)",
            (keep_runs,),
        )
        return {r["sha256"] for r in rows}

    def running_runs(self) -> list[dict[str, Any]]:
        return self._query("select * from runs where status='running'")


_HOST = socket.gethostname()


def _dumps(value: Any) -> str:
    return json.dumps(value, default=str)


def retry_delays(attempts: int) -> Iterable[float]:
    """Backoff between attempts: 10 ms doubling to 1 s, with jitter."""
    delay = 0.01
    for _ in range(attempts - 1):
        yield delay * (1 + random.random())
        delay = min(delay * 2, 1.0)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class SQLiteBackend:
    """A SQLite file in WAL mode. One connection per thread."""

    dialect = "sqlite"

    def __init__(self, path: Path, *, busy_timeout_s: float = 60.0) -> None:
        self.path = path
        self.where = str(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.busy_timeout_s = busy_timeout_s
        self._local = threading.local()

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
        for delay in retry_delays(attempts):
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                text = str(exc)
                if "locked" not in text and "busy" not in text:
                    raise
                time.sleep(delay)
        return fn()

    def write(self, fn: Callable[[Tx], Any], *, immediate: bool = True) -> None:
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

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        conn = self._conn()
        rows = self._retry(lambda: conn.execute(sql, params).fetchall())
        return [dict(r) for r in rows]

    # -- schema -----------------------------------------------------------------------------
    def _version(self) -> int | None:
        """The applied schema version, or None when there is no ``schema_migrations`` yet."""
        try:
            rows = self.query("select max(version) as v from schema_migrations")
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return None
            raise
        return int(rows[0]["v"] or 0)

    def migrate(self) -> None:
        found = self._version()
        if found == SCHEMA_VERSION:
            return
        if found is not None:
            pending_migrations(found, self.where)  # newer than this code: the error

        def upgrade(c: Tx) -> None:
            c.execute(MIGRATIONS_TABLE.format(real="real"))
            current = int(
                c.execute("select coalesce(max(version), 0) from schema_migrations").fetchone()[0]
            )
            if current == 0:  # made before schema_migrations existed: meta says its version
                c.execute(MIGRATIONS[0].sqlite[0])  # the meta table
                legacy = c.execute("select value from meta where key='schema_version'").fetchone()
                adopted = int(legacy[0]) if legacy else 0
                pending_migrations(adopted, self.where)  # newer than this code: the error
                for m in MIGRATIONS[:adopted]:
                    c.execute(
                        "insert into schema_migrations(version, name, applied) values (?,?,?)",
                        (m.version, m.name, time.time()),
                    )
                current = max(current, adopted)
            for m in pending_migrations(current, self.where):
                for statement in m.sqlite:
                    c.execute(statement)
                c.execute(
                    "insert into schema_migrations(version, name, applied) values (?,?,?)",
                    (m.version, m.name, time.time()),
                )
            c.execute(
                "insert into meta(key, value) values ('schema_version', ?)"
                " on conflict (key) do update set value=excluded.value",
                (str(SCHEMA_VERSION),),
            )

        self.write(upgrade)

    # -- runs and locks ---------------------------------------------------------------------
    def claim_run(self, run_id: str) -> None:
        return None  # liveness is the pid in the run's options

    def release_run(self, run_id: str) -> None:
        return None

    def run_is_live(self, run: Mapping[str, Any]) -> bool:
        host = run.get("host")
        if host and host != _HOST:
            return True  # another machine's process: cannot tell, so never steal it
        pid = json.loads(run.get("options") or "{}").get("pid")
        return pid is not None and pid_alive(int(pid))

    def stage_locks(self) -> StageLocks:
        """File locks next to the database (by default ``<store>/locks/``): every runner that
        shares these records shares them, whatever its store's local directory."""
        try:
            import fcntl  # noqa: F401
        except ImportError:  # Windows
            return NoStageLocks()
        return FileStageLocks(self.path.parent / "locks")

"""The PostgreSQL backend of the run records (``DUCTWORK_DATABASE_URL=postgresql://…``).

Runners on several machines can share one database (and one object store): the run records,
lineage and the stage cache are rows there, and :class:`~ductwork.core.locks.PgStageLocks`
keeps two runners from computing the same fingerprint at once.

* psycopg 3 (the ``sql`` extra), imported only when a PostgreSQL URL is used.
* One autocommit connection per thread; each write is one explicit transaction (read
  committed), retried with backoff on serialization failures, deadlocks and lost connections.
* JSON columns are ``jsonb`` but come back as JSON text, exactly like SQLite's, so every caller
  reads both backends the same way.
* Migrations run in one transaction under a transaction-level advisory lock, so runners that
  start together against an empty database create the schema once.
* A run holds a session advisory lock on its id while it runs: another runner (on any
  machine) can tell a live run from one whose process died (see ``run_is_live``).
* The URL's password never reaches a message: errors show :func:`mask_url`'s form.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from ductwork.core.locks import PgStageLocks, StageLocks, advisory_key
from ductwork.core.records import (
    MIGRATIONS_TABLE,
    SCHEMA_VERSION,
    Tx,
    pending_migrations,
    retry_delays,
)
from ductwork.errors import StoreError, import_optional

T = TypeVar("T")

_MIGRATION_LOCK = advisory_key("ductwork:records:migrations")
_ATTEMPTS = 8


def mask_url(url: str) -> str:
    """The URL with its password (if any) replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable database URL>"
    if "@" not in parts.netloc:
        return url
    userinfo, _, host = parts.netloc.rpartition("@")
    user, sep, _ = userinfo.partition(":")
    netloc = f"{user}:***@{host}" if sep else f"{user}@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _driver_url(url: str) -> str:
    """``postgresql+psycopg://`` (SQLAlchemy style) and ``postgres://`` as libpq takes them."""
    scheme, sep, rest = url.partition("://")
    return f"postgresql{sep}{rest}" if scheme.lower() != "postgresql" else url


class PostgresBackend:
    dialect = "postgresql"

    def __init__(self, url: str) -> None:
        feature = "Run records in PostgreSQL (DUCTWORK_DATABASE_URL)"
        self._psycopg: Any = import_optional("psycopg", extra="sql", feature=feature)
        self._url = _driver_url(url)
        self._password = urlsplit(self._url).password or ""
        self.where = mask_url(url)
        self._local = threading.local()
        self._all: list[Any] = []
        self._mutex = threading.Lock()
        self._sql: dict[str, str] = {}
        self._own_runs: set[str] = set()

    # -- connections ------------------------------------------------------------------------
    def _safe(self, exc: BaseException) -> str:
        """An error's text without the password (libpq messages may quote the conninfo)."""
        text = str(exc).strip()
        return text.replace(self._password, "***") if self._password else text

    def connect(self) -> Any:
        """A new autocommit connection whose ``jsonb`` values load as JSON text."""
        psycopg = self._psycopg
        from psycopg.rows import dict_row
        from psycopg.types.string import TextLoader

        kwargs: dict[str, Any] = {"application_name": "ductwork"}
        if "connect_timeout" not in self._url:
            kwargs["connect_timeout"] = 10
        try:
            conn = psycopg.connect(self._url, autocommit=True, row_factory=dict_row, **kwargs)
        except psycopg.Error as exc:
            msg = f"cannot connect to the run records database {self.where}: {self._safe(exc)}"
            raise StoreError(
                msg, hint="Check DUCTWORK_DATABASE_URL and that the server is up."
            ) from None
        conn.adapters.register_loader("jsonb", TextLoader)
        conn.adapters.register_loader("json", TextLoader)
        return conn

    def _conn(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            conn = self.connect()
            self._local.conn = conn
            with self._mutex:
                self._all.append(conn)
        return conn

    def _forget(self) -> None:
        """Drop this thread's connection (broken): the next call opens a new one."""
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def close(self) -> None:
        with self._mutex:
            conns, self._all = self._all, []
        for conn in conns:
            with contextlib.suppress(Exception):
                conn.close()
        self._local = threading.local()

    def _convert(self, sql: str) -> str:
        """``?`` placeholders (the queries are written once, for both backends) to ``%s``."""
        out = self._sql.get(sql)
        if out is None:
            out = self._sql[sql] = sql.replace("%", "%%").replace("?", "%s")
        return out

    def _retry(self, fn: Callable[[Any], T]) -> T:
        """Run ``fn(connection)``; again on serialization failures, deadlocks, lost connections."""
        errors = self._psycopg.errors
        transient = (errors.SerializationFailure, errors.DeadlockDetected)
        last: Exception | None = None
        for delay in [*retry_delays(_ATTEMPTS), 0.0]:
            conn = self._conn()
            try:
                return fn(conn)
            except transient as exc:
                last = exc
            except self._psycopg.OperationalError as exc:
                if not conn.broken:
                    raise self._error(exc) from None
                last = exc
                self._forget()
            except self._psycopg.Error as exc:
                raise self._error(exc) from None
            if delay:
                time.sleep(delay)
        assert last is not None
        raise self._error(last) from None

    def _error(self, exc: BaseException) -> StoreError:
        msg = f"run records database {self.where}: {self._safe(exc)}"
        return StoreError(msg, hint="Check the database server, then run again: it resumes.")

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        statement = self._convert(sql)
        rows: list[dict[str, Any]] = self._retry(
            lambda conn: conn.execute(statement, _params(params)).fetchall()
        )
        return rows

    def write(self, fn: Callable[[Tx], Any]) -> None:
        def attempt(conn: Any) -> None:
            # pipeline mode: the transaction's statements go out without waiting for each
            # answer (one round trip instead of one per statement)
            with conn.pipeline(), conn.transaction():
                fn(_PgTx(conn, self._convert))

        self._retry(attempt)

    # -- schema -----------------------------------------------------------------------------
    def _version(self) -> int | None:
        """The applied schema version, or None when there is no ``schema_migrations`` yet."""
        present = self.query("select to_regclass('schema_migrations') is not null as t")[0]["t"]
        if not present:
            return None
        rows = self.query("select coalesce(max(version), 0) as v from schema_migrations")
        return int(rows[0]["v"])

    def migrate(self) -> None:
        found = self._version()
        if found == SCHEMA_VERSION:
            return
        if found is not None:
            pending_migrations(found, self.where)  # newer than this code: the error

        def upgrade(c: Tx) -> None:
            c.execute("select pg_advisory_xact_lock(?)", (_MIGRATION_LOCK,))
            c.execute(MIGRATIONS_TABLE.format(real="double precision"))
            row = c.execute("select coalesce(max(version), 0) as v from schema_migrations")
            for m in pending_migrations(int(row.fetchone()["v"]), self.where):
                for statement in m.postgresql:
                    c.execute(statement)
                c.execute(
                    "insert into schema_migrations(version, name, applied) values (?,?,?)",
                    (m.version, m.name, time.time()),
                )

        self.write(upgrade)

    # -- runs and locks ---------------------------------------------------------------------
    def claim_run(self, run_id: str) -> None:
        """A session lock on the run id, held (on this thread's connection) while it runs."""
        key = advisory_key(f"ductwork:run:{run_id}")
        self._retry(lambda conn: conn.execute("select pg_advisory_lock(%s)", (key,)))
        self._own_runs.add(run_id)

    def release_run(self, run_id: str) -> None:
        if run_id not in self._own_runs:
            return
        self._own_runs.discard(run_id)
        key = advisory_key(f"ductwork:run:{run_id}")
        with contextlib.suppress(StoreError):  # a lost session released it already
            self._retry(lambda conn: conn.execute("select pg_advisory_unlock(%s)", (key,)))

    def run_is_live(self, run: Mapping[str, Any]) -> bool:
        """A run is live while some session holds its lock (runners die with their session)."""
        run_id = str(run["run_id"])
        if run_id in self._own_runs:
            return True
        key = advisory_key(f"ductwork:run:{run_id}")

        def probe(conn: Any) -> bool:
            got = conn.execute("select pg_try_advisory_lock(%s) as got", (key,)).fetchone()
            if got["got"]:
                conn.execute("select pg_advisory_unlock(%s)", (key,))
            return not got["got"]

        return self._retry(probe)

    def stage_locks(self) -> StageLocks:
        return PgStageLocks(self.connect, self.where)


def _params(params: Sequence[Any]) -> Sequence[Any]:
    """PostgreSQL text cannot hold NUL characters (SQLite can): they are dropped."""
    if any(isinstance(p, str) and "\x00" in p for p in params):
        return [p.replace("\x00", "") if isinstance(p, str) else p for p in params]
    return params


class _PgTx:
    """:class:`~ductwork.core.records.Tx` on a psycopg connection inside a transaction."""

    def __init__(self, conn: Any, convert: Callable[[str], str]) -> None:
        self._conn = conn
        self._convert = convert

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._conn.execute(self._convert(sql), _params(params))

    def executemany(self, sql: str, rows: Any) -> Any:
        cur = self._conn.cursor()
        cur.executemany(self._convert(sql), [_params(r) for r in rows])
        return cur

"""PostgreSQL target: one transaction, rows bulk-loaded with ``COPY … FROM STDIN (FORMAT csv)``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar, cast
from urllib.parse import parse_qsl, urlsplit

from ductwork.connectors.sinks._common import (
    DatabaseTarget,
    Dialect,
    ParquetSource,
    _scrub,
    quote_ident,
    quote_table,
    wire_frame,
)
from ductwork.errors import DataError, DuctworkError, SourceError, import_optional


def host_port(url: str) -> str:
    """``host:port`` of a server URL (defaults as libpq uses them)."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    host = parts.hostname or query.get("host") or "localhost"
    try:
        port = parts.port or int(query.get("port", "5432"))
    except ValueError:
        port = 5432
    return f"{host}:{port}"


class PostgresTarget(DatabaseTarget):
    dialect: ClassVar[Dialect] = "postgres"
    label: ClassVar[str] = "PostgreSQL"

    def __init__(self, url: str, table: str, **kwargs: Any) -> None:
        super().__init__(url, table, **kwargs)
        self._conn: Any = None
        self._psycopg: Any = None

    def _conninfo(self) -> str:
        scheme, rest = self._url.split("://", 1)
        return f"postgresql://{rest}" if "+" in scheme else self._url

    @contextlib.contextmanager
    def _connect(self) -> Iterator[None]:
        psycopg: Any = import_optional("psycopg", extra="sql", feature="loading into PostgreSQL")
        self._psycopg = psycopg
        try:
            conn = psycopg.connect(
                self._conninfo(),
                connect_timeout=max(1, int(self.timeout)),
                application_name="ductwork",
            )
        except psycopg.Error as exc:
            reason = _scrub(
                str(exc).strip().splitlines()[0] if str(exc).strip() else "", self._secrets
            )
            msg = (
                f"cannot connect to PostgreSQL at {host_port(self._url)} ({self.target}): {reason}"
            )
            hint = "Check that the server is running and the URL (host, port, user, password)."
            raise SourceError(msg, hint=hint) from None
        self._conn = conn
        try:
            yield
        finally:
            self._conn = None
            conn.close()

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        cur = self._conn.execute(sql, list(params) or None)
        return list(cur.fetchall()) if cur.description is not None else []

    def _begin(self) -> None:
        return None  # psycopg opens the transaction with the first statement

    def _commit(self) -> None:
        self._conn.commit()

    def _rollback(self) -> None:
        self._conn.rollback()

    def _regclass(self) -> str | None:
        rows = self._rows("SELECT to_regclass(%s)::text", [quote_table(self.table)])
        return cast(str | None, rows[0][0])

    def _columns(self) -> list[str] | None:
        if self._regclass() is None:
            return None
        rows = self._rows(
            "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass "
            "AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            [quote_table(self.table)],
        )
        return [r[0] for r in rows]

    def _lock(self) -> None:
        # Writers wait; readers go on seeing the old rows until the commit.
        self._exec(f"LOCK TABLE {quote_table(self.table)} IN SHARE ROW EXCLUSIVE MODE")

    def _clear(self) -> None:
        self._exec(f"TRUNCATE {quote_table(self.table)}")

    def _has_unique_index(self, key: Sequence[str]) -> bool:
        rows = self._rows(
            "SELECT array_agg(a.attname::text ORDER BY a.attname) FROM pg_index i "
            "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey::int2[]) "
            "WHERE i.indrelid = %s::regclass AND i.indisunique AND i.indpred IS NULL "
            "AND i.indexprs IS NULL GROUP BY i.indexrelid",
            [quote_table(self.table)],
        )
        return any(sorted(r[0]) == sorted(key) for r in rows)

    def _bulk_insert(self, table: str, source: ParquetSource) -> None:
        collist = ", ".join(map(quote_ident, source.columns))
        done = 0
        with (
            self._conn.cursor() as cur,
            cur.copy(f"COPY {table} ({collist}) FROM STDIN (FORMAT csv)") as copy,
        ):
            for batch in source.batches(self.batch_rows):
                # Nulls are unquoted empty fields; empty strings are written quoted ("").
                copy.write(wire_frame(batch, "postgres").write_csv(include_header=False).encode())
                done += batch.height
                self.progress(done, source.rows, "rows")

    def _classify(self, exc: Exception) -> type[DuctworkError] | None:
        psycopg = self._psycopg
        if psycopg is None or not isinstance(exc, psycopg.Error):
            return None
        if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
            return SourceError
        return DataError

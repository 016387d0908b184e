"""SQLite target: one ``BEGIN IMMEDIATE`` transaction, rows bulk-loaded with ``executemany``."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

from ductwork.connectors.sinks._common import (
    DatabaseTarget,
    Dialect,
    ParquetSource,
    quote_ident,
    wire_frame,
)
from ductwork.errors import DataError, DuctworkError, SourceError


class SQLiteTarget(DatabaseTarget):
    dialect: ClassVar[Dialect] = "sqlite"
    label: ClassVar[str] = "SQLite"

    def __init__(self, url: str, table: str, *, path: Path, **kwargs: Any) -> None:
        super().__init__(url, table, **kwargs)
        self.path = path
        self._conn: sqlite3.Connection | None = None

    @contextlib.contextmanager
    def _connect(self) -> Iterator[None]:
        try:
            if str(self.path) != ":memory:":
                self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
        except (sqlite3.Error, OSError) as exc:
            msg = f"cannot open SQLite database {self.path}: {exc}"
            raise SourceError(msg) from None
        self._conn = conn
        try:
            yield
        finally:
            self._conn = None
            conn.close()

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:  # pragma: no cover - only reachable through a bug here
            msg = "not connected"
            raise RuntimeError(msg)
        return self._conn

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self.conn.execute(sql, tuple(params)).fetchall()

    def _begin(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def _commit(self) -> None:
        self.conn.execute("COMMIT")

    def _rollback(self) -> None:
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")

    def _pragma(self, pragma: str, arg: str) -> list[tuple[Any, ...]]:
        schema, _, name = self.table.rpartition(".")
        prefix = f"{quote_ident(schema)}." if schema else ""
        return self._rows(f"PRAGMA {prefix}{pragma}({quote_ident(arg or name)})")

    def _columns(self) -> list[str] | None:
        info = self._pragma("table_info", "")
        return [row[1] for row in info] if info else None

    def _has_unique_index(self, key: Sequence[str]) -> bool:
        wanted = set(key)
        pk = {row[1] for row in self._pragma("table_info", "") if row[5]}
        if pk == wanted:
            return True
        for _seq, name, unique, _origin, partial in self._pragma("index_list", ""):
            if unique and not partial:
                cols = {row[2] for row in self._pragma("index_info", name)}
                if cols == wanted:
                    return True
        return False

    def _create_index_sql(self, name: str, key: Sequence[str]) -> str:
        schema, _, table = self.table.rpartition(".")
        qualified = f"{quote_ident(schema)}.{quote_ident(name)}" if schema else quote_ident(name)
        cols = ", ".join(map(quote_ident, key))
        return f"CREATE UNIQUE INDEX {qualified} ON {quote_ident(table)} ({cols})"

    def _bulk_insert(self, table: str, source: ParquetSource) -> None:
        collist = ", ".join(map(quote_ident, source.columns))
        marks = ", ".join("?" * len(source.columns))
        insert = f"INSERT INTO {table} ({collist}) VALUES ({marks})"
        done = 0
        for batch in source.batches(self.batch_rows):
            try:
                # streamed rows: building a list of tuples first is ~25% slower
                self.conn.executemany(insert, wire_frame(batch, "sqlite").iter_rows())
            except OverflowError as exc:
                msg = f"a value does not fit SQLite's 64-bit integers ({exc}) near input row {done}"
                raise DataError(msg) from None
            done += batch.height
            self.progress(done, source.rows, "rows")

    def _classify(self, exc: Exception) -> type[DuctworkError] | None:
        if isinstance(exc, sqlite3.OperationalError):
            text = str(exc)
            if "locked" in text or "unable to open" in text or "disk" in text:
                return SourceError
            return DataError
        if isinstance(exc, sqlite3.Error):
            return DataError
        return None

"""DuckDB target: one transaction; the Parquet input is scanned as a registered Arrow dataset."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

from ductwork.connectors.sinks._common import DatabaseTarget, Dialect, ParquetSource, quote_ident
from ductwork.errors import DataError, DuctworkError, SourceError, import_optional


class DuckDBTarget(DatabaseTarget):
    dialect: ClassVar[Dialect] = "duckdb"
    label: ClassVar[str] = "DuckDB"

    def __init__(self, url: str, table: str, *, path: Path, **kwargs: Any) -> None:
        super().__init__(url, table, **kwargs)
        self.path = path
        self._con: Any = None
        self._duckdb: Any = None

    @contextlib.contextmanager
    def _connect(self) -> Iterator[None]:
        duckdb: Any = import_optional("duckdb", extra="duckdb", feature="loading into DuckDB")
        self._duckdb = duckdb
        try:
            if str(self.path) != ":memory:":
                self.path.parent.mkdir(parents=True, exist_ok=True)
            con = duckdb.connect(str(self.path))
        except (duckdb.Error, OSError) as exc:
            msg = f"cannot open DuckDB database {self.path}: {exc}"
            raise SourceError(msg) from None
        self._con = con
        try:
            yield
        finally:
            self._con = None
            con.close()

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = self._con.execute(sql, list(params)).fetchall()
        return rows

    def _begin(self) -> None:
        self._con.begin()

    def _commit(self) -> None:
        self._con.commit()

    def _rollback(self) -> None:
        self._con.rollback()

    def _schema_and_name(self) -> tuple[str | None, str]:
        schema, _, name = self.table.rpartition(".")
        return (schema or None), name

    def _columns(self) -> list[str] | None:
        schema, name = self._schema_and_name()
        rows = self._rows(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = coalesce(?, current_schema()) AND table_name = ? "
            "ORDER BY ordinal_position",
            [schema, name],
        )
        return [r[0] for r in rows] if rows else None

    def _has_unique_index(self, key: Sequence[str]) -> bool:
        schema, name = self._schema_and_name()
        rows = self._rows(
            "SELECT constraint_column_names FROM duckdb_constraints() "
            "WHERE schema_name = coalesce(?, current_schema()) AND table_name = ? "
            "AND constraint_type IN ('PRIMARY KEY', 'UNIQUE')",
            [schema, name],
        )
        if any(set(r[0]) == set(key) for r in rows):
            return True
        ours = self._rows(
            "SELECT 1 FROM duckdb_indexes() WHERE schema_name = coalesce(?, current_schema()) "
            "AND table_name = ? AND index_name = ? AND is_unique",
            [schema, name, self._index_name(key)],
        )
        return bool(ours)

    def _bulk_insert(self, table: str, source: ParquetSource) -> None:
        import pyarrow.dataset as pads

        view = quote_ident(f"_dw_src_{uuid.uuid4().hex[:12]}")
        collist = ", ".join(map(quote_ident, source.columns))
        # DuckDB scans the registered Arrow dataset itself, batch by batch.
        self._con.register(view.strip('"'), pads.dataset(str(source.path), format="parquet"))
        try:
            self._exec(f"INSERT INTO {table} ({collist}) SELECT {collist} FROM {view}")
        finally:
            self._con.unregister(view.strip('"'))
        self.progress(source.rows, source.rows, "rows")

    def _classify(self, exc: Exception) -> type[DuctworkError] | None:
        duckdb = self._duckdb
        if duckdb is None or not isinstance(exc, duckdb.Error):
            return None
        if isinstance(exc, duckdb.IOException | duckdb.ConnectionException):
            return SourceError
        return DataError

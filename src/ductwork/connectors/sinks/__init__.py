"""Writers used by the ``load`` stage: files written atomically, databases loaded in one transaction.

Files (:mod:`.files`): a table is written to a temporary file beside the target, fsynced and
renamed over it; a partitioned set is written to a temporary directory and swapped in whole.

Databases (:mod:`.sqlite`, :mod:`.postgres`, :mod:`.duckdb`, on the shared
:class:`DatabaseTarget` of :mod:`._common`): everything happens inside one transaction, so a
failure anywhere (a constraint, a bad value, a dropped connection, a killed process) leaves the
target as it was. ``replace`` and plain ``append`` bulk-load straight into the table
(PostgreSQL: ``COPY``; SQLite: ``executemany``; DuckDB: the Parquet input registered as an Arrow
dataset); ``upsert`` and ``append`` with ``dedupe_on`` bulk-load a temporary staging table and
merge it with one ``INSERT … SELECT`` (``ON CONFLICT (key) DO UPDATE`` / ``WHERE NOT EXISTS``).

Identifiers are always quoted and table names validated; values are never interpolated into SQL.
URLs may carry passwords: only :func:`redact_url` forms of them appear in messages and receipts.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ductwork.connectors.sinks._common import (
    MAX_IDENTIFIER_BYTES,
    Compression,
    DatabaseTarget,
    Dialect,
    FileFormat,
    LoadResult,
    Mode,
    ParquetSource,
    ProgressFn,
    _scrub,
    _url_secrets,
    check_column_names,
    file_db_path,
    quote_ident,
    quote_table,
    redact_url,
    sql_type,
    url_dialect,
    validate_table_name,
)
from ductwork.connectors.sinks.duckdb import DuckDBTarget
from ductwork.connectors.sinks.files import (
    FileResult,
    is_remote,
    swap_in_dir,
    upload,
    write_file,
    write_partitioned,
)
from ductwork.connectors.sinks.postgres import PostgresTarget, host_port
from ductwork.connectors.sinks.sqlite import SQLiteTarget
from ductwork.errors import DataError

__all__ = [
    "MAX_IDENTIFIER_BYTES",
    "Compression",
    "DatabaseTarget",
    "Dialect",
    "DuckDBTarget",
    "FileFormat",
    "FileResult",
    "LoadResult",
    "Mode",
    "ParquetSource",
    "PostgresTarget",
    "ProgressFn",
    "SQLiteTarget",
    "_scrub",
    "_url_secrets",
    "check_column_names",
    "database_target",
    "file_db_path",
    "host_port",
    "is_remote",
    "quote_ident",
    "quote_table",
    "redact_url",
    "sql_type",
    "swap_in_dir",
    "upload",
    "url_dialect",
    "validate_table_name",
    "write_file",
    "write_partitioned",
]


def database_target(
    url: str,
    table: str,
    *,
    resolve: Callable[[str], Path],
    batch_rows: int = 50_000,
    timeout: float = 10.0,
    progress: ProgressFn | None = None,
) -> DatabaseTarget:
    """The target for a database URL; file databases are resolved with ``resolve``."""
    dialect = url_dialect(url)
    kwargs: dict[str, Any] = {"batch_rows": batch_rows, "timeout": timeout, "progress": progress}
    if dialect == "postgres":
        return PostgresTarget(url, table, **kwargs)
    if dialect in ("sqlite", "duckdb"):
        raw = file_db_path(url)
        path = Path(raw) if raw == ":memory:" else resolve(raw)
        cls: type[SQLiteTarget | DuckDBTarget] = (
            SQLiteTarget if dialect == "sqlite" else DuckDBTarget
        )
        return cls(url, table, path=path, **kwargs)
    msg = (
        f"unsupported database URL '{redact_url(url)}': use sqlite:///, postgresql:// or duckdb:///"
    )
    raise DataError(msg)

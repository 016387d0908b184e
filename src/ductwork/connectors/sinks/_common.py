"""Shared by the load sinks: URL redaction, identifiers, SQL types, the input, ``DatabaseTarget``.

Identifiers are always quoted and table names validated; values are never interpolated into SQL.
URLs may carry passwords: only :func:`redact_url` forms of them appear in messages and receipts.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, cast
from urllib.parse import unquote, urlsplit, urlunsplit

import polars as pl

from ductwork.errors import DataError, DuctworkError, did_you_mean

Dialect = Literal["sqlite", "postgres", "duckdb"]
FileFormat = Literal["parquet", "csv"]
Mode = Literal["replace", "append", "upsert"]
Compression = Literal["zstd", "snappy", "lz4", "gzip", "uncompressed"]
ProgressFn = Callable[[float, float | None, str], None]

# --- URLs ---------------------------------------------------------------------------------------

_SCHEMES: dict[str, Dialect] = {
    "sqlite": "sqlite",
    "postgres": "postgres",
    "postgresql": "postgres",
    "duckdb": "duckdb",
}
_SECRET_QUERY_KEY = re.compile(r"pass|pwd|secret|token|key", re.IGNORECASE)


def url_dialect(url: str) -> Dialect | None:
    """The database a URL points at, from its scheme (``postgresql+psycopg`` counts as postgres)."""
    scheme = url.split("://", 1)[0].split("+", 1)[0].lower() if "://" in url else ""
    return _SCHEMES.get(scheme)


def _query_pairs(query: str) -> list[tuple[str, str]]:
    """``k=v`` pairs of a query string, as written (still percent-encoded)."""
    return [(k, v) for k, _, v in (p.partition("=") for p in query.split("&") if p)]


def _url_secrets(url: str) -> list[str]:
    """Password-like substrings of a URL (as written and decoded), to scrub from messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return []
    userinfo, at, _ = parts.netloc.rpartition("@")
    found = [userinfo.partition(":")[2]] if at else []
    found += [v for k, v in _query_pairs(parts.query) if _SECRET_QUERY_KEY.search(k)]
    found += [unquote(v) for v in found]
    return sorted({v for v in found if v}, key=len, reverse=True)


def redact_url(url: str) -> str:
    """The URL with its password (and password-like query values) replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable url>"
    if not _url_secrets(url):
        return url
    netloc = parts.netloc
    userinfo, at, hostport = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = f"{userinfo.partition(':')[0]}:***@{hostport}"
    query = "&".join(
        f"{k}={'***' if _SECRET_QUERY_KEY.search(k) else v}" for k, v in _query_pairs(parts.query)
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _scrub(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def file_db_path(url: str) -> str:
    """The file of ``sqlite:///rel.db`` / ``duckdb:////abs/x.duckdb`` (SQLAlchemy's convention)."""
    rest = url.split("://", 1)[1]
    if not rest.startswith("/"):
        msg = f"'{redact_url(url)}' is not a file database URL; write sqlite:///path/to/file.db"
        raise DataError(msg)
    path = rest[1:].split("?", 1)[0]
    if not path:
        msg = f"'{redact_url(url)}' names no database file"
        raise DataError(msg)
    return path


# --- identifiers and SQL types ------------------------------------------------------------------

_TABLE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")
MAX_IDENTIFIER_BYTES = 63  # PostgreSQL truncates longer names silently


def validate_table_name(name: str) -> str:
    if not _TABLE_RE.match(name) or any(len(p) > MAX_IDENTIFIER_BYTES for p in name.split(".")):
        msg = (
            f"invalid table name {name!r}: use letters, digits and '_' (not starting with a digit), "
            f"at most {MAX_IDENTIFIER_BYTES} characters, optionally as schema.table"
        )
        raise ValueError(msg)
    return name


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_table(name: str) -> str:
    return ".".join(quote_ident(p) for p in name.split("."))


def check_column_names(columns: Sequence[str], dialect: Dialect) -> None:
    for col in columns:
        if not col or "\x00" in col:
            msg = f"column name {col!r} cannot be used in a database table; rename it first"
            raise DataError(msg)
        if dialect == "postgres" and len(col.encode()) > MAX_IDENTIFIER_BYTES:
            msg = (
                f"column name '{col}' is longer than PostgreSQL's {MAX_IDENTIFIER_BYTES} bytes "
                "and would be truncated; rename it in a transform first"
            )
            raise DataError(msg)
    seen: dict[str, str] = {}
    for col in columns:
        folded = col.lower() if dialect == "sqlite" else col
        if folded in seen:
            msg = f"columns '{seen[folded]}' and '{col}' clash in {dialect} (names are case-insensitive)"
            raise DataError(msg)
        seen[folded] = col


# Polars dtype -> (PostgreSQL, DuckDB, SQLite) column type. In SQLite the declared type only
# picks the column affinity: dates and times are stored as ISO-8601 text, durations as integer
# microseconds, booleans as 0/1, decimals as NUMERIC (REAL/INTEGER: not exact past 15 digits).
_TYPES: dict[type[pl.DataType], tuple[str, str, str]] = {
    pl.Int8: ("SMALLINT", "TINYINT", "INTEGER"),
    pl.Int16: ("SMALLINT", "SMALLINT", "INTEGER"),
    pl.Int32: ("INTEGER", "INTEGER", "INTEGER"),
    pl.Int64: ("BIGINT", "BIGINT", "INTEGER"),
    pl.Int128: ("NUMERIC(39,0)", "HUGEINT", "INTEGER"),
    pl.UInt8: ("SMALLINT", "UTINYINT", "INTEGER"),
    pl.UInt16: ("INTEGER", "USMALLINT", "INTEGER"),
    pl.UInt32: ("BIGINT", "UINTEGER", "INTEGER"),
    pl.UInt64: ("NUMERIC(20,0)", "UBIGINT", "INTEGER"),
    pl.Float32: ("REAL", "FLOAT", "REAL"),
    pl.Float64: ("DOUBLE PRECISION", "DOUBLE", "REAL"),
    pl.String: ("TEXT", "VARCHAR", "TEXT"),
    pl.Categorical: ("TEXT", "VARCHAR", "TEXT"),
    pl.Enum: ("TEXT", "VARCHAR", "TEXT"),
    pl.Null: ("TEXT", "VARCHAR", "TEXT"),
    pl.Boolean: ("BOOLEAN", "BOOLEAN", "BOOLEAN"),
    pl.Date: ("DATE", "DATE", "DATE"),
    pl.Time: ("TIME", "TIME", "TIME"),
    pl.Binary: ("BYTEA", "BLOB", "BLOB"),
    pl.Duration: ("INTERVAL", "INTERVAL", "INTEGER"),
}
_DIALECTS: tuple[Dialect, ...] = ("postgres", "duckdb", "sqlite")


def sql_type(dtype: pl.DataType, dialect: Dialect, column: str) -> str:
    """The SQL column type a Polars dtype is stored as in ``dialect``."""
    i = _DIALECTS.index(dialect)
    if isinstance(dtype, pl.Decimal):
        return "NUMERIC" if dialect == "sqlite" else f"NUMERIC({dtype.precision},{dtype.scale})"
    if isinstance(dtype, pl.Datetime):
        if dialect == "sqlite":
            return "TIMESTAMP"
        return "TIMESTAMPTZ" if dtype.time_zone else "TIMESTAMP"
    types = _TYPES.get(dtype.base_type())
    if types is None:
        msg = f"column '{column}' has dtype {dtype}, which has no {dialect} column type"
        hint = "Drop it or turn it into a string or number in a transform before the load."
        raise DataError(msg, hint=hint)
    return types[i]


# --- the input ----------------------------------------------------------------------------------


# inputs up to this size are read in one go (Polars' multi-threaded reader), larger ones in
# batches so that memory stays bounded whatever the input size
_READ_WHOLE_BYTES = 256 << 20


@dataclass(frozen=True)
class ParquetSource:
    """The load's input: a Parquet file, read in batches when it is large."""

    path: Path
    schema: pl.Schema
    rows: int

    @classmethod
    def open(cls, path: str | Path) -> ParquetSource:
        lf = pl.scan_parquet(path)
        rows = int(lf.select(pl.len()).collect().item())
        return cls(Path(path), lf.collect_schema(), rows)

    @property
    def columns(self) -> list[str]:
        return self.schema.names()

    def lazy(self) -> pl.LazyFrame:
        return pl.scan_parquet(self.path)

    def batches(self, rows: int) -> Iterator[pl.DataFrame]:
        if self.path.stat().st_size <= _READ_WHOLE_BYTES:
            yield from pl.read_parquet(self.path).iter_slices(rows)
            return
        import pyarrow.parquet as pq

        with pq.ParquetFile(self.path) as f:
            for batch in f.iter_batches(batch_size=rows):
                yield cast(pl.DataFrame, pl.from_arrow(batch))

    def check_key(self, key: Sequence[str], what: str) -> None:
        """Key columns must be non-null and unique in the input (else re-runs duplicate rows)."""
        lf = self.lazy()
        nulls = lf.select(pl.any_horizontal(pl.col(key).is_null()).sum()).collect().item()
        if nulls:
            msg = f"{what} columns ({', '.join(key)}) are null in {nulls} input row(s)"
            hint = "Fill or drop those rows first (fill_null / drop_nulls ops in a transform)."
            raise DataError(msg, hint=hint)
        dup = lf.group_by(key).agg(pl.len()).filter(pl.col("len") > 1).head(1).collect()
        if dup.height:
            row = dup.row(0, named=True)
            example = ", ".join(f"{k}={row[k]!r}" for k in key)
            msg = f"{what} ({', '.join(key)}) is not unique in the input: {row['len']} rows have {example}"
            hint = "Dedupe the input first (a transform with `dedupe: {subset: [...]}`)."
            raise DataError(msg, hint=hint)


def wire_frame(df: pl.DataFrame, dialect: Literal["sqlite", "postgres"]) -> pl.DataFrame:
    """``df`` with every column as the row loader of ``dialect`` sends it.

    Both: datetimes and times as ISO-8601 text, categoricals as strings. SQLite (``executemany``):
    dates as text, durations as integer microseconds, decimals as text. PostgreSQL (``COPY``
    csv): durations as ``N microseconds`` intervals, binary as ``\\x`` hex.
    """
    exprs = []
    for name, dtype in df.schema.items():
        col = pl.col(name)
        if isinstance(dtype, pl.Datetime):
            fmt = "%Y-%m-%d %H:%M:%S%.f" + ("%:z" if dtype.time_zone else "")
            col = col.dt.to_string(fmt)
        elif dtype == pl.Time:
            col = col.dt.to_string("%H:%M:%S%.f")
        elif isinstance(dtype, pl.Duration):
            col = col.dt.total_microseconds()
            if dialect == "postgres":
                col = pl.format("{} microseconds", col)
        elif isinstance(dtype, pl.Categorical | pl.Enum) or (
            dialect == "sqlite" and isinstance(dtype, pl.Decimal)
        ):
            col = col.cast(pl.String)
        elif dialect == "sqlite" and dtype == pl.Date:
            col = col.dt.to_string("%Y-%m-%d")
        elif dialect == "postgres" and dtype == pl.Binary:
            col = pl.concat_str(pl.lit("\\x"), col.bin.encode("hex"))
        exprs.append(col.alias(name))
    return df.select(exprs)


# --- databases ----------------------------------------------------------------------------------


@dataclass
class LoadResult:
    rows_in: int
    rows_inserted: int
    rows_updated: int
    rows_skipped: int
    rows_in_target_after: int
    created: bool

    @property
    def rows_written(self) -> int:
        return self.rows_inserted + self.rows_updated


class DatabaseTarget(ABC):
    """A table in a database, loaded in one transaction."""

    dialect: ClassVar[Dialect]
    label: ClassVar[str]

    def __init__(
        self,
        url: str,
        table: str,
        *,
        batch_rows: int = 50_000,
        timeout: float = 10.0,
        progress: ProgressFn | None = None,
    ) -> None:
        self._url = url
        self.table = validate_table_name(table)
        self.batch_rows = batch_rows
        self.timeout = timeout
        self.progress: ProgressFn = progress or (lambda done, total, unit: None)
        self.target = redact_url(url)
        self._secrets = _url_secrets(url)

    # -- dialect hooks --------------------------------------------------------------------
    @abstractmethod
    def _connect(self) -> contextlib.AbstractContextManager[None]: ...

    @abstractmethod
    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...

    @abstractmethod
    def _begin(self) -> None: ...

    @abstractmethod
    def _commit(self) -> None: ...

    @abstractmethod
    def _rollback(self) -> None: ...

    @abstractmethod
    def _columns(self) -> list[str] | None:
        """The target table's columns in order, or None when it does not exist."""

    @abstractmethod
    def _has_unique_index(self, key: Sequence[str]) -> bool: ...

    @abstractmethod
    def _bulk_insert(self, table: str, source: ParquetSource) -> None:
        """Bulk-load the input into ``table`` (quoted; the target or a staging table)."""

    @abstractmethod
    def _classify(self, exc: Exception) -> type[DuctworkError] | None:
        """DataError for bad data/constraints, SourceError for the server; None = not ours."""

    def _lock(self) -> None:
        return None

    def _clear(self) -> None:
        self._exec(f"DELETE FROM {quote_table(self.table)}")

    def _create_index_sql(self, name: str, key: Sequence[str]) -> str:
        cols = ", ".join(map(quote_ident, key))
        return f"CREATE UNIQUE INDEX {quote_ident(name)} ON {quote_table(self.table)} ({cols})"

    # -- shared ---------------------------------------------------------------------------
    def _exec(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._rows(sql, params)

    def _count(self) -> int:
        return int(self._rows(f"SELECT count(*) FROM {quote_table(self.table)}")[0][0])

    def _where(self) -> str:
        return f"table '{self.table}' in {self.label} {self.target}"

    def create_table_sql(self, name: str, schema: pl.Schema, *, temporary: bool = False) -> str:
        """CREATE [TEMP] TABLE for ``schema``; ``name`` is already quoted."""
        cols = ", ".join(
            f"{quote_ident(col)} {sql_type(dtype, self.dialect, col)}"
            for col, dtype in schema.items()
        )
        temp = "TEMP " if temporary else ""
        tail = " ON COMMIT DROP" if temporary and self.dialect == "postgres" else ""
        return f"CREATE {temp}TABLE {name} ({cols}){tail}"

    def _index_name(self, key: Sequence[str]) -> str:
        base = re.sub(r"\W", "_", f"{self.table.split('.')[-1]}_{'_'.join(key)}_dw_key")
        if len(base) > MAX_IDENTIFIER_BYTES:
            digest = hashlib.sha256(base.encode()).hexdigest()[:8]
            base = f"{base[: MAX_IDENTIFIER_BYTES - 9]}_{digest}"
        return base

    def _add_unique_index(self, key: Sequence[str]) -> None:
        """ON CONFLICT (key) needs a unique index on exactly the key columns."""
        try:
            self._exec(self._create_index_sql(self._index_name(key), key))
        except Exception as exc:
            if self._classify(exc) is None:
                raise
            detail = _scrub(str(exc).strip().splitlines()[0], self._secrets)
            msg = (
                f"cannot add a unique index on ({', '.join(key)}) to {self._where()}, which "
                f"upsert needs: {detail}; the table was left unchanged"
            )
            hint = "The table already holds duplicate keys: dedupe it, or load with mode: replace."
            raise DataError(msg, hint=hint) from None

    def load(
        self,
        source: ParquetSource,
        mode: Mode,
        *,
        key: Sequence[str] = (),
        dedupe_on: Sequence[str] = (),
    ) -> LoadResult:
        """Load ``source`` into the table by ``mode``; all or nothing."""
        cols = source.columns
        check_column_names(cols, self.dialect)
        for name, dtype in source.schema.items():
            sql_type(dtype, self.dialect, name)  # fail before connecting on unsupported dtypes
        with self._connect():
            try:
                self._begin()
                result = self._load(source, mode, cols, key, dedupe_on)
                self._commit()
            except BaseException as exc:
                with contextlib.suppress(Exception):
                    self._rollback()
                if isinstance(exc, DuctworkError) or not isinstance(exc, Exception):
                    raise
                kind = self._classify(exc)
                if kind is None:
                    raise
                detail = _scrub(str(exc).strip(), self._secrets)
                msg = f"loading {self._where()} failed; the table was left unchanged: {detail}"
                raise kind(msg) from None
        return result

    def _load(
        self,
        source: ParquetSource,
        mode: Mode,
        cols: list[str],
        key: Sequence[str],
        dedupe_on: Sequence[str],
    ) -> LoadResult:
        existing = self._columns()
        if existing is not None:
            self._lock()
        created, before = False, 0
        if mode == "replace":
            if existing is not None and set(existing) == set(cols):
                self._clear()
            else:
                if existing is not None:
                    self._exec(f"DROP TABLE {quote_table(self.table)}")
                self._exec(self.create_table_sql(quote_table(self.table), source.schema))
                created = True
        elif existing is None:
            self._exec(self.create_table_sql(quote_table(self.table), source.schema))
            created = True
        else:
            missing = [c for c in cols if c not in existing]
            if missing:
                col = missing[0]
                msg = (
                    f"{self._where()} has no column '{col}'{did_you_mean(col, existing)} "
                    f"(mode {mode} needs every input column in the table)"
                )
                hint = f"Table columns: {', '.join(existing)}. Use mode: replace to re-create it."
                raise DataError(msg, hint=hint)
            before = self._count()
        if mode == "upsert" and not self._has_unique_index(key):
            self._add_unique_index(key)
        if mode == "upsert" or dedupe_on:
            # Merging needs the rows in the database first: a temporary staging table.
            stage = quote_ident(f"_dw_stage_{uuid.uuid4().hex[:12]}")
            self._exec(self.create_table_sql(stage, source.schema, temporary=True))
            self._bulk_insert(stage, source)
            self._exec(self._merge_sql(stage, cols, key, dedupe_on))
            self._exec(f"DROP TABLE {stage}")
        else:
            # replace / plain append: straight into the table; the transaction is the safety.
            self._bulk_insert(quote_table(self.table), source)
        after = self._count()
        inserted = after - before
        if mode == "upsert":
            return LoadResult(source.rows, inserted, source.rows - inserted, 0, after, created)
        return LoadResult(source.rows, inserted, 0, source.rows - inserted, after, created)

    def _merge_sql(
        self, stage: str, cols: Sequence[str], key: Sequence[str], dedupe_on: Sequence[str]
    ) -> str:
        target, collist = quote_table(self.table), ", ".join(map(quote_ident, cols))
        if dedupe_on:  # append, skipping rows whose key is already in the table
            match = " AND ".join(f"t.{quote_ident(c)} = s.{quote_ident(c)}" for c in dedupe_on)
            return (
                f"INSERT INTO {target} ({collist}) SELECT {collist} FROM {stage} AS s "
                f"WHERE NOT EXISTS (SELECT 1 FROM {target} AS t WHERE {match})"
            )
        rest = [c for c in cols if c not in key]
        action = (
            "UPDATE SET " + ", ".join(f"{quote_ident(c)} = excluded.{quote_ident(c)}" for c in rest)
            if rest
            else "NOTHING"
        )
        keys = ", ".join(map(quote_ident, key))
        # `WHERE true` keeps SQLite from reading ON CONFLICT as part of a join.
        return (
            f"INSERT INTO {target} ({collist}) SELECT {collist} FROM {stage} WHERE true "
            f"ON CONFLICT ({keys}) DO {action}"
        )

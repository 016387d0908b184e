"""Writers used by the ``load`` stage: files written atomically, databases loaded in one transaction.

Files: a table is written to a temporary file beside the target, fsynced and renamed over it, so
a reader sees the old file or the new one, never half of one. A partitioned (Hive layout) set
is written to a temporary directory and swapped in with one ``renameat2(RENAME_EXCHANGE)`` where
the OS has it (two renames otherwise); the old set is removed only after the new one is in place.

Databases: everything happens inside one transaction, so a failure anywhere (a constraint, a
bad value, a dropped connection, a killed process) leaves the target as it was. ``replace`` and
plain ``append`` bulk-load straight into the table (PostgreSQL: ``COPY``; SQLite:
``executemany``; DuckDB: the Parquet input registered as an Arrow dataset); ``upsert`` and
``append`` with ``dedupe_on`` bulk-load a temporary staging table and merge it with one
``INSERT … SELECT`` (``ON CONFLICT (key) DO UPDATE`` / ``WHERE NOT EXISTS``).

Identifiers are always quoted and table names validated; values are never interpolated into SQL.
URLs may carry passwords: only :func:`redact_url` forms of them appear in messages and receipts.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import os
import re
import shutil
import sqlite3
import sys
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, cast
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

import polars as pl

from ductwork.core.fingerprint import file_digest
from ductwork.errors import DataError, DuctworkError, SourceError, did_you_mean, import_optional

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


# --- files --------------------------------------------------------------------------------------


@dataclass
class FileResult:
    files: dict[str, str]  # relative path -> sha256
    partitions: list[str] = field(default_factory=list)


def is_remote(path: str) -> bool:
    """Whether ``path`` is an fsspec URL (``s3://``, ``memory://``, ...) rather than a local path."""
    return bool(re.match(r"^[A-Za-z][A-Za-z0-9+.\-]*://", path)) and not path.startswith("file://")


def _fsync(path: Path, *, directory: bool = False) -> None:
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        if directory:  # some platforms cannot open directories; the data is fsynced already
            return
        raise
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sink(
    lf: pl.LazyFrame, dest: Path | pl.PartitionBy, fmt: FileFormat, compression: Compression
) -> None:
    try:
        if fmt == "parquet":
            lf.sink_parquet(dest, compression=compression)
        else:
            lf.sink_csv(dest)
    except pl.exceptions.PolarsError as exc:
        text = str(exc).strip().splitlines()[0]
        msg = f"cannot write the table as {fmt}: {text}"
        hint = "CSV holds flat columns only: drop or stringify list/struct columns first."
        raise DataError(msg, hint=hint if fmt == "csv" else None) from None


def _digests(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): file_digest(p)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def write_file(
    lf: pl.LazyFrame, target: Path, fmt: FileFormat, compression: Compression
) -> FileResult:
    """Write one file atomically: temp file beside it, fsync, rename over the target."""
    if target.is_dir():
        msg = f"'{target}' is a directory; give a file path, or use partition_by"
        raise DataError(msg)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.dw-tmp-{uuid.uuid4().hex[:12]}")
    try:
        _sink(lf, tmp, fmt, compression)
        _fsync(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync(target.parent, directory=True)
    return FileResult(files={target.name: file_digest(target)})


_PARTITION_DIR = re.compile(r"^[^=/]+=[^/]*$")


def _check_replaceable(target: Path) -> None:
    """Refuse to replace a directory that holds anything but a partition set."""
    if not target.exists():
        return
    if not target.is_dir():
        msg = f"'{target}' is a file; partition_by writes a directory of partitions"
        raise DataError(msg)
    for entry in target.iterdir():
        if entry.name.startswith((".", "_")):
            continue
        if not (entry.is_dir() and _PARTITION_DIR.match(entry.name)):
            msg = (
                f"refusing to replace directory '{target}': it holds '{entry.name}', which is "
                "not a partition (col=value) directory"
            )
            raise DataError(msg, hint="Point `path` at a directory used only for this load.")


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False when unsupported."""
    if sys.platform != "linux":
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    at_fdcwd, rename_exchange = -100, 2
    rc = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(err, os.strerror(err), str(a))


def swap_in_dir(new: Path, target: Path) -> None:
    """Put the complete directory ``new`` at ``target``; remove the old one afterwards."""
    if not target.exists():
        os.rename(new, target)
    elif _exchange(new, target):
        shutil.rmtree(new)  # now holds the old set
    else:  # two renames: for a moment `target` is missing, never half-written
        old = target.with_name(f".{target.name}.dw-old-{uuid.uuid4().hex[:12]}")
        os.rename(target, old)
        os.rename(new, target)
        shutil.rmtree(old)
    _fsync(target.parent, directory=True)


def write_partitioned(
    lf: pl.LazyFrame,
    target: Path,
    fmt: FileFormat,
    partition_by: Sequence[str],
    compression: Compression,
) -> FileResult:
    """Write a Hive-layout partition set to a temp directory, then swap it in as a whole."""
    _check_replaceable(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    new = target.with_name(f".{target.name}.dw-new-{uuid.uuid4().hex[:12]}")
    try:
        _sink(lf, pl.PartitionBy(new, key=list(partition_by)), fmt, compression)
        new.mkdir(exist_ok=True)  # an empty input writes no partition
        for p in new.rglob("*"):
            _fsync(p, directory=p.is_dir())
        _fsync(new, directory=True)
        swap_in_dir(new, target)
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise
    files = _digests(target)
    partitions = sorted({str(Path(f).parent.as_posix()) for f in files})
    return FileResult(files=files, partitions=partitions)


def upload(local: Path, remote: str, *, partitioned: bool) -> None:
    """Copy a written file (or partition set) to an fsspec URL.

    Object stores make each single upload visible whole; for a partition set the new files are
    uploaded first and stale files of the old set deleted afterwards.
    """
    import fsspec

    try:
        fs, root = fsspec.core.url_to_fs(remote)
        if not partitioned:
            parent = root.rsplit("/", 1)[0] if "/" in root else ""
            if parent:
                fs.makedirs(parent, exist_ok=True)
            fs.put_file(str(local), root)
            return
        new = {p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()}
        for rel in sorted(new):
            dest = f"{root.rstrip('/')}/{rel}"
            fs.makedirs(dest.rsplit("/", 1)[0], exist_ok=True)
            fs.put_file(str(local / rel), dest)
        prefix = root.rstrip("/") + "/"
        old = fs.find(root) if fs.exists(root) else []
        for path in old:
            rel = path[len(prefix) :] if path.startswith(prefix) else path
            if rel not in new:
                fs.rm_file(path)
    except ImportError as exc:
        msg = f"writing to '{remote}' needs an fsspec backend that is not installed: {exc}"
        raise SourceError(msg) from None
    except OSError as exc:
        msg = f"cannot write to '{remote}': {exc}"
        raise SourceError(msg) from None


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


# -- SQLite -------------------------------------------------------------------------------------


def _sqlite_values(df: pl.DataFrame) -> Iterator[tuple[Any, ...]]:
    """Rows as SQLite takes them, streamed (building a list of tuples first is ~25% slower)."""
    exprs = []
    for name, dtype in df.schema.items():
        col = pl.col(name)
        if isinstance(dtype, pl.Datetime):
            fmt = "%Y-%m-%d %H:%M:%S%.f" + ("%:z" if dtype.time_zone else "")
            col = col.dt.to_string(fmt)
        elif dtype == pl.Date:
            col = col.dt.to_string("%Y-%m-%d")
        elif dtype == pl.Time:
            col = col.dt.to_string("%H:%M:%S%.f")
        elif isinstance(dtype, pl.Duration):
            col = col.dt.total_microseconds()
        elif isinstance(dtype, pl.Decimal | pl.Categorical | pl.Enum):
            col = col.cast(pl.String)
        exprs.append(col)
    return df.select(exprs).iter_rows()


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
                self.conn.executemany(insert, _sqlite_values(batch))
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


# -- DuckDB -------------------------------------------------------------------------------------


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


# -- PostgreSQL ---------------------------------------------------------------------------------


def _pg_csv(df: pl.DataFrame) -> bytes:
    exprs = []
    for name, dtype in df.schema.items():
        col = pl.col(name)
        if isinstance(dtype, pl.Datetime):
            fmt = "%Y-%m-%d %H:%M:%S%.f" + ("%:z" if dtype.time_zone else "")
            col = col.dt.to_string(fmt)
        elif dtype == pl.Time:
            col = col.dt.to_string("%H:%M:%S%.f")
        elif isinstance(dtype, pl.Duration):
            col = pl.format("{} microseconds", col.dt.total_microseconds())
        elif dtype == pl.Binary:
            col = pl.concat_str(pl.lit("\\x"), col.bin.encode("hex"))
        elif isinstance(dtype, pl.Categorical | pl.Enum):
            col = col.cast(pl.String)
        exprs.append(col.alias(name))
    # Nulls are unquoted empty fields; empty strings are written quoted ("").
    return df.select(exprs).write_csv(include_header=False).encode()


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
                copy.write(_pg_csv(batch))
                done += batch.height
                self.progress(done, source.rows, "rows")

    def _classify(self, exc: Exception) -> type[DuctworkError] | None:
        psycopg = self._psycopg
        if psycopg is None or not isinstance(exc, psycopg.Error):
            return None
        if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
            return SourceError
        return DataError


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

"""Read the result of a SQL query into a table.

* ``sqlite:///relative/path.db`` (project-relative) or ``sqlite:////abs/path.db``: the stdlib
  ``sqlite3`` module, opened read-only; no extra needed.
* ``postgresql://`` / ``postgres://``: psycopg 3 in a read-only transaction with a server-side
  cursor (``pip install 'ductwork[sql]'``).
* any other SQLAlchemy URL (``mysql+pymysql://``, ``postgresql+psycopg2://`` ...): SQLAlchemy.
* ``engine: connectorx``: Polars' ``read_database_uri`` with ConnectorX, when installed
  (``pip install 'ductwork[connectorx]'``); faster for large results, but no bound params.

Query params are always bound by the driver, never pasted into the SQL. Placeholders are the
driver's own: ``:name`` for sqlite and SQLAlchemy URLs, ``%(name)s`` for ``postgresql://``.
The password (in the URL or from ``password_env``) never appears in errors or metrics.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote, urlsplit

from ductwork.connectors.http import REDACTED, redact_url
from ductwork.core.fingerprint import paths_digest
from ductwork.errors import DataError, DuctworkError, SourceError, UsageError, import_optional

if TYPE_CHECKING:
    import polars as pl

    from ductwork.core.contract import StageContext

Backend = Literal["sqlite", "postgresql", "sqlalchemy"]
Engine = Literal["auto", "connectorx"]
_BATCH = 50_000
_PG_TYPES = {  # type oid -> Polars dtype: results keep the declared column types
    16: "Boolean",
    20: "Int64",
    21: "Int16",
    23: "Int32",
    700: "Float32",
    701: "Float64",
    1082: "Date",
    1083: "Time",
    1114: "Datetime",
    1184: "DatetimeUTC",
}


@dataclass(frozen=True)
class SqlRequest:
    url: str  # the real URL (may hold a password): only ever shown through redact_url
    query: str
    params: Mapping[str, Any] = field(default_factory=dict)
    password_env: str | None = None
    engine: Engine = "auto"


def backend_of(url: str) -> Backend:
    scheme = url.split("://", 1)[0].lower()
    if scheme == "sqlite":
        return "sqlite"
    if scheme in ("postgresql", "postgres"):
        return "postgresql"
    return "sqlalchemy"


def sqlite_path(url: str, ctx: StageContext) -> Path | None:
    """The database file of a ``sqlite:///`` URL (None for an in-memory database)."""
    rest = url.split("://", 1)[1].split("?", 1)[0]
    if rest in ("", "/", "/:memory:"):
        return None
    if not rest.startswith("/"):
        msg = f"sqlite URL '{url}' needs three slashes: sqlite:///relative.db or sqlite:////abs.db"
        raise UsageError(msg)
    raw = rest[1:]
    return ctx.resolve_path(raw, what="sqlite database")


def sql_stamp(url: str, ctx: StageContext) -> str | None:
    """SQLite: the digest of the database file (and its WAL); servers: None (always re-run)."""
    if backend_of(url) != "sqlite":
        return None
    try:
        path = sqlite_path(url, ctx)
    except DuctworkError:
        return None
    if path is None or not path.is_file():
        return None
    wal = path.with_name(path.name + "-wal")
    return paths_digest([path, wal] if wal.is_file() else [path])


def _placeholder(backend: Backend, name: str) -> tuple[str, str]:
    if backend == "postgresql":
        return rf"%\({re.escape(name)}\)s", f"%({name})s"
    return rf"(?<![:\w]):{re.escape(name)}\b", f":{name}"


def check_params(backend: Backend, query: str, params: Mapping[str, Any]) -> None:
    """Every query param must appear as a placeholder of the driver's style."""
    for name in params:
        pattern, example = _placeholder(backend, name)
        if not re.search(pattern, query):
            style = "%(name)s" if backend == "postgresql" else ":name"
            msg = f"query_params '{name}' is not used in the query (write it as {example})"
            raise UsageError(msg, hint=f"Placeholders for {backend} URLs look like {style}.")


def _secret(req: SqlRequest) -> str | None:
    if req.password_env is None:
        return urlsplit(req.url).password
    value = os.environ.get(req.password_env)
    if not value:
        msg = f"the password variable {req.password_env} is not set"
        raise UsageError(msg, hint=f"Export {req.password_env} (or put it in .env) and run again.")
    return value


def _where(url: str) -> str:
    parts = urlsplit(url)
    if backend_of(url) == "sqlite":
        return redact_url(url)
    host = parts.hostname or "localhost"
    try:
        port = parts.port or (5432 if backend_of(url) == "postgresql" else None)
    except ValueError:
        port = None
    return f"{host}:{port}" if port else host


def _scrub(text: str, secret: str | None) -> str:
    return text.replace(secret, REDACTED) if secret else text


def _first_line(exc: BaseException, secret: str | None) -> str:
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    return _scrub(lines[0] if lines else type(exc).__name__, secret)


def read_sql(req: SqlRequest, ctx: StageContext) -> pl.DataFrame:
    """Run the query and return its result as one table."""
    backend = backend_of(req.url)
    if req.engine != "auto":
        return _read_uri(req, ctx)
    check_params(backend, req.query, req.params)
    if backend == "sqlite":
        return _read_sqlite(req, ctx)
    if backend == "postgresql":
        return _read_postgres(req, ctx)
    return _read_sqlalchemy(req, ctx)


def _query_error(
    req: SqlRequest, exc: BaseException, secret: str | None, ctx: StageContext
) -> DataError:
    where = _where(req.url)
    msg = f"stage '{ctx.stage}': the query failed on {where}: {_first_line(exc, secret)}"
    return DataError(msg, hint="Check the query, its placeholders and query_params.")


def _read_sqlite(req: SqlRequest, ctx: StageContext) -> pl.DataFrame:
    path = sqlite_path(req.url, ctx)
    if path is not None and not path.is_file():
        msg = f"stage '{ctx.stage}': sqlite database not found: {path}"
        raise SourceError(msg, hint="Check the URL; sqlite:///x.db is relative to the project.")
    target = ":memory:" if path is None else f"file:{quote(str(path))}?mode=ro"
    conn = sqlite3.connect(target, uri=path is not None)
    try:
        cur = conn.execute(req.query, dict(req.params))
        return _frame(cur.description, _batches(cur), {}, req, ctx)
    except sqlite3.Error as exc:
        raise _query_error(req, exc, None, ctx) from None
    finally:
        conn.close()


def _batches(cur: Any) -> Iterator[Sequence[Any]]:
    while rows := cur.fetchmany(_BATCH):
        yield rows


def _read_postgres(req: SqlRequest, ctx: StageContext) -> pl.DataFrame:
    import_optional("psycopg", extra="sql", feature="extract from PostgreSQL")
    import psycopg

    secret = _secret(req)
    conninfo = re.sub(r"^[a-z+]+://", "postgresql://", req.url, count=1)
    kwargs: dict[str, Any] = {"connect_timeout": 10}
    if secret is not None:
        kwargs["password"] = secret
    try:
        conn = psycopg.connect(conninfo, **kwargs)
    except psycopg.Error as exc:
        msg = (
            f"stage '{ctx.stage}': cannot connect to PostgreSQL at {_where(req.url)} "
            f"({redact_url(req.url)}): {_first_line(exc, secret)}"
        )
        raise SourceError(msg, hint="Check that the server is up and the URL.") from None
    try:
        conn.read_only = True
        with conn.cursor(name="ductwork_extract") as cur:
            cur.itersize = _BATCH
            cur.execute(req.query, dict(req.params) or None)
            types = {d.name: _pg_dtype(d) for d in cur.description or []}
            return _frame(cur.description, _batches(cur), types, req, ctx)
    except psycopg.OperationalError as exc:
        msg = (
            f"stage '{ctx.stage}': lost PostgreSQL at {_where(req.url)}: {_first_line(exc, secret)}"
        )
        raise SourceError(msg) from None
    except psycopg.Error as exc:
        raise _query_error(req, exc, secret, ctx) from None
    finally:
        conn.close()


def _read_sqlalchemy(req: SqlRequest, ctx: StageContext) -> pl.DataFrame:
    import_optional("sqlalchemy", extra="sql", feature=f"extract from {req.url.split(':')[0]}")
    import sqlalchemy as sa

    secret = _secret(req)
    try:
        url = sa.engine.make_url(req.url)
        if secret is not None:
            url = url.set(password=secret)
        engine = sa.create_engine(url)
    except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError) as exc:
        msg = f"stage '{ctx.stage}': cannot use {redact_url(req.url)}: {_first_line(exc, secret)}"
        raise UsageError(
            msg, hint="Check the URL's dialect and that its driver is installed."
        ) from None
    try:
        with engine.connect() as conn:
            result = conn.execution_options(stream_results=True).execute(
                sa.text(req.query), dict(req.params)
            )
            names = list(result.keys())
            desc = [(n,) for n in names] if result.returns_rows else None
            return _frame(
                desc, (list(map(tuple, b)) for b in result.partitions(_BATCH)), {}, req, ctx
            )
    except sa.exc.OperationalError as exc:
        msg = (
            f"stage '{ctx.stage}': cannot query {_where(req.url)} ({redact_url(req.url)}): "
            f"{_first_line(exc.orig or exc, secret)}"
        )
        raise SourceError(msg, hint="Check that the server is up and the URL.") from None
    except sa.exc.DBAPIError as exc:
        raise _query_error(req, exc.orig or exc, secret, ctx) from None
    except sa.exc.SQLAlchemyError as exc:
        raise _query_error(req, exc, secret, ctx) from None
    finally:
        engine.dispose()


def _read_uri(req: SqlRequest, ctx: StageContext) -> pl.DataFrame:
    import polars as pl

    import_optional("connectorx", extra="connectorx", feature="engine: connectorx")
    secret = _secret(req)
    uri = req.url
    if req.password_env and secret:
        parts = urlsplit(uri)
        user = quote(parts.username or "", safe="")
        port = f":{parts.port}" if parts.port else ""
        netloc = f"{user}:{quote(secret, safe='')}@{parts.hostname}{port}"
        uri = parts._replace(netloc=netloc).geturl()
    try:
        return pl.read_database_uri(req.query, uri, engine="connectorx")
    except Exception as exc:  # connectorx raises its own (Rust) error types
        where = _where(req.url)
        msg = f"stage '{ctx.stage}': the query failed on {where}: {_first_line(exc, secret)}"
        raise SourceError(msg) from None


def _pg_dtype(column: Any) -> pl.DataType | None:
    """The Polars dtype of a PostgreSQL result column (None: infer it from the values)."""
    import polars as pl

    name = _PG_TYPES.get(column.type_code)
    if name == "DatetimeUTC":
        return pl.Datetime("us", "UTC")
    if name == "Datetime":
        return pl.Datetime("us")
    if name is not None:
        dtype: pl.DataType = getattr(pl, name)()
        return dtype
    if column.type_code == 1700 and column.scale is not None:  # numeric(p, s)
        return pl.Decimal(column.precision or 38, column.scale)
    return None


def _frame(
    description: Sequence[Sequence[Any]] | None,
    batches: Iterator[Sequence[Any]],
    types: Mapping[str, pl.DataType | None],
    req: SqlRequest,
    ctx: StageContext,
) -> pl.DataFrame:
    import polars as pl

    if description is None:
        msg = f"stage '{ctx.stage}': the query on {_where(req.url)} returned no result set"
        raise DataError(msg, hint="extract needs a query that returns rows (a SELECT).")
    names = [str(d[0]) for d in description]
    dups = sorted(n for n, k in Counter(names).items() if k > 1)
    if dups:
        msg = f"stage '{ctx.stage}': the query returns duplicate column names: {dups}"
        raise DataError(msg, hint="Give each column a unique alias (select a.id as a_id, ...).")
    frames = []
    rows = 0
    for batch in batches:
        frames.append(_batch_frame(batch, names, types))
        rows += len(batch)
        ctx.progress(rows, None, "rows")
    if not frames:
        return pl.DataFrame(schema={n: types.get(n) or pl.String() for n in names})
    return pl.concat(frames, how="vertical_relaxed") if len(frames) > 1 else frames[0]


def _batch_frame(
    batch: Sequence[Any], names: list[str], types: Mapping[str, pl.DataType | None]
) -> pl.DataFrame:
    import polars as pl

    columns = list(zip(*batch, strict=True)) if batch else [() for _ in names]
    series = []
    for name, values in zip(names, columns, strict=True):
        try:
            s = pl.Series(name, values, strict=True)
        except (TypeError, pl.exceptions.PolarsError, OverflowError):
            # mixed types in one column (SQLite allows it): keep the values as text
            s = pl.Series(name, [None if v is None else str(v) for v in values], dtype=pl.String)
        if s.dtype == pl.Object:
            s = pl.Series(name, [None if v is None else str(v) for v in values], dtype=pl.String)
        wanted = types.get(name)
        if wanted is not None and s.dtype != wanted:
            with contextlib.suppress(pl.exceptions.PolarsError):
                s = s.cast(wanted)
        series.append(s)
    return pl.DataFrame(series)

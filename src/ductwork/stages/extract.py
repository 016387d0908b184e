"""The extract stage kind: read a table from files, a SQL database or an HTTP API.

One params model covers the three sources; which one a stage reads follows from its params
(``path`` -> files, a database ``url`` + ``query`` -> sql, an ``http(s)`` ``url`` -> http) or
from an explicit ``source:``. Params of another source are errors that name the source they
belong to. The optional ``schema:`` is enforced the same way whatever the source, so a dev
profile reading a CSV and a prod profile reading an API produce the same table:

* a declared column that is missing -> DataError; extra columns are kept unless
  ``strict_schema: true``; declared columns come first, in declared order;
* values are converted strictly: the first value that does not convert is named with its
  column, row and file, and nothing is silently turned into null.

The stage checks everything in one streaming pass before it returns a lazy plan, so bad input
fails here, with a clear message, and never later as a Polars traceback while sinking.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

import polars as pl
from pydantic import ConfigDict, Field, PrivateAttr, field_validator, model_validator

from ductwork.connectors import files as files_mod
from ductwork.connectors.files import FILE_COLUMN, FileFormat, FileOptions, Loaded
from ductwork.connectors.http import (
    HttpAuth,
    HttpRequest,
    Pagination,
    Scalar,
    redact_url,
)
from ductwork.connectors.sql import Engine, SqlRequest, sql_stamp
from ductwork.core.contract import (
    ArtifactInfo,
    Inputs,
    Output,
    StageContext,
    StageKind,
    StageParams,
)
from ductwork.errors import DataError, DuctworkError, did_you_mean
from ductwork.stages.transform import parse_dtype

Source = Literal["files", "sql", "http"]

_FILES = {
    "path", "format", "encoding", "separator", "has_header", "null_values", "skip_rows",
    "quote_char", "infer_schema_length", "include_file_paths",
}  # fmt: skip
_SQL = {"query", "query_params", "password_env", "engine"}
_HTTP = {
    "request_params", "headers", "auth", "pagination", "timeout", "max_retries", "backoff",
    "max_wait", "max_pages", "on_max_pages",
}  # fmt: skip
_ROW = "__ductwork_row__"


class ExtractParams(StageParams):
    """Params of ``kind: extract`` (see docs/stages/extract.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    source: Source | None = None
    path: str | None = None
    url: str | None = None
    # any source
    schema_: dict[str, str] | None = Field(None, alias="schema")
    strict_schema: bool = False
    columns: list[str] | None = Field(None, min_length=1)
    reject_non_finite: bool = False
    records_path: str | None = None  # http, and json files
    # files
    format: FileFormat | None = None
    encoding: str = "utf8"
    separator: str | None = Field(None, min_length=1, max_length=1)
    has_header: bool = True
    null_values: list[str] | None = None
    skip_rows: int = Field(0, ge=0)
    quote_char: str | None = Field('"', max_length=1)
    infer_schema_length: int | None = Field(None, ge=1)
    include_file_paths: str | None = Field(None, min_length=1)
    # sql
    query: str | None = Field(None, min_length=1)
    query_params: dict[str, Scalar | None] | None = None
    password_env: str | None = Field(None, min_length=1)
    engine: Engine = "auto"
    # http
    request_params: dict[str, Scalar] | None = None
    headers: dict[str, str] | None = None
    auth: HttpAuth | None = None
    pagination: Pagination | None = None
    timeout: float = Field(30.0, gt=0)
    max_retries: int = Field(3, ge=0)
    backoff: float = Field(0.5, ge=0)
    max_wait: float = Field(60.0, ge=0)
    max_pages: int = Field(1000, ge=1)
    on_max_pages: Literal["error", "stop"] = "error"

    _real_url: str | None = PrivateAttr(None)

    @field_validator("null_values", mode="before")
    @classmethod
    def _one_null_value(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        return files_mod.normalise_encoding(value)

    @field_validator("schema_")
    @classmethod
    def _known_dtypes(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        for column, name in (value or {}).items():
            try:
                parse_dtype(name)
            except ValueError as exc:
                msg = f"schema column '{column}': {exc}"
                raise ValueError(msg) from None
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ExtractParams:
        given = {n for n in self.model_fields_set if getattr(self, n) is not None}
        source = self.resolved_source()
        own = {"files": _FILES, "sql": _SQL, "http": _HTTP}
        for name in sorted(given):
            for other, names in own.items():
                if name in names and other != source:
                    msg = f"param '{name}' is for {other} sources, but this stage reads {source}"
                    raise ValueError(msg)
        if source == "files":
            self._check_files(given)
        elif source == "sql":
            self._check_sql(given)
        else:
            self._check_http(given)
        if self.schema_ and self.columns:
            absent = [c for c in self.schema_ if c not in self.columns]
            if absent:
                msg = f"schema columns {absent} are not in columns; add them or drop them"
                raise ValueError(msg)
        if self.url is not None:  # keep secrets out of fingerprints, records and messages
            shown = redact_url(self.url)
            if shown != self.url:
                self._real_url = self.url
                object.__setattr__(self, "url", shown)
        return self

    def _check_files(self, given: set[str]) -> None:
        if self.path is None or self.url is not None:
            msg = "a files source needs 'path' (a file, glob, directory or fsspec URL), not 'url'"
            raise ValueError(msg)
        fmt = self.file_format()
        if fmt is None:
            msg = f"cannot tell the format of '{self.path}' from its name; set format: csv|tsv|parquet|json|ndjson"
            raise ValueError(msg)
        text_only = {"separator", "has_header", "null_values", "skip_rows", "quote_char"}
        if fmt not in ("csv", "tsv") and (bad := sorted(text_only & given)):
            msg = f"params {bad} are for csv/tsv files, but '{self.path}' is {fmt}"
            raise ValueError(msg)
        if fmt == "parquet" and "encoding" in given:
            msg = "param 'encoding' is for text files, but this stage reads parquet"
            raise ValueError(msg)
        if "records_path" in given and fmt != "json":
            msg = f"param 'records_path' is for http sources and json files, not {fmt}"
            raise ValueError(msg)

    def _check_sql(self, given: set[str]) -> None:
        if self.url is None or self.query is None:
            msg = "a sql source needs 'url' (sqlite:///file.db, postgresql://...) and 'query'"
            raise ValueError(msg)
        if "records_path" in given:
            msg = "param 'records_path' is for http sources and json files, not sql"
            raise ValueError(msg)
        if self.engine != "auto" and self.query_params:
            msg = f"engine: {self.engine} cannot bind query_params; use engine: auto"
            raise ValueError(msg)
        if self.password_env and urlsplit(self.url).password:
            msg = "give the password either in the url or with password_env, not both"
            raise ValueError(msg)

    def _check_http(self, given: set[str]) -> None:
        if self.url is None or not self.url.lower().startswith(("http://", "https://")):
            msg = "an http source needs 'url' starting with http:// or https://"
            raise ValueError(msg)

    def resolved_source(self) -> Source:
        if self.source is not None:
            return self.source
        if self.path is not None:
            return "files"
        if self.url is not None and self.url.lower().startswith(("http://", "https://")):
            return "http" if self.query is None else "sql"
        if self.url is not None or self.query is not None:
            return "sql"
        msg = "set 'path' (files), 'url' + 'query' (sql) or an http(s) 'url' (http)"
        raise ValueError(msg)

    def file_format(self) -> FileFormat | None:
        return self.format or files_mod.format_from_path(self.path or "")

    def real_url(self) -> str:
        """The URL with its secrets, for connecting; never show it (``url`` is the redacted one)."""
        return self._real_url or self.url or ""

    def dtypes(self) -> dict[str, pl.DataType]:
        return {c: parse_dtype(t) for c, t in (self.schema_ or {}).items()}


class Extract(StageKind[ExtractParams]):
    """Read one table from files, a SQL database or an HTTP API."""

    name: ClassVar[str] = "extract"
    version: ClassVar[str] = "1"
    summary: ClassVar[str] = "read a table from files, a SQL database or an HTTP API"
    Params: ClassVar[type[StageParams]] = ExtractParams
    outputs: ClassVar[dict[str, Output]] = {
        "main": Output("table", description="the extracted table"),
    }
    min_inputs: ClassVar[int] = 0
    max_inputs: ClassVar[int | None] = 0

    def source_stamp(self, params: ExtractParams, ctx: StageContext) -> str | None:
        source = params.resolved_source()
        if source == "files":
            return files_mod.files_stamp(_file_options(params), ctx)
        if source == "sql":
            return sql_stamp(params.real_url(), ctx)
        return None

    def run(self, params: ExtractParams, inputs: Inputs, ctx: StageContext) -> dict[str, Any]:
        loaded = _load(params, ctx)
        final, rows = _enforce(loaded, params, ctx)
        ctx.metric(rows=rows)
        return {"main": final}

    def check(
        self,
        params: ExtractParams,
        inputs: Inputs,
        outputs: Mapping[str, ArtifactInfo],
        ctx: StageContext,
    ) -> list[str]:
        info = outputs.get("main")
        rows = ctx.metrics.get("rows")
        if info is not None and rows is not None and info.rows is not None and info.rows != rows:
            return [
                f"the output has {info.rows} rows but {rows} were checked; "
                "did the source change while the stage ran?"
            ]
        return []


def _file_options(params: ExtractParams) -> FileOptions:
    fmt = params.file_format() or "csv"
    text_cols = frozenset(params.schema_ or ()) if fmt in ("csv", "tsv") else frozenset()
    return FileOptions(
        path=params.path or "",
        format=fmt,
        encoding=params.encoding,
        separator=params.separator or ("\t" if fmt == "tsv" else ","),
        has_header=params.has_header,
        null_values=params.null_values,
        skip_rows=params.skip_rows,
        quote_char=params.quote_char,
        infer_schema_length=params.infer_schema_length,
        records_path=params.records_path,
        text_columns=text_cols,
    )


def _load(params: ExtractParams, ctx: StageContext) -> Loaded:
    source = params.resolved_source()
    if source == "files":
        return files_mod.load_files(_file_options(params), ctx)
    if source == "sql":
        from ductwork.connectors.sql import read_sql

        req = SqlRequest(
            url=params.real_url(),
            query=params.query or "",
            params=params.query_params or {},
            password_env=params.password_env,
            engine=params.engine,
        )
        return Loaded(read_sql(req, ctx).lazy(), where=f"the query result from {params.url}")
    from ductwork.connectors.http import fetch_records

    http = HttpRequest(
        url=params.real_url(),
        records_path=params.records_path,
        params=params.request_params or {},
        headers=params.headers or {},
        auth=params.auth,
        pagination=params.pagination,
        timeout=params.timeout,
        max_retries=params.max_retries,
        backoff=params.backoff,
        max_wait=params.max_wait,
        max_pages=params.max_pages,
        on_max_pages=params.on_max_pages,
    )
    return Loaded(fetch_records(http, ctx).lazy(), where=f"the records from {params.url}")


# --- schema enforcement -----------------------------------------------------------------------

_BOOLS = {"true": True, "t": True, "yes": True, "y": True, "1": True}
_BOOLS |= {"false": False, "f": False, "no": False, "n": False, "0": False}
_AWARE = ("%Y-%m-%d %H:%M:%S%.f%:z", "%Y-%m-%d %H:%M%:z")
_NAIVE = ("%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%d %H:%M", "%Y-%m-%d")


def _text_to_datetime(s: pl.Expr, dst: pl.Datetime) -> pl.Expr:
    """ISO-8601-ish text -> datetime; values with an offset are converted to UTC."""
    s = s.str.replace(r"[zZ]$", "+00:00").str.replace("T", " ", literal=True)
    parts = [
        s.str.to_datetime(f, time_unit="us", strict=False)
        .dt.convert_time_zone("UTC")
        .dt.replace_time_zone(None)
        for f in _AWARE
    ]
    parts += [s.str.to_datetime(f, time_unit="us", strict=False) for f in _NAIVE]
    out = pl.coalesce(parts)
    if dst.time_zone:
        out = out.dt.replace_time_zone("UTC").dt.convert_time_zone(dst.time_zone)
    return out.dt.cast_time_unit(dst.time_unit or "us")


def _convert(col: str, src: pl.DataType, dst: pl.DataType) -> tuple[pl.Expr, pl.Expr | None]:
    """The expression converting ``col`` to ``dst``, and one flagging values that do not fit."""
    c = pl.col(col)
    if src == dst:
        return c, None
    if src == pl.Null:
        return c.cast(dst), None
    if src == pl.String and dst != pl.String:
        s = c.str.strip_chars()
        s = pl.when(s == "").then(None).otherwise(s)  # blank text is null, as in CSV
        if dst == pl.Boolean:
            conv = s.str.to_lowercase().replace_strict(_BOOLS, default=None, return_dtype=dst)
        elif dst == pl.Date:
            conv = s.str.to_date("%Y-%m-%d", strict=False)
        elif isinstance(dst, pl.Datetime):
            conv = _text_to_datetime(s, dst)
        elif dst == pl.Time:
            conv = pl.coalesce(s.str.to_time(f, strict=False) for f in ("%H:%M:%S%.f", "%H:%M"))
        else:
            conv = s.cast(dst, strict=False)
        return conv.alias(col), s.is_not_null() & conv.is_null()
    if isinstance(src, pl.Datetime) and isinstance(dst, pl.Datetime):
        conv = c
        if src.time_zone and not dst.time_zone:
            conv = conv.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
        elif dst.time_zone:
            conv = (
                conv if src.time_zone else conv.dt.replace_time_zone("UTC")
            ).dt.convert_time_zone(dst.time_zone)
        return conv.dt.cast_time_unit(dst.time_unit or "us"), None
    conv = c.cast(dst, strict=False)
    bad = c.is_not_null() & conv.is_null()
    if src.is_float() and dst.is_integer():
        bad = bad | (c.is_not_null() & (conv.cast(src) != c))  # 1.5 -> 1 would lose data
    elif src.is_integer() and dst == pl.Boolean:
        bad = bad | (c.is_not_null() & ~c.is_in([0, 1]))
    return conv, bad


def _enforce(loaded: Loaded, params: ExtractParams, ctx: StageContext) -> tuple[pl.DataFrame, int]:
    """Apply columns/schema, read once, check, and return the table + row count."""
    frame = loaded.frame
    schema = _schema(frame, loaded, ctx)
    if params.schema_ and not any(c != FILE_COLUMN for c in schema):
        # no columns at all (an empty JSON list or API answer): the schema gives them
        frame = pl.LazyFrame(schema=params.dtypes())
        schema = dict(frame.collect_schema())
    user_cols = [c for c in schema if c != FILE_COLUMN]
    out_name = params.include_file_paths
    if out_name and out_name in user_cols:
        msg = f"stage '{ctx.stage}': include_file_paths '{out_name}' is already a column of {loaded.where}"
        raise DataError(msg, hint="Pick another name for include_file_paths.")
    declared = params.dtypes()
    wanted = list(params.columns or [])
    missing = [c for c in [*wanted, *declared] if c not in schema]
    if missing:
        first = missing[0]
        msg = (
            f"stage '{ctx.stage}': {loaded.where} has no column(s) {sorted(set(missing))}"
            f"{did_you_mean(first, user_cols)}"
        )
        raise DataError(msg, hint=f"Columns there: {', '.join(user_cols) or 'none'}.")
    keep = wanted or [*declared, *(c for c in user_cols if c not in declared)]
    if params.strict_schema and (extra := [c for c in keep if c not in declared]):
        msg = f"stage '{ctx.stage}': {loaded.where} has columns not in the schema: {extra}"
        raise DataError(msg, hint="Add them to schema, select columns:, or drop strict_schema.")
    exprs: dict[str, pl.Expr] = {}
    bads: dict[str, pl.Expr] = {}
    try:
        for col in keep:
            conv, bad = _convert(col, schema[col], declared.get(col, schema[col]))
            exprs[col] = conv.alias(col)
            if bad is not None:
                bads[col] = bad
        out_schema = frame.select(list(exprs.values())).collect_schema()
    except pl.exceptions.PolarsError as exc:
        msg = f"stage '{ctx.stage}': cannot apply the schema to {loaded.where}: {_line(exc)}"
        raise DataError(msg) from None
    final_exprs = list(exprs.values())
    if out_name:
        has_file = FILE_COLUMN in schema
        file_expr = pl.col(FILE_COLUMN) if has_file else pl.lit(loaded.where)
        final_exprs.append(file_expr.cast(pl.String).alias(out_name))
    df, rows = _read_and_check(frame, final_exprs, exprs, bads, out_schema, loaded, params, ctx)
    ctx.metric(columns=len(final_exprs))
    return df, rows


def _schema(frame: pl.LazyFrame, loaded: Loaded, ctx: StageContext) -> dict[str, pl.DataType]:
    try:
        return dict(frame.collect_schema())
    except pl.exceptions.PolarsError as exc:
        raise _read_error(exc, loaded, ctx) from None


def _read_error(exc: Exception, loaded: Loaded, ctx: StageContext) -> DuctworkError:
    found = loaded.diagnose(exc)
    if found is not None:
        return found
    msg = f"stage '{ctx.stage}': cannot read {loaded.where}: {_line(exc)}"
    return DataError(msg)


def _line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _read_and_check(
    frame: pl.LazyFrame,
    final_exprs: list[pl.Expr],
    exprs: Mapping[str, pl.Expr],
    bads: Mapping[str, pl.Expr],
    out_schema: pl.Schema,
    loaded: Loaded,
    params: ExtractParams,
    ctx: StageContext,
) -> tuple[pl.DataFrame, int]:
    """Read the source once, then check rows, nulls, non-finite floats and values the schema
    rejects on the table in memory (the store holds the table in memory to write it anyway)."""
    cols = list(exprs)
    flags = [bad.alias(f"__dw_bad{i}") for i, bad in enumerate(bads.values())]
    try:
        df = frame.select([*final_exprs, *flags]).collect()
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise _read_error(exc, loaded, ctx) from None
    floats = [c for c in cols if out_schema[c].is_float()]
    aggs = [pl.len().alias("rows")]
    aggs += [pl.col(c).null_count().alias(f"null{i}") for i, c in enumerate(cols)]
    aggs += [
        (pl.col(c).is_nan() | pl.col(c).is_infinite()).sum().alias(f"nonfinite{i}")
        for i, c in enumerate(floats)
    ]
    aggs += [pl.col(f"__dw_bad{i}").sum().alias(f"bad{i}") for i in range(len(flags))]
    row = df.select(aggs).row(0, named=True)
    for i, (col, bad) in enumerate(bads.items()):
        if row[f"bad{i}"]:
            raise _bad_value_error(frame, col, bad, int(row[f"bad{i}"]), out_schema, loaded, ctx)
    nulls = {c: row[f"null{i}"] for i, c in enumerate(cols) if row[f"null{i}"]}
    non_finite = {c: row[f"nonfinite{i}"] for i, c in enumerate(floats) if row[f"nonfinite{i}"]}
    ctx.metric(nulls=nulls, non_finite=non_finite)
    if non_finite:
        listed = ", ".join(f"{c} ({n})" for c, n in non_finite.items())
        if params.reject_non_finite:
            col = next(iter(non_finite))
            bad = exprs[col].is_nan() | exprs[col].is_infinite()
            where = _first_bad(frame, col, bad, loaded)
            msg = (
                f"stage '{ctx.stage}': NaN or infinite values in {listed} of {loaded.where}; "
                f"the first in column '{col}' {where}"
            )
            raise DataError(msg, hint="Fix the source, or drop reject_non_finite to allow them.")
        ctx.log(f"NaN/inf values (allowed): {listed}")
    if flags:
        df = df.drop([f"__dw_bad{i}" for i in range(len(flags))])
    return df, int(row["rows"])


def _first_bad(frame: pl.LazyFrame, col: str, bad: pl.Expr, loaded: Loaded) -> str:
    """'at row N of FILE' for the first row where ``bad`` holds (row within its file)."""
    has_file = FILE_COLUMN in frame.collect_schema()
    lf = frame.with_row_index(_ROW)
    if has_file:
        lf = lf.with_columns((pl.col(_ROW) - pl.col(_ROW).min().over(FILE_COLUMN)).alias(_ROW))
    keep = [_ROW, col, *([FILE_COLUMN] if has_file else [])]
    hit = lf.filter(bad).select(keep).head(1).collect().row(0, named=True)
    source = hit.get(FILE_COLUMN) or loaded.where
    return f"at row {hit[_ROW] + 1} of {source}: {hit[col]!r}"


def _bad_value_error(
    frame: pl.LazyFrame,
    col: str,
    bad: pl.Expr,
    n_bad: int,
    out_schema: pl.Schema,
    loaded: Loaded,
    ctx: StageContext,
) -> DataError:
    where = _first_bad(frame, col, bad, loaded)
    msg = (
        f"stage '{ctx.stage}': column '{col}' has {n_bad} value(s) that are not "
        f"{out_schema[col]}; the first {where}"
    )
    hint = f"Fix the source, or declare '{col}' as String and convert it in a transform stage."
    return DataError(msg, hint=hint)

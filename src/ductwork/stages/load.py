"""The ``load`` stage kind: write the input table to a file or a database table.

Files (Parquet, CSV; local paths or fsspec URLs) are written atomically; databases (SQLite,
PostgreSQL, DuckDB) are loaded in one transaction through a staging table, so a failed load
leaves the old file or table as it was. ``replace`` and ``upsert`` are idempotent; ``append`` is
not (re-running it appends again) unless ``dedupe_on`` names a key to skip rows already there.

The main output is a receipt (JSON): what was written where, and counts that reconcile
(``rows_written + rows_skipped == rows_in``), checked as an invariant after every run.
The URL's password never appears in the receipt, messages or logs (``user:***@host``).
See ``docs/stages/load.md``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar, Literal

from pydantic import ConfigDict, Field, SecretStr, field_validator, model_validator

from ductwork.connectors import sinks
from ductwork.core.contract import (
    ArtifactInfo,
    Inputs,
    Output,
    StageContext,
    StageKind,
    StageParams,
)
from ductwork.core.fingerprint import sha256_text, tree_digest
from ductwork.errors import DataError, did_you_mean

Target = Literal["parquet", "csv", "sqlite", "postgres", "duckdb"]
FILE_TARGETS: tuple[Target, ...] = ("parquet", "csv")
_EXTENSIONS: dict[str, Target] = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".db": "sqlite",
    ".sqlite": "sqlite",
    ".sqlite3": "sqlite",
    ".duckdb": "duckdb",
}


class LoadParams(StageParams):
    """Params of ``kind: load``."""

    # The url holds a password: keep raw input values out of validation error messages.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    to: Target | None = Field(
        default=None, description="Target kind; inferred from path's extension or url's scheme."
    )
    path: str | None = Field(
        default=None,
        description="File or directory to write (project-relative, absolute or an fsspec URL); "
        "for sqlite/duckdb the database file.",
    )
    url: SecretStr | None = Field(
        default=None,
        description="Database URL: sqlite:///file.db, postgresql://user:pw@host:5432/db, "
        "duckdb:///file.duckdb. Use ${env:NAME} for passwords.",
    )
    table: str | None = Field(default=None, description="Database table (or schema.table).")
    mode: Literal["replace", "append", "upsert"] = Field(
        default="replace", description="replace (idempotent), append, or upsert by key."
    )
    key: list[str] | None = Field(default=None, description="Key columns for mode: upsert.")
    dedupe_on: list[str] | None = Field(
        default=None, description="append only: skip input rows whose key is already in the table."
    )
    partition_by: list[str] | None = Field(
        default=None, description="Files only: write a Hive-layout directory col=value/..."
    )
    compression: Literal["zstd", "snappy", "lz4", "gzip", "uncompressed"] = Field(
        default="zstd", description="Parquet compression."
    )
    batch_rows: int = Field(default=50_000, ge=1, description="Rows per batch sent to a database.")
    connect_timeout: float = Field(default=10.0, gt=0, description="Seconds to wait for a server.")

    @field_validator("key", "dedupe_on", "partition_by", mode="before")
    @classmethod
    def _as_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("table")
    @classmethod
    def _table_name(cls, value: str | None) -> str | None:
        return None if value is None else sinks.validate_table_name(value)

    @model_validator(mode="after")
    def _consistent(self) -> LoadParams:
        to = self.target_kind()
        if to in FILE_TARGETS:
            if self.path is None:
                msg = f"a {to} load needs 'path'"
                raise ValueError(msg)
            if self.url is not None:
                msg = f"a {to} load takes 'path', not 'url'"
                raise ValueError(msg)
            for name in ("table", "key", "dedupe_on"):
                if getattr(self, name) is not None:
                    msg = f"'{name}' applies to database loads, not to {to} files"
                    raise ValueError(msg)
            if self.mode != "replace":
                msg = (
                    f"mode '{self.mode}' applies to database loads; a {to} file is always replaced"
                )
                raise ValueError(msg)
            return self
        if (self.url is None) == (self.path is None):
            msg = f"a {to} load needs exactly one of 'url' or 'path' (the database file)"
            raise ValueError(msg)
        if to == "postgres" and self.url is None:
            msg = "a postgres load needs 'url' (postgresql://user:${env:PGPASSWORD}@host:5432/db)"
            raise ValueError(msg)
        if self.url is not None and sinks.url_dialect(self.url.get_secret_value()) != to:
            msg = f"'url' does not point at a {to} database (its scheme says otherwise)"
            raise ValueError(msg)
        if self.table is None:
            msg = f"a {to} load needs 'table'"
            raise ValueError(msg)
        if self.partition_by is not None:
            msg = "'partition_by' applies to parquet and csv files only"
            raise ValueError(msg)
        if self.mode == "upsert" and not self.key:
            msg = "mode 'upsert' needs 'key' (the columns that identify a row)"
            raise ValueError(msg)
        if self.key is not None and self.mode != "upsert":
            msg = f"'key' is for mode 'upsert' (mode is '{self.mode}'); for append use 'dedupe_on'"
            raise ValueError(msg)
        if self.dedupe_on is not None and self.mode != "append":
            msg = "'dedupe_on' is for mode 'append'"
            raise ValueError(msg)
        return self

    def target_kind(self) -> Target:
        """``to``, or what the url's scheme or the path's extension says."""
        if self.to is not None:
            return self.to
        if self.url is not None:
            dialect = sinks.url_dialect(self.url.get_secret_value())
            if dialect is None:
                msg = "cannot tell the database from 'url': use sqlite:///, postgresql:// or duckdb:///"
                raise ValueError(msg)
            return dialect
        if self.path is not None:
            suffix = PurePosixPath(self.path.rstrip("/")).suffix.lower()
            if suffix in _EXTENSIONS:
                return _EXTENSIONS[suffix]
            if self.partition_by:
                return "parquet"
            msg = (
                f"cannot tell the format of '{self.path}' from its extension; set 'to' "
                f"({', '.join(Target.__args__)})"  # type: ignore[attr-defined]
            )
            raise ValueError(msg)
        msg = "a load needs 'path' (files, sqlite, duckdb) or 'url' (databases)"
        raise ValueError(msg)

    def target_url(self) -> str:
        """The database URL (secret); a sqlite/duckdb ``path`` as a URL."""
        if self.url is not None:
            return self.url.get_secret_value()
        return f"{self.target_kind()}:///{self.path}"

    def describe_target(self) -> str:
        """The target without secrets: a redacted URL, or the path as given."""
        if self.target_kind() in FILE_TARGETS:
            return str(self.path)
        return sinks.redact_url(self.target_url())


class Load(StageKind[LoadParams]):
    """Write a table to Parquet/CSV files or a SQLite/PostgreSQL/DuckDB table."""

    name: ClassVar[str] = "load"
    version: ClassVar[str] = "1"
    Params: ClassVar[type[StageParams]] = LoadParams
    outputs: ClassVar[dict[str, Output]] = {
        "main": Output("json", description="the load receipt: target, mode, counts, digests"),
    }
    min_inputs: ClassVar[int] = 1
    max_inputs: ClassVar[int | None] = 1
    summary: ClassVar[str] = "write a table to files or a database, atomically"

    def source_stamp(self, params: LoadParams, ctx: StageContext) -> str | None:
        # The url is a secret (left out of the fingerprint); its redacted form still decides
        # whether a load to another server or file is a different load.
        return sha256_text(f"{params.target_kind()}|{params.describe_target()}")

    def run(self, params: LoadParams, inputs: Inputs, ctx: StageContext) -> dict[str, Any]:
        artifact = inputs.only()
        source = sinks.ParquetSource.open(artifact.path)
        to = params.target_kind()
        for what, cols in (
            ("key", params.key),
            ("dedupe_on", params.dedupe_on),
            ("partition_by", params.partition_by),
        ):
            for col in cols or []:
                if col not in source.schema:
                    msg = (
                        f"stage '{ctx.stage}': {what} column '{col}' is not in the input"
                        f"{did_you_mean(col, source.columns)}"
                    )
                    raise DataError(msg, hint=f"Input columns: {', '.join(source.columns)}")
        if to == "parquet" or to == "csv":
            receipt = _load_file(params, source, to, ctx)
        else:
            receipt = _load_database(params, source, ctx)
        ctx.metric(
            rows_written=receipt["rows_written"],
            rows_in_target_after=receipt["rows_in_target_after"],
        )
        ctx.log(
            f"load: {receipt['rows_written']} row(s) to {receipt['target']} ({receipt['mode']})"
        )
        return {"main": receipt}

    def check(
        self,
        params: LoadParams,
        inputs: Inputs,
        outputs: Mapping[str, ArtifactInfo],
        ctx: StageContext,
    ) -> list[str]:
        receipt = json.loads(Path(outputs["main"].path).read_text())
        rows_in = inputs.only().rows
        problems = []
        written, skipped = receipt["rows_written"], receipt.get("rows_skipped", 0)
        if rows_in is not None and written + skipped != rows_in:
            problems.append(
                f"rows written ({written}) + skipped ({skipped}) != input rows ({rows_in})"
            )
        if receipt["mode"] == "replace" and receipt["rows_in_target_after"] != written:
            problems.append(
                f"after a replace the target holds {receipt['rows_in_target_after']} rows, "
                f"not the {written} written"
            )
        return problems


def _load_file(
    params: LoadParams, source: sinks.ParquetSource, fmt: sinks.FileFormat, ctx: StageContext
) -> dict[str, Any]:
    path = str(params.path)
    remote = sinks.is_remote(path)
    if remote:
        name = PurePosixPath(path.rstrip("/")).name or "upload"
        local = ctx.tmp_dir / "upload" / name  # written here, then copied to the URL
    else:
        local = ctx.resolve_path(path, what="load path")
    lf = source.lazy()
    if params.partition_by:
        result = sinks.write_partitioned(lf, local, fmt, params.partition_by, params.compression)
    else:
        result = sinks.write_file(lf, local, fmt, params.compression)
    if remote:
        sinks.upload(local, path, partitioned=bool(params.partition_by))
    ctx.progress(source.rows, source.rows, "rows")
    receipt: dict[str, Any] = {
        "target": path,
        "to": fmt,
        "mode": "replace",
        "path": path,
        "rows_in": source.rows,
        "rows_written": source.rows,
        "rows_skipped": 0,
        "rows_in_target_after": source.rows,
        "files": result.files,
    }
    if params.partition_by:
        receipt["partition_by"] = list(params.partition_by)
        receipt["partitions"] = result.partitions
        receipt["sha256"] = tree_digest(local)
    else:
        receipt["sha256"] = next(iter(result.files.values()))
    return receipt


def _load_database(
    params: LoadParams, source: sinks.ParquetSource, ctx: StageContext
) -> dict[str, Any]:
    table = params.table or ""  # LoadParams._consistent requires a table for databases
    target = sinks.database_target(
        params.target_url(),
        table,
        resolve=lambda p: ctx.resolve_path(p, what="database file"),
        batch_rows=params.batch_rows,
        timeout=params.connect_timeout,
        progress=ctx.progress,
    )
    for what, key in (("upsert key", params.key), ("dedupe_on key", params.dedupe_on)):
        if key:
            source.check_key(key, f"stage '{ctx.stage}': {what}")
    result = target.load(
        source, params.mode, key=params.key or (), dedupe_on=params.dedupe_on or ()
    )
    receipt: dict[str, Any] = {
        "target": target.target,
        "to": target.dialect,
        "mode": params.mode,
        "table": table,
        "rows_in": result.rows_in,
        "rows_written": result.rows_written,
        "rows_inserted": result.rows_inserted,
        "rows_updated": result.rows_updated,
        "rows_skipped": result.rows_skipped,
        "rows_in_target_after": result.rows_in_target_after,
        "table_created": result.created,
    }
    if params.key:
        receipt["key"] = list(params.key)
    if params.dedupe_on:
        receipt["dedupe_on"] = list(params.dedupe_on)
    return receipt

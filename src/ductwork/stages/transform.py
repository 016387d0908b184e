"""The ``transform`` stage kind: Polars SQL and/or a declarative list of ops over named inputs.

Everything stays lazy: the stage returns one ``LazyFrame`` (one query plan) that the engine
sinks to Parquet with streaming. Every op is checked against the schema of the frame it
applies to before anything runs, so a typo in a column name is a :class:`DataError` naming the
op, the column and the closest real column, not a Polars traceback halfway through a run.

Row order is deterministic (the store content-addresses outputs, so the same inputs must give
byte-identical Parquet): joins keep left-then-right order, ``group_by`` keeps groups in order
of first appearance, ``dedupe`` keeps the order of the kept rows, ``sort`` is stable, and a SQL
query whose plan contains an operation Polars' SQL engine runs without an order guarantee
(join, GROUP BY, DISTINCT, UNION) and that has no top-level ``ORDER BY`` gets its rows sorted
by all output columns. See ``docs/stages/transform.md``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

import polars as pl
from pydantic import (
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from ductwork.core.contract import Inputs, Output, StageContext, StageKind, StageParams
from ductwork.errors import DataError, did_you_mean

# --- helpers ----------------------------------------------------------------------------------

_MAX_LISTED = 25


def _listing(names: Iterable[str]) -> str:
    names = list(names)
    shown = ", ".join(names[:_MAX_LISTED])
    return shown + (f", … ({len(names)} in all)" if len(names) > _MAX_LISTED else "")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@dataclass
class _Env:
    """What an op may look at while it is applied."""

    stage: str
    frames: dict[str, pl.LazyFrame]
    where: str = ""

    def error(self, message: str, *, hint: str | None = None) -> DataError:
        return DataError(f"stage '{self.stage}': {self.where}: {message}", hint=hint)

    def require(self, columns: Iterable[str], schema: pl.Schema, *, what: str = "") -> None:
        """Raise a DataError for the first column that is not in ``schema``."""
        for col in columns:
            if col not in schema:
                of = f" of {what}" if what else ""
                msg = f"unknown column '{col}'{of}{did_you_mean(col, schema.names())}"
                raise self.error(msg, hint=f"Columns: {_listing(schema.names())}")

    def sql_expr(self, text: str, schema: pl.Schema) -> pl.Expr:
        """Parse a SQL expression and check the columns it refers to."""
        try:
            expr = pl.sql_expr(text)
        except pl.exceptions.PolarsError as exc:
            msg = f"cannot parse SQL expression {text!r}: {_first_line(exc)}"
            raise self.error(msg) from None
        self.require(expr.meta.root_names(), schema)
        return expr


# --- dtypes for cast ----------------------------------------------------------------------------

_SIMPLE_DTYPES: dict[str, pl.DataType] = {
    "int8": pl.Int8(),
    "tinyint": pl.Int8(),
    "int16": pl.Int16(),
    "smallint": pl.Int16(),
    "int32": pl.Int32(),
    "int": pl.Int32(),
    "integer": pl.Int32(),
    "int64": pl.Int64(),
    "bigint": pl.Int64(),
    "uint8": pl.UInt8(),
    "uint16": pl.UInt16(),
    "uint32": pl.UInt32(),
    "uint64": pl.UInt64(),
    "float32": pl.Float32(),
    "real": pl.Float32(),
    "float64": pl.Float64(),
    "float": pl.Float64(),
    "double": pl.Float64(),
    "string": pl.String(),
    "str": pl.String(),
    "utf8": pl.String(),
    "text": pl.String(),
    "varchar": pl.String(),
    "bool": pl.Boolean(),
    "boolean": pl.Boolean(),
    "date": pl.Date(),
    "time": pl.Time(),
    "datetime": pl.Datetime("us"),
    "timestamp": pl.Datetime("us"),
    "duration": pl.Duration("us"),
    "categorical": pl.Categorical(),
    "binary": pl.Binary(),
}
_DATETIME_RE = re.compile(
    r"^(?:datetime|timestamp)\[\s*(ms|us|ns)\s*(?:,\s*([A-Za-z0-9_+\-/]+)\s*)?\]$", re.I
)
_DECIMAL_RE = re.compile(r"^(?:decimal|numeric)(?:\(\s*(\d+)\s*(?:,\s*(\d+)\s*)?\))?$", re.I)
DTYPE_NAMES = (
    "int8..int64, uint8..uint64, float32, float64, string, bool, date, time, datetime, "
    "datetime[ms|us|ns] or datetime[us, UTC], duration, decimal(p,s), categorical, binary"
)


def parse_dtype(name: str) -> pl.DataType:
    """A Polars dtype from its spec name (``int64``, ``datetime[ms, UTC]``, ``decimal(10,2)``)."""
    key = name.strip().lower()
    if key in _SIMPLE_DTYPES:
        return _SIMPLE_DTYPES[key]
    if m := _DATETIME_RE.match(name.strip()):
        unit: Literal["ms", "us", "ns"] = m.group(1).lower()  # type: ignore[assignment]
        return pl.Datetime(unit, m.group(2))
    if m := _DECIMAL_RE.match(name.strip()):
        precision = int(m.group(1)) if m.group(1) else 38
        scale = int(m.group(2)) if m.group(2) else 0
        return pl.Decimal(precision, scale)
    msg = f"unknown dtype '{name}'{did_you_mean(key, _SIMPLE_DTYPES)} (known: {DTYPE_NAMES})"
    raise ValueError(msg)


# --- ops ----------------------------------------------------------------------------------------


class _Op(StageParams):
    """One op: a one-key mapping in ``ops:``. ``apply`` checks columns, then extends the plan."""

    op: ClassVar[str]

    def apply(self, lf: pl.LazyFrame, schema: pl.Schema, env: _Env) -> pl.LazyFrame:
        raise NotImplementedError


Columns = Annotated[list[str], Field(min_length=1)]


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


class SelectOp(_Op):
    op: ClassVar[str] = "select"
    select: Columns

    def apply(self, lf: pl.LazyFrame, schema: pl.Schema, env: _Env) -> pl.LazyFrame:
        env.require(self.select, schema)
        return lf.select(self.select)


class DropOp(_Op):
    op: ClassVar[str] = "drop"
    drop: Columns

    def apply(self, lf: pl.LazyFrame, schema: pl.Schema, env: _Env) -> pl.LazyFrame:
        env.require(self.drop, schema)
        return lf.drop(self.drop)


class RenameOp(_Op):
    op: ClassVar[str] = "rename"
    rename: Annotated[dict[str, str], Field(min_length=1)]

    def apply(self, lf: pl.LazyFrame, schema: pl.Schema, env: _Env) -> pl.LazyFrame:
        env.require(self.rename, schema)
        return lf.rename(self.rename)


class FilterOp(_Op):
    op: ClassVar[str] = "filter"
    filter: Annotated[str, Field(min_length=1)]

    def apply(self, lf: pl.LazyFrame, schema: pl.Schema, env: _Env) -> pl.LazyFrame:
        return lf.filter(env.sql_expr(self.filter, schema))


class DeriveOp(_Op):
    op: ClassVar[str] = "derive"
    derive: Annotated[dict[str, str], Field(min_length=1)]

    def apply(self, lf: pl.LazyFrame, schema: pl.Schema, env: _Env) -> pl.LazyFrame:
        exprs = [env.sql_expr(text, schema).alias(name) for name, text in self.derive.items()]
        return lf.with_columns(exprs)


class CastOp(_Op):
    op: ClassVar[str] = "cast"
    cast: Annotated[dict[str, str], Field(min_length=1)]

    @field_validator("cast")
    @classmethod
    def _known_dtypes(cls, value: dict[str, str]) -> dict[str, str]:
        for dtype in value.values():
            parse_dtype(dtype)
        return value

    def apply(self, lf: pl.LazyFrame, schema: pl.Schema, env: _Env) -> pl.LazyFrame:
        env.require(self.cast, schema)
        targets = {col: parse_dtype(name) for col, name in self.cast.items()}
        _check_casts(lf, schema, targets, env)
        return lf.with_columns(pl.col(c).cast(t, strict=True) for c, t in targets.items())


def _check_casts(
    lf: pl.LazyFrame, schema: pl.Schema, targets: Mapping[str, pl.DataType], env: _Env
) -> None:
    """Find values a strict cast would reject, in one pass over the columns being cast.

    A strict cast inside the lazy plan would only fail when the engine sinks it, as a Polars
    error; checking here gives a DataError naming the column and a bad value.
    """
    risky = {
        c: t for c, t in targets.items() if not (t == schema[c] or t == pl.String or t == pl.Null)
    }
    if not risky:
        return
    aggs: list[pl.Expr] = []
    for i, (col, dtype) in enumerate(risky.items()):
        src = pl.col(col)
        bad = src.is_not_null() & src.cast(dtype, strict=False).is_null()
        aggs += [
            bad.sum().alias(f"bad{i}"),
            src.filter(bad).first().cast(pl.String).alias(f"example{i}"),
        ]
    try:
        found = lf.select(aggs).collect().row(0)
    except pl.exceptions.PolarsError as exc:
        msg = f"cannot cast {_listing(risky)}: {_first_line(exc)}"
        raise env.error(msg, hint="Pick another dtype, or derive the column with SQL.") from None
    for i, (col, dtype) in enumerate(risky.items()):
        n_bad, example = found[2 * i], found[2 * i + 1]
        if n_bad:
            msg = (
                f"column '{col}' ({schema[col]}) has {n_bad} value(s) that cannot be cast to "
                f"{dtype}, e.g. {example!r}"
            )
            hint = (
                "Clean or filter those rows first (e.g. a filter or derive op), or cast to string."
            )
            raise env.error(msg, hint=hint)


class FillStrategy(StageParams):
    strategy: Literal["forward", "backward", "mean", "min", "max", "zero", "one"]


class FillNullOp(_Op):
    op: ClassVar[str] = "fill_null"
    fill_null: Annotated[dict[str, FillStrategy | bool | int | float | str], Field(min_length=1)]

    def apply(self, lf: pl.LazyFrame, schema: pl.Schema, env: _Env) -> pl.LazyFrame:
        env.require(self.fill_null, schema)
        exprs = []
        for col, value in self.fill_null.items():
            if isinstance(value, FillStrategy):
                exprs.append(pl.col(col).fill_null(strategy=value.strategy))
                continue
            dtype = schema[col]
            try:
                pl.Series([value]).cast(dtype, strict=True)
            except pl.exceptions.PolarsError:
                msg = f"fill value {value!r} does not fit column '{col}' ({dtype})"
                raise env.error(msg) from None
            exprs.append(pl.col(col).fill_null(pl.lit(value).cast(dtype)))
        return lf.with_columns(exprs)


class DropNullsOp(_Op):
    op: ClassVar[str] = "drop_nulls"
    drop_nulls: Columns | bool

    def apply(self, lf: pl.LazyFrame, schema: pl.Schema, env: _Env) -> pl.LazyFrame:
        if self.drop_nulls is False:
            return lf
        if self.drop_nulls is True:
            return lf.drop_nulls()
        env.require(self.drop_nulls, schema)
        return lf.drop_nulls(subset=self.drop_nulls)


class DedupeSpec(StageParams):
    subset: Columns | None = None
    keep: Literal["first", "last", "none"] = "first"

    _subset_list = field_validator("subset", mode="before")(_as_list)


class DedupeOp(_Op):
    op: ClassVar[str] = "dedupe"
    dedupe: DedupeSpec

    def apply(self, lf: pl.LazyFrame, schema: pl.Schema, env: _Env) -> pl.LazyFrame:
        spec = self.dedupe
        if spec.subset:
            env.require(spec.subset, schema)
        return lf.unique(subset=spec.subset, keep=spec.keep, maintain_order=True)


class JoinSpec(StageParams):
    with_: str = Field(alias="with", min_length=1)
    on: Columns | None = None
    left_on: Columns | None = None
    right_on: Columns | None = None
    how: Literal["left", "inner", "outer", "full", "semi", "anti"] = "left"
    suffix: str = "_right"
    validate_keys: Literal["m:m", "m:1", "1:m", "1:1"] = Field(default="m:m", alias="validate")

    _lists = field_validator("on", "left_on", "right_on", mode="before")(_as_list)

    @model_validator(mode="after")
    def _keys(self) -> JoinSpec:
        if self.on is not None and (self.left_on is not None or self.right_on is not None):
            msg = "give either 'on' or 'left_on' + 'right_on', not both"
            raise ValueError(msg)
        if self.on is None:
            if self.left_on is None or self.right_on is None:
                msg = "a join needs 'on' (same column names) or both 'left_on' and 'right_on'"
                raise ValueError(msg)
            if len(self.left_on) != len(self.right_on):
                msg = "'left_on' and 'right_on' must name the same number of columns"
                raise ValueError(msg)
        return self


class JoinOp(_Op):
    op: ClassVar[str] = "join"
    join: JoinSpec

    def apply(self, lf: pl.LazyFrame, schema: pl.Schema, env: _Env) -> pl.LazyFrame:
        spec = self.join
        other = env.frames.get(spec.with_)
        if other is None:
            msg = (
                f"no input named '{spec.with_}' to join with{did_you_mean(spec.with_, env.frames)}"
            )
            raise env.error(msg, hint=f"Inputs: {_listing(env.frames)}")
        other_schema = other.collect_schema()
        left = spec.on or spec.left_on or []  # JoinSpec._keys ensures one form is given
        right = spec.on or spec.right_on or []
        env.require(left, schema)
        env.require(right, other_schema, what=f"input '{spec.with_}'")
        many_left, _, many_right = spec.validate_keys.partition(":")
        if many_right == "1":
            _check_unique(other, right, f"input '{spec.with_}'", spec.validate_keys, env)
        if many_left == "1":
            _check_unique(lf, left, "left side", spec.validate_keys, env)
        how: Literal["left", "inner", "full", "semi", "anti"] = (
            "full" if spec.how == "outer" else spec.how
        )
        # Deterministic row order: left rows in order, each followed by its matches in the
        # right input's order (for full joins unmatched right rows come after).
        order: Literal["left", "left_right"] = "left" if how in ("semi", "anti") else "left_right"
        if spec.on is not None:
            return lf.join(
                other,
                on=spec.on,
                how=how,
                suffix=spec.suffix,
                validate=spec.validate_keys,
                coalesce=True,
                maintain_order=order,
            )
        return lf.join(
            other,
            left_on=left,
            right_on=right,
            how=how,
            suffix=spec.suffix,
            validate=spec.validate_keys,
            maintain_order=order,
        )


def _check_unique(
    lf: pl.LazyFrame, keys: Sequence[str], side: str, validate: str, env: _Env
) -> None:
    """``validate: m:1`` and friends, checked before the plan runs (one pass over the keys)."""
    dup = lf.group_by(keys).agg(pl.len()).filter(pl.col("len") > 1).head(1).collect()
    if dup.height:
        row = dup.row(0, named=True)
        example = ", ".join(f"{k}={row[k]!r}" for k in keys)
        msg = (
            f"validate '{validate}' failed: the join keys ({', '.join(keys)}) of the {side} are "
            f"not unique: {row['len']} rows have {example}"
        )
        raise env.error(msg, hint="Dedupe that side first, or relax 'validate'.")


class GroupBySpec(StageParams):
    by: Columns
    agg: Annotated[dict[str, str], Field(min_length=1)]

    _by_list = field_validator("by", mode="before")(_as_list)


class GroupByOp(_Op):
    op: ClassVar[str] = "group_by"
    group_by: GroupBySpec

    def apply(self, lf: pl.LazyFrame, schema: pl.Schema, env: _Env) -> pl.LazyFrame:
        spec = self.group_by
        env.require(spec.by, schema)
        aggs = [env.sql_expr(text, schema).alias(name) for name, text in spec.agg.items()]
        # Groups come out in the order of their first row.
        return lf.group_by(spec.by, maintain_order=True).agg(aggs)


class SortSpec(StageParams):
    by: Columns
    descending: bool | list[bool] = False
    nulls_last: bool = False

    _by_list = field_validator("by", mode="before")(_as_list)

    @model_validator(mode="after")
    def _lengths(self) -> SortSpec:
        if isinstance(self.descending, list) and len(self.descending) != len(self.by):
            msg = "'descending' must be one bool or one per 'by' column"
            raise ValueError(msg)
        return self


class SortOp(_Op):
    op: ClassVar[str] = "sort"
    sort: SortSpec

    @field_validator("sort", mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"by": value} if isinstance(value, str | list) else value

    def apply(self, lf: pl.LazyFrame, schema: pl.Schema, env: _Env) -> pl.LazyFrame:
        spec = self.sort
        env.require(spec.by, schema)
        # Stable: rows with equal keys keep their order.
        return lf.sort(
            spec.by, descending=spec.descending, nulls_last=spec.nulls_last, maintain_order=True
        )


class LimitOp(_Op):
    op: ClassVar[str] = "limit"
    limit: Annotated[int, Field(ge=0)]

    def apply(self, lf: pl.LazyFrame, schema: pl.Schema, env: _Env) -> pl.LazyFrame:
        return lf.head(self.limit)


OP_TYPES: dict[str, type[_Op]] = {
    cls.op: cls
    for cls in (
        SelectOp,
        DropOp,
        RenameOp,
        FilterOp,
        DeriveOp,
        CastOp,
        FillNullOp,
        DropNullsOp,
        DedupeOp,
        JoinOp,
        GroupByOp,
        SortOp,
        LimitOp,
    )
}


def _op_tag(value: Any) -> str | None:
    if isinstance(value, dict):
        return next(iter(value), None) if len(value) == 1 else None
    return getattr(value, "op", None)


Op = Annotated[
    Annotated[SelectOp, Tag("select")]
    | Annotated[DropOp, Tag("drop")]
    | Annotated[RenameOp, Tag("rename")]
    | Annotated[FilterOp, Tag("filter")]
    | Annotated[DeriveOp, Tag("derive")]
    | Annotated[CastOp, Tag("cast")]
    | Annotated[FillNullOp, Tag("fill_null")]
    | Annotated[DropNullsOp, Tag("drop_nulls")]
    | Annotated[DedupeOp, Tag("dedupe")]
    | Annotated[JoinOp, Tag("join")]
    | Annotated[GroupByOp, Tag("group_by")]
    | Annotated[SortOp, Tag("sort")]
    | Annotated[LimitOp, Tag("limit")],
    Discriminator(_op_tag),
]


class TransformParams(StageParams):
    """Params of ``kind: transform``."""

    sql: str | None = Field(
        default=None, description="Polars SQL over the inputs, registered by their names."
    )
    derive: dict[str, str] | None = Field(
        default=None, description="Shorthand: new columns from SQL expressions, after sql."
    )
    filter: str | None = Field(
        default=None, description="Shorthand: keep rows where this SQL expression holds."
    )
    ops: list[Op] = Field(default_factory=list, description="Declarative ops, applied in order.")

    @field_validator("ops", mode="before")
    @classmethod
    def _op_names(cls, value: Any) -> Any:
        if not isinstance(value, list):
            return value
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                continue
            if len(item) != 1:
                keys = ", ".join(map(str, item)) or "none"
                msg = (
                    f"ops[{i}] must be a mapping with exactly one op name as its key "
                    f"(got keys: {keys}); known ops: {', '.join(OP_TYPES)}"
                )
                raise ValueError(msg)
            name = str(next(iter(item)))
            if name not in OP_TYPES:
                msg = (
                    f"ops[{i}]: unknown op '{name}'{did_you_mean(name, OP_TYPES)} "
                    f"(known ops: {', '.join(OP_TYPES)})"
                )
                raise ValueError(msg)
        return value

    @model_validator(mode="after")
    def _something_to_do(self) -> TransformParams:
        if self.sql is None and not self.ops and self.derive is None and self.filter is None:
            msg = "a transform needs at least one of 'sql', 'ops', 'derive' or 'filter'"
            raise ValueError(msg)
        return self


# --- SQL ----------------------------------------------------------------------------------------

_IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SQL_TOKEN_RE = re.compile(
    r"""'(?:[^']|'')*'          # string literal
      | "(?:[^"]|"")*"          # quoted identifier
      | `[^`]*`
      | --[^\n]*                # comments
      | /\*.*?\*/
      | (?P<open>\()
      | (?P<close>\))
      | (?P<order>\bORDER\s+BY\b)
    """,
    re.IGNORECASE | re.DOTALL | re.VERBOSE,
)
# Plan nodes Polars' SQL engine runs without a row-order guarantee (it sets no maintain_order).
_UNORDERED_NODES = (
    (re.compile(r"\bJOIN\b"), "a join"),
    (re.compile(r"AGGREGATE\[maintain_order: false"), "GROUP BY"),
    (re.compile(r"UNIQUE\[maintain_order: false"), "DISTINCT"),
    (re.compile(r"UNION\[maintain_order: false"), "UNION"),
)


def sql_table_name(name: str) -> str:
    """The name an input is registered under in SQL (non-identifier characters become '_')."""
    if _IDENT_RE.match(name):
        return name
    cleaned = re.sub(r"\W", "_", name)
    return cleaned if _IDENT_RE.match(cleaned) else f"_{cleaned}"


def has_top_level_order_by(sql: str) -> bool:
    """Whether the query's outermost SELECT has an ORDER BY (not one inside parentheses)."""
    depth = 0
    for m in _SQL_TOKEN_RE.finditer(sql):
        if m.group("open"):
            depth += 1
        elif m.group("close"):
            depth = max(depth - 1, 0)
        elif m.group("order") and depth == 0:
            return True
    return False


def unordered_operations(lf: pl.LazyFrame) -> list[str]:
    """The plan's operations that do not keep a deterministic row order."""
    plan = lf.explain(optimized=True)
    return [what for pattern, what in _UNORDERED_NODES if pattern.search(plan)]


def _sortable(schema: pl.Schema) -> list[str]:
    return [name for name, dtype in schema.items() if dtype != pl.Object]


def _sql_error(exc: pl.exceptions.PolarsError, tables: Sequence[str], env: _Env) -> DataError:
    text = str(exc)
    if m := re.search(r"relation '([^']+)' was not found", text):
        name = m.group(1)
        msg = f"table '{name}' is not an input of this stage{did_you_mean(name, tables)}"
        hint = f"Tables: {_listing(tables)}. Add the stage to `inputs:` or fix the name."
        return env.error(msg, hint=hint)
    if m := re.search(r'unable to find column "([^"]+)"; valid columns: \[(.*?)\]', text):
        name = m.group(1)
        valid = re.findall(r'"([^"]*)"', m.group(2))
        msg = f"unknown column '{name}'{did_you_mean(name, valid)}"
        return env.error(msg, hint=f"Columns there: {_listing(valid)}")
    return env.error(_first_line(exc))


def run_sql(sql: str, env: _Env, ctx: StageContext) -> pl.LazyFrame:
    """Plan ``sql`` over the inputs and make its row order deterministic."""
    tables = list(env.frames)
    sql_ctx: pl.SQLContext[pl.LazyFrame] = pl.SQLContext(frames=env.frames)
    try:
        lf = sql_ctx.execute(sql, eager=False)
        schema = lf.collect_schema()
    except pl.exceptions.PolarsError as exc:
        raise _sql_error(exc, tables, env) from None
    unordered = unordered_operations(lf)
    if unordered:
        what = ", ".join(unordered)
        if has_top_level_order_by(sql):
            ctx.log(
                f"sql: the plan has {what}; rows that tie on the ORDER BY keys come in no fixed "
                "order, so make the ORDER BY total for byte-identical outputs"
            )
        else:
            lf = lf.sort(_sortable(schema), nulls_last=True, maintain_order=True)
            ctx.log(f"sql: sorted the result by all columns for a deterministic order ({what})")
    return lf


# --- the stage kind -----------------------------------------------------------------------------


def _frames(inputs: Inputs, env_stage: str) -> dict[str, pl.LazyFrame]:
    frames: dict[str, pl.LazyFrame] = {}
    for name, artifact in inputs.items():
        table = sql_table_name(name)
        if table in frames:
            msg = (
                f"stage '{env_stage}': inputs '{name}' and another input both map to the SQL "
                f"table name '{table}'; give one of them an alias in the pipeline"
            )
            raise DataError(msg)
        frames[table] = artifact.lazy()
    return frames


def build_plan(params: TransformParams, inputs: Inputs, ctx: StageContext) -> pl.LazyFrame:
    """The transform's lazy plan: sql, then derive, then filter, then ops in order."""
    env = _Env(stage=ctx.stage, frames=_frames(inputs, ctx.stage))
    if params.sql is not None:
        env.where = "sql"
        lf = run_sql(params.sql, env, ctx)
    elif env.frames:
        lf = next(iter(env.frames.values()))
    else:
        msg = f"stage '{ctx.stage}': a transform without 'sql' needs an input to apply ops to"
        raise DataError(msg)
    steps: list[tuple[str, _Op]] = []
    if params.derive is not None:
        steps.append(("derive", DeriveOp(derive=params.derive)))
    if params.filter is not None:
        steps.append(("filter", FilterOp(filter=params.filter)))
    steps += [(f"ops[{i}] ({op.op})", op) for i, op in enumerate(params.ops)]
    for where, op in steps:
        env.where = where
        schema = lf.collect_schema()
        lf = op.apply(lf, schema, env)
        try:
            lf.collect_schema()
        except pl.exceptions.PolarsError as exc:
            raise env.error(_first_line(exc)) from None
    return lf


class Transform(StageKind[TransformParams]):
    """Polars SQL and/or declarative ops over one or more input tables."""

    name: ClassVar[str] = "transform"
    version: ClassVar[str] = "1"
    Params: ClassVar[type[StageParams]] = TransformParams
    outputs: ClassVar[dict[str, Output]] = {
        "main": Output("table", description="the transformed table"),
    }
    min_inputs: ClassVar[int] = 1
    max_inputs: ClassVar[int | None] = None
    summary: ClassVar[str] = "Polars SQL and declarative ops (select, join, group_by, ...)"

    def run(self, params: TransformParams, inputs: Inputs, ctx: StageContext) -> dict[str, Any]:
        return {"main": build_plan(params, inputs, ctx)}

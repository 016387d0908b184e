"""The ``split`` stage kind: train / validation / test splits of one table.

Every input row lands in exactly one of ``train``, ``val`` and ``test``, with the input's
columns and in the input's row order. ``ratios`` gives the split sizes (2 numbers: no ``val``,
which is then an empty table with the input's schema). Methods:

* ``random``: rows are ranked by a seeded hash of their position in the input and the ranking is
  cut at the ratios, so the sizes are exact to a row.
* ``stratified``: the same, separately within each class of ``stratify``, so every split has the
  input's class proportions (each class gets at least one row in every split).
* ``time``: the rows ordered by ``time_column`` are cut at the ratios; rows with equal
  timestamps are never separated (a tie at a cut goes to the earlier split), so no row of a
  later split is earlier than a row of an earlier split.
* ``group``: every value of ``group`` is assigned as a whole by a seeded hash of the value, so a
  group keeps its split when other groups are added; sizes only approximate the ratios.

Everything is a Polars expression of the data and the seed (hashes and ordinal ranks, no
sampling that depends on thread timing), so the same input and params give identical outputs.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import polars as pl
from pydantic import Field, field_validator, model_validator

from ductwork.core.contract import (
    ArtifactInfo,
    Inputs,
    Output,
    StageContext,
    StageKind,
    StageParams,
)
from ductwork.errors import DataError, did_you_mean

SPLITS = ("train", "val", "test")
_ROW = "__ductwork_split_row"
_SPLIT = "__ductwork_split"
_HASH = "__ductwork_split_hash"
_METHOD_COLUMN = {"stratified": "stratify", "time": "time_column", "group": "group"}
_EXAMPLES = 5


class SplitParams(StageParams):
    ratios: list[float] = Field(
        default_factory=lambda: [0.7, 0.15, 0.15], min_length=2, max_length=3
    )
    method: Literal["random", "stratified", "time", "group"] = "random"
    seed: int = Field(default=42, ge=0, lt=2**64)
    stratify: str | None = None
    time_column: str | None = None
    group: str | None = None
    tolerance: float = Field(default=0.02, gt=0, le=1)

    @field_validator("ratios")
    @classmethod
    def _ratios_sum_to_one(cls, value: list[float]) -> list[float]:
        for r in value:
            if not 0.0 < r < 1.0:
                msg = f"ratio {r} is not between 0 and 1 (exclusive)"
                raise ValueError(msg)
        total = math.fsum(value)
        if abs(total - 1.0) > 1e-9:
            msg = f"ratios {value} sum to {total:g}, not 1"
            raise ValueError(msg)
        return value

    @model_validator(mode="after")
    def _column_for_method(self) -> SplitParams:
        for method, key in _METHOD_COLUMN.items():
            value = getattr(self, key)
            if self.method == method and value is None:
                msg = f"method: {method} needs '{key}' (a column name)"
                raise ValueError(msg)
            if self.method != method and value is not None:
                msg = f"'{key}' is only used with method: {method} (method is {self.method})"
                raise ValueError(msg)
        return self

    @property
    def column(self) -> str | None:
        """The column the method splits by (None for random)."""
        key = _METHOD_COLUMN.get(self.method)
        return None if key is None else getattr(self, key)

    @property
    def splits(self) -> tuple[int, ...]:
        """Indexes into SPLITS of the non-empty splits, in order."""
        return (0, 1, 2) if len(self.ratios) == 3 else (0, 2)

    @property
    def cumulative(self) -> list[float]:
        """The cut points: cumulative ratios without the final 1."""
        return [math.fsum(self.ratios[: i + 1]) for i in range(len(self.ratios) - 1)]


class Split(StageKind[SplitParams]):
    """Split a table into train / val / test: random, stratified, by time or by group."""

    name = "split"
    version = "1"
    Params = SplitParams
    summary = "split a table into train / val / test (random, stratified, time, group)"
    outputs: ClassVar[dict[str, Output]] = {
        "train": Output("table", description="the training rows"),
        "val": Output("table", description="the validation rows (empty with 2 ratios)"),
        "test": Output("table", description="the test rows"),
    }

    def run(self, params: SplitParams, inputs: Inputs, ctx: StageContext) -> dict[str, Any]:
        lf = inputs.only().lazy()
        schema = lf.collect_schema()
        for reserved in (_ROW, _SPLIT, _HASH):
            if reserved in schema:
                msg = f"stage '{ctx.stage}': the input has a column '{reserved}' that split uses"
                raise DataError(msg, hint="Rename or drop it before splitting.")
        column = params.column
        if column is not None:
            _require_column(ctx.stage, params, column, schema.names())
            _require_values(ctx.stage, params, column, lf)

        assigned = (
            lf.with_row_index(_ROW)
            .with_columns(_assignment(params, schema).alias(_SPLIT))
            .drop(_ROW)
            .collect()
        )
        frames = {
            name: assigned.filter(pl.col(_SPLIT) == i).drop(_SPLIT) for i, name in enumerate(SPLITS)
        }
        ctx.metric(rows_in=assigned.height, **{k: v.height for k, v in frames.items()})
        if params.method == "stratified" and params.stratify is not None:
            ctx.metric(class_proportions=_class_proportions(assigned, params.stratify))
        return dict(frames)

    def check(
        self,
        params: SplitParams,
        inputs: Inputs,
        outputs: Mapping[str, ArtifactInfo],
        ctx: StageContext,
    ) -> list[str]:
        source = inputs.only()
        problems: list[str] = []
        rows = {name: outputs[name].rows for name in SPLITS}
        if source.rows is not None and all(n is not None for n in rows.values()):
            total = sum(n or 0 for n in rows.values())
            if total != source.rows:
                problems.append(
                    f"complete: train ({rows['train']}) + val ({rows['val']}) + test "
                    f"({rows['test']}) = {total} rows, but the input has {source.rows}"
                )
        for name in SPLITS:
            schema = outputs[name].schema
            if (
                source.info.schema is not None
                and schema is not None
                and schema != source.info.schema
            ):
                problems.append(f"schema: the '{name}' output's columns differ from the input's")
        if not source.info.path or not all(outputs[name].path for name in SPLITS):
            return problems  # nothing on disk to compare
        frames = {name: pl.scan_parquet(outputs[name].path) for name in SPLITS}
        problems += _check_disjoint(source.lazy(), frames)
        column = params.column
        present = column is not None and all(
            column in lf.collect_schema().names() for lf in frames.values()
        )
        if column is None or not present:
            return problems
        if params.method == "stratified":
            problems += _check_proportions(source.lazy(), frames, column, params.tolerance)
        elif params.method == "group":
            problems += _check_groups(frames, column)
        elif params.method == "time":
            problems += _check_time_order(frames, column)
        return problems


# ------------------------------------------------------------------------------- assignment
def _assignment(params: SplitParams, schema: Mapping[str, pl.DataType]) -> pl.Expr:
    """An expression giving each row its split: 0 (train), 1 (val) or 2 (test)."""
    if params.method == "group" and params.group is not None:
        key = pl.col(params.group)
        if schema[params.group].base_type().__name__ in ("Categorical", "Enum"):
            key = key.cast(pl.String)  # hash the text, not the physical code
        unit = key.hash(params.seed).cast(pl.Float64) / float(2**64)
        return _by_thresholds(unit, [pl.lit(c) for c in params.cumulative], params.splits)
    if params.method == "time" and params.time_column is not None:
        # the 0-based position of the first row of the row's tie group in time order
        start = pl.col(params.time_column).rank("min").cast(pl.Int64) - 1
        size = pl.len().cast(pl.Int64)
        return _by_thresholds(start, _cuts(size, params, clamp=False), params.splits)
    shuffled = pl.col(_ROW).hash(params.seed).rank("ordinal").cast(pl.Int64) - 1
    size = pl.len().cast(pl.Int64)
    if params.method == "stratified" and params.stratify is not None:
        shuffled = shuffled.over(params.stratify)
        size = size.over(params.stratify)
    return _by_thresholds(shuffled, _cuts(size, params, clamp=True), params.splits)


def _cuts(size: pl.Expr, params: SplitParams, *, clamp: bool) -> list[pl.Expr]:
    """Row positions where the splits end: round(size * cumulative ratio).

    With ``clamp``, a table (or class) with at least one row per split gives every split at
    least one row.
    """
    k = len(params.ratios)
    cuts: list[pl.Expr] = []
    lower = pl.lit(1, dtype=pl.Int64)
    for i, c in enumerate(params.cumulative):
        raw = (size.cast(pl.Float64) * c + 0.5).floor().cast(pl.Int64)
        if clamp:
            upper = size - (k - 1 - i)
            raw = pl.when(size >= k).then(raw.clip(lower, upper)).otherwise(raw)
            lower = raw + 1
        cuts.append(raw)
    return cuts


def _by_thresholds(value: pl.Expr, cuts: list[pl.Expr], splits: tuple[int, ...]) -> pl.Expr:
    expr = pl.lit(splits[-1], dtype=pl.UInt8)
    for cut, split in reversed(list(zip(cuts, splits, strict=False))):
        expr = pl.when(value < cut).then(pl.lit(split, dtype=pl.UInt8)).otherwise(expr)
    return expr


def _class_proportions(assigned: pl.DataFrame, column: str) -> dict[str, dict[str, float]]:
    counts = assigned.group_by(_SPLIT, column).agg(pl.len().alias("n")).sort(_SPLIT, column)
    out: dict[str, dict[str, float]] = {}
    total = assigned.group_by(column).agg(pl.len().alias("n")).sort(column)
    out["input"] = {str(k): n / assigned.height for k, n in total.iter_rows()}
    for i, name in enumerate(SPLITS):
        part = counts.filter(pl.col(_SPLIT) == i)
        size = int(part["n"].sum())
        out[name] = {str(k): n / size for _, k, n in part.iter_rows()} if size else {}
    return out


# ------------------------------------------------------------------------------- run errors
def _require_column(stage: str, params: SplitParams, column: str, names: list[str]) -> None:
    if column in names:
        return
    key = _METHOD_COLUMN[params.method]
    msg = (
        f"stage '{stage}': {key} column '{column}' not found in the input"
        f"{did_you_mean(column, names)}"
    )
    raise DataError(msg, hint=f"Columns: {', '.join(names)}")


def _require_values(stage: str, params: SplitParams, column: str, lf: pl.LazyFrame) -> None:
    """No nulls in the split column; for stratified, enough rows in every class."""
    key = _METHOD_COLUMN[params.method]
    if params.method != "stratified":
        nulls = int(lf.select(pl.col(column).null_count()).collect().item())
    else:
        counts = lf.group_by(column).agg(pl.len().alias("n")).collect()
        nulls = int(counts.filter(pl.col(column).is_null())["n"].sum())
    if nulls:
        msg = (
            f"stage '{stage}': {key} column '{column}' has {nulls:,} null values; "
            f"method: {params.method} needs a value on every row"
        )
        hint = (
            f"Drop or fill the nulls before splitting (e.g. a transform stage with "
            f"'where {column} is not null')."
        )
        raise DataError(msg, hint=hint)
    if params.method != "stratified":
        return
    needed = len(params.ratios)
    rare = counts.filter(pl.col("n") < needed).sort("n", column)
    if rare.height:
        shown = ", ".join(
            f"{_show(value)} ({n} row{'s' if n != 1 else ''})"
            for value, n in rare.head(_EXAMPLES).iter_rows()
        )
        more = f" and {rare.height - _EXAMPLES} more" if rare.height > _EXAMPLES else ""
        msg = (
            f"stage '{stage}': stratify column '{column}' has classes with fewer rows than "
            f"the {needed} splits: {shown}{more}"
        )
        hint = (
            "Merge rare classes into one (e.g. a transform stage mapping them to 'other'), "
            "drop them, or use method: random."
        )
        raise DataError(msg, hint=hint)


def _show(value: Any) -> str:
    return f"'{value}'" if isinstance(value, str) else str(value)


# ------------------------------------------------------------------------------- invariants
def _check_disjoint(source: pl.LazyFrame, frames: Mapping[str, pl.LazyFrame]) -> list[str]:
    """Compare row fingerprints: every input row is in exactly one output, and nothing else."""
    fp = pl.struct(pl.all()).hash(0).alias("fp")
    columns = source.collect_schema().names()
    inp = source.select(fp).group_by("fp").agg(pl.len().alias("n_in"))
    out = (
        pl.concat(
            [
                lf.select(columns).select(fp).with_columns(pl.lit(name).alias("split"))
                for name, lf in frames.items()
            ]
        )
        .group_by("fp")
        .agg(pl.len().alias("n_out"), pl.col("split").n_unique().alias("sides"))
    )
    try:
        joined = inp.join(out, on="fp", how="full", coalesce=True).fill_null(0).collect()
    except pl.exceptions.PolarsError:  # an output's columns differ: reported as a schema issue
        return []
    extra = pl.col("n_out") > pl.col("n_in")
    overlap = joined.filter(extra & (pl.col("sides") > 1)).height
    foreign = joined.filter(extra & (pl.col("sides") <= 1)).height
    lost = joined.filter(pl.col("n_in") > pl.col("n_out")).height
    problems: list[str] = []
    if overlap:
        problems.append(f"disjoint: {overlap:,} rows are in more than one output")
    if foreign:
        problems.append(f"disjoint: {foreign:,} output rows are not rows of the input")
    if lost:
        problems.append(f"complete: {lost:,} input rows are in no output")
    return problems


def _check_proportions(
    source: pl.LazyFrame, frames: Mapping[str, pl.LazyFrame], column: str, tolerance: float
) -> list[str]:
    def shares(lf: pl.LazyFrame) -> tuple[int, dict[Any, float]]:
        counts = lf.group_by(column).agg(pl.len().alias("n")).collect()
        total = int(counts["n"].sum())
        return total, {k: n / total for k, n in counts.iter_rows()} if total else {}

    _, expected = shares(source)
    problems: list[str] = []
    for name, lf in frames.items():
        size, actual = shares(lf)
        if size < 1 / tolerance:
            continue
        off = sorted(
            (abs(actual.get(k, 0.0) - expected.get(k, 0.0)), str(k), k)
            for k in set(actual) | set(expected)
        )
        bad = [(d, k) for d, _, k in reversed(off) if d > tolerance]
        if bad:
            shown = ", ".join(
                f"{_show(k)} {actual.get(k, 0.0):.3f} vs {expected.get(k, 0.0):.3f}"
                for _, k in bad[:_EXAMPLES]
            )
            problems.append(
                f"stratified: class proportions of '{column}' in '{name}' differ from the "
                f"input's by more than {tolerance:g}: {shown}"
            )
    return problems


def _check_groups(frames: Mapping[str, pl.LazyFrame], column: str) -> list[str]:
    keys = pl.concat(
        [
            lf.select(pl.col(column)).unique().with_columns(pl.lit(name).alias("split"))
            for name, lf in frames.items()
        ]
    )
    shared = (
        keys.group_by(column)
        .agg(pl.col("split").n_unique().alias("sides"))
        .filter(pl.col("sides") > 1)
        .sort(column)
        .collect()
    )
    if not shared.height:
        return []
    shown = ", ".join(_show(v) for v in shared[column].head(_EXAMPLES).to_list())
    return [f"group: {shared.height:,} values of '{column}' are in more than one output: {shown}"]


def _check_time_order(frames: Mapping[str, pl.LazyFrame], column: str) -> list[str]:
    bounds: list[tuple[str, Any, Any]] = []
    for name, lf in frames.items():
        lo, hi = (
            lf.select(pl.col(column).min().alias("lo"), pl.col(column).max().alias("hi"))
            .collect()
            .row(0)
        )
        if lo is not None:
            bounds.append((name, lo, hi))
    problems: list[str] = []
    for (early, _, hi), (late, lo, _) in itertools.pairwise(bounds):
        if not hi < lo:
            problems.append(
                f"time order: the latest '{column}' in '{early}' ({hi}) is not before the "
                f"earliest in '{late}' ({lo})"
            )
    return problems

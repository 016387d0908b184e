"""Binding checks to a table schema: :class:`CheckPlan` and :func:`plan_checks`.

A plan turns each check into Polars expressions: a boolean failure mask per row-level check
(the validate stage's quarantine uses these), the one-row aggregations that count unexpected and
missing values and sample failing rows, and :meth:`CheckPlan.report`, which turns that one row
into a :class:`~ductwork.core.checks.results.CheckReport`. Schema-only checks (exists, type) are
decided at planning time. A missing column or an incomparable type is a :class:`DataError`.
Polars is imported inside the functions.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ductwork.core.checks._util import _dtype_name, _short
from ductwork.core.checks.models import (
    Between,
    Bound,
    Check,
    Exists,
    ExprCheck,
    InSet,
    NotNull,
    Regex,
    RowCount,
    TypeCheck,
    Unique,
)
from ductwork.core.checks.results import CheckReport, CheckResult
from ductwork.errors import DataError, did_you_mean

if TYPE_CHECKING:
    import polars as pl

# The internal mask columns a plan adds; named so they cannot clash with real data.
_MASK = "__dw_fail_{}"


def _kind_of(dtype: pl.DataType) -> str:
    if dtype.is_numeric():
        return "numeric"
    if dtype.is_temporal():
        return "temporal"
    name = _dtype_name(dtype)
    if name in ("String", "Categorical", "Enum"):
        return "string"
    if name == "Boolean":
        return "boolean"
    return "other"


def _bound_lit(value: Bound, dtype: pl.DataType, check: Between) -> pl.Expr:
    import polars as pl

    kind = _kind_of(dtype)
    numeric_bound = isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "numeric" and numeric_bound:
        return pl.lit(value)
    if kind == "temporal" and isinstance(value, dt.date | str):
        try:
            if isinstance(value, str):
                value = dt.datetime.fromisoformat(value)
            return pl.lit(pl.Series([value]).cast(dtype, strict=True)[0], dtype=dtype)
        except (pl.exceptions.PolarsError, ValueError, TypeError):
            pass
    msg = (
        f"check '{check.check_name}': cannot compare column '{check.column}' ({dtype}) "
        f"with the bound {value!r}"
    )
    hint = "Between needs a numeric column with number bounds, or a date/time column with dates."
    raise DataError(msg, hint=hint)


@dataclass
class _Planned:
    check: Check
    index: int
    mask: pl.Expr | None = None  # True where the row fails; never null
    missing: pl.Expr | None = None  # count of rows left out (nulls)
    sample: pl.Expr | None = None  # the values shown for failing rows
    table_result: CheckResult | None = None

    @property
    def mask_column(self) -> str:
        return _MASK.format(self.index)


class CheckPlan:
    """Checks bound to a schema: the expressions that evaluate them in one query.

    * :attr:`mask_columns` -- one boolean column per row-level check, True where the row fails
      (null rows of map checks are not failures);
    * :meth:`aggregations` -- the one-row summary over a frame that has the mask columns;
    * :meth:`report` -- turns that one row into a :class:`CheckReport`;
    * :meth:`failed_checks` / :meth:`any_failed` -- per-row list of failed check names / flag.
    """

    def __init__(self, checks: Sequence[Check], schema: Mapping[str, pl.DataType]) -> None:
        self.checks = list(checks)
        self.schema = dict(schema)
        self.planned = [self._plan(i, c) for i, c in enumerate(self.checks)]

    @property
    def row_checks(self) -> list[_Planned]:
        return [p for p in self.planned if p.mask is not None]

    def schema_results(self) -> list[CheckResult]:
        """Results of the checks decided by the schema alone (exists, type), before any data."""
        return [p.table_result for p in self.planned if p.table_result is not None]

    @property
    def mask_columns(self) -> dict[str, pl.Expr]:
        return {
            p.mask_column: p.mask.alias(p.mask_column)
            for p in self.row_checks
            if p.mask is not None
        }

    def any_failed(self) -> pl.Expr:
        import polars as pl

        cols = [p.mask_column for p in self.row_checks]
        return pl.any_horizontal(cols) if cols else pl.lit(False)

    def failed_checks(self) -> pl.Expr:
        """A ``list[str]`` expression naming the row-level checks each row failed."""
        import polars as pl

        parts = [
            pl.when(pl.col(p.mask_column)).then(pl.lit(p.check.check_name)) for p in self.row_checks
        ]
        if not parts:
            return pl.lit([], dtype=pl.List(pl.String))
        return pl.concat_list(parts).list.drop_nulls()

    # -- per check --------------------------------------------------------------------------
    def _column(self, check: Check, column: str) -> pl.DataType:
        try:
            return self.schema[column]
        except KeyError:
            cols = list(self.schema)
            msg = f"check '{check.check_name}': column '{column}' not found{did_you_mean(column, cols)}"
            shown = ", ".join(cols[:20]) + (", ..." if len(cols) > 20 else "")
            raise DataError(msg, hint=f"Columns: {shown}") from None

    def _plan(self, index: int, check: Check) -> _Planned:
        import polars as pl

        out = _Planned(check=check, index=index)
        if isinstance(check, RowCount | Exists | TypeCheck):
            out.table_result = self._table_check(check)
            return out
        if isinstance(check, ExprCheck):
            expr = self._expr(check)
            out.mask = expr.not_().fill_null(False)
            out.missing = expr.null_count()
            roots = [c for c in dict.fromkeys(expr.meta.root_names()) if c in self.schema]
            out.sample = pl.struct(roots) if roots else None
            return out
        dtype = self._column(check, check.column)
        col = pl.col(check.column)
        out.sample = col
        out.missing = col.null_count()
        if isinstance(check, NotNull):
            out.mask = col.is_null()
            out.missing = None
        elif isinstance(check, Between):
            out.mask = self._between(check, dtype)
        elif isinstance(check, InSet):
            out.mask = self._in_set(check, dtype)
        elif isinstance(check, Unique):
            out.mask = col.is_duplicated() & col.is_not_null()
        elif isinstance(check, Regex):
            kind = _kind_of(dtype)
            if kind != "string":
                msg = (
                    f"check '{check.check_name}': regex needs a string column, "
                    f"but '{check.column}' is {dtype}"
                )
                raise DataError(msg, hint="Cast it first in a transform stage, or drop the check.")
            text = col if _dtype_name(dtype) == "String" else col.cast(pl.String)
            out.mask = text.str.contains(check.regex).not_().fill_null(False)
        return out

    def _between(self, check: Between, dtype: pl.DataType) -> pl.Expr:
        import polars as pl

        if _kind_of(dtype) not in ("numeric", "temporal"):
            msg = (
                f"check '{check.check_name}': between needs a numeric or date/time column, "
                f"but '{check.column}' is {dtype}"
            )
            raise DataError(msg, hint="Use in_set or regex for text columns.")
        lo, hi = check.bounds
        smin, smax = check.strict_bounds
        col = pl.col(check.column)
        if lo is not None and hi is not None:
            closed: dict[tuple[bool, bool], Literal["both", "left", "right", "none"]] = {
                (False, False): "both",
                (True, False): "right",
                (False, True): "left",
                (True, True): "none",
            }
            lo_lit, hi_lit = _bound_lit(lo, dtype, check), _bound_lit(hi, dtype, check)
            ok = col.is_between(lo_lit, hi_lit, closed=closed[smin, smax])
        elif lo is not None:
            b = _bound_lit(lo, dtype, check)
            ok = col > b if smin else col >= b
        else:  # the model guarantees at least one bound
            b = _bound_lit(hi, dtype, check)  # type: ignore[arg-type]
            ok = col < b if smax else col <= b
        return ok.not_().fill_null(False)

    def _in_set(self, check: InSet, dtype: pl.DataType) -> pl.Expr:
        import polars as pl

        col = pl.col(check.column)
        kind = _kind_of(dtype)
        if kind == "string":
            target: pl.DataType = pl.String()
            col = col if _dtype_name(dtype) == "String" else col.cast(pl.String)
        else:
            target = dtype
        values = list(check.in_set)
        bad_type = kind == "numeric" and any(isinstance(v, bool | str) for v in values)
        if kind == "numeric" and dtype.is_integer() and any(isinstance(v, float) for v in values):
            target, col = pl.Float64(), col.cast(pl.Float64)  # 1.5 must not match 1
        try:
            if bad_type:
                raise TypeError
            series = pl.Series(values, strict=False).cast(target, strict=True)
        except (pl.exceptions.PolarsError, ValueError, TypeError, OverflowError):
            msg = (
                f"check '{check.check_name}': the values {_short(values)} cannot be compared "
                f"with column '{check.column}' ({dtype})"
            )
            raise DataError(msg, hint=f"Write the set as {dtype} values.") from None
        return col.is_in(series.implode()).not_().fill_null(False)

    def _expr(self, check: ExprCheck) -> pl.Expr:
        import polars as pl

        expr = pl.sql_expr(check.expr)
        probe = pl.LazyFrame(schema=self.schema)
        try:
            dtype = probe.select(expr.alias("r")).collect_schema()["r"]
        except pl.exceptions.ColumnNotFoundError as exc:
            missing = str(exc).strip().splitlines()[0]
            msg = (
                f"check '{check.check_name}': expr {check.expr!r} names a missing column: {missing}"
            )
            raise DataError(msg, hint=f"Columns: {', '.join(self.schema)}") from None
        except pl.exceptions.PolarsError as exc:
            first = str(exc).strip().splitlines()[0]
            msg = f"check '{check.check_name}': expr {check.expr!r} cannot be evaluated: {first}"
            raise DataError(msg) from None
        if _dtype_name(dtype) != "Boolean":
            msg = f"check '{check.check_name}': expr {check.expr!r} gives {dtype}, not a boolean"
            raise DataError(msg, hint="Write a condition, e.g. 'a < b' or 'x IS NOT NULL'.")
        return expr

    def _table_check(self, check: RowCount | Exists | TypeCheck) -> CheckResult | None:
        if isinstance(check, RowCount):
            return None  # needs the row count: see report()
        if isinstance(check, Exists):
            ok = check.column in self.schema
            details = (
                ""
                if ok
                else f"column '{check.column}' does not exist{did_you_mean(check.column, self.schema)}"
            )
            return CheckResult(check=check, success=ok, element_count=0, details=details)
        dtype = self._column(check, check.column)
        ok = check.matches(dtype)
        details = "" if ok else f"column '{check.column}' is {dtype}, expected {check.type_}"
        return CheckResult(
            check=check, success=ok, element_count=0, observed_value=str(dtype), details=details
        )

    # -- evaluation ---------------------------------------------------------------------------
    def aggregations(self, *, sample_size: int = 5, row_index: str | None = None) -> list[pl.Expr]:
        """One-row summary over a frame holding the mask columns: counts, then samples.

        ``row_index`` names a column with the 0-based row number (else one is generated).
        """
        return self.count_aggregations() + self.sample_aggregations(
            sample_size=sample_size, row_index=row_index
        )

    def count_aggregations(self) -> list[pl.Expr]:
        """Rows, unexpected and missing counts (needs every row)."""
        import polars as pl

        aggs: list[pl.Expr] = [pl.len().alias("__dw_rows")]
        for p in self.row_checks:
            if isinstance(p.check, NotNull):  # cheaper than summing the mask
                bad = pl.col(p.check.column).null_count()
            else:
                bad = pl.col(p.mask_column).sum()
            aggs.append(bad.alias(f"__dw_bad_{p.index}"))
            if p.missing is not None:
                aggs.append(p.missing.alias(f"__dw_missing_{p.index}"))
        return aggs

    def sample_aggregations(
        self, *, sample_size: int = 5, row_index: str | None = None
    ) -> list[pl.Expr]:
        """The first failing values and row numbers per check.

        They only look at failing rows, so they may run on just the rows that failed any check
        (the quarantine) as long as ``row_index`` holds the original row numbers.
        """
        if sample_size <= 0:
            return []
        import polars as pl

        aggs: list[pl.Expr] = []
        for p in self.row_checks:
            first = pl.col(p.mask_column).arg_true().head(sample_size)  # positions in this frame
            idx = pl.col(row_index).gather(first) if row_index else first
            aggs.append(idx.implode().alias(f"__dw_idx_{p.index}"))
            if p.sample is not None and not isinstance(p.check, NotNull):
                aggs.append(p.sample.gather(first).implode().alias(f"__dw_sample_{p.index}"))
        return aggs

    def report(self, row: Mapping[str, Any]) -> CheckReport:
        """Build the report from the one row produced by :meth:`aggregations`."""
        n = int(row["__dw_rows"])
        results: list[CheckResult] = []
        for p in self.planned:
            check = p.check
            if p.table_result is not None:
                results.append(p.table_result)
                continue
            if isinstance(check, RowCount):
                lo, hi = check.row_count.min, check.row_count.max
                ok = (lo is None or n >= lo) and (hi is None or n <= hi)
                span = (
                    f"between {lo if lo is not None else 0} and {hi if hi is not None else 'any'}"
                )
                details = "" if ok else f"the table has {n} rows, expected {span}"
                results.append(
                    CheckResult(
                        check=check, success=ok, element_count=n, observed_value=n, details=details
                    )
                )
                continue
            bad = int(row[f"__dw_bad_{p.index}"] or 0)
            missing = int(row.get(f"__dw_missing_{p.index}") or 0)
            idx = list(row.get(f"__dw_idx_{p.index}") or [])
            if isinstance(check, NotNull):
                sample: list[Any] = [None] * len(idx)
            else:
                sample = list(row.get(f"__dw_sample_{p.index}") or [])
            considered = n - missing
            mostly = check.tolerance if check.tolerance is not None else 1.0
            ok = considered == 0 or (considered - bad) / considered >= mostly
            results.append(
                CheckResult(
                    check=check,
                    success=ok,
                    element_count=n,
                    missing_count=missing,
                    unexpected_count=bad,
                    partial_unexpected_list=sample,
                    partial_unexpected_index_list=[int(i) for i in idx],
                )
            )
        return CheckReport(results=results, row_count=n)


def plan_checks(checks: Sequence[Check], schema: Mapping[str, pl.DataType]) -> CheckPlan:
    """Bind checks to a table schema; a missing column or wrong type is a :class:`DataError`."""
    return CheckPlan(checks, schema)

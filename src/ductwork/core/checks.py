"""The check vocabulary shared by the ``validate`` stage kind and the runner's ``expect:`` rules.

A check is a small dict in the pipeline file, parsed into one pydantic model per rule::

    {column: dep_delay, not_null: true, mostly: 0.97}
    {column: distance, between: [0, 5000]}            # or min:/max:, strict / strict_min / strict_max
    {column: origin, in_set: [EWR, JFK, LGA]}
    {column: id, unique: true}
    {column: code, regex: "^[A-Z]{3}$"}               # search semantics: anchor it yourself
    {column: x, exists: true}
    {column: x, type: Int64}
    {row_count: {min: 1, max: 1000000}}
    {expr: "dep_delay < arr_delay + 600", name: sane_delays}

Semantics follow Great Expectations 1.x so that its users get the numbers they expect:

* map checks (between, in_set, unique, regex, expr) leave nulls out: a null is neither expected
  nor unexpected, and it is counted in ``missing_count``; ``not_null`` counts nulls as unexpected;
* ``unique`` marks *every* occurrence of a duplicated value (pandas ``duplicated(keep=False)``);
* ``regex`` matches anywhere in the value (search, not full match);
* ``mostly`` (0..1): a check succeeds when ``(considered - unexpected) / considered >= mostly``,
  where considered = non-null rows (all rows for ``not_null``); no considered rows = success;
* percentages are on a 0-100 scale: ``unexpected_percent`` = unexpected / non-null x 100,
  ``unexpected_percent_total`` = unexpected / rows x 100.

NaN is a value, not a null (Polars semantics): it fails ``between`` and ``in_set``.

All checks of a table are evaluated by ONE lazy query (:func:`evaluate`); the validate stage uses
the same :class:`CheckPlan` to build per-row failure masks for its quarantine output.
Polars is imported lazily, so the spec layer can parse checks without paying for it.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from ductwork.errors import DataError, did_you_mean

if TYPE_CHECKING:
    import polars as pl

__all__ = [
    "Between",
    "Check",
    "CheckList",
    "CheckPlan",
    "CheckReport",
    "CheckResult",
    "Exists",
    "ExprCheck",
    "InSet",
    "NotNull",
    "Regex",
    "RowCount",
    "TypeCheck",
    "Unique",
    "annotate_failures",
    "evaluate",
    "expectation_violations",
    "parse_checks",
    "plan_checks",
]

Scalar = bool | int | float | dt.datetime | dt.date | str
Bound = int | float | dt.datetime | dt.date | str

# The internal mask columns a plan adds; named so they cannot clash with real data.
_MASK = "__dw_fail_{}"


# --------------------------------------------------------------------------------------------
# The vocabulary
# --------------------------------------------------------------------------------------------
class _CheckBase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: ClassVar[str]
    expectation_type: ClassVar[str]
    row_level: ClassVar[bool] = False

    name: str | None = Field(default=None, min_length=1)

    @property
    def check_name(self) -> str:
        """The name used in reports, metrics and ``_failed_checks``."""
        return self.name or self._default_name()

    @property
    def target(self) -> str | None:
        """The column the check is about (None for table and expr checks)."""
        return None

    @property
    def tolerance(self) -> float | None:
        """``mostly`` for row-level checks, None when not set or not applicable."""
        return None

    def _default_name(self) -> str:
        return self.kind

    def kwargs(self) -> dict[str, Any]:
        """The settings under GE's names (``expectation_config.kwargs``)."""
        out: dict[str, Any] = {} if self.target is None else {"column": self.target}
        out.update(self._ge_kwargs())
        if self.tolerance is not None:
            out["mostly"] = self.tolerance
        return out

    def _ge_kwargs(self) -> dict[str, Any]:
        return {}


class _RowCheck(_CheckBase):
    row_level: ClassVar[bool] = True

    mostly: float | None = Field(default=None, ge=0.0, le=1.0)

    @property
    def tolerance(self) -> float | None:
        return self.mostly


class _ColumnRowCheck(_RowCheck):
    column: str = Field(min_length=1)

    @property
    def target(self) -> str | None:
        return self.column

    def _default_name(self) -> str:
        return f"{self.column}:{self.kind}"


class NotNull(_ColumnRowCheck):
    """The column has no nulls (nulls are the unexpected values)."""

    kind: ClassVar[str] = "not_null"
    expectation_type: ClassVar[str] = "expect_column_values_to_not_be_null"

    not_null: Literal[True]


class Between(_ColumnRowCheck):
    """Values lie between ``min`` and ``max`` (inclusive unless strict); a missing bound is open."""

    kind: ClassVar[str] = "between"
    expectation_type: ClassVar[str] = "expect_column_values_to_be_between"

    between: tuple[Bound | None, Bound | None] | None = None
    min: Bound | None = None
    max: Bound | None = None
    strict: bool = False
    strict_min: bool = False
    strict_max: bool = False

    @model_validator(mode="after")
    def _check_bounds(self) -> Between:
        if self.between is not None and (self.min is not None or self.max is not None):
            msg = "give the bounds either as between: [min, max] or as min:/max:, not both"
            raise ValueError(msg)
        lo, hi = self.bounds
        if lo is None and hi is None:
            msg = "between needs at least one bound (min or max)"
            raise ValueError(msg)
        if lo is not None and hi is not None:
            try:
                reversed_ = bool(lo > hi)  # type: ignore[operator]
            except TypeError:
                msg = f"the bounds {lo!r} and {hi!r} are of different types"
                raise ValueError(msg) from None
            if reversed_:
                msg = f"min {lo!r} is greater than max {hi!r}"
                raise ValueError(msg)
        return self

    @property
    def bounds(self) -> tuple[Bound | None, Bound | None]:
        if self.between is not None:
            return self.between
        return self.min, self.max

    @property
    def strict_bounds(self) -> tuple[bool, bool]:
        return self.strict or self.strict_min, self.strict or self.strict_max

    def _ge_kwargs(self) -> dict[str, Any]:
        lo, hi = self.bounds
        smin, smax = self.strict_bounds
        return {
            "min_value": _jsonable(lo),
            "max_value": _jsonable(hi),
            "strict_min": smin,
            "strict_max": smax,
        }


class InSet(_ColumnRowCheck):
    """Values are one of ``in_set``."""

    kind: ClassVar[str] = "in_set"
    expectation_type: ClassVar[str] = "expect_column_values_to_be_in_set"

    in_set: list[Scalar] = Field(min_length=1)

    def _ge_kwargs(self) -> dict[str, Any]:
        return {"value_set": [_jsonable(v) for v in self.in_set]}


class Unique(_ColumnRowCheck):
    """No value occurs twice; every occurrence of a duplicated value is unexpected."""

    kind: ClassVar[str] = "unique"
    expectation_type: ClassVar[str] = "expect_column_values_to_be_unique"

    unique: Literal[True]


class Regex(_ColumnRowCheck):
    """Values contain a match of ``regex`` (Rust regex syntax; search semantics)."""

    kind: ClassVar[str] = "regex"
    expectation_type: ClassVar[str] = "expect_column_values_to_match_regex"

    regex: str = Field(min_length=1)

    def _ge_kwargs(self) -> dict[str, Any]:
        return {"regex": self.regex}

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str) -> str:
        import polars as pl

        try:
            pl.select(pl.lit("").str.contains(value))
        except pl.exceptions.PolarsError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            msg = f"invalid regex {value!r}: {first}"
            raise ValueError(msg) from None
        return value


class ExprCheck(_RowCheck):
    """A row-level SQL expression that must be true (null results count as missing)."""

    kind: ClassVar[str] = "expr"
    expectation_type: ClassVar[str] = "expect_row_expression_to_be_true"

    expr: str = Field(min_length=1)

    def _ge_kwargs(self) -> dict[str, Any]:
        return {"expr": self.expr}

    @field_validator("expr")
    @classmethod
    def _parses(cls, value: str) -> str:
        import polars as pl

        try:
            pl.sql_expr(value)
        except (pl.exceptions.PolarsError, ValueError, TypeError) as exc:
            text = str(exc).strip().splitlines()
            msg = f"cannot parse {value!r} as a SQL expression: {text[0] if text else exc!r}"
            raise ValueError(msg) from None
        return value

    def _default_name(self) -> str:
        return f"expr:{self.expr}"


class Exists(_CheckBase):
    """The column exists."""

    kind: ClassVar[str] = "exists"
    expectation_type: ClassVar[str] = "expect_column_to_exist"

    column: str = Field(min_length=1)
    exists: Literal[True]

    @property
    def target(self) -> str | None:
        return self.column

    def _default_name(self) -> str:
        return f"{self.column}:exists"


_DTYPE_NAMES = [
    "Int8",
    "Int16",
    "Int32",
    "Int64",
    "Int128",
    "UInt8",
    "UInt16",
    "UInt32",
    "UInt64",
    "UInt128",
    "Float16",
    "Float32",
    "Float64",
    "Decimal",
    "String",
    "Binary",
    "Boolean",
    "Date",
    "Datetime",
    "Duration",
    "Time",
    "Categorical",
    "Enum",
    "List",
    "Array",
    "Struct",
    "Null",
    "Object",
]
_DTYPE_ALIASES = {
    "utf8": "String",
    "str": "String",
    "bool": "Boolean",
    "int": "Int64",
    "float": "Float64",
    **{n.lower(): n for n in _DTYPE_NAMES},
}


class TypeCheck(_CheckBase):
    """The column has a Polars dtype: ``Int64``, ``String``, ``Datetime`` (any unit/zone) or
    a full form such as ``Datetime(time_unit='us', time_zone=None)``."""

    kind: ClassVar[str] = "type"
    expectation_type: ClassVar[str] = "expect_column_values_to_be_of_type"

    column: str = Field(min_length=1)
    type_: str = Field(alias="type", min_length=1)

    def _ge_kwargs(self) -> dict[str, Any]:
        return {"type_": self.type_}

    @field_validator("type_")
    @classmethod
    def _known(cls, value: str) -> str:
        base = value.split("(", 1)[0].strip()
        if base.lower() not in _DTYPE_ALIASES:
            msg = f"unknown type {value!r}{did_you_mean(base, _DTYPE_NAMES)}"
            raise ValueError(msg)
        return value

    @property
    def target(self) -> str | None:
        return self.column

    def _default_name(self) -> str:
        return f"{self.column}:type"

    def matches(self, dtype: pl.DataType) -> bool:
        wanted = self.type_.replace(" ", "")
        if "(" in wanted:
            base, rest = wanted.split("(", 1)
            return str(dtype).replace(" ", "") == f"{_DTYPE_ALIASES[base.lower()]}({rest}"
        return _dtype_name(dtype) == _DTYPE_ALIASES[wanted.lower()]


class RowCountBounds(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    min: int | None = Field(default=None, ge=0)
    max: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> RowCountBounds:
        if self.min is None and self.max is None:
            msg = "row_count needs min, max or both"
            raise ValueError(msg)
        if self.min is not None and self.max is not None and self.min > self.max:
            msg = f"row_count min {self.min} is greater than max {self.max}"
            raise ValueError(msg)
        return self


class RowCount(_CheckBase):
    """The table has between ``min`` and ``max`` rows (inclusive)."""

    kind: ClassVar[str] = "row_count"
    expectation_type: ClassVar[str] = "expect_table_row_count_to_be_between"

    row_count: RowCountBounds

    def kwargs(self) -> dict[str, Any]:
        return {"min_value": self.row_count.min, "max_value": self.row_count.max}


_KINDS: dict[str, type[_CheckBase]] = {
    "not_null": NotNull,
    "between": Between,
    "in_set": InSet,
    "unique": Unique,
    "regex": Regex,
    "exists": Exists,
    "type": TypeCheck,
    "row_count": RowCount,
    "expr": ExprCheck,
}
_COMMON_KEYS = {"name", "column", "mostly", "min", "max", "strict", "strict_min", "strict_max"}


def _tag(value: Any) -> str | None:
    if isinstance(value, _CheckBase):
        return value.kind
    if not isinstance(value, Mapping):
        return None
    for key in _KINDS:
        if key in value:
            return key
    if "column" in value and ("min" in value or "max" in value):
        return "between"
    return None


def _precheck(value: Any) -> Any:
    """Explain a check dict that names no rule (or two) before the tagged union sees it."""
    if not isinstance(value, Mapping):
        if isinstance(value, _CheckBase):
            return value
        msg = f"a check is a mapping like {{column: x, not_null: true}}, got {type(value).__name__}"
        raise ValueError(msg)
    kinds = [k for k in _KINDS if k in value]
    if len(kinds) > 1:
        msg = f"a check names one rule, this one names {' and '.join(kinds)}: split it in two"
        raise ValueError(msg)
    if not kinds and _tag(value) is None:
        unknown = [str(k) for k in value if k not in _COMMON_KEYS]
        hint = ""
        for key in unknown:
            hint = did_you_mean(key, _KINDS)
            if hint:
                hint = f" (unknown key '{key}'{hint})"
                break
        msg = f"a check needs one of: {', '.join(_KINDS)}{hint}"
        raise ValueError(msg)
    return value


Check = Annotated[
    Annotated[NotNull, Tag("not_null")]
    | Annotated[Between, Tag("between")]
    | Annotated[InSet, Tag("in_set")]
    | Annotated[Unique, Tag("unique")]
    | Annotated[Regex, Tag("regex")]
    | Annotated[Exists, Tag("exists")]
    | Annotated[TypeCheck, Tag("type")]
    | Annotated[RowCount, Tag("row_count")]
    | Annotated[ExprCheck, Tag("expr")],
    Discriminator(_tag),
    BeforeValidator(_precheck),
]
"""One check: a tagged union, the tag being the rule key present in the dict."""


def _unique_names(checks: list[Check]) -> list[Check]:
    seen: set[str] = set()
    for c in checks:
        if c.check_name in seen:
            msg = f"two checks are named '{c.check_name}': give one of them its own name:"
            raise ValueError(msg)
        seen.add(c.check_name)
    return checks


CheckList = Annotated[list[Check], AfterValidator(_unique_names)]
"""A list of checks with unique names (use it as a pydantic field type)."""

_ADAPTER: TypeAdapter[list[Check]] = TypeAdapter(CheckList)


def parse_checks(raw: Sequence[Mapping[str, Any]]) -> list[Check]:
    """Parse check dicts (from YAML) into models; raises ``pydantic.ValidationError``."""
    return _ADAPTER.validate_python(list(raw))


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check, with GE's SUMMARY result fields."""

    check: Check
    success: bool
    element_count: int
    missing_count: int = 0
    unexpected_count: int = 0
    partial_unexpected_list: list[Any] = field(default_factory=list)
    partial_unexpected_index_list: list[int] = field(default_factory=list)
    observed_value: Any = None
    details: str = ""

    @property
    def name(self) -> str:
        return self.check.check_name

    @property
    def row_level(self) -> bool:
        return self.check.row_level

    @property
    def considered(self) -> int:
        return self.element_count - self.missing_count

    @property
    def unexpected_percent(self) -> float | None:
        """Unexpected / non-missing x 100 (GE); None when nothing was considered."""
        return self.unexpected_count / self.considered * 100 if self.considered else None

    @property
    def unexpected_percent_total(self) -> float | None:
        if not self.element_count:
            return None
        return self.unexpected_count / self.element_count * 100

    @property
    def missing_percent(self) -> float | None:
        return self.missing_count / self.element_count * 100 if self.element_count else None

    @property
    def tolerance_exceeded(self) -> bool:
        """A row-level check with ``mostly`` set that failed: too much bad data."""
        return self.check.tolerance is not None and not self.success

    def result_dict(self) -> dict[str, Any]:
        if not self.row_level:
            if isinstance(self.check, Exists):
                return {}
            return {"observed_value": _jsonable(self.observed_value)}
        sample = [_jsonable(v) for v in self.partial_unexpected_list]
        out: dict[str, Any] = {
            "element_count": self.element_count,
            "unexpected_count": self.unexpected_count,
            "unexpected_percent": self.unexpected_percent,
            "partial_unexpected_list": sample,
        }
        if not isinstance(self.check, NotNull):
            out["missing_count"] = self.missing_count
            out["missing_percent"] = self.missing_percent
            out["unexpected_percent_nonmissing"] = self.unexpected_percent
        out["unexpected_percent_total"] = self.unexpected_percent_total
        out["partial_unexpected_counts"] = _value_counts(sample)
        out["partial_unexpected_index_list"] = list(self.partial_unexpected_index_list)
        return out

    def to_dict(self) -> dict[str, Any]:
        """GE-like: ``{name, check, success, expectation_config: {type, kwargs}, result}``."""
        return {
            "name": self.name,
            "check": self.check.kind,
            "column": self.check.target,
            "success": self.success,
            "expectation_config": {
                "type": self.check.expectation_type,
                "kwargs": self.check.kwargs(),
            },
            "result": self.result_dict(),
        }

    def describe(self) -> str:
        """One human line: what failed and by how much."""
        if not self.row_level:
            return self.details
        if isinstance(self.check, NotNull):
            what = f"{self.unexpected_count} of {self.element_count} rows ({_pct(self.unexpected_percent)}) are null"
        else:
            what = (
                f"{self.unexpected_count} of {self.considered} non-null rows "
                f"({_pct(self.unexpected_percent)}) unexpected"
            )
        if self.check.tolerance is not None and not self.success:
            what += f", more than mostly={self.check.tolerance:g} allows"
        if self.partial_unexpected_list and not isinstance(self.check, NotNull):
            sample = ", ".join(_short(v) for v in self.partial_unexpected_list[:3])
            what += f"; e.g. {sample}"
        if self.partial_unexpected_index_list:
            rows = ", ".join(str(i) for i in self.partial_unexpected_index_list[:3])
            what += f" (rows {rows})"
        return what


@dataclass(frozen=True)
class CheckReport:
    """All check results of one evaluation."""

    results: list[CheckResult]
    row_count: int

    @property
    def success(self) -> bool:
        return all(r.success for r in self.results)

    @property
    def failed(self) -> list[CheckResult]:
        return [r for r in self.results if not r.success]

    def __getitem__(self, name: str) -> CheckResult:
        for r in self.results:
            if r.name == name:
                return r
        known = ", ".join(r.name for r in self.results)
        msg = f"no check named '{name}' (checks: {known})"
        raise KeyError(msg)

    def statistics(self) -> dict[str, Any]:
        n = len(self.results)
        ok = sum(r.success for r in self.results)
        return {
            "evaluated_expectations": n,
            "successful_expectations": ok,
            "unsuccessful_expectations": n - ok,
            "success_percent": ok / n * 100 if n else None,
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, with GE's suite-result field names."""
        return {
            "success": self.success,
            "row_count": self.row_count,
            "statistics": self.statistics(),
            "results": [r.to_dict() for r in self.results],
        }


# --------------------------------------------------------------------------------------------
# Planning: checks + a schema -> expressions
# --------------------------------------------------------------------------------------------
def _dtype_name(dtype: pl.DataType) -> str:
    return dtype.base_type().__name__


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


def evaluate(lf: pl.LazyFrame, checks: Sequence[Check], *, sample_size: int = 5) -> CheckReport:
    """Evaluate all checks on ``lf`` in ONE lazy query and return the report."""
    plan = plan_checks(checks, lf.collect_schema())
    row = lf.with_columns(**plan.mask_columns).select(plan.aggregations(sample_size=sample_size))
    return plan.report(row.collect().row(0, named=True))


def annotate_failures(
    lf: pl.LazyFrame, checks: Sequence[Check], *, column: str = "_failed_checks"
) -> pl.LazyFrame:
    """Add a ``list[str]`` column naming the row-level checks each row failed (lazily)."""
    plan = plan_checks(checks, lf.collect_schema())
    return (
        lf.with_columns(**plan.mask_columns)
        .with_columns(plan.failed_checks().alias(column))
        .drop(list(plan.mask_columns))
    )


def expectation_violations(lf: pl.LazyFrame, raw_rules: Sequence[Mapping[str, Any]]) -> list[str]:
    """Check ``expect:`` rules on a stage output: one message per failed rule, [] if all pass."""
    try:
        checks = parse_checks(raw_rules)
    except ValidationError as exc:
        errors = "; ".join(
            f"rule {'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        return [f"expect rules are invalid: {errors}"]
    schema = lf.collect_schema()
    problems: list[str] = []
    runnable: list[Check] = []
    for check in checks:  # a rule that cannot run is reported; the others still run
        try:
            plan_checks([check], schema)
        except DataError as exc:
            problems.append(f"expect rules cannot run: {exc.message}")
        else:
            runnable.append(check)
    if runnable:
        report = evaluate(lf, runnable, sample_size=3)
        problems += [f"expect '{r.name}' failed: {r.describe()}" for r in report.failed]
    return problems


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------
def _jsonable(value: Any) -> Any:
    """Plain JSON data (no NaN: the store writes strict JSON)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    if isinstance(value, dt.date | dt.datetime | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta | Decimal):
        return str(value)
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return str(value)


def _value_counts(values: list[Any]) -> list[dict[str, Any]]:
    counts = Counter(repr(v) for v in values)
    first: dict[str, Any] = {}
    for v in values:
        first.setdefault(repr(v), v)
    order = sorted(counts, key=lambda k: (-counts[k], str(first[k])))
    return [{"value": first[k], "count": counts[k]} for k in order]


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}%"


def _short(value: Any, limit: int = 60) -> str:
    text = repr(_jsonable(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."

"""The check vocabulary as pydantic models, and parsing check dicts from the pipeline file.

One model per rule (:class:`NotNull`, :class:`Between`, :class:`InSet`, :class:`Unique`,
:class:`Regex`, :class:`ExprCheck`, :class:`Exists`, :class:`TypeCheck`, :class:`RowCount`),
the :data:`Check` tagged union that picks the model from the rule key present in a dict,
:data:`CheckList` (unique names) and :func:`parse_checks`. Rule settings are validated here
(bounds, regex syntax, SQL syntax, dtype names); binding to a table schema is in
:mod:`ductwork.core.checks.plan`. See :mod:`ductwork.core.checks` for the semantics.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
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
    field_validator,
    model_validator,
)

from ductwork.core.checks._util import _dtype_name, _jsonable
from ductwork.errors import did_you_mean

if TYPE_CHECKING:
    import polars as pl

Scalar = bool | int | float | dt.datetime | dt.date | str
Bound = int | float | dt.datetime | dt.date | str


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

"""The ``profile`` stage kind: per-column statistics of a table, as JSON and as Markdown.

For every column: dtype, null count and percent, distinct count (exact, or HyperLogLog with
``approx: true``); for numeric and date/time columns min, max, mean, std and quantiles; for
text, categorical and boolean columns the ``top_k`` most frequent values with their counts.

Everything is ONE ``select`` over the input (one lazy query): the top-k values are a
``value_counts`` inside that select, which is a hash group-by per column, so it is only done for
text/categorical/boolean columns. Date/time statistics are computed on the physical integers
and converted back, so every temporal dtype gets the same statistics. NaN in float columns is
counted apart (``nan_count``) and left out of the statistics.
"""

from __future__ import annotations

import datetime as dt
import math
from decimal import Decimal
from typing import Any, ClassVar, Literal

import polars as pl
from pydantic import Field, field_validator

from ductwork.core.contract import Inputs, Output, StageContext, StageKind, StageParams
from ductwork.errors import DataError, did_you_mean

_EPOCH = dt.datetime(1970, 1, 1)
_UNIT_US = {"ns": 1e-3, "us": 1.0, "ms": 1e3}


class ProfileParams(StageParams):
    columns: list[str] | None = Field(default=None, min_length=1)
    top_k: int = Field(default=5, ge=0, le=1000)
    approx: bool = False
    quantiles: list[float] = Field(default_factory=lambda: [0.05, 0.25, 0.5, 0.75, 0.95])

    @field_validator("quantiles")
    @classmethod
    def _in_unit_interval(cls, value: list[float]) -> list[float]:
        for q in value:
            if not 0.0 <= q <= 1.0:
                msg = f"quantile {q} is not between 0 and 1"
                raise ValueError(msg)
        return value


def _group(dtype: pl.DataType) -> str:
    if dtype.is_numeric():
        return "numeric"
    if dtype.is_temporal():
        return "temporal"
    name = dtype.base_type().__name__
    if name in ("String", "Categorical", "Enum"):
        return "text"
    if name == "Boolean":
        return "boolean"
    return "other"


def _qname(q: float) -> str:
    return f"p{q * 100:g}"


class Profile(StageKind[ProfileParams]):
    """Per-column statistics in one pass: nulls, distinct, min/max/mean/std, quantiles, top-k."""

    name = "profile"
    version = "1"
    Params = ProfileParams
    summary = "per-column statistics of a table (JSON + Markdown)"
    outputs: ClassVar[dict[str, Output]] = {
        "profile": Output("json", description="statistics per column"),
        "markdown": Output("text", description="the same as a readable Markdown report"),
    }

    def run(self, params: ProfileParams, inputs: Inputs, ctx: StageContext) -> dict[str, Any]:
        source = inputs.only()
        lf = source.lazy()
        schema = lf.collect_schema()
        columns = params.columns or schema.names()
        for c in columns:
            if c not in schema:
                msg = (
                    f"stage '{ctx.stage}': column '{c}' not found{did_you_mean(c, schema.names())}"
                )
                raise DataError(msg, hint=f"Columns: {', '.join(schema.names())}")
        aggs: list[pl.Expr] = [pl.len().alias("__rows")]
        for i, c in enumerate(columns):
            aggs += _aggregations(i, c, schema[c], params)
        row = lf.select(aggs).collect().row(0, named=True)
        rows = int(row["__rows"])
        profiled = [_column(i, c, schema[c], row, rows, params) for i, c in enumerate(columns)]
        result = {
            "rows": rows,
            "columns": profiled,
            "top_k": params.top_k,
            "approx_distinct": params.approx,
        }
        ctx.metric(rows=rows, columns_profiled=len(profiled))
        return {"profile": result, "markdown": to_markdown(result, title=source.name)}


def _aggregations(i: int, name: str, dtype: pl.DataType, params: ProfileParams) -> list[pl.Expr]:
    col = pl.col(name)
    p = f"__{i}_"
    group = _group(dtype)
    out = [col.null_count().alias(p + "nulls")]
    if group != "other" or dtype.base_type().__name__ in ("Binary", "Null"):
        distinct = (
            col.drop_nulls().approx_n_unique() if params.approx else col.drop_nulls().n_unique()
        )
        out.append(distinct.alias(p + "distinct"))
    if group in ("numeric", "temporal"):
        x = col
        if dtype.is_float():
            out.append(col.is_nan().sum().alias(p + "nan"))
            x = col.fill_nan(None)
        elif group == "temporal":
            x = col.to_physical()
        elif dtype.base_type().__name__ == "Decimal":
            x = col.cast(pl.Float64)
        out += [
            x.min().alias(p + "min"),
            x.max().alias(p + "max"),
            x.cast(pl.Float64).mean().alias(p + "mean"),
            x.cast(pl.Float64).std().alias(p + "std"),
        ]
        how: Literal["nearest", "linear"] = "nearest" if group == "temporal" else "linear"
        out += [
            x.quantile(q, interpolation=how).alias(f"{p}q{j}")
            for j, q in enumerate(params.quantiles)
        ]
    if group in ("text", "boolean") and params.top_k > 0:
        values = col.cast(pl.String) if dtype.base_type().__name__ != "Boolean" else col
        # sorted inside one list so that counts and values stay together (ties by value)
        counts = values.drop_nulls().value_counts(name="__n").implode()
        el = pl.element()
        order = el.sort_by(
            [el.struct.field("__n"), el.struct.field(name)], descending=[True, False]
        )
        out.append(counts.list.eval(order).list.head(params.top_k).alias(p + "top"))
    return out


def _column(
    i: int, name: str, dtype: pl.DataType, row: dict[str, Any], rows: int, params: ProfileParams
) -> dict[str, Any]:
    p = f"__{i}_"
    group = _group(dtype)
    nulls = int(row[p + "nulls"])
    out: dict[str, Any] = {
        "name": name,
        "dtype": str(dtype),
        "kind": group,
        "null_count": nulls,
        "null_percent": nulls / rows * 100 if rows else None,
        "distinct": row.get(p + "distinct"),
    }
    if group in ("numeric", "temporal"):
        if p + "nan" in row:
            out["nan_count"] = int(row[p + "nan"] or 0)
        conv = (lambda v: _temporal(v, dtype)) if group == "temporal" else _number
        out["min"] = conv(row[p + "min"])
        out["max"] = conv(row[p + "max"])
        out["mean"] = conv(row[p + "mean"])
        out["std"] = (
            _temporal_span(row[p + "std"], dtype)
            if group == "temporal"
            else _number(row[p + "std"])
        )
        out["quantiles"] = {
            _qname(q): conv(row[f"{p}q{j}"]) for j, q in enumerate(params.quantiles)
        }
    if p + "top" in row:
        top = row[p + "top"] or []
        out["top"] = [
            {
                "value": t[name],
                "count": int(t["__n"]),
                "percent": t["__n"] / rows * 100 if rows else None,
            }
            for t in top
        ]
    return out


def _number(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, Decimal):
        value = float(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _temporal(value: Any, dtype: pl.DataType) -> str | None:
    """A physical value (days, time units, ns since midnight) back to ISO text."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    kind = dtype.base_type().__name__
    unit = str(getattr(dtype, "time_unit", None) or "us")
    if kind == "Date":
        if float(value).is_integer():
            return (_EPOCH + dt.timedelta(days=int(value))).date().isoformat()
        return (_EPOCH + dt.timedelta(days=float(value))).isoformat()
    if kind == "Datetime":
        stamp = _EPOCH + dt.timedelta(microseconds=float(value) * _UNIT_US[unit])
        zone = getattr(dtype, "time_zone", None)
        return stamp.isoformat() + ("+00:00" if zone else "")
    if kind == "Duration":
        return str(dt.timedelta(microseconds=float(value) * _UNIT_US[unit]))
    if kind == "Time":
        ns = round(float(value))
        secs, rem = divmod(ns, 1_000_000_000)
        return dt.time(secs // 3600, secs // 60 % 60, secs % 60, rem // 1000).isoformat()
    return str(value)


def _temporal_span(value: Any, dtype: pl.DataType) -> str | None:
    """A standard deviation of physical values, as a duration."""
    if value is None or not math.isfinite(value):
        return None
    kind = dtype.base_type().__name__
    if kind == "Date":
        return str(dt.timedelta(days=float(value)))
    if kind == "Time":
        return str(dt.timedelta(microseconds=float(value) / 1000))
    unit = str(getattr(dtype, "time_unit", None) or "us")
    return str(dt.timedelta(microseconds=float(value) * _UNIT_US[unit]))


# ------------------------------------------------------------------------------- Markdown
class _TopValues(list[dict[str, Any]]):
    """The top-k cell: 'value (count), ...' with each value shortened."""

    def __str__(self) -> str:
        return ", ".join(f"{_short(t['value'], 20)} ({t['count']:,})" for t in self)


def _short(value: Any, limit: int) -> str:
    text = str(value).lower() if isinstance(value, bool) else str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _cell(value: Any, limit: int = 40) -> str:
    if value is None:
        return ""
    if isinstance(value, _TopValues):
        return str(value).replace("|", "\\|").replace("\n", " ")
    if isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, int):
        text = f"{value:,}"
    elif isinstance(value, float):
        text = f"{value:,.4g}" if abs(value) < 1e15 else f"{value:.4g}"
    else:
        text = str(value)
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows]
    return out


def to_markdown(profile: dict[str, Any], *, title: str = "table") -> str:
    """The profile as a Markdown report: one table per kind of column."""
    cols = profile["columns"]
    lines = [
        f"# Profile of `{title}`",
        "",
        f"{profile['rows']:,} rows, {len(cols)} columns profiled"
        + (" (distinct counts are approximate)" if profile.get("approx_distinct") else "")
        + ".",
    ]
    stats = [c for c in cols if c["kind"] in ("numeric", "temporal")]
    if stats:
        qnames = list(stats[0]["quantiles"])
        headers = ["column", "type", "nulls", "null %", "distinct", "min", "max", "mean", "std"]
        rows = [
            [
                c["name"],
                c["dtype"],
                c["null_count"],
                c["null_percent"],
                c["distinct"],
                c["min"],
                c["max"],
                c["mean"],
                c["std"],
                *(c["quantiles"].get(q) for q in qnames),
            ]
            for c in stats
        ]
        lines += ["", "## Numeric and date/time columns", "", *_table(headers + qnames, rows)]
    cats = [c for c in cols if c["kind"] in ("text", "boolean")]
    if cats:
        rows = [
            [
                c["name"],
                c["dtype"],
                c["null_count"],
                c["null_percent"],
                c["distinct"],
                _TopValues(c.get("top", [])),
            ]
            for c in cats
        ]
        headers = [
            "column",
            "type",
            "nulls",
            "null %",
            "distinct",
            f"top {profile['top_k']} values",
        ]
        lines += ["", "## Text, categorical and boolean columns", "", *_table(headers, rows)]
    other = [c for c in cols if c["kind"] == "other"]
    if other:
        rows = [
            [c["name"], c["dtype"], c["null_count"], c["null_percent"], c["distinct"]]
            for c in other
        ]
        headers = ["column", "type", "nulls", "null %", "distinct"]
        lines += ["", "## Other columns", "", *_table(headers, rows)]
    return "\n".join(lines) + "\n"

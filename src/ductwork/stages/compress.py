"""The ``compress`` stage kind: a table's profile (and a few rows) as text that fits a token budget.

An LLM cannot read 336,776 rows, and a full profile of a wide table is long too. ``compress``
turns the ``profile`` stage's JSON (plus, optionally, a sample of the table's rows) into one
compact text — a line per column and the sample as CSV — and then leaves out the least
important parts until :func:`ductwork.ai.llm.estimate_tokens` of the text is within
``budget_tokens``. What goes, in this order (each step only as far as needed):

1. sample rows, down to ``min_sample_rows`` (the rows are a seeded random sample, and they go
   in the reverse of the order they were drawn, so the rows left are still a random sample);
2. the statistics of a column (min/max/mean/quantiles, top values), least important column
   first; the column keeps its name, dtype, nulls, distinct count and problem flags;
3. the remaining sample rows (a column's statistics say more than three example rows);
4. whole columns, least important first (at least one column is always kept).

Importance is the ``columns`` order when given, else columns with problems first (nulls, NaN,
a constant value, extreme values far from the mean), then the rest in the profile's order.
The output states what was kept and what was dropped and why, so a reader of the model's
answer knows what the model saw. Everything is a function of the inputs and params (the sample
is drawn with ``random.Random(seed)``), so the same inputs give the same bytes.
"""

from __future__ import annotations

import csv
import io
import json
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import polars as pl
from pydantic import Field, field_validator

from ductwork.ai.llm import estimate_tokens
from ductwork.core.contract import (
    ArtifactInfo,
    InputArtifact,
    Inputs,
    Output,
    StageContext,
    StageKind,
    StageParams,
)
from ductwork.errors import DataError, did_you_mean

# a column this many standard deviations from its mean at either end has "extreme values"
EXTREME_SD = 6.0
_TOP_SHOWN = 5  # top values shown per text column (the profile may hold more)


class CompressParams(StageParams):
    budget_tokens: int = Field(
        gt=0, description="The most tokens the text may take (estimate_tokens: ~4 chars a token)."
    )
    sample_rows: int = Field(
        default=20, ge=0, le=10_000, description="Rows of the sample input to show, at most."
    )
    min_sample_rows: int = Field(
        default=3,
        ge=0,
        description="Sample rows kept until every column's statistics are gone (step 3).",
    )
    columns: list[str] | None = Field(
        default=None,
        min_length=1,
        description="Columns in priority order (kept longest); the others follow, problems first.",
    )
    seed: int = Field(default=0, ge=0, description="Seeds the choice of sample rows.")
    format: Literal["markdown", "jsonl"] = Field(
        default="markdown",
        description="markdown: lines and a CSV block; jsonl: a JSON object a line.",
    )
    max_value_chars: int = Field(
        default=60, ge=8, description="Longer text values (sample cells, top values) are cut."
    )

    @field_validator("columns")
    @classmethod
    def _unique(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len(set(value)) != len(value):
            dupes = sorted({c for c in value if value.count(c) > 1})
            msg = f"columns are listed twice: {', '.join(dupes)}"
            raise ValueError(msg)
        return value


@dataclass
class _Column:
    """One profiled column: its always-kept head, its droppable details, its problem flags."""

    name: str
    dtype: str
    head: dict[str, Any]  # nulls, distinct: shown while the column is shown
    details: dict[str, Any]  # statistics or top values: the first thing to go per column
    flags: list[str] = field(default_factory=list)


class Compress(StageKind[CompressParams]):
    """A profile (and sample rows) as text within a token budget, stating what was left out."""

    name = "compress"
    version = "1"
    Params = CompressParams
    summary = "a table's profile and sample rows as text within a token budget (for an LLM)"
    outputs: ClassVar[dict[str, Output]] = {
        "compressed": Output(
            "json",
            description="text, estimated_tokens, budget_tokens, table, kept, dropped",
        ),
    }
    min_inputs = 1
    max_inputs = 2

    def run(self, params: CompressParams, inputs: Inputs, ctx: StageContext) -> dict[str, Any]:
        profile_art, sample_art = _pick_inputs(inputs, ctx.stage)
        profile = _read_profile(profile_art, ctx.stage)
        columns = _columns(profile, params.max_value_chars)
        order = _priority(columns, params.columns, ctx.stage)
        rows = int(profile.get("rows") or 0)
        sample = (
            _sample(sample_art, [c.name for c in order], params, ctx.stage)
            if sample_art is not None
            else None
        )
        plan = _Plan(
            order=order,
            rows=rows,
            profiled=len(columns),
            sample=sample,
            sample_rows=0 if sample is None else sample.height,
            fmt=params.format,
            max_chars=params.max_value_chars,
        )
        result = _fit(plan, params, ctx.stage)
        ctx.metric(
            estimated_tokens=result["estimated_tokens"],
            budget_tokens=params.budget_tokens,
            columns_kept=len(result["kept"]["columns"]),
            columns_dropped=len(columns) - len(result["kept"]["columns"]),
            sample_rows_kept=result["kept"]["sample_rows"],
        )
        return {"compressed": result}

    def check(
        self,
        params: CompressParams,
        inputs: Inputs,
        outputs: Mapping[str, ArtifactInfo],
        ctx: StageContext,
    ) -> list[str]:
        from pathlib import Path

        out = json.loads(Path(outputs["compressed"].path).read_text(encoding="utf-8"))
        problems = []
        measured = estimate_tokens(out["text"])
        if measured != out["estimated_tokens"]:
            problems.append(
                f"estimated_tokens says {out['estimated_tokens']}, the text measures {measured}"
            )
        if measured > params.budget_tokens:
            problems.append(
                f"the text takes {measured} tokens, over the budget of {params.budget_tokens}"
            )
        return problems


# ------------------------------------------------------------------------------- inputs
def _pick_inputs(inputs: Inputs, stage: str) -> tuple[InputArtifact, InputArtifact | None]:
    """``profile`` (json) and ``sample`` (table), by name or else by artifact type."""
    hint = "Name the inputs: inputs: {profile: my_profile, sample: my_table}"
    names = list(inputs)
    unknown = [n for n in names if n not in ("profile", "sample")]
    profile = inputs["profile"] if "profile" in names else None
    sample = inputs["sample"] if "sample" in names else None
    for n in unknown:
        art = inputs[n]
        if art.info.type == "json" and profile is None:
            profile = art
        elif art.info.type == "table" and sample is None:
            sample = art
        else:
            msg = f"stage '{stage}': unexpected input '{n}' ({art.info.type})"
            raise DataError(msg, hint=hint)
    if profile is None or profile.info.type != "json":
        msg = f"stage '{stage}': compress needs a profile stage's JSON output (input 'profile')"
        raise DataError(msg, hint=hint)
    if sample is not None and sample.info.type != "table":
        msg = f"stage '{stage}': input 'sample' is a {sample.info.type} artifact, not a table"
        raise DataError(msg, hint=hint)
    return profile, sample


def _read_profile(art: InputArtifact, stage: str) -> dict[str, Any]:
    value = art.json()
    if (
        not isinstance(value, dict)
        or not isinstance(value.get("columns"), list)
        or "rows" not in value
    ):
        msg = (
            f"stage '{stage}': input '{art.name}' is not a profile (a JSON object with "
            "'rows' and 'columns')"
        )
        raise DataError(
            msg, hint="Use a profile stage's main output: inputs: {profile: my_profile}"
        )
    return value


# ------------------------------------------------------------------------------- columns
def _columns(profile: dict[str, Any], max_chars: int) -> list[_Column]:
    out = []
    for i, c in enumerate(profile["columns"]):
        if not isinstance(c, dict) or "name" not in c:
            msg = f"profile column {i} has no 'name'"
            raise DataError(msg)
        out.append(_column(c, max_chars))
    return out


def _column(c: dict[str, Any], max_chars: int) -> _Column:
    head: dict[str, Any] = {"nulls_pct": _round(c.get("null_percent"))}
    if c.get("distinct") is not None:
        head["distinct"] = c["distinct"]
    if c.get("nan_count"):
        head["nan"] = c["nan_count"]
    details: dict[str, Any] = {}
    for key in ("min", "max", "mean", "std"):
        if c.get(key) is not None:
            details["sd" if key == "std" else key] = _round(c[key])
    # the store writes JSON with sorted keys (p25 before p5): put quantiles back in order
    for q, v in sorted((c.get("quantiles") or {}).items(), key=lambda kv: _quantile(kv[0])):
        if v is not None:
            details[q] = _round(v)
    top = c.get("top") or []
    if top:
        details["top"] = [
            [_clip(t.get("value"), max_chars), _round(t.get("percent"))] for t in top[:_TOP_SHOWN]
        ]
    return _Column(
        name=str(c["name"]),
        dtype=str(c.get("dtype", "?")),
        head=head,
        details=details,
        flags=_flags(c),
    )


def _quantile(name: str) -> float:
    try:
        return float(name.lstrip("p"))
    except ValueError:
        return math.inf


def _flags(c: dict[str, Any]) -> list[str]:
    """The problems a reader should see first: nulls, NaN, one value only, extreme values."""
    flags = []
    if c.get("null_count"):
        flags.append("nulls")
    if c.get("nan_count"):
        flags.append("NaN")
    distinct = c.get("distinct")
    if distinct is not None and distinct <= 1 and c.get("null_percent") != 100:
        flags.append("constant")
    stats = [c.get(k) for k in ("mean", "std", "min", "max")]
    numbers = [float(v) for v in stats if isinstance(v, int | float)]
    if c.get("kind") == "numeric" and len(numbers) == 4:
        mean, sd, lo, hi = numbers
        spread = max(abs(hi - mean), abs(mean - lo)) / sd if sd > 0 else 0.0
        if spread >= EXTREME_SD:
            flags.append(f"extreme values ({spread:.0f} sd from the mean)")
    if distinct is None and c.get("kind") == "other":
        flags.append("nested values")
    return flags


def _priority(columns: list[_Column], given: list[str] | None, stage: str) -> list[_Column]:
    by_name = {c.name: c for c in columns}
    first: list[_Column] = []
    for name in given or []:
        if name not in by_name:
            msg = (
                f"stage '{stage}': column '{name}' is not in the profile"
                f"{did_you_mean(name, by_name)}"
            )
            raise DataError(msg, hint=f"Profiled columns: {', '.join(by_name)}")
        first.append(by_name[name])
    taken = {c.name for c in first}
    rest = [c for c in columns if c.name not in taken]
    # stable: problem columns (more problems first), then the rest, each in the profile's order
    rest = sorted(rest, key=lambda c: -len([f for f in c.flags if f != "nested values"]))
    return first + rest


# ------------------------------------------------------------------------------- sample
def _sample(
    art: InputArtifact, order: list[str], params: CompressParams, stage: str
) -> pl.DataFrame | None:
    """``sample_rows`` rows drawn with ``Random(seed)``, in the order they were drawn."""
    if params.sample_rows == 0:
        return None
    lf = art.lazy()
    names = lf.collect_schema().names()
    shown = [c for c in order if c in names]
    if not shown:
        msg = (
            f"stage '{stage}': the sample input '{art.name}' has none of the profiled columns "
            f"(it has {', '.join(names[:10])}{', …' if len(names) > 10 else ''})"
        )
        raise DataError(msg, hint="Give compress the same table the profile stage read.")
    height = art.rows if art.rows is not None else lf.select(pl.len()).collect().item()
    picks = random.Random(params.seed).sample(range(height), min(params.sample_rows, height))
    if not picks:
        return None
    index = "__ductwork_row"
    rows = lf.select(shown).with_row_index(index).filter(pl.col(index).is_in(picks)).collect()
    rank = {p: i for i, p in enumerate(picks)}
    return (
        rows.with_columns(pl.col(index).replace_strict(rank, return_dtype=pl.Int64).alias(index))
        .sort(index)
        .drop(index)
    )


# ------------------------------------------------------------------------------- rendering
@dataclass
class _Plan:
    order: list[_Column]
    rows: int
    profiled: int
    sample: pl.DataFrame | None
    sample_rows: int  # rows of the sample shown (the first ones drawn)
    fmt: Literal["markdown", "jsonl"]
    max_chars: int
    columns: int = -1  # columns shown: the first ones of ``order``
    detailed: int = -1  # of those, how many keep their statistics (the first ones)

    def __post_init__(self) -> None:
        self.columns = len(self.order)
        self.detailed = len(self.order)

    def shown(self) -> list[_Column]:
        return self.order[: self.columns]

    def render(self) -> str:
        return _render_jsonl(self) if self.fmt == "jsonl" else _render_markdown(self)


def _fit(plan: _Plan, params: CompressParams, stage: str) -> dict[str, Any]:
    budget = params.budget_tokens
    full_rows = plan.sample_rows

    def fits() -> bool:
        return estimate_tokens(plan.render()) <= budget

    floor = min(params.min_sample_rows, plan.sample_rows)
    while not fits() and plan.sample_rows > floor:  # 1. sample rows, down to the minimum
        plan.sample_rows -= 1
    while not fits() and plan.detailed > 0:  # 2. statistics, least important column first
        plan.detailed -= 1
    while not fits() and plan.sample_rows > 0:  # 3. the last sample rows
        plan.sample_rows -= 1
    while not fits() and plan.columns > 1:  # 4. whole columns, least important first
        plan.columns -= 1
    text = plan.render()
    tokens = estimate_tokens(text)
    if tokens > budget:
        msg = (
            f"stage '{stage}': budget_tokens {budget} is too small: even one column "
            f"('{plan.order[0].name}') without statistics or sample rows takes {tokens} tokens"
        )
        raise DataError(msg, hint=f"Raise budget_tokens to at least {tokens}.")

    shown = plan.shown()
    detailed = [c.name for c in shown[: plan.detailed] if c.details]
    dropped: list[dict[str, Any]] = []
    if plan.sample is not None and plan.sample_rows < full_rows:
        dropped.append(
            {
                "part": "sample_rows",
                "count": full_rows - plan.sample_rows,
                "reason": f"over the budget of {budget} tokens: sample rows go first",
            }
        )
    lost_details = [
        c.name
        for c in plan.order[plan.detailed :]
        if c.details and c.name in {s.name for s in shown}
    ]
    if lost_details:
        dropped.append(
            {
                "part": "details",
                "columns": lost_details,
                "reason": "over the budget: statistics of the least important columns go next",
            }
        )
    lost_columns = [c.name for c in plan.order[plan.columns :]]
    if lost_columns:
        dropped.append(
            {
                "part": "columns",
                "columns": lost_columns,
                "reason": "over the budget: the least important columns go last",
            }
        )
    return {
        "text": text,
        "estimated_tokens": tokens,
        "budget_tokens": budget,
        "format": plan.fmt,
        "table": {"rows": plan.rows, "columns": plan.profiled},
        "kept": {
            "columns": [c.name for c in shown],
            "details": detailed,
            "sample_rows": plan.sample_rows if plan.sample is not None else 0,
        },
        "dropped": dropped,
    }


def _not_shown(plan: _Plan) -> dict[str, Any]:
    """What the text leaves out, said in the text itself (counts, and the hidden columns)."""
    out: dict[str, Any] = {}
    if plan.sample is not None and plan.sample_rows < plan.sample.height:
        out["sample_rows"] = plan.sample.height - plan.sample_rows
    without = len([c for c in plan.shown()[plan.detailed :] if c.details])
    if without:
        out["statistics_of_columns"] = without
    hidden = [c.name for c in plan.order[plan.columns :]]
    if hidden:
        out["columns"] = hidden
    return out


def _line_markdown(c: _Column, detailed: bool) -> str:
    parts = [f"nulls {_num(c.head['nulls_pct'])}%"]
    if "distinct" in c.head:
        parts.append(f"distinct {c.head['distinct']}")
    if "nan" in c.head:
        parts.append(f"NaN {c.head['nan']}")
    if detailed:
        for key, value in c.details.items():
            if key == "top":
                top = ", ".join(f"{_cell(v)} {_num(p)}%" for v, p in value)
                parts.append(f"top {top}")
            else:
                parts.append(f"{key} {_num(value)}")
    line = f"- {c.name} ({c.dtype}): " + ", ".join(parts)
    if c.flags:
        line += " [" + "; ".join(c.flags) + "]"
    return line


def _render_markdown(plan: _Plan) -> str:
    shown = plan.shown()
    lines = [
        f"Table: {plan.rows} rows, {plan.profiled} columns.",
        "Columns (nulls %, distinct values, statistics; [problems]):",
    ]
    lines += [_line_markdown(c, i < plan.detailed) for i, c in enumerate(shown)]
    if plan.sample is not None and plan.sample_rows > 0:
        names = [c.name for c in shown if c.name in plan.sample.columns]
        if names:
            lines += [
                f"Sample rows ({plan.sample_rows} drawn at random, CSV):",
                "```csv",
                _csv(plan.sample.head(plan.sample_rows).select(names), plan.max_chars).rstrip("\n"),
                "```",
            ]
    missing = _not_shown(plan)
    if missing:
        said = []
        if "sample_rows" in missing:
            said.append(f"{missing['sample_rows']} sample rows")
        if "statistics_of_columns" in missing:
            n = missing["statistics_of_columns"]
            said.append(f"the statistics of {n} column{'s' if n != 1 else ''}")
        if "columns" in missing:
            said.append(f"{len(missing['columns'])} columns ({', '.join(missing['columns'])})")
        lines.append("Not shown (token budget): " + "; ".join(said) + ".")
    return "\n".join(lines) + "\n"


def _render_jsonl(plan: _Plan) -> str:
    shown = plan.shown()
    docs: list[dict[str, Any]] = [{"table": {"rows": plan.rows, "columns": plan.profiled}}]
    for i, c in enumerate(shown):
        doc: dict[str, Any] = {"column": c.name, "dtype": c.dtype, **c.head}
        if i < plan.detailed:
            doc.update(c.details)
        if c.flags:
            doc["problems"] = c.flags
        docs.append(doc)
    if plan.sample is not None and plan.sample_rows > 0:
        names = [c.name for c in shown if c.name in plan.sample.columns]
        for row in plan.sample.head(plan.sample_rows).select(names).iter_rows(named=True):
            docs.append({"row": {k: _json_value(v, plan.max_chars) for k, v in row.items()}})
    missing = _not_shown(plan)
    if missing:
        docs.append({"not_shown": missing})
    return "".join(
        json.dumps(d, ensure_ascii=False, separators=(",", ":"), allow_nan=False) + "\n"
        for d in docs
    )


# ------------------------------------------------------------------------------- values
def _round(value: Any) -> Any:
    """4 significant digits for floats (enough for a reader; fewer tokens)."""
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return float(f"{value:.4g}")
    return value


def _num(value: Any) -> str:
    if value is None:
        return "?"
    if isinstance(value, float):
        return f"{value:g}" if abs(value) < 1e15 else f"{value:.4g}"
    return str(value)


def _clip(value: Any, limit: int) -> Any:
    if isinstance(value, str):
        text = " ".join(value.split())
        return text if len(text) <= limit else text[: limit - 1] + "…"
    return value


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _json_value(value: Any, limit: int) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return _clip(value, limit)
    if isinstance(value, float):
        return _round(value)
    return _clip(str(value), limit)


def _csv(df: pl.DataFrame, limit: int) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(df.columns)
    for row in df.iter_rows():
        w.writerow(["" if v is None else _cell(_json_value(v, limit)) for v in row])
    return buf.getvalue()

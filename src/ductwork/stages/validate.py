"""The ``validate`` stage kind: data-contract checks with a quarantine for the rows that fail.

Checks use the vocabulary of :mod:`ductwork.core.checks` (Great Expectations semantics). Every
row of the input ends up in exactly one of the two table outputs: ``passed`` or ``quarantine``
(the original row plus ``_failed_checks`` naming the checks it failed and ``_row``, its 0-based
position in the input), so rows in = passed + quarantined. The ``report`` output holds a
GE-like result per check and the totals.

``on_fail``:

* ``quarantine`` (default): rows failing any row-level check go to ``quarantine``, the rest to
  ``passed``. The stage itself fails only when a table-level check fails (row_count, exists,
  type) or a check that sets ``mostly`` has more bad rows than it tolerates.
* ``fail``: any failed check fails the stage (a DataError with the summary). When nothing
  fails, ``passed`` is the input unchanged (rows tolerated by ``mostly`` stay in it).
* ``warn``: report only; ``passed`` is the input unchanged and ``quarantine`` is empty.

Everything is computed in one pass: in quarantine mode the checks' failure masks are computed
once and the report, ``passed`` and ``quarantine`` are collected together (``pl.collect_all``
shares the scan and the masks); otherwise one aggregate query makes the report.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

import polars as pl
from pydantic import Field

from ductwork.core.checks import CheckList, CheckPlan, CheckReport, plan_checks
from ductwork.core.contract import (
    ArtifactInfo,
    InputArtifact,
    Inputs,
    Output,
    StageContext,
    StageKind,
    StageParams,
)
from ductwork.errors import DataError

FAILED = "_failed_checks"
ROW = "_row"
_INDEX = "__dw_row"


class ValidateParams(StageParams):
    checks: CheckList = Field(min_length=1)
    on_fail: Literal["fail", "warn", "quarantine"] = "quarantine"
    sample_size: int = Field(default=5, ge=0, le=1000)


class Validate(StageKind[ValidateParams]):
    """Check a table against a data contract; split it into passed and quarantined rows."""

    name = "validate"
    version = "1"
    Params = ValidateParams
    summary = "check a table; failing rows go to a quarantine output"
    outputs: ClassVar[dict[str, Output]] = {
        "passed": Output("table", description="rows that pass every row-level check"),
        "quarantine": Output(
            "table", description="failing rows + _failed_checks (list[str]) + _row (input row)"
        ),
        "report": Output("json", description="GE-like result per check and the row totals"),
    }

    def run(self, params: ValidateParams, inputs: Inputs, ctx: StageContext) -> dict[str, Any]:
        lf = inputs.only().lazy()
        schema = lf.collect_schema()
        for reserved in (FAILED, ROW):
            if reserved in schema:
                msg = f"stage '{ctx.stage}': the input already has a column '{reserved}'"
                hint = "Rename or drop it before validating (the quarantine output adds it)."
                raise DataError(msg, hint=hint)
        try:
            plan = plan_checks(params.checks, schema)
        except DataError as exc:
            msg = f"stage '{ctx.stage}': {exc.message}"
            raise DataError(msg, hint=exc.hint) from None

        schema_failures = [r for r in plan.schema_results() if not r.success]
        if schema_failures and params.on_fail != "warn":  # before reading any data
            lines = "; ".join(f"'{r.name}': {r.describe()}" for r in schema_failures)
            msg = f"stage '{ctx.stage}': the input does not have the expected columns: {lines}"
            hint = f"Columns: {', '.join(schema.names())}"
            raise DataError(msg, hint=hint)

        passed: pl.LazyFrame | pl.DataFrame | InputArtifact
        if params.on_fail == "quarantine" and plan.row_checks:
            report, passed, quarantine = _split(plan, lf, params.sample_size)
            rows_passed, rows_quarantined = passed.height, quarantine.height
        else:
            report = _report_only(plan, lf, params.sample_size)
            # the input unchanged: handed back as the same artifact, not rewritten
            passed, quarantine = inputs.only(), _empty_quarantine(schema)
            rows_passed, rows_quarantined = report.row_count, 0

        summary = {
            "success": report.success,
            "on_fail": params.on_fail,
            "rows_in": report.row_count,
            "rows_passed": rows_passed,
            "rows_quarantined": rows_quarantined,
            "failed_checks": [r.name for r in report.failed],
        }
        ctx.metric(
            rows_in=report.row_count,
            rows_passed=rows_passed,
            rows_quarantined=rows_quarantined,
            checks_failed=len(report.failed),
            unexpected_per_check={
                r.name: r.unexpected_count for r in report.results if r.row_level
            },
        )
        _raise_if_failed(params.on_fail, report, summary, ctx.stage)
        out = report.to_dict()
        out.pop("success")
        return {"passed": passed, "quarantine": quarantine, "report": {**summary, **out}}

    def check(
        self,
        params: ValidateParams,
        inputs: Inputs,
        outputs: Mapping[str, ArtifactInfo],
        ctx: StageContext,
    ) -> list[str]:
        rows_in = inputs.only().rows
        passed, quarantined = outputs["passed"].rows, outputs["quarantine"].rows
        problems: list[str] = []
        known = rows_in is not None and passed is not None and quarantined is not None
        if known and rows_in != (passed or 0) + (quarantined or 0):
            problems.append(
                f"rows in ({rows_in}) != passed ({passed}) + quarantined ({quarantined})"
            )
        report_path = outputs["report"].path
        if report_path:
            report = json.loads(Path(report_path).read_bytes())
            for key, actual in (("rows_passed", passed), ("rows_quarantined", quarantined)):
                if actual is not None and report.get(key) != actual:
                    problems.append(
                        f"the report says {key}={report.get(key)} but the output has {actual}"
                    )
        return problems


def _report_only(plan: CheckPlan, lf: pl.LazyFrame, sample_size: int) -> CheckReport:
    query = lf.with_columns(**plan.mask_columns).select(plan.aggregations(sample_size=sample_size))
    return plan.report(query.collect().row(0, named=True))


def _split(
    plan: CheckPlan, lf: pl.LazyFrame, sample_size: int
) -> tuple[CheckReport, pl.DataFrame, pl.DataFrame]:
    """One pass: masks computed once; counts, passed and failing rows collected together.

    The samples for the report come from the failing rows afterwards (they are few), so the
    pass over all rows only sums the masks.
    """
    columns = lf.collect_schema().names()
    base = lf.with_row_index(_INDEX).with_columns(**plan.mask_columns)
    bad = plan.any_failed()
    counts, passed, failing = pl.collect_all(
        [
            base.select(plan.count_aggregations()),
            base.filter(bad.not_()).select(columns),
            base.filter(bad),
        ]
    )
    row = counts.row(0, named=True)
    if sample_size > 0:
        samples = failing.select(
            plan.sample_aggregations(sample_size=sample_size, row_index=_INDEX)
        )
        row.update(samples.row(0, named=True))
    quarantine = failing.select(
        *columns,
        plan.failed_checks().alias(FAILED),
        pl.col(_INDEX).cast(pl.Int64).alias(ROW),
    )
    return plan.report(row), passed, quarantine


def _empty_quarantine(schema: Mapping[str, pl.DataType]) -> pl.DataFrame:
    return pl.DataFrame(schema={**schema, FAILED: pl.List(pl.String), ROW: pl.Int64})


def _raise_if_failed(
    mode: str, report: CheckReport, summary: Mapping[str, Any], stage: str
) -> None:
    if mode == "warn":
        return
    if mode == "fail":
        failing = report.failed
        hint = (
            "Set on_fail: quarantine to route failing rows to the 'quarantine' output, "
            "or on_fail: warn to only report."
        )
    else:
        failing = [r for r in report.failed if not r.row_level or r.tolerance_exceeded]
        hint = (
            "Fix the source data, or relax the check (lower 'mostly', widen the bounds) if "
            "this much bad data is acceptable."
        )
    if not failing:
        return
    lines = "; ".join(f"'{r.name}': {r.describe()}" for r in failing)
    n = len(report.results)
    counts = (
        f"rows in {summary['rows_in']}, passed {summary['rows_passed']}, "
        f"quarantined {summary['rows_quarantined']}"
    )
    what = "too much bad data" if mode == "quarantine" else f"{len(failing)} of {n} checks failed"
    msg = f"stage '{stage}': {what} (on_fail: {mode}; {counts}): {lines}"
    raise DataError(msg, hint=hint)

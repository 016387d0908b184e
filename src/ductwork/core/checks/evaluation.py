"""The entry points that run checks on a table: :func:`evaluate`, :func:`annotate_failures`
and :func:`expectation_violations` (the runner's ``expect:`` rules).

Each evaluates all its checks in ONE lazy Polars query built by a
:class:`~ductwork.core.checks.plan.CheckPlan`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from ductwork.core.checks.models import Check, parse_checks
from ductwork.core.checks.plan import plan_checks
from ductwork.core.checks.results import CheckReport
from ductwork.errors import DataError

if TYPE_CHECKING:
    import polars as pl


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

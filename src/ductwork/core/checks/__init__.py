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

The package is split by what a reader is after:

* :mod:`~ductwork.core.checks.models` -- the pydantic check models, the :data:`Check` tagged
  union, :data:`CheckList` and :func:`parse_checks`;
* :mod:`~ductwork.core.checks.results` -- :class:`CheckResult` / :class:`CheckReport` with GE's
  result fields;
* :mod:`~ductwork.core.checks.plan` -- :class:`CheckPlan`: per-row failure masks, the one-query
  aggregations and the report built from them;
* :mod:`~ductwork.core.checks.evaluation` -- the entry points :func:`evaluate`,
  :func:`annotate_failures` and :func:`expectation_violations`.

Everything public is re-exported here: import from ``ductwork.core.checks``.
"""

from __future__ import annotations

from ductwork.core.checks.evaluation import annotate_failures, evaluate, expectation_violations
from ductwork.core.checks.models import (
    Between,
    Bound,
    Check,
    CheckList,
    Exists,
    ExprCheck,
    InSet,
    NotNull,
    Regex,
    RowCount,
    RowCountBounds,
    Scalar,
    TypeCheck,
    Unique,
    parse_checks,
)
from ductwork.core.checks.plan import CheckPlan, plan_checks
from ductwork.core.checks.results import CheckReport, CheckResult

__all__ = [
    "Between",
    "Bound",
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
    "RowCountBounds",
    "Scalar",
    "TypeCheck",
    "Unique",
    "annotate_failures",
    "evaluate",
    "expectation_violations",
    "parse_checks",
    "plan_checks",
]

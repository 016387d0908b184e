"""The outcome of evaluating checks: :class:`CheckResult` per check, :class:`CheckReport` per table.

Field names and percentages follow Great Expectations 1.x (SUMMARY result format), so
``to_dict()`` gives what its users expect: ``expectation_config``, ``unexpected_percent``
(of non-null rows), ``unexpected_percent_total``, ``partial_unexpected_list`` and so on.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ductwork.core.checks._util import _jsonable, _short
from ductwork.core.checks.models import Check, Exists, NotNull


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


def _value_counts(values: list[Any]) -> list[dict[str, Any]]:
    counts = Counter(repr(v) for v in values)
    first: dict[str, Any] = {}
    for v in values:
        first.setdefault(repr(v), v)
    order = sorted(counts, key=lambda k: (-counts[k], str(first[k])))
    return [{"value": first[k], "count": counts[k]} for k in order]


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}%"

"""The ``gate`` stage kind: rules a model's metrics must meet before it goes further.

The input is the ``evaluate`` stage's ``metrics``. Each rule is one line::

    <metric> <op> <number>                      accuracy >= 0.85, latency_p95_ms <= 20
    <metric> <op> champion [+|-] <number>       roc_auc >= champion - 0.01

with ``op`` one of ``>= <= > < ==``. A champion rule compares with the champion's value of the
metric on the same rows; when there is no champion (the first model of a pipeline) the rule
passes, or fails with ``on_missing_champion: fail``.

When every rule holds the output ``report`` lists them with their margins. When any rule fails
the stage raises :class:`~ductwork.errors.GateFailed` naming each failed rule, its value, its
threshold and how far it missed: the run exits with code 1 and the stages after the gate
(``register``) do not run.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from ductwork.core.contract import Inputs, Output, StageContext, StageKind, StageParams
from ductwork.errors import DataError, GateFailed, did_you_mean

Op = Literal[">=", "<=", ">", "<", "=="]
_UNSIGNED = r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_RULE = re.compile(
    r"^\s*(?P<metric>[A-Za-z_][A-Za-z0-9_]*)\s*(?P<op>>=|<=|==|>|<)\s*"
    r"(?:(?P<champion>champion)(?:\s*(?P<sign>[+-])\s*(?P<offset>" + _UNSIGNED + r"))?"
    r"|(?P<number>[+-]?" + _UNSIGNED + r"))\s*$"
)
_NEGATION: dict[str, str] = {">=": "<", "<=": ">", ">": "<=", "<": ">=", "==": "!="}
EQUAL_TOLERANCE = 1e-9  # == holds within this relative tolerance


@dataclass(frozen=True)
class Rule:
    """One parsed gate rule."""

    text: str
    metric: str
    op: Op
    number: float  # the threshold, or the champion offset (signed)
    champion: bool

    @classmethod
    def parse(cls, text: str) -> Rule:
        match = _RULE.match(text)
        if match is None:
            raise ValueError(_parse_error(text))
        champion = match["champion"] is not None
        if champion:
            offset = float(match["offset"]) if match["offset"] else 0.0
            number = -offset if match["sign"] == "-" else offset
        else:
            number = float(match["number"])
        if not math.isfinite(number):
            msg = f"rule '{text}': the number is not finite"
            raise ValueError(msg)
        return cls(text.strip(), match["metric"], match["op"], number, champion)  # type: ignore[arg-type]

    def holds(self, value: float, threshold: float) -> bool:
        if self.op == ">=":
            return value >= threshold
        if self.op == "<=":
            return value <= threshold
        if self.op == ">":
            return value > threshold
        if self.op == "<":
            return value < threshold
        return math.isclose(value, threshold, rel_tol=EQUAL_TOLERANCE, abs_tol=EQUAL_TOLERANCE)

    def margin(self, value: float, threshold: float) -> float:
        """How far the value is on the good side of the threshold (negative: the miss)."""
        if self.op in (">=", ">"):
            return value - threshold
        if self.op in ("<=", "<"):
            return threshold - value
        return -abs(value - threshold)


def _parse_error(text: str) -> str:
    shape = "'<metric> <op> <number>' or '<metric> <op> champion [+|-] <number>'"
    hint = ""
    stripped = text.strip()
    if not stripped:
        hint = "the rule is empty"
    elif re.search(r"=>|=<|!=|(?<![<>=])=(?!=)", stripped):
        hint = "ops are >=, <=, >, < and =="
    elif not re.match(r"^[A-Za-z_]", stripped):
        hint = "a rule starts with a metric name"
    elif not re.search(r">=|<=|==|>|<", stripped):
        hint = "no comparison op (>=, <=, >, <, ==)"
    elif len(re.findall(r">=|<=|==|>|<", stripped)) > 1:
        hint = "one comparison per rule; write two rules"
    else:
        right = re.split(r">=|<=|==|>|<", stripped, maxsplit=1)[1].strip()
        if re.match(r"^[A-Za-z_]", right) and not right.startswith("champion"):
            word = re.match(r"^[A-Za-z_]\w*", right)
            guess = did_you_mean(word[0] if word else right, ["champion"])
            hint = f"the right side is a number or 'champion [+|-] <number>'{guess}"
        else:
            hint = "the right side is a number or 'champion [+|-] <number>'"
    return f"rule '{text}' is not {shape}: {hint}"


class GateParams(StageParams):
    rules: list[str] = Field(
        min_length=1, description="'<metric> <op> <number>' or '<metric> <op> champion ± <number>'"
    )
    on_missing_champion: Literal["pass", "fail"] = Field(
        default="pass", description="What a champion rule does when there is no champion."
    )

    @field_validator("rules")
    @classmethod
    def _parse_rules(cls, value: list[str]) -> list[str]:
        errors = []
        for text in value:
            try:
                Rule.parse(text)
            except ValueError as exc:
                errors.append(str(exc))
        if errors:
            raise ValueError("; ".join(errors))
        return value

    def parsed(self) -> list[Rule]:
        return [Rule.parse(text) for text in self.rules]


class Gate(StageKind[GateParams]):
    """Check a model's metrics against thresholds and its champion; fail the run if they miss."""

    name = "gate"
    version = "1"
    Params = GateParams
    summary = "thresholds and champion comparisons on evaluate's metrics; a miss stops the run"
    outputs: ClassVar[dict[str, Output]] = {
        "report": Output("json", description="every rule with its value, threshold and margin"),
    }

    def run(self, params: GateParams, inputs: Inputs, ctx: StageContext) -> dict[str, Any]:
        evaluation = inputs.only().json()
        metrics, champion, comparison = _read_evaluation(ctx.stage, evaluation)
        results = [
            _judge(ctx.stage, rule, metrics, champion, comparison, params.on_missing_champion)
            for rule in params.parsed()
        ]
        failed = [r for r in results if not r["passed"]]
        for r in results:
            ctx.log(f"{'pass' if r['passed'] else 'FAIL'}: {r['rule']} ({_explain(r)})")
        ctx.metric(rules=len(results), failed=len(failed))
        report = {
            "passed": not failed,
            "model_id": evaluation.get("model_id"),
            "champion": (champion or {}).get("model_id"),
            "rules": results,
        }
        if failed:
            n = len(failed)
            lines = "\n".join(f"  {_explain(r)}" for r in failed)
            msg = (
                f"stage '{ctx.stage}': the model failed {n} of {len(results)} gate "
                f"rule{'s' if len(results) != 1 else ''}:\n{lines}"
            )
            hint = "The stages after the gate (register) did not run."
            raise GateFailed(msg, hint=hint)
        return {"report": report}


def _read_evaluation(
    stage: str, evaluation: Any
) -> tuple[dict[str, Any], dict[str, Any] | None, dict[str, Any]]:
    if not isinstance(evaluation, dict) or not isinstance(evaluation.get("metrics"), dict):
        msg = (
            f"stage '{stage}': the input is not an evaluation (a JSON object with 'metrics'); "
            "connect the evaluate stage's metrics output"
        )
        raise DataError(msg)
    champion = evaluation.get("champion")
    comparison = evaluation.get("comparison") or {}
    return evaluation["metrics"], champion if isinstance(champion, dict) else None, comparison


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _judge(
    stage: str,
    rule: Rule,
    metrics: dict[str, Any],
    champion: dict[str, Any] | None,
    comparison: dict[str, Any],
    on_missing: str,
) -> dict[str, Any]:
    if rule.metric not in metrics:
        names = sorted(metrics)
        msg = (
            f"stage '{stage}': rule '{rule.text}' names metric '{rule.metric}', which the "
            f"evaluation does not have{did_you_mean(rule.metric, names)}"
        )
        raise DataError(msg, hint=f"Metrics: {', '.join(names)}")
    out: dict[str, Any] = {
        "rule": rule.text,
        "metric": rule.metric,
        "op": rule.op,
        "value": _number(metrics[rule.metric]),
        "threshold": None,
        "champion": None,
        "passed": False,
        "margin": None,
        "note": "",
    }
    threshold: float | None = rule.number
    if rule.champion:
        compared = comparison.get(rule.metric) or {}
        champion_value = _number(compared.get("champion"))
        if champion_value is None and champion is not None:
            champion_value = _number((champion.get("metrics") or {}).get(rule.metric))
        if "model" in compared and _number(compared["model"]) is not None:
            out["value"] = _number(compared["model"])  # on the rows both models accept
        if champion_value is None:
            out["note"] = (
                "no champion" if champion is None else f"the champion has no {rule.metric}"
            )
            out["passed"] = on_missing == "pass"
            return out
        out["champion"] = champion_value
        threshold = champion_value + rule.number
    out["threshold"] = threshold
    value = out["value"]
    if value is None or threshold is None:
        out["note"] = f"{rule.metric} is undefined on the test rows"
        return out
    out["passed"] = rule.holds(value, threshold)
    out["margin"] = rule.margin(value, threshold)
    return out


def _fmt(value: float) -> str:
    return f"{value:.6g}"


def _explain(result: dict[str, Any]) -> str:
    """``roc_auc 0.712 < 0.75 (short by 0.038)``: the value against the threshold."""
    metric, op = result["metric"], result["op"]
    value, threshold = result["value"], result["threshold"]
    if result["note"]:
        shown = "" if value is None else f" = {_fmt(value)}"
        return f"{metric}{shown}: {result['note']}"
    relation = op if result["passed"] else _NEGATION[op]
    source = ""
    if result["champion"] is not None:
        offset = threshold - result["champion"]
        source = f" (champion {_fmt(result['champion'])}"
        source += f" {'+' if offset >= 0 else '-'} {_fmt(abs(offset))})" if offset else ")"
    margin = result["margin"]
    if result["passed"]:
        room = f", {_fmt(margin)} to spare" if op != "==" else ""
        return f"{metric} {_fmt(value)} {relation} {_fmt(threshold)}{source}{room}"
    missed = abs(margin)
    word = "short by" if op in (">=", ">") else "over by" if op in ("<=", "<") else "off by"
    if missed == 0:  # a strict op met with equality
        return f"{metric} {_fmt(value)} {relation} {_fmt(threshold)}{source} (equal, needs {op})"
    return f"{metric} {_fmt(value)} {relation} {_fmt(threshold)}{source} ({word} {_fmt(missed)})"

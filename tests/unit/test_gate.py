"""The gate stage: rule parsing, thresholds, champion comparisons, failure messages."""

from __future__ import annotations

import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

import ductwork as dw
from ductwork.errors import DataError, GateFailed
from ductwork.stages.gate import GateParams, Rule
from ductwork.testing import StageOutcome, json_input, run_stage


def evaluation(
    metrics: dict[str, Any],
    champion: dict[str, Any] | None = None,
    comparison: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "task": "classification",
        "model_id": "abc123abc123",
        "rows": 1000,
        "metrics": metrics,
        "champion": None
        if champion is None
        else {"ref": "m@champion", "model_id": "def456def456", "metrics": champion},
        "comparison": comparison or {},
    }


def gate(tmp_path: Path, value: dict[str, Any], *rules: str, **params: Any) -> StageOutcome:
    inp = json_input("evaluate", value, tmp_path / "in")
    return run_stage(
        "gate", {"rules": list(rules), **params}, {"evaluate": inp}, tmp_path, stage="g"
    )


METRICS = {"accuracy": 0.91, "roc_auc": 0.712, "latency_p95_ms": 25.3, "rmse": None}


# ------------------------------------------------------------------------------- parsing
@pytest.mark.parametrize(
    ("text", "metric", "op", "number", "champion"),
    [
        ("accuracy >= 0.85", "accuracy", ">=", 0.85, False),
        ("latency_p95_ms<=20", "latency_p95_ms", "<=", 20.0, False),
        ("  r2 > -0.5 ", "r2", ">", -0.5, False),
        ("mape < 1e-2", "mape", "<", 0.01, False),
        ("cost == 0", "cost", "==", 0.0, False),
        ("roc_auc >= champion - 0.01", "roc_auc", ">=", -0.01, True),
        ("rmse <= champion + .5", "rmse", "<=", 0.5, True),
        ("f1 >= champion", "f1", ">=", 0.0, True),
    ],
)
def test_rules_parse(text: str, metric: str, op: str, number: float, champion: bool) -> None:
    rule = Rule.parse(text)
    assert (rule.metric, rule.op, rule.number, rule.champion) == (metric, op, number, champion)
    assert rule.text == text.strip()


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("accuracy => 0.8", "ops are >=, <=, >, < and =="),
        ("accuracy = 0.8", "ops are >=, <=, >, < and =="),
        ("accuracy 0.8", "no comparison op"),
        (">= 0.8", "starts with a metric name"),
        ("accuracy >= high", "the right side is a number or 'champion"),
        ("roc_auc >= champoin - 0.01", "did you mean 'champion'"),
        ("roc_auc >= champion * 0.9", "the right side is a number or 'champion"),
        ("", "the rule is empty"),
        ("accuracy >= 0.8 and f1 >= 0.5", "one comparison per rule"),
    ],
)
def test_bad_rules_are_param_errors_quoting_the_rule(text: str, why: str) -> None:
    with pytest.raises(ValidationError) as err:
        GateParams(rules=["accuracy >= 0.5", text])
    message = str(err.value)
    assert f"rule '{text}' is not '<metric> <op> <number>'" in message
    assert why in message


def test_rules_are_required() -> None:
    with pytest.raises(ValidationError):
        GateParams(rules=[])
    with pytest.raises(ValidationError, match="on_missing_champion"):
        GateParams(rules=["accuracy >= 0.5"], on_missing_champion="maybe")


# ------------------------------------------------------------------------------- thresholds
def test_passing_rules_report_their_margins(tmp_path: Path) -> None:
    out = gate(tmp_path, evaluation(METRICS), "accuracy >= 0.85", "latency_p95_ms <= 30")
    report = out.values["report"]
    assert report["passed"] is True
    assert report["model_id"] == "abc123abc123"
    first, second = report["rules"]
    assert first["rule"] == "accuracy >= 0.85"
    assert (first["metric"], first["value"], first["threshold"]) == ("accuracy", 0.91, 0.85)
    assert first["margin"] == pytest.approx(0.06)
    assert second["margin"] == pytest.approx(4.7)
    assert out.metrics == {"rules": 2, "failed": 0}


def test_failed_rules_raise_gate_failed_with_what_missed_by_how_much(tmp_path: Path) -> None:
    with pytest.raises(GateFailed) as err:
        gate(
            tmp_path,
            evaluation(METRICS),
            "accuracy >= 0.85",
            "roc_auc >= 0.75",
            "latency_p95_ms <= 20",
        )
    message = str(err.value)
    assert err.value.exit_code == 1
    assert "stage 'g': the model failed 2 of 3 gate rules:" in message
    assert "roc_auc 0.712 < 0.75 (short by 0.038)" in message
    assert "latency_p95_ms 25.3 > 20 (over by 5.3)" in message
    assert "accuracy" not in message
    assert "register" in (err.value.hint or "")


def test_strict_ops_and_equality(tmp_path: Path) -> None:
    with pytest.raises(GateFailed, match=r"accuracy 0\.91 <= 0\.91 \(equal, needs >\)"):
        gate(tmp_path, evaluation(METRICS), "accuracy > 0.91")
    with pytest.raises(GateFailed, match=r"accuracy 0\.91 != 0\.9 \(off by 0\.01\)"):
        gate(tmp_path, evaluation(METRICS), "accuracy == 0.9")
    out = gate(tmp_path, evaluation({"cost": 0.1 + 0.2}), "cost == 0.3")
    assert out.values["report"]["passed"] is True


def test_an_undefined_metric_fails_its_rule(tmp_path: Path) -> None:
    with pytest.raises(GateFailed, match="rmse: rmse is undefined on the test rows"):
        gate(tmp_path, evaluation(METRICS), "rmse <= 5")


def test_unknown_metric_is_a_data_error_with_did_you_mean(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"metric 'roc_acu'.*did you mean 'roc_auc'") as err:
        gate(tmp_path, evaluation(METRICS), "roc_acu >= 0.7")
    assert err.value.exit_code == 2
    assert "accuracy, latency_p95_ms, rmse, roc_auc" in (err.value.hint or "")


def test_input_must_be_an_evaluation(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not an evaluation"):
        gate(tmp_path, {"rows": 3}, "accuracy >= 0.5")


# ------------------------------------------------------------------------------- champion
def test_champion_rules_compare_on_the_shared_rows(tmp_path: Path) -> None:
    value = evaluation(
        METRICS,
        champion={"roc_auc": 0.70, "latency_p95_ms": 22.0},
        comparison={
            "roc_auc": {"model": 0.712, "champion": 0.70, "delta": 0.012},
            "latency_p95_ms": {"model": 25.3, "champion": 22.0, "delta": 3.3},
        },
    )
    out = gate(tmp_path, value, "roc_auc >= champion - 0.01", "latency_p95_ms <= champion + 5")
    report = out.values["report"]
    assert report["passed"] is True
    assert report["champion"] == "def456def456"
    rule = report["rules"][0]
    assert rule["champion"] == 0.70
    assert rule["threshold"] == pytest.approx(0.69)
    assert rule["margin"] == pytest.approx(0.022)
    with pytest.raises(GateFailed) as err:
        gate(tmp_path, value, "roc_auc >= champion + 0.05")
    assert "roc_auc 0.712 < 0.75 (champion 0.7 + 0.05) (short by 0.038)" in str(err.value)


def test_champion_value_from_its_metrics_without_a_comparison(tmp_path: Path) -> None:
    value = evaluation(METRICS, champion={"roc_auc": 0.80})
    with pytest.raises(GateFailed, match=r"roc_auc 0\.712 < 0\.79 \(champion 0\.8 - 0\.01\)"):
        gate(tmp_path, value, "roc_auc >= champion - 0.01")


def test_missing_champion_passes_by_default(tmp_path: Path) -> None:
    out = gate(tmp_path, evaluation(METRICS), "roc_auc >= champion - 0.01", "accuracy >= 0.9")
    rule = out.values["report"]["rules"][0]
    assert rule["passed"] is True
    assert rule["note"] == "no champion"
    assert rule["threshold"] is None
    assert out.values["report"]["champion"] is None


def test_missing_champion_can_fail(tmp_path: Path) -> None:
    with pytest.raises(GateFailed, match=r"roc_auc = 0\.712: no champion"):
        gate(
            tmp_path,
            evaluation(METRICS),
            "roc_auc >= champion",
            on_missing_champion="fail",
        )


def test_champion_without_the_metric_counts_as_missing(tmp_path: Path) -> None:
    value = evaluation(METRICS, champion={"accuracy": 0.9})
    out = gate(tmp_path, value, "roc_auc >= champion")
    assert out.values["report"]["rules"][0]["note"] == "the champion has no roc_auc"


# ------------------------------------------------------------------------------- pipeline
STEPS = """
def evaluation():
    return {"metrics": {"accuracy": 0.70, "roc_auc": 0.81}, "champion": None, "comparison": {}}


def register(gate):
    return {"registered": gate["passed"]}
"""


def test_failed_gate_stops_the_run_before_register(tmp_path: Path) -> None:
    name = f"gate_steps_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(STEPS))

    def pipeline(rule: str) -> Path:
        p = tmp_path / "pipeline.yaml"
        p.write_text(
            textwrap.dedent(
                f"""
                pipeline: gated
                stages:
                  - name: evaluate
                    kind: python
                    uses: {name}:evaluation
                    params: {{outputs: {{main: json}}}}
                  - name: gate
                    kind: gate
                    inputs: [evaluate]
                    params: {{rules: ["{rule}", "roc_auc >= champion - 0.01"]}}
                  - name: register
                    kind: python
                    uses: {name}:register
                    inputs: [gate]
                    params: {{outputs: {{main: json}}}}
                """
            )
        )
        return p

    res = dw.run(dw.load(pipeline("accuracy >= 0.85")))
    assert res.exit_code == 1
    statuses = {n: s.status for n, s in res.stages.items()}
    assert statuses == {"evaluate": "ok", "gate": "failed", "register": "skipped"}
    error = res.stages["gate"].error
    assert error is not None
    assert error["type"] == "GateFailed"
    assert "accuracy 0.7 < 0.85 (short by 0.15)" in error["message"]

    res = dw.run(dw.load(pipeline("accuracy >= 0.6")))
    assert res.exit_code == 0
    assert dw.artifact(dw.load(pipeline("accuracy >= 0.6")), "register") == {"registered": True}

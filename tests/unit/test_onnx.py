from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

from ductwork.errors import DataError
from ductwork.ml.bundle import (
    ONNX_FILE,
    Bundle,
    BundleMeta,
    input_schema,
    proba_column,
    write_bundle,
)
from ductwork.ml.onnx import OnnxPredictor, export_onnx
from ductwork.ml.scoring_batch import score_file
from tests import nycflights as nyc


def fitted(model: Any, X: pl.DataFrame, y: pl.Series) -> tuple[Any, BundleMeta]:
    model.fit(X, y.to_numpy())
    if hasattr(model, "classes_"):
        classes = [c.item() if hasattr(c, "item") else c for c in model.classes_]
        outputs = {"prediction": str(y.dtype), **{proba_column(c): "Float64" for c in classes}}
        task = "classification"
    else:
        classes, outputs, task = None, {"prediction": "Float64"}, "regression"
    meta = BundleMeta(
        task=task,  # type: ignore[arg-type]
        target=y.name,
        classes=classes,
        model="test",
        estimator=type(model[-1]).__name__,
        input_schema=input_schema(X, X.columns),
        output_schema=outputs,
    )
    return model, meta


def bundle_with_onnx(directory: Path, model: Any, meta: BundleMeta, X: pl.DataFrame) -> Bundle:
    """What the train stage does: export next to the model, then write the bundle."""
    directory.mkdir(parents=True, exist_ok=True)
    meta = meta.model_copy(update={"onnx": export_onnx(model, meta, X, directory)})
    write_bundle(directory, model, meta)
    return Bundle.load(directory)


@pytest.fixture(scope="module")
def cancer() -> tuple[pl.DataFrame, pl.Series]:
    data = load_breast_cancer()
    names = [n.replace(" ", "_") for n in data.feature_names]
    return pl.DataFrame(data.data, schema=names, orient="row"), pl.Series("y", data.target)


def scaled_logistic() -> Pipeline:
    return Pipeline([("scale", StandardScaler()), ("model", LogisticRegression(max_iter=500))])


def test_scaler_and_logistic_regression_export_and_match(
    cancer: tuple[pl.DataFrame, pl.Series], tmp_path: Path
) -> None:
    X, y = cancer
    model, meta = fitted(scaled_logistic(), X, y)
    bundle = bundle_with_onnx(tmp_path, model, meta, X)
    info = bundle.meta.onnx
    assert info is not None
    assert info.exported, info.reason
    assert info.matches is True
    assert info.reason == ""
    assert info.rows_compared == X.height
    assert info.prediction_agreement == 1.0
    assert info.max_abs_proba_diff is not None
    assert info.max_abs_proba_diff <= 1e-4
    assert bundle.meta.files[ONNX_FILE] == info.sha256
    got = OnnxPredictor.from_bundle(bundle).predict(X)
    expected = bundle.predict(X)
    assert got.schema == expected.schema
    assert got["prediction"].to_list() == expected["prediction"].to_list()
    assert_frame_equal(got, expected, abs_tol=1e-4, check_exact=False)


def test_string_labels_and_regression_match(tmp_path: Path) -> None:
    wine = load_wine()
    X = pl.DataFrame(wine.data, schema=list(wine.feature_names), orient="row")
    y = pl.Series("cultivar", np.array(["barolo", "grignolino", "barbera"])[wine.target])
    bundle = bundle_with_onnx(tmp_path / "wine", *fitted(scaled_logistic(), X, y), X)
    assert bundle.meta.onnx is not None
    assert bundle.meta.onnx.matches is True
    got = OnnxPredictor.from_bundle(bundle).predict(X)
    assert got["prediction"].to_list() == bundle.predict(X)["prediction"].to_list()

    diabetes = load_diabetes()
    X = pl.DataFrame(diabetes.data, schema=list(diabetes.feature_names), orient="row")
    y = pl.Series("progression", diabetes.target)
    ridge = Pipeline([("scale", StandardScaler()), ("model", Ridge())])
    bundle = bundle_with_onnx(tmp_path / "diabetes", *fitted(ridge, X, y), X)
    info = bundle.meta.onnx
    assert info is not None
    assert info.matches is True
    assert info.max_abs_proba_diff is None  # no probabilities in regression
    got = OnnxPredictor.from_bundle(bundle).predict(X)
    assert np.allclose(got["prediction"], bundle.predict(X)["prediction"], rtol=1e-4)


@pytest.fixture(scope="module")
def flights() -> tuple[pl.DataFrame, pl.Series]:
    df = nyc.flights(10_000).filter(pl.col("arr_delay").is_not_null())
    X = df.select("month", "day", "hour", "distance", "carrier", "origin")
    return X, (df["arr_delay"] > 15).alias("delayed")


def test_gradient_boosting_with_categories_and_boolean_classes(
    flights: tuple[pl.DataFrame, pl.Series], tmp_path: Path
) -> None:
    X, y = flights
    features = ColumnTransformer(
        [
            ("num", "passthrough", ["month", "day", "hour", "distance"]),
            (
                "cat",
                OneHotEncoder(handle_unknown="ignore", sparse_output=False),
                ["carrier", "origin"],
            ),
        ]
    )
    model = Pipeline(
        [("features", features), ("model", HistGradientBoostingClassifier(max_iter=20))]
    )
    bundle = bundle_with_onnx(tmp_path / "b", *fitted(model, X, y), X)
    info = bundle.meta.onnx
    assert info is not None
    assert info.exported, info.reason
    assert info.matches, info.reason
    assert info.rows_compared == 2000  # a sample, spread over the rows
    # the fitted model keeps its boolean classes: only the converted copy is renumbered
    assert bundle.model[-1].classes_.dtype == bool
    rows = X.head(5_000)
    by_sklearn = score_file(
        bundle, rows, tmp_path / "a.parquet", tmp_path / "qa.parquet", model_version="v"
    )
    by_onnx = score_file(
        bundle,
        rows,
        tmp_path / "b.parquet",
        tmp_path / "qb.parquet",
        model_version="v",
        engine="onnx",
        chunk_rows=1_000,
    )
    assert by_onnx.engine == "onnx"
    assert by_sklearn.rows_scored == by_onnx.rows_scored == 5_000
    a, b = pl.read_parquet(tmp_path / "a.parquet"), pl.read_parquet(tmp_path / "b.parquet")
    assert a.schema == b.schema
    assert_frame_equal(a, b, abs_tol=1e-4, check_exact=False)  # no scaling: no float32 drift


def test_a_failing_conversion_records_the_reason(
    cancer: tuple[pl.DataFrame, pl.Series], tmp_path: Path
) -> None:
    X, y = cancer
    custom = Pipeline(
        [
            ("log", FunctionTransformer(lambda a: np.log1p(np.abs(a)))),
            ("model", LogisticRegression(max_iter=500)),
        ]
    )
    model, meta = fitted(custom, X, y)
    info = export_onnx(model, meta, X, tmp_path)
    assert info.exported is False
    assert info.reason
    assert len(info.reason) <= 300
    assert not (tmp_path / ONNX_FILE).exists()
    # not even a model: still no exception
    assert export_onnx(object(), meta, X, tmp_path).exported is False


def test_date_inputs_are_not_exported(tmp_path: Path) -> None:
    X = pl.DataFrame({"when": pl.date_range(pl.date(2024, 1, 1), pl.date(2024, 4, 9), eager=True)})
    X = X.with_columns(x=pl.col("when").dt.day().cast(pl.Float64))
    y = pl.Series("y", (X["x"] > 15).cast(pl.Int64))
    model = Pipeline([("model", LogisticRegression())])
    model.fit(X.select("x"), y.to_numpy())
    meta = BundleMeta(
        task="classification",
        target="y",
        classes=[0, 1],
        model="test",
        estimator="LogisticRegression",
        input_schema=input_schema(X, X.columns),
        output_schema={"prediction": "Int64", "proba_0": "Float64", "proba_1": "Float64"},
    )
    info = export_onnx(model, meta, X, tmp_path)
    assert info.exported is False
    assert info.reason == "column 'when' is Date: ONNX inputs can be numbers, booleans or text"


def test_onnx_engine_refuses_a_missing_mismatched_or_edited_export(
    cancer: tuple[pl.DataFrame, pl.Series], tmp_path: Path
) -> None:
    X, y = cancer
    model, meta = fitted(scaled_logistic(), X, y)
    plain = write_bundle(tmp_path / "plain", model, meta)
    with pytest.raises(DataError, match="has no ONNX model"):
        score_file(
            plain,
            X,
            tmp_path / "o.parquet",
            tmp_path / "q.parquet",
            model_version="v",
            engine="onnx",
        )

    bundle = bundle_with_onnx(tmp_path / "onnx", model, meta, X)
    assert bundle.meta.onnx is not None
    mismatched = bundle.meta.onnx.model_copy(
        update={"matches": False, "reason": "ONNX Runtime does not match scikit-learn: ..."}
    )
    with pytest.raises(DataError, match=r"^predict: the ONNX model .* is not used: ONNX Runtime"):
        score_file(
            Bundle(bundle.path, bundle.meta.model_copy(update={"onnx": mismatched})),
            X,
            tmp_path / "o.parquet",
            tmp_path / "q.parquet",
            model_version="v",
            engine="onnx",
        )
    (bundle.path / ONNX_FILE).write_bytes(b"not a model")
    with pytest.raises(DataError, match="does not match the sha256"):
        OnnxPredictor.from_bundle(bundle)

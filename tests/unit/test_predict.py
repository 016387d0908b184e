from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from ductwork.core.contract import ArtifactInfo, InputArtifact, StageContext
from ductwork.errors import DataError
from ductwork.ml.bundle import (
    Bundle,
    BundleMeta,
    input_schema,
    library_versions,
    proba_column,
    write_bundle,
)
from ductwork.ml.scoring_batch import MODEL_VERSION, resolve_model, score_file, version_label
from ductwork.stages.predict import Predict, PredictParams
from ductwork.testing import run_stage
from tests import nycflights as nyc

FLIGHT_NUMBERS = ["month", "day", "hour", "distance"]
FLIGHT_CATEGORIES = ["carrier", "origin"]


def make_bundle(directory: Path, model: Any, X: pl.DataFrame, y: pl.Series) -> Bundle:
    """Fit ``model`` on real rows and write it as a bundle, the way the train stage does."""
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
        versions=library_versions(),
    )
    write_bundle(directory, model, meta)
    return Bundle.load(directory)  # as a user gets it: the model read back from disk


@pytest.fixture(scope="module")
def cancer(tmp_path_factory: pytest.TempPathFactory) -> tuple[Bundle, pl.DataFrame]:
    """Binary classes 0/1, 30 numeric columns: scaler + logistic regression."""
    data = load_breast_cancer()
    names = [n.replace(" ", "_") for n in data.feature_names]
    X = pl.DataFrame(data.data, schema=names, orient="row")
    y = pl.Series("malignant", data.target)
    model = Pipeline([("scale", StandardScaler()), ("model", LogisticRegression(max_iter=500))])
    bundle = make_bundle(tmp_path_factory.mktemp("cancer"), model, X, y)
    return bundle, X.with_row_index("id")


@pytest.fixture(scope="module")
def wine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Bundle, pl.DataFrame]:
    """Three string classes."""
    data = load_wine()
    names = list(data.feature_names)
    X = pl.DataFrame(data.data, schema=names, orient="row")
    labels = np.array(["barolo", "grignolino", "barbera"])[data.target]
    y = pl.Series("cultivar", labels)
    model = Pipeline([("scale", StandardScaler()), ("model", LogisticRegression(max_iter=500))])
    return make_bundle(tmp_path_factory.mktemp("wine"), model, X, y), X


@pytest.fixture(scope="module")
def diabetes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Bundle, pl.DataFrame]:
    data = load_diabetes()
    X = pl.DataFrame(data.data, schema=list(data.feature_names), orient="row")
    y = pl.Series("progression", data.target)
    model = Pipeline([("model", HistGradientBoostingRegressor(max_iter=30, random_state=0))])
    return make_bundle(tmp_path_factory.mktemp("diabetes"), model, X, y), X


@pytest.fixture(scope="module")
def flights(tmp_path_factory: pytest.TempPathFactory) -> tuple[Bundle, pl.DataFrame]:
    """Real categories (carrier, origin) and a boolean target: is the flight delayed?"""
    df = (
        nyc.flights(20_000)
        .filter(pl.col("arr_delay").is_not_null())
        .with_columns(delayed=pl.col("arr_delay") > 15)
        .with_row_index("id")
    )
    X = df.select(FLIGHT_NUMBERS + FLIGHT_CATEGORIES)
    features = ColumnTransformer(
        [
            ("num", "passthrough", FLIGHT_NUMBERS),
            ("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False), FLIGHT_CATEGORIES),
        ]
    )
    model = Pipeline(
        [
            ("features", features),
            ("model", HistGradientBoostingClassifier(max_iter=20, random_state=0)),
        ]
    )
    bundle = make_bundle(tmp_path_factory.mktemp("flights"), model, X, df["delayed"])
    return bundle, df.select("id", *X.columns).head(3_000)


def score(
    bundle: Bundle, source: Any, tmp_path: Path, **kwargs: Any
) -> tuple[pl.DataFrame, pl.DataFrame, Any]:
    out, quarantine = tmp_path / "out.parquet", tmp_path / "quarantine.parquet"
    kwargs.setdefault("model_version", bundle.meta.model_id)
    summary = score_file(bundle, source, out, quarantine, **kwargs)
    return pl.read_parquet(out), pl.read_parquet(quarantine), summary


# ------------------------------------------------------------------------ the scoring engine
def test_chunked_scoring_gives_the_whole_frame_predictions(
    cancer: tuple[Bundle, pl.DataFrame], tmp_path: Path
) -> None:
    bundle, df = cancer
    source = tmp_path / "in.parquet"
    df.write_parquet(source, row_group_size=100)
    seen: list[tuple[float, float | None]] = []
    out, quarantine, summary = score(
        bundle,
        source,
        tmp_path,
        keep=["id"],
        chunk_rows=64,
        progress=lambda done, total, unit: seen.append((done, total)),
    )
    whole = bundle.predict(df.drop("id"))
    assert out.columns == ["id", "prediction", "proba_0", "proba_1", MODEL_VERSION]
    assert_frame_equal(out.select(whole.columns), whole)
    assert out["id"].to_list() == df["id"].to_list()
    assert out[MODEL_VERSION].unique().to_list() == [bundle.meta.model_id]
    assert quarantine.height == 0
    assert quarantine.columns[-2:] == ["_failed_checks", "_row"]
    assert (summary.rows_in, summary.rows_scored, summary.rows_quarantined) == (569, 569, 0)
    assert seen[-1] == (569, 569)
    assert [d for d, _ in seen] == [min(569, 64 * (i + 1)) for i in range(len(seen))]
    # one row group per chunk
    import pyarrow.parquet as pq

    assert pq.ParquetFile(tmp_path / "out.parquet").metadata.num_row_groups == len(seen)


def test_string_classes_name_the_probability_columns(
    wine: tuple[Bundle, pl.DataFrame], tmp_path: Path
) -> None:
    bundle, df = wine
    out, _, summary = score(bundle, df, tmp_path, chunk_rows=50, model_version="wine/1")
    assert out.columns == [
        "prediction",
        "proba_barbera",
        "proba_barolo",
        "proba_grignolino",
        MODEL_VERSION,
    ]
    assert out.schema["prediction"] == pl.String
    assert_frame_equal(out.drop(MODEL_VERSION), bundle.predict(df))
    assert set(out["prediction"]) == {"barolo", "grignolino", "barbera"}
    probas = out.select(pl.sum_horizontal(pl.selectors.starts_with("proba_")))
    assert np.allclose(probas.to_series().to_numpy(), 1.0)
    assert out[MODEL_VERSION].unique().to_list() == ["wine/1"]
    assert summary.rows_scored == df.height


def test_regression_predicts_values(diabetes: tuple[Bundle, pl.DataFrame], tmp_path: Path) -> None:
    bundle, df = diabetes
    out, _, _ = score(bundle, df.lazy(), tmp_path, chunk_rows=100)
    assert out.columns == ["prediction", MODEL_VERSION]
    assert out.schema["prediction"] == pl.Float64
    assert_frame_equal(out.drop(MODEL_VERSION), bundle.predict(df))


def _broken_flights(df: pl.DataFrame) -> pl.DataFrame:
    """Rows 10-14: unknown carrier; 20-22: null origin; 30: both."""
    carrier = pl.when(pl.col("id").is_between(10, 14) | (pl.col("id") == 30))
    origin = pl.when(pl.col("id").is_between(20, 22) | (pl.col("id") == 30))
    return df.with_columns(
        carrier.then(pl.lit("ZZ")).otherwise(pl.col("carrier")).alias("carrier"),
        origin.then(pl.lit(None)).otherwise(pl.col("origin")).alias("origin"),
    )


def test_invalid_rows_are_quarantined_and_counts_reconcile(
    flights: tuple[Bundle, pl.DataFrame], tmp_path: Path
) -> None:
    bundle, df = flights
    broken = _broken_flights(df)
    out, quarantine, summary = score(bundle, broken, tmp_path, chunk_rows=1_000, keep=["id"])
    assert summary.rows_in == df.height == summary.rows_scored + summary.rows_quarantined
    assert (out.height, quarantine.height) == (df.height - 9, 9)
    assert quarantine["_row"].to_list() == [10, 11, 12, 13, 14, 20, 21, 22, 30]
    assert quarantine["id"].to_list() == quarantine["_row"].to_list()
    assert quarantine.filter(pl.col("_row") == 30)["_failed_checks"].to_list() == [
        ["carrier: unknown category", "origin: null"]
    ]
    assert summary.reasons == {"carrier: unknown category": 6, "origin: null": 4}
    # the valid rows get the predictions they get alone, and keep their ids
    valid = broken.filter(~pl.col("id").is_in(quarantine["id"].implode()))
    assert out["id"].to_list() == valid["id"].to_list()
    expected = bundle.predict(valid.drop("id"))
    assert_frame_equal(out.select(expected.columns), expected)
    assert out.schema["prediction"] == pl.Boolean
    assert out.columns == ["id", "prediction", "proba_false", "proba_true", MODEL_VERSION]


def test_text_in_a_numeric_column_is_quarantined_from_csv(
    flights: tuple[Bundle, pl.DataFrame], tmp_path: Path
) -> None:
    bundle, df = flights
    text = df.with_columns(
        pl.when(pl.col("id") == 5)
        .then(pl.lit("far"))
        .otherwise(pl.col("distance").cast(pl.String))
        .alias("distance")
    )
    source = tmp_path / "in.csv"
    text.write_csv(source)
    out, quarantine, summary = score(bundle, source, tmp_path, chunk_rows=700, keep=["id"])
    assert summary.reasons == {"distance: not numeric": 1}
    assert quarantine.select("id", "distance", "_row").row(0) == (5, "far", 5)
    assert out.height == df.height - 1
    expected = bundle.predict(df.filter(pl.col("id") != 5))
    assert_frame_equal(out.select(expected.columns), expected)
    assert summary.rows_in == df.height  # a CSV has no row count up front: counted


def test_csv_output(cancer: tuple[Bundle, pl.DataFrame], tmp_path: Path) -> None:
    bundle, df = cancer
    out_csv, quarantine = tmp_path / "out.csv", tmp_path / "q.csv"
    bad = df.with_columns(
        pl.when(pl.col("id") == 3).then(None).otherwise(pl.col("mean_radius")).alias("mean_radius")
    )
    summary = score_file(
        bundle, bad, out_csv, quarantine, model_version="v", keep=["id"], chunk_rows=100
    )
    out = pl.read_csv(out_csv)
    assert out.height == summary.rows_scored == 568
    assert out.columns == ["id", "prediction", "proba_0", "proba_1", MODEL_VERSION]
    q = pl.read_csv(quarantine)
    assert q.select("id", "_failed_checks").row(0) == (3, "mean_radius: null")


def test_on_invalid_fail_names_the_column_the_value_and_the_row(
    flights: tuple[Bundle, pl.DataFrame], tmp_path: Path
) -> None:
    bundle, df = flights
    with pytest.raises(DataError) as exc:
        score(bundle, _broken_flights(df), tmp_path, chunk_rows=4, on_invalid="fail")
    message = exc.value.message
    assert re.match(
        r"predict: column 'carrier' has a category the model has not seen: 'ZZ' \(row 10\); "
        r"known: 9E, AA, ",
        message,
    ), message
    assert not list(tmp_path.iterdir())  # nothing half-written is left


def test_on_invalid_fail_on_a_null_and_on_text(
    flights: tuple[Bundle, pl.DataFrame], tmp_path: Path
) -> None:
    bundle, df = flights
    nulls = df.with_columns(
        pl.when(pl.col("id") == 7).then(None).otherwise(pl.col("origin")).alias("origin")
    )
    with pytest.raises(DataError, match=r"column 'origin' is null \(row 7\)"):
        score(bundle, nulls, tmp_path, on_invalid="fail", context="stage 'score'")
    text = df.with_columns(pl.col("hour").cast(pl.String).replace({"5": "five"}))
    with pytest.raises(DataError, match=r"column 'hour' has a value that is not numeric .*'five'"):
        score(bundle, text, tmp_path, on_invalid="fail")


def test_input_errors(flights: tuple[Bundle, pl.DataFrame], tmp_path: Path) -> None:
    bundle, df = flights
    with pytest.raises(DataError, match=r"the input has no column 'carrier'.*did you mean"):
        score(bundle, df.rename({"carrier": "carriers"}), tmp_path)
    with pytest.raises(DataError, match="keep column 'ids' is not in the input - did you mean"):
        score(bundle, df, tmp_path, keep=["ids"])
    with pytest.raises(DataError, match="keep column 'prediction' has the name of an output"):
        score(bundle, df.with_columns(prediction=1), tmp_path, keep=["prediction"])
    with pytest.raises(DataError, match="no input file"):
        score(bundle, tmp_path / "missing.parquet", tmp_path)
    (tmp_path / "rows.xlsx").write_text("x")
    with pytest.raises(DataError, match=r"must be a \.parquet or \.csv file"):
        score(bundle, tmp_path / "rows.xlsx", tmp_path)


def test_empty_input_writes_empty_outputs_with_the_schema(
    cancer: tuple[Bundle, pl.DataFrame], tmp_path: Path
) -> None:
    bundle, df = cancer
    out, quarantine, summary = score(bundle, df.head(0), tmp_path, keep=["id"])
    assert (out.height, quarantine.height, summary.rows_in) == (0, 0, 0)
    assert out.columns == ["id", "prediction", "proba_0", "proba_1", MODEL_VERSION]


# ---------------------------------------------------------------------------- model versions
def test_registry_references_are_labelled_name_slash_version(
    cancer: tuple[Bundle, pl.DataFrame], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle, _ = cancer
    cached = tmp_path / "store" / "models" / "tumours" / "3"
    write_bundle(cached, bundle.model, bundle.meta)
    calls: list[dict[str, Any]] = []

    def fetch_bundle(name: str, **kwargs: Any) -> Path | None:
        calls.append({"name": name, **kwargs})
        return cached if name == "tumours" else None

    from ductwork.ml import tracking

    monkeypatch.setattr(tracking, "fetch_bundle", fetch_bundle)
    found, label = resolve_model("tumours@champion", project_dir=tmp_path)
    assert label == "tumours/3"
    assert found.meta.model_id == bundle.meta.model_id
    assert calls[0]["alias"] == "champion"
    assert resolve_model("tumours/3", project_dir=tmp_path)[1] == "tumours/3"
    assert version_label(str(bundle.path), bundle) == bundle.meta.model_id
    with pytest.raises(DataError, match="the registry has no model 'other'"):
        resolve_model("other@champion", project_dir=tmp_path)


# ------------------------------------------------------------------------------------ stage
def files_input(name: str, directory: Path) -> InputArtifact:
    info = ArtifactInfo(sha256="0" * 64, type="files", bytes=0, path=str(directory))
    return InputArtifact(name=name, info=info)


def test_stage_scores_with_the_model_input(
    flights: tuple[Bundle, pl.DataFrame], tmp_path: Path
) -> None:
    bundle, df = flights
    broken = _broken_flights(df)
    out = run_stage(
        "predict",
        {"keep": ["id"], "chunk_rows": 500},
        {"data": broken, "model": files_input("model", bundle.path)},
        tmp_path,
        stage="score",
    )
    assert out.violations == []
    predictions, quarantine = out.values["predictions"], out.values["quarantine"]
    assert (predictions.height, quarantine.height) == (df.height - 9, 9)
    assert out.metrics["rows_scored"] == df.height - 9
    assert out.metrics["rows_quarantined"] == 9
    assert out.metrics["quarantine_reasons"] == {
        "carrier: unknown category": 6,
        "origin: null": 4,
    }
    assert out.metrics["model_version"] == bundle.meta.model_id
    assert predictions[MODEL_VERSION].unique().to_list() == [bundle.meta.model_id]
    assert out.infos["predictions"].rows == df.height - 9


def test_stage_takes_a_model_param_and_unnamed_inputs(
    cancer: tuple[Bundle, pl.DataFrame], tmp_path: Path
) -> None:
    bundle, df = cancer
    out = run_stage(
        "predict",
        {"model": str(bundle.path), "engine": "sklearn"},
        {"split_test": df.drop("id")},
        tmp_path,
    )
    assert out.violations == []
    assert out.values["predictions"].height == df.height
    assert out.values["quarantine"].height == 0


def test_stage_fails_on_invalid_rows_with_on_invalid_fail(
    flights: tuple[Bundle, pl.DataFrame], tmp_path: Path
) -> None:
    bundle, df = flights
    with pytest.raises(DataError, match=r"^stage 'score': column 'carrier' has a category"):
        run_stage(
            "predict",
            {"model": str(bundle.path), "on_invalid": "fail"},
            {"data": _broken_flights(df)},
            tmp_path,
            stage="score",
        )


def test_stage_needs_exactly_one_model(cancer: tuple[Bundle, pl.DataFrame], tmp_path: Path) -> None:
    bundle, df = cancer
    with pytest.raises(DataError, match="no model: give a 'model' input"):
        run_stage("predict", {}, {"data": df}, tmp_path, stage="score")
    with pytest.raises(DataError, match="the model is given twice"):
        run_stage(
            "predict",
            {"model": str(bundle.path)},
            {"data": df, "model": files_input("model", bundle.path)},
            tmp_path,
            stage="score",
        )


def test_stage_source_stamp_follows_the_alias(
    cancer: tuple[Bundle, pl.DataFrame],
    wine: tuple[Bundle, pl.DataFrame],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    v1 = tmp_path / "models" / "m" / "1"
    v2 = tmp_path / "models" / "m" / "2"
    write_bundle(v1, cancer[0].model, cancer[0].meta)
    write_bundle(v2, wine[0].model, wine[0].meta)
    target = {"path": v1}
    from ductwork.ml import tracking

    monkeypatch.setattr(tracking, "fetch_bundle", lambda name, **kw: target["path"])
    ctx = StageContext(stage="score", run_id="r", project_dir=tmp_path, work_dir=tmp_path / "w")
    kind = Predict()
    params = PredictParams(model="m@champion")
    first = kind.source_stamp(params, ctx)
    assert first is not None
    assert first.startswith("m/1:")
    assert kind.source_stamp(params, ctx) == first
    target["path"] = v2
    assert kind.source_stamp(params, ctx) not in (first, None)
    assert kind.source_stamp(PredictParams(), ctx) == ""  # the model input is fingerprinted
    monkeypatch.setattr(tracking, "fetch_bundle", lambda name, **kw: None)
    assert kind.source_stamp(params, ctx) is None  # not registered yet: always runs


def test_params_are_validated() -> None:
    with pytest.raises(ValueError, match="keep column 'id' is listed twice"):
        PredictParams(keep=["id", "id"])
    with pytest.raises(ValueError, match="engine"):
        PredictParams.model_validate({"engine": "torch"})
    with pytest.raises(ValueError, match="chunk_rows"):
        PredictParams(chunk_rows=0)


# -------------------------------------------------------------------------------------- CLI
def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    from ductwork.cli import STATE, main

    STATE.json = None
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


def test_cli_predict_writes_predictions_and_a_json_summary(
    flights: tuple[Bundle, pl.DataFrame], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle, df = flights
    source = tmp_path / "new.parquet"
    _broken_flights(df).write_parquet(source)
    output = tmp_path / "scored.parquet"
    code, out, _ = cli(
        capsys,
        "predict",
        "--model",
        str(bundle.path),
        "--input",
        str(source),
        "--output",
        str(output),
        "--keep",
        "id",
        "--chunk-rows",
        "1000",
        "--json",
    )
    assert code == 0
    doc = json.loads(out)
    assert doc["schema"] == "ductwork.predict/v1"
    assert (doc["rows_in"], doc["rows_scored"], doc["rows_quarantined"]) == (
        df.height,
        df.height - 9,
        9,
    )
    assert doc["reasons"] == {"carrier: unknown category": 6, "origin: null": 4}
    assert doc["quarantine"] == str(tmp_path / "scored.quarantine.parquet")
    assert pl.read_parquet(output).height == df.height - 9
    assert pl.read_parquet(doc["quarantine"]).height == 9


def test_cli_predict_without_invalid_rows_writes_no_quarantine(
    cancer: tuple[Bundle, pl.DataFrame], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle, df = cancer
    source = tmp_path / "new.csv"
    df.write_csv(source)
    output = tmp_path / "out.csv"
    args = ["-m", str(bundle.path), "-i", str(source), "-o", str(output)]
    code, out, _ = cli(capsys, "predict", *args, "--no-json")
    assert code == 0
    assert f"scored {df.height:,} of {df.height:,} rows" in out
    assert "no rows quarantined" in out
    assert not list(tmp_path.glob("*.quarantine.parquet"))
    assert pl.read_csv(output).height == df.height


def test_cli_predict_strict_exits_2_naming_the_value(
    flights: tuple[Bundle, pl.DataFrame], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle, df = flights
    source = tmp_path / "new.parquet"
    _broken_flights(df).write_parquet(source)
    output = tmp_path / "scored.parquet"
    args = ["predict", "-m", str(bundle.path), "-i", str(source), "-o", str(output)]
    code, _, err = cli(capsys, *args, "--strict", "--no-json")
    assert code == 2
    assert "column 'carrier' has a category the model has not seen: 'ZZ' (row 10)" in err
    assert not output.exists()
    code, _, err = cli(capsys, "predict", "-m", str(tmp_path), "-i", str(source), "-o", str(output))
    assert code == 2
    assert "not a model bundle" in err
    code, _, _ = cli(capsys, *args, "--engine", "onnx", "--no-json")
    assert code == 2  # this bundle was written without an ONNX export

"""The train stage: bundles that predict what the fitted model does, selection, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

pytest.importorskip("sklearn")

from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine

from ductwork.errors import DataError, UsageError
from ductwork.ml.bundle import Bundle
from ductwork.testing import run_stage


def _frame(loader, target: str = "target") -> pl.DataFrame:  # type: ignore[no-untyped-def]
    data = loader(as_frame=True)
    df = pl.from_pandas(data.frame)
    return df.rename({c: c.replace(" ", "_") for c in df.columns})


@pytest.fixture(scope="module")
def cancer() -> tuple[pl.DataFrame, pl.DataFrame]:
    df = _frame(load_breast_cancer).with_columns(pl.col("target").cast(pl.Boolean))
    df = df.sample(fraction=1.0, shuffle=True, seed=1)
    return df.head(450), df.tail(df.height - 450)


def test_bundle_predicts_like_the_fitted_model_and_records_its_contract(
    cancer: tuple[pl.DataFrame, pl.DataFrame], tmp_path: Path
) -> None:
    train, val = cancer
    out = run_stage(
        "train",
        {"target": "target", "model": "logistic_regression"},
        {"train": train, "val": val},
        tmp_path,
    )
    bundle = Bundle.load(out.values["bundle"])
    meta = bundle.meta
    assert meta.task == "classification"
    assert meta.classes == [False, True]
    assert meta.input_columns == [c for c in train.columns if c != "target"]
    assert meta.files["model.skops"] == out.values["scores"]["model_id"][:12] or meta.model_id
    # reference statistics cover every input column, with real quantiles
    ref = meta.reference["features"]["mean_radius"]
    assert ref["quantiles"]["0.5"] == pytest.approx(train["mean_radius"].median(), rel=0.05)
    # the val score is the real roc_auc of the model on val
    from sklearn.metrics import roc_auc_score

    pred = bundle.predict(val)
    auc = roc_auc_score(val["target"].to_numpy(), pred["proba_true"].to_numpy())
    assert out.values["scores"]["candidates"][0]["val"] == pytest.approx(auc)
    assert auc > 0.95
    assert pred["prediction"].dtype == pl.Boolean
    np.testing.assert_allclose(pred["proba_true"] + pred["proba_false"], 1.0)


def test_candidates_pick_the_best_by_the_declared_metric(
    cancer: tuple[pl.DataFrame, pl.DataFrame], tmp_path: Path
) -> None:
    train, val = cancer
    out = run_stage(
        "train",
        {
            "target": "target",
            "candidates": [
                "logistic_regression",
                {"model": "random_forest", "params": {"n_estimators": 20}},
            ],
            "select_by": "accuracy",
        },
        {"train": train, "val": val},
        tmp_path,
    )
    table = out.values["candidates"]
    assert table.height == 2
    assert table["chosen"].to_list() == [True, False]
    best = table.row(0, named=True)
    other = table.row(1, named=True)
    assert best["score"] >= other["score"] - 0.001
    assert Bundle.load(out.values["bundle"]).meta.model == best["model"]


def test_cross_validation_scores_and_regression(tmp_path: Path) -> None:
    df = _frame(load_diabetes)
    out = run_stage(
        "train",
        {"target": "target", "model": "ridge", "cv": 3},
        {"train": df},
        tmp_path,
    )
    scores = out.values["scores"]
    assert scores["task"] == "regression"
    assert scores["objective"] == "rmse"
    row = scores["candidates"][0]
    assert 40 < row["cv_mean"] < 70  # diabetes rmse is ~55 for a linear model
    assert row["train"] <= row["cv_mean"]
    meta = Bundle.load(out.values["bundle"]).meta
    assert meta.output_schema == {"prediction": "Float64"}


@pytest.mark.parametrize("model", ["xgboost", "lightgbm", "hist_gradient_boosting"])
def test_boosters_with_string_labels_and_early_stopping(model: str, tmp_path: Path) -> None:
    df = _frame(load_wine).with_columns(
        pl.col("target").replace_strict({0: "barolo", 1: "grignolino", 2: "barbera"})
    )
    df = df.sample(fraction=1.0, shuffle=True, seed=3)
    train, val = df.head(130), df.tail(48)
    params: dict[str, object] = {"target": "target", "model": model, "params": {}}
    if model != "hist_gradient_boosting":
        params["early_stopping_rounds"] = 5
        params["params"] = {"n_estimators": 200}
    out = run_stage("train", params, {"train": train, "val": val}, tmp_path)
    bundle = Bundle.load(out.values["bundle"])
    pred = bundle.predict(val)
    assert set(pred["prediction"].unique().to_list()) <= {"barolo", "grignolino", "barbera"}
    assert (pred["prediction"] == val["target"]).mean() > 0.85  # type: ignore[operator]
    assert bundle.meta.proba_columns == ["proba_barbera", "proba_barolo", "proba_grignolino"]


def test_a_tampered_model_file_is_refused(
    cancer: tuple[pl.DataFrame, pl.DataFrame], tmp_path: Path
) -> None:
    train, _ = cancer
    out = run_stage("train", {"target": "target", "model": "ridge"}, {"train": train}, tmp_path)
    path = Path(out.values["bundle"])
    other = run_stage(
        "train",
        {"target": "target", "model": "logistic_regression"},
        {"train": train},
        tmp_path / "b",
    )
    (path / "model.skops").write_bytes((Path(other.values["bundle"]) / "model.skops").read_bytes())
    with pytest.raises(DataError, match="changed or replaced"):
        _ = Bundle.load(path).model


def test_same_data_and_seed_give_the_same_bundle_bytes(
    cancer: tuple[pl.DataFrame, pl.DataFrame], tmp_path: Path
) -> None:
    train, _ = cancer
    shas = []
    for i in range(2):
        out = run_stage(
            "train",
            {"target": "target", "model": "random_forest", "params": {"n_estimators": 5}},
            {"train": train},
            tmp_path / str(i),
        )
        shas.append(json.loads((Path(out.values["bundle"]) / "bundle.json").read_text())["files"])
    assert shas[0] == shas[1]


def test_bad_input_gets_clear_errors(
    cancer: tuple[pl.DataFrame, pl.DataFrame], tmp_path: Path
) -> None:
    train, _ = cancer
    with pytest.raises(ValueError, match="did you mean 'random_forest'"):
        run_stage(
            "train", {"target": "target", "model": "random_forrest"}, {"train": train}, tmp_path
        )
    with pytest.raises(UsageError, match=r"no param 'n_estimator'.*did you mean 'n_estimators'"):
        run_stage(
            "train",
            {"target": "target", "model": "random_forest", "params": {"n_estimator": 3}},
            {"train": train},
            tmp_path,
        )
    with pytest.raises(DataError, match=r"target column 'targt' not found.*did you mean 'target'"):
        run_stage("train", {"target": "targt"}, {"train": train}, tmp_path)
    with pytest.raises(DataError, match="one value"):
        run_stage(
            "train",
            {"target": "target"},
            {"train": train.with_columns(pl.lit(True).alias("target"))},
            tmp_path,
        )
    nan_target = _frame(load_diabetes).with_columns(
        pl.when(pl.int_range(pl.len()) == 7)
        .then(float("nan"))
        .otherwise(pl.col("target"))
        .alias("target")
    )
    with pytest.raises(DataError, match=r"1 missing values.*row 7"):
        run_stage("train", {"target": "target", "model": "ridge"}, {"train": nan_target}, tmp_path)
    text = train.with_columns(pl.lit("x").alias("label"))
    with pytest.raises(DataError, match=r"column 'label' is String.*features stage"):
        run_stage("train", {"target": "target"}, {"train": text}, tmp_path)


def test_target_encoded_training_rows_are_cross_fitted_like_pipeline_fit(tmp_path: Path) -> None:
    """The model is fitted on what Pipeline.fit would give it, not on leaky encodings."""
    from sklearn.base import clone
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.pipeline import Pipeline

    rng = np.random.default_rng(0)
    n = 3000
    city = rng.choice([f"c{i}" for i in range(300)], n)  # many small categories: leak-prone
    df = pl.DataFrame({"city": city, "x": rng.normal(size=n)}).with_columns(
        (pl.col("x") + pl.Series(rng.normal(size=n)) > 0).alias("y")
    )
    train, test = df.head(2400), df.tail(600)
    feats = run_stage(
        "features",
        {"target": "y", "encode": {"columns": ["city"], "method": "target"}},
        {"train": train},
        tmp_path / "f",
    )
    from ductwork.core.contract import ArtifactInfo, InputArtifact

    tdir = Path(feats.values["transform"])
    transform = InputArtifact("transform", ArtifactInfo("x", "files", 0, path=str(tdir)))
    out = run_stage(
        "train",
        {"target": "y", "model": "hist_gradient_boosting", "params": {"max_iter": 30}},
        {"train": train, "transform": transform},
        tmp_path / "t",
    )
    bundle = Bundle.load(out.values["bundle"])
    from ductwork.ml.features import load_transform

    fitted, _ = load_transform(tdir)
    reference = Pipeline(
        [
            ("features", clone(fitted)),
            ("model", HistGradientBoostingClassifier(max_iter=30, random_state=42)),
        ]
    ).fit(train.drop("y"), train["y"].to_numpy())
    ours = bundle.predict(test)["proba_true"].to_numpy()
    theirs = reference.predict_proba(test.drop("y"))[:, 1]
    np.testing.assert_allclose(ours, theirs)
    # handing train the features stage's own train output gives the same model, without a refit
    given = run_stage(
        "train",
        {"target": "y", "model": "hist_gradient_boosting", "params": {"max_iter": 30}},
        {"train": train, "transform": transform, "train_features": feats.values["train"]},
        tmp_path / "t2",
    )
    again = Bundle.load(given.values["bundle"]).predict(test)["proba_true"].to_numpy()
    np.testing.assert_allclose(again, theirs)
    with pytest.raises(DataError, match="not the features stage's train output"):
        run_stage(
            "train",
            {"target": "y", "model": "hist_gradient_boosting"},
            {
                "train": train,
                "transform": transform,
                "train_features": feats.values["train"].head(5),
            },
            tmp_path / "t3",
        )


def test_tuned_params_feed_train(cancer: tuple[pl.DataFrame, pl.DataFrame], tmp_path: Path) -> None:
    """tune's best_params output is train's `params` input; its values win over params:."""
    from ductwork.testing import json_input

    train, val = cancer
    tuned = run_stage(
        "tune",
        {
            "target": "target",
            "model": "random_forest",
            "params": {"n_estimators": 10},
            "search_space": {"max_depth": {"low": 2, "high": 6}},
            "n_trials": 3,
            "seed": 1,
        },
        {"train": train, "val": val},
        tmp_path / "tune",
        project_dir=tmp_path,
    )
    best = tuned.values["best_params"]
    out = run_stage(
        "train",
        {"target": "target", "model": "random_forest", "params": {"max_depth": 20}},
        {"train": train, "val": val, "params": json_input("params", best, tmp_path / "p")},
        tmp_path / "train",
    )
    meta = Bundle.load(out.values["bundle"]).meta
    assert meta.params["max_depth"] == best["params"]["max_depth"] != 20
    assert meta.params["n_estimators"] == 10

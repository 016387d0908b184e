"""The flights delay classifier written by hand: Polars + scikit-learn + MLflow, no framework.

The same work as the ML part of examples/flights/pipeline.yaml with one model (what
bench/bench_ml.py times ductwork doing): read the clean model table, split it 70/15/15
stratified by the label with the same seeded hash ductwork's split uses (so both sides train
and test on the very same rows), fit the same ColumnTransformer on the train rows (median
imputation and standard scaling of the numbers, one-hot carrier and origin, target-encoded
dest), fit the same HistGradientBoostingClassifier, and compute accuracy, roc_auc, pr_auc, f1
and log_loss on the test rows. With tracking (the default) it then does what a careful script
does with MLflow: a SQLite tracking store in OUT_DIR, one run with the params and metrics, the
fitted pipeline logged with ``mlflow.sklearn.log_model`` (an input example, so a signature;
pip requirements given, not inferred) and registered as a model version.

    python bench/plain_ml_flights.py DATA.parquet OUT_DIR [--no-tracking]

Prints one JSON line: the row counts, the metrics and the seconds spent per step.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

T0 = time.perf_counter()
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
from sklearn import metrics as skm  # noqa: E402
from sklearn.compose import ColumnTransformer  # noqa: E402
from sklearn.ensemble import HistGradientBoostingClassifier  # noqa: E402
from sklearn.impute import SimpleImputer  # noqa: E402
from sklearn.model_selection import StratifiedKFold  # noqa: E402
from sklearn.pipeline import Pipeline  # noqa: E402
from sklearn.preprocessing import OneHotEncoder, StandardScaler, TargetEncoder  # noqa: E402

TARGET = "delayed"
SPLIT_SEED = 7  # the split's seed in the pipeline
SEED = 42  # ductwork's default seed of features (target-encoding folds) and train (the model)
RATIOS = (0.7, 0.15, 0.15)
SCALED = ["month", "weekday", "dep_hour", "sched_dep_time", "distance"]
WEATHER = ["temp", "dewp", "humid", "wind_speed", "precip", "pressure", "visib"]
PLANE = ["plane_age", "seats"]
IMPUTED = WEATHER + PLANE  # missing where a flight has no weather row or plane record
ONE_HOT = ["carrier", "origin"]
TARGET_ENCODED = ["dest"]
HGB = {"max_iter": 100, "learning_rate": 0.15}


def split(df: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Stratified 70/15/15: within each class, rows ranked by a seeded hash of their position."""
    pos = pl.col("_row").hash(SPLIT_SEED).rank("ordinal").over(TARGET).cast(pl.Int64) - 1
    size = pl.len().over(TARGET).cast(pl.Int64)
    cut1 = (size.cast(pl.Float64) * RATIOS[0] + 0.5).floor().cast(pl.Int64)
    cut2 = (size.cast(pl.Float64) * (RATIOS[0] + RATIOS[1]) + 0.5).floor().cast(pl.Int64)
    part = pl.when(pos < cut1).then(0).when(pos < cut2).then(1).otherwise(2)
    labelled = df.with_row_index("_row").with_columns(_part=part).drop("_row")
    train, val, test = (labelled.filter(pl.col("_part") == i).drop("_part") for i in range(3))
    return train, val, test


def transformer() -> ColumnTransformer:
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=SEED)
    return ColumnTransformer(
        [
            ("standard", StandardScaler(), SCALED),
            (
                "one_hot",
                OneHotEncoder(handle_unknown="infrequent_if_exist", sparse_output=False),
                ONE_HOT,
            ),
            ("target", TargetEncoder(cv=folds), TARGET_ENCODED),
            (
                "impute_median+standard",
                Pipeline(
                    [("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())]
                ),
                IMPUTED,
            ),
        ],
        verbose_feature_names_out=False,
    ).set_output(transform="polars")


def main(data: Path, out: Path, tracking: bool) -> dict[str, object]:
    steps: dict[str, float] = {"import_sklearn_polars": time.perf_counter() - T0}
    t = time.perf_counter()
    df = pl.read_parquet(data)
    train, val, test = split(df)
    steps["read_split"] = time.perf_counter() - t

    t = time.perf_counter()
    columns = SCALED + ONE_HOT + TARGET_ENCODED + IMPUTED
    y_train = train[TARGET].to_numpy()
    features = transformer()
    Xt = features.fit_transform(train.select(columns), y_train)
    steps["features"] = time.perf_counter() - t

    t = time.perf_counter()
    model = HistGradientBoostingClassifier(random_state=SEED, **HGB)
    model.fit(Xt, y_train)
    pipeline = Pipeline([("features", features), ("model", model)])
    steps["train"] = time.perf_counter() - t

    t = time.perf_counter()
    X_test, y_test = test.select(columns), test[TARGET].to_numpy()
    proba = pipeline.predict_proba(X_test)[:, list(model.classes_).index(True)]
    pred = proba >= 0.5
    scores = {
        "accuracy": float(skm.accuracy_score(y_test, pred)),
        "roc_auc": float(skm.roc_auc_score(y_test, proba)),
        "pr_auc": float(skm.average_precision_score(y_test, proba)),
        "f1": float(skm.f1_score(y_test, pred)),
        "log_loss": float(skm.log_loss(y_test, np.column_stack([1 - proba, proba]))),
    }
    val_proba = pipeline.predict_proba(val.select(columns))[:, 1]
    val_auc = float(skm.roc_auc_score(val[TARGET].to_numpy(), val_proba))
    steps["evaluate"] = time.perf_counter() - t

    if tracking:
        t = time.perf_counter()
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        import mlflow
        import mlflow.sklearn
        import sklearn

        steps["import_mlflow"] = time.perf_counter() - t
        t = time.perf_counter()
        out.mkdir(parents=True, exist_ok=True)
        mlflow.set_tracking_uri("sqlite:///" + (out / "mlflow.db").absolute().as_posix())
        experiment = mlflow.create_experiment(
            "flight-delays", artifact_location=(out / "artifacts").absolute().as_uri()
        )
        with mlflow.start_run(experiment_id=experiment):
            mlflow.log_params({**HGB, "model": "HistGradientBoostingClassifier", "seed": SEED})
            mlflow.log_metrics({**scores, "val_roc_auc": val_auc, "rows_test": test.height})
            mlflow.sklearn.log_model(
                pipeline,
                name="model",
                input_example=X_test.head(5).to_pandas(),
                registered_model_name="flight-delays",
                # MLflow 3 saves sklearn models with skops; these types are ours, trusted
                skops_trusted_types=[
                    "numpy.dtype",
                    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
                    "sklearn.model_selection._split.StratifiedKFold",
                ],
                pip_requirements=[
                    f"scikit-learn=={sklearn.__version__}",
                    f"polars=={pl.__version__}",
                    f"numpy=={np.__version__}",
                ],
            )
        steps["mlflow_log"] = time.perf_counter() - t
    return {
        "rows": {"train": train.height, "val": val.height, "test": test.height},
        "metrics": scores,
        "val_roc_auc": val_auc,
        "steps_s": {k: round(v, 3) for k, v in steps.items()},
    }


if __name__ == "__main__":
    result = main(Path(sys.argv[1]), Path(sys.argv[2]), "--no-tracking" not in sys.argv[3:])
    print(json.dumps(result))

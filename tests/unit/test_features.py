from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal
from pydantic import ValidationError

pytest.importorskip("sklearn")

from sklearn.base import clone
from sklearn.datasets import load_breast_cancer, load_wine
from sklearn.feature_selection import SelectKBest, f_classif

from ductwork.errors import DataError
from ductwork.ml import serialize
from ductwork.ml.features import (
    DeriveColumns,
    build_transformer,
    feature_info,
    infer_task,
    load_transform,
    split_xy,
)
from ductwork.stages.features import FeaturesParams
from ductwork.testing import StageOutcome, run_stage
from tests import nycflights as nyc

SPLITS = ("train", "val", "test")


# ------------------------------------------------------------------------------- data
@pytest.fixture(scope="module")
def cancer() -> pl.DataFrame:
    """569 real tumours: 30 numeric features and a 0/1 target."""
    return pl.from_pandas(load_breast_cancer(as_frame=True).frame)


@pytest.fixture(scope="module")
def wine() -> pl.DataFrame:
    """178 real wines: 13 numeric features and 3 classes."""
    return pl.from_pandas(load_wine(as_frame=True).frame)


@pytest.fixture(scope="module")
def flights() -> pl.DataFrame:
    """3,000 real flights: categories (carrier, origin, dest), nulls, a datetime."""
    return (
        nyc.flights(3_000)
        .select(
            "month",
            "dep_time",
            "dep_delay",
            "arr_delay",
            "carrier",
            "origin",
            "dest",
            "distance",
            "air_time",
            "time_hour",
        )
        .with_columns(
            pl.col("time_hour").str.to_datetime(time_zone="UTC"),
            (pl.col("arr_delay") > 15).alias("late"),
        )
        .drop_nulls("late")
    )


def thirds(df: pl.DataFrame) -> dict[str, pl.DataFrame]:
    """train / val / test: every third row, so each spans the whole table."""
    n = pl.int_range(pl.len()) % 3
    return {name: df.filter(n == i) for i, name in enumerate(SPLITS)}


def features(
    tmp_path: Path, params: dict[str, Any], inputs: dict[str, pl.DataFrame]
) -> StageOutcome:
    out = run_stage("features", params, inputs, tmp_path, stage="feats")
    assert out.violations == []
    return out


def fit(params: dict[str, Any], train: pl.DataFrame) -> Any:
    """Build and fit the pipeline on ``train`` the way the stage does."""
    p = FeaturesParams.model_validate(params)
    X, y = split_xy(train, p.target, "feats")
    task = infer_task(y) if y is not None else None
    pipeline = build_transformer(p, train.schema, stage="feats", task=task)
    pipeline.fit(X, y)
    return pipeline


# ------------------------------------------------------------------------------- leakage
def test_fitted_on_train_only(flights: pl.DataFrame, tmp_path: Path) -> None:
    every_10th = pl.int_range(pl.len()) % 10 == 0
    data = flights.with_columns(pl.when(~every_10th).then(pl.col("dep_delay")).alias("dep_delay"))
    parts = thirds(data)
    train = parts["train"]
    params = {
        "target": "late",
        "drop": ["time_hour", "arr_delay"],
        "impute": {"columns": ["dep_delay", "air_time"], "strategy": "median"},
        "normalize": {"columns": ["dep_delay", "distance", "air_time"]},
        "encode": [
            {"columns": ["carrier", "origin"], "method": "one_hot"},
            {"columns": ["dest"], "method": "target"},
        ],
    }
    out = features(tmp_path / "a", params, parts)
    fitted, info = load_transform(out.values["transform"])
    columns = fitted.named_steps["columns"].named_transformers_
    imputer, scaler = columns["impute_median+standard"][0], columns["impute_median+standard"][-1]
    # the median and the scaler's mean and scale are train's: not those of all rows
    median = train["dep_delay"].median()
    assert list(imputer.statistics_) == [median, train["air_time"].median()]
    assert train["air_time"].median() != data["air_time"].median()
    filled = train["dep_delay"].fill_null(median)
    assert scaler.mean_[0] == pytest.approx(filled.mean())
    assert scaler.scale_[0] == pytest.approx(filled.std(ddof=0))
    assert scaler.mean_[0] != pytest.approx(data["dep_delay"].fill_null(median).mean())
    distance = columns["standard"]
    assert distance.mean_[0] == pytest.approx(train["distance"].mean())
    assert distance.mean_[0] != pytest.approx(data["distance"].mean())
    assert out.values["train"]["dep_delay"].mean() == pytest.approx(0.0, abs=1e-9)

    # val and test rows scaled up, with an unseen carrier and flipped labels: nothing fitted
    # changes, nor the transformed train rows
    def distort(df: pl.DataFrame) -> pl.DataFrame:
        return df.with_columns(
            pl.col("dep_delay", "distance", "air_time") * 1000,
            pl.lit("ZZ").alias("carrier"),
            ~pl.col("late"),
        )

    other = {"train": train, "val": distort(parts["val"]), "test": distort(parts["test"])}
    again = features(tmp_path / "b", params, other)
    alone = features(tmp_path / "c", params, {"train": train})
    target = columns["target"]
    for run in (again, alone):
        assert run.infos["train"].sha256 == out.infos["train"].sha256
        refit, refit_info = load_transform(run.values["transform"])
        assert refit_info["sha256"] == info["sha256"]  # the same fitted bytes
        refitted = refit.named_steps["columns"].named_transformers_
        assert np.array_equal(refitted["target"].encodings_[0], target.encodings_[0])
        assert np.array_equal(refitted["standard"].mean_, distance.mean_)
    # while the val output did change: it is transformed with train's statistics
    assert again.infos["val"].sha256 != out.infos["val"].sha256
    assert again.values["val"]["carrier_UA"].sum() == 0  # ZZ is unknown: all zeros


def test_target_encoding_cross_fits_train_and_uses_train_means_for_val(
    flights: pl.DataFrame,
) -> None:
    parts = thirds(flights)
    params = {"target": "late", "encode": {"columns": ["carrier"], "method": "target"}}
    p = FeaturesParams.model_validate({**params, "remainder": "drop"})
    X, y = split_xy(parts["train"], "late", "feats")
    pipeline = build_transformer(p, parts["train"].schema, task="classification")
    cross_fitted = pipeline.fit_transform(X, y)["carrier"]
    encoder = pipeline.named_steps["columns"].named_transformers_["target"]
    by_category = dict(zip(encoder.categories_[0], encoder.encodings_[0], strict=True))
    # val rows get the encoding learned from all train rows ...
    val = pipeline.transform(parts["val"].drop("late"))["carrier"]
    expected = [by_category[c] for c in parts["val"]["carrier"]]
    assert val.to_list() == pytest.approx(expected)
    # ... while a train row's own encoding comes from the other folds (not its own label)
    full_fit = [by_category[c] for c in parts["train"]["carrier"]]
    assert cross_fitted.to_list() != pytest.approx(full_fit)


# ------------------------------------------------------------------------------- blocks
def frame() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "a": [1.0, 2.0, None, 4.0, 5.0, 6.0],
            "b": [10, 20, 30, None, 50, 60],
            "c": ["x", "y", "x", None, "x", "y"],
            "y": [0, 1, 0, 1, 0, 1],
        }
    )


@pytest.mark.parametrize(
    ("strategy", "extra", "a", "c"),
    [
        ("mean", {}, 3.6, None),
        ("median", {}, 4.0, None),
        ("most_frequent", {}, 1.0, "x"),
        ("constant", {"fill_value": -1}, -1.0, None),
    ],
)
def test_impute(strategy: str, extra: dict[str, Any], a: float, c: str | None) -> None:
    columns = ["a", "c"] if c is not None else ["a"]
    encode = {"columns": ["c"], "method": "ordinal"}
    pipeline = fit(
        {
            "target": "y",
            "impute": {"columns": columns, "strategy": strategy, **extra},
            "encode": encode,
        },
        frame(),
    )
    out = pipeline.transform(frame().drop("y"))
    assert out["a"].to_list() == pytest.approx([1.0, 2.0, a, 4.0, 5.0, 6.0])
    # b is passed through as is, nulls included
    assert out["b"].to_list() == [10, 20, 30, None, 50, 60]
    if c is not None:  # the null category was filled before encoding: x=0, y=1
        assert out["c"].to_list() == [0, 1, 0, 0, 0, 1]
    # a later table's nulls get train's statistic, not its own
    later = pl.DataFrame({"a": [None, 100.0], "b": [1, 2], "c": ["y", "y"]})
    assert pipeline.transform(later)["a"][0] == pytest.approx(a)


def test_impute_constant_text() -> None:
    pipeline = fit(
        {
            "impute": {"columns": ["c"], "strategy": "constant", "fill_value": "none"},
            "encode": {"columns": ["c"]},
            "remainder": "drop",
        },
        frame(),
    )
    out = pipeline.transform(frame())
    assert out.columns == ["c_none", "c_x", "c_y"]
    assert out["c_none"].to_list() == [0, 0, 0, 1, 0, 0]


@pytest.mark.parametrize("method", ["standard", "minmax", "robust"])
def test_normalize(wine: pl.DataFrame, method: str) -> None:
    parts = thirds(wine)
    columns = ["alcohol", "proline", "magnesium"]
    pipeline = fit(
        {"target": "target", "normalize": {"columns": columns, "method": method}}, parts["train"]
    )
    out = pipeline.transform(parts["train"].drop("target"))
    assert out.columns[:3] == ["alcohol", "magnesium", "proline"]  # the table's order
    assert out.width == wine.width - 1  # the other 10 pass through
    for c in columns:
        s = out[c]
        if method == "standard":
            assert s.mean() == pytest.approx(0.0, abs=1e-12)
            assert s.std(ddof=0) == pytest.approx(1.0)
        elif method == "minmax":
            assert (s.min(), s.max()) == pytest.approx((0.0, 1.0))
        else:
            assert s.median() == pytest.approx(0.0, abs=1e-12)
    # val is scaled with train's statistics, so it is not exactly centred itself
    val = pipeline.transform(parts["val"].drop("target"))
    assert val["proline"].mean() != pytest.approx(0.0, abs=1e-6)


def test_one_hot_unknown_category_is_all_zeros_and_infrequent_is_grouped(
    flights: pl.DataFrame,
) -> None:
    parts = thirds(flights)
    plain = fit({"encode": {"columns": ["origin"]}, "remainder": "drop"}, parts["train"])
    out = plain.transform(pl.DataFrame({"origin": ["JFK", "SFO", None]}))
    assert out.columns == ["origin_EWR", "origin_JFK", "origin_LGA"]
    assert out.rows() == [(0.0, 1.0, 0.0), (0.0, 0.0, 0.0), (0.0, 0.0, 0.0)]

    grouped = fit(
        {"encode": {"columns": ["carrier"], "max_categories": 4}, "remainder": "drop"},
        parts["train"],
    )
    names = grouped.named_steps["columns"].get_feature_names_out().tolist()
    assert len(names) == 4 and names[-1] == "carrier_infrequent_sklearn"
    top3 = parts["train"]["carrier"].value_counts(sort=True)["carrier"].head(3).sort()
    assert names[:3] == [f"carrier_{c}" for c in top3]
    unknown = grouped.transform(pl.DataFrame({"carrier": ["ZZ"]}))
    assert unknown.row(0) == (0.0, 0.0, 0.0, 1.0)  # an unseen carrier is infrequent


def test_ordinal_unknown_is_minus_one(flights: pl.DataFrame) -> None:
    pipeline = fit(
        {"encode": {"columns": ["origin", "carrier"], "method": "ordinal"}, "remainder": "drop"},
        flights,
    )
    out = pipeline.transform(pl.DataFrame({"origin": ["EWR", "LGA", "SFO"], "carrier": "UA"}))
    assert out["origin"].to_list() == [0, 2, -1]
    carriers = sorted(flights["carrier"].unique())
    assert out["carrier"].to_list() == [carriers.index("UA")] * 3


def test_derive_then_drop_its_input(flights: pl.DataFrame) -> None:
    params = {
        "derive": {
            "hour": "EXTRACT(hour FROM time_hour)",
            "speed": "distance / (air_time / 60)",
            "fast": "speed > 400",  # uses the column derived before it
        },
        "drop": ["time_hour"],
        "normalize": {"columns": ["speed"], "method": "minmax"},
        "impute": {"columns": ["speed"], "strategy": "median"},
        "remainder": "drop",
        "encode": {"columns": ["hour"], "method": "ordinal"},
    }
    pipeline = fit(params, flights)
    out = pipeline.transform(flights)
    assert out.columns == ["hour", "speed"]
    assert (out["hour"] + 1).to_list() == flights["time_hour"].dt.hour().rank("dense").cast(
        pl.Int64
    ).to_list()
    assert out["speed"].min() == pytest.approx(0.0)
    derive = pipeline.named_steps["derive"]
    # the transform reads only what it needs: time_hour for hour, distance and air_time for speed
    assert derive.feature_names_in_.tolist() == ["distance", "air_time", "time_hour"]
    info = feature_info(pipeline, flights, FeaturesParams.model_validate(params))
    assert info["input_columns"] == ["distance", "air_time", "time_hour"]
    assert info["input_schema"]["time_hour"].startswith("Datetime")


def test_derive_quoted_names(cancer: pl.DataFrame) -> None:
    pipeline = fit(
        {
            "target": "target",
            "derive": {"ratio": '"mean area" / "mean radius"'},
            "remainder": "drop",
            "normalize": {"columns": ["ratio"]},
        },
        cancer,
    )
    out = pipeline.transform(cancer)
    raw = cancer["mean area"] / cancer["mean radius"]
    expected = (raw - raw.mean()) / raw.std(ddof=0)
    assert out["ratio"].to_list() == pytest.approx(expected.to_list())


def test_select_variance_drops_constant_columns(wine: pl.DataFrame) -> None:
    df = wine.with_columns(pl.lit(1.0).alias("constant"), (pl.col("hue") * 0).alias("zero"))
    pipeline = fit({"target": "target", "select": {"method": "variance"}}, df)
    names = pipeline.get_feature_names_out().tolist()
    assert names == [c for c in wine.columns if c != "target"]
    stricter = fit({"target": "target", "select": {"method": "variance", "threshold": 1.0}}, df)
    kept = stricter.get_feature_names_out().tolist()
    variances = wine.drop("target").select(pl.all().var(ddof=0)).row(0, named=True)
    assert kept == [c for c, v in variances.items() if v > 1.0]


def test_select_k_best_matches_scikit_learn(cancer: pl.DataFrame) -> None:
    parts = thirds(cancer)
    train = parts["train"]
    pipeline = fit(
        {
            "target": "target",
            "normalize": {"columns": ["mean area"]},
            "select": {"method": "k_best", "k": 5},
        },
        train,
    )
    X = train.drop("target")
    reference = SelectKBest(f_classif, k=5).fit(X.to_numpy(), train["target"].to_numpy())
    expected = [c for c, keep in zip(X.columns, reference.get_support(), strict=True) if keep]
    out = pipeline.transform(parts["test"].drop("target"))
    assert sorted(out.columns) == sorted(expected)
    assert out.height == parts["test"].height


def test_select_mutual_info_is_seeded(cancer: pl.DataFrame) -> None:
    params = {"target": "target", "select": {"method": "k_best", "k": 8, "score": "mutual_info"}}
    a = fit(params, cancer).get_feature_names_out().tolist()
    b = fit(params, cancer).get_feature_names_out().tolist()
    assert a == b and len(a) == 8
    scores = fit(params, cancer).named_steps["select"].scores_
    assert scores.min() >= 0 and scores.max() > 0.3


# ------------------------------------------------------------------------------- the stage
def test_stage_outputs(flights: pl.DataFrame, tmp_path: Path) -> None:
    parts = thirds(flights)
    params = {
        "target": "late",
        "drop": ["arr_delay", "time_hour"],
        "impute": {"columns": ["dep_delay", "air_time", "dep_time"]},
        "encode": {"columns": ["carrier", "origin", "dest"], "max_categories": 10},
    }
    out = features(tmp_path, params, {"train": parts["train"], "test": parts["test"]})
    train, val, test = (out.values[s] for s in SPLITS)
    assert train.height == parts["train"].height and test.height == parts["test"].height
    assert val.height == 0 and val.schema == train.schema
    assert train.columns[-1] == "late"
    assert train["late"].to_list() == parts["train"]["late"].to_list()
    n = train.width - 1
    assert out.metrics == {
        "features": n,
        "rows_train": parts["train"].height,
        "rows_val": 0,
        "rows_test": parts["test"].height,
    }
    numeric = [c for c, t in train.schema.items() if c != "late"]
    assert all(train.schema[c].is_numeric() for c in numeric)
    assert train.select(pl.exclude("late").null_count().sum()).row(0) == (0,) * n
    directory = out.values["transform"]
    assert sorted(p.name for p in directory.iterdir()) == ["features.json", "transform.skops"]
    info = json.loads((directory / "features.json").read_text())
    assert info["sha256"] == serialize.sha256_file(directory / "transform.skops")
    assert info["output_features"] == train.columns[:-1]
    assert info["input_columns"] == [
        "month",
        "dep_time",
        "dep_delay",
        "carrier",
        "origin",
        "dest",
        "distance",
        "air_time",
    ]
    assert info["imputed"] == ["dep_delay", "air_time", "dep_time"]
    assert info["impute_strategy"] == dict.fromkeys(info["imputed"], "median")
    assert info["categories"]["origin"] == ["EWR", "JFK", "LGA"]
    assert info["task"] == "classification"
    assert set(info["versions"]) >= {"ductwork", "scikit-learn", "skops", "polars"}


def test_stage_invariant_counts_rows(flights: pl.DataFrame, tmp_path: Path) -> None:
    from ductwork.core.contract import ArtifactInfo, Inputs, StageContext
    from ductwork.stages.features import Features
    from ductwork.testing import table_input

    parts = thirds(flights)
    params = FeaturesParams.model_validate(
        {"target": "late", "drop": ["time_hour", "carrier", "origin", "dest"]}
    )
    ins = Inputs({"train": table_input("train", parts["train"], tmp_path)})
    ctx = StageContext(stage="feats", run_id="t", project_dir=tmp_path, work_dir=tmp_path / "w")
    n = parts["train"].height

    def info(rows: int, schema: dict[str, str] | None = None) -> ArtifactInfo:
        return ArtifactInfo(sha256="x", type="table", bytes=0, rows=rows, schema=schema)

    good = {"train": info(n), "val": info(0), "test": info(0), "transform": info(0)}
    assert Features().check(params, ins, good, ctx) == []
    bad = {**good, "train": info(n - 1), "test": info(3)}
    assert Features().check(params, ins, bad, ctx) == [
        f"rows: the 'train' output has {n - 1:,} rows, the input {n:,}",
        "rows: the 'test' output has 3 rows, the input 0",
    ]


def test_stage_refuses_unnamed_inputs(flights: pl.DataFrame, tmp_path: Path) -> None:
    with pytest.raises(DataError) as exc:
        run_stage("features", {}, {"parts": flights, "tset": flights}, tmp_path, stage="feats")
    assert exc.value.message.startswith("stage 'feats': unknown input names 'parts', 'tset'")
    assert "train (required), val and test" in exc.value.message
    assert exc.value.hint is not None and "{train: parts.train" in exc.value.hint


def test_module_import_needs_no_scikit_learn() -> None:
    code = "import sys, ductwork.stages.features\nprint('sklearn' in sys.modules)"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert p.stdout.strip() == "False"


# ------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("params", "message"),
    [
        (
            {"normalize": {"columns": ["dep_dealy"]}},
            "stage 'feats': normalize column 'dep_dealy' not found in the train table"
            " - did you mean 'dep_delay'?",
        ),
        (
            {"target": "lat"},
            "stage 'feats': target column 'lat' not found - did you mean 'late'?",
        ),
        (
            {"drop": ["timehour"]},
            "stage 'feats': drop column 'timehour' not found in the train table"
            " - did you mean 'time_hour'?",
        ),
        (
            {"derive": {"speed": "distanc / air_time"}},
            "stage 'feats': derive 'speed' (distanc / air_time): column 'distanc' not found"
            " - did you mean 'distance'?",
        ),
        (
            {"drop": ["time_hour", "carrier", "origin"], "target": "late"},
            "stage 'feats': column 'dest' is String and would reach the model unencoded",
        ),
        (
            {"drop": ["carrier", "origin", "dest"], "target": "late"},
            "stage 'feats': column 'time_hour' is Datetime(time_unit='us', time_zone='UTC') "
            "and would reach the model unencoded",
        ),
        (
            {"normalize": {"columns": ["carrier"]}, "remainder": "drop"},
            "stage 'feats' (train): column 'carrier' has non-numeric values, e.g. 'UA'",
        ),
        (
            {"impute": {"columns": ["origin"], "strategy": "median"}, "remainder": "drop"},
            "stage 'feats' (train): column 'origin' has non-numeric values, e.g. 'EWR'",
        ),
        (
            {"derive": {"x": "arr_delay * 2"}, "target": "arr_delay"},
            "stage 'feats': derive 'x' uses the target column 'arr_delay'",
        ),
    ],
)
def test_data_errors_name_stage_and_column(
    flights: pl.DataFrame, tmp_path: Path, params: dict[str, Any], message: str
) -> None:
    with pytest.raises(DataError) as exc:
        run_stage("features", params, {"train": flights}, tmp_path, stage="feats")
    assert exc.value.message.startswith(message), exc.value.message
    assert exc.value.exit_code == 2


def test_non_numeric_text_error_names_the_value(tmp_path: Path) -> None:
    train = pl.DataFrame({"x": ["1.5", " 2 ", None, "abc", "4", ""], "y": [0, 1, 0, 1, 0, 1]})
    params = {"target": "y", "normalize": {"columns": ["x"]}}
    with pytest.raises(DataError) as exc:
        run_stage("features", params, {"train": train}, tmp_path, stage="feats")
    assert exc.value.message == (
        "stage 'feats' (train): column 'x' has non-numeric values, e.g. 'abc' (1 of 6 rows)"
    )
    # text that holds numbers only is cast; blanks are missing values
    numbers = train.with_columns(pl.col("x").replace("abc", "3"))
    out = features(tmp_path / "ok", {**params, "impute": {"columns": ["x"]}}, {"train": numbers})
    scaled = out.values["train"]["x"]
    assert scaled.dtype == pl.Float64 and scaled.null_count() == 0
    raw = pl.Series([1.5, 2.0, 2.5, 3.0, 4.0, 2.5])  # null and blank: the median, 2.5
    assert scaled.to_list() == pytest.approx(((raw - raw.mean()) / raw.std(ddof=0)).to_list())
    # a later split with a bad value is an error too, naming the split
    bad_val = pl.DataFrame({"x": ["7", "n/a"], "y": [0, 1]})
    with pytest.raises(DataError, match=r"\(val\): column 'x' has non-numeric values, e.g. 'n/a'"):
        run_stage(
            "features",
            {**params, "impute": {"columns": ["x"]}},
            {"train": numbers, "val": bad_val},
            tmp_path / "val",
            stage="feats",
        )


def test_val_without_a_column_the_transform_reads(flights: pl.DataFrame, tmp_path: Path) -> None:
    parts = thirds(flights)
    params = {"target": "late", "drop": ["time_hour", "carrier", "origin", "dest"]}
    with pytest.raises(DataError) as exc:
        run_stage(
            "features",
            params,
            {"train": parts["train"], "val": parts["val"].drop("air_time")},
            tmp_path,
            stage="feats",
        )
    assert exc.value.message.startswith("stage 'feats' (val): the table has no column 'air_time'")


def test_clashing_feature_names_and_empty_columns(tmp_path: Path) -> None:
    train = pl.DataFrame({"c": ["x", "y"] * 5, "c_x": range(10), "n": [None] * 9 + [1.0]})
    with pytest.raises(DataError) as exc:
        run_stage("features", {"encode": {"columns": ["c"]}}, {"train": train}, tmp_path)
    assert exc.value.message == "stage 'stage': output feature names are not unique: ['c_x']"
    empty = train.with_columns(pl.lit(None, pl.Float64).alias("n"))
    params = {"impute": {"columns": ["n"], "strategy": "mean"}, "drop": ["c", "c_x"]}
    with pytest.raises(DataError, match="column 'n' is missing on every train row"):
        run_stage("features", params, {"train": empty}, tmp_path / "empty")
    # with a constant it is fine
    const = {**params, "impute": {"columns": ["n"], "strategy": "constant", "fill_value": 0}}
    out = run_stage("features", const, {"train": empty}, tmp_path / "const")
    assert out.values["train"]["n"].to_list() == [0.0] * 10


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (
            {"derive": {"r": "a / b"}, "normalize": {"columns": ["r"]}},
            "stage 'stage' (train): a feature has infinite values",
        ),
        (
            {"select": {"method": "variance", "threshold": 100}},
            "stage 'stage' (train): select removed every feature",
        ),
    ],
)
def test_fit_failures_are_data_errors(tmp_path: Path, params: dict[str, Any], message: str) -> None:
    train = pl.DataFrame({"a": [1.0, 2.0, 3.0, 4.0], "b": [0.0, 1.0, 2.0, 3.0]})
    with pytest.raises(DataError) as exc:
        run_stage("features", params, {"train": train}, tmp_path)
    assert exc.value.message.startswith(message)
    assert exc.value.hint


def test_split_xy_errors() -> None:
    df = pl.DataFrame({"a": [1, 2, 3, 4], "y": [1.0, None, float("nan"), 2.0]})
    with pytest.raises(DataError) as exc:
        split_xy(df, "y", "feats")
    assert exc.value.message == (
        "stage 'feats': target column 'y' has 2 missing values (null or NaN) of 4, "
        "the first at row 1"
    )
    with pytest.raises(DataError, match="target column 'y' has one value \\(7\\) on all 3 rows"):
        split_xy(pl.DataFrame({"a": [1, 2, 3], "y": [7, 7, 7]}), "y", "feats")
    X, y = split_xy(pl.DataFrame({"a": [1, 2], "y": ["u", "v"]}), "y", "feats")
    assert X.columns == ["a"] and y is not None and y.to_list() == ["u", "v"]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"derive": {"r": "a / "}}, "derive 'r': 'a / ' is not a valid SQL expression"),
        (
            {"normalize": [{"columns": ["a"]}, {"columns": ["a"], "method": "robust"}]},
            "column 'a' is in two normalize blocks",
        ),
        (
            {"normalize": {"columns": ["a"]}, "encode": {"columns": ["a"]}},
            "column 'a' is both normalized and encoded",
        ),
        ({"encode": {"columns": ["a"], "method": "target"}}, "needs 'target'"),
        ({"select": {"method": "k_best"}}, "select method: k_best needs 'target'"),
        ({"select": {"method": "variance", "k": 3}}, "only used with method: k_best"),
        (
            {"drop": ["a"], "normalize": {"columns": ["a"]}},
            "column 'a' is in drop and in normalize",
        ),
        ({"target": "y", "normalize": {"columns": ["y"]}}, "column 'y' is the target"),
        ({"impute": {"columns": ["a"], "fill_value": 0}}, "only used with strategy: constant"),
        (
            {"encode": {"columns": ["a"], "method": "target", "max_categories": 3}, "target": "y"},
            "max_categories is only used with method: one_hot or ordinal",
        ),
        ({"normalize": {"columns": ["a", "a"]}}, "column 'a' is listed twice"),
        ({"normalise": {"columns": ["a"]}}, "Extra inputs are not permitted"),
    ],
)
def test_bad_params_are_refused(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        FeaturesParams.model_validate(params)


# ------------------------------------------------------------------------------- portability
def test_skops_round_trip_gives_the_same_output(flights: pl.DataFrame, tmp_path: Path) -> None:
    parts = thirds(flights)
    params = {
        "target": "late",
        "derive": {"hour": "EXTRACT(hour FROM time_hour)"},
        "drop": ["time_hour", "arr_delay"],
        "impute": {"columns": ["dep_delay", "air_time"]},
        "normalize": {"columns": ["dep_delay"], "method": "robust"},
        "encode": [
            {"columns": ["carrier"], "method": "one_hot", "max_categories": 5},
            {"columns": ["origin"], "method": "ordinal"},
            {"columns": ["dest"], "method": "target"},
        ],
        "select": {"method": "k_best", "k": 6, "score": "mutual_info"},
    }
    out = features(tmp_path, params, parts)
    loaded, info = load_transform(out.values["transform"])
    X = parts["test"].drop("late")
    assert_frame_equal(loaded.transform(X), out.values["test"].drop("late"))
    assert info["output_features"] == out.values["test"].columns[:-1]
    assert len(info["output_features"]) == 6
    # an edited file is refused
    path = out.values["transform"] / "transform.skops"
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(DataError, match="was changed or replaced"):
        load_transform(out.values["transform"])


def test_pandas_input_gives_the_same_output(flights: pl.DataFrame) -> None:
    params = {
        "target": "late",
        "derive": {"speed": "distance / air_time"},
        "drop": ["time_hour", "arr_delay"],
        "impute": [
            {"columns": ["dep_delay", "speed"], "strategy": "mean"},
            {"columns": ["dest"], "strategy": "most_frequent"},
        ],
        "normalize": {"columns": ["speed"]},
        "encode": [{"columns": ["carrier", "dest"]}, {"columns": ["origin"], "method": "target"}],
    }
    pipeline = fit(params, flights)
    sample = flights.head(500).with_columns(
        pl.when(pl.int_range(pl.len()) % 7 == 0).then(None).otherwise(pl.col("dest")).alias("dest")
    )
    expected = pipeline.transform(sample)
    # MLflow's pyfunc hands the model a pandas frame, with the columns in any order
    shuffled = sample.select(reversed(sample.columns)).to_pandas()
    assert_frame_equal(pipeline.transform(shuffled), expected)
    assert pipeline.transform(shuffled).columns == pipeline.get_feature_names_out().tolist()


def test_clone_and_pickle(flights: pl.DataFrame) -> None:
    params = {
        "target": "late",
        "drop": ["time_hour", "arr_delay"],
        "impute": {"columns": ["dep_delay", "air_time", "dep_time"]},
        "encode": [{"columns": ["carrier", "origin"]}, {"columns": ["dest"], "method": "target"}],
        "select": {"method": "variance", "threshold": 0.01},
    }
    fitted = fit(params, flights)
    fresh = clone(fitted)
    assert not hasattr(fresh.named_steps["derive"], "feature_names_in_")
    assert fresh.get_params()["derive__columns"] == fitted.get_params()["derive__columns"]
    X, y = split_xy(flights, "late", "feats")
    fresh.fit(X, y)
    assert_frame_equal(fresh.transform(X), fitted.transform(X))
    restored = pickle.loads(pickle.dumps(fitted))
    assert_frame_equal(restored.transform(X), fitted.transform(X))


def test_derive_columns_alone(tmp_path: Path) -> None:
    step = DeriveColumns(expressions={"s": "a + b"}, drop=["b"], numeric=["t"])
    df = pl.DataFrame({"a": [1, 2], "b": [3, 4], "t": ["5", "6.5"]})
    out = step.fit_transform(df)
    assert out.to_dict(as_series=False) == {"a": [1, 2], "t": [5.0, 6.5], "s": [4, 6]}
    assert step.get_feature_names_out().tolist() == ["a", "t", "s"]
    assert_frame_equal(step.transform(df.to_pandas()), out)
    sha = serialize.dump(step, tmp_path / "step.skops")
    back = serialize.load(tmp_path / "step.skops", sha256=sha)
    assert_frame_equal(back.transform(df), out)

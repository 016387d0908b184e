from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
import pytest
from pydantic import ValidationError

from ductwork.core.contract import ArtifactInfo, Inputs, StageContext
from ductwork.errors import DataError
from ductwork.stages.split import Split, SplitParams
from ductwork.testing import StageOutcome, run_stage, table_input
from tests import nycflights as nyc

SPLITS = ("train", "val", "test")


@pytest.fixture(scope="module")
def flights() -> pl.DataFrame:
    """20,000 real flights with an id to follow rows and time_hour as a UTC datetime."""
    return (
        nyc.flights(20_000)
        .with_columns(pl.col("time_hour").str.to_datetime(time_zone="UTC"))
        .with_row_index("id")
    )


def split(df: pl.DataFrame, tmp_path: Path, **params: Any) -> StageOutcome:
    out = run_stage("split", params, {"flights": df}, tmp_path, stage="splitter")
    assert out.violations == []
    return out


def assert_partition(df: pl.DataFrame, out: StageOutcome) -> None:
    """Complete, disjoint, the input's schema, the input's row order within each output."""
    ids = [out.values[s]["id"] for s in SPLITS]
    assert sum(len(i) for i in ids) == df.height
    assert pl.concat(ids).sort().to_list() == df["id"].to_list()
    for name in SPLITS:
        assert out.values[name].schema == df.schema
        assert out.values[name]["id"].is_sorted()
        assert out.infos[name].rows == out.metrics[name]
    assert out.metrics["rows_in"] == df.height


def test_random_split_has_the_ratios_to_a_row(flights: pl.DataFrame, tmp_path: Path) -> None:
    out = split(flights, tmp_path)
    assert_partition(flights, out)
    for name, ratio in zip(SPLITS, (0.7, 0.15, 0.15), strict=True):
        assert abs(out.metrics[name] - ratio * flights.height) <= 1
    # a shuffle, not a slice: every split spans the whole input
    assert out.values["test"]["id"].min() < 1_000
    assert out.values["test"]["id"].max() > 19_000


def test_two_ratios_leave_val_empty_with_the_input_schema(
    flights: pl.DataFrame, tmp_path: Path
) -> None:
    out = split(flights, tmp_path, ratios=[0.8, 0.2])
    assert_partition(flights, out)
    assert out.values["val"].height == 0
    assert out.infos["val"].schema == out.infos["train"].schema
    assert (out.metrics["train"], out.metrics["test"]) == (16_000, 4_000)


def test_stratified_splits_every_class_by_the_ratios(flights: pl.DataFrame, tmp_path: Path) -> None:
    out = split(flights, tmp_path, method="stratified", stratify="carrier")
    assert_partition(flights, out)
    sizes = dict(flights["carrier"].value_counts().iter_rows())
    for name, ratio in zip(SPLITS, (0.7, 0.15, 0.15), strict=True):
        assert abs(out.metrics[name] - ratio * flights.height) <= len(sizes)
        got = dict(out.values[name]["carrier"].value_counts().iter_rows())
        for carrier, n in sizes.items():
            assert abs(got.get(carrier, 0) - ratio * n) <= 1.5, (name, carrier)
    props = out.metrics["class_proportions"]
    assert set(props) == {"input", *SPLITS}
    for name in SPLITS:
        for carrier, share in props["input"].items():
            assert abs(props[name][carrier] - share) < 0.005


def test_stratified_gives_every_class_a_row_in_every_split(tmp_path: Path) -> None:
    df = pl.DataFrame({"id": range(23), "y": ["a"] * 20 + ["b"] * 3}).with_columns(
        pl.col("id").cast(pl.UInt32)
    )
    out = split(df, tmp_path, method="stratified", stratify="y")
    assert_partition(df, out)
    for name in SPLITS:
        assert "b" in out.values[name]["y"].to_list()


def test_time_split_never_puts_a_later_row_first(flights: pl.DataFrame, tmp_path: Path) -> None:
    out = split(flights, tmp_path, method="time", time_column="time_hour")
    assert_partition(flights, out)
    train, val, test = (out.values[s]["time_hour"] for s in SPLITS)
    assert train.max() < val.min()  # type: ignore[operator]
    assert val.max() < test.min()  # type: ignore[operator]
    # ties at the cut stay together, so the sizes are only close to the ratios
    for name, ratio in zip(SPLITS, (0.7, 0.15, 0.15), strict=True):
        assert abs(out.metrics[name] - ratio * flights.height) < 0.01 * flights.height


def test_time_ties_at_the_cut_go_to_the_earlier_split(tmp_path: Path) -> None:
    # 10 rows, cut after row 7: rows 6..8 share a timestamp, so all three go to train
    df = pl.DataFrame({"id": range(10), "t": [1, 2, 3, 4, 5, 6, 7, 7, 7, 8]}).with_columns(
        pl.col("id").cast(pl.UInt32)
    )
    out = split(df, tmp_path, method="time", time_column="t", ratios=[0.7, 0.3])
    assert out.values["train"]["t"].to_list() == [1, 2, 3, 4, 5, 6, 7, 7, 7]
    assert out.values["test"]["t"].to_list() == [8]


def test_group_split_keeps_groups_whole_and_stable(flights: pl.DataFrame, tmp_path: Path) -> None:
    df = flights.drop_nulls("tailnum")
    out = split(df, tmp_path / "all", method="group", group="tailnum")
    assert_partition(df, out)
    sides = pl.concat(
        [out.values[s].select("tailnum", pl.lit(s).alias("split")) for s in SPLITS]
    ).unique()
    assert sides["tailnum"].is_unique().all()
    for name, ratio in zip(SPLITS, (0.7, 0.15, 0.15), strict=True):
        assert abs(out.metrics[name] / df.height - ratio) < 0.05
    # half the planes removed: the others keep their split
    planes = df["tailnum"].unique().sort()
    fewer = df.filter(pl.col("tailnum").is_in(planes.gather_every(2).implode()))
    part = split(fewer, tmp_path / "fewer", method="group", group="tailnum")
    for name in SPLITS:
        kept = set(part.values[name]["tailnum"])
        assert kept <= set(out.values[name]["tailnum"])


def test_same_input_same_bytes_and_the_seed_changes_the_split(
    flights: pl.DataFrame, tmp_path: Path
) -> None:
    for method, extra in (
        ("random", {}),
        ("stratified", {"stratify": "carrier"}),
        ("group", {"group": "origin"}),
    ):
        a = split(flights, tmp_path / f"{method}-a", method=method, **extra)
        b = split(flights, tmp_path / f"{method}-b", method=method, **extra)
        c = split(flights, tmp_path / f"{method}-c", method=method, seed=7, **extra)
        for name in SPLITS:
            assert a.infos[name].sha256 == b.infos[name].sha256, (method, name)
        assert a.infos["train"].sha256 != c.infos["train"].sha256, method


# ------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"ratios": [0.7, 0.2, 0.2]}, "sum to 1.1, not 1"),
        ({"ratios": [1.0]}, "at least 2"),
        ({"ratios": [0.25, 0.25, 0.25, 0.25]}, "at most 3"),
        ({"ratios": [1.2, -0.2]}, "ratio 1.2 is not between 0 and 1"),
        ({"method": "stratified"}, "method: stratified needs 'stratify'"),
        ({"method": "time"}, "method: time needs 'time_column'"),
        ({"method": "group"}, "method: group needs 'group'"),
        ({"stratify": "carrier"}, "'stratify' is only used with method: stratified"),
        ({"method": "shuffle"}, "'random', 'stratified', 'time' or 'group'"),
        ({"seed": -1}, "greater than or equal to 0"),
        ({"sead": 1}, "Extra inputs are not permitted"),
    ],
)
def test_bad_params_are_refused(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        SplitParams.model_validate(params)


def test_ratios_within_1e9_of_one_are_accepted() -> None:
    assert SplitParams(ratios=[0.1, 0.2, 0.7 + 5e-10]).ratios[2] == 0.7 + 5e-10


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (
            {"method": "stratified", "stratify": "carier"},
            "stage 'splitter': stratify column 'carier' not found in the input"
            " - did you mean 'carrier'?",
        ),
        (
            {"method": "time", "time_column": "timehour"},
            "stage 'splitter': time_column column 'timehour' not found in the input"
            " - did you mean 'time_hour'?",
        ),
        (
            {"method": "group", "group": "tail"},
            "stage 'splitter': group column 'tail' not found in the input",
        ),
    ],
)
def test_missing_column(
    flights: pl.DataFrame, tmp_path: Path, params: dict[str, Any], message: str
) -> None:
    with pytest.raises(DataError) as exc:
        run_stage("split", params, {"flights": flights}, tmp_path, stage="splitter")
    assert exc.value.message.startswith(message)
    assert exc.value.hint is not None
    assert "carrier" in exc.value.hint


@pytest.mark.parametrize(
    ("params", "column"),
    [
        ({"method": "stratified", "stratify": "dep_time"}, "stratify column 'dep_time'"),
        ({"method": "time", "time_column": "dep_time"}, "time_column column 'dep_time'"),
        ({"method": "group", "group": "tailnum"}, "group column 'tailnum'"),
    ],
)
def test_nulls_in_the_split_column(
    flights: pl.DataFrame, tmp_path: Path, params: dict[str, Any], column: str
) -> None:
    name = column.split("'")[1]
    nulls = flights[name].null_count()
    assert nulls > 0
    with pytest.raises(DataError) as exc:
        run_stage("split", params, {"flights": flights}, tmp_path, stage="splitter")
    assert exc.value.message.startswith(f"stage 'splitter': {column} has {nulls:,} null values")
    assert exc.value.hint is not None
    assert f"where {name} is not null" in exc.value.hint


def test_a_class_too_small_to_stratify(flights: pl.DataFrame, tmp_path: Path) -> None:
    df = flights.head(2_000)
    counts = dict(df["carrier"].value_counts().iter_rows())
    rare = {c: n for c, n in counts.items() if n < 3}
    assert rare, "the first 2,000 flights have a carrier with fewer than 3 flights"
    carrier, n = min(rare.items(), key=lambda kv: (kv[1], kv[0]))
    with pytest.raises(DataError) as exc:
        run_stage(
            "split",
            {"method": "stratified", "stratify": "carrier"},
            {"flights": df},
            tmp_path,
            stage="splitter",
        )
    assert exc.value.message.startswith(
        "stage 'splitter': stratify column 'carrier' has classes with fewer rows than the 3 splits"
    )
    assert f"'{carrier}' ({n} row" in exc.value.message
    assert exc.value.hint is not None
    assert "Merge rare classes" in exc.value.hint
    assert "method: random" in exc.value.hint
    # with two splits, a class of 2 is enough
    if n == 2:
        out = split(
            df, tmp_path / "two", method="stratified", stratify="carrier", ratios=[0.5, 0.5]
        )
        assert carrier in out.values["train"]["carrier"].to_list()


# ------------------------------------------------------------------------------- check()
def check(
    tmp_path: Path, source: pl.DataFrame, outputs: dict[str, pl.DataFrame], **params: Any
) -> list[str]:
    infos: dict[str, ArtifactInfo] = {
        name: table_input(name, df, tmp_path / "outputs").info for name, df in outputs.items()
    }
    inputs = Inputs({"flights": table_input("flights", source, tmp_path / "inputs")})
    ctx = StageContext(stage="s", run_id="test", project_dir=tmp_path, work_dir=tmp_path / "w")
    return Split().check(SplitParams.model_validate(params), inputs, infos, ctx)


@pytest.fixture(scope="module")
def small(flights: pl.DataFrame) -> pl.DataFrame:
    return flights.head(1_000)


def test_check_accepts_a_correct_split(small: pl.DataFrame, tmp_path: Path) -> None:
    outputs = {"train": small[:700], "val": small[700:850], "test": small[850:]}
    assert check(tmp_path, small, outputs) == []


def test_check_catches_overlapping_outputs(small: pl.DataFrame, tmp_path: Path) -> None:
    outputs = {"train": small[:710], "val": small[700:850], "test": small[850:]}
    problems = check(tmp_path, small, outputs)
    assert any(p.startswith("complete: train (710)") for p in problems), problems
    assert "disjoint: 10 rows are in more than one output" in problems


def test_check_catches_lost_and_foreign_rows(small: pl.DataFrame, tmp_path: Path) -> None:
    foreign = small[:5].with_columns(pl.col("id") + 100_000)
    outputs = {
        "train": pl.concat([small[5:700], foreign]),
        "val": small[700:850],
        "test": small[850:],
    }
    problems = check(tmp_path, small, outputs)
    assert "disjoint: 5 output rows are not rows of the input" in problems
    assert "complete: 5 input rows are in no output" in problems


def test_check_catches_a_changed_schema(small: pl.DataFrame, tmp_path: Path) -> None:
    outputs = {"train": small[:700].drop("id"), "val": small[700:850], "test": small[850:]}
    assert "schema: the 'train' output's columns differ from the input's" in check(
        tmp_path, small, outputs
    )


def test_check_catches_a_group_on_two_sides(small: pl.DataFrame, tmp_path: Path) -> None:
    df = small.drop_nulls("tailnum")
    outputs = {"train": df[:700], "val": df[700:850], "test": df[850:]}
    problems = check(tmp_path, df, outputs, method="group", group="tailnum")
    assert any(p.startswith("group: ") and "'tailnum'" in p for p in problems), problems


def test_check_catches_time_order(small: pl.DataFrame, tmp_path: Path) -> None:
    df = small.sort("time_hour")
    outputs = {"train": df[:700], "val": df[850:], "test": df[700:850]}
    problems = check(tmp_path, df, outputs, method="time", time_column="time_hour")
    assert len(problems) == 1
    assert problems[0].startswith("time order: the latest 'time_hour' in 'val'")


def test_check_catches_skewed_class_proportions(small: pl.DataFrame, tmp_path: Path) -> None:
    df = small.sort("carrier")  # slices are then far from stratified
    outputs = {"train": df[:700], "val": df[700:850], "test": df[850:]}
    problems = check(tmp_path, df, outputs, method="stratified", stratify="carrier")
    assert len(problems) == 3
    assert problems[0].startswith("stratified: class proportions of 'carrier' in 'train'")
    # a split smaller than 1/tolerance rows is not judged: here val and test (150 rows)
    strict = check(
        tmp_path / "t", df, outputs, method="stratified", stratify="carrier", tolerance=0.005
    )
    assert len(strict) == 1
    assert "'train'" in strict[0]

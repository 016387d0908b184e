"""extract from SQLite (embedded, stdlib sqlite3) and through SQLAlchemy's sqlite dialect."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from ductwork.core.contract import StageContext
from ductwork.errors import DataError, SourceError, UsageError
from ductwork.stages.extract import Extract, ExtractParams
from ductwork.testing import StageOutcome, run_stage


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "data").mkdir()
    con = sqlite3.connect(tmp_path / "data" / "weather.db")
    con.executescript(
        """
        create table weather (origin text, hour integer, temp real, day text);
        insert into weather values ('JFK', 1, 39.0, '2013-01-01'), ('LGA', 1, 40.1, '2013-01-01'),
                                   ('JFK', 2, null, '2013-01-02');
        create table mixed (v);
        insert into mixed values (1), ('two');
        """
    )
    con.commit()
    con.close()
    return tmp_path


def run(project: Path, **params: Any) -> StageOutcome:
    return run_stage("extract", params, {}, project / ".out", project_dir=project)


URL = "sqlite:///data/weather.db"


def test_query_with_bound_params(project: Path) -> None:
    out = run(
        project,
        url=URL,
        query="select origin, temp from weather where origin = :origin order by hour",
        query_params={"origin": "JFK"},
    )
    assert out.values["main"].to_dicts() == [
        {"origin": "JFK", "temp": 39.0},
        {"origin": "JFK", "temp": None},
    ]
    assert out.metrics["rows"] == 2


def test_params_are_bound_not_interpolated(project: Path) -> None:
    evil = "x' or '1'='1"
    out = run(
        project,
        url=URL,
        query="select * from weather where origin = :o",
        query_params={"o": evil},
    )
    assert out.values["main"].height == 0


def test_schema_applies_to_query_results(project: Path) -> None:
    df = run(
        project,
        url=URL,
        query="select day, hour from weather",
        schema={"day": "Date", "hour": "Int32"},
    ).values["main"]
    assert df.schema == pl.Schema({"day": pl.Date, "hour": pl.Int32})


def test_sqlalchemy_url(project: Path) -> None:
    df = run(
        project,
        url=f"sqlite+pysqlite:///{project / 'data' / 'weather.db'}",
        query="select count(*) as n from weather where hour = :h",
        query_params={"h": 1},
    ).values["main"]
    assert df["n"].to_list() == [2]


def test_empty_result_keeps_the_columns(project: Path) -> None:
    df = run(project, url=URL, query="select origin, hour from weather where 0").values["main"]
    assert df.columns == ["origin", "hour"]
    assert df.height == 0


def test_mixed_types_in_one_column_become_text(project: Path) -> None:
    df = run(project, url=URL, query="select v from mixed").values["main"]
    assert df["v"].to_list() == ["1", "two"]


def test_unused_query_param_names_the_placeholder_style(project: Path) -> None:
    with pytest.raises(UsageError) as info:
        run(project, url=URL, query="select * from weather", query_params={"o": "JFK"})
    assert "query_params 'o' is not used in the query (write it as :o)" in str(info.value)


def test_duplicate_column_names(project: Path) -> None:
    with pytest.raises(DataError) as info:
        run(project, url=URL, query="select origin, origin from weather")
    assert "duplicate column names: ['origin']" in str(info.value)


def test_query_error_names_the_database(project: Path) -> None:
    with pytest.raises(DataError) as info:
        run(project, url=URL, query="select * from nope")
    assert "the query failed on sqlite:///data/weather.db: no such table: nope" in str(info.value)


def test_database_is_opened_read_only(project: Path) -> None:
    with pytest.raises(DataError) as info:
        run(project, url=URL, query="delete from weather returning origin")
    assert "readonly" in str(info.value)


def test_missing_database_file(project: Path) -> None:
    with pytest.raises(SourceError) as info:
        run(project, url="sqlite:///data/nope.db", query="select 1")
    assert "sqlite database not found" in str(info.value)


def test_source_stamp_is_the_database_digest(project: Path) -> None:
    params = ExtractParams.model_validate({"url": URL, "query": "select * from weather"})
    ctx = StageContext(stage="s", run_id="r", project_dir=project, work_dir=project / "w")
    before = Extract().source_stamp(params, ctx)
    assert before
    assert before == Extract().source_stamp(params, ctx)
    con = sqlite3.connect(project / "data" / "weather.db")
    con.execute("insert into weather values ('EWR', 3, 41.0, '2013-01-03')")
    con.commit()
    con.close()
    assert Extract().source_stamp(params, ctx) not in (None, before)


def test_servers_have_no_source_stamp(project: Path) -> None:
    params = ExtractParams.model_validate({"url": "postgresql://h/db", "query": "select 1"})
    ctx = StageContext(stage="s", run_id="r", project_dir=project, work_dir=project / "w")
    assert Extract().source_stamp(params, ctx) is None

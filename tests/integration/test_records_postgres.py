"""The run records on both backends: the same API and behaviours on SQLite and PostgreSQL.

Every test taking ``records`` runs twice: on a SQLite file and on a fresh schema of the real
PostgreSQL server of ``postgres_dsn`` (marker ``postgres``). Then migrations (an empty
database, a ``meta.schema_version = 1`` SQLite file made by the previous release, a database
newer than the code) and whole runs through the runner on PostgreSQL.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

import ductwork as dw
from ductwork.config import Settings
from ductwork.core.events import Event, RunFinished, StageStarted
from ductwork.core.records import MIGRATIONS, SCHEMA_VERSION, Records, open_records
from ductwork.errors import MissingExtra, StoreError, UsageError

SHA_A, SHA_B, SHA_C = ("a" * 64, "b" * 64, "c" * 64)


@pytest.fixture
def pg_schema(postgres_dsn: str) -> Iterator[str]:
    """A URL whose connections use a new, empty schema (dropped afterwards)."""
    psycopg = pytest.importorskip("psycopg")
    name = f"t_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_dsn, autocommit=True) as con:
        con.execute(f"create schema {name}")
    try:
        yield f"{postgres_dsn}?options={quote(f'-csearch_path={name}')}"
    finally:
        with psycopg.connect(postgres_dsn, autocommit=True) as con:
            con.execute(f"drop schema {name} cascade")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where the records live: a SQLite file path or a PostgreSQL URL (fresh schema)."""
    if request.param == "sqlite":
        return str(tmp_path / "records.db")
    return str(request.getfixturevalue("pg_schema"))


@pytest.fixture
def records(location: str) -> Iterator[Records]:
    r = Records(location)
    try:
        yield r
    finally:
        r.close()


def art(sha: str, rows: int = 3) -> dict[str, Any]:
    return {"sha256": sha, "type": "table", "rows": rows, "bytes": 100, "schema": {"x": "Int64"}}


def record(
    r: Records,
    run_id: str,
    stage: str,
    *,
    status: str = "ok",
    fp: str | None = None,
    inputs: dict[str, dict[str, Any]] | None = None,
    outputs: dict[str, dict[str, Any]] | None = None,
    cache: bool = True,
    **extra: Any,
) -> None:
    outputs = outputs or {}
    fp = fp or f"fp-{stage}"
    r.record_stage(
        run_id=run_id,
        stage=stage,
        kind="python",
        status=status,
        fingerprint=fp,
        components={"params": "p1", "inputs": {k: v["sha256"] for k, v in (inputs or {}).items()}},
        started=extra.get("started", time.time()),
        ended=extra.get("ended", time.time() + 0.5),
        rows_in=None,
        rows_out=3,
        metrics=extra.get("metrics", {"rows": 3}),
        error=extra.get("error"),
        inputs=inputs or {},
        outputs=outputs,
        cache_entry={"fingerprint": fp, "stage": stage, "run_id": run_id, "outputs": outputs}
        if cache and status == "ok"
        else None,
    )


def two_stage_run(r: Records, run_id: str, pipeline: str = "p") -> None:
    r.start_run(run_id, pipeline, "pipeline.yaml", {"pid": os.getpid(), "force": False})
    record(r, run_id, "src", outputs={"main": art(SHA_A)})
    record(r, run_id, "dbl", inputs={"src": art(SHA_A)}, outputs={"main": art(SHA_B, 6)})
    r.finish_run(run_id, "ok", {"counts": {"ok": 2}, "exit_code": 0})


# -- the API on both backends -------------------------------------------------------------------


def test_runs_stage_runs_and_json_columns_read_back(records: Records) -> None:
    two_stage_run(records, "20260101-000000-aaaaaa")
    runs = records.runs()
    assert [r["run_id"] for r in runs] == ["20260101-000000-aaaaaa"]
    run = records.run("20260101-000000")  # a prefix
    assert run is not None
    assert run["status"] == "ok"
    assert run["host"]
    # JSON columns come back as JSON text on both backends (callers json.loads them)
    assert json.loads(run["options"]) == {"pid": os.getpid(), "force": False}
    assert json.loads(run["summary"]) == {"counts": {"ok": 2}, "exit_code": 0}
    stages = records.stage_runs(run["run_id"])
    assert [s["stage"] for s in stages] == ["src", "dbl"]
    assert json.loads(stages[1]["components"]) == {"params": "p1", "inputs": {"src": SHA_A}}
    assert json.loads(stages[1]["metrics"]) == {"rows": 3}
    assert stages[1]["duration_s"] == pytest.approx(0.5, abs=0.01)
    assert records.runs(pipeline="other") == []
    assert records.run("nope") is None


def test_lineage_manifests_and_cache(records: Records) -> None:
    two_stage_run(records, "r1")
    assert records.stage_io("r1", "dbl") == {"in": {"src": SHA_A}, "out": {"main": SHA_B}}
    producers = records.producers(SHA_B)
    assert [(p["run_id"], p["stage"], p["output"], p["pipeline"]) for p in producers] == [
        ("r1", "dbl", "main", "p")
    ]
    assert [(c["stage"], c["input"]) for c in records.consumers(SHA_A)] == [("dbl", "src")]
    manifest = records.artifact(SHA_B)
    assert manifest is not None
    assert (manifest["type"], manifest["rows"], manifest["stage"]) == ("table", 6, "dbl")
    assert json.loads(manifest["schema"]) == {"x": "Int64"}
    assert {a["sha256"]: a["output"] for a in records.artifacts()} == {
        SHA_A: "main",
        SHA_B: "main",
    }
    entry = records.cache_get("fp-dbl")
    assert entry is not None
    assert entry["outputs"]["main"]["sha256"] == SHA_B
    assert records.cache_get("fp-none") is None
    last = records.last_stage_run("dbl", "p")
    assert last is not None
    assert last["run_id"] == "r1"


def test_a_manifest_keeps_its_first_producer_and_a_rerecord_replaces_the_stage_run(
    records: Records,
) -> None:
    two_stage_run(records, "r1")
    records.start_run("r2", "p", None, {"pid": os.getpid()})
    record(records, "r2", "copy", outputs={"main": art(SHA_B, 6)})  # same content again
    record(records, "r2", "copy", outputs={"main": art(SHA_C)}, metrics={"n": 2})  # replaced
    manifest = records.artifact(SHA_B)
    assert manifest is not None
    assert (manifest["run_id"], manifest["stage"]) == ("r1", "dbl")
    assert records.stage_io("r2", "copy")["out"] == {"main": SHA_C}
    (copy,) = records.stage_runs("r2")
    assert json.loads(copy["metrics"]) == {"n": 2}


def test_a_stage_run_is_recorded_whole_or_not_at_all(records: Records) -> None:
    records.start_run("r1", "p", None, {"pid": os.getpid()})
    with pytest.raises(KeyError):
        records.record_stage(
            run_id="r1",
            stage="bad",
            kind="python",
            status="ok",
            fingerprint="fp-bad",
            components={},
            started=1.0,
            ended=2.0,
            rows_in=None,
            rows_out=1,
            metrics=None,
            error=None,
            inputs={},
            outputs={"main": art(SHA_A)},
            cache_entry={"no fingerprint": True},  # fails after the stage_runs row is written
        )
    assert records.stage_runs("r1") == []
    assert records.stage_io("r1", "bad") == {"in": {}, "out": {}}
    assert records.artifact(SHA_A) is None


def test_latest_runs_references_and_cache_prune(records: Records) -> None:
    for i, sha in enumerate((SHA_A, SHA_B, SHA_C)):
        run_id = f"r{i}"
        records.start_run(run_id, "p", None, {"pid": os.getpid()})
        record(records, run_id, "src", fp=f"fp{i}", outputs={"main": art(sha)})
        records.finish_run(run_id, "ok", {})
        time.sleep(0.01)  # distinct start times
    assert records.referenced_by_latest_runs(1) == {SHA_C}
    assert records.referenced_by_latest_runs(2) == {SHA_B, SHA_C}
    assert records.cache_prune({SHA_B, SHA_C}) == 1
    assert records.cache_get("fp0") is None
    assert records.cache_get("fp1") is not None
    assert records.last_stage_run("src", "p", ("ok",))["run_id"] == "r2"  # type: ignore[index]


def test_failed_stage_runs_and_statuses(records: Records) -> None:
    records.start_run("r1", "p", None, {"pid": os.getpid()})
    record(records, "r1", "src", outputs={"main": art(SHA_A)})
    record(records, "r1", "boom", status="failed", error="boom in stage")
    assert records.running_runs()[0]["run_id"] == "r1"
    records.finish_run("r1", "failed", {"exit_code": 1})
    assert records.running_runs() == []
    assert records.cache_get("fp-boom") is None
    assert records.last_stage_run("boom", "p") is None
    failed = records.last_stage_run("boom", "p", ("failed",))
    assert failed is not None
    assert failed["error"] == "boom in stage"


START_AND_HANG = """
import os, sys, time
from ductwork.core.records import Records
r = Records(sys.argv[1])
r.start_run(sys.argv[2], "p", None, {"pid": os.getpid()})
print("started", flush=True)
time.sleep(120)
"""


def test_a_run_whose_process_died_is_marked_interrupted_and_a_live_one_is_not(
    records: Records, location: str
) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", START_AND_HANG, location, "dead-run"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "started"
        assert records.mark_interrupted() == 0  # its process is alive
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    records.start_run("live-run", "p", None, {"pid": os.getpid()})
    other = Records(location)  # another runner's view, on its own connection
    try:
        deadline = time.time() + 10  # the server notices the dead session almost at once
        while other.mark_interrupted() == 0 and time.time() < deadline:
            time.sleep(0.05)
        status = {r["run_id"]: r["status"] for r in other.runs()}
    finally:
        other.close()
    assert status == {"dead-run": "interrupted", "live-run": "running"}


@pytest.mark.postgres
def test_serialization_failures_and_lost_connections_are_retried(
    pg_schema: str, postgres_dsn: str
) -> None:
    psycopg = pytest.importorskip("psycopg")
    r = Records(pg_schema)
    try:
        attempts = []

        def flaky(c: Any) -> None:
            attempts.append(1)
            c.execute("insert into meta(key, value) values (?, ?)", (f"k{len(attempts)}", "v"))
            if len(attempts) == 1:
                raise psycopg.errors.SerializationFailure("could not serialize access")

        r._write(flaky)
        assert r._query("select key from meta where key like 'k%'") == [{"key": "k2"}]
        # the server ends the session (restart, failover, idle timeout): a new one is opened
        pid = r._query("select pg_backend_pid() as pid")[0]["pid"]
        with psycopg.connect(postgres_dsn, autocommit=True) as admin:
            admin.execute("select pg_terminate_backend(%s)", (pid,))
        two_stage_run(r, "after-reconnect")
        assert r.run("after-reconnect") is not None
        assert r._query("select pg_backend_pid() as pid")[0]["pid"] != pid
    finally:
        r.close()


# -- migrations -----------------------------------------------------------------------------------


def applied(records: Records) -> list[int]:
    return [r["version"] for r in records._query("select version from schema_migrations")]


def test_an_empty_database_gets_every_migration_once(location: str) -> None:
    first = Records(location)
    assert applied(first) == [m.version for m in MIGRATIONS]
    first.close()
    again = Records(location)  # nothing to do: no error, nothing applied twice
    assert applied(again) == [m.version for m in MIGRATIONS]
    again.close()


def test_runners_starting_together_create_the_schema_once(location: str) -> None:
    errors: list[BaseException] = []

    def open_one() -> None:
        try:
            Records(location).close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    r = Records(location)
    assert applied(r) == [m.version for m in MIGRATIONS]
    r.close()


def test_a_database_newer_than_the_code_is_a_clear_error(location: str) -> None:
    r = Records(location)
    r._write(
        lambda c: c.execute(
            "insert into schema_migrations(version, name, applied) values (?,?,?)",
            (SCHEMA_VERSION + 7, "from the future", time.time()),
        )
    )
    r.close()
    with pytest.raises(StoreError) as info:
        Records(location)
    message = str(info.value)
    assert f"schema version {SCHEMA_VERSION + 7}, newer than this ductwork knows" in message
    assert "Upgrade ductwork" in message


# The schema of the release before schema_migrations (meta.schema_version = 1), verbatim.
V1_SCHEMA = (
    """
create table if not exists meta (key text primary key, value text not null);
create table if not exists runs (
    run_id text primary key, pipeline text not null, spec_path text, status text not null,
    started real not null, ended real, options text not null default '{}', summary text
);
create index if not exists runs_pipeline on runs(pipeline, started);
create table if not exists stage_runs (
    run_id text not null references runs(run_id) on delete cascade, stage text not null,
    kind text not null, status text not null, fingerprint text, components text, started real,
    ended real, duration_s real, rows_in integer, rows_out integer, metrics text, error text,
    primary key (run_id, stage)
);
create index if not exists stage_runs_stage on stage_runs(stage, ended);
create index if not exists stage_runs_fp on stage_runs(fingerprint);
create table if not exists artifacts (
    sha256 text primary key, type text not null, rows integer, bytes integer, schema text,
    stage text, run_id text, fingerprint text, created real not null
);
create table if not exists stage_run_io (
    run_id text not null, stage text not null, direction text not null, name text not null,
    sha256 text not null, primary key (run_id, stage, direction, name)
);
create index if not exists stage_run_io_sha on stage_run_io(sha256, direction);
create table if not exists stage_cache (
    fingerprint text primary key, stage text not null, run_id text not null,
    entry text not null, created real not null
);
insert or ignore into meta(key, value) values ('schema_version', '1');
insert into runs values ('old-run', 'p', null, 'ok', 1.0, 2.0, '{"pid": 1}', '{}');
insert into stage_runs values ('old-run', 'src', 'python', 'ok', 'fp-old', '{}', 1.0, 2.0, 1.0,
    null, 3, null, null);
insert into stage_run_io values ('old-run', 'src', 'out', 'main', '"""
    + SHA_A
    + """');
insert into artifacts values ('"""
    + SHA_A
    + """', 'table', 3, 10, null, 'src', 'old-run',
    'fp-old', 1.5);
insert into stage_cache values ('fp-old', 'src', 'old-run',
    '{"fingerprint": "fp-old", "outputs": {}}', 1.5);
"""
)


def test_a_v1_sqlite_file_upgrades_in_place_and_keeps_its_records(tmp_path: Path) -> None:
    db = tmp_path / "records.db"
    con = sqlite3.connect(db)
    con.executescript(V1_SCHEMA)
    con.close()
    r = Records(db)
    assert applied(r) == [m.version for m in MIGRATIONS]
    old = r.run("old-run")
    assert old is not None
    assert old["status"] == "ok"
    assert old["host"] is None  # added by migration 2, empty for old runs
    assert r.stage_io("old-run", "src")["out"] == {"main": SHA_A}
    assert r.cache_get("fp-old") == {"fingerprint": "fp-old", "outputs": {}}
    assert r.producers(SHA_A)[0]["run_id"] == "old-run"
    meta = r._query("select value from meta where key='schema_version'")
    assert meta == [{"value": str(SCHEMA_VERSION)}]
    two_stage_run(r, "new-run")  # and it keeps working
    assert r.run("new-run")["host"]  # type: ignore[index]
    r.close()


def test_a_v1_sqlite_file_from_a_newer_release_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "records.db"
    con = sqlite3.connect(db)
    con.executescript(V1_SCHEMA.replace("'schema_version', '1'", "'schema_version', '9'"))
    con.close()
    with pytest.raises(StoreError, match="schema version 9, newer than this ductwork"):
        Records(db)


# -- URLs, secrets, missing extra -----------------------------------------------------------------


def test_database_urls_select_the_backend(tmp_path: Path) -> None:
    default = open_records(None, default=tmp_path / "a.db", base_dir=tmp_path)
    assert default.where == str(tmp_path / "a.db")
    relative = open_records("sqlite:///b.db", default=tmp_path / "a.db", base_dir=tmp_path)
    assert relative.where == str(tmp_path / "b.db")
    with pytest.raises(UsageError, match="run records in 'mysql' databases are not supported"):
        open_records("mysql://u:pw@h/db", default=tmp_path / "a.db", base_dir=tmp_path)


def test_the_password_never_reaches_a_message() -> None:
    pytest.importorskip("psycopg")
    url = "postgresql://ductwork:s3cr3t-pw@127.0.0.1:9/records?connect_timeout=2"
    with pytest.raises(StoreError) as info:
        Records(url)
    assert "s3cr3t-pw" not in str(info.value)
    assert "postgresql://ductwork:***@127.0.0.1:9/records" in str(info.value)
    assert "s3cr3t-pw" not in repr(Settings(database_url=url))  # type: ignore[arg-type]


def test_postgres_without_psycopg_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(MissingExtra, match=r"pip install 'ductwork\[sql\]'"):
        Records("postgresql://u@127.0.0.1:9/db")


# -- whole runs through the runner on PostgreSQL --------------------------------------------------

STEPS = """
import polars as pl


def src():
    return pl.DataFrame({"x": [1, 2, 3], "g": ["a", "b", "a"]})


def double(src: pl.LazyFrame, factor: int = 2) -> pl.LazyFrame:
    return src.with_columns(pl.col("x") * factor)


def boom(src: pl.LazyFrame, factor: int = 2) -> pl.LazyFrame:
    raise RuntimeError("boom in stage")
"""


def make_pipeline(root: Path, module: str, fn: str = "double") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{module}.py").write_text(textwrap.dedent(STEPS))
    spec = root / "pipeline.yaml"
    spec.write_text(
        textwrap.dedent(
            f"""
            pipeline: pg
            stages:
              - {{name: src, kind: python, uses: "{module}:src"}}
              - {{name: doubled, kind: python, uses: "{module}:{fn}"}}
              - name: summed
                kind: transform
                inputs: [doubled]
                params: {{sql: "select g, sum(x) as total from doubled group by g order by g"}}
            """
        )
    )
    return spec


def statuses(res: Any) -> dict[str, str]:
    return {name: s.status for name, s in res.stages.items()}


@pytest.mark.postgres
def test_run_rerun_and_resume_on_postgres(
    tmp_path: Path, pg_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DUCTWORK_DATABASE_URL", pg_schema)
    module = f"pgsteps_{uuid.uuid4().hex[:8]}"
    spec = make_pipeline(tmp_path, module, fn="boom")
    failed = dw.run(spec)
    assert statuses(failed) == {"src": "ok", "doubled": "failed", "summed": "skipped"}
    make_pipeline(tmp_path, module, fn="double")
    resumed = dw.run(spec)
    assert statuses(resumed) == {"src": "cached", "doubled": "ok", "summed": "ok"}
    again = dw.run(spec)
    assert statuses(again) == {"src": "cached", "doubled": "cached", "summed": "cached"}
    assert dw.artifact(spec, "summed").to_dicts() == [
        {"g": "a", "total": 8},
        {"g": "b", "total": 4},
    ]
    tree = dw.lineage(spec, "summed")
    assert tree["inputs"]["doubled"]["produced_by"][0]["stage"] == "doubled"
    history = dw.runs(spec)
    assert [r["status"] for r in history] == ["ok", "ok", "failed"]
    assert history[-1]["stages"][1]["error"] is not None
    assert not (tmp_path / ".ductwork" / "records.db").exists()  # nothing went to SQLite
    gc = dw.gc(spec, keep=1)
    assert gc["cache_entries_removed"] == 0
    assert statuses(dw.run(spec)) == {"src": "cached", "doubled": "cached", "summed": "cached"}


@pytest.mark.postgres
def test_a_run_holds_its_locks_while_it_runs_and_none_after(
    tmp_path: Path, pg_schema: str, postgres_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    psycopg = pytest.importorskip("psycopg")
    monkeypatch.setenv("DUCTWORK_DATABASE_URL", pg_schema)
    spec = make_pipeline(tmp_path, f"pgsteps_{uuid.uuid4().hex[:8]}")
    seen: dict[str, int] = {}

    def advisory_locks() -> int:
        with psycopg.connect(postgres_dsn, autocommit=True) as con:
            row = con.execute(
                "select count(*) from pg_locks l join pg_stat_activity a using (pid)"
                " where l.locktype = 'advisory' and l.granted"
                " and a.application_name = 'ductwork'"
            ).fetchone()
        return int(row[0])

    def on_event(event: Event) -> None:
        if isinstance(event, StageStarted) and event.stage == "summed":
            seen["running"] = advisory_locks()  # the run's lock and the stage's
        if isinstance(event, RunFinished):
            seen["finished"] = advisory_locks()

    assert dw.run(spec, on_event=on_event).status == "ok"
    assert seen == {"running": 2, "finished": 0}

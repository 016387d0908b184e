"""A database password given through ${env:...} never reaches artifacts, records or output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.postgres

SECRET = "s3cr3t-Pa55word-4-tests"


def test_password_is_nowhere_in_the_store_records_or_output(
    tmp_path: Path, postgres_dsn: str
) -> None:
    # the test cluster trusts local connections, so any password is accepted: it is only carried
    with_password = postgres_dsn.replace(
        "postgresql://postgres@", "postgresql://postgres:${env:DW_TEST_PG_PASSWORD}@"
    )
    (tmp_path / "data.csv").write_text("id,amount\n1,10.5\n2,20.25\n3,\n")
    (tmp_path / "pipeline.yaml").write_text(
        textwrap.dedent(
            f"""
            pipeline: secrets
            stages:
              - name: src
                kind: extract
                params: {{path: data.csv}}
              - name: to_pg
                kind: load
                params: {{url: "{with_password}", table: secret_test, mode: replace}}
              - name: back
                kind: extract
                inputs: []
                after: [to_pg]              # reads the table that to_pg writes
                cache: false
                params: {{url: "{with_password}", query: "select * from secret_test order by id"}}
            """
        )
    )
    exe = Path(sys.executable).with_name("ductwork")
    env = {**os.environ, "DW_TEST_PG_PASSWORD": SECRET, "NO_COLOR": "1"}
    loaded = subprocess.run(
        [str(exe), "run", "--json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
    )
    first = json.loads(loaded.stdout.splitlines()[-1])
    assert first["status"] == "ok", first["error"]
    assert {s["stage"]: s["rows_out"] for s in first["stages"]}["back"] == 3
    p = subprocess.run(
        [str(exe), "run", "--only", "back", "--json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
    )
    summary = json.loads(p.stdout.splitlines()[-1])
    assert summary["status"] == "ok", summary["error"]
    assert {s["stage"]: s["rows_out"] for s in summary["stages"]}["back"] == 3
    # a failing run too: its error message must not carry the password either
    bad = (
        (tmp_path / "pipeline.yaml").read_text().replace("secret_test order", "no_such_table order")
    )
    (tmp_path / "pipeline.yaml").write_text(bad)
    failed = subprocess.run(
        [str(exe), "run", "--only", "back", "--json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
    )
    assert failed.returncode != 0
    texts = [loaded.stdout, loaded.stderr, p.stdout, p.stderr, failed.stdout, failed.stderr]
    for f in (tmp_path / ".ductwork").rglob("*"):
        if f.is_file():
            texts.append(f.read_bytes().decode("utf-8", "replace"))
    for text in texts:
        assert SECRET not in text

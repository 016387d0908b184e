"""CLI behaviour on small pipelines: exit codes, errors, JSON, gc, concurrency, kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from .conftest import Cli, ductwork_bin, statuses

STEPS = """
import time
import polars as pl


def src(n: int = 200_000):
    return pl.DataFrame({"x": list(range(n)), "g": [i % 7 for i in range(n)]})


def slow_double(src: pl.LazyFrame, delay: float = 0.0) -> pl.LazyFrame:
    time.sleep(delay)
    return src.with_columns(y=pl.col("x") * 2)
"""


def make_project(root: Path, *, stages: int = 6, delay: float = 0.0, name: str = "small") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "cli_steps.py").write_text(textwrap.dedent(STEPS))
    lines = [f"pipeline: {name}", "stages:", "  - {name: src, kind: python, uses: cli_steps:src}"]
    prev = "src"
    for i in range(stages):
        lines.append(
            f"  - {{name: s{i}, kind: python, uses: cli_steps:slow_double, inputs: {{src: {prev}}},"
            f" params: {{args: {{delay: {delay}}}}}}}"
        )
        prev = f"s{i}"
    lines.append(
        f"  - {{name: agg, kind: transform, inputs: [{prev}], params: {{sql: 'select g, sum(y) as t from {prev} group by g order by g'}}}}"
    )
    (root / "pipeline.yaml").write_text("\n".join(lines) + "\n")
    return root


def test_help_teaches() -> None:
    p = subprocess.run([*ductwork_bin(), "--help"], capture_output=True, text=True)
    assert p.returncode == 0
    for cmd in ("run", "plan", "check", "show", "lineage", "gc", "export", "runs", "artifacts"):
        assert cmd in p.stdout
    p = subprocess.run([*ductwork_bin(), "run", "--help"], capture_output=True, text=True)
    assert "--only" in p.stdout and "Examples" in p.stdout


def test_help_imports_no_heavy_modules() -> None:
    code = (
        "import sys, ductwork.cli\n"
        "heavy = [m for m in ('polars', 'pyarrow', 'pydantic', 'rich', 'sklearn', 'fastapi', 'mlflow', 'anthropic')"
        " if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    import sys

    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert p.stdout.strip() == ""


def test_spec_error_exit_2_with_location(tmp_path: Path) -> None:
    (tmp_path / "pipeline.yaml").write_text("pipeline: x\nstages:\n  - {name: a, kind: extrct}\n")
    cli = Cli(tmp_path)
    p = cli("check", "--no-json")
    assert p.returncode == 2
    assert "pipeline.yaml:3:" in p.stderr and "did you mean 'extract'" in p.stderr
    assert "Traceback" not in p.stderr
    code, lines = cli.json_lines("run")
    assert code == 2
    assert lines[-1]["event"] == "error" and lines[-1]["error"]["exit_code"] == 2


def test_missing_pipeline_file(tmp_path: Path) -> None:
    p = Cli(tmp_path)("run", "nope.yaml", "--no-json")
    assert p.returncode == 2
    assert "pipeline file not found" in p.stderr


def test_unknown_stage_for_only(tmp_path: Path) -> None:
    make_project(tmp_path)
    p = Cli(tmp_path)("run", "--only", "aggg", "--no-json")
    assert p.returncode == 2
    assert "did you mean 'agg'" in p.stderr


def test_check_lists_stages(tmp_path: Path) -> None:
    make_project(tmp_path, stages=2)
    out = json.loads(Cli(tmp_path)("check", "--json").stdout)
    assert out["ok"] is True
    assert [s["name"] for s in out["stages"]] == ["src", "s0", "s1", "agg"]


def test_gc_keeps_latest_runs(tmp_path: Path) -> None:
    make_project(tmp_path, stages=1)
    cli = Cli(tmp_path)
    assert cli.summary("run")["status"] == "ok"
    spec = tmp_path / "pipeline.yaml"
    spec.write_text(spec.read_text().replace("sum(y)", "max(y)"))
    assert cli.summary("run")["status"] == "ok"
    res = json.loads(cli("gc", "--keep", "1", "--json").stdout)
    assert res["objects_removed"] == 1  # the old agg output
    again = cli.summary("run")
    assert set(statuses(again).values()) == {"cached"}
    spec.write_text(spec.read_text().replace("max(y)", "sum(y)"))
    assert statuses(cli.summary("run"))["agg"] == "ok"  # collected, so recomputed


def test_two_concurrent_runs_share_the_store(tmp_path: Path) -> None:
    make_project(tmp_path, stages=8, delay=0.05)
    env = {**os.environ, "NO_COLOR": "1"}
    procs = [
        subprocess.Popen(
            [*ductwork_bin(), "run", "--json"],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
        assert "locked" not in err
        assert json.loads(out.splitlines()[-1])["status"] == "ok"
    finals = [json.loads(o.splitlines()[-1]) for o, _ in outs]
    assert finals[0]["stages"][-1]["outputs"] == finals[1]["stages"][-1]["outputs"]
    rerun = Cli(tmp_path).summary("run")
    assert set(statuses(rerun).values()) == {"cached"}


@pytest.mark.slow
def test_kill_9_at_random_points_leaves_a_completable_store(tmp_path: Path) -> None:
    """20 runs killed with SIGKILL at random moments; each next run completes identically."""
    import random

    reference = make_project(tmp_path / "ref", stages=6, delay=0.02)
    ref = Cli(reference).summary("run")
    expected = {s["stage"]: s["outputs"] for s in ref["stages"]}
    proj = make_project(tmp_path / "victim", stages=6, delay=0.02)
    rng = random.Random(1234)
    env = {**os.environ, "NO_COLOR": "1"}
    killed = 0
    for trial in range(20):
        if trial % 5 == 0:
            # sometimes start from a partly filled store, sometimes from scratch
            subprocess.run(["rm", "-rf", str(proj / ".ductwork")], check=True)
        p = subprocess.Popen(
            [*ductwork_bin(), "run", "--json", "--force"],
            cwd=proj,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        time.sleep(rng.uniform(0.05, 1.2))
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
            killed += 1
        p.wait()
        after = Cli(proj).summary("run")
        assert after["status"] == "ok", after
        assert {s["stage"]: s["outputs"] for s in after["stages"]} == expected
        # nothing half-written is visible: every object's name is the sha256 of its content
        import hashlib

        for obj in (proj / ".ductwork" / "objects").iterdir():
            if obj.is_file():
                assert hashlib.sha256(obj.read_bytes()).hexdigest() == obj.name.split(".")[0]
    assert killed >= 10


def test_error_lines_are_never_wrapped(tmp_path: Path) -> None:
    deep = tmp_path / ("a-rather-long-directory-name-" * 4) / "project"
    deep.mkdir(parents=True)
    (deep / "pipeline.yaml").write_text("pipeline: x\nstages:\n  - {name: a, kind: extrct}\n")
    p = Cli(deep)("check", "--no-json", env={"COLUMNS": "60"})
    assert p.returncode == 2
    line = next(x for x in p.stderr.splitlines() if "pipeline.yaml:3:" in x)
    assert "unknown stage kind 'extrct' - did you mean 'extract'?" in line

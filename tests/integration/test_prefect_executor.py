"""``executor: prefect`` against a real local Prefect server (``prefect server start`` on
127.0.0.1, telemetry off, PREFECT_HOME in a throwaway directory): the run is a flow, each stage
that runs a task, visible through the Prefect client; ductwork's cache and resume decide what
runs; ``ductwork export prefect`` writes a flow that imports, runs and deploys."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import ductwork as dw

if importlib.util.find_spec("prefect") is None:
    pytest.skip(
        "prefect is not installed (pip install 'ductwork[prefect]')", allow_module_level=True
    )

STEPS = """
from pathlib import Path

import polars as pl

from ductwork.errors import DataError


def src():
    return pl.DataFrame({"k": ["a", "b", "a"], "x": [1, 2, 3]})


def scaled(src: pl.LazyFrame) -> pl.LazyFrame:
    return src.with_columns(y=pl.col("x") * 10)


def flaky(src: pl.LazyFrame, counter: str) -> pl.LazyFrame:
    path = Path(counter)
    n = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(n))
    if n == 1:
        raise OSError("transient: the first attempt fails")
    return src


def needs_flag(scaled: pl.LazyFrame, flag: str) -> pl.LazyFrame:
    if not Path(flag).exists():
        raise DataError(f"{flag} is missing")
    return scaled.filter(pl.col("y") > 10)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
            return bool(r.read().strip() == b"true")
    except OSError:
        return False


@pytest.fixture(scope="module")
def prefect_api() -> Iterator[str]:
    """The API URL of a `prefect server start` on a free loopback port; stopped at the end."""
    base = Path(tempfile.mkdtemp(prefix="dwprefect-"))
    env_vars = {
        "PREFECT_HOME": str(base / "home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_LOGGING_LEVEL": "WARNING",
    }
    saved = {k: os.environ.get(k) for k in [*env_vars, "PREFECT_API_URL"]}
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    log = (base / "server.log").open("wb")
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1",
         "--port", str(port)],
        env={**os.environ, **env_vars}, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    stack = contextlib.ExitStack()
    try:
        deadline = time.monotonic() + 240  # a fresh database: 35 s measured on 2 busy cores
        while not _healthy(url):
            if server.poll() is not None or time.monotonic() > deadline:
                text = (base / "server.log").read_text(errors="replace")[-3000:]
                pytest.fail(f"prefect server did not start:\n{text}", pytrace=False)
            time.sleep(1)
        os.environ.update(env_vars, PREFECT_API_URL=url)
        # prefect reads its settings when imported: in case it was imported already
        from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

        stack.enter_context(
            temporary_settings(updates={PREFECT_API_URL: url, PREFECT_HOME: base / "home"})
        )
        yield url
    finally:
        stack.close()
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=30)
        log.close()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, str]:
    steps = f"pfsteps_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{steps}.py").write_text(textwrap.dedent(STEPS))
    monkeypatch.delenv("DUCTWORK_STORE", raising=False)
    monkeypatch.delenv("DUCTWORK_EXECUTOR", raising=False)
    return tmp_path, steps


def write(root: Path, text: str) -> Path:
    path = root / "pipeline.yaml"
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def flow_run(name: str, tasks: int, timeout: float = 90) -> dict[str, Any]:
    """A flow run (by name = the ductwork run id), its flow and its task runs, once final."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterName

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:  # task run states reach the server through events: poll until final
            runs = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name]))
            )
            assert len(runs) == 1, runs
            fr = runs[0]
            trs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[fr.id]))
            )
            final = fr.state is not None and fr.state.is_final()
            final = final and all(t.state is not None and t.state.is_final() for t in trs)
            if (final and len(trs) == tasks) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        flow = client.read_flow(fr.flow_id)
    return {
        "flow": flow.name,
        "state": fr.state.name if fr.state else None,
        "parent": fr.parent_task_run_id,
        "tasks": {t.name: (t.state.name if t.state else None, t.run_count) for t in trs},
    }


def statuses(res: Any) -> dict[str, str]:
    return {n: o.status for n, o in res.stages.items()}


def test_a_run_is_a_flow_with_a_task_per_stage_and_a_rerun_is_all_cached(
    prefect_api: str, project: tuple[Path, str]
) -> None:
    root, steps = project
    counter = root / "counter.txt"
    pipe = dw.load(
        write(
            root,
            f"""
            pipeline: on-prefect
            executor: {{kind: prefect, workers: 2}}
            stages:
              - {{name: src, kind: python, uses: "{steps}:src"}}
              - {{name: scaled, kind: python, uses: "{steps}:scaled"}}
              - name: flaky
                kind: python
                uses: "{steps}:flaky"
                inputs: [src]
                retries: 2
                retry_delay: 100ms
                params: {{args: {{counter: "{counter}"}}}}
              - name: totals
                kind: transform
                inputs: [scaled]
                params: {{sql: "select k, sum(y) as total from scaled group by k order by k"}}
            """,
        )
    )
    first = dw.run(pipe)
    assert first.exit_code == 0, first.error
    assert set(statuses(first).values()) == {"ok"}
    assert counter.read_text() == "2"  # retried once by Prefect
    assert dw.artifact(pipe, "totals").to_dicts() == [
        {"k": "a", "total": 40},
        {"k": "b", "total": 20},
    ]
    seen = flow_run(first.run_id, tasks=4)
    assert seen["flow"] == "on-prefect" and seen["state"] == "Completed"
    assert seen["tasks"] == {
        "src": ("Completed", 1),
        "scaled": ("Completed", 1),
        "flaky": ("Completed", 2),
        "totals": ("Completed", 1),
    }

    again = dw.run(pipe)
    assert set(statuses(again).values()) == {"cached"}
    assert {n: o.outputs for n, o in again.stages.items()} == {
        n: o.outputs for n, o in first.stages.items()
    }
    rerun = flow_run(again.run_id, tasks=0)
    assert rerun["state"] == "Completed" and rerun["tasks"] == {}  # nothing ran: no task runs


def test_a_failed_stage_resumes_from_saved_artifacts_on_prefect(
    prefect_api: str, project: tuple[Path, str]
) -> None:
    root, steps = project
    flag = root / "flag"
    pipe = dw.load(
        write(
            root,
            f"""
            pipeline: resume-on-prefect
            executor: {{kind: prefect}}
            stages:
              - {{name: src, kind: python, uses: "{steps}:src"}}
              - {{name: scaled, kind: python, uses: "{steps}:scaled"}}
              - name: checked
                kind: python
                uses: "{steps}:needs_flag"
                retries: 3
                params: {{args: {{flag: "{flag}"}}}}
              - {{name: counted, kind: transform, params: {{sql: "select count(*) as n from checked"}}}}
            """,
        )
    )
    failed = dw.run(pipe)
    assert failed.exit_code == 2
    assert statuses(failed) == {
        "src": "ok",
        "scaled": "ok",
        "checked": "failed",
        "counted": "skipped",
    }
    seen = flow_run(failed.run_id, tasks=3)
    assert seen["state"] == "Failed"
    assert seen["tasks"]["checked"] == ("Failed", 1)  # a data error: never retried

    flag.write_text("ok")
    resumed = dw.run(pipe)
    assert resumed.exit_code == 0, resumed.error
    assert statuses(resumed) == {
        "src": "cached",
        "scaled": "cached",
        "checked": "ok",
        "counted": "ok",
    }
    again = flow_run(resumed.run_id, tasks=2)
    assert again["state"] == "Completed"
    assert again["tasks"] == {"checked": ("Completed", 1), "counted": ("Completed", 1)}
    assert dw.artifact(pipe, "counted").to_dicts() == [{"n": 2}]


def test_the_cli_keeps_stdout_json_with_prefect(
    prefect_api: str, project: tuple[Path, str]
) -> None:
    root, steps = project
    write(
        root,
        f"""
        pipeline: cli-on-prefect
        stages:
          - {{name: src, kind: python, uses: "{steps}:src"}}
        """,
    )
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "ductwork"), "run", "--executor", "prefect", "--json"],
        cwd=root, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = [json.loads(line) for line in proc.stdout.splitlines()]  # Prefect logs: stderr
    assert events[0]["executor"] == "prefect/prefect"
    assert events[-1]["status"] == "ok"
    seen = flow_run(events[-1]["run_id"], tasks=1)
    assert seen["flow"] == "cli-on-prefect" and seen["tasks"] == {"src": ("Completed", 1)}


def test_the_exported_flow_imports_runs_and_deploys(
    prefect_api: str, project: tuple[Path, str]
) -> None:
    root, steps = project
    pipe_file = write(
        root,
        f"""
        pipeline: exported
        stages:
          - {{name: src, kind: python, uses: "{steps}:src"}}
          - {{name: scaled, kind: python, uses: "{steps}:scaled"}}
        """,
    )
    out = root / "deploy" / "prefect"
    module_file, yaml_file = dw.api.export_prefect(pipe_file, out)  # type: ignore[attr-defined]
    spec = importlib.util.spec_from_file_location(f"exported_{uuid.uuid4().hex[:6]}", module_file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    summary = module.run_exported()
    assert summary["status"] == "ok"
    assert summary["stages"] == {"src": "ok", "scaled": "ok"}
    inner = flow_run(summary["run_id"], tasks=2)
    assert inner["flow"] == "exported" and inner["parent"] is not None  # a subflow
    assert inner["tasks"] == {"src": ("Completed", 1), "scaled": ("Completed", 1)}

    # prefect deploy reads prefect.yaml; a process worker runs the deployment once
    prefect = str(Path(sys.executable).parent / "prefect")

    def cli(*args: str, timeout: float = 180) -> str:
        proc = subprocess.run(
            [prefect, "--no-prompt", *args], cwd=out, capture_output=True, text=True,
            timeout=timeout, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, f"prefect {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
        return proc.stdout

    assert yaml_file.name == "prefect.yaml"
    cli("work-pool", "create", "local", "--type", "process")
    cli("deploy", "--all")
    cli("deployment", "run", "ductwork-exported/exported")
    cli("worker", "start", "--pool", "local", "--run-once", timeout=240)
    from prefect import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["exported"]))
        )
    assert [r.state.name for r in runs if r.state] == ["Completed"]
    assert dw.run(pipe_file).stages["scaled"].status == "cached"  # the deployment's run, cached

"""Per-stage resources and retries: parsing and validation, the fingerprint, retry
classification, the local executor's retries, executor selection and the engines' option
mapping (no cluster or server here: tests/integration has those)."""

from __future__ import annotations

import os
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import polars as pl
import pytest

import ductwork as dw
from ductwork.config import Settings
from ductwork.core.execute import StageTask, is_transient
from ductwork.core.executors import make_executor
from ductwork.core.graph import Resources
from ductwork.errors import (
    DataError,
    GateFailed,
    InvariantError,
    MissingExtra,
    SourceError,
    SpecError,
    UsageError,
)
from ductwork.spec import parse_duration, parse_memory

# -- parsing -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("4GiB", 4 * 2**30),
        ("512MiB", 512 * 2**20),
        ("512 MiB", 512 * 2**20),
        ("1.5GiB", int(1.5 * 2**30)),
        ("2GB", 2_000_000_000),
        ("100MB", 100_000_000),
        ("4Gi", 4 * 2**30),
        ("64KiB", 64 * 1024),
        ("1TiB", 2**40),
        (1_048_576, 1_048_576),
        ("1048576", 1_048_576),
    ],
)
def test_memory_sizes(text: Any, expected: int) -> None:
    assert parse_memory(text) == expected


@pytest.mark.parametrize("text", ["lots", "4XB", "-1GiB", "0GiB", 0, -5, True, "GiB", ""])
def test_bad_memory_sizes(text: Any) -> None:
    with pytest.raises(ValueError, match="not a size"):
        parse_memory(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10s", 10.0),
        ("1m", 60.0),
        ("500ms", 0.5),
        ("2h", 7200.0),
        ("1.5s", 1.5),
        (5, 5.0),
        (0, 0.0),
    ],
)
def test_durations(text: Any, expected: float) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["10x", "soon", "-1s", -1, "1 minute", True])
def test_bad_durations(text: Any) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


# -- the pipeline file ------------------------------------------------------------------------

STEPS = """
import polars as pl
from pathlib import Path

from ductwork.errors import DataError


def src():
    return pl.DataFrame({"x": [1, 2, 3]})


def _bump(counter):
    p = Path(counter)
    n = int(p.read_text()) if p.exists() else 0
    p.write_text(str(n + 1))
    return n + 1


def flaky(src: pl.LazyFrame, counter: str, fail_times: int = 1, error: str = "OSError"):
    n = _bump(counter)
    if n <= fail_times:
        if error == "OSError":
            raise OSError(f"transient failure on attempt {n}")
        if error == "DataError":
            raise DataError(f"bad data on attempt {n}")
        raise RuntimeError(f"unexpected failure on attempt {n}")
    return src.with_columns(y=pl.col("x") * 10)
"""


@pytest.fixture
def steps(tmp_path: Path) -> str:
    name = f"steps_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(STEPS))
    return name


def write(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "pipeline.yaml"
    p.write_text(textwrap.dedent(body).lstrip())
    return p


def test_resources_and_retries_reach_the_stage_node(tmp_path: Path, steps: str) -> None:
    pipe = dw.load(
        write(
            tmp_path,
            f"""
            pipeline: r
            executor: {{kind: ray, address: "127.0.0.1:6379"}}
            stages:
              - name: src
                kind: python
                uses: {steps}:src
                resources: {{cpus: 2, memory: 4GiB, gpus: 0.5}}
                retries: 3
                retry_delay: 1m
              - name: plain
                kind: python
                uses: {steps}:src
                inputs: []
            """,
        )
    )
    node = pipe.stages["src"]
    assert node.resources == Resources(cpus=2.0, memory=4 * 2**30, gpus=0.5)
    assert (node.retries, node.retry_delay) == (3, 60.0)
    plain = pipe.stages["plain"]
    assert (plain.resources, plain.retries, plain.retry_delay) == (None, 0, 0.0)
    assert (pipe.executor.kind, pipe.executor.address) == ("ray", "127.0.0.1:6379")


def test_check_reports_every_bad_key_with_its_place(tmp_path: Path, steps: str) -> None:
    path = write(
        tmp_path,
        f"""
        pipeline: r
        executor: {{kind: rey}}
        stages:
          - name: src
            kind: python
            uses: {steps}:src
            resources: {{cpu: 2, memory: lots, gpus: -1}}
            retries: -1
            retry_delay: 10x
          - name: other
            kind: python
            uses: {steps}:src
            inputs: []
            retrys: 2
        """,
    )
    with pytest.raises(SpecError) as info:
        dw.load(path)
    text = str(info.value)
    assert "pipeline.yaml:2:" in text and "unknown executor 'rey' - did you mean 'ray'?" in text
    assert "pipeline.yaml:7:" in text and "unknown key 'cpu' - did you mean 'cpus'?" in text
    assert "memory 'lots' is not a size" in text
    assert "resources.gpus" in text and "greater than or equal to 0" in text
    assert "retries" in text and "pipeline.yaml:8:" in text
    assert "pipeline.yaml:9:" in text and "'10x' is not a duration" in text
    assert "pipeline.yaml:14:" in text and "unknown key 'retrys' - did you mean 'retries'?" in text


def test_check_command_accepts_the_new_keys(tmp_path: Path, steps: str) -> None:
    from click.testing import CliRunner

    from ductwork.cli import cli

    write(
        tmp_path,
        f"""
        pipeline: r
        executor: {{kind: prefect, workers: 2}}
        stages:
          - {{name: src, kind: python, uses: "{steps}:src", resources: {{memory: 512MiB}}, retries: 1, retry_delay: 10s}}
        """,
    )
    res = CliRunner().invoke(cli, ["check", str(tmp_path / "pipeline.yaml"), "--json"])
    assert res.exit_code == 0, res.output
    assert '"ok": true' in res.output


def test_resources_and_retries_are_not_part_of_the_fingerprint(tmp_path: Path, steps: str) -> None:
    base = f"pipeline: r\nstages:\n  - name: src\n    kind: python\n    uses: {steps}:src\n"
    first = dw.run(dw.load(write(tmp_path, base)))
    assert first.stages["src"].status == "ok"
    moved = base + "    resources: {cpus: 8, memory: 16GiB, gpus: 1}\n    retries: 5\n"
    moved += "    retry_delay: 30s\n"
    plan = dw.plan(dw.load(write(tmp_path, moved)))
    assert plan.stages["src"].status == "cached"
    assert plan.stages["src"].fingerprint == first.stages["src"].fingerprint


# -- retry classification -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (OSError("disk"), True),
        (ConnectionResetError("peer"), True),
        (RuntimeError("unexpected"), True),
        (ValueError("unexpected"), True),
        (MemoryError(), True),
        (SourceError("the API answered 503"), True),
        (DataError("column x missing"), False),
        (SpecError([]), False),
        (UsageError("bad option"), False),
        (GateFailed("roc_auc below 0.8"), False),
        (InvariantError("0 rows"), False),
    ],
)
def test_which_failures_are_retried(exc: BaseException, transient: bool) -> None:
    assert is_transient(exc) is transient


# -- the local executor honours retries -----------------------------------------------------------


def retry_pipeline(
    tmp_path: Path, steps: str, *, retries: int, error: str = "OSError", fail_times: int = 1
) -> dw.Pipeline:  # type: ignore[name-defined]
    counter = tmp_path / f"counter-{uuid.uuid4().hex[:6]}"
    return dw.load(
        write(
            tmp_path,
            f"""
            pipeline: r
            stages:
              - {{name: src, kind: python, uses: "{steps}:src"}}
              - name: flaky
                kind: python
                uses: {steps}:flaky
                retries: {retries}
                params: {{args: {{counter: "{counter}", error: {error}, fail_times: {fail_times}}}}}
            """,
        )
    )


def attempts(pipe: Any) -> int:
    args = pipe.stages["flaky"].params.args
    return int(Path(args["counter"]).read_text())


@pytest.mark.parametrize("workers", [1, 2])
def test_a_transient_failure_is_retried(tmp_path: Path, steps: str, workers: int) -> None:
    pipe = retry_pipeline(tmp_path, steps, retries=2, fail_times=2)
    res = dw.run(pipe, workers=workers)
    assert res.exit_code == 0, res.error
    assert res.stages["flaky"].status == "ok"
    assert attempts(pipe) == 3
    assert dw.artifact(pipe, "flaky")["y"].to_list() == [10, 20, 30]
    assert dw.run(pipe).stages["flaky"].status == "cached"


def test_an_unexpected_exception_is_retried(tmp_path: Path, steps: str) -> None:
    pipe = retry_pipeline(tmp_path, steps, retries=1, error="RuntimeError")
    assert dw.run(pipe).stages["flaky"].status == "ok"
    assert attempts(pipe) == 2


def test_retries_run_out(tmp_path: Path, steps: str) -> None:
    pipe = retry_pipeline(tmp_path, steps, retries=1, fail_times=5)
    res = dw.run(pipe)
    assert res.stages["flaky"].status == "failed"
    assert "transient failure on attempt 2" in (res.error or {})["message"]
    assert attempts(pipe) == 2
    assert res.stages["src"].status == "ok"  # earlier artifacts are kept for the next run


def test_a_data_error_is_never_retried(tmp_path: Path, steps: str) -> None:
    pipe = retry_pipeline(tmp_path, steps, retries=3, error="DataError")
    res = dw.run(pipe)
    assert res.stages["flaky"].status == "failed"
    assert res.exit_code == 2
    assert attempts(pipe) == 1


def test_without_retries_a_transient_failure_fails_the_stage(tmp_path: Path, steps: str) -> None:
    pipe = retry_pipeline(tmp_path, steps, retries=0)
    assert dw.run(pipe).stages["flaky"].status == "failed"
    assert attempts(pipe) == 1


def test_retry_delay_is_waited(tmp_path: Path) -> None:
    from ductwork.core.executors import run_with_retries

    calls: list[float] = []

    def fails_once(src: pl.LazyFrame) -> pl.LazyFrame:
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise OSError("once")
        return src

    pipe = dw.pipeline(
        "d",
        [
            {"name": "src", "kind": "python", "uses": lambda: pl.DataFrame({"x": [1]})},
            {"name": "f", "kind": "python", "uses": fails_once, "retries": 1, "retry_delay": 0.3},
        ],
        project_dir=tmp_path,
    )
    res = dw.run(pipe)
    assert res.stages["f"].status == "ok"
    assert calls[1] - calls[0] >= 0.3
    assert run_with_retries.__doc__  # the shared retry loop of the local executors


# -- executor selection ------------------------------------------------------------------------------


def test_unknown_executor_names_the_close_one() -> None:
    with pytest.raises(UsageError, match="did you mean 'ray'"):
        make_executor("rey", 2, "thread")


@pytest.mark.parametrize(("kind", "module"), [("ray", "ray"), ("prefect", "prefect")])
def test_missing_engine_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, kind: str, module: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    with pytest.raises(MissingExtra) as info:
        make_executor(kind, 2, "thread")
    assert f"ductwork[{kind}]" in str(info.value)


def test_settings_choose_the_executor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DUCTWORK_EXECUTOR", "ray")
    monkeypatch.setenv("DUCTWORK_RAY_ADDRESS", "ray://head:10001")
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert (s.executor, s.ray_address) == ("ray", "ray://head:10001")


# -- mapping to the engines (no cluster needed) -----------------------------------------------------


def task(**kw: Any) -> StageTask:
    base: dict[str, Any] = {
        "run_id": "r",
        "stage": "train",
        "kind": "python",
        "kind_path": "x:y",
        "params": None,
        "inputs": {},
        "outputs": {},
        "expect": [],
        "fingerprint": "f",
        "store_root": "/s",
        "project_dir": "/p",
    }
    return StageTask(**(base | kw))


def test_resources_become_ray_task_options() -> None:
    from ductwork.engines.ray import TransientStageError, ray_options

    opts, notes = ray_options(
        task(resources=Resources(cpus=2, memory=4 * 2**30, gpus=1), retries=3)
    )
    assert opts == {
        "name": "train",
        "num_cpus": 2,
        "memory": 4 * 2**30,
        "num_gpus": 1,
        "max_retries": 3,
        "retry_exceptions": [TransientStageError],
    }
    assert notes == []
    plain, _ = ray_options(task())
    assert plain["num_cpus"] == 1 and "memory" not in plain and "num_gpus" not in plain
    assert plain["max_retries"] == 0


def test_a_local_ray_cluster_caps_what_it_cannot_give() -> None:
    from ductwork.engines.ray import ray_options

    limits = {"CPU": 2.0, "memory": 8 * 2**30}
    opts, notes = ray_options(task(resources=Resources(cpus=16, memory=64 * 2**30, gpus=1)), limits)
    assert (opts["num_cpus"], opts["memory"]) == (2.0, 8 * 2**30)
    assert "num_gpus" not in opts
    assert len(notes) == 3 and "asks for 16 CPUs, the local Ray cluster has 2: capped" in notes[0]


def test_ray_addresses_are_checked() -> None:
    pytest.importorskip("ray")
    from ductwork.engines.ray import RayExecutor

    for ok in ("local", "auto", "127.0.0.1:6379", "ray://head:10001", "head.example:6379"):
        assert RayExecutor(1, address=ok).address == ok
    with pytest.raises(UsageError, match="not a Ray address"):
        RayExecutor(1, address="http://head:8265/")


# -- ductwork export prefect --------------------------------------------------------------------------


def test_export_prefect_writes_a_flow_module_and_a_deployment(tmp_path: Path, steps: str) -> None:
    from click.testing import CliRunner
    from ruamel.yaml import YAML

    from ductwork.cli import cli

    write(
        tmp_path,
        f"pipeline: flight-delays\nstages:\n  - {{name: src, kind: python, uses: '{steps}:src'}}\n",
    )
    out = tmp_path / "deploy" / "prefect"
    res = CliRunner().invoke(
        cli, ["export", "prefect", str(out), str(tmp_path / "pipeline.yaml"), "--json"]
    )
    assert res.exit_code == 0, res.output
    module = out / "flight_delays_flow.py"
    source = module.read_text()
    compile(source, str(module), "exec")
    assert 'PIPELINE = Path(__file__).resolve().parent / "../../pipeline.yaml"' in source
    assert 'executor="prefect"' in source and "def run_flight_delays(" in source
    doc = YAML(typ="safe").load((out / "prefect.yaml").read_text())
    (deployment,) = doc["deployments"]
    assert deployment["entrypoint"] == "flight_delays_flow.py:run_flight_delays"
    assert deployment["schedules"][0]["cron"] and deployment["schedules"][0]["active"] is False
    assert doc["pull"][0]["prefect.deployments.steps.set_working_directory"]["directory"] == str(
        out
    )


def test_export_artifact_is_still_the_default(tmp_path: Path, steps: str) -> None:
    from click.testing import CliRunner

    from ductwork.cli import cli

    write(tmp_path, f"pipeline: e\nstages:\n  - {{name: src, kind: python, uses: '{steps}:src'}}\n")
    pipe_file = str(tmp_path / "pipeline.yaml")
    assert dw.run(dw.load(pipe_file)).exit_code == 0
    runner = CliRunner()
    for args in (["src", "a.csv"], ["artifact", "src", "b.csv"], ["-p", pipe_file, "src", "c.csv"]):
        target = tmp_path / args[-1]
        res = runner.invoke(cli, ["export", *args[:-1], str(target), "-p", pipe_file, "--json"])
        assert res.exit_code == 0, res.output
        assert pl.read_csv(target)["x"].to_list() == [1, 2, 3]


def test_export_prefect_needs_a_pipeline_file(tmp_path: Path) -> None:
    pipe = dw.pipeline(
        "p", [{"name": "s", "kind": "python", "uses": lambda: pl.DataFrame({"x": [1]})}]
    )
    with pytest.raises(UsageError, match="built in Python"):
        dw.api.export_prefect(pipe, tmp_path / "out")  # type: ignore[attr-defined]


def test_the_store_probe_says_what_a_worker_cannot_see(tmp_path: Path) -> None:
    from ductwork.engines.ray import probe_store

    store = tmp_path / "store"
    store.mkdir()
    (store / ".ray-probe-t1").write_text("t1")
    assert probe_store(str(store), str(tmp_path), "t1") == []
    assert probe_store(str(store), str(tmp_path), "t2") == [f"the store at {store}"]
    missing = probe_store("/nowhere/store", "/nowhere/project", "t1")
    assert missing == ["the store at /nowhere/store", "the project directory /nowhere/project"]


def test_prefect_defaults_keep_what_the_user_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ductwork.engines.prefect import prepare_environment

    for name in (
        "PREFECT_HOME",
        "PREFECT_API_URL",
        "DO_NOT_TRACK",
        "PREFECT_SERVER_ANALYTICS_ENABLED",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.prefect/profiles.toml
    prepare_environment(str(tmp_path / "store"))
    assert os.environ["PREFECT_HOME"] == str(tmp_path / "store" / "prefect")
    assert os.environ["DO_NOT_TRACK"] == "1"
    assert os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    assert os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] == "120"

    monkeypatch.delenv("PREFECT_HOME")
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")  # a configured server
    monkeypatch.setenv("DO_NOT_TRACK", "0")
    prepare_environment(str(tmp_path / "store"))
    assert "PREFECT_HOME" not in os.environ and os.environ["DO_NOT_TRACK"] == "0"


def test_python_stages_take_resources_and_retries(tmp_path: Path) -> None:
    def src() -> pl.DataFrame:
        return pl.DataFrame({"x": [1]})

    pipe = dw.pipeline(
        "py",
        [
            dw.Stage(
                "src", src, resources={"cpus": 2, "memory": "1GiB"}, retries=2, retry_delay="5s"
            )
        ],
        project_dir=tmp_path,
    )
    node = pipe.stages["src"]
    assert node.resources == Resources(cpus=2, memory=2**30)
    assert (node.retries, node.retry_delay) == (2, 5.0)

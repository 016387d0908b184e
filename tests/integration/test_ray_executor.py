"""``executor: ray`` against a real ``ray start --head`` cluster on 127.0.0.1.

The cluster uses token authentication (Ray's default): ``RAY_AUTH_MODE=token`` on both sides,
with HOME (where the token is written) and TMPDIR (Ray's session files) in a throwaway
directory, so nothing lands in the real HOME. One cluster serves the module; ``ray stop`` ends it.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import ductwork as dw

if importlib.util.find_spec("ray") is None:
    pytest.skip("ray is not installed (pip install 'ductwork[ray]')", allow_module_level=True)

STEPS = """
import json
import os
import time
from pathlib import Path

import polars as pl

from ductwork.errors import DataError


def src():
    return pl.DataFrame({"k": ["a", "b", "a", "c"], "x": [1, 2, 3, 4]})


def scaled(src: pl.LazyFrame, factor: int = 10) -> pl.LazyFrame:
    return src.with_columns(y=pl.col("x") * factor)


def where():
    import ray

    ctx = ray.get_runtime_context()
    return {"pid": os.getpid(), "resources": ctx.get_assigned_resources()}


def slow(scaled: pl.LazyFrame, pids: str) -> pl.LazyFrame:
    path = Path(pids)
    seen = path.read_text().split() if path.exists() else []
    path.write_text(" ".join([*seen, str(os.getpid())]))
    if not seen:  # the first attempt waits to be killed
        time.sleep(90)
    return scaled.with_columns(z=pl.col("y") + 1)


def flaky(src: pl.LazyFrame, counter: str, error: str = "OSError") -> pl.LazyFrame:
    path = Path(counter)
    n = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(n))
    if n == 1:
        raise OSError("transient") if error == "OSError" else DataError("bad data")
    return src
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _reload_ray_auth() -> None:
    """Ray reads RAY_AUTH_MODE and the token when it is imported: if an earlier test imported
    it, make it read them again (as Ray's own tests do)."""
    if "ray" in sys.modules:
        from ray._private.authentication_test_utils import reset_auth_token_state

        reset_auth_token_state()


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """``host:port`` of a 2-CPU Ray head started with ``ray start``; stopped at the end."""
    # short: Ray's unix socket paths (under TMPDIR) must stay below 108 bytes
    base = Path(tempfile.mkdtemp(prefix="dwray-", dir="/tmp"))
    home, tmp = base / "home", base / "t"
    home.mkdir()
    tmp.mkdir()
    env_vars = {
        "HOME": str(home),
        "TMPDIR": str(tmp),
        "RAY_AUTH_MODE": "token",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    saved = {k: os.environ.get(k) for k in env_vars}
    env = {**os.environ, **env_vars}
    ray_bin = str(Path(sys.executable).parent / "ray")
    port = _free_port()
    try:
        token = subprocess.run(  # into HOME/.ray/auth_token, read by both sides
            [ray_bin, "get-auth-token", "--generate"],
            env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        if token.returncode != 0:
            pytest.fail(f"ray get-auth-token failed:\n{token.stderr}", pytrace=False)
        started = subprocess.run(
            [
                ray_bin, "start", "--head", "--port", str(port), "--node-ip-address", "127.0.0.1",
                "--num-cpus", "2", "--include-dashboard", "false", "--disable-usage-stats",
            ],
            env=env, capture_output=True, text=True, timeout=240, check=False,
        )  # fmt: skip
        if started.returncode != 0:
            pytest.fail(f"ray start failed:\n{started.stdout}\n{started.stderr}", pytrace=False)
        os.environ.update(env_vars)  # the driver (this process) joins with the same token
        _reload_ray_auth()
        yield f"127.0.0.1:{port}"
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        subprocess.run(
            [ray_bin, "stop", "--force"], env=env, capture_output=True, timeout=120, check=False
        )
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        _reload_ray_auth()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, str]:
    """A project directory with a uniquely named module of stage functions."""
    steps = f"raysteps_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{steps}.py").write_text(textwrap.dedent(STEPS))
    monkeypatch.delenv("DUCTWORK_STORE", raising=False)
    monkeypatch.delenv("DUCTWORK_EXECUTOR", raising=False)
    return tmp_path, steps


def write(root: Path, text: str) -> Path:
    path = root / "pipeline.yaml"
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def hashes(res: Any) -> dict[str, dict[str, str]]:
    return {
        name: {out: info.sha256 for out, info in o.outputs.items()}
        for name, o in res.stages.items()
    }


def local_hashes(pipe_file: Path, monkeypatch: pytest.MonkeyPatch, store: Path) -> Any:
    """The same pipeline on the local executor, in a store of its own."""
    monkeypatch.setenv("DUCTWORK_STORE", str(store))
    try:
        res = dw.run(dw.load(pipe_file), executor="local")
    finally:
        monkeypatch.delenv("DUCTWORK_STORE")
    assert res.exit_code == 0, res.error
    return res


def test_a_pipeline_runs_on_ray_then_is_all_cached_with_the_local_hashes(
    ray_cluster: str, project: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, steps = project
    pipe_file = write(
        root,
        f"""
        pipeline: on-ray
        executor: {{kind: ray, address: "{ray_cluster}"}}
        stages:
          - {{name: src, kind: python, uses: "{steps}:src"}}
          - {{name: scaled, kind: python, uses: "{steps}:scaled", resources: {{cpus: 1, memory: 64MiB}}}}
          - name: totals
            kind: transform
            inputs: [scaled]
            params: {{sql: "select k, sum(y) as total from scaled group by k order by k"}}
        """,
    )
    pipe = dw.load(pipe_file)
    first = dw.run(pipe)
    assert first.exit_code == 0, first.error
    assert {n: o.status for n, o in first.stages.items()} == dict.fromkeys(
        ("src", "scaled", "totals"), "ok"
    )
    assert dw.artifact(pipe, "totals").to_dicts() == [
        {"k": "a", "total": 40},
        {"k": "b", "total": 20},
        {"k": "c", "total": 40},
    ]
    again = dw.run(pipe)
    assert {o.status for o in again.stages.values()} == {"cached"}
    assert hashes(again) == hashes(first)
    assert hashes(local_hashes(pipe_file, monkeypatch, root / "local-store")) == hashes(first)


def test_resources_reach_the_ray_task(ray_cluster: str, project: tuple[Path, str]) -> None:
    root, steps = project
    pipe = dw.load(
        write(
            root,
            f"""
            pipeline: resources
            executor: {{kind: ray, address: "{ray_cluster}"}}
            stages:
              - name: big
                kind: python
                uses: "{steps}:where"
                params: {{outputs: {{main: json}}}}
                resources: {{cpus: 2, memory: 96MiB}}
              - name: small
                kind: python
                uses: "{steps}:where"
                inputs: []
                params: {{outputs: {{main: json}}}}
                resources: {{cpus: 0.5}}
              - name: default
                kind: python
                uses: "{steps}:where"
                inputs: []
                params: {{outputs: {{main: json}}}}
            """,
        )
    )
    res = dw.run(pipe)
    assert res.exit_code == 0, res.error
    big, small, default = (dw.artifact(pipe, s) for s in ("big", "small", "default"))
    assert big["resources"] == {"CPU": 2.0, "memory": float(96 * 2**20)}
    assert small["resources"] == {"CPU": 0.5}
    assert default["resources"] == {"CPU": 1.0}
    assert os.getpid() not in {big["pid"], small["pid"], default["pid"]}  # Ray workers ran them


def test_a_killed_worker_is_retried_and_the_run_completes_with_the_same_hashes(
    ray_cluster: str, project: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, steps = project
    pids = root / "pids.txt"

    def pipeline_file(pids_file: Path, executor: str) -> Path:
        return write(
            root,
            f"""
            pipeline: killed
            executor: {executor}
            stages:
              - {{name: src, kind: python, uses: "{steps}:src"}}
              - {{name: scaled, kind: python, uses: "{steps}:scaled"}}
              - name: slow
                kind: python
                uses: "{steps}:slow"
                retries: 1
                params: {{args: {{pids: "{pids_file}"}}}}
            """,
        )

    killed: list[int] = []

    def kill_the_first_attempt() -> None:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not killed:
            text = pids.read_text().split() if pids.exists() else []
            if text:
                pid = int(text[0])
                assert pid != os.getpid()
                time.sleep(0.5)  # mid-stage: the attempt is sleeping
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.2)

    killer = threading.Thread(target=kill_the_first_attempt, daemon=True)
    killer.start()
    pipe = dw.load(pipeline_file(pids, f'{{kind: ray, address: "{ray_cluster}"}}'))
    started = time.monotonic()
    res = dw.run(pipe)
    killer.join(timeout=5)
    assert killed, "the first attempt never started"
    assert res.exit_code == 0, res.error
    assert res.stages["slow"].status == "ok"
    attempts = [int(p) for p in pids.read_text().split()]
    assert len(attempts) == 2 and attempts[0] == killed[0] and attempts[1] != killed[0]
    assert time.monotonic() - started < 80  # the retry did not wait out the first attempt
    ray_hashes = hashes(res)

    # the same stages on the local executor (no kill: the pids file says "already tried")
    local_pids = root / "local-pids.txt"
    local_pids.write_text("0")
    local = local_hashes(pipeline_file(local_pids, "{kind: local}"), monkeypatch, root / "ls")
    assert hashes(local) == ray_hashes


def test_transient_errors_are_retried_on_ray_and_data_errors_are_not(
    ray_cluster: str, project: tuple[Path, str]
) -> None:
    root, steps = project
    os_counter, data_counter = root / "os.txt", root / "data.txt"
    pipe = dw.load(
        write(
            root,
            f"""
            pipeline: flaky
            executor: {{kind: ray, address: "{ray_cluster}"}}
            stages:
              - {{name: src, kind: python, uses: "{steps}:src"}}
              - name: transient
                kind: python
                uses: "{steps}:flaky"
                retries: 2
                retry_delay: 200ms
                params: {{args: {{counter: "{os_counter}"}}}}
              - name: data
                kind: python
                uses: "{steps}:flaky"
                inputs: [src]
                retries: 2
                params: {{args: {{counter: "{data_counter}", error: DataError}}}}
            """,
        )
    )
    res = dw.run(pipe)
    assert res.stages["transient"].status == "ok"
    assert os_counter.read_text() == "2"
    assert res.stages["data"].status == "failed"
    assert data_counter.read_text() == "1"
    assert "bad data" in (res.stages["data"].error or {})["message"]
    assert res.exit_code == 2  # a data error, as on the local executor


def test_address_local_starts_a_cluster_for_the_run_and_caps_requests(
    project: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, steps = project
    base = Path(tempfile.mkdtemp(prefix="dwrl-", dir="/tmp"))  # short TMPDIR: Ray's sockets
    for name in ("home", "t"):
        (base / name).mkdir()
    monkeypatch.setenv("HOME", str(base / "home"))
    monkeypatch.setenv("TMPDIR", str(base / "t"))
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    _reload_ray_auth()
    try:
        pipe = dw.load(
            write(
                root,
                f"""
                pipeline: local-ray
                executor: {{kind: ray}}
                stages:
                  - name: greedy
                    kind: python
                    uses: "{steps}:where"
                    params: {{outputs: {{main: json}}}}
                    resources: {{cpus: 64}}
                """,
            )
        )
        res = dw.run(pipe)
        assert res.exit_code == 0, res.error
        assigned = dw.artifact(pipe, "greedy")["resources"]
        assert assigned == {"CPU": float(os.cpu_count() or 1)}  # capped to this machine

        import ray

        assert not ray.is_initialized()  # the run's cluster is stopped
        assert dw.run(pipe).stages["greedy"].status == "cached"  # and no cluster for that
        assert not ray.is_initialized()
    finally:
        monkeypatch.undo()
        _reload_ray_auth()
        shutil.rmtree(base, ignore_errors=True)

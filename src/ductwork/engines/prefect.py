"""``executor: prefect``: the run is a Prefect flow, each stage that runs a Prefect task.

    ductwork run --executor prefect        # or executor: {kind: prefect} / DUCTWORK_EXECUTOR

The flow is named after the pipeline (its run after ductwork's run id) and each stage that runs
is a task named after the stage, with the stage's ``retries``/``retry_delay``, on a
``ThreadPoolTaskRunner`` with ``workers`` threads; so the Prefect UI shows the run, its stages,
their retries and logs. ductwork still decides what runs: its fingerprints and cache are the
only cache (Prefect's is off: ``cache_policy=NONE``, no persisted results), so cached and resumed
stages behave exactly as on the local executor (a cached stage makes no task run).

Prefect is configured as usual (``PREFECT_API_URL``, profiles). With none, Prefect starts a
temporary local server for the run; its database then lives in ``<store>/prefect``
(``PREFECT_HOME``), and telemetry is off unless set otherwise (``DO_NOT_TRACK``,
``PREFECT_SERVER_ANALYTICS_ENABLED``).

:func:`write_deployment` (``ductwork export prefect DIR``) writes a flow module and a
``prefect.yaml`` to deploy and schedule the pipeline with ``prefect deploy``.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from ductwork.core.contract import ProgressFn, _no_progress
from ductwork.core.execute import StageResult, StageTask, execute_stage
from ductwork.core.executors import Executor
from ductwork.core.graph import Pipeline
from ductwork.errors import DuctworkError, SourceError, UsageError, import_optional

FEATURE = "executor: prefect"


def prepare_environment(store_root: str = "") -> None:
    """Defaults that must be in place before ``import prefect`` (it reads them then).

    Nothing the user set is overridden: telemetry off, a startup timeout that fits a cold
    temporary server (17-46 s measured on 2 cores, over Prefect's 20 s default), and with no
    Prefect server or profile configured, the temporary server's database in the store.
    """
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    configured = (
        "PREFECT_HOME" in os.environ
        or "PREFECT_API_URL" in os.environ
        or (Path.home() / ".prefect" / "profiles.toml").exists()
    )
    if not configured and store_root and "://" not in store_root:
        os.environ["PREFECT_HOME"] = str(Path(store_root) / "prefect")


class StageAttemptFailed(Exception):
    """Raised in the Prefect task when an attempt fails, so Prefect marks the task run Failed
    (and retries it when the failure is transient)."""


class PrefectExecutor(Executor):
    """Stages as Prefect tasks inside one Prefect flow per run."""

    name = "prefect"

    def __init__(self, workers: int, *, store_root: str = "") -> None:
        super().__init__(workers)
        prepare_environment(store_root)
        import_optional("prefect", extra="prefect", feature=FEATURE)
        self._lock = threading.Lock()
        self._in_flow = False
        self._results: dict[str, StageResult] = {}
        self._failed: list[str] = []

    def run_walk(self, pipeline: str, run_id: str, walk: Callable[[], None]) -> None:
        """Run the walk as the body of a flow named after the pipeline."""
        from prefect import flow
        from prefect.states import Failed
        from prefect.task_runners import ThreadPoolTaskRunner

        raised: list[BaseException] = []

        def body() -> Any:
            self._in_flow = True
            try:
                walk()
            except BaseException as exc:
                raised.append(exc)
                raise
            finally:
                self._in_flow = False
            if self._failed:  # the flow run ends Failed, like the ductwork run
                return Failed(message=f"stage(s) failed: {', '.join(self._failed)}")
            return None

        runner: Any = ThreadPoolTaskRunner(max_workers=self.workers)
        run_flow: Any = flow(
            name=pipeline,
            flow_run_name=run_id,
            task_runner=runner,
            persist_result=False,
            validate_parameters=False,
            description=f"ductwork pipeline '{pipeline}'",
        )(body)
        try:
            state = run_flow(return_state=True)
        except BaseException as exc:
            if raised:
                raise raised[0] from None
            if isinstance(exc, DuctworkError | KeyboardInterrupt):
                raise
            msg = f"Prefect could not run the flow: {type(exc).__name__}: {exc}"
            raise SourceError(msg, hint=_SERVER_HINT) from exc
        if raised:
            raise raised[0]
        if state.is_crashed() or (state.is_failed() and not self._failed):
            msg = f"the Prefect flow run ended {state.name}: {state.message}"
            raise SourceError(msg, hint=_SERVER_HINT)

    def submit(self, task: StageTask, progress: ProgressFn = _no_progress) -> Future[StageResult]:
        if not self._in_flow:
            msg = "the prefect executor runs stages only inside its flow (Runner.run)"
            raise UsageError(msg)
        from prefect import task as prefect_task
        from prefect.cache_policies import NONE

        stage = task.stage
        attempts = [0]
        started = time.time()

        def attempt() -> None:
            attempts[0] += 1
            result = execute_stage(task, progress)
            with self._lock:
                self._results[stage] = result
            if not result.ok:
                raise StageAttemptFailed((result.error or {}).get("message") or "failed")

        def transient(_task: Any, _run: Any, _state: Any) -> bool:
            with self._lock:
                result = self._results.get(stage)
            return result is not None and bool((result.error or {}).get("transient"))

        attempt.__qualname__ = attempt.__name__ = f"ductwork_stage_{stage}"
        ptask: Any = prefect_task(
            name=stage,
            task_run_name=stage,
            description=f"{task.kind} stage '{stage}' of {task.pipeline}",
            retries=task.retries,
            retry_delay_seconds=task.retry_delay,
            retry_condition_fn=transient,
            cache_policy=NONE,
            persist_result=False,
        )(attempt)
        fut: Future[StageResult] = Future()

        def done(pfut: Any) -> None:
            with self._lock:
                result = self._results.pop(stage, None)
            if result is None:  # Prefect failed the task before our code ran
                state = getattr(pfut, "state", None)
                result = StageResult(
                    stage=stage,
                    ok=False,
                    started=started,
                    ended=time.time(),
                    error={
                        "type": "PrefectError",
                        "message": f"Prefect did not run stage '{stage}': "
                        f"{getattr(state, 'message', None) or 'no state'}",
                        "hint": _SERVER_HINT,
                        "exit_code": 1,
                        "traceback": "",
                        "transient": True,
                    },
                )
            result.started, result.attempts = started, max(1, attempts[0])
            if not result.ok:
                with self._lock:
                    self._failed.append(stage)
            fut.set_result(result)

        ptask.submit().add_done_callback(done)
        return fut


_SERVER_HINT = (
    "Check PREFECT_API_URL (a running `prefect server start`), or unset it to let Prefect start a "
    "temporary server; a cold one can take a minute "
    "(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, default here 120)."
)


# -- ductwork export prefect ----------------------------------------------------------------------

_MODULE = '''"""Prefect flow for the ductwork pipeline {name!r} (written by `ductwork export prefect`).

Run it once (a flow run on your Prefect server, or on a temporary local one):

    python {module}

Deploy and schedule it, from this directory (see prefect.yaml):

    prefect deploy --all

ductwork still decides what runs: unchanged stages are reused from its artifact store, and a
run after a failure resumes at the failed stage. Each stage that runs is a Prefect task of the
subflow {name!r}.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

import ductwork.api

PIPELINE = Path(__file__).resolve().parent / {pipeline}


@flow(name={flow_name}, description={description})
def {function}(
    only: list[str] | None = None, force: bool = False, workers: int | None = None
) -> dict[str, Any]:
    """Run the pipeline with the Prefect executor; fail the flow run when the pipeline fails."""
    result = ductwork.api.run(
        PIPELINE, executor="prefect", only=only or (), force=force, workers=workers
    )
    summary = {{
        "run_id": result.run_id,
        "status": result.status,
        "stages": {{name: o.status for name, o in result.stages.items()}},
    }}
    if result.exit_code != 0:
        error = (result.error or {{}}).get("message")
        raise RuntimeError(f"ductwork run {{result.run_id}} {{result.status}}: {{error}}")
    return summary


if __name__ == "__main__":
    {function}()
'''

_YAML = """# Prefect deployment of the ductwork pipeline {name!r} (written by `ductwork export prefect`).
#
#   prefect work-pool create {pool} --type process    # once, on your Prefect server
#   prefect deploy --all                     # from this directory
#   prefect worker start --pool {pool}    # runs the scheduled flow runs
#
# The worker runs the flow in this directory, so it needs ductwork installed, the pipeline's
# project and its store (or DUCTWORK_STORE) reachable, as for `ductwork run`.
name: {project}
prefect-version: {version}

build: null
push: null
pull:
  - prefect.deployments.steps.set_working_directory:
      directory: {directory}

deployments:
  - name: {name}
    description: ductwork pipeline {name!r}
    entrypoint: {module}:{function}
    parameters: {{}}
    work_pool:
      name: {pool}
    schedules:
      - cron: "0 6 * * *"       # every day at 06:00 UTC; set active: true to switch it on
        timezone: UTC
        active: false
"""


def _identifier(name: str) -> str:
    ident = re.sub(r"\W+", "_", name).strip("_").lower() or "pipeline"
    return ident if not ident[0].isdigit() else f"p_{ident}"


def write_deployment(
    pipe: Pipeline, directory: str | os.PathLike[str], *, work_pool: str = "local"
) -> list[Path]:
    """Write ``<pipeline>_flow.py`` and ``prefect.yaml`` into ``directory``; return the paths.

    The module finds the pipeline file relative to itself, so the directory can move with the
    project (keep it inside the project, e.g. ``deploy/prefect``).
    """
    if pipe.spec_path is None:
        msg = f"pipeline '{pipe.name}' was built in Python: a Prefect deployment needs its file"
        raise UsageError(msg, hint="Export from a pipeline.yaml: ductwork export prefect DIR FILE")
    out = Path(directory).absolute()
    out.mkdir(parents=True, exist_ok=True)
    ident = _identifier(pipe.name)
    module = f"{ident}_flow.py"
    function = f"run_{ident}"
    try:  # without importing prefect (slow, and it reads its settings when imported)
        version = importlib.metadata.version("prefect")
    except importlib.metadata.PackageNotFoundError:
        version = "3.8.8"  # the version this template was tested with
    flow_file = out / module
    flow_file.write_text(
        _MODULE.format(
            name=pipe.name,
            module=module,
            pipeline=_py_str(Path(os.path.relpath(pipe.spec_path, out)).as_posix()),
            flow_name=_py_str(f"ductwork-{pipe.name}"),
            description=_py_str(f"ductwork pipeline '{pipe.name}'"),
            function=function,
        ),
        encoding="utf-8",
    )
    yaml_file = out / "prefect.yaml"
    yaml_file.write_text(
        _YAML.format(
            name=pipe.name,
            project=f"ductwork-{ident}",
            version=version,
            directory=_yaml_str(str(out)),
            module=module,
            function=function,
            pool=work_pool,
        ),
        encoding="utf-8",
    )
    return [flow_file, yaml_file]


def _py_str(text: str) -> str:
    import json

    return json.dumps(text)  # a JSON string is a valid Python string literal


def _yaml_str(text: str) -> str:
    import json

    return json.dumps(text)  # a JSON string is a valid YAML scalar, quoted and escaped

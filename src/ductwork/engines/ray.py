"""``executor: ray``: each stage runs as a Ray task.

    executor: {kind: ray, address: local}      # local (default) | auto | host:port | ray://host:port

The runner stays in this process (the driver): it plans, reads the cache, records. Only the
:class:`~ductwork.core.execute.StageTask` (a few KB: params, input manifests, store root) goes
to a worker, which reads its inputs from the artifact store and publishes its outputs there;
tables never pass through the driver or Ray's object store. So the store root (and the project
directory, for source files and ``uses:`` modules) must be reachable from every worker at the
same path: the same machine, a shared filesystem, or an object store (``DUCTWORK_STORE=s3://``).
The first submit checks this on a worker and says so when it is not.

Per-stage ``resources`` become ``num_cpus`` / ``memory`` / ``num_gpus``; ``retries`` becomes
``max_retries`` (a worker that died: Ray re-runs the task) and ``retry_exceptions`` with
:class:`TransientStageError` only (a transient failure inside the stage; data and spec errors are
returned, not raised, so Ray never retries them). A re-run attempt writes the same
content-addressed objects, and publication is atomic, so the run completes with the same hashes.

``address: local`` starts a Ray cluster for the run (on 127.0.0.1, no dashboard) and stops it
afterwards; requests larger than this machine are capped there (with a warning) so a
pipeline written for a big cluster still runs on a laptop. The cluster starts on the first stage
that runs, so a run whose stages are all cached starts no cluster.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path
from typing import Any

from ductwork.core.contract import ProgressFn, _no_progress
from ductwork.core.execute import StageResult, StageTask, execute_stage
from ductwork.core.executors import Executor
from ductwork.errors import DuctworkError, SourceError, UsageError, import_optional

_log = logging.getLogger(__name__)
_ADDRESS_RE = re.compile(r"^(local|auto|ray://[^\s/:]+(:\d+)?|[^\s/:]+:\d+)$")
_AUTH_HINT = (
    "Check the address (ray status on the head node shows it). Clusters started with "
    "`ray start` use token authentication by default: set RAY_AUTH_MODE=token here too, with "
    "the cluster's token in ~/.ray/auth_token or RAY_AUTH_TOKEN."
)


class TransientStageError(Exception):
    """Raised in a worker for a transiently failed attempt, so Ray's ``retry_exceptions`` re-runs
    it. It carries the attempt's :class:`StageResult` for when no attempt is left."""

    def __init__(self, result: StageResult) -> None:
        super().__init__(f"stage '{result.stage}': {(result.error or {}).get('message')}")
        self.result = result

    def __reduce__(self) -> tuple[Any, ...]:
        return (TransientStageError, (self.result,))


def _attempt_number() -> int | None:
    """0 for the first attempt of the running Ray task, 1 for the first retry, ... (None if
    this Ray does not say: then every transient failure is raised, and the last one is turned
    back into a result by the driver)."""
    try:
        from ray._private import worker

        core: Any = getattr(worker.global_worker, "core_worker", None)
        return int(core.get_current_task_attempt_number())
    except Exception:
        return None


def run_stage_on_worker(task: StageTask) -> StageResult:
    """The Ray task: run one stage in a worker, against the shared store."""
    if task.project_dir and task.project_dir not in sys.path:
        sys.path.insert(0, task.project_dir)  # `uses: module:function` in the project
    attempt = _attempt_number()
    result = execute_stage(task)
    result.attempts = (attempt or 0) + 1
    transient = not result.ok and bool((result.error or {}).get("transient"))
    if transient and (attempt is None or attempt < task.retries):
        if attempt is not None:  # another attempt follows: wait before it, as declared
            time.sleep(task.retry_delay)
        raise TransientStageError(result)
    return result


def probe_store(store_root: str, project_dir: str, token: str) -> list[str]:
    """Runs on a worker: what of the driver's store and project it cannot see."""
    missing = []
    marker = Path(store_root) / f".ray-probe-{token}"
    try:
        if marker.read_text() != token:
            missing.append(f"the store at {store_root}")
    except OSError:
        missing.append(f"the store at {store_root}")
    if project_dir and not Path(project_dir).is_dir():
        missing.append(f"the project directory {project_dir}")
    return missing


def ray_options(
    task: StageTask, limits: dict[str, float] | None = None
) -> tuple[dict[str, Any], list[str]]:
    """The ``.options()`` of a stage's Ray task, and notes about requests that were capped.

    ``limits`` (the totals of a local cluster started for the run) caps a request this machine
    cannot meet; against a real cluster a request is passed as is (Ray waits for a node, or its
    autoscaler adds one).
    """
    r = task.resources
    want: dict[str, float] = {"num_cpus": r.cpus if r and r.cpus is not None else 1.0}
    if r and r.memory:
        want["memory"] = r.memory
    if r and r.gpus:
        want["num_gpus"] = r.gpus
    notes = []
    if limits is not None:
        for key, total_key, unit in (
            ("num_cpus", "CPU", "CPUs"),
            ("memory", "memory", "bytes of memory"),
            ("num_gpus", "GPU", "GPUs"),
        ):
            have = limits.get(total_key, 0.0)
            if key in want and want[key] > have:
                notes.append(
                    f"resources: asks for {want[key]:g} {unit}, the local Ray cluster has "
                    f"{have:g}: capped"
                )
                want[key] = have
        want = {k: v for k, v in want.items() if k == "num_cpus" or v > 0}
    opts: dict[str, Any] = {
        "name": task.stage,
        "max_retries": task.retries,
        "retry_exceptions": [TransientStageError],
        "num_cpus": want["num_cpus"],
    }
    if "memory" in want:
        opts["memory"] = int(want["memory"])
    if "num_gpus" in want:
        opts["num_gpus"] = want["num_gpus"]
    return opts, notes


def _failed(task: StageTask, exc: BaseException, started: float) -> StageResult:
    """A StageResult for an attempt Ray could not complete (the worker died, ...)."""
    cause = exc if isinstance(exc, TransientStageError) else getattr(exc, "cause", None)
    if isinstance(cause, TransientStageError):  # retries used up
        return cause.result
    name = type(exc).__name__
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else name
    return StageResult(
        stage=task.stage,
        ok=False,
        started=started,
        ended=time.time(),
        attempts=task.retries + 1,
        error={
            "type": name,
            "message": f"the Ray task of stage '{task.stage}' failed: {name}: {text}",
            "hint": "A worker that dies (killed, out of memory) is re-run `retries:` times; "
            "the worker logs are in the Ray session directory (…/ray/session_latest/logs).",
            "exit_code": 1,
            "traceback": "",
            "transient": True,
        },
    )


class RayExecutor(Executor):
    """Stages as Ray tasks; concurrency comes from the cluster's resources, not ``workers``."""

    name = "ray"

    def __init__(self, workers: int, *, address: str | None = None, store_root: str = "") -> None:
        super().__init__(workers)
        import_optional("ray", extra="ray", feature="executor: ray")
        self.address = (address or "local").strip()
        if not _ADDRESS_RE.match(self.address):
            msg = f"executor address '{self.address}' is not a Ray address"
            raise UsageError(
                msg, hint="Use local (a cluster for this run), auto, host:port or ray://host:port."
            )
        self.store_root = store_root
        self._lock = threading.Lock()
        self._ray: Any = None
        self._remote: Any = None
        self._owned = False  # this executor called ray.init, so it calls ray.shutdown
        self._limits: dict[str, float] | None = None
        self._failure: DuctworkError | None = None
        self._refs: list[Any] = []

    # -- the cluster -----------------------------------------------------------------------------
    def _start(self, project_dir: str) -> None:
        """Start or join the cluster once (on the first stage that runs); remember a failure."""
        with self._lock:
            if self._failure is not None:
                raise self._failure
            if self._remote is not None:
                return
            try:
                self._connect()
                self._check_store(project_dir)
            except DuctworkError as exc:
                self._failure = exc
                raise

    def _connect(self) -> None:
        ray: Any = import_optional("ray", extra="ray", feature="executor: ray")
        self._ray = ray
        quiet = {"log_to_driver": False, "logging_level": logging.WARNING}
        if ray.is_initialized():  # the caller's own ray.init (a notebook, a Ray job): reuse it
            pass
        elif self.address == "local":
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            ray.init(
                address="local",  # a new cluster, even when RAY_ADDRESS names another
                num_cpus=os.cpu_count() or 1,
                _node_ip_address="127.0.0.1",
                include_dashboard=False,
                **quiet,
            )
            self._owned = True
            self._limits = {k: float(v) for k, v in ray.cluster_resources().items()}
        else:
            try:
                ray.init(address=self.address, **quiet)
            except Exception as exc:
                text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                msg = f"cannot connect to the Ray cluster at {self.address}: {type(exc).__name__}: {text}"
                raise SourceError(msg, hint=_AUTH_HINT) from exc
            self._owned = True
        self._remote = ray.remote(run_stage_on_worker)

    def _check_store(self, project_dir: str) -> None:
        """The workers must see the store (and the project) at the driver's paths."""
        if not self.store_root or "://" in self.store_root:
            return  # an object store: every worker reaches it by URL
        ray = self._ray
        token = uuid.uuid4().hex
        marker = Path(self.store_root) / f".ray-probe-{token}"
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(token)
        try:
            probe = ray.remote(probe_store).options(num_cpus=0, max_retries=1)
            missing = ray.get(probe.remote(self.store_root, project_dir, token), timeout=300)
        finally:
            marker.unlink(missing_ok=True)
        if missing:
            msg = f"the Ray workers cannot see {' and '.join(missing)}"
            raise UsageError(
                msg,
                hint="Stages read and write artifacts in the store directly. Run the cluster on "
                "this machine, put the store on a filesystem every node mounts at the same "
                "path (DUCTWORK_STORE=/shared/path), or use an object store "
                "(DUCTWORK_STORE=s3://bucket/prefix).",
            )

    # -- the executor interface -------------------------------------------------------------------
    def submit(self, task: StageTask, progress: ProgressFn = _no_progress) -> Future[StageResult]:
        self._start(task.project_dir)
        opts, notes = ray_options(task, self._limits)
        for note in notes:
            _log.warning("stage '%s': %s", task.stage, note)
        # a kind class travels by reference (its module path); only one defined in __main__
        # (a script, a notebook) is sent by value, which Ray's cloudpickle can do
        main = task.kind_cls is not None and task.kind_cls.__module__ == "__main__"
        shipped = task if main else replace(task, kind_cls=None)
        started = time.time()
        ref = self._remote.options(**opts).remote(shipped)
        self._refs.append(ref)
        fut: Future[StageResult] = Future()

        def done(raw: Future[StageResult]) -> None:
            try:
                result = raw.result()
            except BaseException as exc:
                result = _failed(task, exc, started)
            result.logs[:0] = notes
            fut.set_result(result)

        ref.future().add_done_callback(done)
        return fut

    def shutdown(self, *, cancel: bool = False) -> None:
        ray = self._ray
        if ray is None:
            return
        if cancel:
            for ref in self._refs:
                with contextlib.suppress(Exception):  # finished already, or the cluster is gone
                    ray.cancel(ref, force=True)
        self._refs.clear()
        if self._owned and ray.is_initialized():
            ray.shutdown()  # stops a local cluster; only disconnects from a remote one
        self._remote = None

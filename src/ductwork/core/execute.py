"""Running one stage: a pure function of (params, input artifacts) -> output artifacts.

:func:`execute_stage` is what every executor calls, in this process, a worker process or (later)
a Ray task. It takes a picklable :class:`StageTask`, reads inputs from the store, runs the kind,
writes the outputs to the store, checks the invariants and returns a :class:`StageResult`.
It never touches the run records: the runner does that with the result.
"""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ductwork.core.contract import (
    ArtifactInfo,
    InputArtifact,
    Inputs,
    Output,
    ProgressFn,
    StageContext,
    StageKind,
    _no_progress,
)
from ductwork.core.graph import Resources
from ductwork.core.store import Store, task_store
from ductwork.errors import (
    DataError,
    DuctworkError,
    InvariantError,
    SourceError,
    StoreError,
)


@dataclass
class StageTask:
    """Everything needed to run one stage, picklable."""

    run_id: str
    stage: str
    kind: str
    kind_path: str
    params: Any  # the validated StageParams model
    inputs: dict[str, ArtifactInfo]
    outputs: dict[str, Output]
    expect: list[dict[str, Any]]
    fingerprint: str
    store_root: str
    project_dir: str
    allow_outside_project: bool = False
    kind_cls: Any = None  # set for in-process execution (e.g. kinds defined in __main__)
    pipeline: str = ""
    store_url: str = ""  # an object store (s3://...): inputs are downloaded where this runs
    resources: Resources | None = None  # where it may run (executors map it); not fingerprinted
    retries: int = 0  # re-runs of a failed attempt when the failure is transient
    retry_delay: float = 0.0  # seconds between attempts


@dataclass
class StageResult:
    stage: str
    ok: bool
    outputs: dict[str, ArtifactInfo] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    rows_in: int | None = None
    rows_out: int | None = None
    started: float = 0.0
    ended: float = 0.0
    error: dict[str, Any] | None = None
    logs: list[str] = field(default_factory=list)
    attempts: int = 1  # > 1 when retries re-ran a transient failure


def _resolve_kind(task: StageTask) -> type[StageKind[Any]]:
    if task.kind_cls is not None:
        cls: type[StageKind[Any]] = task.kind_cls
        return cls
    import importlib

    module_name, _, attr = task.kind_path.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj  # type: ignore[no-any-return]


def is_transient(exc: BaseException) -> bool:
    """Whether another attempt of the stage could succeed (what ``retries:`` re-runs).

    ductwork's own errors are deterministic (bad data, spec, usage, a gate, a broken invariant:
    the same inputs fail the same way) except the ones about reaching the outside (a source,
    the store). OSError and unexpected exceptions may be transient (a full disk, a flaky
    mount, a worker short of memory).
    """
    if isinstance(exc, SourceError | StoreError):
        return True
    return not isinstance(exc, DuctworkError)


def _error_dict(exc: BaseException, stage: str) -> dict[str, Any]:
    if isinstance(exc, DuctworkError):
        return {
            "type": type(exc).__name__,
            "message": exc.message,
            "hint": exc.hint,
            "exit_code": exc.exit_code,
            "traceback": traceback.format_exc(),
            "transient": is_transient(exc),
        }
    return {
        "type": type(exc).__name__,
        "message": f"{type(exc).__name__}: {exc}",
        "hint": None,
        "exit_code": 1,
        "traceback": traceback.format_exc(),
        "transient": is_transient(exc),
    }


def _store_output(store: Store, value: Any, spec: Output, name: str) -> ArtifactInfo:
    import polars as pl

    if isinstance(value, InputArtifact):  # an input passed through unchanged: same artifact
        if value.info.type != spec.type:
            msg = (
                f"output '{name}' is a {spec.type}, but input '{value.name}' is a {value.info.type}"
            )
            raise InvariantError(msg)
        return value.info
    if spec.type == "table":
        if not isinstance(value, pl.DataFrame | pl.LazyFrame):
            msg = f"output '{name}' must be a polars DataFrame or LazyFrame, got {type(value).__name__}"
            raise InvariantError(msg)
        try:
            return store.put_table(value)
        except pl.exceptions.PolarsError as exc:
            # a lazy plan fails only when it runs, i.e. here: name the output and the cause
            text = str(exc).strip().split("\n")[0]
            msg = f"computing output '{name}' failed: {type(exc).__name__}: {text}"
            raise DataError(msg) from exc
    if spec.type == "json":
        try:
            return store.put_json(value)
        except ValueError as exc:  # NaN/inf are not JSON
            msg = f"output '{name}' is not valid JSON: {exc}"
            raise InvariantError(msg) from exc
    if spec.type == "text":
        if not isinstance(value, str):
            msg = f"output '{name}' must be a str, got {type(value).__name__}"
            raise InvariantError(msg)
        return store.put_text(value)
    path = Path(value)
    if not path.is_dir():
        msg = f"output '{name}' must be a directory path, got {value!r}"
        raise InvariantError(msg)
    return store.put_files(path)


def builtin_violations(
    outputs: Mapping[str, Output], infos: Mapping[str, ArtifactInfo]
) -> list[str]:
    """The invariants every stage has: declared outputs present and non-empty where declared."""
    problems = []
    for name, spec in outputs.items():
        info = infos.get(name)
        if info is None:
            problems.append(f"declared output '{name}' was not produced")
        elif spec.non_empty and spec.type == "table" and not info.rows:
            problems.append(f"output '{name}' must not be empty but has 0 rows")
    return problems


def expect_violations(
    rules: list[dict[str, Any]], infos: Mapping[str, ArtifactInfo], main: str
) -> list[str]:
    """User ``expect:`` rules (the validate vocabulary) checked on output tables."""
    if not rules:
        return []
    import polars as pl

    from ductwork.core.checks import expectation_violations

    by_output: dict[str, list[dict[str, Any]]] = {}
    for rule in rules:
        r = dict(rule)
        out = r.pop("output", main)
        by_output.setdefault(out, []).append(r)
    problems = []
    for out, rs in by_output.items():
        info = infos.get(out)
        if info is None or info.type != "table":
            problems.append(f"expect rules name output '{out}', which is not a table output")
            continue
        for p in expectation_violations(pl.scan_parquet(info.path), rs):
            problems.append(f"output '{out}': {p}")
    return problems


def _local_inputs(store: Store, task: StageTask) -> Inputs:
    """The task's inputs as local files (an object store's are downloaded into its read cache)."""
    return Inputs({n: InputArtifact(n, store.localize(i)) for n, i in task.inputs.items()})


def execute_stage(task: StageTask, progress: ProgressFn = _no_progress) -> StageResult:
    """Run one stage and publish its outputs. Never raises: failures are in the result."""
    started = time.time()
    store = task_store(task.store_root, task.store_url, task.project_dir)
    result = StageResult(stage=task.stage, ok=False, started=started)
    with store.tmp_dir() as tmp:
        ctx = StageContext(
            stage=task.stage,
            run_id=task.run_id,
            project_dir=Path(task.project_dir),
            work_dir=tmp,
            allow_outside_project=task.allow_outside_project,
            progress_fn=progress,
            store_dir=Path(task.store_root),
            pipeline=task.pipeline,
            fingerprint=task.fingerprint,
        )
        try:
            kind_cls = _resolve_kind(task)
            kind = kind_cls()
            inputs = _local_inputs(store, task)
            values = kind.run(task.params, inputs, ctx)
            missing = [n for n in task.outputs if n not in values]
            if missing:
                msg = f"the stage returned no value for output(s) {', '.join(missing)}"
                raise InvariantError(msg)
            infos = {
                name: _store_output(store, values[name], spec, name)
                for name, spec in task.outputs.items()
            }
            problems = builtin_violations(task.outputs, infos)
            problems += kind.check(task.params, inputs, infos, ctx)
            problems += expect_violations(task.expect, infos, next(iter(task.outputs)))
            if problems:
                msg = "invariant broken: " + "; ".join(problems)
                raise InvariantError(msg)
            result.outputs = infos
            result.ok = True
            table_rows = [
                i.rows for i in task.inputs.values() if i.type == "table" and i.rows is not None
            ]
            result.rows_in = sum(table_rows) if table_rows else None
            main = infos[next(iter(task.outputs))]
            result.rows_out = main.rows
        except BaseException as exc:  # the runner decides what a failure means
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            result.error = _error_dict(exc, task.stage)
        result.metrics = _jsonable(ctx.metrics)
        result.logs = ctx.logs
    result.ended = time.time()
    return result


def preview_stage(task: StageTask) -> dict[str, Any] | None:
    """The kind's dry-run preview of a stage whose inputs exist; errors become ``{"error": ...}``."""
    store = task_store(task.store_root, task.store_url, task.project_dir)
    with store.tmp_dir() as tmp:
        ctx = StageContext(
            stage=task.stage,
            run_id=task.run_id,
            project_dir=Path(task.project_dir),
            work_dir=tmp,
            allow_outside_project=task.allow_outside_project,
            store_dir=Path(task.store_root),
            pipeline=task.pipeline,
            fingerprint=task.fingerprint,
        )
        try:
            kind = _resolve_kind(task)()
            inputs = _local_inputs(store, task)
            found = kind.preview(task.params, inputs, ctx)
        except Exception as exc:  # a preview never fails the plan
            return {"error": _error_dict(exc, task.stage)["message"]}
    return _jsonable(found) if found is not None else None


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)

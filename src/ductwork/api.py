"""The Python API the CLI and notebooks share: one plain function per verb.

    import ductwork as dw
    pipe = dw.load("examples/flights/pipeline.yaml")
    result = dw.run(pipe)                   # same options as the CLI: only, from_, to, force
    df = dw.artifact(pipe, "joined")        # the latest artifact of a stage, as a Polars frame

Pipelines can be written in Python too::

    @dw.stage
    def delayed(flights: pl.LazyFrame, threshold: int = 15) -> pl.LazyFrame:
        return flights.with_columns(delayed=pl.col("dep_delay") > threshold)

    pipe = dw.pipeline("demo", [
        dw.Stage("flights", "extract", params={"path": "data/flights.parquet"}),
        delayed,                            # inputs default to the function's parameter names
    ])
"""

from __future__ import annotations

import inspect
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, overload

from ductwork.config import Settings, load_settings
from ductwork.core.contract import ArtifactInfo
from ductwork.core.events import Event
from ductwork.core.graph import Pipeline
from ductwork.core.records import Records, open_records
from ductwork.core.runner import Runner, RunOptions, RunResult
from ductwork.core.store import Store, open_store
from ductwork.errors import StoreError, UsageError, did_you_mean

if TYPE_CHECKING:
    import polars as pl

    from ductwork.ml.feast import ExportedRepo
    from ductwork.ml.scoring_batch import ScoreSummary

__all__ = [
    "Project",
    "Stage",
    "artifact",
    "artifact_info",
    "export",
    "export_feast",
    "export_prefect",
    "gc",
    "lineage",
    "load",
    "models",
    "open_project",
    "pipeline",
    "plan",
    "predict",
    "promote",
    "rollback",
    "run",
    "runs",
    "search",
    "show",
    "stage",
    "tune_worker",
]


# -- loading ----------------------------------------------------------------------------------


def load(path: str | os.PathLike[str] = "pipeline.yaml", *, profile: str | None = None) -> Pipeline:
    """Load and validate a pipeline file (raises SpecError listing every problem)."""
    from ductwork.spec import load_pipeline

    spec_path = Path(path)
    if spec_path.is_dir():
        spec_path = spec_path / "pipeline.yaml"
    project_dir = spec_path.absolute().parent
    settings = load_settings(project_dir)
    _export_dotenv(project_dir / ".env")
    project = str(project_dir)
    if project not in sys.path:
        sys.path.insert(0, project)  # so `uses: module:function` finds project modules
    return load_pipeline(spec_path, profile=profile or settings.profile)


def _export_dotenv(path: Path) -> None:
    """Make a project's .env visible to ${env:...} and to secret env vars (never overriding)."""
    if not path.is_file():
        return
    from dotenv import dotenv_values

    for key, value in dotenv_values(path).items():
        if value is not None:
            os.environ.setdefault(key, value)


@dataclass
class Stage:
    """A stage declared in Python: the same fields as an item of ``stages:`` in YAML."""

    name: str
    kind: str | Callable[..., Any]
    inputs: list[str] | dict[str, str] | None = None
    params: dict[str, Any] = field(default_factory=dict)
    expect: list[dict[str, Any]] = field(default_factory=list)
    cache: bool = True
    description: str = ""
    after: list[str] = field(default_factory=list)
    resources: dict[str, Any] | None = None  # {cpus, memory, gpus}: docs/executors.md
    retries: int = 0
    retry_delay: float | str = 0.0

    def to_entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "name": self.name,
            "params": dict(self.params),
            "expect": list(self.expect),
            "cache": self.cache,
            "description": self.description,
            "after": list(self.after),
            "resources": self.resources,
            "retries": self.retries,
            "retry_delay": self.retry_delay,
        }
        if callable(self.kind):
            entry["kind"] = "python"
            entry["uses"] = self.kind
            if self.inputs is None:
                given = set(self.params.get("args", {}))
                entry["inputs"] = [n for n in _signature_inputs(self.kind) if n not in given]
        else:
            entry["kind"] = self.kind
        if self.inputs is not None:
            entry["inputs"] = self.inputs
        return entry


def _signature_inputs(fn: Callable[..., Any]) -> list[str]:
    """Parameters without defaults are inputs (Hamilton style); ``ctx`` is the stage context."""
    out = []
    for p in inspect.signature(fn).parameters.values():
        if p.name == "ctx" or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        if p.default is inspect.Parameter.empty:
            out.append(p.name)
    return out


@overload
def stage(fn: Callable[..., Any], /) -> Stage: ...
@overload
def stage(
    *,
    name: str | None = None,
    inputs: list[str] | dict[str, str] | None = None,
    outputs: dict[str, str] | None = None,
    expect: list[dict[str, Any]] | None = None,
    cache: bool = True,
    **args: Any,
) -> Callable[[Callable[..., Any]], Stage]: ...


def stage(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    inputs: list[str] | dict[str, str] | None = None,
    outputs: dict[str, str] | None = None,
    expect: list[dict[str, Any]] | None = None,
    cache: bool = True,
    **args: Any,
) -> Stage | Callable[[Callable[..., Any]], Stage]:
    """Turn a function into a stage (kind ``python``); keyword ``args`` are passed to it."""

    def wrap(f: Callable[..., Any]) -> Stage:
        params: dict[str, Any] = {"args": args}
        if outputs:
            params["outputs"] = outputs
        return Stage(
            name=name or f.__name__,
            kind=f,
            inputs=inputs,
            params=params,
            expect=list(expect or []),
            cache=cache,
            description=(inspect.getdoc(f) or "").split("\n")[0],
        )

    return wrap(fn) if fn is not None else wrap


def pipeline(
    name: str,
    stages: Sequence[Stage | Mapping[str, Any]],
    *,
    project_dir: str | os.PathLike[str] | None = None,
    executor: Mapping[str, Any] | None = None,
    profile: str | None = None,
) -> Pipeline:
    """Build a pipeline in Python; validated exactly like a pipeline file."""
    from ductwork.spec import build_pipeline

    data: dict[str, Any] = {
        "pipeline": name,
        "stages": [s.to_entry() if isinstance(s, Stage) else dict(s) for s in stages],
    }
    if executor:
        data["executor"] = dict(executor)
    return build_pipeline(
        data, project_dir=Path(project_dir or Path.cwd()).absolute(), profile=profile
    )


# -- the project: store + records ---------------------------------------------------------------


@dataclass
class Project:
    pipeline: Pipeline
    settings: Settings
    store: Store
    records: Records


def open_project(pipe: Pipeline, settings: Settings | None = None) -> Project:
    settings = settings or load_settings(pipe.project_dir)
    local = settings.store_path(pipe.project_dir)  # with an object store: its read cache
    store = open_store(local, settings.store_url() or "", settings)
    url = settings.database_url.get_secret_value() if settings.database_url else None
    records = open_records(url, default=store.root / "records.db", base_dir=pipe.project_dir)
    return Project(pipe, settings, store, records)


def _as_pipeline(p: Pipeline | str | os.PathLike[str]) -> Pipeline:
    return p if isinstance(p, Pipeline) else load(p)


# -- verbs --------------------------------------------------------------------------------------


def run(
    p: Pipeline | str | os.PathLike[str],
    *,
    only: Sequence[str] = (),
    from_: Sequence[str] = (),
    to: Sequence[str] = (),
    force: bool = False,
    dry_run: bool = False,
    executor: str | None = None,
    workers: int | None = None,
    pool: str | None = None,
    on_event: Callable[[Event], None] | None = None,
    address: str | None = None,
) -> RunResult:
    """Run a pipeline (or the selected part of it) and return the result of every stage.

    ``executor`` is local, ray or prefect (docs/executors.md); ``address`` the Ray cluster.
    """
    pipe = _as_pipeline(p)
    proj = open_project(pipe)
    s = proj.settings
    options = RunOptions(
        only=tuple(only),
        from_=tuple(from_),
        to=tuple(to),
        force=force,
        dry_run=dry_run,
        executor=executor or s.executor,
        workers=workers if workers is not None else s.workers,
        pool=pool or s.pool,
        address=address or s.ray_address,
    )
    try:
        return Runner(pipe, proj.store, proj.records, on_event).run(options)
    finally:
        proj.records.close()


def plan(p: Pipeline | str | os.PathLike[str], **kwargs: Any) -> RunResult:
    """What a run would do: per stage cached or stale, and why. Runs nothing."""
    return run(p, dry_run=True, **kwargs)


def _latest_outputs(proj: Project, stage_name: str) -> tuple[dict[str, str], dict[str, Any]]:
    pipe = proj.pipeline
    if stage_name not in pipe.stages:
        msg = f"no stage named '{stage_name}'{did_you_mean(stage_name, pipe.stages)}"
        raise UsageError(msg, hint=f"Stages: {', '.join(pipe.stages)}")
    last = proj.records.last_stage_run(stage_name, pipe.name, ("ok", "cached", "saved"))
    if last is None:
        msg = f"stage '{stage_name}' has no artifacts yet"
        raise UsageError(msg, hint=f"Run it first: ductwork run --to {stage_name}")
    return proj.records.stage_io(last["run_id"], stage_name)["out"], last


def artifact_info(
    p: Pipeline | str | os.PathLike[str], stage_name: str, output: str | None = None
) -> ArtifactInfo:
    """The manifest of the latest artifact of a stage output."""
    pipe = _as_pipeline(p)
    proj = open_project(pipe)
    outs, _ = _latest_outputs(proj, stage_name)
    name = output or pipe.stages[stage_name].main_output
    if name not in outs:
        msg = f"stage '{stage_name}' has no output '{name}'{did_you_mean(name, outs)}"
        raise UsageError(msg, hint=f"Outputs: {', '.join(outs)}")
    return proj.store.info(outs[name])


def artifact(
    p: Pipeline | str | os.PathLike[str], stage_name: str, output: str | None = None
) -> Any:
    """The latest artifact of a stage: a Polars DataFrame for tables, data for json, str for text."""
    info = artifact_info(p, stage_name, output)
    return read_artifact(info)


def read_artifact(info: ArtifactInfo) -> Any:
    import json

    if info.type == "table":
        import polars as pl

        return pl.read_parquet(info.path)
    if info.type == "json":
        return json.loads(Path(info.path).read_bytes())
    if info.type == "text":
        return Path(info.path).read_text(encoding="utf-8")
    return Path(info.path)


def show(
    p: Pipeline | str | os.PathLike[str], stage_name: str, output: str | None = None, head: int = 10
) -> dict[str, Any]:
    """Schema, first rows and per-column stats of a stage's latest artifact."""
    info = artifact_info(p, stage_name, output)
    out: dict[str, Any] = {
        "stage": stage_name,
        "output": output,
        **info.to_dict(),
        "path": info.path,
    }
    if info.type == "table":
        import polars as pl

        lf = pl.scan_parquet(info.path)
        out["head"] = lf.head(head).collect().to_dicts()
        stats = lf.describe() if hasattr(lf, "describe") else lf.collect().describe()
        out["stats"] = stats.to_dicts()
    elif info.type == "json":
        out["value"] = read_artifact(info)
    elif info.type == "text":
        out["value"] = read_artifact(info)[:4000]
    return out


def export(
    p: Pipeline | str | os.PathLike[str],
    stage_name: str,
    file: str | os.PathLike[str],
    output: str | None = None,
) -> Path:
    """Write a stage's latest artifact to a file (format from the extension for tables)."""
    import shutil

    info = artifact_info(p, stage_name, output)
    target = Path(file)
    target.parent.mkdir(parents=True, exist_ok=True)
    if info.type == "table":
        import polars as pl

        lf = pl.scan_parquet(info.path)
        suffix = target.suffix.lower()
        if suffix == ".parquet":
            shutil.copyfile(info.path, target)
        elif suffix in (".csv", ".tsv"):
            flat = _flatten_nested(lf)
            flat.sink_csv(target, separator="\t" if suffix == ".tsv" else ",")
        elif suffix in (".ndjson", ".jsonl"):
            lf.sink_ndjson(target)
        elif suffix == ".json":
            lf.collect().write_json(target)
        else:
            msg = f"cannot export a table as '{suffix or target.name}'"
            raise UsageError(msg, hint="Use .parquet, .csv, .tsv, .ndjson/.jsonl or .json.")
    elif info.type == "files":
        shutil.copytree(info.path, target, dirs_exist_ok=True)
    else:
        shutil.copyfile(info.path, target)
    return target


def export_prefect(
    p: Pipeline | str | os.PathLike[str], directory: str | os.PathLike[str]
) -> list[Path]:
    """Write a deployable Prefect flow module and ``prefect.yaml`` for a pipeline into a dir."""
    from ductwork.engines.prefect import write_deployment

    return write_deployment(_as_pipeline(p), directory)


def export_feast(
    p: Pipeline | str | os.PathLike[str],
    directory: str | os.PathLike[str],
    stage_name: str,
    *,
    entities: Sequence[str],
    output: str | None = None,
    timestamp: str | None = None,
    ttl: str | int = "1d",
) -> ExportedRepo:
    """Publish a stage's table as a Feast feature repository in a dir (docs/feature-store.md).

    Needs no Feast: it writes feature_store.yaml, features.py and a Parquet copy of the table.
    """
    from ductwork.ml.feast import write_repo

    pipe = _as_pipeline(p)
    info = artifact_info(pipe, stage_name, output)
    name = output or pipe.stages[stage_name].main_output
    if info.type != "table":
        msg = f"stage '{stage_name}' output '{name}' is {info.type}; Feast serves a table"
        raise UsageError(msg, hint="Export a table output (features, transform, extract, ...).")
    main = name == pipe.stages[stage_name].main_output
    return write_repo(
        info.path,
        directory,
        project=pipe.name,
        view=stage_name if main else f"{stage_name}_{name}",
        entities=entities,
        timestamp=timestamp,
        ttl=ttl,
        origin=f"pipeline '{pipe.name}', stage '{stage_name}'" + ("" if main else f" ({name})"),
        sha256=info.sha256,
    )


def tune_worker(
    p: Pipeline | str | os.PathLike[str],
    stage_name: str,
    *,
    jobs: int | None = None,
    on_progress: Callable[[float, float | None, str], None] | None = None,
) -> dict[str, Any]:
    """Run trials of a tune stage's study in PostgreSQL from this process (docs/stages/tune.md).

    The study is the one the stage computes from the latest artifacts of its inputs; trials are
    claimed from the study's budget in the database, so this process, the stage's own and any
    other worker together run exactly ``n_trials``. Nothing is published.
    """
    from ductwork.core.contract import InputArtifact, Inputs, StageContext
    from ductwork.stages.tune import TuneParams, join_study

    pipe = _as_pipeline(p)
    if stage_name not in pipe.stages:
        msg = f"no stage named '{stage_name}'{did_you_mean(stage_name, pipe.stages)}"
        raise UsageError(msg, hint=f"Stages: {', '.join(pipe.stages)}")
    node = pipe.stages[stage_name]
    if node.kind != "tune" or not isinstance(node.params, TuneParams):
        msg = f"stage '{stage_name}' is kind {node.kind}; a tune worker runs a tune stage's trials"
        raise UsageError(msg)
    proj = open_project(pipe)
    infos: dict[str, ArtifactInfo] = {}
    for local, ref in node.inputs.items():
        outs, _ = _latest_outputs(proj, ref.stage)
        out = ref.output or pipe.stages[ref.stage].main_output
        infos[local] = proj.store.info(outs[out])
    with proj.store.tmp_dir() as tmp:
        ctx = StageContext(
            stage=stage_name,
            run_id=f"tune-worker-{os.getpid()}",
            project_dir=pipe.project_dir,
            work_dir=tmp,
            allow_outside_project=pipe.allow_outside_project,
            store_dir=proj.store.root,
            pipeline=pipe.name,
        )
        if on_progress is not None:
            ctx.progress_fn = on_progress
        inputs = Inputs({n: InputArtifact(n, proj.store.localize(i)) for n, i in infos.items()})
        summary = join_study(node.params, inputs, ctx, jobs=jobs)
    return {**summary, "stage": stage_name, "log": list(ctx.logs)}


def _flatten_nested(lf: pl.LazyFrame) -> pl.LazyFrame:
    """CSV has no nested types: lists of strings become 'a; b', other nested values JSON."""
    import polars as pl

    exprs = []
    for name, dtype in lf.collect_schema().items():
        if isinstance(dtype, pl.List) and dtype.inner == pl.String:
            exprs.append(pl.col(name).list.join("; "))
        elif dtype.is_nested():
            exprs.append(pl.col(name).map_elements(_json_cell, return_dtype=pl.String))
    return lf.with_columns(exprs) if exprs else lf


def _json_cell(value: Any) -> str:
    import json

    return json.dumps(value.to_list() if hasattr(value, "to_list") else value, default=str)


def runs(p: Pipeline | str | os.PathLike[str], limit: int = 20) -> list[dict[str, Any]]:
    """Recent runs of the pipeline, newest first, with their stage runs."""
    import json

    pipe = _as_pipeline(p)
    proj = open_project(pipe)
    out = []
    for r in proj.records.runs(limit, pipe.name):
        r = dict(r)
        r["options"] = json.loads(r.get("options") or "{}")
        r["summary"] = json.loads(r["summary"]) if r.get("summary") else None
        r["stages"] = [
            {
                k: s[k]
                for k in ("stage", "kind", "status", "duration_s", "rows_in", "rows_out", "error")
            }
            for s in proj.records.stage_runs(r["run_id"])
        ]
        out.append(r)
    return out


def artifacts(p: Pipeline | str | os.PathLike[str], limit: int = 100) -> list[dict[str, Any]]:
    pipe = _as_pipeline(p)
    return open_project(pipe).records.artifacts(limit)


def lineage(
    p: Pipeline | str | os.PathLike[str], target: str, output: str | None = None
) -> dict[str, Any]:
    """Which runs and inputs produced an artifact (a stage name or an artifact id), recursively."""
    pipe = _as_pipeline(p)
    proj = open_project(pipe)
    if target in pipe.stages:
        outs, _ = _latest_outputs(proj, target)
        sha = outs[output or pipe.stages[target].main_output]
    else:
        try:
            sha = proj.store.resolve_prefix(target)
        except StoreError as exc:
            msg = f"'{target}' is neither a stage nor an artifact id{did_you_mean(target, pipe.stages)}"
            raise UsageError(msg) from exc

    def node(sha: str, depth: int) -> dict[str, Any]:
        producers = proj.records.producers(sha)
        info: dict[str, Any] = {"sha256": sha}
        man = proj.records.artifact(sha)
        if man is not None:
            info.update({k: man.get(k) for k in ("type", "rows", "bytes")})
        info["in_store"] = proj.store.find(sha) is not None
        info["produced_by"] = [
            {
                "run_id": r["run_id"],
                "stage": r["stage"],
                "kind": r["kind"],
                "status": r["status"],
                "output": r["output"],
            }
            for r in producers
        ]
        first = next(
            (r for r in producers if r["status"] == "ok"), producers[0] if producers else None
        )
        if first is not None and depth < 50:
            ins = proj.records.stage_io(first["run_id"], first["stage"])["in"]
            info["inputs"] = {name: node(s, depth + 1) for name, s in ins.items()}
        return info

    return node(sha, 0)


def predict(
    model: str | os.PathLike[str],
    input: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    quarantine: str | os.PathLike[str] | None = None,
    keep: Sequence[str] = (),
    chunk_rows: int = 250_000,
    engine: Literal["sklearn", "onnx"] = "sklearn",
    strict: bool = False,
    project: str | os.PathLike[str] = ".",
    progress: Callable[[float, float | None, str], None] | None = None,
) -> ScoreSummary:
    """Score a CSV or Parquet file with a model bundle into a Parquet or CSV file, in chunks.

    ``model`` is a bundle directory or ``NAME@ALIAS`` / ``NAME/VERSION`` in the project's
    registry. Rows that break the model's input contract go to ``quarantine`` (default
    ``<output stem>.quarantine.parquet``, written only when there are any), or with ``strict``
    the first one raises :class:`~ductwork.errors.DataError`.
    """
    from ductwork.ml import require_ml

    require_ml("predict")
    from ductwork.ml.scoring_batch import resolve_model, score_file

    project_dir = Path(project).absolute()
    if project_dir.is_file() or project_dir.suffix in (".yaml", ".yml"):
        project_dir = project_dir.parent
    _export_dotenv(project_dir / ".env")
    if engine not in ("sklearn", "onnx"):
        msg = f"unknown engine '{engine}'{did_you_mean(engine, ('sklearn', 'onnx'))}"
        raise UsageError(msg, hint="Use sklearn or onnx.")
    out = Path(output)
    if out.suffix.lower() not in (".parquet", ".pq", ".csv", ".tsv"):
        msg = f"cannot write predictions as '{out.suffix or out.name}'"
        raise UsageError(msg, hint="Use an output file ending in .parquet or .csv.")
    if quarantine is None:
        quarantine = out.with_name(f"{out.stem}.quarantine.parquet")
    bundle, label = resolve_model(model, project_dir=project_dir)
    return score_file(
        bundle,
        input,
        out,
        None if strict else quarantine,
        model_version=label,
        keep=keep,
        chunk_rows=chunk_rows,
        engine=engine,
        on_invalid="fail" if strict else "quarantine",
        progress=progress,
        write_empty_quarantine=False,
    )


def gc(
    p: Pipeline | str | os.PathLike[str], keep: int = 5, dry_run: bool = False
) -> dict[str, Any]:
    """Delete artifacts no longer referenced by the latest ``keep`` runs of any pipeline."""
    pipe = _as_pipeline(p)
    proj = open_project(pipe)
    if proj.records.running_runs():
        proj.records.mark_interrupted()
        if proj.records.running_runs():
            msg = "a run is in progress on this store"
            raise UsageError(msg, hint="Wait for it to finish, then run gc again.")
    keep_shas = proj.records.referenced_by_latest_runs(keep)
    result = proj.store.gc(keep_shas, dry_run=dry_run)
    pruned = 0 if dry_run else proj.records.cache_prune(keep_shas)
    return {
        "kept_runs": keep,
        "kept_artifacts": len(keep_shas),
        "dry_run": dry_run,
        "cache_entries_removed": pruned,
        **result,
    }


# -- model registry (MLflow) --------------------------------------------------------------------


def _project_dir(project: str | os.PathLike[str]) -> Path:
    """A project directory from a pipeline file or a directory; its .env is exported."""
    path = Path(project).absolute()
    project_dir = path if path.is_dir() or not path.suffix else path.parent
    _export_dotenv(project_dir / ".env")
    return project_dir


def models(
    name: str | None = None, *, project: str | os.PathLike[str] = "."
) -> list[dict[str, Any]]:
    """Registered models with their aliases, or (with ``name``) the versions of one model.

    The registry is MLflow's at ``MLFLOW_TRACKING_URI``, else the project's embedded one
    (``<store>/mlflow/mlflow.db``). ``project`` is the pipeline file or its directory.
    """
    from ductwork.ml import require_ml

    require_ml("the model registry")
    from ductwork.ml import tracking

    project_dir = _project_dir(project)
    if name is None:
        return tracking.list_models(project_dir)
    return tracking.list_versions(name, project_dir)


def promote(
    name: str,
    version: int,
    *,
    alias: str = "champion",
    project: str | os.PathLike[str] = ".",
) -> dict[str, Any]:
    """Point ``name@alias`` at ``version``; ``rollback`` undoes it."""
    from ductwork.ml import require_ml

    require_ml("the model registry")
    from ductwork.ml import tracking

    return tracking.promote(name, version, alias, _project_dir(project))


def rollback(
    name: str, *, alias: str = "champion", project: str | os.PathLike[str] = "."
) -> dict[str, Any]:
    """Move ``name@alias`` back to the version it pointed at before its last move."""
    from ductwork.ml import require_ml

    require_ml("the model registry")
    from ductwork.ml import tracking

    return tracking.rollback(name, alias, _project_dir(project))


# -- vector search --------------------------------------------------------------------------------


def search(
    p: Pipeline | str | os.PathLike[str],
    query: str,
    *,
    index: str | None = None,
    k: int = 5,
    where: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """The ``k`` rows nearest to ``query`` in an index stage's latest collection, best first.

    ``index`` names the stage (needed only when the pipeline has several index stages);
    ``where`` keeps rows whose payload field equals a value (a list: any of them). Each hit is
    ``{"rank", "score", "id", "payload"}``; the query is embedded with the index's model.
    """
    from ductwork.ai import require_ai

    require_ai("ductwork search", module="qdrant_client")
    from ductwork.ai.vectors import search as vector_search

    pipe = _as_pipeline(p)
    stages = [name for name, node in pipe.stages.items() if node.kind == "index"]
    if index is None:
        if len(stages) != 1:
            msg = (
                "the pipeline has no index stage"
                if not stages
                else f"the pipeline has {len(stages)} index stages: {', '.join(stages)}"
            )
            hint = "Add a stage of kind: index" if not stages else "Choose one with --index STAGE."
            raise UsageError(msg, hint=hint)
        index = stages[0]
    elif index not in stages:
        msg = f"'{index}' is not an index stage{did_you_mean(index, stages)}"
        raise UsageError(msg, hint=f"Index stages: {', '.join(stages) or 'none'}")
    proj = open_project(pipe)
    try:
        outs, _ = _latest_outputs(proj, index)
        manifest = read_artifact(proj.store.info(outs[pipe.stages[index].main_output]))
    finally:
        proj.records.close()
    hits = vector_search(
        manifest,
        [query],
        k,
        store_root=proj.store.root,
        where=where,
        project_dir=pipe.project_dir,
    )[0]
    return [{"rank": i, **hit.to_dict()} for i, hit in enumerate(hits, start=1)]

"""The ``ductwork`` command: parse -> call :mod:`ductwork.api` -> render. Nothing else.

Exit codes: 0 ok, 1 a stage failed, 2 usage/spec/data-contract error. JSON (one object per
line) when ``--json`` is given or stdout is not a terminal; Rich tables otherwise.
Heavy modules (polars, pydantic, rich) are imported inside the commands so ``--help`` is fast.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

import click

PIPELINE_ARG = click.argument(
    "pipeline_file",
    metavar="[PIPELINE]",
    default="pipeline.yaml",
    type=click.Path(dir_okay=True),
)


class State:
    json: bool | None = None
    debug: bool = False


STATE = State()


def json_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    def set_json(ctx: click.Context, param: click.Parameter, value: bool | None) -> bool | None:
        if value is not None:
            STATE.json = value
        return value

    return click.option(
        "--json/--no-json",
        "as_json",
        default=None,
        expose_value=False,
        callback=set_json,
        is_eager=True,
        help="JSON lines for machines (default when stdout is not a terminal).",
    )(fn)


def use_json() -> bool:
    if STATE.json is not None:
        return STATE.json
    return not sys.stdout.isatty()


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="ductwork", prog_name="ductwork")
@click.option("--debug", is_flag=True, help="Show tracebacks for unexpected errors.")
def cli(debug: bool) -> None:
    """Build, run and inspect pipelines: extract -> validate -> transform -> load.

    \b
    Quick start:
      ductwork check pipeline.yaml      validate the file, run nothing
      ductwork plan pipeline.yaml       what would run, what is cached, and why
      ductwork run pipeline.yaml        run it (unchanged stages are reused)
      ductwork show STAGE               schema, rows and stats of a stage's artifact

    Every command takes the pipeline file as its first argument (default: ./pipeline.yaml),
    and --json for machine-readable output. Settings come from DUCTWORK_* environment
    variables or a .env file next to the pipeline (DUCTWORK_STORE, DUCTWORK_PROFILE, ...).
    """
    STATE.debug = debug


# -- run / plan / check -------------------------------------------------------------------------


def _selection_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    opts = [
        click.option(
            "--only",
            multiple=True,
            metavar="STAGE",
            help="Run only this stage (repeatable); others use saved artifacts.",
        ),
        click.option(
            "--from",
            "from_",
            multiple=True,
            metavar="STAGE",
            help="Run this stage and everything downstream of it.",
        ),
        click.option(
            "--to",
            multiple=True,
            metavar="STAGE",
            help="Run this stage and everything it depends on.",
        ),
        click.option(
            "--profile",
            metavar="NAME",
            help="Apply each stage's `profiles: NAME` overrides (or DUCTWORK_PROFILE).",
        ),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


@cli.command()
@PIPELINE_ARG
@_selection_options
@click.option("--force", is_flag=True, help="Re-run selected stages even when cached.")
@click.option(
    "--dry-run", is_flag=True, help="Show what would run and why; run nothing (same as plan)."
)
@click.option(
    "--executor",
    type=click.Choice(["local", "ray", "prefect"]),
    help="Where stages run (default: the pipeline's executor.kind, else local).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    help="Stages run at once (default: the pipeline's executor.workers).",
)
@click.option(
    "--pool",
    type=click.Choice(["thread", "process"]),
    help="thread (Polars work) or process (CPU-bound Python).",
)
@click.option(
    "-v", "--verbose", is_flag=True, help="Print a line per finished stage when not on a terminal."
)
@json_option
def run(
    pipeline_file: str,
    only: tuple[str, ...],
    from_: tuple[str, ...],
    to: tuple[str, ...],
    profile: str | None,
    force: bool,
    dry_run: bool,
    executor: str | None,
    workers: int | None,
    pool: str | None,
    verbose: bool,
) -> int:
    """Run a pipeline. Unchanged stages are reused from the artifact store.

    A failed stage keeps every artifact made before it; run again after a fix and only
    the failed stage and what depends on it run.

    \b
    Examples:
      ductwork run                          the pipeline.yaml here
      ductwork run examples/flights         a directory with a pipeline.yaml
      ductwork run --only joined            re-run one stage from saved inputs
      ductwork run --from checked --force   re-run a stage and everything after it
      ductwork run --json | jq .status      machine-readable events and summary
    """
    from ductwork import api

    pipe = api.load(pipeline_file, profile=profile)
    renderer = _renderer(verbose=verbose)
    result = api.run(
        pipe,
        only=only,
        from_=from_,
        to=to,
        force=force,
        dry_run=dry_run,
        executor=executor,
        workers=workers,
        pool=pool,
        on_event=renderer,
    )
    return result.exit_code


@cli.command()
@PIPELINE_ARG
@_selection_options
@json_option
def plan(
    pipeline_file: str,
    only: tuple[str, ...],
    from_: tuple[str, ...],
    to: tuple[str, ...],
    profile: str | None,
) -> int:
    """Show the DAG and, per stage, whether it is cached or stale and why."""
    from ductwork import api

    pipe = api.load(pipeline_file, profile=profile)
    result = api.plan(pipe, only=only, from_=from_, to=to, on_event=_renderer())
    return result.exit_code


@cli.command()
@PIPELINE_ARG
@click.option("--profile", metavar="NAME", help="Validate with this profile's overrides applied.")
@json_option
def check(pipeline_file: str, profile: str | None) -> int:
    """Validate a pipeline file without running anything (exit 2 on errors)."""
    from ductwork import api

    pipe = api.load(pipeline_file, profile=profile)
    stages: list[dict[str, Any]] = [
        {
            "name": n.name,
            "kind": n.kind,
            "inputs": {k: str(v) for k, v in n.inputs.items()},
            "outputs": {k: o.type for k, o in n.outputs.items()},
        }
        for n in (pipe.stages[s] for s in pipe.order)
    ]
    if use_json():
        _emit_json(
            {"schema": "ductwork.check/v1", "ok": True, "pipeline": pipe.name, "stages": stages}
        )
    else:
        from rich.console import Console
        from rich.tree import Tree

        tree = Tree(f"[bold]{pipe.name}[/bold] · {len(stages)} stages · ok")
        for s in stages:
            ins = ", ".join(s["inputs"].values()) or "-"
            outs = ", ".join(f"{k}:{t}" for k, t in s["outputs"].items())
            tree.add(f"[bold]{s['name']}[/bold] [dim]({s['kind']})[/dim]  ← {ins}  → {outs}")
        Console().print(tree)
    return 0


# -- inspection ---------------------------------------------------------------------------------


@cli.command()
@PIPELINE_ARG
@click.option("-n", "--limit", default=20, show_default=True, help="How many runs.")
@json_option
def runs(pipeline_file: str, limit: int) -> int:
    """List recent runs with their status and stage counts."""
    from ductwork import api

    items = api.runs(pipeline_file, limit)
    if use_json():
        _emit_json({"schema": "ductwork.runs/v1", "runs": items})
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table(title="runs", box=None, header_style="bold")
    for col in ("run", "status", "started (UTC)", "duration", "stages"):
        t.add_column(col)
    import time

    for r in items:
        dur = f"{r['ended'] - r['started']:.2f} s" if r.get("ended") else ""
        counts: dict[str, int] = {}
        for s in r["stages"]:
            counts[s["status"]] = counts.get(s["status"], 0) + 1
        t.add_row(
            r["run_id"],
            r["status"],
            time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r["started"])),
            dur,
            ", ".join(f"{n} {k}" for k, n in sorted(counts.items())),
        )
    Console().print(t)
    return 0


@cli.command()
@click.argument("stage")
@click.option(
    "-p",
    "--pipeline",
    "pipeline_file",
    default="pipeline.yaml",
    show_default=True,
    help="The pipeline file.",
)
@click.option("-o", "--output", help="Which output of the stage (default: its main output).")
@click.option("--head", default=10, show_default=True, help="Rows to show.")
@json_option
def show(stage: str, pipeline_file: str, output: str | None, head: int) -> int:
    """Schema, first rows and stats of a stage's latest artifact."""
    from ductwork import api

    info = api.show(pipeline_file, stage, output, head)
    if use_json():
        _emit_json({"schema": "ductwork.show/v1", **info})
        return 0
    from rich.console import Console
    from rich.table import Table

    c = Console()
    c.print(
        f"[bold]{stage}[/bold]{'.' + output if output else ''} · {info['type']} · "
        f"{info.get('rows') if info.get('rows') is not None else ''} rows · {info['bytes']:,} bytes · {info['sha256'][:12]}"
    )
    if info["type"] == "table":
        schema = Table(title="schema", box=None, header_style="bold")
        schema.add_column("column")
        schema.add_column("type")
        for k, v in (info.get("schema") or {}).items():
            schema.add_row(k, v)
        c.print(schema)
        for title, rows in (("head", info.get("head") or []), ("stats", info.get("stats") or [])):
            if not rows:
                continue
            t = Table(title=title, box=None, header_style="bold")
            for col in rows[0]:
                t.add_column(str(col), overflow="fold")
            for r in rows:
                t.add_row(*("" if v is None else str(v) for v in r.values()))
            c.print(t)
    else:
        from rich.pretty import Pretty

        c.print(Pretty(info.get("value")) if info["type"] == "json" else info.get("value", ""))
    return 0


@cli.command()
@PIPELINE_ARG
@click.option("-n", "--limit", default=50, show_default=True)
@json_option
def artifacts(pipeline_file: str, limit: int) -> int:
    """List artifacts in the store with the stage that produced them."""
    from ductwork import api

    items = api.artifacts(pipeline_file, limit)
    if use_json():
        _emit_json({"schema": "ductwork.artifacts/v1", "artifacts": items})
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table(box=None, header_style="bold")
    for col in ("id", "type", "rows", "bytes", "stage.output", "run"):
        t.add_column(col)
    for a in items:
        t.add_row(
            a["sha256"][:12],
            a["type"],
            "" if a["rows"] is None else f"{a['rows']:,}",
            f"{a['bytes']:,}" if a["bytes"] is not None else "",
            f"{a.get('stage')}.{a.get('output')}" if a.get("stage") else "",
            a.get("run_id") or "",
        )
    Console().print(t)
    return 0


class _ExportGroup(click.Group):
    """``export STAGE FILE`` (an artifact, the default) or ``export prefect DIR``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["artifact", *args]
        return super().parse_args(ctx, args)


@cli.group(cls=_ExportGroup)
def export() -> None:
    """Write a stage's artifact to a file, or the pipeline as a Prefect deployment.

    \b
    Examples:
      ductwork export joined out.parquet             a stage's latest artifact (= export artifact)
      ductwork export checked q.csv -o quarantine    a non-main output
      ductwork export prefect deploy/prefect         a Prefect flow module + prefect.yaml
      ductwork export feast feature_repo --stage weather --entity origin
                                                     a Feast feature repository
    """


@export.command("artifact")
@click.argument("stage")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("-p", "--pipeline", "pipeline_file", default="pipeline.yaml", show_default=True)
@click.option("-o", "--output", help="Which output of the stage (default: its main output).")
@json_option
def export_artifact(stage: str, file: str, pipeline_file: str, output: str | None) -> int:
    """Write a stage's latest artifact to FILE (.parquet, .csv, .tsv, .ndjson, .json).

    `ductwork export STAGE FILE` is the same; a stage named like a subcommand (prefect)
    needs `ductwork export artifact STAGE FILE`.
    """
    from ductwork import api

    path = api.export(pipeline_file, stage, file, output)
    if use_json():
        _emit_json(
            {"schema": "ductwork.export/v1", "stage": stage, "output": output, "file": str(path)}
        )
    else:
        click.echo(f"wrote {path}")
    return 0


@export.command("prefect")
@click.argument("directory", metavar="DIR", type=click.Path(file_okay=False))
@PIPELINE_ARG
@json_option
def export_prefect(directory: str, pipeline_file: str) -> int:
    """Write a deployable Prefect flow for the pipeline into DIR.

    DIR gets <pipeline>_flow.py (a @flow calling ductwork.api.run with executor="prefect")
    and prefect.yaml (a deployment with a daily schedule, off until you switch it on).

    \b
    Examples:
      ductwork export prefect deploy/prefect
      cd deploy/prefect && prefect deploy --all
    """
    from ductwork import api

    paths = api.export_prefect(pipeline_file, directory)
    if use_json():
        _emit_json({"schema": "ductwork.export_prefect/v1", "files": [str(p) for p in paths]})
    else:
        for path in paths:
            click.echo(f"wrote {path}")
        click.echo(f"next: cd {directory} && prefect deploy --all")
    return 0


@export.command("feast")
@click.argument("directory", metavar="DIR", type=click.Path(file_okay=False))
@PIPELINE_ARG
@click.option("--stage", required=True, help="The stage whose table to publish.")
@click.option("-o", "--output", help="Which output of the stage (default: its main output).")
@click.option(
    "--entity",
    "entities",
    multiple=True,
    required=True,
    help="The entity (join key) column; repeat for a composite key.",
)
@click.option("--timestamp", help="The event time column (default: the only datetime column).")
@click.option(
    "--ttl", default="1d", show_default=True, help="How long a value holds: 30m, 12h, 1d, 0 = ever."
)
@json_option
def export_feast(
    directory: str,
    pipeline_file: str,
    stage: str,
    output: str | None,
    entities: tuple[str, ...],
    timestamp: str | None,
    ttl: str,
) -> int:
    """Publish a stage's table as a Feast feature repository in DIR.

    DIR gets feature_store.yaml (local provider, SQLite online store and registry in DIR/data,
    file offline store), features.py (an Entity per key, a FileSource, a FeatureView with a
    typed Field per column) and data/<stage>.parquet, a copy of the table. Feast is needed
    only to apply and serve it (pip install 'ductwork[feast]'); see docs/feature-store.md.

    \b
    Examples:
      ductwork export feast feature_repo --stage weather --entity origin --ttl 3h
      cd feature_repo && feast apply && feast materialize START END
    """
    from ductwork import api

    repo = api.export_feast(
        pipeline_file,
        directory,
        stage,
        entities=entities,
        output=output,
        timestamp=timestamp,
        ttl=ttl,
    )
    if use_json():
        _emit_json({"schema": "ductwork.export_feast/v1", **repo.to_dict()})
        return 0
    for path in repo.files:
        click.echo(f"wrote {path}")
    click.echo(
        f"feature view '{repo.view}': {len(repo.features)} features, entity "
        f"{', '.join(repo.entities)}, event time {repo.timestamp}"
    )
    for name, dtype in repo.skipped.items():
        click.echo(f"left out {name} ({dtype}): Feast has no such type")
    if repo.dropped_rows:
        click.echo(f"left out {repo.dropped_rows:,} rows without a key or an event time")
    window = ""
    if repo.start is not None and repo.end is not None:
        window = f" {repo.start:%Y-%m-%dT%H:%M:%S} {repo.end:%Y-%m-%dT%H:%M:%S}"
    click.echo(f"next: cd {directory} && feast apply && feast materialize{window or ' START END'}")
    return 0


@cli.command("tune-worker")
@PIPELINE_ARG
@click.option("--stage", required=True, help="The tune stage whose study to work on.")
@click.option(
    "-j",
    "--jobs",
    type=click.IntRange(min=1),
    help="Trials at a time in this worker (default: the stage's n_jobs).",
)
@json_option
def tune_worker(pipeline_file: str, stage: str, jobs: int | None) -> int:
    """Run trials of a tune stage's study in PostgreSQL, next to the stage (another machine).

    The stage needs storage: postgresql://...; the worker joins the study the stage computes
    (the same inputs: run the upstream stages first) and runs trials until the study has
    n_trials. Every process claims its trials from the database, so all of them together run
    exactly n_trials. The worker publishes nothing: the stage's run makes the outputs.

    \b
    Examples:
      ductwork run --to tune                    on one machine (the stage and its n_jobs)
      ductwork tune-worker --stage tune -j 4    on others, any time during the search
    """
    from ductwork import api

    summary = api.tune_worker(pipeline_file, stage, jobs=jobs)
    if use_json():
        _emit_json({"schema": "ductwork.tune_worker/v1", **summary})
        return 0
    for line in summary["log"]:
        click.echo(line)
    click.echo(
        f"ran {summary['trials_run']} trials of study '{summary['study']}' in {summary['storage']}; "
        f"it has {summary['finished']} of {summary['n_trials']} finished trials"
    )
    return 0


@cli.command()
@click.argument("target", metavar="STAGE|ARTIFACT_ID")
@click.option("-p", "--pipeline", "pipeline_file", default="pipeline.yaml", show_default=True)
@click.option("-o", "--output", help="Which output of the stage (default: its main output).")
@json_option
def lineage(target: str, pipeline_file: str, output: str | None) -> int:
    """Which runs and input artifacts produced an artifact, back to the sources."""
    from ductwork import api

    tree_data = api.lineage(pipeline_file, target, output)
    if use_json():
        _emit_json({"schema": "ductwork.lineage/v1", "lineage": tree_data})
        return 0
    from rich.console import Console
    from rich.tree import Tree

    def label(n: dict[str, Any]) -> str:
        prod = n.get("produced_by") or []
        who = (
            f"{prod[0]['stage']} ({prod[0]['kind']}) in run {prod[0]['run_id']}"
            if prod
            else "unknown producer"
        )
        rows = f" · {n['rows']:,} rows" if n.get("rows") is not None else ""
        more = f" · {len(prod)} runs" if len(prod) > 1 else ""
        return f"[bold]{n['sha256'][:12]}[/bold] {n.get('type', '')}{rows} ← {who}{more}"

    def add(tree: Tree, n: dict[str, Any]) -> None:
        for name, child in (n.get("inputs") or {}).items():
            add(tree.add(f"[dim]{name}:[/dim] {label(child)}"), child)

    root = Tree(label(tree_data))
    add(root, tree_data)
    Console().print(root)
    return 0


@cli.command()
@PIPELINE_ARG
@click.option(
    "--keep",
    default=5,
    show_default=True,
    help="Keep artifacts used by the latest N runs of each pipeline.",
)
@click.option("--dry-run", is_flag=True, help="Only report what would be deleted.")
@json_option
def gc(pipeline_file: str, keep: int, dry_run: bool) -> int:
    """Delete artifacts that the latest runs no longer reference."""
    from ductwork import api

    res = api.gc(pipeline_file, keep=keep, dry_run=dry_run)
    if use_json():
        _emit_json({"schema": "ductwork.gc/v1", **res})
    else:
        verb = "would remove" if dry_run else "removed"
        click.echo(
            f"{verb} {res['objects_removed']} artifacts ({res['bytes_removed']:,} bytes) and "
            f"{res['cache_entries_removed']} cache entries; kept {res['kept_artifacts']} artifacts "
            f"of the latest {keep} runs"
        )
    return 0


@cli.command()
@click.argument("kind", required=False)
@json_option
def kinds(kind: str | None) -> int:
    """List stage kinds, or show the params of one kind (as JSON Schema with --json)."""
    from ductwork.stages.registry import KINDS, get_kind

    if kind is None:
        rows: list[dict[str, Any]] = []
        for name in sorted(KINDS):
            try:
                cls = get_kind(name)
                rows.append(
                    {
                        "kind": name,
                        "version": cls.version,
                        "summary": cls.summary,
                        "outputs": {k: o.type for k, o in cls.outputs.items()},
                    }
                )
            except ImportError as exc:
                rows.append({"kind": name, "error": str(exc)})
        if use_json():
            _emit_json({"schema": "ductwork.kinds/v1", "kinds": rows})
        else:
            for r in rows:
                outs = ", ".join(f"{k}:{t}" for k, t in r.get("outputs", {}).items())
                click.echo(f"{r['kind']:<10} → {outs:<40} {r.get('summary', r.get('error', ''))}")
        return 0
    cls = get_kind(kind)
    schema = cls.Params.model_json_schema()
    if use_json():
        _emit_json({"schema": "ductwork.kind/v1", "kind": kind, "params": schema})
    else:
        click.echo(f"{kind} (version {cls.version}): {cls.summary}")
        click.echo(
            f"inputs: {cls.min_inputs} to {cls.max_inputs if cls.max_inputs is not None else 'any'}"
        )
        click.echo("outputs: " + ", ".join(f"{k} ({o.type})" for k, o in cls.outputs.items()))
        click.echo("params:")
        required = set(schema.get("required", []))
        for name, prop in schema.get("properties", {}).items():
            desc = prop.get("description", "")
            flag = " (required)" if name in required else ""
            click.echo(f"  {name}{flag}: {desc}")
    return 0


@cli.command("schema")
def schema_cmd() -> int:
    """Print the JSON Schema of pipeline files (for editor completion)."""
    from ductwork.spec import pipeline_json_schema

    _emit_json(pipeline_json_schema(), indent=2)
    return 0


# -- model registry -----------------------------------------------------------------------------

_PROJECT_OPTION = click.option(
    "-p",
    "--pipeline",
    "project",
    default="pipeline.yaml",
    show_default=True,
    type=click.Path(),
    help="The pipeline file (or its directory): the registry is the one its project uses.",
)


@cli.command()
@click.argument("name", required=False)
@_PROJECT_OPTION
@json_option
def models(name: str | None, project: str) -> int:
    """List registered models and their aliases; with NAME, the versions of that model.

    The registry is MLflow's: the tracking server in MLFLOW_TRACKING_URI, else the
    project's embedded one (<store>/mlflow/mlflow.db, written by the register stage).

    \b
    Examples:
      ductwork models                      every model with its aliases
      ductwork models flight-delays        its versions: aliases, run, metrics, bundle
      ductwork models flight-delays --json
    """
    from ductwork import api

    items = api.models(name, project=project)
    if use_json():
        key = "models" if name is None else "versions"
        _emit_json({"schema": f"ductwork.{key}/v1", "name": name, key: items})
        return 0
    from rich.console import Console
    from rich.table import Table

    if name is None and not items:
        click.echo("no registered models yet (the register stage creates them)")
        return 0
    if name is None:
        t = Table(title="models", box=None, header_style="bold")
        for col in ("name", "aliases", "latest", "updated (UTC)"):
            t.add_column(col)
        for m in items:
            aliases = ", ".join(f"{a}→v{v}" for a, v in m["aliases"].items())
            latest = "" if m["latest_version"] is None else f"v{m['latest_version']}"
            t.add_row(m["name"], aliases or "-", latest, m["updated"].replace("T", " ")[:16])
    else:
        t = Table(title=name, box=None, header_style="bold")
        for col in ("version", "aliases", "created (UTC)", "metrics", "ductwork run", "bundle"):
            t.add_column(col)
        for v in items:
            t.add_row(
                f"v{v['version']}",
                ", ".join(v["aliases"]) or "-",
                v["created"].replace("T", " ")[:16],
                _key_metrics(v["metrics"]),
                v["ductwork_run_id"] or "-",
                (v["bundle_sha256"] or "-")[:12],
            )
    Console().print(t)
    return 0


_KEY_METRICS = ("roc_auc", "accuracy", "f1", "pr_auc", "rmse", "mae", "r2", "latency_p95_ms")


def _key_metrics(metrics: dict[str, float], n: int = 3) -> str:
    keys = [k for k in _KEY_METRICS if k in metrics] + sorted(
        k for k in metrics if k not in _KEY_METRICS
    )
    return ", ".join(f"{k}={metrics[k]:.4g}" for k in keys[:n]) or "-"


@cli.command()
@click.argument("name")
@click.argument("version", type=click.IntRange(min=1))
@click.option("--alias", default="champion", show_default=True, help="The alias to move.")
@_PROJECT_OPTION
@json_option
def promote(name: str, version: int, alias: str, project: str) -> int:
    """Point NAME@ALIAS (default: champion) at VERSION.

    Serving and batch prediction that load NAME@champion pick the version up on their next
    load. Every move is recorded, so `ductwork rollback` can undo it.

    \b
    Examples:
      ductwork promote flight-delays 3                  flight-delays@champion -> v3
      ductwork promote flight-delays 4 --alias staging
    """
    from ductwork import api

    result = api.promote(name, version, alias=alias, project=project)
    _render_alias_move(result)
    return 0


@cli.command()
@click.argument("name")
@click.option("--alias", default="champion", show_default=True, help="The alias to move back.")
@_PROJECT_OPTION
@json_option
def rollback(name: str, alias: str, project: str) -> int:
    """Move NAME@ALIAS back to the version it pointed at before its last promotion.

    \b
    Examples:
      ductwork rollback flight-delays                   champion back to the previous version
      ductwork rollback flight-delays --alias staging
    """
    from ductwork import api

    result = api.rollback(name, alias=alias, project=project)
    _render_alias_move(result)
    return 0


def _render_alias_move(result: dict[str, Any]) -> None:
    if use_json():
        _emit_json({"schema": "ductwork.alias/v1", **result})
        return
    where = f"{result['name']}@{result['alias']}"
    if not result["changed"]:
        click.echo(f"{where} already points at version {result['version']}")
        return
    before = f"version {result['previous']}" if result["previous"] is not None else "no version"
    click.echo(f"{where}: {before} -> version {result['version']}")


# -- batch prediction --------------------------------------------------------------------------


@cli.command()
@click.option(
    "-m", "--model", "model_ref", required=True, metavar="NAME@ALIAS|PATH", help="The model."
)
@click.option(
    "-i",
    "--input",
    "input_file",
    required=True,
    type=click.Path(exists=True),
    help="Rows to score: .parquet or .csv.",
)
@click.option(
    "-o",
    "--output",
    "output_file",
    required=True,
    type=click.Path(dir_okay=False),
    help="Predictions: .parquet or .csv.",
)
@click.option(
    "--quarantine",
    type=click.Path(dir_okay=False),
    help="Rows the model cannot score (default: <output stem>.quarantine.parquet, if any).",
)
@click.option("--keep", multiple=True, metavar="COLUMN", help="Copy an input column (repeatable).")
@click.option("--chunk-rows", type=click.IntRange(min=1), default=250_000, show_default=True)
@click.option(
    "--engine", type=click.Choice(["sklearn", "onnx"]), default="sklearn", show_default=True
)
@click.option("--strict", is_flag=True, help="Stop at the first invalid row (exit 2).")
@click.option(
    "-p",
    "--pipeline",
    "project",
    default="pipeline.yaml",
    show_default=True,
    type=click.Path(),
    help="The pipeline file (or its directory) whose registry NAME@ALIAS is looked up in.",
)
@json_option
def predict(
    model_ref: str,
    input_file: str,
    output_file: str,
    quarantine: str | None,
    keep: tuple[str, ...],
    chunk_rows: int,
    engine: str,
    strict: bool,
    project: str,
) -> int:
    """Score a file with a model bundle, in chunks (memory stays bounded).

    Rows that break the model's input contract (an unknown category, text in a numeric
    column, a null where training had none) are quarantined with the reasons, or stop the
    run with --strict. The output has the --keep columns, prediction, proba_<class> and
    model_version.

    \b
    Examples:
      ductwork predict --model flight-delays@champion --input new.parquet --output scored.parquet
      ductwork predict -m .ductwork/models/flight-delays/3 -i new.csv -o scored.csv --keep id
    """
    from ductwork import api

    kwargs: dict[str, Any] = {
        "quarantine": quarantine,
        "keep": keep,
        "chunk_rows": chunk_rows,
        "engine": engine,
        "strict": strict,
        "project": project,
    }
    if use_json() or not sys.stderr.isatty():
        summary = api.predict(model_ref, input_file, output_file, **kwargs)
    else:
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

        columns = (
            TextColumn("predict"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.completed:,.0f} rows · {task.fields[rate]}"),
        )
        with Progress(*columns, transient=True) as bar:
            task = bar.add_task("predict", total=None, rate="")

            def progress(done: float, total: float | None, unit: str) -> None:
                elapsed = bar.tasks[0].elapsed or 0.0
                rate = f"{done / elapsed:,.0f} {unit}/s" if elapsed > 0 else ""
                bar.update(task, completed=done, total=total, rate=rate)

            summary = api.predict(model_ref, input_file, output_file, progress=progress, **kwargs)
    if use_json():
        _emit_json({"schema": "ductwork.predict/v1", **summary.to_dict()})
        return 0
    click.echo(
        f"scored {summary.rows_scored:,} of {summary.rows_in:,} rows with {summary.model_version} "
        f"({summary.engine}) in {summary.seconds:.1f} s ({summary.rows_per_s:,.0f} rows/s) "
        f"→ {summary.output}"
    )
    if summary.quarantine:
        reasons = ", ".join(f"{reason} ({n:,})" for reason, n in summary.reasons.items())
        click.echo(
            f"quarantined {summary.rows_quarantined:,} rows → {summary.quarantine}: {reasons}"
        )
    else:
        click.echo("no rows quarantined (no quarantine file written)")
    return 0


# -- vector search ------------------------------------------------------------------------------


def _parse_where(items: tuple[str, ...]) -> dict[str, Any]:
    """FIELD=VALUE pairs; VALUE is JSON when it parses (2020, true, "2020"), else text.

    A field given twice matches either value.
    """
    import json

    where: dict[str, Any] = {}
    for item in items:
        field, sep, raw = item.partition("=")
        if not sep or not field:
            msg = f"'{item}' is not FIELD=VALUE"
            raise click.BadParameter(msg, param_hint="--where")
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        if field in where:
            before = where[field]
            where[field] = [*(before if isinstance(before, list) else [before]), value]
        else:
            where[field] = value
    return where


@cli.command()
@click.argument("query")
@click.option(
    "-p",
    "--pipeline",
    "pipeline_file",
    default="pipeline.yaml",
    show_default=True,
    help="The pipeline file.",
)
@click.option("--index", "index", metavar="STAGE", help="The index stage (if there are several).")
@click.option("-k", type=click.IntRange(min=1), default=5, show_default=True, help="How many hits.")
@click.option(
    "--where",
    "where",
    multiple=True,
    metavar="FIELD=VALUE",
    help="Only rows whose payload FIELD equals VALUE (repeatable; twice the same FIELD: either).",
)
@json_option
def search(
    query: str, pipeline_file: str, index: str | None, k: int, where: tuple[str, ...]
) -> int:
    """Find the rows nearest in meaning to QUERY in an index stage's collection.

    The query is embedded with the model the rows were embedded with (the embed stage's),
    and searched in the collection the index stage last wrote (local or a Qdrant server).
    VALUE in --where is JSON when it parses (2020 is a number, true a boolean, "2020" text).

    \b
    Examples:
      ductwork search "how do I copy a file"
      ductwork search "late flights in winter" -k 10 --index docs_index
      ductwork search "parse a date" --where module=datetime --where module=time
      ductwork search "parse a date" --json
    """
    from ductwork import api

    hits = api.search(pipeline_file, query, index=index, k=k, where=_parse_where(where))
    if use_json():
        _emit_json({"schema": "ductwork.search/v1", "query": query, "hits": hits})
        return 0
    if not hits:
        click.echo("no hits (is the collection empty, or does --where match nothing?)")
        return 0
    from rich.console import Console
    from rich.table import Table

    columns = list(dict.fromkeys(c for h in hits for c in h["payload"]))
    t = Table(title=f"search: {query}", box=None, header_style="bold")
    for col in ("rank", "score", "id", *columns):
        t.add_column(col, overflow="fold", max_width=60 if col not in ("rank", "score") else None)
    for h in hits:
        cells = ("" if h["payload"].get(c) is None else str(h["payload"][c]) for c in columns)
        t.add_row(str(h["rank"]), f"{h['score']:.4f}", h["id"], *cells)
    Console().print(t)
    return 0


# -- plumbing -----------------------------------------------------------------------------------


def _renderer(verbose: bool = False) -> Callable[[Any], None]:
    if use_json():
        from ductwork.render.jsonl import JsonRenderer

        return JsonRenderer()
    from ductwork.render.console import ConsoleRenderer

    return ConsoleRenderer(verbose=verbose)


def _emit_json(obj: Any, indent: int | None = None) -> None:
    import json

    click.echo(json.dumps(obj, default=str, indent=indent))


def _report_error(exc: BaseException) -> int:
    from ductwork.errors import DuctworkError

    if isinstance(exc, DuctworkError):
        code, message, hint, kind = exc.exit_code, exc.message, exc.hint, type(exc).__name__
    else:
        code, kind = 1, "UnexpectedError"
        message = f"unexpected error: {type(exc).__name__}: {exc}"
        hint = "Rerun with --debug for the traceback, and please report it."
    if use_json():
        _emit_json(
            {
                "schema": "ductwork.error/v1",
                "event": "error",
                "status": "error",
                "exit_code": code,
                "error": {"type": kind, "message": message, "hint": hint, "exit_code": code},
            }
        )
    from ductwork.render.console import print_error

    print_error(message, hint)
    return code


def main(argv: list[str] | None = None) -> None:
    """Console script entry point."""
    try:
        rv = cli.main(args=argv, prog_name="ductwork", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2 if exc.exit_code not in (0,) else 0)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted: artifacts already written are kept; run again to resume", err=True)
        sys.exit(130)
    except Exception as exc:
        from ductwork.errors import DuctworkError

        if STATE.debug or (os.environ.get("DUCTWORK_DEBUG") and not isinstance(exc, DuctworkError)):
            import traceback

            traceback.print_exc()
        sys.exit(_report_error(exc))
    sys.exit(rv if isinstance(rv, int) else 0)

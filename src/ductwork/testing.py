"""Helpers to unit-test a stage kind (built-in or your own) without a pipeline or a store.

>>> out = run_stage("transform", {"sql": "select 1 as x"}, {}, tmp_path)  # doctest: +SKIP
>>> out.values["main"]  # doctest: +SKIP

``run_stage`` writes the given frames as Parquet inputs, validates the params through the
kind's ``Params`` model, runs the stage, writes its outputs the way the store does and runs the
kind's ``check`` invariants on them, so a test sees what a pipeline run would see.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from ductwork.core.contract import (
    ArtifactInfo,
    InputArtifact,
    Inputs,
    StageContext,
    StageKind,
)


@dataclass
class StageOutcome:
    """What a stage produced: the values (LazyFrames collected) and their artifact infos."""

    values: dict[str, Any]
    infos: dict[str, ArtifactInfo]
    metrics: dict[str, Any] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)


def _sha(path: Path) -> str:
    if path.is_dir():
        h = hashlib.sha256()
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(str(f.relative_to(path)).encode())
            h.update(hashlib.sha256(f.read_bytes()).hexdigest().encode())
        return h.hexdigest()
    return hashlib.sha256(path.read_bytes()).hexdigest()


def table_input(name: str, df: pl.DataFrame, directory: Path) -> InputArtifact:
    """Write ``df`` as a Parquet input artifact named ``name`` under ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"input-{name}.parquet"
    df.write_parquet(path)
    info = ArtifactInfo(
        sha256=_sha(path),
        type="table",
        bytes=path.stat().st_size,
        rows=df.height,
        schema={k: str(v) for k, v in df.schema.items()},
        path=str(path),
    )
    return InputArtifact(name=name, info=info)


def json_input(name: str, value: Any, directory: Path) -> InputArtifact:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"input-{name}.json"
    path.write_text(json.dumps(value))
    info = ArtifactInfo(sha256=_sha(path), type="json", bytes=path.stat().st_size, path=str(path))
    return InputArtifact(name=name, info=info)


def _write_output(value: Any, kind: str, path: Path) -> ArtifactInfo:
    if isinstance(value, InputArtifact):  # passed through unchanged
        return value.info
    rows: int | None = None
    schema: dict[str, str] | None = None
    if kind == "table":
        df = value.collect() if isinstance(value, pl.LazyFrame) else value
        path = path.with_suffix(".parquet")
        df.write_parquet(path)
        rows, schema = df.height, {k: str(v) for k, v in df.schema.items()}
    elif kind == "json":
        path = path.with_suffix(".json")
        path.write_text(json.dumps(value, sort_keys=True, default=str))
    elif kind == "text":
        path = path.with_suffix(".txt")
        path.write_text(value)
    else:
        path = Path(value)
    size = path.stat().st_size if path.is_file() else 0
    return ArtifactInfo(
        sha256=_sha(path),
        type=kind,  # type: ignore[arg-type]
        bytes=size,
        rows=rows,
        schema=schema,
        path=str(path),
    )


def _materialise(value: Any) -> Any:
    if isinstance(value, pl.LazyFrame):
        return value.collect()
    if isinstance(value, InputArtifact) and value.info.type == "table":
        return value.frame()
    return value


def run_stage(
    kind: str | type[StageKind[Any]],
    params: Mapping[str, Any],
    inputs: Mapping[str, pl.DataFrame | InputArtifact],
    tmp_path: Path,
    *,
    stage: str = "stage",
    project_dir: Path | None = None,
) -> StageOutcome:
    """Run one stage kind on in-memory frames and return its outcome."""
    if isinstance(kind, str):
        from ductwork.stages.registry import get_kind

        cls = get_kind(kind)
    else:
        cls = kind
    instance = cls()
    p = cls.Params.model_validate(dict(params))
    arts = {
        name: v if isinstance(v, InputArtifact) else table_input(name, v, tmp_path / "inputs")
        for name, v in inputs.items()
    }
    work = tmp_path / "work"
    work.mkdir(parents=True, exist_ok=True)
    ctx = StageContext(
        stage=stage,
        run_id="test",
        project_dir=project_dir or tmp_path,
        work_dir=work,
    )
    ins = Inputs(arts)
    raw = instance.run(p, ins, ctx)
    declared = instance.declared_outputs(p)
    missing = set(declared) - set(raw)
    if missing:
        msg = f"stage returned no value for declared outputs {sorted(missing)}"
        raise AssertionError(msg)
    out_dir = tmp_path / "outputs"
    out_dir.mkdir(parents=True, exist_ok=True)
    infos = {
        name: _write_output(raw[name], spec.type, out_dir / name) for name, spec in declared.items()
    }
    values = {name: _materialise(v) for name, v in raw.items()}
    violations = instance.check(p, ins, infos, ctx)
    return StageOutcome(values=values, infos=infos, metrics=ctx.metrics, violations=violations)

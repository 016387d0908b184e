"""The ``predict`` stage kind: batch predictions of a table with a model bundle.

The model is the ``model`` input (a train stage's bundle) or, without one, the ``model`` param:
a bundle directory or a registry reference (``flight-delays@champion``, ``flight-delays/3``).
The ``data`` table is scored in chunks of ``chunk_rows`` rows, so memory stays bounded whatever
its size (:mod:`ductwork.ml.scoring_batch`). Each row is checked against the bundle's input
contract first: rows that break it (an unknown category, text in a numeric column, a null where
training had none) go to the ``quarantine`` output with the reasons, or fail the stage with
``on_invalid: fail``. Every input row is in exactly one of the two outputs.

Under ``executor: ray`` (or with ``fan_out: ray``) the chunks are scored by Ray tasks spread
over the cluster; the stage gathers them in input order and writes the same files, so the
artifacts have the same sha256 as a local run's.

``predictions`` has the ``keep`` columns, ``prediction``, one ``proba_<class>`` per class (for
classifiers) and ``model_version``: ``NAME/VERSION`` for a registry reference, else the bundle's
model id. With a registry reference the stage's fingerprint includes the version the alias
points to, so moving the alias re-runs the predictions.

This module imports no scikit-learn: ``run`` imports the ML layer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from ductwork.core.contract import (
    ArtifactInfo,
    InputArtifact,
    Inputs,
    Output,
    StageContext,
    StageKind,
    StageParams,
)
from ductwork.errors import DataError

PREDICTIONS_FILE = "predictions.parquet"
QUARANTINE_FILE = "quarantine.parquet"


class PredictParams(StageParams):
    model: str | None = Field(
        default=None,
        description=(
            "The model when there is no `model` input: a bundle directory, NAME@ALIAS or "
            "NAME/VERSION."
        ),
    )
    keep: list[str] = Field(
        default_factory=list, description="Input columns copied to the predictions (e.g. ids)."
    )
    chunk_rows: int = Field(
        default=250_000, ge=1, description="Rows scored at a time (bounds the memory)."
    )
    engine: Literal["sklearn", "onnx"] = Field(
        default="sklearn",
        description="sklearn, or onnx (ONNX Runtime; only a bundle whose ONNX export matched).",
    )
    on_invalid: Literal["quarantine", "fail"] = Field(
        default="quarantine",
        description="Rows that break the model's input contract: quarantine them, or fail.",
    )
    fan_out: Literal["auto", "none", "ray"] = Field(
        default="auto",
        description=(
            "Where the chunks are scored: auto (as Ray tasks over the cluster when the stage "
            "runs on Ray and has more than one chunk, else in the stage), none (in the stage) "
            "or ray (as Ray tasks; outside executor: ray on DUCTWORK_RAY_ADDRESS, RAY_ADDRESS "
            "or a local cluster). The outputs are the same."
        ),
    )

    @field_validator("keep")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        seen: set[str] = set()
        for column in value:
            if column in seen:
                msg = f"keep column '{column}' is listed twice"
                raise ValueError(msg)
            seen.add(column)
        return value


class Predict(StageKind[PredictParams]):
    """Score a table with a model bundle, in chunks; invalid rows are quarantined."""

    name = "predict"
    version = "1"
    Params = PredictParams
    summary = "batch predictions with a model bundle (invalid rows quarantined)"
    min_inputs = 1
    max_inputs = 2
    outputs: ClassVar[dict[str, Output]] = {
        "predictions": Output(
            "table", description="keep columns, prediction, proba_<class>, model_version"
        ),
        "quarantine": Output(
            "table", description="rows that break the input contract, with _failed_checks, _row"
        ),
    }

    def source_stamp(self, params: PredictParams, ctx: StageContext) -> str | None:
        """The resolved model for a ``model`` param (a moved alias re-runs), else ''."""
        if params.model is None:
            return ""
        from ductwork.ml.resolve import load_bundle
        from ductwork.ml.scoring_batch import version_label

        bundle = load_bundle(params.model, project_dir=ctx.project_dir, missing_ok=True)
        if bundle is None:  # not registered yet (e.g. by this pipeline): always run
            return None
        label = version_label(params.model, bundle, project_dir=ctx.project_dir)
        return f"{label}:{bundle.meta.model_id}"

    def run(self, params: PredictParams, inputs: Inputs, ctx: StageContext) -> dict[str, Any]:
        from ductwork.ml import require_ml

        require_ml(f"stage '{ctx.stage}' (predict)")
        import polars as pl

        from ductwork.ml.bundle import Bundle
        from ductwork.ml.scoring_batch import resolve_model, score_file

        data, model = _inputs(ctx.stage, params, inputs)
        if model is not None:
            bundle = Bundle.load(model.path)
            label = bundle.meta.model_id
        else:  # _inputs made sure there is one or the other
            bundle, label = resolve_model(params.model or "", project_dir=ctx.project_dir)
        predictions = ctx.tmp_dir / PREDICTIONS_FILE
        quarantine = ctx.tmp_dir / QUARANTINE_FILE
        ray_address = None
        if params.fan_out == "ray":  # the cluster, when this process is not connected to one
            from ductwork.config import load_settings

            ray_address = load_settings(ctx.project_dir).ray_address
        summary = score_file(
            bundle,
            data.lazy(),
            predictions,
            quarantine,
            model_version=label,
            keep=params.keep,
            chunk_rows=params.chunk_rows,
            engine=params.engine,
            on_invalid=params.on_invalid,
            progress=ctx.progress,
            rows_total=data.rows,
            context=f"stage '{ctx.stage}'",
            fan_out=params.fan_out,
            ray_address=ray_address,
        )
        ctx.metric(
            rows_in=summary.rows_in,
            rows_scored=summary.rows_scored,
            rows_quarantined=summary.rows_quarantined,
            quarantine_reasons=summary.reasons,
            model_version=label,
            engine=params.engine,
            fan_out=summary.fan_out,
            chunks=summary.chunks,
        )
        if summary.chunk_workers:
            ctx.metric(chunk_workers=summary.chunk_workers)
        return {
            "predictions": pl.scan_parquet(predictions),
            "quarantine": pl.scan_parquet(quarantine),
        }

    def check(
        self,
        params: PredictParams,
        inputs: Inputs,
        outputs: Mapping[str, ArtifactInfo],
        ctx: StageContext,
    ) -> list[str]:
        data, _ = _inputs(ctx.stage, params, inputs)
        rows_in = data.rows
        scored, quarantined = outputs["predictions"].rows, outputs["quarantine"].rows
        if rows_in is None or scored is None or quarantined is None:
            return []
        if rows_in != scored + quarantined:
            return [
                f"complete: predictions ({scored:,}) + quarantine ({quarantined:,}) = "
                f"{scored + quarantined:,} rows, but the input has {rows_in:,}"
            ]
        return []


def _inputs(
    stage: str, params: PredictParams, inputs: Inputs
) -> tuple[InputArtifact, InputArtifact | None]:
    """The ``data`` table and the optional ``model`` bundle, by name or else by type."""
    hint = "Name the inputs: inputs: {data: split.test, model: train}"
    names = list(inputs)  # (Inputs raises on a missing name: no .get)
    data = inputs["data"] if "data" in names else None
    model = inputs["model"] if "model" in names else None
    if data is None:
        tables = [a for name, a in inputs.items() if name != "model" and a.info.type == "table"]
        if len(tables) != 1:
            msg = f"stage '{stage}': predict needs one table to score (the input 'data')"
            raise DataError(msg, hint=hint)
        data = tables[0]
    if model is None:
        bundles = [a for a in inputs.values() if a is not data and a.info.type == "files"]
        model = bundles[0] if len(bundles) == 1 else None
    if data.info.type != "table":
        msg = f"stage '{stage}': input 'data' is a {data.info.type} artifact, not a table"
        raise DataError(msg, hint=hint)
    if model is not None and model.info.type != "files":
        msg = f"stage '{stage}': input 'model' is a {model.info.type} artifact, not a model bundle"
        raise DataError(msg, hint="Use a train stage's output: model: train")
    if model is not None and params.model is not None:
        msg = f"stage '{stage}': the model is given twice: the 'model' input and the model param"
        raise DataError(msg, hint="Keep one of them.")
    if model is None and params.model is None:
        msg = f"stage '{stage}': no model: give a 'model' input (a train stage) or the model param"
        raise DataError(msg, hint="e.g. params: {model: flight-delays@champion}")
    extra = [n for n, a in inputs.items() if a is not data and a is not model]
    if extra:
        msg = f"stage '{stage}': unexpected input '{extra[0]}'"
        raise DataError(msg, hint=hint)
    return data, model

"""The ``register`` stage kind: log a model bundle to MLflow and register a model version.

Inputs, by name:

* ``model`` (required): the model bundle (the ``train`` stage's ``bundle``),
* ``evaluation`` (optional): the ``evaluate`` stage's metrics JSON, logged as run metrics and
  written into the model card,
* ``report`` (optional): the ``evaluate`` stage's report files, logged under ``report/``,
* ``gate`` (optional): the ``gate`` stage's report. A failed gate stops the run before this
  stage, so a gate input means the model passed (unless it says otherwise),
* ``data`` (optional): a table of input rows; its first rows that meet the model's input
  contract become the MLflow model's input example (without it, an example is built from the
  training reference statistics).

Where: the embedded MLflow store under the project's ductwork directory (SQLite), or any
tracking server named by ``MLFLOW_TRACKING_URI``. One MLflow run per pipeline run, named
``<pipeline>/<run id>``, holding params, metrics, the whole bundle (``bundle/``), the report,
the model card and the model logged as an MLflow sklearn model (signature, input example),
so ``mlflow.pyfunc.load_model("models:/NAME@champion")`` and ``mlflow models serve`` work.

The new version gets the ``aliases`` (default ``challenger``), and ``promote_to`` (default
``champion``) when the gate passed (or without a gate when ``promote_without_gate``).
Registering a bundle that a version of the model already holds (same sha256) creates nothing:
that version gets the aliases. Outputs: ``registration`` (JSON) and ``card`` (the Markdown
model card, also stored with the run and as the version's description).
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field, field_validator

from ductwork.core.contract import (
    InputArtifact,
    Inputs,
    Output,
    StageContext,
    StageKind,
    StageParams,
)
from ductwork.errors import DataError, did_you_mean

_INPUTS = ("model", "evaluation", "report", "gate", "data")
_NAME = r"^[A-Za-z0-9_.\-]+$"


def _check_alias(value: str) -> str:
    import re

    if not re.match(r"^[A-Za-z0-9_\-]+$", value):
        msg = f"alias '{value}' may only contain letters, digits, '_' and '-'"
        raise ValueError(msg)
    if value.lower() == "latest" or re.match(r"^[vV]\d+$", value):
        msg = f"alias '{value}' is reserved by MLflow ('latest' and 'v<number>')"
        raise ValueError(msg)
    return value


class RegisterParams(StageParams):
    name: str | None = Field(
        default=None,
        pattern=_NAME,
        description="The registered model's name (default: the pipeline's name).",
    )
    experiment: str | None = Field(
        default=None, min_length=1, description="The MLflow experiment (default: the pipeline's)."
    )
    aliases: list[str] = Field(
        default_factory=lambda: ["challenger"], description="Aliases every new version gets."
    )
    promote_to: str | None = Field(
        default="champion", description="Alias set when the gate passed (null: never)."
    )
    promote_without_gate: bool = Field(
        default=False, description="Also set promote_to when there is no gate input."
    )
    description: str | None = Field(
        default=None, description="The registered model's description (and the card's intro)."
    )
    tags: dict[str, str] = Field(
        default_factory=dict, description="Tags on the registered model, the version and the run."
    )
    intended_use: str | None = Field(
        default=None, description="The model card's 'Intended use' text."
    )
    limitations: str | None = Field(
        default=None, description="Known limitations, at the top of the card's 'Limitations'."
    )

    @field_validator("aliases")
    @classmethod
    def _aliases(cls, value: list[str]) -> list[str]:
        for alias in value:
            _check_alias(alias)
        return value

    @field_validator("promote_to")
    @classmethod
    def _promote_to(cls, value: str | None) -> str | None:
        return None if value is None else _check_alias(value)


class Register(StageKind[RegisterParams]):
    """Log a model bundle to MLflow, register a version, set aliases, write the model card."""

    name = "register"
    version = "1"
    Params = RegisterParams
    min_inputs = 1
    max_inputs = 5
    summary = "log a model bundle to MLflow, register a version with aliases, write a model card"
    outputs: ClassVar[dict[str, Output]] = {
        "registration": Output(
            "json", description="name, version, aliases, MLflow run id, model URI, promoted"
        ),
        "card": Output("text", non_empty=True, description="the model card (Markdown)"),
    }

    def run(self, params: RegisterParams, inputs: Inputs, ctx: StageContext) -> dict[str, Any]:
        from ductwork.ml import require_ml

        require_ml("the register stage")
        from ductwork.core.fingerprint import tree_digest
        from ductwork.ml import tracking
        from ductwork.ml.bundle import Bundle
        from ductwork.ml.card import model_card

        self._check_inputs(inputs, ctx)
        name = params.name or ctx.pipeline
        if not name:
            msg = f"stage '{ctx.stage}': set params.name (the registered model's name)"
            raise DataError(msg)
        tracking.check_name(name)
        bundle = Bundle.load(inputs["model"].path)
        sha = tree_digest(bundle.path)
        evaluation = _json(inputs, "evaluation", ctx)
        gate = _json(inputs, "gate", ctx)
        gate_passed = _gate_passed(gate) if gate is not None else None
        promote = params.promote_to is not None and (
            gate_passed is True or (gate is None and params.promote_without_gate)
        )
        pipeline = ctx.pipeline or name
        run_tags = {
            tracking.TAG_RUN_ID: ctx.run_id,
            tracking.TAG_PIPELINE: pipeline,
            tracking.TAG_STAGE: ctx.stage,
            tracking.TAG_MODEL_ID: bundle.meta.model_id,
            tracking.TAG_BUNDLE_SHA: sha,
            "mlflow.source.name": "ductwork",
        }
        if gate_passed is not None:
            run_tags["ductwork.gate"] = "passed" if gate_passed else "failed"
        artifacts = {}
        if "report" in inputs:
            artifacts["report"] = inputs["report"].path
        if "evaluation" in inputs:
            artifacts["evaluation.json"] = inputs["evaluation"].path
        if "gate" in inputs:
            artifacts["gate.json"] = inputs["gate"].path
        rows = inputs["data"].lazy().head(1_000).collect() if "data" in inputs else None
        sub = tracking.Submission(
            bundle=bundle,
            bundle_sha256=sha,
            name=name,
            experiment=params.experiment or pipeline,
            run_name=f"{pipeline}/{ctx.run_id}",
            run_tags={**params.tags, **run_tags},
            params=_run_params(bundle),
            metrics=_run_metrics(bundle, evaluation),
            artifacts=artifacts,
            example=tracking.example_frame(bundle, rows),
            aliases=list(params.aliases),
            promote_to=params.promote_to if promote else None,
            description=params.description,
            model_tags=dict(params.tags),
            version_tags={
                tracking.TAG_MODEL_ID: bundle.meta.model_id,
                tracking.TAG_RUN_ID: ctx.run_id,
                tracking.TAG_PIPELINE: pipeline,
                **params.tags,
            },
        )
        lineage = {
            "pipeline": pipeline,
            "run_id": ctx.run_id,
            "stage": ctx.stage,
            "inputs": {k: v.info.sha256 for k, v in inputs.items()},
        }

        def card(registration: dict[str, Any]) -> str:
            return model_card(
                bundle.meta,
                evaluation,
                registration,
                lineage,
                intended_use=params.intended_use,
                limitations=params.limitations,
                description=params.description,
            )

        ctx.progress(0, 1, "models")
        registration, text = tracking.register_bundle(sub, ctx.store_root, card)
        ctx.progress(1, 1, "models")
        ctx.metric(
            model=name,
            version=registration["version"],
            aliases=registration["aliases"],
            promoted=registration["promoted"],
            reused=registration["reused"],
        )
        ctx.log(
            f"registered {name} version {registration['version']} "
            f"({', '.join(registration['aliases']) or 'no aliases'}) at {registration['tracking_uri']}"
        )
        return {"registration": registration, "card": text}

    @staticmethod
    def _check_inputs(inputs: Inputs, ctx: StageContext) -> None:
        for name in inputs:
            if name not in _INPUTS:
                msg = (
                    f"stage '{ctx.stage}': unknown input '{name}'{did_you_mean(name, _INPUTS)}; "
                    f"register takes {', '.join(_INPUTS)} (e.g. inputs: {{model: train, "
                    "evaluation: evaluate, report: evaluate.report, gate: gate}})"
                )
                raise DataError(msg)
        if "model" not in inputs:
            msg = (
                f"stage '{ctx.stage}': needs an input named 'model' (the train stage's bundle; "
                f"got {', '.join(inputs)})"
            )
            raise DataError(msg)
        expected = {"model": "files", "evaluation": "json", "report": "files", "gate": "json"}
        expected["data"] = "table"
        for name, art in inputs.items():
            if art.info.type != expected[name]:
                msg = (
                    f"stage '{ctx.stage}': input '{name}' is a {art.info.type} artifact, "
                    f"not {expected[name]}"
                )
                raise DataError(msg)


def _json(inputs: Inputs, name: str, ctx: StageContext) -> dict[str, Any] | None:
    if name not in inputs:
        return None
    art: InputArtifact = inputs[name]
    value = art.json()
    if not isinstance(value, dict):
        msg = f"stage '{ctx.stage}': input '{name}' is not a JSON object"
        raise DataError(msg)
    return value


def _gate_passed(report: dict[str, Any]) -> bool:
    """Whether a gate report says the model passed (a report that does not say: passed)."""
    for key in ("passed", "ok"):
        if isinstance(report.get(key), bool):
            return bool(report[key])
    status = report.get("status")
    if isinstance(status, str):
        return status.lower() in ("passed", "pass", "ok", "success")
    return True


def _run_params(bundle: Any) -> dict[str, Any]:
    meta = bundle.meta
    out: dict[str, Any] = dict(meta.params)
    extra = {
        "model": meta.model,
        "estimator": meta.estimator,
        "task": meta.task,
        "target": meta.target,
        "model_id": meta.model_id,
    }
    for k, v in extra.items():
        out.setdefault(k, v)
    return out


def _run_metrics(bundle: Any, evaluation: dict[str, Any] | None) -> dict[str, float]:
    from ductwork.ml.tracking import flat_metrics

    out: dict[str, float] = {}
    m = bundle.meta.metrics
    objective = str(m.get("objective") or "score")
    for key in ("train", "val", "cv_mean", "cv_std"):
        value = m.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            out.update(flat_metrics({f"{key}_{objective}": value}))
    if evaluation:
        metrics = evaluation.get("metrics")
        if isinstance(metrics, dict):
            out.update(flat_metrics(metrics))
        for key in ("rows", "quarantined"):
            if isinstance(evaluation.get(key), int):
                out.update(flat_metrics({f"eval_{key}": evaluation[key]}))
        slices = evaluation.get("slices")
        if isinstance(slices, dict):
            out.update(flat_metrics(slices, "slice."))
    return out

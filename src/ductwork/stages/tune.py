"""The ``tune`` stage kind: hyperparameter search with Optuna, resumable, for ``train``.

``search_space`` maps estimator params to ranges (``{low, high, log, step}``; an int range when
``low`` and ``high`` are ints, else a float range, or ``type: int|float`` to say so) or to
``{choices: [...]}``. Each trial builds the estimator with the fixed ``params`` plus the trial's
values and scores it on ``cv`` folds of ``train`` (the features refitted within each fold when a
``transform`` input is given, so no fold's statistics leak into its own score) or, with
``cv: 0``, fitted on ``train`` and scored on ``val``. With cross-validation the mean score after
each fold is reported to Optuna, and ``pruner: median`` stops a trial whose running mean is
worse than the median of the earlier trials at the same fold.

The study lives in Optuna storage: by default a journal file per study under the store
(``<store>/optuna/<study>.journal``), or any database URL given as ``storage``. The default
study name hashes the params (without ``n_trials``, ``timeout``, ``n_jobs``, ``parallel``,
``storage``) and the inputs' content, so the same search on the same data resumes where it
stopped, and a changed search space or changed data starts a new study. ``n_trials`` is the
number of finished (complete or pruned) trials the study should have: a resumed run only runs
the rest. With ``n_jobs > 1`` trials run in worker processes sharing the study's storage
(``parallel: process``, the default) or in threads (``parallel: thread``). A PostgreSQL storage
is shared with ``ductwork tune-worker`` processes on other machines (:func:`join_study`); every
database storage has heartbeats, so a dead worker's trial is failed and retried.

Outputs: ``best_params`` (json: ``params`` is the best trial's values merged with the fixed
params, what ``train`` takes as its ``params`` input), ``trials`` (one row per trial) and
``plots`` (optimization history and parameter importances as PNG).

This module imports no scikit-learn or Optuna: ``run`` imports :mod:`ductwork.ml.tuning`.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from ductwork.core.contract import (
    ArtifactInfo,
    Inputs,
    Output,
    StageContext,
    StageKind,
    StageParams,
)
from ductwork.errors import DataError, did_you_mean

INPUT_NAMES = ("train", "val", "transform")
# params that do not change what the search is: left out of the default study name
_NOT_IN_STUDY = (
    "n_trials", "timeout", "n_jobs", "parallel", "storage", "study", "heartbeat_interval",
    "grace_period", "max_retry",
)  # fmt: skip

Choice = str | bool | int | float | None


class SearchParam(BaseModel):
    """One dimension of the search space: a numeric range or a list of choices."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["int", "float", "categorical"] | None = Field(
        default=None,
        description="int | float | categorical; inferred: choices -> categorical, int low and "
        "high -> int, else float.",
    )
    low: int | float | None = Field(default=None, description="The lower bound (inclusive).")
    high: int | float | None = Field(default=None, description="The upper bound (inclusive).")
    log: bool = Field(default=False, description="Sample on a log scale (low must be > 0).")
    step: int | float | None = Field(default=None, description="Sample on a grid from low.")
    choices: list[Choice] | None = Field(
        default=None, description="The values to choose from (categorical)."
    )

    @model_validator(mode="after")
    def _consistent(self) -> SearchParam:
        if self.choices is not None or self.type == "categorical":
            return self._check_choices()
        if self.low is None or self.high is None:
            msg = "give low and high (a range) or choices (a list)"
            raise ValueError(msg)
        kind = self.type or (
            "int"
            if _is_int(self.low)
            and _is_int(self.high)
            and (self.step is None or _is_int(self.step))
            else "float"
        )
        low, high, step = self.low, self.high, self.step
        if kind == "int":
            for name, value in (("low", low), ("high", high), ("step", step)):
                if value is not None and not float(value).is_integer():
                    msg = f"type: int needs a whole number for {name}, not {value}"
                    raise ValueError(msg)
            low, high = int(low), int(high)
            step = None if step is None else int(step)
        else:
            low, high = float(low), float(high)
            step = None if step is None else float(step)
        if not (math.isfinite(low) and math.isfinite(high)):
            msg = "low and high must be finite numbers"
            raise ValueError(msg)
        if not low < high:
            msg = f"low ({low}) must be below high ({high}); a fixed value belongs in params"
            raise ValueError(msg)
        if self.log:
            if step is not None:
                msg = "log and step cannot be combined"
                raise ValueError(msg)
            if low <= 0 or (kind == "int" and low < 1):
                least = ">= 1" if kind == "int" else "> 0"
                msg = f"log: true needs low {least}, not {low}"
                raise ValueError(msg)
        if step is not None:
            if step <= 0:
                msg = f"step must be positive, not {step}"
                raise ValueError(msg)
            ratio = (high - low) / step
            if abs(ratio - round(ratio)) > 1e-9 * max(1.0, abs(ratio)):
                msg = f"high - low ({high - low:g}) is not a multiple of step ({step:g})"
                raise ValueError(msg)
        object.__setattr__(self, "type", kind)
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)
        object.__setattr__(self, "step", step)
        return self

    def _check_choices(self) -> SearchParam:
        if self.type not in (None, "categorical"):
            msg = f"type: {self.type} is a range (low, high); choices make a categorical"
            raise ValueError(msg)
        if self.choices is None:
            msg = "type: categorical needs choices (a list)"
            raise ValueError(msg)
        extra = [n for n in ("low", "high", "step") if getattr(self, n) is not None] + (
            ["log"] if self.log else []
        )
        if extra:
            msg = f"choices cannot be combined with {', '.join(extra)}"
            raise ValueError(msg)
        if not self.choices:
            msg = "choices is empty"
            raise ValueError(msg)
        seen: set[tuple[str, str]] = set()
        for c in self.choices:
            key = (type(c).__name__, repr(c))
            if key in seen:
                msg = f"choice {c!r} is listed twice"
                raise ValueError(msg)
            seen.add(key)
        object.__setattr__(self, "type", "categorical")
        return self

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is a value this dimension can take."""
        if self.type == "categorical":
            return any(type(c) is type(value) and c == value for c in self.choices or [])
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        assert self.low is not None and self.high is not None
        if self.type == "int" and not float(value).is_integer():
            return False
        span = abs(self.high - self.low) * 1e-9
        return bool(self.low - span <= value <= self.high + span)

    def example(self) -> Any:
        """A value of the space (to check the estimator takes the param before searching)."""
        return self.choices[0] if self.choices else self.low


def _is_int(value: int | float) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class TuneParams(StageParams):
    # a storage URL can hold a password: keep raw input values out of validation errors
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    target: str = Field(description="The label column.")
    task: Literal["classification", "regression"] | None = Field(
        default=None, description="Inferred from the target when not given."
    )
    model: str = Field(
        default="hist_gradient_boosting", description="An estimator alias or a dotted class path."
    )
    params: dict[str, Any] = Field(
        default_factory=dict, description="Fixed estimator params, not searched."
    )
    search_space: dict[str, SearchParam] = Field(
        min_length=1, description="Param -> {low, high, log, step, type} or {choices: [...]}."
    )
    n_trials: int = Field(
        default=20, ge=1, description="Finished (complete or pruned) trials the study should have."
    )
    timeout: float | None = Field(
        default=None, gt=0, description="Stop starting new trials after this many seconds."
    )
    metric: str | None = Field(
        default=None,
        description="The objective (roc_auc, rmse, ...); default roc_auc (2 classes), "
        "f1_macro (more) or rmse (regression).",
    )
    cv: int = Field(
        default=0, ge=0, description="Cross-validation folds on train; 0 scores on the val input."
    )
    pruner: Literal["median", "none"] = Field(
        default="median", description="median: stop trials worse than the median after a fold."
    )
    n_jobs: int = Field(default=1, ge=1, description="Trials run at the same time.")
    parallel: Literal["process", "thread"] = Field(
        default="process",
        description="How n_jobs > 1 runs trials: worker processes sharing the study's storage, "
        "or threads of the stage's process.",
    )
    seed: int = Field(
        default=42, ge=0, lt=2**32, description="Seeds the sampler, the folds and the estimator."
    )
    storage: str | SecretStr | None = Field(
        default=None,
        description="Optuna storage: a database URL (sqlite:///tune.db, postgresql://...); "
        "default a journal file per study under the store.",
    )
    study: str | None = Field(
        default=None,
        description="The study name; default <pipeline>-<stage>-<hash of the search and data>.",
    )
    heartbeat_interval: int = Field(
        default=10,
        ge=1,
        description="Database storage: seconds between a running trial's heartbeats, so a "
        "trial whose worker died is failed and retried.",
    )
    grace_period: int | None = Field(
        default=None,
        ge=2,
        description="Database storage: seconds without a heartbeat after which a running trial "
        "is failed; default 3 x heartbeat_interval.",
    )
    max_retry: int = Field(
        default=1, ge=0, description="Database storage: re-runs of a trial whose worker died."
    )

    @field_validator("storage", mode="before")
    @classmethod
    def _secret_storage(cls, value: Any) -> Any:
        """A URL with a password (or a token in its query) is a secret: never shown or hashed."""
        if isinstance(value, str):
            from ductwork.connectors.http import redact_url

            if not value.strip():
                msg = "storage is empty"
                raise ValueError(msg)
            if redact_url(value) != value:
                return SecretStr(value)
        return value

    @field_validator("cv")
    @classmethod
    def _folds(cls, value: int) -> int:
        if value == 1:
            msg = "cv: 1 is not cross-validation; use 0 (score on val) or 2 and more folds"
            raise ValueError(msg)
        return value

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str | None) -> str | None:
        from ductwork.ml.scoring import OBJECTIVES

        if value is not None and value not in OBJECTIVES:
            msg = (
                f"unknown metric '{value}'{did_you_mean(value, OBJECTIVES)} "
                f"(metrics: {', '.join(OBJECTIVES)})"
            )
            raise ValueError(msg)
        return value

    @field_validator("study")
    @classmethod
    def _study_name(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            msg = "study is empty"
            raise ValueError(msg)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TuneParams:
        from ductwork.ml.scoring import OBJECTIVES

        both = sorted(set(self.search_space) & set(self.params))
        if both:
            msg = f"param '{both[0]}' is both fixed (params) and searched (search_space)"
            raise ValueError(msg)
        if self.grace_period is not None and self.grace_period <= self.heartbeat_interval:
            msg = (
                f"grace_period ({self.grace_period}) must be longer than heartbeat_interval "
                f"({self.heartbeat_interval}), or every running trial looks dead"
            )
            raise ValueError(msg)
        if self.metric is not None and self.task is not None:
            obj = OBJECTIVES[self.metric]
            if obj.task != self.task:
                msg = f"metric '{self.metric}' is for {obj.task}, and task is {self.task}"
                raise ValueError(msg)
        return self

    def storage_url(self) -> str | None:
        """The storage URL with its secrets, to connect; never show it."""
        if isinstance(self.storage, SecretStr):
            return self.storage.get_secret_value()
        return self.storage

    def shown_storage(self) -> str | None:
        """The storage URL as it may be shown: the password replaced by ***."""
        url = self.storage_url()
        if url is None:
            return None
        from ductwork.connectors.http import redact_url

        return redact_url(url)


class Tune(StageKind[TuneParams]):
    """Search an estimator's hyperparameters with Optuna; resumable; feeds train's params."""

    name = "tune"
    version = "1"
    Params = TuneParams
    min_inputs: ClassVar[int] = 1
    max_inputs: ClassVar[int | None] = 3
    summary = "search hyperparameters with Optuna (cv or val split, pruning, resumable studies)"
    outputs: ClassVar[dict[str, Output]] = {
        "best_params": Output(
            "json", description="the best trial's params merged with the fixed params, its score"
        ),
        "trials": Output("table", description="one row per trial: number, state, value, params"),
        "plots": Output("files", description="optimization_history.png and param_importances.png"),
    }

    def run(self, params: TuneParams, inputs: Inputs, ctx: StageContext) -> dict[str, Any]:
        from ductwork.ml import require_ml

        require_ml("the tune stage")
        from ductwork.errors import import_optional

        import_optional("optuna", extra="ml", feature="the tune stage")
        from ductwork.ml import tuning

        _check_input_names(ctx.stage, inputs)
        train = inputs["train"].frame()
        val = inputs["val"].frame() if "val" in inputs else None
        transform = inputs["transform"].path if "transform" in inputs else None
        study = params.study or default_study_name(params, inputs, ctx)
        result = tuning.tune(
            params,
            train=train,
            val=val,
            transform=transform,
            study_name=study,
            ctx=ctx,
        )
        plots = ctx.tmp_dir / "plots"
        tuning.write_plots(result.study, plots, metric=result.metric, seed=params.seed)
        return {
            "best_params": result.best_params,
            "trials": result.trials,
            "plots": plots,
        }

    def check(
        self,
        params: TuneParams,
        inputs: Inputs,
        outputs: Mapping[str, ArtifactInfo],
        ctx: StageContext,
    ) -> list[str]:
        info = outputs["best_params"]
        if not info.path:
            return []
        best = json.loads(Path(info.path).read_text(encoding="utf-8"))
        problems: list[str] = []
        for name, spec in params.search_space.items():
            value = best["params"].get(name)
            if not spec.contains(value):
                problems.append(f"best params: {name} = {value!r} is outside the search space")
        for name, value in params.params.items():
            if best["params"].get(name) != value:
                problems.append(f"best params: the fixed param {name} is not {value!r}")
        rows = outputs["trials"].rows
        if rows is not None and rows != best["n_trials_total"]:
            problems.append(
                f"trials: the table has {rows} rows, the study {best['n_trials_total']} trials"
            )
        return problems


def join_study(
    params: TuneParams, inputs: Inputs, ctx: StageContext, *, jobs: int | None = None
) -> dict[str, Any]:
    """Run trials of the stage's study from another process (``ductwork tune-worker``).

    The study is the one the stage itself computes (the same name from the same params and
    input artifacts) in its PostgreSQL storage; the worker runs trials until the study has
    ``n_trials`` and publishes nothing: the stage's run makes the outputs.
    """
    from ductwork.ml import require_ml

    require_ml("the tune stage")
    from ductwork.errors import import_optional

    import_optional("optuna", extra="ml", feature="the tune stage")
    from ductwork.ml import tuning

    _check_input_names(ctx.stage, inputs)
    return tuning.join(
        params,
        train=inputs["train"].frame(),
        val=inputs["val"].frame() if "val" in inputs else None,
        transform=inputs["transform"].path if "transform" in inputs else None,
        study_name=params.study or default_study_name(params, inputs, ctx),
        ctx=ctx,
        n_jobs=jobs,
    )


def default_study_name(params: TuneParams, inputs: Inputs, ctx: StageContext) -> str:
    """``<pipeline>-<stage>-<12 hex>``: a hash of the search (params) and the data (inputs)."""
    from ductwork.core.fingerprint import canonical_json

    search = {
        name: getattr(params, name)
        for name in type(params).model_fields
        if name not in _NOT_IN_STUDY
    }
    data = {name: inputs[name].info.sha256 for name in sorted(inputs)}
    digest = hashlib.sha256(canonical_json({"params": search, "inputs": data}).encode()).hexdigest()
    return "-".join(part for part in (ctx.pipeline, ctx.stage, digest[:12]) if part)


def _check_input_names(stage: str, inputs: Inputs) -> None:
    unknown = [n for n in inputs if n not in INPUT_NAMES]
    if not unknown and "train" in inputs:
        return
    hint = (
        "Name the inputs: inputs: {train: split.train, val: split.val, "
        "transform: features.transform}"
    )
    if unknown:
        names = ", ".join(f"'{n}'" for n in unknown)
        msg = (
            f"stage '{stage}': unknown input name{'s' if len(unknown) > 1 else ''} {names}"
            f"{did_you_mean(unknown[0], INPUT_NAMES)}; the tune stage takes inputs named "
            "train (required), val and transform"
        )
        raise DataError(msg, hint=hint)
    msg = f"stage '{stage}': no input named 'train' (the rows to tune on)"
    raise DataError(msg, hint=hint)

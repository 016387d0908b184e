"""The ``train`` stage kind: fit a model and write it as a model bundle.

Inputs, by name:

* ``train`` (required): the training rows, raw (the ``split`` stage's ``train``),
* ``val`` (optional): validation rows, for model selection and early stopping,
* ``transform`` (optional): the ``features`` stage's fitted transform, which becomes the first
  step of the model, so the bundle takes raw columns and computes every feature one way,
* ``train_features`` (optional, with ``transform``): the ``features`` stage's ``train`` output,
  the transformed train rows it already computed (``fit_transform``, so target encoding is
  cross-fitted); without it, train refits a copy of the transform to get them,
* ``params`` (optional): a JSON artifact with ``{"params": {...}}``, e.g. ``tune.best_params``;
  those values override ``params:``.

``model`` is an alias (``hist_gradient_boosting``, ``xgboost``, ...) or a dotted path to any
scikit-learn-compatible estimator. ``candidates: [logistic_regression, random_forest, xgboost]``
trains each and keeps the best by ``select_by`` (on ``val``, else by cross-validation), with
prediction latency and then simplicity breaking ties; the comparison is the ``candidates`` output.
``cv: 5`` adds k-fold scores; inside each fold the feature transform is refit on the fold's
training part only, so the scores never see the held-out rows.

Output ``bundle`` (a directory: see :mod:`ductwork.ml.bundle`) is checked before it is handed
on: it is read back from disk and must predict exactly what the fitted object in memory does.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from ductwork.core.contract import (
    ArtifactInfo,
    Inputs,
    Output,
    StageContext,
    StageKind,
    StageParams,
)
from ductwork.errors import DataError, UsageError, did_you_mean

if TYPE_CHECKING:
    import polars as pl

_INPUTS = ("train", "val", "transform", "train_features", "params")
_LATENCY_ROWS = 1000
_REFERENCE_ROWS = 100_000
_PARITY_ROWS = 200


class Candidate(StageParams):
    model: str
    params: dict[str, Any] = Field(default_factory=dict)


def _check_model_name(model: str) -> str:
    from ductwork.ml.estimators import ALIASES

    if model in ALIASES or "." in model or ":" in model:
        return model
    msg = f"unknown model '{model}'{did_you_mean(model, ALIASES)} (aliases: {', '.join(ALIASES)})"
    raise ValueError(msg)


class TrainParams(StageParams):
    target: str
    task: Literal["classification", "regression"] | None = None
    model: str = "hist_gradient_boosting"
    params: dict[str, Any] = Field(default_factory=dict)
    candidates: list[str | Candidate] | None = None
    select_by: str | None = None
    tie_tolerance: float = Field(default=0.001, ge=0)
    cv: int = Field(default=0, ge=0, le=50)
    class_weight: Literal["balanced"] | dict[str, float] | None = None
    seed: int = Field(default=42, ge=0, lt=2**32)
    early_stopping_rounds: int | None = Field(default=None, ge=1)
    drop: list[str] = Field(default_factory=list)
    onnx: bool = True

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        return _check_model_name(value)

    @field_validator("candidates")
    @classmethod
    def _known_candidates(cls, value: list[str | Candidate] | None) -> list[str | Candidate] | None:
        if value is not None:
            if not value:
                msg = "candidates is empty; list at least one model"
                raise ValueError(msg)
            for c in value:
                _check_model_name(c if isinstance(c, str) else c.model)
        return value

    @field_validator("cv")
    @classmethod
    def _folds(cls, value: int) -> int:
        if value == 1:
            msg = "cv: 1 is not cross-validation; use 0 (off) or 2 or more folds"
            raise ValueError(msg)
        return value

    @model_validator(mode="after")
    def _params_with_candidates(self) -> TrainParams:
        if self.candidates is not None and "model" in self.model_fields_set:
            msg = "give either 'model' or 'candidates', not both"
            raise ValueError(msg)
        return self

    def specs(self) -> list[Candidate]:
        """The models to train: the candidates, or the one model."""
        if self.candidates is None:
            return [Candidate(model=self.model, params=self.params)]
        return [Candidate(model=c) if isinstance(c, str) else c for c in self.candidates]


class Train(StageKind[TrainParams]):
    """Fit a model (or pick the best of several) and write it as a model bundle."""

    name = "train"
    version = "1"
    Params = TrainParams
    min_inputs = 1
    max_inputs = 5
    summary = "fit a model (aliases or any sklearn estimator) into a model bundle"
    outputs: ClassVar[dict[str, Output]] = {
        "bundle": Output("files", description="the model bundle directory"),
        "scores": Output("json", description="validation, cross-validation and train scores"),
        "candidates": Output("table", description="one row per model trained, the chosen first"),
    }

    def run(self, params: TrainParams, inputs: Inputs, ctx: StageContext) -> dict[str, Any]:
        from ductwork.ml import require_ml

        require_ml("the train stage")
        import polars as pl

        from ductwork.ml import bundle as bundle_mod
        from ductwork.ml import estimators, scoring
        from ductwork.ml.features import load_transform, split_xy

        for name in inputs:
            if name not in _INPUTS:
                msg = (
                    f"stage '{ctx.stage}': unknown input '{name}'{did_you_mean(name, _INPUTS)}; "
                    f"train takes {', '.join(_INPUTS)} (e.g. inputs: {{train: split.train, "
                    "val: split.val, transform: features.transform}})"
                )
                raise DataError(msg)
        if "train" not in inputs:
            msg = f"stage '{ctx.stage}': needs an input named 'train' (got {', '.join(inputs)})"
            raise DataError(msg)
        train_df = inputs["train"].frame()
        if train_df.height == 0:
            msg = f"stage '{ctx.stage}': the train input has no rows"
            raise DataError(msg)
        val_df = inputs["val"].frame() if "val" in inputs else None
        if val_df is not None and val_df.height == 0:
            val_df = None

        transform: Any = None
        info: dict[str, Any] = {}
        if "transform" in inputs:
            transform, info = load_transform(inputs["transform"].path)
            if info.get("target") not in (None, params.target):
                msg = (
                    f"stage '{ctx.stage}': the features stage was fitted for target "
                    f"'{info.get('target')}', not '{params.target}'"
                )
                raise DataError(msg)
        X, y_or_none = split_xy(train_df, params.target, ctx.stage)
        assert y_or_none is not None  # a target was given
        y = y_or_none
        columns = self._input_columns(params, X, info, ctx)
        X = X.select(columns)
        task = params.task or estimators.infer_task(y)
        if task == "classification" and y.n_unique() < 2:
            msg = f"stage '{ctx.stage}': target '{params.target}' has one class only"
            raise DataError(msg)
        X_val = y_val = None
        if val_df is not None:
            X_val, y_val = split_xy(val_df, params.target, f"{ctx.stage}' (val input)")
            X_val = X_val.select(columns)
        classes = sorted(y.unique().to_list()) if task == "classification" else None
        objective = (
            scoring.objective(params.select_by, task)
            if params.select_by
            else scoring.default_objective(task, len(classes or []))
        )
        tuned: dict[str, Any] = {}
        if "params" in inputs:
            raw = inputs["params"].json()
            tuned = dict(raw.get("params", raw)) if isinstance(raw, dict) else {}

        Xt = X
        if transform is not None and "train_features" in inputs:
            Xt = self._train_features(inputs, info, params, X.height, ctx)
        elif transform is not None:
            # Refit a clone exactly as Pipeline.fit would: fit_transform on the train rows, so
            # target encoding is cross-fitted there (transform() would hand every row its own
            # label's mean). The same data and seed give the features stage's fitted object.
            from sklearn.base import clone

            transform = clone(transform)
            Xt = transform.fit_transform(X, y.to_numpy())
        Xt_val = (
            transform.transform(X_val) if transform is not None and X_val is not None else X_val
        )
        results: list[dict[str, Any]] = []
        fitted: list[Any] = []
        specs = params.specs()
        for i, spec in enumerate(specs):
            est_params = {**spec.params, **tuned} if len(specs) == 1 else dict(spec.params)
            ctx.progress(i, len(specs), "models")
            started = time.perf_counter()
            model = self._fit(
                spec.model, est_params, task, params, Xt, y, Xt_val, y_val, transform, ctx
            )
            fit_s = time.perf_counter() - started
            row: dict[str, Any] = {
                "model": spec.model,
                "estimator": _class_path(model.steps[-1][1]),
                "fit_s": round(fit_s, 4),
                "simplicity": estimators.simplicity(spec.model),
            }
            if X_val is not None and y_val is not None:
                row["val"] = scoring.score(objective, model, X_val, y_val)
            if params.cv:
                cv_mean, cv_std = self._cross_validate(
                    spec.model, est_params, task, params, X, y, transform, objective
                )
                row["cv_mean"], row["cv_std"] = cv_mean, cv_std
            row["train"] = scoring.score(objective, model, X, y)
            sample = (X_val if X_val is not None else X).head(_LATENCY_ROWS)
            started = time.perf_counter()
            model.predict(sample)
            row["latency_ms_per_1k"] = (time.perf_counter() - started) * 1000 * 1000 / sample.height
            row["score"] = row.get("val", row.get("cv_mean", row["train"]))
            row["params"] = est_params
            results.append(row)
            fitted.append(model)
        ctx.progress(len(specs), len(specs), "models")
        best = _choose(results, objective.direction, params.tie_tolerance)
        model = fitted[best]
        chosen = results[best]

        n_ref = min(train_df.height, _REFERENCE_ROWS)
        ref_rows = train_df.sample(n_ref, seed=params.seed) if n_ref < train_df.height else train_df
        meta = bundle_mod.BundleMeta(
            task=task,
            target=params.target,
            classes=[_plain(c) for c in classes] if classes is not None else None,
            model=chosen["model"],
            estimator=chosen["estimator"],
            params=_jsonable(chosen["params"]),
            input_schema=bundle_mod.input_schema(
                train_df, columns, imputed=info.get("imputed", [])
            ),
            output_schema=_output_schema(y, classes, hasattr(model, "predict_proba")),
            feature_names=[str(c) for c in (info.get("output_features") or list(Xt.columns))],
            metrics={
                "objective": objective.name,
                "val": chosen.get("val"),
                "cv_mean": chosen.get("cv_mean"),
                "cv_std": chosen.get("cv_std"),
                "train": chosen["train"],
            },
            data={
                name: {"sha256": inputs[name].info.sha256, "rows": inputs[name].rows}
                for name in ("train", "val", "transform", "params")
                if name in inputs
            },
            versions=bundle_mod.library_versions(),
        )
        directory = ctx.tmp_dir / "bundle"
        directory.mkdir(parents=True, exist_ok=True)
        draft = bundle_mod.Bundle(directory, meta)
        draft.__dict__["model"] = model
        preds = draft.predict(ref_rows.select(columns))
        meta.reference = {
            "features": bundle_mod.reference_stats(ref_rows, columns),
            "predictions": bundle_mod.reference_stats(preds, list(preds.columns)),
            "rows": ref_rows.height,
        }
        if params.onnx:
            meta.onnx = _export_onnx(model, meta, ref_rows.select(columns).head(2000), directory)
        written = bundle_mod.write_bundle(directory, model, meta)
        _check_parity(written, X.head(_PARITY_ROWS), ctx.stage)

        comparison = pl.DataFrame(
            [
                {
                    "model": r["model"],
                    "estimator": r["estimator"],
                    "chosen": i == best,
                    "score": r["score"],
                    "val": r.get("val"),
                    "cv_mean": r.get("cv_mean"),
                    "cv_std": r.get("cv_std"),
                    "train": r["train"],
                    "latency_ms_per_1k": r["latency_ms_per_1k"],
                    "fit_s": r["fit_s"],
                    "simplicity": r["simplicity"],
                }
                for i, r in sorted(enumerate(results), key=lambda t: t[0] != best)
            ],
            schema_overrides={"val": pl.Float64, "cv_mean": pl.Float64, "cv_std": pl.Float64},
        )
        ctx.metric(
            model=chosen["model"],
            task=task,
            objective=objective.name,
            score=round(float(chosen["score"]), 6),
            features=len(meta.feature_names),
            rows_train=train_df.height,
        )
        scores = {
            "task": task,
            "objective": objective.name,
            "direction": objective.direction,
            "chosen": chosen["model"],
            "model_id": written.meta.model_id,
            "candidates": [_jsonable(dict(r)) for r in results],
        }
        return {"bundle": directory, "scores": scores, "candidates": comparison}

    def check(
        self,
        params: TrainParams,
        inputs: Inputs,
        outputs: Mapping[str, ArtifactInfo],
        ctx: StageContext,
    ) -> list[str]:
        bundle_dir = Path(outputs["bundle"].path)
        problems = []
        for name in ("bundle.json", "model.skops"):
            if not (bundle_dir / name).is_file():
                problems.append(f"the bundle has no {name}")
        return problems

    # -- helpers --------------------------------------------------------------------------

    def _train_features(
        self,
        inputs: Inputs,
        info: dict[str, Any],
        params: TrainParams,
        rows: int,
        ctx: StageContext,
    ) -> pl.DataFrame:
        """The features stage's ``train`` output: fit_transform of the same rows, already made."""
        frame = inputs["train_features"].frame()
        expected = [str(c) for c in info.get("output_features", [])]
        features = frame.drop(params.target, strict=False)
        if frame.height != rows or features.columns != expected:
            msg = (
                f"stage '{ctx.stage}': input 'train_features' is not the features stage's train "
                f"output for these train rows ({frame.height:,} rows, {features.width} columns; "
                f"expected {rows:,} rows and the transform's {len(expected)} features)"
            )
            raise DataError(msg)
        return features

    def _input_columns(
        self, params: TrainParams, X: pl.DataFrame, info: dict[str, Any], ctx: StageContext
    ) -> list[str]:
        if info:
            columns = [c for c in info.get("input_columns", []) if c not in params.drop]
            missing = [c for c in columns if c not in X.columns]
            if missing:
                msg = (
                    f"stage '{ctx.stage}': the features were fitted on column '{missing[0]}', "
                    f"which the train input lacks{did_you_mean(missing[0], X.columns)}"
                )
                raise DataError(msg)
            return columns
        for name in params.drop:
            if name not in X.columns:
                msg = f"stage '{ctx.stage}': drop names no column '{name}'{did_you_mean(name, X.columns)}"
                raise DataError(msg)
        columns = [c for c in X.columns if c not in params.drop]
        for c in columns:
            dtype = X.schema[c]
            if not (dtype.is_numeric() or dtype.to_python() is bool):
                example = X.get_column(c).drop_nulls().head(1).to_list()
                msg = (
                    f"stage '{ctx.stage}': column '{c}' is {dtype}"
                    + (f" (e.g. {example[0]!r})" if example else "")
                    + "; models need numbers: encode it in a features stage or list it in drop:"
                )
                raise DataError(msg)
        return columns

    def _estimator(
        self, model: str, est_params: dict[str, Any], task: str, params: TrainParams
    ) -> Any:
        from ductwork.ml import estimators

        spec = estimators.ALIASES.get(model)
        class_weight = params.class_weight if spec is None or spec.class_weight else None
        extra = dict(est_params)
        if params.early_stopping_rounds and estimators.early_stopping_kind(model) == "xgboost":
            extra.setdefault("early_stopping_rounds", params.early_stopping_rounds)
        est = estimators.build(
            model,
            extra,
            task,  # type: ignore[arg-type]
            seed=params.seed,
            class_weight=class_weight,
        )
        if model == "xgboost" and task == "classification":
            from ductwork.ml.wrappers import EncodedLabels

            est = EncodedLabels(est)
        return est

    def _fit(
        self,
        model: str,
        est_params: dict[str, Any],
        task: str,
        params: TrainParams,
        Xt: Any,
        y: pl.Series,
        Xt_val: Any,
        y_val: pl.Series | None,
        transform: Any,
        ctx: StageContext,
    ) -> Any:
        from sklearn.pipeline import Pipeline

        from ductwork.ml import estimators

        est = self._estimator(model, est_params, task, params)
        fit_kwargs: dict[str, Any] = {}
        spec = estimators.ALIASES.get(model)
        if params.class_weight is not None and spec is not None and not spec.class_weight:
            from sklearn.utils.class_weight import compute_sample_weight

            fit_kwargs["sample_weight"] = compute_sample_weight(params.class_weight, y.to_numpy())
        kind = estimators.early_stopping_kind(model)
        if params.early_stopping_rounds and kind is not None:
            if Xt_val is None or y_val is None:
                msg = f"stage '{ctx.stage}': early_stopping_rounds needs a non-empty val input"
                raise DataError(msg)
            # eval_set, not LightGBM 4.7's eval_X/eval_y: those skip its label encoding
            fit_kwargs["eval_set"] = [(Xt_val, y_val.to_numpy())]
            if kind == "xgboost":
                fit_kwargs["verbose"] = False
            else:
                import lightgbm

                fit_kwargs["callbacks"] = [
                    lightgbm.early_stopping(params.early_stopping_rounds, verbose=False)
                ]
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*'eval_set' is deprecated")
                est.fit(Xt, y.to_numpy(), **fit_kwargs)
        except ValueError as exc:
            msg = f"stage '{ctx.stage}': model '{model}' could not be fitted: {exc}"
            raise DataError(msg) from None
        steps: list[tuple[str, Any]] = []
        if transform is not None:
            steps.append(("features", transform))
        steps.append(("model", est))
        return Pipeline(steps)

    def _cross_validate(
        self,
        model: str,
        est_params: dict[str, Any],
        task: str,
        params: TrainParams,
        X: pl.DataFrame,
        y: pl.Series,
        transform: Any,
        objective: Any,
    ) -> tuple[float, float]:
        import numpy as np
        from sklearn.base import clone
        from sklearn.model_selection import KFold, StratifiedKFold, cross_val_score
        from sklearn.pipeline import Pipeline

        est = self._estimator(
            model, est_params, task, params.model_copy(update={"early_stopping_rounds": None})
        )
        steps: list[tuple[str, Any]] = []
        if transform is not None:
            steps.append(("features", clone(transform)))
        steps.append(("model", est))
        splitter = (
            StratifiedKFold(params.cv, shuffle=True, random_state=params.seed)
            if task == "classification"
            else KFold(params.cv, shuffle=True, random_state=params.seed)
        )
        scores = cross_val_score(
            Pipeline(steps), X, y.to_numpy(), cv=splitter, scoring=objective.scorer, n_jobs=1
        )
        values = np.asarray(scores) * objective.sign
        return float(values.mean()), float(values.std())


def _choose(results: list[dict[str, Any]], direction: str, tolerance: float) -> int:
    """Index of the best: by score, then (within ``tolerance``) latency, then simplicity."""
    sign = 1.0 if direction == "maximize" else -1.0
    top = max(sign * r["score"] for r in results)
    close = [i for i, r in enumerate(results) if sign * r["score"] >= top - tolerance]
    return min(close, key=lambda i: (results[i]["latency_ms_per_1k"], results[i]["simplicity"]))


def _output_schema(y: pl.Series, classes: list[Any] | None, proba: bool) -> dict[str, str]:
    from ductwork.ml.bundle import PREDICTION, proba_column

    if classes is None:
        return {PREDICTION: "Float64"}
    schema = {PREDICTION: str(y.dtype)}
    if proba:
        for c in classes:
            schema[proba_column(_plain(c))] = "Float64"
    return schema


def _plain(value: Any) -> Any:
    """A NumPy scalar as a plain Python value (JSON-able)."""
    item = getattr(value, "item", None)
    return item() if callable(item) else value


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    plain = _plain(value)
    return plain if isinstance(plain, str | int | float | bool) else repr(value)


def _class_path(obj: Any) -> str:
    inner = getattr(obj, "estimator", None) if type(obj).__name__ == "EncodedLabels" else None
    target = inner if inner is not None else obj
    return f"{type(target).__module__}.{type(target).__qualname__}"


def _export_onnx(model: Any, meta: Any, sample: pl.DataFrame, directory: Path) -> Any:
    try:
        from ductwork.ml.onnx import export_onnx
    except ImportError:  # ONNX support not installed
        return None
    return export_onnx(model, meta, sample, directory)


def _check_parity(bundle: Any, sample: pl.DataFrame, stage: str) -> None:
    """Train/serve parity: the bundle read back from disk predicts what the fitted object does."""
    from ductwork.ml.bundle import Bundle

    reloaded = Bundle.load(bundle.path)
    expected = bundle.predict(sample)
    actual = reloaded.predict(sample)
    if not expected.equals(actual):
        msg = f"stage '{stage}': the bundle read back from disk predicts differently"
        raise UsageError(msg)

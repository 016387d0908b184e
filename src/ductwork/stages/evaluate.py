"""The ``evaluate`` stage kind: score a model bundle on held-out rows.

Inputs, by name: ``model`` (a model bundle, e.g. the ``train`` stage's main output) and ``test``
(a table with the model's input columns and the target). The test rows are first checked
against the bundle's input contract (:meth:`ductwork.ml.bundle.Bundle.validate`): rows that
break it are counted as ``quarantined`` and left out, the rest are scored.

Metrics (flat names, see :mod:`ductwork.ml.metrics`): the classification or regression set,
``cost`` and ``cost_per_row`` from a ``cost_matrix``, custom metrics from ``custom:`` functions,
and the single-row prediction latency (``latency_p50_ms``, ``latency_p95_ms``) and batch
``throughput_rows_per_s``. ``slices`` gives the same metrics per value of a column.
With ``champion`` (a bundle path or ``NAME@ALIAS`` in the registry), the champion is scored on
the same rows and every metric is compared; a registry without that model yet (the first run of
a pipeline) gives ``champion: null``.

Outputs: ``metrics`` (json, what a ``gate`` reads), ``report`` (a directory with a
self-contained ``report.html``, ``metrics.json`` and the plots as PNG) and ``predictions`` (one
row per scored test row).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import polars as pl
from pydantic import Field, field_validator

from ductwork.core.contract import (
    ArtifactInfo,
    Inputs,
    Output,
    StageContext,
    StageKind,
    StageParams,
)
from ductwork.errors import DataError, did_you_mean

if TYPE_CHECKING:
    import numpy as np

    from ductwork.ml.bundle import Bundle

ROW = "_row"
IMPORTANCE_REPEATS = 3
_RESERVED = ("rows",)


class EvaluateParams(StageParams):
    target: str | None = Field(
        default=None, description="The target column (default: the model's)."
    )
    positive: str | int | float | bool | None = Field(
        default=None,
        description="The positive class of a binary task (default: the second sorted).",
    )
    slices: list[str] = Field(default_factory=list, description="Columns to break metrics down by.")
    max_slice_values: int = Field(default=50, ge=1, le=10_000)
    metrics: list[str] | None = Field(
        default=None, description="Only these metrics (default: all)."
    )
    cost_matrix: dict[Any, dict[Any, float]] | None = Field(
        default=None, description="{actual: {predicted: cost}}; unlisted pairs cost 0."
    )
    custom: list[str] = Field(
        default_factory=list, description="'module:function(y_true, y_pred, proba)' metrics."
    )
    champion: str | None = Field(
        default=None, description="The model to compare with: a bundle path or NAME@ALIAS."
    )
    plots: bool = True
    latency_rows: int = Field(default=200, ge=0, le=100_000)
    importance_rows: int = Field(default=2_000, ge=0, le=1_000_000)
    seed: int = Field(default=42, ge=0, lt=2**32)

    @field_validator("slices")
    @classmethod
    def _unique_slices(cls, value: list[str]) -> list[str]:
        seen = [c for i, c in enumerate(value) if c in value[:i]]
        if seen:
            msg = f"slice column '{seen[0]}' is listed twice"
            raise ValueError(msg)
        return value

    @field_validator("metrics")
    @classmethod
    def _some_metrics(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            msg = "metrics is empty; list at least one metric, or leave it out for all"
            raise ValueError(msg)
        return value

    @field_validator("cost_matrix")
    @classmethod
    def _costs(
        cls, value: dict[Any, dict[Any, float]] | None
    ) -> dict[Any, dict[Any, float]] | None:
        if value is None:
            return None
        from ductwork.ml.metrics import normalize_cost_matrix

        if not value:
            msg = "cost_matrix is empty; write {actual: {predicted: cost}}"
            raise ValueError(msg)
        return normalize_cost_matrix(value)

    @field_validator("custom")
    @classmethod
    def _custom_targets(cls, value: list[str]) -> list[str]:
        for target in value:
            module, sep, attr = target.partition(":")
            if not (module and sep and attr):
                msg = f"custom metric '{target}' must look like 'package.module:function'"
                raise ValueError(msg)
        return value

    def functions(self) -> list[Callable[..., Any]]:
        from ductwork.stages.python import _load_callable

        return [_load_callable(t) for t in self.custom]


class Evaluate(StageKind[EvaluateParams]):
    """Score a model bundle on test rows: metrics, slices, latency, plots, champion comparison."""

    name = "evaluate"
    version = "1"
    Params = EvaluateParams
    min_inputs = 2
    max_inputs = 2
    summary = "metrics, slices, latency, plots and an HTML report of a model on test rows"
    outputs: ClassVar[dict[str, Output]] = {
        "metrics": Output("json", description="metrics, slices, confusion matrix, comparison"),
        "report": Output("files", description="report.html, metrics.json and the plots"),
        "predictions": Output("table", description="one row per scored test row"),
    }

    def code_stamp(self, params: EvaluateParams) -> str:
        if not params.custom:
            return ""
        from ductwork.core.fingerprint import source_digest

        h = hashlib.sha256()
        for fn in params.functions():
            h.update(source_digest(fn).encode())
        return h.hexdigest()

    def source_stamp(self, params: EvaluateParams, ctx: StageContext) -> str | None:
        """What the champion is now, so a newly promoted champion re-runs the comparison."""
        if params.champion is None:
            return ""
        try:
            from ductwork.ml.resolve import is_registry_ref, load_bundle

            if is_registry_ref(params.champion):
                from ductwork.ml.tracking import registry_stamp

                stamp = registry_stamp(params.champion, ctx.project_dir)
                model = ctx.input_infos.get("model")
                if model is not None and stamp.endswith(f":{model.sha256}"):
                    return ""  # the champion is this very model (registered by a past run)
                return f"champion:{stamp}" if stamp else ""
            champion = load_bundle(params.champion, project_dir=ctx.project_dir, missing_ok=True)
        except Exception:  # unresolvable now: run() reports why
            return ""
        return "" if champion is None else f"champion:{champion.meta.model_id}"

    def run(self, params: EvaluateParams, inputs: Inputs, ctx: StageContext) -> dict[str, Any]:
        from ductwork.ml import require_ml

        require_ml("the evaluate stage")
        from ductwork.ml import metrics as M
        from ductwork.ml.bundle import Bundle

        _check_input_names(ctx.stage, inputs)
        bundle = Bundle.load(inputs["model"].path)
        test = inputs["test"].frame()
        target = params.target or bundle.meta.target
        _require_columns(ctx.stage, test, target, params.slices)
        _require_target_values(ctx.stage, test, target)

        valid_x, rows, quarantined = _valid_rows(ctx.stage, bundle, test)
        if quarantined:
            ctx.log(
                f"{quarantined:,} of {test.height:,} test rows break the model's input contract"
            )
        if rows.height == 0:
            msg = (
                f"stage '{ctx.stage}': none of the {test.height:,} test rows meet the model's "
                "input contract, so there is nothing to evaluate"
            )
            raise DataError(msg, hint="See the bundle's input_schema for the expected columns.")

        scorer = _Scorer.make(ctx.stage, bundle, params, rows[target])
        scored = scorer.predict(valid_x, rows[target])
        metrics = scorer.metrics(scored)
        if _wants_latency(params):
            metrics.update(_latency(bundle, valid_x, params))
            metrics["throughput_rows_per_s"] = scored.throughput
        metrics = _select(ctx.stage, params, scorer, metrics)
        result: dict[str, Any] = {
            "task": bundle.meta.task,
            "model_id": bundle.meta.model_id,
            "target": target,
            "rows": rows.height,
            "quarantined": quarantined,
            "positive": scorer.positive,
            "metrics": metrics,
            "slices": {},
            "confusion_matrix": None,
            "champion": None,
            "comparison": {},
            "importance": None,
            "plots": [],
        }
        if bundle.meta.task == "classification":
            result["confusion_matrix"] = M.confusion(scored.y, scored.pred, scorer.classes)
        for column in params.slices:
            keys, order = M.slice_keys(rows[column].to_list(), params.max_slice_values)
            result["slices"][column] = M.slice_metrics(
                keys,
                order,
                lambda mask: _select(
                    ctx.stage, params, scorer, scorer.metrics(scored.subset(mask))
                ),
            )
        if params.champion is not None:
            result["champion"], result["comparison"] = _champion(
                ctx, params, bundle, rows, target, scorer, scored, metrics
            )
        if params.importance_rows:
            result["importance"] = _importance(bundle, valid_x, scored, params)

        report_dir = ctx.tmp_dir / "report"
        report_dir.mkdir(parents=True, exist_ok=True)
        plots = _plots(report_dir, bundle, scorer, scored, result, params) if params.plots else []
        result["plots"] = [p.name for p in plots]
        result = M.to_python(result)
        _write_report(report_dir, result, plots, ctx)

        ctx.metric(rows=rows.height, quarantined=quarantined, **result["metrics"])
        predictions = _predictions(rows, scored, target, params.slices)
        return {"metrics": result, "report": report_dir, "predictions": predictions}

    def check(
        self,
        params: EvaluateParams,
        inputs: Inputs,
        outputs: Mapping[str, ArtifactInfo],
        ctx: StageContext,
    ) -> list[str]:
        info = outputs.get("metrics")
        if info is None or not info.path:
            return []
        result = json.loads(Path(info.path).read_bytes())
        problems = []
        predictions = outputs.get("predictions")
        if predictions is not None and predictions.rows not in (None, result["rows"]):
            problems.append(
                f"predictions has {predictions.rows} rows, but {result['rows']} were scored"
            )
        for column, groups in result["slices"].items():
            total = sum(g["rows"] for g in groups.values())
            if total != result["rows"]:
                problems.append(
                    f"slices: the '{column}' slices hold {total} rows, not the {result['rows']} scored"
                )
        return problems


# ------------------------------------------------------------------------------- scoring
@dataclass
class _Scored:
    """Labels, predictions and probabilities of one model on some rows."""

    y: np.ndarray
    pred: np.ndarray
    proba: np.ndarray | None
    frame: pl.DataFrame  # the bundle's prediction output
    throughput: float | None = None

    def subset(self, mask: np.ndarray) -> _Scored:
        import numpy as np

        return _Scored(
            y=self.y[mask],
            pred=self.pred[mask],
            proba=None if self.proba is None else self.proba[mask],
            frame=self.frame.filter(pl.Series(np.asarray(mask, dtype=bool))),
        )


@dataclass
class _Scorer:
    """How one model's predictions become metrics (shared by the model and its champion)."""

    stage: str
    bundle: Bundle
    classes: list[Any]
    positive: Any
    cost_matrix: dict[str, dict[str, float]] | None
    custom: list[Callable[..., Any]]

    @classmethod
    def make(cls, stage: str, bundle: Bundle, params: EvaluateParams, y: pl.Series) -> _Scorer:
        from ductwork.ml import metrics as M

        task = bundle.meta.task
        classes: list[Any] = []
        positive = None
        if task == "classification":
            classes = list(bundle.meta.classes or M.sorted_classes(y.drop_nulls().to_list()))
            if len(classes) == 2:
                try:
                    positive = M.positive_class(classes, params.positive)
                except DataError as exc:
                    msg = f"stage '{stage}': {exc.message}"
                    raise DataError(msg) from None
            elif params.positive is not None:
                msg = f"stage '{stage}': positive is for binary models; this one has {len(classes)} classes"
                raise DataError(msg)
        else:
            for key in ("positive", "cost_matrix"):
                if getattr(params, key) is not None:
                    msg = f"stage '{stage}': {key} is for classification, and the model is a regression"
                    raise DataError(msg)
        costs = params.cost_matrix
        if costs is not None:
            try:
                M.cost([], [], costs, classes)
            except DataError as exc:
                msg = f"stage '{stage}': {exc.message}"
                raise DataError(msg) from None
        return cls(stage, bundle, classes, positive, costs, params.functions())

    def predict(self, x: pl.DataFrame, y: pl.Series) -> _Scored:
        import numpy as np

        self.bundle.predict(x.head(1))  # load the model and warm up: not part of the timing
        start = time.perf_counter()
        out = self.bundle.predict(x)
        seconds = time.perf_counter() - start
        pred = out["prediction"]
        if self.classes and pred.dtype != y.dtype:
            pred = pred.cast(y.dtype, strict=False)
        columns = [c for c in self.bundle.meta.proba_columns if c in out.columns]
        proba = (
            out.select(columns).to_numpy().astype(np.float64)
            if self.classes and len(columns) == len(self.classes)
            else None
        )
        return _Scored(
            y=y.to_numpy(),
            pred=pred.to_numpy(),
            proba=proba,
            frame=out,
            throughput=x.height / seconds if seconds > 0 else None,
        )

    def metrics(self, scored: _Scored) -> dict[str, Any]:
        from ductwork.ml import metrics as M

        out: dict[str, Any]
        if self.bundle.meta.task == "classification":
            out = dict(
                M.classification_metrics(
                    scored.y, scored.pred, scored.proba, self.classes, positive=self.positive
                )
            )
        else:
            out = dict(M.regression_metrics(scored.y, scored.pred))
        if self.cost_matrix is not None:
            c = M.cost(scored.y, scored.pred, self.cost_matrix)
            out["cost"] = c.total
            out["cost_per_row"] = c.mean
        for fn in self.custom:
            out.update(self._custom(fn, scored, set(out)))
        return out

    def _custom(self, fn: Callable[..., Any], scored: _Scored, taken: set[str]) -> dict[str, Any]:
        import math

        from ductwork.ml import metrics as M

        name = getattr(fn, "__name__", "custom")
        value = fn(scored.y, scored.pred, scored.proba)
        values = dict(value) if isinstance(value, Mapping) else {name: value}
        out: dict[str, Any] = {}
        for key, v in values.items():
            key = str(key)
            if key in taken or key in _RESERVED or key in M.DIRECTIONS:
                msg = f"stage '{self.stage}': custom metric '{key}' ({name}) has a built-in metric's name"
                raise DataError(msg, hint="Return another name (a dict {name: value} names it).")
            v = M.to_python(v)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)):
                msg = f"stage '{self.stage}': custom metric '{key}' ({name}) returned {v!r}, not a number"
                raise DataError(msg)
            out[key] = None if v is None or not math.isfinite(v) else float(v)
        return out


def _wants_latency(params: EvaluateParams) -> bool:
    from ductwork.ml.metrics import LATENCY_METRICS

    if params.latency_rows == 0:
        return False
    return params.metrics is None or any(m in LATENCY_METRICS for m in params.metrics)


def _latency(bundle: Bundle, x: pl.DataFrame, params: EvaluateParams) -> dict[str, float]:
    from ductwork.ml import metrics as M

    positions = M.sample_rows(x.height, params.latency_rows, params.seed)
    latency = M.single_row_latency(lambda i: bundle.predict(x.slice(i, 1)), positions.tolist())
    return latency.as_metrics()


def _select(
    stage: str, params: EvaluateParams, scorer: _Scorer, metrics: dict[str, Any]
) -> dict[str, Any]:
    """Only the metrics asked for (all by default); an unknown name is an error."""
    if params.metrics is None:
        return metrics
    from ductwork.ml import metrics as M

    task = scorer.bundle.meta.task
    known = [
        *(M.CLASSIFICATION_METRICS if task == "classification" else M.REGRESSION_METRICS),
        *M.LATENCY_METRICS,
        *(M.COST_METRICS if scorer.cost_matrix is not None else ()),
        *metrics,
    ]
    for name in params.metrics:
        if name not in known:
            other = M.REGRESSION_METRICS if task == "classification" else M.CLASSIFICATION_METRICS
            why = f" (a {'regression' if task == 'classification' else 'classification'} metric)"
            msg = (
                f"stage '{stage}': unknown metric '{name}' for a {task} model"
                f"{why if name in other else did_you_mean(name, known)}"
            )
            raise DataError(msg, hint=f"Metrics: {', '.join(dict.fromkeys(known))}")
    return {name: metrics.get(name) for name in params.metrics if name in metrics or name in known}


# ------------------------------------------------------------------------------- champion
def _champion(
    ctx: StageContext,
    params: EvaluateParams,
    bundle: Bundle,
    rows: pl.DataFrame,
    target: str,
    scorer: _Scorer,
    scored: _Scored,
    metrics: dict[str, Any],
) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """The champion's metrics on the same rows, and the comparison of every metric."""
    import numpy as np

    from ductwork.ml import metrics as M
    from ductwork.ml.resolve import load_bundle

    ref = params.champion or ""
    try:
        champion = load_bundle(ref, project_dir=ctx.project_dir, missing_ok=True)
    except DataError as exc:
        msg = f"stage '{ctx.stage}': champion: {exc.message}"
        raise DataError(msg, hint=exc.hint) from None
    if champion is None:
        ctx.log(f"no champion '{ref}' in the registry yet: nothing to compare with")
        return None, {}
    if champion.meta.task != bundle.meta.task:
        msg = (
            f"stage '{ctx.stage}': the champion '{ref}' is a {champion.meta.task} model, "
            f"and this one is a {bundle.meta.task} model"
        )
        raise DataError(msg)
    try:
        champion_x, champion_q = champion.validate(rows)
    except DataError as exc:
        msg = f"stage '{ctx.stage}': champion '{ref}': {exc.message}"
        raise DataError(msg) from None
    keep = np.ones(rows.height, dtype=bool)
    if champion_q.height:
        keep[champion_q["_row"].to_numpy()] = False
        ctx.log(
            f"the champion rejects {champion_q.height:,} of the {rows.height:,} rows; "
            "the comparison uses the rows both models accept"
        )
    if not keep.any():
        msg = f"stage '{ctx.stage}': the champion '{ref}' accepts none of the test rows"
        raise DataError(msg)
    y = rows[target].filter(pl.Series(keep))
    champion_scorer = _Scorer.make(ctx.stage, champion, params, y)
    champion_scored = champion_scorer.predict(champion_x, y)
    champion_metrics = champion_scorer.metrics(champion_scored)
    mine = dict(metrics) if keep.all() else scorer.metrics(scored.subset(keep))
    if _wants_latency(params):
        champion_metrics.update(_latency(champion, champion_x, params))
        champion_metrics["throughput_rows_per_s"] = champion_scored.throughput
        mine.update({k: v for k, v in metrics.items() if k in M.LATENCY_METRICS})
    champion_metrics = _select(ctx.stage, params, champion_scorer, champion_metrics)
    mine = _select(ctx.stage, params, scorer, mine)
    info = {
        "ref": ref,
        "model_id": champion.meta.model_id,
        "rows": int(keep.sum()),
        "metrics": champion_metrics,
    }
    ctx.log(f"champion '{ref}' ({champion.meta.model_id}) scored on {int(keep.sum()):,} rows")
    return info, M.compare(mine, champion_metrics)


# ------------------------------------------------------------------------------- importance
def _importance(
    bundle: Bundle, x: pl.DataFrame, scored: _Scored, params: EvaluateParams
) -> dict[str, Any]:
    """Permutation importance of the raw input columns on a seeded sample of rows."""
    import warnings

    from sklearn.inspection import permutation_importance
    from threadpoolctl import threadpool_limits

    from ductwork.ml import metrics as M

    positions = M.sample_rows(x.height, params.importance_rows, params.seed)
    sample = x[positions.tolist()]
    # a few thousand rows per call: one thread beats waking a pool once per tree
    with warnings.catch_warnings(), threadpool_limits(limits=1):
        warnings.simplefilter("ignore")
        result = permutation_importance(
            bundle.model,
            sample.to_pandas(),
            scored.y[positions],
            n_repeats=IMPORTANCE_REPEATS,
            random_state=params.seed,
        )
    scoring = "accuracy" if bundle.meta.task == "classification" else "r2"
    return {
        "method": "permutation",
        "scoring": scoring,
        "rows": len(positions),
        "repeats": IMPORTANCE_REPEATS,
        "columns": {
            name: {"mean": float(m), "std": float(s)}
            for name, m, s in zip(
                sample.columns, result.importances_mean, result.importances_std, strict=True
            )
        },
    }


# ------------------------------------------------------------------------------- outputs
def _plots(
    directory: Path,
    bundle: Bundle,
    scorer: _Scorer,
    scored: _Scored,
    result: Mapping[str, Any],
    params: EvaluateParams,
) -> list[Path]:
    from ductwork.ml import plots

    written: list[Path] = []

    def path(name: str) -> Path:
        return directory / name

    if bundle.meta.task == "classification":
        cm = result["confusion_matrix"]
        plots.confusion_plot(path("confusion_matrix.png"), cm["labels"], cm["matrix"])
        written.append(path("confusion_matrix.png"))
        if scored.proba is not None:
            args = (scored.y, scored.proba, scorer.classes, scorer.positive)
            if plots.roc_plot(path("roc.png"), *args):
                written.append(path("roc.png"))
            if plots.pr_plot(path("pr.png"), *args):
                written.append(path("pr.png"))
            if scorer.positive is not None:
                score = scored.proba[:, scorer.classes.index(scorer.positive)]
                if plots.calibration_plot(
                    path("calibration.png"), scored.y == scorer.positive, score
                ):
                    written.append(path("calibration.png"))
    else:
        plots.residuals_plot(path("residuals.png"), scored.y, scored.pred, seed=params.seed)
        written.append(path("residuals.png"))
    importance = result.get("importance")
    if importance:
        names = list(importance["columns"])
        plots.importance_plot(
            path("importance.png"),
            names,
            [importance["columns"][n]["mean"] for n in names],
            [importance["columns"][n]["std"] for n in names],
        )
        written.append(path("importance.png"))
    return written


def _write_report(
    directory: Path, result: Mapping[str, Any], plots: list[Path], ctx: StageContext
) -> None:
    from ductwork.ml import report

    (directory / "metrics.json").write_text(
        json.dumps(result, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    where = " · ".join(p for p in (ctx.pipeline, ctx.stage) if p)
    title = f"Evaluation of the {result['target']} model {result['model_id']}"
    if where:
        title += f" ({where})"
    html = report.render(result, plots, title=title)
    (directory / "report.html").write_text(html, encoding="utf-8")


def _predictions(
    rows: pl.DataFrame, scored: _Scored, target: str, slices: list[str]
) -> pl.DataFrame:
    out = rows.select(ROW, target).hstack(scored.frame)
    extra = [c for c in slices if c not in out.columns]
    return out.hstack(rows.select(extra)) if extra else out


# ------------------------------------------------------------------------------- data checks
def _valid_rows(
    stage: str, bundle: Bundle, test: pl.DataFrame
) -> tuple[pl.DataFrame, pl.DataFrame, int]:
    """The rows meeting the model's contract: model inputs (cast), the rows as given with their
    position ``_row`` in the test table, and how many rows were quarantined."""
    try:
        valid_x, quarantine = bundle.validate(test)
    except DataError as exc:
        msg = f"stage '{stage}': test: {exc.message}"
        raise DataError(msg, hint=exc.hint) from None
    rows = (
        test.drop(ROW, strict=False)  # a column of that name is replaced by the position
        .with_columns(pl.int_range(0, pl.len(), dtype=pl.Int64).alias(ROW))
        .filter(~pl.col(ROW).is_in(quarantine[ROW].implode()))
    )
    return valid_x, rows, quarantine.height


def _check_input_names(stage: str, inputs: Inputs) -> None:
    names = list(inputs)
    if set(names) == {"model", "test"}:
        return
    unknown = [n for n in names if n not in ("model", "test")]
    hint = "Name the inputs: inputs: {model: train, test: split.test}"
    if unknown:
        msg = (
            f"stage '{stage}': unknown input name '{unknown[0]}'"
            f"{did_you_mean(unknown[0], ('model', 'test'))}; evaluate takes inputs named model "
            "(a model bundle) and test (a table)"
        )
        raise DataError(msg, hint=hint)
    msg = f"stage '{stage}': evaluate needs inputs named model and test, got {', '.join(names)}"
    raise DataError(msg, hint=hint)


def _require_columns(stage: str, test: pl.DataFrame, target: str, slices: list[str]) -> None:
    if target in (ROW, "prediction") or target.startswith("proba_"):
        msg = (
            f"stage '{stage}': the target column is named '{target}', a name the predictions "
            "output uses for its own columns"
        )
        raise DataError(msg, hint="Rename the target (e.g. in a transform stage).")
    for what, column in (("target", target), *(("slice", c) for c in slices)):
        if column not in test.columns:
            msg = (
                f"stage '{stage}': {what} column '{column}' not found in the test table"
                f"{did_you_mean(column, test.columns)}"
            )
            raise DataError(msg, hint=f"Columns: {', '.join(test.columns)}")


def _require_target_values(stage: str, test: pl.DataFrame, target: str) -> None:
    s = test[target]
    nulls = s.null_count()
    nans = int(s.is_nan().sum()) if s.dtype.is_float() else 0
    if nulls or nans:
        what = " and ".join(
            t for t in (f"{nulls:,} null" if nulls else "", f"{nans:,} NaN" if nans else "") if t
        )
        msg = (
            f"stage '{stage}': target column '{target}' has {what} value"
            f"{'s' if nulls + nans != 1 else ''}; every test row needs a known target"
        )
        raise DataError(msg, hint="Drop the rows without a target before evaluating.")

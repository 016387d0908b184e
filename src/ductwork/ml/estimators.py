"""Estimators by alias: one table of names, tasks and capabilities, and a checked constructor.

``build("random_forest", {"n_estimators": 300}, task="classification", seed=42)`` returns an
unfitted scikit-learn-compatible estimator. Any other class can be named by its dotted path
(``sklearn.svm.SVC``, ``mypkg.models:MyRegressor``). Unknown aliases and unknown params are
errors with a "did you mean" built from the estimator's own ``get_params()``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ductwork.errors import DataError, UsageError, did_you_mean

if TYPE_CHECKING:
    import polars as pl

Task = Literal["classification", "regression"]
TASKS: tuple[Task, ...] = ("classification", "regression")
# an integer target with at most this many distinct values is taken as class labels
MAX_INTEGER_CLASSES = 20


@dataclass(frozen=True)
class EstimatorSpec:
    """What ductwork knows about an estimator alias."""

    classification: str | None
    regression: str | None
    simplicity: int  # lower is simpler: the tie-breaker of model selection
    class_weight: bool = False  # accepts class_weight="balanced"
    seed_param: str | None = "random_state"
    # early stopping on the val split: "eval_set" (xgboost, lightgbm) or None; the
    # scikit-learn boosters stop early on their own internal validation fraction
    early_stopping: Literal["xgboost", "lightgbm"] | None = None


ALIASES: dict[str, EstimatorSpec] = {
    "linear_regression": EstimatorSpec(
        None, "sklearn.linear_model.LinearRegression", 0, seed_param=None
    ),
    "logistic_regression": EstimatorSpec(
        "sklearn.linear_model.LogisticRegression", None, 1, class_weight=True
    ),
    "ridge": EstimatorSpec(
        "sklearn.linear_model.RidgeClassifier", "sklearn.linear_model.Ridge", 1, class_weight=True
    ),
    "random_forest": EstimatorSpec(
        "sklearn.ensemble.RandomForestClassifier",
        "sklearn.ensemble.RandomForestRegressor",
        3,
        class_weight=True,
    ),
    "gradient_boosting": EstimatorSpec(
        "sklearn.ensemble.GradientBoostingClassifier",
        "sklearn.ensemble.GradientBoostingRegressor",
        4,
    ),
    "hist_gradient_boosting": EstimatorSpec(
        "sklearn.ensemble.HistGradientBoostingClassifier",
        "sklearn.ensemble.HistGradientBoostingRegressor",
        4,
        class_weight=True,
    ),
    "xgboost": EstimatorSpec(
        "xgboost.XGBClassifier", "xgboost.XGBRegressor", 5, early_stopping="xgboost"
    ),
    "lightgbm": EstimatorSpec(
        "lightgbm.LGBMClassifier",
        "lightgbm.LGBMRegressor",
        5,
        class_weight=True,
        early_stopping="lightgbm",
    ),
    "mlp": EstimatorSpec(
        "sklearn.neural_network.MLPClassifier", "sklearn.neural_network.MLPRegressor", 6
    ),
}
# quiet defaults for libraries that print per iteration
_DEFAULTS: dict[str, dict[str, Any]] = {
    "lightgbm": {"verbose": -1},
    "logistic_regression": {"max_iter": 1000},
}


def infer_task(y: pl.Series) -> Task:
    """Classification for booleans, strings, categoricals and integers with few values."""
    import polars as pl

    dtype = y.dtype
    if dtype == pl.Boolean or dtype in (pl.String, pl.Categorical) or isinstance(dtype, pl.Enum):
        return "classification"
    if dtype.is_integer():
        return "classification" if y.n_unique() <= MAX_INTEGER_CLASSES else "regression"
    if dtype.is_float():
        return "regression"
    msg = f"cannot infer the task from target '{y.name}' of type {dtype}; set task:"
    raise DataError(msg)


def resolve(model: str, task: Task) -> tuple[str, EstimatorSpec | None]:
    """The import path for an alias or dotted path, and its spec (None for dotted paths)."""
    spec = ALIASES.get(model)
    if spec is not None:
        path = spec.classification if task == "classification" else spec.regression
        if path is None:
            other = "regression" if task == "classification" else "classification"
            msg = f"model '{model}' does only {other}, and the task is {task}"
            raise UsageError(msg)
        return path, spec
    if "." in model or ":" in model:
        return model, None
    msg = f"unknown model '{model}'{did_you_mean(model, ALIASES)}"
    raise UsageError(msg, hint=f"Aliases: {', '.join(ALIASES)}; or a dotted class path")


def import_class(path: str) -> type[Any]:
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        msg = f"cannot import the estimator module '{module_name}': {exc}"
        raise UsageError(msg) from None
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            msg = f"'{module_name}' has no estimator '{attr}'"
            raise UsageError(msg) from None
    if not (isinstance(obj, type) and hasattr(obj, "fit") and hasattr(obj, "get_params")):
        msg = f"'{path}' is not a scikit-learn-compatible estimator class (fit, get_params)"
        raise UsageError(msg)
    return obj


def build(
    model: str,
    params: dict[str, Any],
    task: Task,
    *,
    seed: int | None = None,
    class_weight: str | dict[str, float] | None = None,
) -> Any:
    """An unfitted estimator for ``model`` with ``params`` checked against its ``get_params()``."""
    path, spec = resolve(model, task)
    cls = import_class(path)
    known = set(cls().get_params(deep=False))
    for name in params:
        if name not in known:
            msg = f"model '{model}' has no param '{name}'{did_you_mean(name, known)}"
            raise UsageError(msg, hint=f"Params of {cls.__name__}: {', '.join(sorted(known))}")
    kwargs: dict[str, Any] = dict(_DEFAULTS.get(model, {}))
    seed_param = spec.seed_param if spec is not None else "random_state"
    if (
        seed is not None
        and seed_param is not None
        and seed_param in known
        and seed_param not in params
    ):
        kwargs[seed_param] = seed
    if class_weight is not None:
        if task != "classification":
            msg = "class_weight is only used for classification"
            raise UsageError(msg)
        if "class_weight" not in known:
            msg = f"model '{model}' does not take class_weight"
            raise UsageError(msg)
        kwargs["class_weight"] = class_weight
    kwargs.update(params)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        msg = f"model '{model}': {exc}"
        raise UsageError(msg) from None


def simplicity(model: str) -> int:
    spec = ALIASES.get(model)
    return spec.simplicity if spec is not None else 9


def early_stopping_kind(model: str) -> str | None:
    spec = ALIASES.get(model)
    return spec.early_stopping if spec is not None else None

"""Model metrics as pure functions of labels, predictions and probabilities.

Every metric has a flat name (``accuracy``, ``roc_auc``, ``rmse``, ``latency_p95_ms``, ...) so
that a gate rule can name it. Values are plain floats, or ``None`` when a metric is undefined on
the rows given (``roc_auc`` of a slice with one class): never NaN, so the results are JSON.

Classification: ``accuracy``, ``balanced_accuracy``, ``precision``, ``recall``, ``f1``
(binary: of the positive class; multiclass: macro averages), ``f1_macro``, ``f1_weighted``,
``roc_auc`` and ``pr_auc`` (binary: of the positive class; multiclass: one-vs-rest, macro
averaged), ``log_loss`` and, binary only, ``brier``. The probability metrics need ``proba``.
Regression: ``mse``, ``rmse``, ``mae``, ``r2``, ``mape`` (a fraction: 0.05 is 5 %).

The positive class of a binary task is the second of the sorted classes (``True`` for booleans,
``1`` for 0/1) unless one is named.
"""

from __future__ import annotations

import functools
import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, ParamSpec, TypeGuard, TypeVar

import numpy as np
from sklearn import metrics as skm

from ductwork.errors import DataError, did_you_mean

Direction = Literal["maximize", "minimize"]
_P = ParamSpec("_P")
_R = TypeVar("_R")

CLASSIFICATION_METRICS: tuple[str, ...] = (
    "accuracy",
    "balanced_accuracy",
    "precision",
    "recall",
    "f1",
    "f1_macro",
    "f1_weighted",
    "roc_auc",
    "pr_auc",
    "log_loss",
    "brier",
)
REGRESSION_METRICS: tuple[str, ...] = ("mse", "rmse", "mae", "r2", "mape")
LATENCY_METRICS: tuple[str, ...] = ("latency_p50_ms", "latency_p95_ms", "throughput_rows_per_s")
COST_METRICS: tuple[str, ...] = ("cost", "cost_per_row")
OTHER = "(other)"  # the pooled slice of the less frequent values

DIRECTIONS: dict[str, Direction] = {
    **dict.fromkeys(
        (
            "accuracy",
            "balanced_accuracy",
            "precision",
            "recall",
            "f1",
            "f1_macro",
            "f1_weighted",
            "roc_auc",
            "pr_auc",
            "r2",
            "throughput_rows_per_s",
        ),
        "maximize",
    ),
    **dict.fromkeys(
        (
            "log_loss",
            "brier",
            "mse",
            "rmse",
            "mae",
            "mape",
            "latency_p50_ms",
            "latency_p95_ms",
            "cost",
            "cost_per_row",
        ),
        "minimize",
    ),
}


def label_text(label: Any) -> str:
    """How a class label is written in keys and column names (``true``/``false`` for booleans)."""
    if isinstance(label, bool | np.bool_):
        return "true" if label else "false"
    if isinstance(label, np.generic):
        label = label.item()
    return str(label)


def to_python(value: Any) -> Any:
    """A JSON-ready copy: numpy scalars and arrays to Python, non-finite floats to None."""
    if isinstance(value, Mapping):
        return {str(k) if not isinstance(k, str) else k: to_python(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_python(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_python(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _float(value: Any) -> float | None:
    f = float(value)
    return f if math.isfinite(f) else None


def sorted_classes(values: Sequence[Any]) -> list[Any]:
    """Class labels in sorted order (by their text when the types do not compare)."""
    unique = list(dict.fromkeys(to_python(list(values))))
    try:
        return sorted(unique)
    except TypeError:
        return sorted(unique, key=label_text)


def positive_class(classes: Sequence[Any], positive: Any = None) -> Any:
    """The positive class of a binary task: ``positive`` if given, else the second sorted."""
    if positive is None:
        return sorted_classes(classes)[-1]
    for c in classes:
        if c == positive and type(c) is type(positive):
            return c
    for c in classes:  # '1' from a YAML string for the class 1, 'true' for True, ...
        if label_text(c) == label_text(positive) or label_text(c).lower() == str(positive).lower():
            return c
    texts = [label_text(c) for c in classes]
    msg = (
        f"positive class '{label_text(positive)}' is not a class of the model"
        f"{did_you_mean(label_text(positive), texts)}; classes: {', '.join(texts)}"
    )
    raise DataError(msg)


def _guarded(fn: Callable[[], float]) -> float | None:
    """A metric that is undefined on these rows (one class present, ...) is None."""
    try:
        return _float(fn())
    except ValueError:
        return None


def _quiet(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Undefined metrics are reported as None, so scikit-learn's warnings about them are noise."""

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn(*args, **kwargs)

    return wrapper


@_quiet
def classification_metrics(
    y_true: Sequence[Any] | np.ndarray,
    y_pred: Sequence[Any] | np.ndarray,
    proba: np.ndarray | None,
    classes: Sequence[Any],
    *,
    positive: Any = None,
) -> dict[str, float | None]:
    """Classification metrics; ``proba`` has one column per class, in ``classes`` order."""
    yt = np.asarray(y_true)
    yp = np.asarray(y_pred)
    out: dict[str, float | None] = {}
    if yt.size == 0:
        return dict.fromkeys(CLASSIFICATION_METRICS)
    out["accuracy"] = _float(skm.accuracy_score(yt, yp))
    out["balanced_accuracy"] = _guarded(lambda: skm.balanced_accuracy_score(yt, yp))
    binary = len(classes) == 2
    if binary:
        pos = positive_class(classes, positive)
        t = yt == pos
        p = yp == pos
        out["precision"] = _float(skm.precision_score(t, p, zero_division=0))
        out["recall"] = _float(skm.recall_score(t, p, zero_division=0))
        out["f1"] = _float(skm.f1_score(t, p, zero_division=0))
    else:
        out["precision"] = _float(skm.precision_score(yt, yp, average="macro", zero_division=0))
        out["recall"] = _float(skm.recall_score(yt, yp, average="macro", zero_division=0))
        out["f1"] = _float(skm.f1_score(yt, yp, average="macro", zero_division=0))
    out["f1_macro"] = _float(skm.f1_score(yt, yp, average="macro", zero_division=0))
    out["f1_weighted"] = _float(skm.f1_score(yt, yp, average="weighted", zero_division=0))
    if proba is None:
        return out
    pr = np.asarray(proba, dtype=np.float64)
    labels = list(classes)
    if binary:
        score = pr[:, labels.index(pos)]
        out["roc_auc"] = _guarded(lambda: skm.roc_auc_score(t, score))
        out["pr_auc"] = _guarded(lambda: skm.average_precision_score(t, score))
        out["brier"] = _guarded(lambda: skm.brier_score_loss(t, score))
    else:
        out["roc_auc"] = _guarded(
            lambda: skm.roc_auc_score(yt, pr, multi_class="ovr", average="macro", labels=labels)
        )
        onehot = np.stack([yt == c for c in labels], axis=1)
        present = onehot.any(axis=0)
        out["pr_auc"] = (
            _guarded(
                lambda: skm.average_precision_score(
                    onehot[:, present], pr[:, present], average="macro"
                )
            )
            if present.any()
            else None
        )
    out["log_loss"] = _guarded(lambda: skm.log_loss(yt, pr, labels=labels))
    return out


@_quiet
def regression_metrics(
    y_true: Sequence[float] | np.ndarray, y_pred: Sequence[float] | np.ndarray
) -> dict[str, float | None]:
    """mse, rmse, mae, r2 and mape (a fraction); r2 is None with fewer than 2 rows."""
    yt = np.asarray(y_true, dtype=np.float64)
    yp = np.asarray(y_pred, dtype=np.float64)
    if yt.size == 0:
        return dict.fromkeys(REGRESSION_METRICS)
    mse = float(skm.mean_squared_error(yt, yp))
    return {
        "mse": _float(mse),
        "rmse": _float(math.sqrt(mse)),
        "mae": _float(skm.mean_absolute_error(yt, yp)),
        "r2": _guarded(lambda: skm.r2_score(yt, yp)) if yt.size >= 2 else None,
        "mape": _float(skm.mean_absolute_percentage_error(yt, yp)),
    }


def confusion(
    y_true: Sequence[Any] | np.ndarray, y_pred: Sequence[Any] | np.ndarray, labels: Sequence[Any]
) -> dict[str, Any]:
    """``{labels, matrix}``: ``matrix[i][j]`` counts rows of class ``labels[i]`` predicted as
    ``labels[j]``. Labels seen in the data but not in ``labels`` are appended."""
    yt = np.asarray(y_true)
    yp = np.asarray(y_pred)
    known = to_python(list(labels))
    extra = [v for v in sorted_classes([*yt.tolist(), *yp.tolist()]) if v not in known]
    all_labels = known + extra
    matrix = skm.confusion_matrix(yt, yp, labels=np.asarray(all_labels, dtype=object))
    return {"labels": all_labels, "matrix": matrix.astype(int).tolist()}


def normalize_cost_matrix(matrix: Mapping[Any, Mapping[Any, Any]]) -> dict[str, dict[str, float]]:
    """Keys as label text (``true``/``false`` for booleans), costs as floats."""
    out: dict[str, dict[str, float]] = {}
    for actual, row in matrix.items():
        if not isinstance(row, Mapping):
            msg = f"cost_matrix['{label_text(actual)}'] must map predicted classes to costs"
            raise ValueError(msg)
        costs: dict[str, float] = {}
        for predicted, c in row.items():
            if isinstance(c, bool) or not isinstance(c, int | float):
                msg = (
                    f"cost_matrix['{label_text(actual)}']['{label_text(predicted)}'] is "
                    f"{c!r}, not a number"
                )
                raise ValueError(msg)
            if not math.isfinite(float(c)):
                msg = (
                    f"cost_matrix['{label_text(actual)}']['{label_text(predicted)}'] is not finite"
                )
                raise ValueError(msg)
            costs[label_text(predicted)] = float(c)
        out[label_text(actual)] = costs
    return out


@dataclass(frozen=True)
class Cost:
    total: float
    per_row: np.ndarray  # the cost of every row

    @property
    def mean(self) -> float | None:
        return float(self.per_row.mean()) if self.per_row.size else None


def cost(
    y_true: Sequence[Any] | np.ndarray,
    y_pred: Sequence[Any] | np.ndarray,
    matrix: Mapping[Any, Mapping[Any, Any]],
    classes: Sequence[Any] | None = None,
) -> Cost:
    """The cost of predictions from a cost matrix ``{actual: {predicted: cost}}``.

    Pairs the matrix does not list cost 0 (so only the mistakes need writing down). With
    ``classes``, a key that is not a class is an error (a typo would silently cost nothing).
    """
    costs = normalize_cost_matrix(matrix)
    if classes is not None:
        texts = [label_text(c) for c in classes]
        for actual, row in costs.items():
            for key in (actual, *row):
                if key not in texts:
                    msg = (
                        f"cost_matrix names class '{key}', which is not a class of the model"
                        f"{did_you_mean(key, texts)}; classes: {', '.join(texts)}"
                    )
                    raise DataError(msg)
    yt = [label_text(v) for v in np.asarray(y_true).tolist()]
    yp = [label_text(v) for v in np.asarray(y_pred).tolist()]
    per_row = np.asarray(
        [costs.get(a, {}).get(p, 0.0) for a, p in zip(yt, yp, strict=True)], dtype=np.float64
    )
    return Cost(total=float(per_row.sum()), per_row=per_row)


def slice_keys(values: Sequence[Any], max_values: int) -> tuple[list[str], list[str]]:
    """Each row's slice key (label text, ``null`` for nulls), and the keys kept.

    Only the ``max_values`` most frequent values get their own slice (ties by key); the rest
    are pooled under ``(other)``, so the slices still add up to all rows.
    """
    keys = ["null" if v is None else label_text(v) for v in values]
    counts: dict[str, int] = {}
    for k in keys:
        counts[k] = counts.get(k, 0) + 1
    ranked = sorted(counts, key=lambda k: (-counts[k], k))
    if len(ranked) <= max_values:
        return keys, sorted(ranked)
    kept = set(ranked[:max_values])
    pooled = [k if k in kept else OTHER for k in keys]
    return pooled, [*sorted(kept), OTHER]


def slice_metrics(
    keys: Sequence[str],
    order: Sequence[str],
    compute: Callable[[np.ndarray], dict[str, Any]],
) -> dict[str, dict[str, Any]]:
    """``{key: {rows, metric...}}``: ``compute`` gets a boolean mask of the slice's rows."""
    arr = np.asarray(keys, dtype=object)
    out: dict[str, dict[str, Any]] = {}
    for key in order:
        mask = arr == key
        out[key] = {"rows": int(mask.sum()), **compute(mask)}
    return out


def compare(
    model: Mapping[str, Any], champion: Mapping[str, Any]
) -> dict[str, dict[str, float | bool | None]]:
    """``{metric: {model, champion, delta, better}}`` for metrics both have a number for.

    ``delta`` is model - champion; ``better`` says whether that is an improvement given the
    metric's direction (None for metrics of unknown direction, such as custom ones).
    """
    out: dict[str, dict[str, float | bool | None]] = {}
    for name, value in model.items():
        other = champion.get(name)
        if not _is_number(value) or not _is_number(other):
            continue
        delta = float(value) - float(other)
        direction = DIRECTIONS.get(name)
        better = (
            None if direction is None else (delta > 0 if direction == "maximize" else delta < 0)
        )
        out[name] = {
            "model": float(value),
            "champion": float(other),
            "delta": delta,
            "better": better,
        }
    return out


def _is_number(value: Any) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class Latency:
    p50_ms: float
    p95_ms: float
    rows: int

    def as_metrics(self) -> dict[str, float]:
        return {"latency_p50_ms": self.p50_ms, "latency_p95_ms": self.p95_ms}


def sample_rows(n: int, k: int, seed: int) -> np.ndarray:
    """``min(k, n)`` distinct row positions out of ``n``, sorted; the same for the same seed."""
    rng = np.random.default_rng(seed)
    if k >= n:
        return np.arange(n)
    return np.sort(rng.choice(n, size=k, replace=False))


def single_row_latency(predict_one: Callable[[int], Any], positions: Sequence[int]) -> Latency:
    """Time ``predict_one(position)`` for every position (after one untimed warm-up call).

    Calls run with one BLAS/OpenMP thread, as a server scoring one request does: a thread pool
    woken for a single row costs more than it saves, and on a busy machine its spin-waits
    turn a millisecond into a second.
    """
    from threadpoolctl import threadpool_limits

    if len(positions) == 0:
        return Latency(0.0, 0.0, 0)
    times = np.empty(len(positions), dtype=np.float64)
    with threadpool_limits(limits=1):
        predict_one(int(positions[0]))
        for i, pos in enumerate(positions):
            start = time.perf_counter_ns()
            predict_one(int(pos))
            times[i] = (time.perf_counter_ns() - start) / 1e6
    p50, p95 = np.percentile(times, [50, 95])
    return Latency(float(p50), float(p95), len(positions))

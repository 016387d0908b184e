"""ductwork.ml.metrics: the pure metric functions, checked against scikit-learn and by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ductwork.errors import DataError
from ductwork.ml import metrics as M


@pytest.fixture(scope="module")
def binary() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    X, y = load_breast_cancer(return_X_y=True)
    model = make_pipeline(StandardScaler(), LogisticRegression()).fit(X[::2], y[::2])
    return y[1::2], model.predict(X[1::2]), model.predict_proba(X[1::2])


@pytest.fixture(scope="module")
def multiclass() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    X, y = load_wine(return_X_y=True)
    model = make_pipeline(StandardScaler(), LogisticRegression()).fit(X[::2], y[::2])
    return y[1::2], model.predict(X[1::2]), model.predict_proba(X[1::2])


def test_binary_metrics_match_sklearn(binary: tuple[np.ndarray, ...]) -> None:
    y, pred, proba = binary
    got = M.classification_metrics(y, pred, proba, [0, 1])
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert got["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert got["precision"] == pytest.approx(skm.precision_score(y, pred))
    assert got["recall"] == pytest.approx(skm.recall_score(y, pred))
    assert got["f1"] == pytest.approx(skm.f1_score(y, pred))
    assert got["f1_macro"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert got["f1_weighted"] == pytest.approx(skm.f1_score(y, pred, average="weighted"))
    assert got["roc_auc"] == pytest.approx(skm.roc_auc_score(y, proba[:, 1]))
    assert got["pr_auc"] == pytest.approx(skm.average_precision_score(y, proba[:, 1]))
    assert got["log_loss"] == pytest.approx(skm.log_loss(y, proba))
    assert got["brier"] == pytest.approx(skm.brier_score_loss(y, proba[:, 1]))
    assert got["precision"] != got["recall"]  # the fixture tells them apart


def test_positive_class_can_be_named(binary: tuple[np.ndarray, ...]) -> None:
    y, pred, proba = binary
    got = M.classification_metrics(y, pred, proba, [0, 1], positive=0)
    assert got["precision"] == pytest.approx(skm.precision_score(y, pred, pos_label=0))
    assert got["roc_auc"] == pytest.approx(skm.roc_auc_score(y == 0, proba[:, 0]))
    # a YAML string names the integer class
    assert M.positive_class([0, 1], "0") == 0
    with pytest.raises(DataError, match=r"positive class '2' is not a class of the model"):
        M.positive_class([0, 1], 2)


def test_default_positive_class_is_the_second_sorted() -> None:
    assert M.positive_class([True, False]) is True
    assert M.positive_class(["yes", "no"]) == "yes"
    assert M.positive_class([1, 0]) == 1
    assert M.positive_class([False, True], "false") is False


def test_string_labels(binary: tuple[np.ndarray, ...]) -> None:
    y, pred, proba = binary
    names = np.asarray(["benign", "malignant"], dtype=object)
    got = M.classification_metrics(names[y], names[pred], proba, ["benign", "malignant"])
    assert got["f1"] == pytest.approx(skm.f1_score(y, pred))
    assert got["roc_auc"] == pytest.approx(skm.roc_auc_score(y, proba[:, 1]))


def test_multiclass_metrics_match_sklearn(multiclass: tuple[np.ndarray, ...]) -> None:
    y, pred, proba = multiclass
    got = M.classification_metrics(y, pred, proba, [0, 1, 2])
    macro_f1 = skm.f1_score(y, pred, average="macro")
    assert got["f1"] == pytest.approx(macro_f1)
    assert got["f1_macro"] == pytest.approx(macro_f1)
    assert got["precision"] == pytest.approx(skm.precision_score(y, pred, average="macro"))
    assert got["recall"] == pytest.approx(skm.recall_score(y, pred, average="macro"))
    assert got["roc_auc"] == pytest.approx(skm.roc_auc_score(y, proba, multi_class="ovr"))
    onehot = np.stack([y == c for c in range(3)], axis=1)
    assert got["pr_auc"] == pytest.approx(skm.average_precision_score(onehot, proba))
    assert got["log_loss"] == pytest.approx(skm.log_loss(y, proba))
    assert "brier" not in got


def test_undefined_metrics_are_none_not_nan() -> None:
    # one class only: ROC AUC is undefined
    got = M.classification_metrics([1, 1, 1], [1, 0, 1], np.array([[0.2, 0.8]] * 3), [0, 1])
    assert got["roc_auc"] is None
    assert got["accuracy"] == pytest.approx(2 / 3)
    assert M.regression_metrics([3.0], [2.0])["r2"] is None
    empty = M.classification_metrics([], [], None, [0, 1])
    assert set(empty.values()) == {None}


def test_without_probabilities_there_are_no_probability_metrics() -> None:
    got = M.classification_metrics([0, 1, 1], [0, 1, 0], None, [0, 1])
    assert "roc_auc" not in got
    assert "log_loss" not in got


def test_regression_metrics_match_sklearn() -> None:
    X, y = load_diabetes(return_X_y=True)
    pred = Ridge().fit(X[::2], y[::2]).predict(X[1::2])
    got = M.regression_metrics(y[1::2], pred)
    assert got["mse"] == pytest.approx(skm.mean_squared_error(y[1::2], pred))
    assert got["rmse"] == pytest.approx(math.sqrt(skm.mean_squared_error(y[1::2], pred)))
    assert got["mae"] == pytest.approx(skm.mean_absolute_error(y[1::2], pred))
    assert got["r2"] == pytest.approx(skm.r2_score(y[1::2], pred))
    assert got["mape"] == pytest.approx(skm.mean_absolute_percentage_error(y[1::2], pred))


def test_confusion_rows_are_actual_columns_predicted() -> None:
    cm = M.confusion(["a", "a", "b", "c"], ["a", "b", "b", "a"], ["a", "b", "c"])
    assert cm == {"labels": ["a", "b", "c"], "matrix": [[1, 1, 0], [0, 1, 0], [1, 0, 0]]}
    # a label the model never saw is appended
    cm = M.confusion(["a", "z"], ["a", "a"], ["a", "b"])
    assert cm["labels"] == ["a", "b", "z"]
    assert cm["matrix"][2] == [1, 0, 0]


def test_cost_matrix_by_hand() -> None:
    # a missed fraud costs 100, a false alarm 5, the rest nothing
    actual = ["fraud", "fraud", "ok", "ok", "ok", "fraud"]
    predicted = ["fraud", "ok", "fraud", "ok", "fraud", "ok"]
    matrix = {"fraud": {"ok": 100}, "ok": {"fraud": 5}}
    c = M.cost(actual, predicted, matrix, ["fraud", "ok"])
    assert c.total == 100 + 5 + 5 + 100
    assert c.per_row.tolist() == [0, 100, 5, 0, 5, 100]
    assert c.mean == pytest.approx(210 / 6)


def test_cost_matrix_keys_match_labels_by_text() -> None:
    # YAML keys: numbers and booleans as written
    c = M.cost([0, 1, 1], [1, 0, 1], {0: {1: 2.5}, "1": {"0": 10}}, [0, 1])
    assert c.total == 12.5
    c = M.cost([True, False], [False, True], {True: {False: 3}}, [False, True])
    assert c.total == 3
    with pytest.raises(DataError, match=r"names class 'fruad'.*did you mean 'fraud'"):
        M.cost(["fraud"], ["ok"], {"fruad": {"ok": 1}}, ["fraud", "ok"])
    with pytest.raises(ValueError, match="not a number"):
        M.normalize_cost_matrix({"a": {"b": "high"}})


def test_slices_pool_rare_values_and_add_up() -> None:
    values = ["a"] * 5 + ["b"] * 3 + ["c"] * 2 + ["d"] + [None] * 2
    keys, order = M.slice_keys(values, max_values=2)
    assert order == ["a", "b", M.OTHER]
    assert keys.count(M.OTHER) == 5
    rows = M.slice_metrics(keys, order, lambda mask: {"n": int(mask.sum())})
    assert sum(r["rows"] for r in rows.values()) == len(values)
    keys, order = M.slice_keys([True, None, False], max_values=10)
    assert order == ["false", "null", "true"]


def test_compare_deltas_and_direction() -> None:
    got = M.compare(
        {"roc_auc": 0.80, "rmse": 2.0, "mine": 1.0, "latency_p95_ms": None},
        {"roc_auc": 0.85, "rmse": 3.0, "mine": 0.5, "latency_p95_ms": 3.0},
    )
    assert got["roc_auc"]["delta"] == pytest.approx(-0.05)
    assert got["roc_auc"]["better"] is False
    assert got["rmse"]["better"] is True
    assert got["mine"]["better"] is None
    assert "latency_p95_ms" not in got


def test_latency_percentiles_and_deterministic_sample() -> None:
    seen: list[int] = []
    lat = M.single_row_latency(seen.append, M.sample_rows(1000, 50, seed=3).tolist())
    assert lat.rows == 50
    assert 0 <= lat.p50_ms <= lat.p95_ms
    assert len(seen) == 51  # one warm-up call
    assert M.sample_rows(1000, 50, seed=3).tolist() == M.sample_rows(1000, 50, seed=3).tolist()
    assert M.sample_rows(10, 50, seed=3).tolist() == list(range(10))


def test_to_python_makes_json() -> None:
    value = {"a": np.float64(1.5), "b": [np.int64(2), float("nan")], 3: np.array([1, 2])}
    assert M.to_python(value) == {"a": 1.5, "b": [2, None], "3": [1, 2]}

"""Metric names users write, mapped to scikit-learn scorers and a direction.

Used wherever a model is chosen by one number: model selection in ``train``, the objective of
``tune``. (``evaluate`` computes the full set of metrics itself.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from ductwork.errors import UsageError, did_you_mean


@dataclass(frozen=True)
class Objective:
    name: str  # what users write: roc_auc, rmse, ...
    scorer: str  # scikit-learn's scorer name
    direction: Literal["maximize", "minimize"]
    task: Literal["classification", "regression"]

    @property
    def sign(self) -> float:
        """scikit-learn scorers are "greater is better"; multiply by this to get the metric."""
        return -1.0 if self.scorer.startswith("neg_") else 1.0


OBJECTIVES: dict[str, Objective] = {
    o.name: o
    for o in (
        Objective("accuracy", "accuracy", "maximize", "classification"),
        Objective("balanced_accuracy", "balanced_accuracy", "maximize", "classification"),
        Objective("roc_auc", "roc_auc", "maximize", "classification"),
        Objective("roc_auc_ovr", "roc_auc_ovr", "maximize", "classification"),
        Objective("pr_auc", "average_precision", "maximize", "classification"),
        Objective("f1", "f1", "maximize", "classification"),
        Objective("f1_macro", "f1_macro", "maximize", "classification"),
        Objective("f1_weighted", "f1_weighted", "maximize", "classification"),
        Objective("precision", "precision", "maximize", "classification"),
        Objective("recall", "recall", "maximize", "classification"),
        Objective("log_loss", "neg_log_loss", "minimize", "classification"),
        Objective("rmse", "neg_root_mean_squared_error", "minimize", "regression"),
        Objective("mse", "neg_mean_squared_error", "minimize", "regression"),
        Objective("mae", "neg_mean_absolute_error", "minimize", "regression"),
        Objective("mape", "neg_mean_absolute_percentage_error", "minimize", "regression"),
        Objective("r2", "r2", "maximize", "regression"),
    )
}


def objective(name: str, task: str) -> Objective:
    try:
        obj = OBJECTIVES[name]
    except KeyError:
        msg = f"unknown metric '{name}'{did_you_mean(name, OBJECTIVES)}"
        raise UsageError(msg, hint=f"Metrics: {', '.join(OBJECTIVES)}") from None
    if obj.task != task:
        msg = f"metric '{name}' is for {obj.task}, and the task is {task}"
        raise UsageError(msg)
    return obj


def default_objective(task: str, n_classes: int) -> Objective:
    if task == "regression":
        return OBJECTIVES["rmse"]
    return OBJECTIVES["roc_auc" if n_classes == 2 else "f1_macro"]


def score(obj: Objective, model: Any, X: Any, y: Any) -> float:
    """The metric of a fitted model on (X, y), in the metric's own sign (rmse is positive)."""
    from sklearn.metrics import get_scorer

    return float(get_scorer(obj.scorer)(model, X, y)) * obj.sign

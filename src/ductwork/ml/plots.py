"""Evaluation plots as PNG files: confusion matrix, ROC, precision-recall, calibration,
permutation importance, residuals.

Figures are drawn on matplotlib's Agg renderer through :class:`matplotlib.figure.Figure`
objects (never pyplot's global figure registry, so nothing leaks between calls and no GUI
backend is touched) with fixed style settings, size and dpi, and saved without the
``Software`` metadata entry: the same data gives the same PNG bytes on every run.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import matplotlib as mpl
import numpy as np
from matplotlib.figure import Figure
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve

from ductwork.ml.metrics import label_text, sample_rows

DPI = 100
SIZE = (5.5, 4.5)
MAX_CURVES = 10  # one-vs-rest curves drawn for at most this many classes
MAX_POINTS = 5_000  # residual scatter points
MAX_LABEL = 24
_STYLE: Any = {  # matplotlib's rcParams keys are typed as literals
    "svg.hashsalt": "ductwork",
    "path.simplify": True,
    "font.family": ["DejaVu Sans"],
    "font.size": 9.0,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "figure.dpi": DPI,
    "savefig.dpi": DPI,
    "image.cmap": "Blues",
}


@contextmanager
def _figure(
    path: Path, *, size: tuple[float, float] = SIZE, ncols: int = 1
) -> Iterator[tuple[Figure, Any]]:
    """A figure with ``ncols`` axes, saved to ``path`` as PNG when the block ends."""
    with mpl.rc_context(_STYLE):
        fig = Figure(figsize=size, dpi=DPI, layout="constrained")
        axes = fig.subplots(1, ncols)
        yield fig, axes
        fig.savefig(path, format="png", dpi=DPI, metadata={"Software": None})
        fig.clear()


def _short(label: Any) -> str:
    text = label_text(label)
    return text if len(text) <= MAX_LABEL else text[: MAX_LABEL - 1] + "…"


def confusion_plot(path: Path, labels: Sequence[Any], matrix: Sequence[Sequence[int]]) -> None:
    m = np.asarray(matrix, dtype=np.int64)
    n = len(labels)
    side = min(4.0 + 0.35 * n, 12.0)
    with _figure(path, size=(side + 1.0, side)) as (_, ax):
        ax.grid(False)
        image = ax.imshow(m, cmap="Blues", interpolation="nearest")
        ax.figure.colorbar(image, ax=ax, shrink=0.8)
        ticks = np.arange(n)
        names = [_short(x) for x in labels]
        ax.set_xticks(ticks, names, rotation=45 if n > 4 else 0, ha="right" if n > 4 else "center")
        ax.set_yticks(ticks, names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("actual")
        ax.set_title("Confusion matrix")
        if n <= 20:
            high = m.max() / 2 if m.size else 0
            for i in range(n):
                for j in range(n):
                    ax.text(
                        j,
                        i,
                        f"{m[i, j]:,}",
                        ha="center",
                        va="center",
                        fontsize=8,
                        color="white" if m[i, j] > high else "black",
                    )


def _one_vs_rest(
    y_true: np.ndarray, proba: np.ndarray, classes: Sequence[Any], positive: Any
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, is-class, score) per curve: the positive class only for a binary task."""
    labels = list(classes)
    if len(labels) == 2:
        i = labels.index(positive)
        return [(_short(positive), y_true == positive, proba[:, i])]
    curves = []
    for i, c in enumerate(labels[:MAX_CURVES]):
        t = y_true == c
        if t.any() and not t.all():
            curves.append((_short(c), t, proba[:, i]))
    return curves


def roc_plot(
    path: Path, y_true: np.ndarray, proba: np.ndarray, classes: Sequence[Any], positive: Any
) -> bool:
    """ROC curve(s); False (nothing written) when no class has both outcomes."""
    curves = [
        c for c in _one_vs_rest(y_true, proba, classes, positive) if 0 < c[1].sum() < c[1].size
    ]
    if not curves:
        return False
    with _figure(path) as (_, ax):
        for name, t, score in curves:
            fpr, tpr, _ = skm.roc_curve(t, score)
            auc = skm.auc(fpr, tpr)
            ax.plot(fpr, tpr, linewidth=1.5, label=f"{name} (AUC {auc:.3f})")
        ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.set_title("ROC curve" if len(curves) == 1 else "ROC curves (one vs rest)")
        ax.legend(loc="lower right", fontsize=8)
    return True


def pr_plot(
    path: Path, y_true: np.ndarray, proba: np.ndarray, classes: Sequence[Any], positive: Any
) -> bool:
    """Precision-recall curve(s); False when no class has both outcomes."""
    curves = [
        c for c in _one_vs_rest(y_true, proba, classes, positive) if 0 < c[1].sum() < c[1].size
    ]
    if not curves:
        return False
    with _figure(path) as (_, ax):
        for name, t, score in curves:
            precision, recall, _ = skm.precision_recall_curve(t, score)
            ap = skm.average_precision_score(t, score)
            ax.step(recall, precision, where="post", linewidth=1.5, label=f"{name} (AP {ap:.3f})")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_title(
            "Precision-recall curve" if len(curves) == 1 else "Precision-recall (one vs rest)"
        )
        ax.legend(loc="lower left", fontsize=8)
    return True


def calibration_plot(
    path: Path, is_positive: np.ndarray, score: np.ndarray, bins: int = 10
) -> bool:
    """Reliability diagram of a binary classifier; False when only one outcome is present."""
    if not 0 < is_positive.sum() < is_positive.size:
        return False
    observed, predicted = calibration_curve(is_positive, score, n_bins=bins, strategy="uniform")
    with _figure(path) as (_, ax):
        ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect")
        ax.plot(predicted, observed, marker="o", linewidth=1.5, label="model")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("mean predicted probability")
        ax.set_ylabel("observed frequency")
        ax.set_title("Calibration")
        ax.legend(loc="upper left", fontsize=8)
    return True


def importance_plot(
    path: Path, names: Sequence[str], means: Sequence[float], stds: Sequence[float], top: int = 20
) -> None:
    """Horizontal bars of permutation importance, the most important on top."""
    order = sorted(range(len(names)), key=lambda i: (-means[i], names[i]))[:top]
    order.reverse()
    height = max(2.5, 0.28 * len(order) + 1.2)
    with _figure(path, size=(6.5, height)) as (_, ax):
        ax.barh(
            [_short(names[i]) for i in order],
            [means[i] for i in order],
            xerr=[stds[i] for i in order],
            color="#4878a8",
        )
        ax.set_xlabel("drop in score when the column is shuffled")
        ax.set_title("Permutation importance")


def residuals_plot(path: Path, y_true: np.ndarray, y_pred: np.ndarray, seed: int = 0) -> None:
    """Residuals against predictions, and predictions against actual values."""
    keep = sample_rows(len(y_true), MAX_POINTS, seed)
    t = np.asarray(y_true, dtype=np.float64)[keep]
    p = np.asarray(y_pred, dtype=np.float64)[keep]
    with _figure(path, size=(10.0, 4.5), ncols=2) as (_, axes):
        left, right = axes
        left.scatter(p, t - p, s=6, alpha=0.5, linewidths=0)
        left.axhline(0, color="grey", linestyle="--", linewidth=1)
        left.set_xlabel("predicted")
        left.set_ylabel("actual - predicted")
        left.set_title("Residuals")
        lo = float(min(t.min(), p.min())) if t.size else 0.0
        hi = float(max(t.max(), p.max())) if t.size else 1.0
        right.scatter(t, p, s=6, alpha=0.5, linewidths=0)
        right.plot([lo, hi], [lo, hi], color="grey", linestyle="--", linewidth=1)
        right.set_xlabel("actual")
        right.set_ylabel("predicted")
        right.set_title("Predicted vs actual")

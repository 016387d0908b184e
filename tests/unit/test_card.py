"""The model card: every section, from a hand-made bundle description and evaluation."""

from __future__ import annotations

import re
from typing import Any

import pytest

from ductwork.ml.bundle import BundleMeta, ColumnSpec
from ductwork.ml.card import model_card


def meta(**overrides: Any) -> BundleMeta:
    values: dict[str, Any] = {
        "task": "classification",
        "target": "delayed",
        "classes": [False, True],
        "model": "hist_gradient_boosting",
        "estimator": "sklearn.ensemble.HistGradientBoostingClassifier",
        "params": {"max_iter": 200, "learning_rate": 0.1},
        "input_schema": [
            ColumnSpec(
                name="carrier",
                dtype="String",
                kind="string",
                nullable=False,
                categories=["9E", "AA", "B6", "DL", "EV", "UA", "US"],
            ),
            ColumnSpec(
                name="distance", dtype="Int64", kind="numeric", nullable=False, min=17, max=4983
            ),
            ColumnSpec(
                name="dep_delay",
                dtype="Float64",
                kind="numeric",
                nullable=True,
                min=-43.0,
                max=1301.0,
            ),
        ],
        "output_schema": {
            "prediction": "Boolean",
            "proba_false": "Float64",
            "proba_true": "Float64",
        },
        "feature_names": ["carrier_9E", "carrier_AA", "distance", "dep_delay"],
        "reference": {
            "rows": 12_000,
            "features": {
                "carrier": {"count": 12_000, "null_fraction": 0.0, "distinct": 7},
                "distance": {"count": 12_000, "null_fraction": 0.0},
                "dep_delay": {"count": 12_000, "null_fraction": 0.025},
            },
        },
        "metrics": {"objective": "roc_auc", "train": 0.951, "val": 0.902, "cv_mean": None},
        "data": {
            "train": {"sha256": "1" * 64, "rows": 12_000},
            "val": {"sha256": "2" * 64, "rows": 2_500},
        },
        "versions": {"python": "3.11.7", "scikit-learn": "1.9.1"},
        "files": {"model.skops": "abcdef0123456789" + "0" * 48},
    }
    values.update(overrides)
    return BundleMeta(**values)


EVALUATION: dict[str, Any] = {
    "task": "classification",
    "rows": 2_600,
    "quarantined": 14,
    "positive": True,
    "metrics": {"roc_auc": 0.9034, "accuracy": 0.8815, "latency_p95_ms": 4.2},
    "champion": {"ref": "flight-delays@champion", "model_id": "0123456789ab", "rows": 2_590},
    "comparison": {
        "roc_auc": {"model": 0.9034, "champion": 0.8912, "delta": 0.0122, "better": True},
        "accuracy": {"model": 0.8815, "champion": 0.8903, "delta": -0.0088, "better": False},
    },
    "confusion_matrix": {"labels": [False, True], "matrix": [[2_250, 60], [248, 42]]},
    "slices": {
        "origin": {
            "EWR": {"rows": 1_000, "roc_auc": 0.91, "accuracy": 0.88},
            "JFK": {"rows": 1_580, "roc_auc": 0.90, "accuracy": 0.885},
            "LGA": {"rows": 20, "roc_auc": None, "accuracy": 0.85},
        }
    },
}

REGISTRATION: dict[str, Any] = {
    "name": "flight-delays",
    "version": 3,
    "aliases": ["challenger", "champion"],
    "run_id": "9f1c2d",
    "experiment_id": "1",
    "model_uri": "models:/flight-delays/3",
    "bundle_sha256": "b" * 64,
    "promoted": True,
}

LINEAGE: dict[str, Any] = {
    "pipeline": "flights",
    "run_id": "20261124-031500-ab12",
    "stage": "register",
    "inputs": {"model": "c" * 64, "evaluation": "d" * 64},
}


def section(card: str, title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", card, re.M | re.S)
    assert match is not None, f"no section {title!r} in:\n{card}"
    return match.group(1)


@pytest.fixture
def card() -> str:
    return model_card(
        meta(),
        EVALUATION,
        REGISTRATION,
        LINEAGE,
        intended_use="Rank flights by delay risk for the operations desk.",
        limitations="Trained on 2013 flights from New York only.",
    )


def test_sections_in_order(card: str) -> None:
    assert card.startswith("# Model card: flight-delays v3\n")
    titles = re.findall(r"^## (.+)$", card, re.M)
    assert titles == [
        "Model details",
        "Intended use",
        "Training data",
        "Evaluation",
        "Per-slice results",
        "Limitations",
        "Lineage",
    ]
    assert card.endswith("\n")
    assert not card.endswith("\n\n")


def test_details(card: str) -> None:
    details = section(card, "Model details")
    assert "| version | 3 (aliases: challenger, champion) |" in details
    assert "`sklearn.ensemble.HistGradientBoostingClassifier` (`hist_gradient_boosting`)" in details
    assert "| classes | false, true |" in details
    assert "learning_rate=0.1, max_iter=200" in details
    assert "ductwork run `20261124-031500-ab12` of `flights`" in details
    assert "`abcdef012345`" in details  # the model id
    assert "b" * 64 in details


def test_intended_use(card: str) -> None:
    text = section(card, "Intended use")
    assert "Rank flights by delay risk for the operations desk." in text
    assert "`proba_false`, `proba_true`" in text
    assert "from the 3 input columns" in text


def test_training_data_has_the_real_sizes_and_features(card: str) -> None:
    text = section(card, "Training data")
    assert "| train | 12,000 | `1111111111111111` |" in text
    assert "| val | 2,500 | `2222222222222222` |" in text
    assert "| `distance` | Int64 | numeric | no | 17 – 4,983 | 0.0% |" in text
    assert "| `dep_delay` | Float64 | numeric | yes | -43 – 1,301 | 2.5% |" in text
    assert "7 categories (9E, AA, B6, DL, EV, …)" in text
    assert "into 4 model features" in text


def test_evaluation_has_the_figures_and_the_champion_comparison(card: str) -> None:
    text = section(card, "Evaluation")
    assert "On 2,600 evaluation rows (14 more were quarantined); positive class `true`" in text
    assert "| `roc_auc` | 0.9034 | 0.8912 | +0.0122 (better) |" in text
    assert "| `accuracy` | 0.8815 | 0.8903 | -0.0088 (worse) |" in text
    assert "| `latency_p95_ms` | 4.2000 | — | — |" in text
    assert "champion (flight-delays@champion)" in text
    assert "uses the 2,590 rows both models accept" in text
    assert "| **false** | 2,250 | 60 |" in text
    assert "| **true** | 248 | 42 |" in text
    assert "Training-time scores of `roc_auc`: train 0.9510, validation 0.9020." in text


def test_per_slice_tables(card: str) -> None:
    text = section(card, "Per-slice results")
    assert "### by `origin`" in text
    assert "| origin | rows | roc_auc | accuracy |" in text
    assert "| LGA | 20 | — | 0.8500 |" in text


def test_limitations_add_notes_derived_from_the_figures(card: str) -> None:
    text = section(card, "Limitations")
    assert "Trained on 2013 flights from New York only." in text
    assert "origin=LGA (20 rows)" in text
    assert "class `true` is 11.2% of the evaluation rows" in text  # 290 / 2,600
    assert "dep_delay (2.5%)" in text
    assert "carrier" not in text.split("missing values")[1].split("\n")[0]


def test_lineage(card: str) -> None:
    text = section(card, "Lineage")
    assert "| pipeline | `flights` |" in text
    assert "| MLflow run | `9f1c2d` |" in text
    assert f"| input `model` | `{'c' * 64}` |" in text
    assert f"| training input `val` | `{'2' * 64}` |" in text


def test_without_evaluation_or_texts_the_card_says_what_is_missing() -> None:
    card = model_card(meta(data={}, reference={}), None, {"name": "m", "version": 1}, {})
    assert "Not stated: set `intended_use`" in section(card, "Intended use")
    assert "records no training data fingerprints" in section(card, "Training data")
    assert "No evaluation was recorded with this version." in section(card, "Evaluation")
    assert "## Per-slice results" not in card
    limits = section(card, "Limitations")
    assert "registered without an evaluation" in limits
    assert "dep_delay" in limits  # nullable, with no reference share


def test_regression_and_markdown_escaping() -> None:
    m = meta(
        task="regression",
        target="arr|delay",
        classes=None,
        output_schema={"prediction": "Float64"},
    )
    evaluation = {"rows": 100, "metrics": {"rmse": 12.5, "r2": 0.41}}
    card = model_card(m, evaluation, {"name": "m", "version": 2}, {"pipeline": "p|q"})
    assert "`arr\\|delay`" in card
    assert "`p\\|q`" in card
    assert "| `rmse` | 12.5000 |" in section(card, "Evaluation")
    assert "classes" not in section(card, "Model details")
    assert "Class imbalance" not in card


def test_the_card_is_a_pure_function(card: str) -> None:
    again = model_card(
        meta(),
        EVALUATION,
        REGISTRATION,
        LINEAGE,
        intended_use="Rank flights by delay risk for the operations desk.",
        limitations="Trained on 2013 flights from New York only.",
    )
    assert again == card

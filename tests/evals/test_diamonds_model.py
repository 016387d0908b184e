"""Evals of the diamonds example's price regressor.

Real ggplot2 diamonds data, the pipeline of examples/diamonds run as shipped; the figures are
on its test split (8,088 stones). Thresholds sit a little on the safe side of what was measured
(in the comments), so run-to-run noise passes and a real loss of quality does not.
"""

from __future__ import annotations

import pytest

from .conftest import ExampleRun, check_not_worse

pytestmark = pytest.mark.evals


def test_the_mismeasured_stones_are_quarantined(diamonds_first: ExampleRun) -> None:
    # 20 stones with a zero dimension, 3 with one over 20 mm (31.8, 31.8 and 58.9)
    quarantine = diamonds_first.output("checked", "quarantine")
    assert quarantine.height == 23
    assert diamonds_first.result.outputs("split")["test"].rows == 8088


def test_the_price_model_meets_its_quality_floor(diamonds_first: ExampleRun) -> None:
    evaluation = diamonds_first.evaluation()
    metrics = evaluation["metrics"]
    assert evaluation["quarantined"] == 0
    assert diamonds_first.output("train", "scores")["chosen"] == "hist_gradient_boosting"
    assert metrics["r2"] >= 0.978  # measured 0.9822
    assert metrics["rmse"] <= 550  # measured 531.2 USD (the prices' standard deviation: 3,989)
    assert metrics["mape"] <= 0.085  # measured 0.0786


def test_every_cut_is_priced_well(diamonds_first: ExampleRun) -> None:
    slices = diamonds_first.evaluation()["slices"]["cut"]
    assert set(slices) == {"Fair", "Good", "Very Good", "Premium", "Ideal"}
    for cut, values in slices.items():
        # measured 0.955 (Fair, 242 stones) to 0.987 (Very Good)
        assert values["r2"] >= 0.94, cut
        assert values["mape"] <= 0.12, cut  # measured 0.071 to 0.108 (Fair)


def test_a_retrained_model_is_not_worse_than_the_registered_one(
    diamonds_first: ExampleRun, diamonds_retrained: ExampleRun
) -> None:
    check_not_worse(diamonds_first, diamonds_retrained, "diamond-prices", "rmse")

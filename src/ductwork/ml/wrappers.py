"""Small scikit-learn meta-estimators that make every alias behave the same way."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.preprocessing import LabelEncoder


class EncodedLabels(ClassifierMixin, BaseEstimator):  # type: ignore[misc]
    """Fit ``estimator`` on labels encoded as 0..n-1 and answer in the original labels.

    XGBoost's classifier only accepts 0..n-1 labels; wrapped, it takes booleans or strings
    like every scikit-learn classifier, and ``predict`` returns the same labels, so a model
    served by MLflow predicts exactly what the bundle does.
    """

    def __init__(self, estimator: Any) -> None:
        self.estimator = estimator

    def fit(self, X: Any, y: Any, **fit_params: Any) -> EncodedLabels:
        self.encoder_ = LabelEncoder().fit(y)
        self.classes_ = self.encoder_.classes_
        if "eval_set" in fit_params:
            fit_params["eval_set"] = [
                (Xv, self.encoder_.transform(yv)) for Xv, yv in fit_params["eval_set"]
            ]
        self.estimator_ = clone(self.estimator).fit(X, self.encoder_.transform(y), **fit_params)
        return self

    def predict(self, X: Any) -> Any:
        return self.classes_[np.asarray(self.estimator_.predict(X), dtype=np.int64)]

    def predict_proba(self, X: Any) -> Any:
        return self.estimator_.predict_proba(X)

    @property
    def feature_importances_(self) -> Any:
        return self.estimator_.feature_importances_

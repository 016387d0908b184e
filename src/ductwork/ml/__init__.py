"""The ML layer: estimators, feature transforms, the model bundle, metrics, tracking.

Everything here needs the ``ml`` extra (scikit-learn, MLflow, Optuna, ...). The stage kinds in
``ductwork.stages`` import these modules inside ``run``, so listing kinds, checking a pipeline or
running an ETL-only pipeline never imports scikit-learn.
"""

from __future__ import annotations


def require_ml(feature: str) -> None:
    """Raise :class:`~ductwork.errors.MissingExtra` unless scikit-learn is installed."""
    from ductwork.errors import import_optional

    import_optional("sklearn", extra="ml", feature=feature)

"""ONNX export of a bundle's model, and a predictor that runs it with ONNX Runtime.

:func:`export_onnx` converts the fitted Pipeline with skl2onnx, one graph input per raw input
column (numbers as float32 or int64 tensors, text as string tensors), writes ``model.onnx`` into
the bundle directory and records in :class:`~ductwork.ml.bundle.OnnxInfo` whether ONNX Runtime's
predictions match the scikit-learn object's on a sample of the training rows. It never raises:
a model skl2onnx cannot convert (a custom transformer, an estimator without a registered
converter, a date column) is recorded as ``exported: false`` with the reason, and the bundle is
used with scikit-learn alone.

ONNX computes in float32 where scikit-learn uses float64, so a value that lands exactly on a
tree threshold after scaling can take the other branch: the record says by how much the
probabilities differ, and only an export that matches is used for prediction.
"""

from __future__ import annotations

import contextlib
import copy
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from ductwork.errors import DataError
from ductwork.ml import serialize
from ductwork.ml.bundle import (
    ONNX_FILE,
    PREDICTION,
    Bundle,
    BundleMeta,
    ColumnSpec,
    OnnxInfo,
    proba_column,
)

SAMPLE_ROWS = 2000  # rows compared between scikit-learn and ONNX Runtime
MIN_AGREEMENT = 0.999  # share of rows with the same predicted class (or value, for regression)
MAX_PROBA_DIFF = 1e-4  # largest difference of a class probability
REGRESSION_RTOL = 1e-4  # a regression prediction agrees within this relative tolerance
_REASON_CHARS = 300
_PATCH_LOCK = threading.Lock()


class _Unsupported(Exception):
    """The model or its inputs cannot be expressed in ONNX (a short reason)."""


def export_onnx(model: Any, meta: BundleMeta, sample: pl.DataFrame, directory: Path) -> OnnxInfo:
    """Write ``model.onnx`` into ``directory`` when skl2onnx can convert ``model``.

    ``sample`` holds rows with the raw input columns (training rows); at most 2,000 of them,
    spread over the frame, are predicted by both and compared. Never raises: on any failure
    the returned info has ``exported=False`` and the reason, and no ``model.onnx`` is left.
    """
    path = directory / ONNX_FILE
    try:
        return _export(model, meta, sample, path)
    except Exception as exc:  # any failure only means: no ONNX for this bundle
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)
        return OnnxInfo(exported=False, reason=_short(exc))


def _export(model: Any, meta: BundleMeta, sample: pl.DataFrame, path: Path) -> OnnxInfo:
    try:
        from skl2onnx import convert_sklearn
    except ImportError:
        return OnnxInfo(exported=False, reason="skl2onnx is not installed")
    initial_types = [(spec.name, _tensor_type(spec)) for spec in meta.input_schema]
    if not initial_types:
        msg = "the model has no input columns"
        raise _Unsupported(msg)
    convertible, options = _prepared(model, meta)
    with warnings.catch_warnings(), _hist_gradient_boosting_fix():
        warnings.simplefilter("ignore")
        onx = convert_sklearn(convertible, initial_types=initial_types, options=options)
    data = onx.SerializeToString()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    sha = serialize.sha256_file(path)
    info = OnnxInfo(exported=True, sha256=sha)
    return _compare(model, meta, sample, path, info)


def _tensor_type(spec: ColumnSpec) -> Any:
    from skl2onnx.common.data_types import FloatTensorType, Int64TensorType, StringTensorType

    if spec.kind == "string":
        return StringTensorType([None, 1])
    if spec.kind == "boolean":
        return FloatTensorType([None, 1])
    if spec.kind == "numeric":
        integer = spec.dtype.startswith(("Int", "UInt"))
        if integer and not spec.nullable:
            return Int64TensorType([None, 1])
        return FloatTensorType([None, 1])
    msg = f"column '{spec.name}' is {spec.dtype}: ONNX inputs can be numbers, booleans or text"
    raise _Unsupported(msg)


def _prepared(model: Any, meta: BundleMeta) -> tuple[Any, dict[int, dict[str, Any]]]:
    """The model to convert and skl2onnx options: plain probability arrays, no ZipMap.

    Class labels that ONNX cannot hold (booleans, mixed types) are renumbered 0..k-1 in a
    copy: predictions are taken from the probabilities and mapped to the bundle's classes.
    """
    final = model.steps[-1][1] if hasattr(model, "steps") else model
    if meta.task != "classification":
        return model, {}
    classes = getattr(final, "classes_", None)
    if classes is not None and not _onnx_labels(np.asarray(classes)):
        model = copy.deepcopy(model)
        final = model.steps[-1][1] if hasattr(model, "steps") else model
        try:
            final.classes_ = np.arange(len(classes))
        except AttributeError as exc:
            msg = f"class labels {list(classes)} cannot be held in ONNX"
            raise _Unsupported(msg) from exc
    return model, {id(final): {"zipmap": False}}


def _onnx_labels(classes: np.ndarray[Any, Any]) -> bool:
    if classes.dtype.kind in "iuU":
        return True
    return classes.dtype.kind == "O" and all(isinstance(c, str) for c in classes)


@contextlib.contextmanager
def _hist_gradient_boosting_fix() -> Iterator[None]:
    """skl2onnx 1.20 gives leaf nodes of HistGradientBoosting trees a Python ``False`` for
    ``nodes_missing_value_tracks_true``, which ONNX's integer attribute refuses; pass ints."""
    try:
        from skl2onnx.common import tree_ensemble
    except ImportError:
        yield
        return
    with _PATCH_LOCK:
        original = tree_ensemble.add_node

        def add_node(*args: Any, nodes_missing_value_tracks_true: Any = 0, **kwargs: Any) -> Any:
            return original(
                *args,
                nodes_missing_value_tracks_true=int(nodes_missing_value_tracks_true),
                **kwargs,
            )

        tree_ensemble.add_node = add_node
        try:
            yield
        finally:
            tree_ensemble.add_node = original


def _compare(
    model: Any, meta: BundleMeta, sample: pl.DataFrame, path: Path, info: OnnxInfo
) -> OnnxInfo:
    """Predict the sample with both and record how well they agree."""
    step = max(1, sample.height // SAMPLE_ROWS)
    rows = sample.gather_every(step).head(SAMPLE_ROWS) if sample.height else sample
    valid, _ = Bundle(path.parent, meta).validate(rows)
    if valid.height == 0:
        return info.model_copy(
            update={"reason": "no sample rows meet the input contract: not compared"}
        )
    predictor = OnnxPredictor(path, meta)
    X = valid.select(meta.input_columns)
    if meta.task == "classification":
        expected = np.asarray(model.predict_proba(X), dtype=np.float64)
        got = predictor.probabilities(valid)
        if expected.shape != got.shape:
            msg = f"ONNX gives {got.shape[1]} class probabilities, scikit-learn {expected.shape[1]}"
            raise _Unsupported(msg)
        agreement = float(np.mean(np.argmax(expected, 1) == np.argmax(got, 1)))
        diff = float(np.max(np.abs(expected - got)))
        matches = agreement >= MIN_AGREEMENT and diff <= MAX_PROBA_DIFF
        detail = f"class probabilities differ by up to {diff:.2g} (limit {MAX_PROBA_DIFF:g})"
    else:
        expected_values = np.asarray(model.predict(X), dtype=np.float64).reshape(-1)
        got_values = predictor.values(valid)
        scale = np.maximum(1.0, np.abs(expected_values))
        relative = np.abs(expected_values - got_values) / scale
        agreement = float(np.mean(relative <= REGRESSION_RTOL))
        diff = float(np.max(relative))
        matches = agreement >= MIN_AGREEMENT
        detail = f"predictions differ by up to {diff:.2g} relative (limit {REGRESSION_RTOL:g})"
    reason = "" if matches else f"ONNX Runtime does not match scikit-learn: {detail}"
    if not matches and agreement < MIN_AGREEMENT:
        reason += f"; {agreement:.2%} of predictions agree"
    return info.model_copy(
        update={
            "rows_compared": valid.height,
            "prediction_agreement": agreement,
            "max_abs_proba_diff": diff if meta.task == "classification" else None,
            "matches": matches,
            "reason": reason,
        }
    )


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    message = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    if isinstance(exc, _Unsupported):
        message = first
    return message if len(message) <= _REASON_CHARS else message[: _REASON_CHARS - 3] + "..."


class OnnxPredictor:
    """Runs a bundle's ``model.onnx`` with ONNX Runtime; same output as ``Bundle.predict``."""

    def __init__(self, path: Path, meta: BundleMeta, *, threads: int | None = None) -> None:
        """``threads``: ONNX Runtime's intra-op threads (default: one per core)."""
        import onnxruntime as ort

        self.path = path
        self.meta = meta
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads is not None:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        graph_inputs = self.session.get_inputs()
        columns = meta.input_columns
        if len(graph_inputs) != len(columns):
            msg = f"{path} has {len(graph_inputs)} inputs, the model {len(columns)} columns"
            raise DataError(msg)
        # one graph input per column, in the contract's order (skl2onnx renames columns such
        # as 'od280/od315' to valid identifiers, so match by position)
        self.inputs = [
            (i.name, column, i.type) for i, column in zip(graph_inputs, columns, strict=True)
        ]
        outputs = self.session.get_outputs()
        if meta.task == "classification":
            probas = [o.name for o in outputs if o.type == "tensor(float)"]
            if not probas:
                msg = f"{path} has no probability output"
                raise DataError(msg)
            self.output = probas[-1]
        else:
            self.output = outputs[0].name

    @classmethod
    def from_bundle(cls, bundle: Bundle, *, threads: int | None = None) -> OnnxPredictor:
        """The bundle's ONNX model, verified: exported, matching scikit-learn, sha256 intact."""
        info = bundle.meta.onnx
        path = bundle.path / ONNX_FILE
        if info is None or not info.exported or not path.is_file():
            why = f" ({info.reason})" if info is not None and info.reason else ""
            msg = f"the model bundle {bundle.path} has no ONNX model{why}"
            raise DataError(msg, hint="Use engine: sklearn.")
        if not info.matches:
            msg = (
                f"the ONNX model in {bundle.path} is not used: "
                f"{info.reason or 'it was not compared with scikit-learn'}"
            )
            raise DataError(msg, hint="Use engine: sklearn.")
        recorded = bundle.meta.files.get(ONNX_FILE) or info.sha256
        if recorded is None or serialize.sha256_file(path) != recorded:
            msg = f"{path} does not match the sha256 recorded in the bundle: refused"
            raise DataError(msg)
        return cls(path, bundle.meta, threads=threads)

    def _feed(self, frame: pl.DataFrame) -> dict[str, np.ndarray[Any, Any]]:
        feed: dict[str, np.ndarray[Any, Any]] = {}
        for name, column, kind in self.inputs:
            s = frame.get_column(column)
            if kind == "tensor(string)":
                arr = s.cast(pl.String).fill_null("").to_numpy().astype(object)
            elif kind == "tensor(int64)":
                arr = s.cast(pl.Int64).to_numpy()
            elif kind == "tensor(double)":
                arr = s.cast(pl.Float64).to_numpy()
            else:
                arr = s.cast(pl.Float32).to_numpy()
            feed[name] = arr.reshape(-1, 1)
        return feed

    def probabilities(self, frame: pl.DataFrame) -> np.ndarray[Any, Any]:
        (out,) = self.session.run([self.output], self._feed(frame))
        return np.asarray(out, dtype=np.float64)

    def values(self, frame: pl.DataFrame) -> np.ndarray[Any, Any]:
        (out,) = self.session.run([self.output], self._feed(frame))
        return np.asarray(out, dtype=np.float64).reshape(-1)

    def predict(self, frame: pl.DataFrame) -> pl.DataFrame:
        """``prediction`` and ``proba_<class>`` for rows that meet the input contract."""
        schema = Bundle(self.path.parent, self.meta).output_polars_schema()
        if frame.height == 0:
            return pl.DataFrame(schema=schema)
        if self.meta.task == "classification":
            proba = self.probabilities(frame)
            classes = pl.Series(PREDICTION, self.meta.classes or [])
            columns = [classes.gather(np.argmax(proba, axis=1))]
            columns += [
                pl.Series(proba_column(label), proba[:, i])
                for i, label in enumerate(self.meta.classes or [])
            ]
            out = pl.DataFrame(columns)
        else:
            out = pl.DataFrame([pl.Series(PREDICTION, self.values(frame))])
        return out.cast(schema, strict=False)  # type: ignore[arg-type]

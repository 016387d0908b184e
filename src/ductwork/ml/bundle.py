"""The model bundle: everything needed to use a trained model, in one directory artifact.

::

    bundle/
      bundle.json     what the model is: task, target, classes, the input contract (names, types,
                      nullability, ranges and categories seen in training), the output schema,
                      reference statistics of the training features and predictions (for drift
                      monitoring), metrics, params, data fingerprints, library versions, and the
                      sha256 of every file below
      model.skops     the fitted feature transforms and estimator as ONE scikit-learn Pipeline
      model.onnx      the same model in ONNX, when skl2onnx can convert it (optional)

Batch prediction, the HTTP server and monitoring all load this one bundle, so a feature is
computed one way only. Loading never unpickles: the model is read with skops under an
allow-list of types, after its sha256 was checked against ``bundle.json``.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ductwork.errors import DataError
from ductwork.ml import serialize

if TYPE_CHECKING:
    import polars as pl

BUNDLE_FORMAT = "ductwork.bundle/v1"
META_FILE = "bundle.json"
MODEL_FILE = "model.skops"
ONNX_FILE = "model.onnx"
PREDICTION = "prediction"
PROBA_PREFIX = "proba_"
FAILED = "_failed_checks"
ROW = "_row"
# string columns with at most this many values in training get a category check at predict time
MAX_CHECKED_CATEGORIES = 200
QUANTILES = (0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0)
HISTOGRAM_BINS = 20
TOP_CATEGORIES = 100


class ColumnSpec(BaseModel):
    """One input column of the bundle's contract."""

    model_config = ConfigDict(extra="forbid")

    name: str
    dtype: str
    kind: Literal["numeric", "boolean", "string", "temporal", "other"]
    nullable: bool
    min: float | None = None
    max: float | None = None
    categories: list[str] | None = None  # checked at predict time when set


class OnnxInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    exported: bool
    reason: str = ""
    sha256: str | None = None
    rows_compared: int = 0
    prediction_agreement: float | None = None
    max_abs_proba_diff: float | None = None
    matches: bool | None = None


class BundleMeta(BaseModel):
    """The contents of ``bundle.json``."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    format: str = BUNDLE_FORMAT
    task: Literal["classification", "regression"]
    target: str
    classes: list[Any] | None = None
    model: str  # the alias or dotted path it was built from
    estimator: str  # the fitted estimator's class
    params: dict[str, Any] = Field(default_factory=dict)
    input_schema: list[ColumnSpec]
    output_schema: dict[str, str]
    feature_names: list[str] = Field(default_factory=list)
    reference: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    data: dict[str, Any] = Field(default_factory=dict)
    versions: dict[str, str] = Field(default_factory=dict)
    files: dict[str, str] = Field(default_factory=dict)  # file name -> sha256
    trusted_types: list[str] = Field(default_factory=list)
    onnx: OnnxInfo | None = None

    @property
    def model_id(self) -> str:
        """A short, stable id of the fitted model: the prefix of its file's sha256."""
        return self.files.get(MODEL_FILE, "")[:12]

    @property
    def input_columns(self) -> list[str]:
        return [c.name for c in self.input_schema]

    @property
    def proba_columns(self) -> list[str]:
        """The class-probability columns of the output (none for models without them)."""
        return [c for c in self.output_schema if c.startswith(PROBA_PREFIX)]


def proba_column(label: Any) -> str:
    text = str(label).lower() if isinstance(label, bool) else str(label)
    return f"{PROBA_PREFIX}{text}"


class Bundle:
    """A model bundle directory, loaded lazily: ``meta`` first, the model on first use."""

    def __init__(self, path: Path, meta: BundleMeta) -> None:
        self.path = path
        self.meta = meta

    @classmethod
    def load(cls, path: str | Path) -> Bundle:
        path = Path(path)
        meta_path = path / META_FILE
        if not meta_path.is_file():
            msg = f"{path} is not a model bundle (no {META_FILE})"
            raise DataError(msg)
        try:
            raw = json.loads(meta_path.read_text(encoding="utf-8"))
            meta = BundleMeta.model_validate(raw)
        except (ValueError, TypeError) as exc:
            msg = f"{meta_path} is not a valid bundle description: {exc}"
            raise DataError(msg) from None
        if meta.format != BUNDLE_FORMAT:
            msg = f"{path}: bundle format '{meta.format}' is not {BUNDLE_FORMAT}"
            raise DataError(msg)
        return cls(path, meta)

    @cached_property
    def model(self) -> Any:
        """The fitted scikit-learn Pipeline (features + estimator), read with skops."""
        sha = self.meta.files.get(MODEL_FILE)
        if sha is None:
            msg = f"{self.path}/{META_FILE} records no sha256 for {MODEL_FILE}"
            raise DataError(msg)
        return serialize.load(self.path / MODEL_FILE, sha256=sha, trusted=self.meta.trusted_types)

    # -- predict-time contract ------------------------------------------------------------

    def validate(
        self, frame: pl.DataFrame, *, offset: int = 0
    ) -> tuple[pl.DataFrame, pl.DataFrame]:
        """Split ``frame`` into rows that meet the input contract and a quarantine.

        Valid rows come back with the input columns only, cast to the training types. The
        quarantine keeps the rows as they came, plus ``_failed_checks`` (one reason per broken
        rule, e.g. ``carrier: unknown category``) and ``_row`` (position in the input, from
        ``offset``). A missing column is not a row problem: it raises :class:`DataError`.
        """
        import polars as pl

        from ductwork.errors import did_you_mean

        missing = [c for c in self.meta.input_columns if c not in frame.columns]
        if missing:
            first = missing[0]
            msg = (
                f"the input has no column '{first}'{did_you_mean(first, frame.columns)}; "
                f"the model needs {', '.join(self.meta.input_columns)}"
            )
            raise DataError(msg)
        casts: list[pl.Expr] = []
        rules: list[tuple[pl.Expr, str]] = []  # (the row breaks it, the reason)
        for spec in self.meta.input_schema:
            col = pl.col(spec.name)
            target_type = _dtype(spec.dtype)
            cast = col.cast(target_type, strict=False) if target_type is not None else col
            casts.append(cast.alias(spec.name))
            if target_type is not None and spec.kind in ("numeric", "boolean", "temporal"):
                rules.append((col.is_not_null() & cast.is_null(), f"{spec.name}: not {spec.kind}"))
            if not spec.nullable:
                rules.append((col.is_null(), f"{spec.name}: null"))
            if spec.kind == "numeric" and frame.schema[spec.name].is_float():
                rules.append((col.is_nan(), f"{spec.name}: NaN"))
            if spec.categories is not None:
                rules.append(
                    (
                        col.is_not_null() & ~col.cast(pl.String).is_in(spec.categories),
                        f"{spec.name}: unknown category",
                    )
                )
        row = pl.int_range(offset, offset + pl.len(), dtype=pl.Int64).alias(ROW)
        if not rules:
            valid = frame.select(casts)
            empty = frame.head(0).with_columns(
                pl.lit([], dtype=pl.List(pl.String)).alias(FAILED), row
            )
            return valid, empty
        # one boolean pass over all rows; the reason lists are built for the bad rows only
        bad = pl.any_horizontal([cond.fill_null(False) for cond, _ in rules]).alias("__bad")
        flagged = frame.with_columns(row, bad)
        valid = flagged.filter(~pl.col("__bad")).select(casts)
        reasons = pl.concat_list(
            [pl.when(cond).then(pl.lit(text)).otherwise(None) for cond, text in rules]
        ).list.drop_nulls()
        quarantine = (
            flagged.filter(pl.col("__bad"))
            .with_columns(reasons.alias(FAILED))
            .select([*(c for c in frame.columns if c not in (FAILED, ROW)), FAILED, ROW])
        )
        return valid, quarantine

    def predict(self, frame: pl.DataFrame) -> pl.DataFrame:
        """Predictions for rows that meet the contract: ``prediction`` and ``proba_<class>``."""
        import numpy as np
        import polars as pl

        model = self.model
        X = frame.select(self.meta.input_columns)
        if X.height == 0:
            return pl.DataFrame(schema=self.output_polars_schema())
        columns: dict[str, Any] = {}
        if self.meta.proba_columns:
            proba = np.asarray(model.predict_proba(X), dtype=np.float64)
            classes = [c.item() if hasattr(c, "item") else c for c in model.classes_]
            labels = np.asarray(classes, dtype=object)[np.argmax(proba, axis=1)]
            columns[PREDICTION] = list(labels)
            for i, label in enumerate(classes):
                columns[proba_column(label)] = proba[:, i]
        else:
            columns[PREDICTION] = np.asarray(model.predict(X))
        out = pl.DataFrame(columns)
        return out.cast(self.output_polars_schema(), strict=False)  # type: ignore[arg-type]

    def output_polars_schema(self) -> dict[str, pl.DataType]:
        import polars as pl

        schema: dict[str, pl.DataType] = {}
        for name, dtype in self.meta.output_schema.items():
            parsed = _dtype(dtype)
            schema[name] = parsed if parsed is not None else pl.String()
        return schema


def _dtype(text: str) -> pl.DataType | None:
    """A Polars dtype from its ``str()`` form; None for types not worth casting to."""
    import polars as pl

    simple: dict[str, pl.DataType] = {
        "Boolean": pl.Boolean(),
        "String": pl.String(),
        "Float64": pl.Float64(),
        "Float32": pl.Float32(),
        "Int64": pl.Int64(),
        "Int32": pl.Int32(),
        "Int16": pl.Int16(),
        "Int8": pl.Int8(),
        "UInt64": pl.UInt64(),
        "UInt32": pl.UInt32(),
        "UInt16": pl.UInt16(),
        "UInt8": pl.UInt8(),
        "Date": pl.Date(),
    }
    if text in simple:
        return simple[text]
    if text.startswith("Datetime"):
        unit = "ns" if "'ns'" in text else "ms" if "'ms'" in text else "us"
        return pl.Datetime(unit)  # type: ignore[arg-type]
    return None


def _kind(dtype: pl.DataType) -> Literal["numeric", "boolean", "string", "temporal", "other"]:
    import polars as pl

    if dtype == pl.Boolean:
        return "boolean"
    if dtype.is_numeric():
        return "numeric"
    if dtype in (pl.String, pl.Categorical) or isinstance(dtype, pl.Enum):
        return "string"
    if dtype.is_temporal():
        return "temporal"
    return "other"


def input_schema(
    frame: pl.DataFrame, columns: Sequence[str], *, imputed: Sequence[str] = ()
) -> list[ColumnSpec]:
    """The input contract from the training rows: types, nulls, ranges, categories."""
    import polars as pl

    specs: list[ColumnSpec] = []
    for name in columns:
        s = frame.get_column(name)
        kind = _kind(s.dtype)
        spec = ColumnSpec(
            name=name,
            dtype=str(s.dtype) if kind != "string" else "String",
            kind=kind,
            nullable=bool(s.null_count() > 0 or name in imputed),
        )
        if kind == "numeric" and s.len() > s.null_count():
            spec.min = float(s.min())  # type: ignore[arg-type]
            spec.max = float(s.max())  # type: ignore[arg-type]
        if kind == "string":
            values = s.cast(pl.String).drop_nulls().unique()
            if values.len() <= MAX_CHECKED_CATEGORIES:
                spec.categories = sorted(values.to_list())
        specs.append(spec)
    return specs


def reference_stats(frame: pl.DataFrame, columns: Sequence[str]) -> dict[str, Any]:
    """Quantiles, a histogram and null share per numeric column; frequencies per category.

    These are the training-side distributions that drift monitoring compares live data with.
    """
    import numpy as np
    import polars as pl

    out: dict[str, Any] = {}
    n = frame.height
    for name in columns:
        s = frame.get_column(name)
        stats: dict[str, Any] = {"count": n, "null_fraction": s.null_count() / n if n else 0.0}
        kind = _kind(s.dtype)
        if kind in ("numeric", "boolean"):
            values = s.cast(pl.Float64).drop_nulls().drop_nans()
            if values.len():
                arr = values.to_numpy()
                stats["kind"] = "numeric"
                stats["mean"] = float(arr.mean())
                stats["std"] = float(arr.std())
                stats["quantiles"] = {
                    str(q): float(v)
                    for q, v in zip(QUANTILES, np.quantile(arr, QUANTILES), strict=True)
                }
                counts, edges = np.histogram(arr, bins=HISTOGRAM_BINS)
                stats["histogram"] = {"edges": edges.tolist(), "counts": counts.tolist()}
        elif kind == "string":
            counts_df = (
                s.cast(pl.String)
                .drop_nulls()
                .value_counts(sort=True, name="n")
                .head(TOP_CATEGORIES)
            )
            total = s.len() - s.null_count()
            stats["kind"] = "categorical"
            stats["frequencies"] = {
                str(k): v / total for k, v in zip(counts_df[name], counts_df["n"], strict=True)
            }
            stats["distinct"] = int(s.n_unique())
        out[name] = stats
    return out


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version()}
    for dist in ("ductwork", "scikit-learn", "numpy", "polars", "skops", "xgboost", "lightgbm"):
        try:
            versions[dist] = version(dist)
        except PackageNotFoundError:
            continue
    return versions


def write_bundle(directory: Path, model: Any, meta: BundleMeta) -> Bundle:
    """Write ``model`` and ``meta`` as a bundle into ``directory`` (made if missing)."""
    directory.mkdir(parents=True, exist_ok=True)
    sha = serialize.dump(model, directory / MODEL_FILE)
    files = dict(meta.files)
    files[MODEL_FILE] = sha
    onnx_path = directory / ONNX_FILE
    if onnx_path.exists():
        files[ONNX_FILE] = serialize.sha256_file(onnx_path)
    meta = meta.model_copy(update={"files": files})
    text = json.dumps(meta.model_dump(mode="json"), indent=2, sort_keys=True, default=str)
    (directory / META_FILE).write_text(text + "\n", encoding="utf-8")
    bundle = Bundle(directory, meta)
    bundle.__dict__["model"] = model
    return bundle

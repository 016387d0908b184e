"""Feature transforms: a :class:`FeaturesParams` spec -> an unfitted scikit-learn ``Pipeline``.

:func:`build_transformer` turns the params of a ``features`` stage and the train table's schema
into ``Pipeline([("derive", DeriveColumns), ("columns", ColumnTransformer), ("select", ...)])``
with polars output. The pipeline is the object that travels with the model: train clones it
for every cross-validation fold, the bundle saves it with skops, MLflow's pyfunc calls it with
a pandas DataFrame. So everything it does is in its steps' params (no hidden state), and the
first step turns any input (polars, pandas, a dict of columns) into a polars frame with the
columns the rest was fitted on, in the order it was fitted on.

Columns are planned from the schema before anything is fitted: a name that is not in the
table is an error with a "did you mean", and so is a column that would reach the model as text,
categories or timestamps (encode it, drop it, or derive numbers from it). Text columns holding
numbers (``"1.5"``) are cast to Float64 when a number is needed, but only when every non-null
value casts: otherwise the error names the column and an example value.

Also here: :func:`split_xy` (features and label, with clear errors about the label),
:func:`feature_info` (what the fitted pipeline reads and writes, for the bundle's schema) and
:func:`load_transform` (the fitted pipeline and its description from a features stage output).
"""

from __future__ import annotations

import importlib.metadata
import inspect
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypedDict

import numpy as np
import polars as pl
from sklearn.base import BaseEstimator, TransformerMixin

from ductwork.errors import DataError, did_you_mean
from ductwork.stages.features import (
    INFO_FILE,
    TRANSFORM_FILE,
    EncodeBlock,
    FeaturesParams,
    ImputeBlock,
    NormalizeBlock,
    SelectSpec,
)

__all__ = [
    "DeriveColumns",
    "EncodeBlock",
    "FeatureInfo",
    "FeaturesParams",
    "ImputeBlock",
    "MutualInfoScore",
    "NormalizeBlock",
    "SelectSpec",
    "build_transformer",
    "check_fit_data",
    "feature_info",
    "infer_task",
    "library_versions",
    "load_transform",
    "split_xy",
    "to_polars",
]

_EXAMPLES = 5
_ORDINAL_UNKNOWN = -1
_ORDINAL_MISSING = -2
_TARGET_FOLDS = 5

Task = Literal["classification", "regression"]


# ------------------------------------------------------------------------------- input frames
def to_polars(X: Any, columns: Sequence[str] | None = None) -> pl.DataFrame:
    """A polars DataFrame from polars (eager or lazy), pandas, or a mapping of columns.

    With ``columns``, a pandas frame that has them all is cut to them before converting.
    """
    if isinstance(X, pl.DataFrame):
        return X
    if isinstance(X, pl.LazyFrame):
        return X.collect()
    module = type(X).__module__.split(".")[0]
    if module == "pandas":
        if columns is not None and set(columns) <= set(X.columns):
            X = X[list(columns)]
        return pl.from_pandas(X)
    if isinstance(X, Mapping):
        return pl.DataFrame(dict(X))
    msg = (
        f"feature transforms take a table with named columns (polars or pandas), "
        f"not {type(X).__name__}"
    )
    raise DataError(msg)


def _show(value: Any) -> str:
    return f"'{value}'" if isinstance(value, str) else str(value)


def _as_numeric(frame: pl.DataFrame, columns: Sequence[str]) -> pl.DataFrame:
    """Cast text and boolean columns to Float64; text only when every non-blank value casts."""
    casts: list[pl.Series] = []
    for name in columns:
        s = frame.get_column(name)
        if s.dtype.is_numeric():
            continue
        if s.dtype == pl.Boolean:
            casts.append(s.cast(pl.Float64))
            continue
        if s.dtype not in (pl.String, pl.Categorical) and not isinstance(s.dtype, pl.Enum):
            msg = f"column '{name}' is {s.dtype}, not numeric"
            raise DataError(msg)
        stripped = pl.col(name).cast(pl.String).str.strip_chars()
        text = frame.select(
            pl.when(stripped.str.len_chars() > 0).then(stripped).alias(name)
        ).to_series()
        number = text.cast(pl.Float64, strict=False)
        bad = text.is_not_null() & number.is_null()
        n_bad = int(bad.sum())
        if n_bad:
            example = text.filter(bad)[0]
            msg = (
                f"column '{name}' has non-numeric values, e.g. '{example}' "
                f"({n_bad:,} of {s.len():,} rows)"
            )
            hint = (
                "Fix or filter those rows upstream, or encode the column "
                f"(encode: {{columns: [{name}]}}) if it holds categories."
            )
            raise DataError(msg, hint=hint)
        casts.append(number.alias(name))
    return frame.with_columns(casts) if casts else frame


class DeriveColumns(TransformerMixin, BaseEstimator):  # type: ignore[misc]
    """The first step of a features pipeline: select, derive, drop, cast.

    ``columns``: the input columns to read (None: all of them), in the order they are kept;
    ``expressions``: new column -> Polars SQL expression, evaluated in order (a later one may
    use an earlier one; a name that is already a column replaces it in place); ``drop``: columns
    removed after deriving (inputs only used to derive); ``numeric``: columns cast to Float64
    (booleans, and text that holds numbers: a value that does not cast is an error).

    Accepts polars, pandas or a mapping of columns, and returns a polars DataFrame whose columns
    are :meth:`get_feature_names_out`. It learns nothing from the data: ``fit`` checks that the
    columns are there and records ``feature_names_in_``.
    """

    def __init__(
        self,
        columns: Sequence[str] | None = None,
        expressions: Mapping[str, str] | None = None,
        drop: Sequence[str] = (),
        numeric: Sequence[str] = (),
    ) -> None:
        self.columns = columns
        self.expressions = expressions
        self.drop = drop
        self.numeric = numeric

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.string = True
        tags.input_tags.allow_nan = True
        return tags

    def fit(self, X: Any, y: Any = None) -> DeriveColumns:
        frame = to_polars(X, self.columns)
        inputs = list(self.columns) if self.columns is not None else frame.columns
        self._require(frame, inputs)
        self.feature_names_in_ = np.asarray(inputs, dtype=object)
        self.n_features_in_ = len(inputs)
        self._apply(frame)  # the expressions and casts work on this data
        return self

    def fit_transform(self, X: Any, y: Any = None, **fit_params: Any) -> pl.DataFrame:
        frame = to_polars(X, self.columns)
        inputs = list(self.columns) if self.columns is not None else frame.columns
        self._require(frame, inputs)
        self.feature_names_in_ = np.asarray(inputs, dtype=object)
        self.n_features_in_ = len(inputs)
        return self._apply(frame)

    def transform(self, X: Any) -> pl.DataFrame:
        from sklearn.utils.validation import check_is_fitted

        check_is_fitted(self)
        frame = to_polars(X, list(self.feature_names_in_))
        self._require(frame, list(self.feature_names_in_))
        return self._apply(frame)

    def get_feature_names_out(self, input_features: Any = None) -> Any:
        from sklearn.utils.validation import check_is_fitted

        check_is_fitted(self)
        return np.asarray(self._names_out(list(self.feature_names_in_)), dtype=object)

    def _names_out(self, inputs: list[str]) -> list[str]:
        names = list(inputs)
        for name in self.expressions or {}:
            if name not in names:
                names.append(name)
        dropped = set(self.drop)
        return [n for n in names if n not in dropped]

    def _require(self, frame: pl.DataFrame, inputs: list[str]) -> None:
        missing = [c for c in inputs if c not in frame.columns]
        if missing:
            shown = ", ".join(f"'{c}'" for c in missing[:_EXAMPLES])
            more = f" and {len(missing) - _EXAMPLES} more" if len(missing) > _EXAMPLES else ""
            msg = (
                f"the table has no column{'s' if len(missing) > 1 else ''} {shown}{more}"
                f"{did_you_mean(missing[0], frame.columns)}; the feature transform reads "
                f"{', '.join(inputs)}"
            )
            raise DataError(msg)

    def _apply(self, frame: pl.DataFrame) -> pl.DataFrame:
        out = frame.select(list(self.feature_names_in_))
        for name, sql in (self.expressions or {}).items():
            try:
                out = out.with_columns(pl.sql_expr(sql).alias(name))
            except pl.exceptions.PolarsError as exc:
                msg = f"derive '{name}' ({sql}) failed: {_first_line(exc)}"
                raise DataError(msg) from None
        if self.drop:
            out = out.drop(list(self.drop), strict=False)
        return _as_numeric(out, list(self.numeric))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class MutualInfoScore:
    """A k-best score: mutual information with a seed, for class labels or for numbers.

    A class (not ``functools.partial``) so that skops stores it as a ductwork type.
    """

    def __init__(self, seed: int = 42) -> None:
        self.seed = seed

    def __call__(self, X: Any, y: Any) -> Any:
        from sklearn.feature_selection import mutual_info_classif, mutual_info_regression
        from sklearn.utils.multiclass import type_of_target

        if type_of_target(y) in ("binary", "multiclass"):
            return mutual_info_classif(X, y, random_state=self.seed)
        return mutual_info_regression(X, y, random_state=self.seed)

    def __repr__(self) -> str:
        return f"MutualInfoScore(seed={self.seed})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MutualInfoScore) and other.seed == self.seed

    def __hash__(self) -> int:
        return hash(("MutualInfoScore", self.seed))


# ------------------------------------------------------------------------------- planning
_Kind = Literal["numeric", "boolean", "text", "categorical", "temporal", "other"]


def _kind(dtype: pl.DataType) -> _Kind:
    if dtype.is_numeric():
        return "numeric"
    if dtype == pl.Boolean:
        return "boolean"
    if dtype == pl.String:
        return "text"
    if dtype == pl.Categorical or isinstance(dtype, pl.Enum):
        return "categorical"
    if dtype.is_temporal():
        return "temporal"
    return "other"


Impute = tuple[str, Any, Literal["nan", "none"]]  # strategy, fill_value, missing marker
Op = tuple[str, str, int | None]  # normalize|encode, method, max_categories


@dataclass
class _Group:
    impute: Impute | None
    op: Op | None
    columns: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        parts = []
        if self.impute is not None:
            parts.append(f"impute_{self.impute[0]}")
        if self.op is not None:
            parts.append(self.op[1])
        return "+".join(parts)


@dataclass
class _Plan:
    raw: list[str]  # input columns read, in table order
    derive_drop: list[str]
    numeric: list[str]
    groups: list[_Group]
    target_dtype: pl.DataType | None


def _error(stage: str | None, message: str, hint: str | None = None) -> DataError:
    prefix = f"stage '{stage}': " if stage else ""
    return DataError(prefix + message, hint=hint)


def _check_names(
    stage: str | None, what: str, names: Sequence[str], available: Sequence[str], hint: str = ""
) -> None:
    for name in names:
        if name not in available:
            msg = f"{what} column '{name}' not found in the train table{did_you_mean(name, available)}"
            raise _error(stage, msg, hint or f"Columns: {', '.join(available)}")


def _plan(params: FeaturesParams, schema: Mapping[str, pl.DataType], stage: str | None) -> _Plan:
    names = list(schema)
    target = params.target
    target_dtype: pl.DataType | None = None
    if target is not None:
        _check_names(stage, "target", [target], names)
        target_dtype = schema[target]
    features = {k: v for k, v in schema.items() if k != target}
    _check_names(stage, "drop", params.drop, list(features))

    # derive: which input columns each expression reads, and the schema after deriving
    derived = pl.LazyFrame(schema=features)
    available = list(features)
    roots: list[str] = []
    for name, sql in params.derive.items():
        expr = pl.sql_expr(sql)
        for root in expr.meta.root_names():
            if root == target:
                msg = (
                    f"derive '{name}' uses the target column '{target}', which is not known "
                    "when the model predicts"
                )
                raise _error(stage, msg)
            if root not in available:
                msg = (
                    f"derive '{name}' ({sql}): column '{root}' not found"
                    f"{did_you_mean(root, available)}"
                )
                raise _error(stage, msg, f"Columns: {', '.join(available)}")
            if root in features and root not in roots:
                roots.append(root)
        try:
            derived = derived.with_columns(expr.alias(name))
            derived.collect_schema()
        except pl.exceptions.PolarsError as exc:
            msg = f"derive '{name}' ({sql}) does not apply to the columns: {_first_line(exc)}"
            raise _error(stage, msg) from None
        if name not in available:
            available.append(name)
    after = dict(derived.collect_schema())
    dropped = set(params.drop)
    kept = [c for c in after if c not in dropped]

    # the blocks: every column's recipe
    impute: dict[str, ImputeBlock] = {}
    op: dict[str, tuple[str, NormalizeBlock | EncodeBlock]] = {}
    for key in ("impute", "normalize", "encode"):
        for block in params.blocks(key):
            hint = (
                f"Columns: {', '.join(kept)}"
                if not dropped
                else f"Columns (after drop): {', '.join(kept)}"
            )
            _check_names(stage, key, block.columns, kept, hint)
            for c in block.columns:
                if key == "impute":
                    impute[c] = block
                else:
                    op[c] = (key, block)
    mentioned = set(impute) | set(op)
    model_columns = [c for c in kept if c in mentioned or params.remainder == "passthrough"]

    numeric: list[str] = []
    groups: dict[tuple[Impute | None, Op | None], _Group] = {}
    for c in model_columns:
        dtype = after[c]
        kind = _kind(dtype)
        imp = impute.get(c)
        role = op.get(c)
        encoded = role is not None and role[0] == "encode"
        if role is not None and role[0] == "normalize":
            needs, why = True, "normalized"
        elif imp is not None and imp.strategy in ("mean", "median"):
            needs, why = True, f"imputed with the {imp.strategy}"
        else:
            needs, why = not encoded, ""
        if needs:
            _check_numeric_kind(stage, c, dtype, kind, why)
            if kind in ("text", "boolean"):
                numeric.append(c)
        elif encoded:
            if kind in ("temporal", "other"):
                msg = f"column '{c}' is {dtype}: it cannot be encoded"
                hint = (
                    f"Derive numbers or categories from it (derive: {{{c}_hour: "
                    f'"EXTRACT(hour FROM {c})"}}) and drop it.'
                )
                raise _error(stage, msg, hint)
            if kind == "boolean":
                numeric.append(c)
        if imp is None and role is None:
            continue  # passthrough: the ColumnTransformer's remainder
        missing: Literal["nan", "none"] = (
            "none" if kind in ("text", "categorical") and c not in numeric else "nan"
        )
        imp_key: Impute | None = None if imp is None else (imp.strategy, imp.fill_value, missing)
        op_key: Op | None = None
        if role is not None:
            block = role[1]
            max_categories = block.max_categories if isinstance(block, EncodeBlock) else None
            op_key = (role[0], block.method, max_categories)
        groups.setdefault((imp_key, op_key), _Group(imp_key, op_key)).columns.append(c)

    needed = set(model_columns) | set(roots)
    raw = [c for c in features if c in needed]
    derive_drop = [c for c in raw if c in dropped]
    return _Plan(raw, derive_drop, numeric, list(groups.values()), target_dtype)


def _check_numeric_kind(
    stage: str | None, column: str, dtype: pl.DataType, kind: _Kind, why: str
) -> None:
    if kind in ("numeric", "boolean") or (kind == "text" and why):
        return  # text to normalize is cast when every value is a number (checked on the data)
    if why:
        msg = f"column '{column}' is {dtype}, not numeric: it cannot be {why}"
    else:
        msg = f"column '{column}' is {dtype} and would reach the model unencoded"
    if kind == "temporal":
        hint = (
            f'Derive numbers from it (derive: {{{column}_hour: "EXTRACT(hour FROM {column})"}}) '
            f"and drop it (drop: [{column}])."
        )
    elif kind in ("text", "categorical"):
        hint = f"Encode it (encode: {{columns: [{column}]}}) or drop it (drop: [{column}])."
        if kind == "text":
            hint += " If it holds numbers, cast it upstream or list it under normalize."
    else:
        hint = f"Drop it (drop: [{column}]) or derive a number from it."
    raise _error(stage, msg, hint)


# ------------------------------------------------------------------------------- building
def build_transformer(
    params: FeaturesParams,
    schema: Mapping[str, pl.DataType],
    *,
    stage: str | None = None,
    task: Task | None = None,
) -> Any:
    """An unfitted ``sklearn.pipeline.Pipeline`` for ``params`` over a table with ``schema``.

    ``schema`` is the train table's (with the target, if any). Steps: ``derive``
    (:class:`DeriveColumns`), ``columns`` (a ``ColumnTransformer`` with one entry per recipe:
    impute, normalize or encode, or impute then normalize/encode) and, with ``select``,
    ``select``. Output is polars with readable feature names (``dep_delay``, ``carrier_UA``).
    Errors (:class:`DataError`) name ``stage`` when given.

    ``task`` (``params.task`` first) decides target encoding (per class or continuous) and the
    default k-best score; without either, a float target is regression and any other
    classification (:func:`infer_task` looks at the values too, which a schema cannot). To
    refit the transform of a features stage (cross-validation folds), ``sklearn.base.clone``
    the fitted pipeline from :func:`load_transform` rather than rebuilding it.
    """
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    plan = _plan(params, schema, stage)
    task = params.task or task
    if task is None and plan.target_dtype is not None:
        task = "regression" if plan.target_dtype.is_float() else "classification"
    derive = DeriveColumns(
        columns=plan.raw,
        expressions=dict(params.derive),
        drop=plan.derive_drop,
        numeric=plan.numeric,
    )
    transformers: list[tuple[str, Any, list[str]]] = []
    used: set[str] = set()
    for group in plan.groups:
        name = group.name
        n = 2
        while name in used:
            name, n = f"{group.name}_{n}", n + 1
        used.add(name)
        transformers.append((name, _group_transformer(group, params.seed, task), group.columns))
    columns = ColumnTransformer(
        transformers, remainder=params.remainder, verbose_feature_names_out=False
    )
    steps: list[tuple[str, Any]] = [("derive", derive), ("columns", columns)]
    if params.select is not None:
        steps.append(("select", _selector(params.select, task, params.seed)))
    return Pipeline(steps).set_output(transform="polars")


def _group_transformer(group: _Group, seed: int, task: Task | None) -> Any:
    from sklearn.pipeline import Pipeline

    steps: list[tuple[str, Any]] = []
    if group.impute is not None:
        steps.append(("impute", _imputer(*group.impute)))
    if group.op is not None:
        kind, method, max_categories = group.op
        step = (
            _scaler(method) if kind == "normalize" else _encoder(method, max_categories, task, seed)
        )
        steps.append((kind, step))
    return steps[0][1] if len(steps) == 1 else Pipeline(steps)


def _imputer(strategy: str, fill_value: Any, missing: str) -> Any:
    from sklearn.impute import SimpleImputer

    # keep_empty_features: a column with no value in the fitted rows (a cross-validation fold)
    # is filled (0 or fill_value) rather than dropped, so the output columns never vary
    return SimpleImputer(
        strategy=strategy,
        fill_value=fill_value,
        missing_values=None if missing == "none" else np.nan,
        keep_empty_features=True,
    )


def _scaler(method: str) -> Any:
    from sklearn.preprocessing import MinMaxScaler, RobustScaler, StandardScaler

    return {"standard": StandardScaler, "minmax": MinMaxScaler, "robust": RobustScaler}[method]()


def _encoder(method: str, max_categories: int | None, task: Task | None, seed: int) -> Any:
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, TargetEncoder

    if method == "one_hot":
        return OneHotEncoder(
            handle_unknown="infrequent_if_exist",
            max_categories=max_categories,
            sparse_output=False,
        )
    if method == "ordinal":
        return OrdinalEncoder(
            handle_unknown="use_encoded_value",
            unknown_value=_ORDINAL_UNKNOWN,
            encoded_missing_value=_ORDINAL_MISSING,
            max_categories=max_categories,
        )
    continuous = task == "regression"
    target_type = "continuous" if continuous else "auto"
    if inspect.signature(TargetEncoder).parameters["random_state"].default == "deprecated":
        # scikit-learn >= 1.9 takes the folds as a splitter
        from sklearn.model_selection import KFold, StratifiedKFold

        splitter = KFold if continuous else StratifiedKFold
        cv = splitter(n_splits=_TARGET_FOLDS, shuffle=True, random_state=seed)
        return TargetEncoder(target_type=target_type, cv=cv)
    return TargetEncoder(target_type=target_type, cv=_TARGET_FOLDS, shuffle=True, random_state=seed)


def _selector(spec: SelectSpec, task: Task | None, seed: int) -> Any:
    from sklearn.feature_selection import (
        SelectKBest,
        VarianceThreshold,
        f_classif,
        f_regression,
    )

    if spec.method == "variance":
        return VarianceThreshold(threshold=spec.threshold or 0.0)
    score = spec.score
    if score is None:
        score = "f_regression" if task == "regression" else "f_classif"
    func: Any = {
        "f_classif": f_classif,
        "f_regression": f_regression,
        "mutual_info": MutualInfoScore(seed),
    }[score]
    return SelectKBest(score_func=func, k=spec.k if spec.k is not None else 10)


# ------------------------------------------------------------------------------- data checks
def split_xy(
    frame: pl.DataFrame, target: str | None, stage: str
) -> tuple[pl.DataFrame, pl.Series | None]:
    """The features (every column but the target) and the target, checked for training.

    Errors (:class:`DataError`): the target column is missing (with a "did you mean"), has null
    or NaN values (how many, and the first row), or has one value on every row.
    """
    if target is None:
        return frame, None
    if target not in frame.columns:
        msg = (
            f"stage '{stage}': target column '{target}' not found"
            f"{did_you_mean(target, frame.columns)}"
        )
        raise DataError(msg, hint=f"Columns: {', '.join(frame.columns)}")
    y = frame.get_column(target)
    missing = y.is_null()
    if y.dtype.is_float():
        missing = missing | y.is_nan().fill_null(True)
    n_missing = int(missing.sum())
    if n_missing:
        first = int(missing.arg_true()[0])
        msg = (
            f"stage '{stage}': target column '{target}' has {n_missing:,} missing values "
            f"(null or NaN) of {frame.height:,}, the first at row {first}"
        )
        hint = (
            f"Every training row needs a label: filter them out upstream "
            f"(e.g. a transform with 'where {target} is not null')."
        )
        raise DataError(msg, hint=hint)
    if frame.height and y.n_unique() == 1:
        msg = (
            f"stage '{stage}': target column '{target}' has one value ({_show(y[0])}) on all "
            f"{frame.height:,} rows: there is nothing to learn"
        )
        raise DataError(msg, hint="Check the upstream filters and the split.")
    return frame.drop(target), y


def infer_task(y: pl.Series, stage: str | None = None) -> Task:
    """:func:`ductwork.ml.estimators.infer_task`, with the stage named in its error."""
    from ductwork.ml import estimators

    try:
        return estimators.infer_task(y)
    except DataError as exc:
        raise _error(stage, exc.message) from None


def check_fit_data(X: pl.DataFrame, params: FeaturesParams, stage: str) -> None:
    """Columns to impute from a statistic of train must have a value on some train row."""
    for block in params.blocks("impute"):
        if block.strategy == "constant":
            continue
        for c in block.columns:
            if c not in X.columns or X.height == 0:
                continue  # a derived column: the imputer warns
            s = X.get_column(c)
            empty = s.null_count() == s.len() or (
                s.dtype.is_float() and int((s.is_null() | s.is_nan()).sum()) == s.len()
            )
            if empty:
                msg = (
                    f"stage '{stage}': column '{c}' is missing on every train row, so it has "
                    f"no {block.strategy} to impute with"
                )
                hint = f"Drop it (drop: [{c}]) or use strategy: constant."
                raise DataError(msg, hint=hint)


# ------------------------------------------------------------------------------- description
class FeatureInfo(TypedDict):
    """What a fitted features pipeline reads and writes (JSON-able; ``features.json``)."""

    target: str | None
    target_dtype: str | None
    task: str | None
    input_columns: list[str]
    input_schema: dict[str, str]
    derived: dict[str, str]
    dropped: list[str]
    output_features: list[str]
    imputed: list[str]
    impute_strategy: dict[str, str]
    normalized: dict[str, str]
    encoded: dict[str, str]
    categories: dict[str, list[Any]]
    selected: dict[str, Any] | None


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def feature_info(fitted: Any, train_frame: pl.DataFrame, params: FeaturesParams) -> FeatureInfo:
    """Describe a fitted features pipeline: its input columns, output features, categories."""
    derive = fitted.named_steps["derive"]
    columns = fitted.named_steps["columns"]
    inputs = [str(c) for c in derive.feature_names_in_]
    categories: dict[str, list[Any]] = {}
    for _name, transformer, cols in columns.transformers_:
        step = transformer.steps[-1][1] if hasattr(transformer, "steps") else transformer
        cats = getattr(step, "categories_", None)
        if cats is None or isinstance(cols, str):
            continue
        for col, values in zip(cols, cats, strict=True):
            categories[str(col)] = [_jsonable(v) for v in values]
    imputed: dict[str, str] = {}
    for block in params.blocks("impute"):
        imputed.update(dict.fromkeys(block.columns, block.strategy))
    normalized: dict[str, str] = {}
    for block in params.blocks("normalize"):
        normalized.update(dict.fromkeys(block.columns, block.method))
    encoded: dict[str, str] = {}
    for block in params.blocks("encode"):
        encoded.update(dict.fromkeys(block.columns, block.method))
    selected: dict[str, Any] | None = None
    if "select" in fitted.named_steps:
        before = [str(c) for c in columns.get_feature_names_out()]
        kept = [str(c) for c in fitted.named_steps["select"].get_feature_names_out()]
        selected = {
            **params.select.model_dump(exclude_none=True),  # type: ignore[union-attr]
            "kept": len(kept),
            "of": len(before),
            "removed": [c for c in before if c not in set(kept)],
        }
    target = params.target
    task: str | None = params.task
    if task is None and target is not None and target in train_frame.columns:
        task = infer_task(train_frame.get_column(target))
    return FeatureInfo(
        target=target,
        task=task,
        target_dtype=(
            str(train_frame.schema[target])
            if target is not None and target in train_frame.columns
            else None
        ),
        input_columns=inputs,
        input_schema={c: str(train_frame.schema[c]) for c in inputs if c in train_frame.columns},
        derived=dict(params.derive),
        dropped=list(params.drop),
        output_features=[str(c) for c in fitted.get_feature_names_out()],
        imputed=list(imputed),
        impute_strategy=imputed,
        normalized=normalized,
        encoded=encoded,
        categories=categories,
        selected=selected,
    )


def library_versions() -> dict[str, str]:
    """Versions of the libraries a fitted transform depends on (recorded next to it)."""
    from ductwork.__about__ import __version__

    versions = {"ductwork": __version__}
    for dist in ("scikit-learn", "skops", "polars", "numpy"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def load_transform(directory: Path) -> tuple[Any, dict[str, Any]]:
    """The fitted pipeline and its ``features.json`` from a features stage's ``transform``.

    The skops file is checked against the sha256 recorded in ``features.json`` and loaded with
    the allow-list of :mod:`ductwork.ml.serialize`.
    """
    from ductwork.ml import serialize

    info_path = Path(directory) / INFO_FILE
    try:
        info: dict[str, Any] = json.loads(info_path.read_text(encoding="utf-8"))
    except OSError as exc:
        msg = f"cannot read {info_path}: {exc.strerror or exc}"
        raise DataError(msg) from None
    except json.JSONDecodeError as exc:
        msg = f"{info_path} is not valid JSON: {exc}"
        raise DataError(msg) from None
    sha = info.get("sha256")
    if not isinstance(sha, str):
        msg = f"{info_path} records no sha256 for {TRANSFORM_FILE}"
        raise DataError(msg)
    fitted = serialize.load(Path(directory) / TRANSFORM_FILE, sha256=sha)
    return fitted, info

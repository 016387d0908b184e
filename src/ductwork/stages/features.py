"""The ``features`` stage kind: declarative feature transformations, fitted on train only.

The params describe a scikit-learn ``Pipeline`` (built by :mod:`ductwork.ml.features`):

* ``derive``: new columns from Polars SQL expressions over the input columns, computed first;
* ``impute``, ``normalize``, ``encode``: blocks of columns, each with a method; a column may be
  imputed and then normalized or encoded (one ``ColumnTransformer`` entry per recipe);
* ``select``: keep features by variance or by a univariate score against the target;
* ``drop`` leaves columns out; ``remainder`` passes the other columns through or drops them.

The pipeline is fitted on the ``train`` input alone and applied unchanged to ``val`` and
``test``: no statistic of a validation or test row reaches the fitted transform (target encoding
cross-fits within train, so a train row's encoding never uses its own label). The fitted
pipeline is written with skops, with its sha256 and a description of its inputs and outputs,
as the ``transform`` output that train, tune and predict load.

This module imports no scikit-learn: the params are plain pydantic models, and ``run`` imports
:mod:`ductwork.ml.features` (listing kinds and checking pipelines work without the ml extra).
"""

from __future__ import annotations

import contextlib
import json
import re
import warnings
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar, Literal

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ductwork.core.contract import (
    ArtifactInfo,
    Inputs,
    Output,
    StageContext,
    StageKind,
    StageParams,
)
from ductwork.errors import DataError, did_you_mean

SPLITS = ("train", "val", "test")
TRANSFORM_FILE = "transform.skops"
INFO_FILE = "features.json"


class _Block(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    columns: list[str] = Field(min_length=1, description="The columns the block applies to.")

    @field_validator("columns")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        seen: set[str] = set()
        for c in value:
            if c in seen:
                msg = f"column '{c}' is listed twice"
                raise ValueError(msg)
            seen.add(c)
        return value


class ImputeBlock(_Block):
    """Fill missing values (null or NaN) with a statistic of the train rows."""

    strategy: Literal["mean", "median", "most_frequent", "constant"] = "median"
    fill_value: str | bool | int | float | None = Field(
        default=None, description="The value for strategy: constant (default 0, or 'missing')."
    )

    @model_validator(mode="after")
    def _fill_value_for_constant(self) -> ImputeBlock:
        if self.fill_value is not None and self.strategy != "constant":
            msg = f"fill_value is only used with strategy: constant (strategy is {self.strategy})"
            raise ValueError(msg)
        return self


class NormalizeBlock(_Block):
    """Rescale numeric columns with statistics of the train rows."""

    method: Literal["standard", "minmax", "robust"] = "standard"


class EncodeBlock(_Block):
    """Turn categorical columns into numbers."""

    method: Literal["one_hot", "ordinal", "target"] = "one_hot"
    max_categories: int | None = Field(
        default=None,
        ge=2,
        description="one_hot/ordinal: keep this many categories, group the rarest into one.",
    )

    @model_validator(mode="after")
    def _max_categories_method(self) -> EncodeBlock:
        if self.max_categories is not None and self.method == "target":
            msg = "max_categories is only used with method: one_hot or ordinal"
            raise ValueError(msg)
        return self


class SelectSpec(BaseModel):
    """Keep a subset of the transformed features."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal["variance", "k_best"]
    threshold: float | None = Field(
        default=None, ge=0, description="variance: drop features with a train variance <= this."
    )
    k: int | None = Field(default=None, ge=1, description="k_best: how many features to keep.")
    score: Literal["f_classif", "f_regression", "mutual_info"] | None = Field(
        default=None,
        description="k_best: the score (default f_regression for regression, else f_classif).",
    )

    @model_validator(mode="after")
    def _params_for_method(self) -> SelectSpec:
        if self.method == "variance" and (self.k is not None or self.score is not None):
            msg = "k and score are only used with method: k_best"
            raise ValueError(msg)
        if self.method == "k_best" and self.threshold is not None:
            msg = "threshold is only used with method: variance"
            raise ValueError(msg)
        return self


_BLOCK_KEYS = ("impute", "normalize", "encode")


class FeaturesParams(StageParams):
    target: str | None = Field(
        default=None, description="The label column: kept as is, never a feature."
    )
    task: Literal["classification", "regression"] | None = Field(
        default=None,
        description="What the target is, for target encoding and k_best (default: inferred).",
    )
    derive: dict[str, str] = Field(
        default_factory=dict,
        description="New column -> Polars SQL expression over the input columns, computed first.",
    )
    impute: ImputeBlock | list[ImputeBlock] = Field(
        default_factory=list, description="Fill missing values: {columns, strategy, fill_value}."
    )
    normalize: NormalizeBlock | list[NormalizeBlock] = Field(
        default_factory=list, description="Rescale: {columns, method: standard|minmax|robust}."
    )
    encode: EncodeBlock | list[EncodeBlock] = Field(
        default_factory=list,
        description="Encode categories: {columns, method: one_hot|ordinal|target, max_categories}.",
    )
    select: SelectSpec | None = Field(
        default=None, description="{method: variance, threshold} or {method: k_best, k, score}."
    )
    remainder: Literal["passthrough", "drop"] = Field(
        default="passthrough", description="What happens to the columns no block names."
    )
    drop: list[str] = Field(default_factory=list, description="Columns to leave out (ids, ...).")
    seed: int = Field(
        default=42, ge=0, lt=2**32, description="Seeds target encoding folds and mutual_info."
    )

    @field_validator("derive")
    @classmethod
    def _expressions_parse(cls, value: dict[str, str]) -> dict[str, str]:
        for name, sql in value.items():
            if not name.strip():
                msg = "derive: a column name is empty"
                raise ValueError(msg)
            try:
                pl.sql_expr(sql)
            except Exception as exc:
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc)
                msg = f"derive '{name}': '{sql}' is not a valid SQL expression ({reason})"
                raise ValueError(msg) from None
        return value

    @model_validator(mode="after")
    def _columns_consistent(self) -> FeaturesParams:
        role: dict[str, str] = {}  # column -> normalize | encode
        for key in _BLOCK_KEYS:
            seen: set[str] = set()
            for block in self.blocks(key):
                for c in block.columns:
                    if c in seen:
                        msg = f"column '{c}' is in two {key} blocks"
                        raise ValueError(msg)
                    seen.add(c)
                    if key != "impute":
                        if c in role:
                            msg = f"column '{c}' is both normalized and encoded; pick one"
                            raise ValueError(msg)
                        role[c] = key
                    if c in self.drop:
                        msg = f"column '{c}' is in drop and in {key}"
                        raise ValueError(msg)
                    if c == self.target:
                        msg = f"column '{c}' is the target: it is never transformed ({key})"
                        raise ValueError(msg)
        if self.target is not None:
            if self.target in self.drop:
                msg = f"the target '{self.target}' is in drop (the target is never a feature)"
                raise ValueError(msg)
            if self.target in self.derive:
                msg = f"derive '{self.target}' has the target's name"
                raise ValueError(msg)
        needs_target = [
            what
            for what, used in (
                ("encode method: target", any(b.method == "target" for b in self.blocks("encode"))),
                (
                    "select method: k_best",
                    self.select is not None and self.select.method == "k_best",
                ),
            )
            if used
        ]
        if self.task is not None and self.target is None:
            needs_target.insert(0, "task")
        if needs_target and self.target is None:
            msg = f"{needs_target[0]} needs 'target' (the label column)"
            raise ValueError(msg)
        return self

    def blocks(self, key: str) -> list[Any]:
        """The ``impute``, ``normalize`` or ``encode`` blocks as a list."""
        value = getattr(self, key)
        return list(value) if isinstance(value, list) else [value]


class Features(StageKind[FeaturesParams]):
    """Impute, normalize, encode, derive and select features: fitted on train, applied to all."""

    name = "features"
    version = "1"
    Params = FeaturesParams
    min_inputs: ClassVar[int] = 1
    max_inputs: ClassVar[int | None] = 3
    summary = "impute, normalize, encode, derive and select features (fitted on train only)"
    outputs: ClassVar[dict[str, Output]] = {
        "train": Output("table", description="the transformed training rows, with the target"),
        "val": Output("table", description="the transformed validation rows (empty if no input)"),
        "test": Output("table", description="the transformed test rows (empty if no input)"),
        "transform": Output(
            "files", description="the fitted transform (transform.skops) and features.json"
        ),
    }

    def run(self, params: FeaturesParams, inputs: Inputs, ctx: StageContext) -> dict[str, Any]:
        from ductwork.ml import require_ml

        require_ml("the features stage")
        from ductwork.ml import features as F
        from ductwork.ml import serialize

        _check_input_names(ctx.stage, inputs)
        train = inputs["train"].frame()
        if train.height == 0:
            msg = f"stage '{ctx.stage}': the train input has no rows; there is nothing to fit on"
            raise DataError(msg)
        X, y = F.split_xy(train, params.target, ctx.stage)
        task = params.task or (F.infer_task(y, ctx.stage) if y is not None else None)
        pipeline = F.build_transformer(params, train.schema, stage=ctx.stage, task=task)
        F.check_fit_data(X, params, ctx.stage)
        with _in_stage(ctx, "train"):
            # fit_transform, not fit().transform(): target encoding cross-fits the train rows
            features = F.to_polars(pipeline.fit_transform(X, y))
        out = {"train": _with_target(ctx.stage, features, train, params.target)}
        for name in ("val", "test"):
            if name not in inputs:
                out[name] = out["train"].clear()
                continue
            frame = inputs[name].frame()
            if frame.height == 0:
                out[name] = out["train"].clear()
                continue
            if params.target is not None and params.target not in frame.columns:
                msg = (
                    f"stage '{ctx.stage}': target column '{params.target}' not found in the "
                    f"'{name}' input{did_you_mean(params.target, frame.columns)}"
                )
                raise DataError(msg)
            part = frame.drop(params.target) if params.target is not None else frame
            with _in_stage(ctx, name):
                transformed = F.to_polars(pipeline.transform(part))
            out[name] = _with_target(ctx.stage, transformed, frame, params.target)

        directory = ctx.tmp_dir / "transform"
        directory.mkdir(parents=True, exist_ok=True)
        sha = serialize.dump(pipeline, directory / TRANSFORM_FILE)
        info: dict[str, Any] = dict(F.feature_info(pipeline, train, params))
        info.update(sha256=sha, versions=F.library_versions(), params=params.model_dump())
        (directory / INFO_FILE).write_text(
            json.dumps(info, indent=1, sort_keys=True, allow_nan=False) + "\n", encoding="utf-8"
        )
        ctx.metric(
            features=features.width,
            rows_train=out["train"].height,
            rows_val=out["val"].height,
            rows_test=out["test"].height,
        )
        return {**out, "transform": directory}

    def check(
        self,
        params: FeaturesParams,
        inputs: Inputs,
        outputs: Mapping[str, ArtifactInfo],
        ctx: StageContext,
    ) -> list[str]:
        problems: list[str] = []
        for name in SPLITS:
            rows_out = outputs[name].rows
            rows_in = inputs[name].rows if name in inputs else 0
            if rows_out is not None and rows_in is not None and rows_out != rows_in:
                problems.append(
                    f"rows: the '{name}' output has {rows_out:,} rows, the input {rows_in:,}"
                )
        schema = outputs["train"].schema
        for name in ("val", "test"):
            other = outputs[name].schema
            if schema is not None and other is not None and other != schema:
                problems.append(f"schema: the '{name}' output's columns differ from train's")
        return problems


def _check_input_names(stage: str, inputs: Inputs) -> None:
    unknown = [n for n in inputs if n not in SPLITS]
    if not unknown and "train" in inputs:
        return
    hint = "Name the inputs: inputs: {train: parts.train, val: parts.val, test: parts.test}"
    if unknown:
        names = ", ".join(f"'{n}'" for n in unknown)
        msg = (
            f"stage '{stage}': unknown input name{'s' if len(unknown) > 1 else ''} {names}"
            f"{did_you_mean(unknown[0], SPLITS)}; the features stage takes inputs named "
            "train (required), val and test"
        )
        raise DataError(msg, hint=hint)
    msg = f"stage '{stage}': no input named 'train' (the rows to fit on)"
    raise DataError(msg, hint=hint)


@contextlib.contextmanager
def _in_stage(ctx: StageContext, split: str) -> Iterator[None]:
    """Name the stage and split in data errors from the transform; log sklearn's warnings."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        except DataError as exc:
            msg = f"stage '{ctx.stage}' ({split}): {exc.message}"
            raise DataError(msg, hint=exc.hint) from None
        except ValueError as exc:
            raise _data_error(ctx.stage, split, exc) from exc
    seen: set[str] = set()
    for w in caught:
        text = f"{split}: {w.category.__name__}: {w.message}"
        if text not in seen:
            seen.add(text)
            ctx.log(text)


def _data_error(stage: str, split: str, exc: ValueError) -> Exception:
    """A DataError for scikit-learn's complaints about the data; other errors unchanged."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    if "not unique" in text:
        names = re.search(r"\[.*?\]", text)
        msg = (
            f"stage '{stage}': output feature names are not unique: "
            f"{names.group(0) if names else first}"
        )
        hint = "Rename the column that clashes with an encoded feature (e.g. with derive)."
        return DataError(msg, hint=hint)
    if "infinity" in text:
        msg = f"stage '{stage}' ({split}): a feature has infinite values ({first})"
        hint = "A derived ratio divides by zero? Write it as a / NULLIF(b, 0)."
        return DataError(msg, hint=hint)
    if "fill_value" in text:
        msg = f"stage '{stage}' ({split}): impute: {first}"
        return DataError(msg, hint="Give a number as fill_value for numeric columns.")
    if "variance threshold" in text:
        msg = f"stage '{stage}' ({split}): select removed every feature ({first})"
        return DataError(msg, hint="Lower the threshold.")
    return exc


def _with_target(
    stage: str, features: pl.DataFrame, frame: pl.DataFrame, target: str | None
) -> pl.DataFrame:
    if target is None:
        return features
    if target in features.columns:
        msg = f"stage '{stage}': an output feature is named like the target '{target}'"
        raise DataError(msg, hint="Rename the input column or the derived column.")
    return features.with_columns(frame.get_column(target))

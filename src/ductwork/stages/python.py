"""``kind: python``: your own function as a stage.

    - name: enriched
      kind: python
      uses: my_project.features:add_route     # def add_route(flights: pl.LazyFrame, min_count=10)
      inputs: [flights]
      params: {args: {min_count: 10}}

The function's parameters are the stage's input names (tables arrive as ``pl.LazyFrame``, json
as parsed data, text as str, file sets as a Path) plus ``args``. It returns the value of the
main output, or a dict with one value per output when ``outputs`` declares several. The
function's source is part of the fingerprint, so editing it re-runs the stage.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, ClassVar

from pydantic import Field, field_validator

from ductwork.core.contract import (
    ArtifactType,
    Inputs,
    Output,
    StageContext,
    StageKind,
    StageParams,
)
from ductwork.core.fingerprint import source_digest
from ductwork.errors import DataError, UsageError


def _load_callable(target: str) -> Callable[..., Any]:
    import importlib

    module_name, sep, attr = target.partition(":")
    if not sep or not attr:
        msg = f"uses '{target}' must look like 'package.module:function'"
        raise UsageError(msg)
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        msg = f"uses '{target}': cannot import module '{module_name}': {exc}"
        raise UsageError(
            msg, hint="Is the module on sys.path (the project directory is added)?"
        ) from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            msg = f"uses '{target}': module '{module_name}' has no attribute '{part}'"
            raise UsageError(msg) from None
    if not callable(obj):
        msg = f"uses '{target}' is not callable"
        raise UsageError(msg)
    return obj  # type: ignore[no-any-return]


class PythonParams(StageParams):
    uses: Any = Field(description="'package.module:function', or the function itself (Python API).")
    args: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments for the function."
    )
    outputs: dict[str, ArtifactType] = Field(
        default_factory=lambda: {"main": "table"},  # type: ignore[arg-type]
        description="Declared outputs and their artifact types; the first is the main one.",
    )
    non_empty: bool = Field(default=False, description="Fail when the main table output is empty.")

    @field_validator("uses")
    @classmethod
    def _uses(cls, v: Any) -> Any:
        if isinstance(v, str):
            if ":" not in v:
                msg = f"uses '{v}' must look like 'package.module:function'"
                raise ValueError(msg)
            return v
        if callable(v):
            return v
        msg = "uses must be 'package.module:function' or a function"
        raise ValueError(msg)

    @field_validator("outputs")
    @classmethod
    def _outputs(cls, v: dict[str, ArtifactType]) -> dict[str, ArtifactType]:
        if not v:
            msg = "outputs must declare at least one output"
            raise ValueError(msg)
        return v

    def function(self) -> Callable[..., Any]:
        fn: Callable[..., Any] = (
            _load_callable(self.uses) if isinstance(self.uses, str) else self.uses
        )
        return fn


class PythonStage(StageKind[PythonParams]):
    """Run a user function on the stage's inputs."""

    name = "python"
    version = "1"
    Params = PythonParams
    outputs: ClassVar[dict[str, Output]] = {"main": Output("table")}
    min_inputs = 0
    max_inputs = None
    summary = "your own function on (Lazy)Frames; its source is part of the fingerprint"

    def declared_outputs(self, params: PythonParams) -> dict[str, Output]:
        first = next(iter(params.outputs))
        return {
            name: Output(type_, non_empty=params.non_empty and name == first)
            for name, type_ in params.outputs.items()
        }

    def code_stamp(self, params: PythonParams) -> str:
        return source_digest(params.function())

    def run(self, params: PythonParams, inputs: Inputs, ctx: StageContext) -> dict[str, Any]:
        fn = params.function()
        kwargs: dict[str, Any] = {}
        for name, art in inputs.items():
            t = art.info.type
            kwargs[name] = (
                art.lazy()
                if t == "table"
                else art.json()
                if t == "json"
                else art.text()
                if t == "text"
                else art.path
            )
        kwargs.update(params.args)
        sig = inspect.signature(fn)
        accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())
        if "ctx" in sig.parameters:
            kwargs["ctx"] = ctx
        if not accepts_any:
            unknown = [k for k in kwargs if k not in sig.parameters]
            if unknown:
                msg = (
                    f"function {getattr(fn, '__qualname__', fn)} does not take {', '.join(unknown)}; "
                    f"its parameters are ({', '.join(sig.parameters)})"
                )
                raise UsageError(
                    msg, hint="Name the function's parameters after the stage's inputs."
                )
        result = fn(**kwargs)
        declared = self.declared_outputs(params)
        if len(declared) == 1:
            return {next(iter(declared)): result}
        if not isinstance(result, dict):
            msg = f"the function must return a dict with keys {list(declared)}, got {type(result).__name__}"
            raise DataError(msg)
        return result

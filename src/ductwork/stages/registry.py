"""The registry of stage kinds: an explicit dict of import paths, imported only when used.

Third-party kinds can be added with :func:`register` (or ``kind: python`` for one-off code).
"""

from __future__ import annotations

import importlib
from typing import Any

from ductwork.core.contract import StageKind
from ductwork.errors import UsageError, did_you_mean

KINDS: dict[str, str] = {
    "extract": "ductwork.stages.extract:Extract",
    "validate": "ductwork.stages.validate:Validate",
    "transform": "ductwork.stages.transform:Transform",
    "load": "ductwork.stages.load:Load",
    "profile": "ductwork.stages.profile:Profile",
    "split": "ductwork.stages.split:Split",
    "features": "ductwork.stages.features:Features",
    "tune": "ductwork.stages.tune:Tune",
    "train": "ductwork.stages.train:Train",
    "evaluate": "ductwork.stages.evaluate:Evaluate",
    "gate": "ductwork.stages.gate:Gate",
    "register": "ductwork.stages.register:Register",
    "predict": "ductwork.stages.predict:Predict",
    "python": "ductwork.stages.python:PythonStage",
    "embed": "ductwork.stages.embed:Embed",
    "index": "ductwork.stages.index:Index",
    "generate": "ductwork.stages.generate:Generate",
    "compress": "ductwork.stages.compress:Compress",
    "report": "ductwork.stages.report:Report",
}


def register(name: str, target: str) -> None:
    """Register a stage kind under ``name`` by its import path ``package.module:Class``."""
    KINDS[name] = target


def kind_path(name: str) -> str:
    try:
        return KINDS[name]
    except KeyError:
        msg = f"unknown stage kind '{name}'{did_you_mean(name, KINDS)}"
        raise UsageError(msg, hint=f"Known kinds: {', '.join(sorted(KINDS))}") from None


def load_object(target: str) -> Any:
    """Import ``package.module:attr``."""
    module_name, _, attr = target.partition(":")
    module = importlib.import_module(module_name)
    obj = module
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def get_kind(name: str) -> type[StageKind[Any]]:
    cls = load_object(kind_path(name))
    if not (isinstance(cls, type) and issubclass(cls, StageKind)):
        msg = f"stage kind '{name}' ({KINDS[name]}) is not a StageKind subclass"
        raise UsageError(msg)
    return cls

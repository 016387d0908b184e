"""ductwork: build, run, serve and watch production pipelines for Data, ML and AI.

The public API is imported lazily so that ``import ductwork`` (and ``ductwork --help``) stays
fast; see :mod:`ductwork.api`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ductwork.__about__ import __version__

if TYPE_CHECKING:
    from ductwork.api import (
        Stage,
        artifact,
        export,
        gc,
        lineage,
        load,
        pipeline,
        plan,
        run,
        runs,
        show,
        stage,
    )


__all__ = [
    "Stage",
    "__version__",
    "artifact",
    "export",
    "gc",
    "lineage",
    "load",
    "pipeline",
    "plan",
    "run",
    "runs",
    "show",
    "stage",
]


def __getattr__(name: str) -> Any:
    if name in __all__ and name != "__version__":
        from ductwork import api

        return getattr(api, name)
    msg = f"module 'ductwork' has no attribute '{name}'"
    raise AttributeError(msg)

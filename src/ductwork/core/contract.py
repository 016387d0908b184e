"""The stage contract: what every stage kind declares and what it is handed when it runs.

A stage kind is a small class (scikit-learn style: no I/O at construction) with

* ``name`` and ``version`` (bump the version when the kind's behaviour changes: it is part
  of every fingerprint, so cached artifacts of the old behaviour are not reused),
* ``Params``: a pydantic model, the typed constructor contract of the stage's ``params:``,
* ``outputs``: named outputs with an artifact type; the first one is the main output that
  ``inputs: [stage]`` refers to (``stage.other`` names another),
* ``run(params, inputs, ctx)``: a pure function of its params and input artifacts that returns
  one value per declared output,
* optional ``check(...)``: invariants beyond the built-in ones (e.g. counts that reconcile),
* optional ``preview(...)``: what ``--dry-run`` shows (rendered prompts, estimated cost),
* optional ``source_stamp(...)``: the fingerprint of external data the stage reads (a file's
  content hash), or ``None`` when it cannot be known (an HTTP API): then the stage always runs,
  and downstream stages are still reused when its output content did not change.

Output values by artifact type: ``table`` -> ``polars.DataFrame`` or ``polars.LazyFrame``
(sunk to Parquet with streaming), ``json`` -> a JSON-serialisable dict or list, ``text`` -> str,
``files`` -> a directory ``Path`` (made under ``ctx.tmp_dir``). Any output may also be an
:class:`InputArtifact` of the same type, handed back unchanged: the store keeps the one object
(e.g. validate's ``passed`` in warn mode costs no rewrite).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict

from ductwork.errors import DataError, UsageError

if TYPE_CHECKING:
    import polars as pl

ArtifactType = Literal["table", "json", "text", "files"]
ARTIFACT_TYPES: tuple[ArtifactType, ...] = ("table", "json", "text", "files")


class StageParams(BaseModel):
    """Base of every stage kind's params model: unknown keys are errors, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


P = TypeVar("P", bound=StageParams)


@dataclass(frozen=True)
class Output:
    """A declared output of a stage kind."""

    type: ArtifactType
    non_empty: bool = False
    description: str = ""


@dataclass(frozen=True)
class ArtifactInfo:
    """What the store knows about an artifact without loading it (its manifest)."""

    sha256: str
    type: ArtifactType
    bytes: int
    rows: int | None = None
    schema: dict[str, str] | None = None
    path: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "sha256": self.sha256,
            "type": self.type,
            "bytes": self.bytes,
            "rows": self.rows,
            "schema": self.schema,
        }


@dataclass(frozen=True)
class InputArtifact:
    """An input artifact handed to a stage: read lazily, only what the stage asks for."""

    name: str
    info: ArtifactInfo

    @property
    def path(self) -> Path:
        return Path(self.info.path)

    @property
    def rows(self) -> int | None:
        return self.info.rows

    def lazy(self) -> pl.LazyFrame:
        import polars as pl

        self._expect("table")
        return pl.scan_parquet(self.info.path)

    def frame(self) -> pl.DataFrame:
        import polars as pl

        self._expect("table")
        return pl.read_parquet(self.info.path)

    def json(self) -> Any:
        import json

        self._expect("json")
        return json.loads(Path(self.info.path).read_bytes())

    def text(self) -> str:
        self._expect("text")
        return Path(self.info.path).read_text(encoding="utf-8")

    def _expect(self, kind: ArtifactType) -> None:
        if self.info.type != kind:
            msg = f"input '{self.name}' is a {self.info.type} artifact, not a {kind}"
            raise DataError(msg)


class Inputs(Mapping[str, InputArtifact]):
    """The input artifacts of a stage, by name, in declaration order."""

    def __init__(self, items: Mapping[str, InputArtifact]) -> None:
        self._items = dict(items)

    def __getitem__(self, key: str) -> InputArtifact:
        try:
            return self._items[key]
        except KeyError:
            known = ", ".join(self._items) or "none"
            msg = f"no input named '{key}' (inputs: {known})"
            raise UsageError(msg) from None

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def only(self) -> InputArtifact:
        """The single input of a one-input stage."""
        if len(self._items) != 1:
            msg = f"expected exactly one input, got {len(self._items)}"
            raise UsageError(msg)
        return next(iter(self._items.values()))

    def tables(self) -> dict[str, InputArtifact]:
        return {k: v for k, v in self._items.items() if v.info.type == "table"}


ProgressFn = Callable[[float, float | None, str], None]


def _no_progress(done: float, total: float | None, unit: str) -> None:
    return None


@dataclass
class StageContext:
    """What a running stage may use besides its params and inputs."""

    stage: str
    run_id: str
    project_dir: Path
    work_dir: Path
    allow_outside_project: bool = False
    progress_fn: ProgressFn = _no_progress
    metrics: dict[str, Any] = field(default_factory=dict)
    logs: list[str] = field(default_factory=list)
    store_dir: Path | None = None  # the artifact store's root (default <project>/.ductwork)
    pipeline: str = ""  # the pipeline's name
    fingerprint: str = ""  # this stage run's fingerprint
    # the input artifacts' manifests, by input name (what source_stamp may compare against)
    input_infos: Mapping[str, ArtifactInfo] = field(default_factory=dict)

    @property
    def store_root(self) -> Path:
        """The artifact store's root: where stages keep embedded databases (MLflow, Optuna)."""
        return self.store_dir if self.store_dir is not None else self.project_dir / ".ductwork"

    @property
    def tmp_dir(self) -> Path:
        """A private scratch directory for this stage run, made on first use, removed after."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        return self.work_dir

    def resolve_path(self, path: str | os.PathLike[str], *, what: str = "path") -> Path:
        """Resolve a path from the spec against the project; refuse escapes with '..'."""
        p = Path(path)
        full = p if p.is_absolute() else self.project_dir / p
        resolved = full.resolve()
        if not self.allow_outside_project and not p.is_absolute():
            root = self.project_dir.resolve()
            if resolved != root and root not in resolved.parents:
                msg = (
                    f"stage '{self.stage}': {what} '{path}' escapes the project directory "
                    f"{root}; set allow_outside_project: true in the pipeline to allow it"
                )
                raise DataError(msg)
        return resolved

    def progress(self, done: float, total: float | None = None, unit: str = "rows") -> None:
        self.progress_fn(done, total, unit)

    def log(self, message: str) -> None:
        self.logs.append(message)

    def metric(self, **values: Any) -> None:
        """Record figures for the run summary and the records (e.g. rows passed per check)."""
        self.metrics.update(values)


class StageKind(ABC, Generic[P]):
    """Base of every stage kind. Subclasses set the class attributes and implement ``run``."""

    name: ClassVar[str]
    version: ClassVar[str] = "1"
    Params: ClassVar[type[StageParams]]
    outputs: ClassVar[dict[str, Output]]
    min_inputs: ClassVar[int] = 1
    max_inputs: ClassVar[int | None] = 1
    summary: ClassVar[str] = ""

    def declared_outputs(self, params: P) -> dict[str, Output]:
        """The outputs for these params (override when outputs depend on params)."""
        return dict(type(self).outputs)

    def source_stamp(self, params: P, ctx: StageContext) -> str | None:
        """Fingerprint of external data read by the stage; '' when it reads none.

        Return ``None`` when the external data cannot be fingerprinted cheaply (a database
        query, an HTTP API): the stage then runs every time.
        """
        return ""

    def code_stamp(self, params: P) -> str:
        """Hash of user code the stage runs ('' for built-in kinds)."""
        return ""

    @abstractmethod
    def run(self, params: P, inputs: Inputs, ctx: StageContext) -> dict[str, Any]:
        """Compute the outputs. No hidden state; I/O only at the edges of the pipeline."""

    def check(
        self,
        params: P,
        inputs: Inputs,
        outputs: Mapping[str, ArtifactInfo],
        ctx: StageContext,
    ) -> list[str]:
        """Invariants beyond the built-ins; return one message per violation."""
        return []

    def preview(self, params: P, inputs: Inputs, ctx: StageContext) -> dict[str, Any] | None:
        """What a run would do, for ``ductwork run --dry-run``; must not call anything external.

        Called only when the stage would run and its inputs already exist in the store. A kind
        that spends money or time (an LLM stage) returns e.g. its rendered prompts and estimated
        tokens; ``text`` (optional) is what the console shows. ``None``: nothing to preview.
        """
        return None

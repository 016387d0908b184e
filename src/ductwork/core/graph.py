"""The pipeline graph: stages, their input references, validation and selection.

A :class:`Pipeline` is validated when it is built (unique names, references to existing stages
and outputs, no cycles), like Kedro's ``Pipeline``. Selections return sets of stage names and
never mutate the pipeline.
"""

from __future__ import annotations

import graphlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ductwork.core.contract import Output, StageKind, StageParams
from ductwork.errors import Location, SpecError, SpecIssue, UsageError, did_you_mean


@dataclass(frozen=True)
class InputRef:
    """A reference to a stage output: ``stage`` (its main output) or ``stage.output``."""

    stage: str
    output: str | None = None

    @classmethod
    def parse(cls, text: str) -> InputRef:
        stage, _, output = text.partition(".")
        return cls(stage, output or None)

    def __str__(self) -> str:
        return self.stage if self.output is None else f"{self.stage}.{self.output}"


@dataclass(frozen=True)
class Resources:
    """What one stage needs to run: mapped to each executor (Ray task options, ...).

    Not part of the fingerprint: where a stage runs does not change what it outputs.
    """

    cpus: float | None = None
    memory: int | None = None  # bytes
    gpus: float | None = None

    def to_dict(self) -> dict[str, float | int]:
        return {k: v for k, v in vars(self).items() if v is not None}


@dataclass
class StageNode:
    """One stage of a pipeline, with its kind resolved and params validated."""

    name: str
    kind: str
    kind_cls: type[StageKind[Any]]
    kind_path: str
    params: StageParams
    inputs: dict[str, InputRef]
    outputs: dict[str, Output]
    expect: list[dict[str, Any]] = field(default_factory=list)
    cache: bool = True
    description: str = ""
    location: Location | None = None
    after: list[str] = field(default_factory=list)  # order-only dependencies (no data passed)
    resources: Resources | None = None  # where it runs, not what it computes: not fingerprinted
    retries: int = 0  # re-runs of a failed attempt, for transient failures only
    retry_delay: float = 0.0  # seconds between attempts

    @property
    def main_output(self) -> str:
        return next(iter(self.outputs))


@dataclass(frozen=True)
class ExecutorConfig:
    kind: str = "local"
    workers: int = 1
    pool: str = "thread"  # thread | process
    address: str | None = (
        None  # executor: ray — the cluster (auto, ray://host:port, host:port, local)
    )


class Pipeline:
    """A validated DAG of stages."""

    def __init__(
        self,
        name: str,
        stages: Sequence[StageNode],
        *,
        project_dir: Path | None = None,
        spec_path: Path | None = None,
        executor: ExecutorConfig | None = None,
        allow_outside_project: bool = False,
    ) -> None:
        self.name = name
        self.project_dir = (project_dir or Path.cwd()).absolute()
        self.spec_path = spec_path
        self.executor = executor or ExecutorConfig()
        self.allow_outside_project = allow_outside_project
        self.stages: dict[str, StageNode] = {}
        issues: list[SpecIssue] = []
        where = str(spec_path) if spec_path else f"pipeline '{name}'"
        for node in stages:
            loc = node.location or Location(where)
            if node.name in self.stages:
                issues.append(SpecIssue(loc, f"duplicate stage name '{node.name}'"))
                continue
            self.stages[node.name] = node
        for node in self.stages.values():
            loc = node.location or Location(where)
            for name in node.after:
                if name not in self.stages:
                    issues.append(
                        SpecIssue(
                            loc,
                            f"stage '{node.name}': after '{name}' names no stage"
                            f"{did_you_mean(name, self.stages)}",
                        )
                    )
            for local, ref in node.inputs.items():
                upstream = self.stages.get(ref.stage)
                if upstream is None:
                    issues.append(
                        SpecIssue(
                            loc,
                            f"stage '{node.name}': input '{ref}' names no stage"
                            f"{did_you_mean(ref.stage, self.stages)}",
                        )
                    )
                elif ref.output is not None and ref.output not in upstream.outputs:
                    issues.append(
                        SpecIssue(
                            loc,
                            f"stage '{node.name}': input '{ref}': stage '{ref.stage}' has no output "
                            f"'{ref.output}' (outputs: {', '.join(upstream.outputs)})"
                            f"{did_you_mean(ref.output, upstream.outputs)}",
                        )
                    )
                elif ref.stage == node.name:
                    issues.append(
                        SpecIssue(loc, f"stage '{node.name}' uses its own output '{local}'")
                    )
        if not issues:
            sorter = graphlib.TopologicalSorter(self.dependencies())
            try:
                self._order = list(sorter.static_order())
            except graphlib.CycleError as exc:
                cycle = list(exc.args[1])
                issues.append(
                    SpecIssue(Location(where), "the stages form a cycle: " + " -> ".join(cycle))
                )
        if issues:
            raise SpecError(issues, source=where)
        # a stable order: declaration order among stages whose inputs are ready
        decl = {n: i for i, n in enumerate(self.stages)}
        self._order = self._stable_order(decl)

    def _stable_order(self, decl: Mapping[str, int]) -> list[str]:
        sorter = graphlib.TopologicalSorter(self.dependencies())
        sorter.prepare()
        order: list[str] = []
        while sorter.is_active():
            ready = sorted(sorter.get_ready(), key=decl.__getitem__)
            order.extend(ready)
            sorter.done(*ready)
        return order

    def dependencies(self) -> dict[str, set[str]]:
        """Stage name -> names of the stages it reads or must run after (a fresh copy)."""
        return {
            n.name: {r.stage for r in n.inputs.values()} | set(n.after)
            for n in self.stages.values()
        }

    def upstream_of(self, names: Iterable[str]) -> set[str]:
        """Everything the given stages depend on, directly or not (one traversal)."""
        deps = self.dependencies()
        seen: set[str] = set()
        todo = [d for n in names for d in deps[n]]
        while todo:
            s = todo.pop()
            if s not in seen:
                seen.add(s)
                todo.extend(deps[s])
        return seen

    @property
    def order(self) -> list[str]:
        """Stage names in a topological order (declaration order where free)."""
        return list(self._order)

    def upstream(self, name: str) -> set[str]:
        return self.upstream_of([name])

    def downstream(self, name: str) -> set[str]:
        children: dict[str, set[str]] = {n: set() for n in self.stages}
        for n, ds in self.dependencies().items():
            for d in ds:
                children[d].add(n)
        seen: set[str] = set()
        todo = list(children[name])
        while todo:
            s = todo.pop()
            if s not in seen:
                seen.add(s)
                todo.extend(children[s])
        return seen

    def _check_names(self, names: Iterable[str], option: str) -> None:
        for n in names:
            if n not in self.stages:
                msg = f"{option} {n}: no stage named '{n}'{did_you_mean(n, self.stages)}"
                raise UsageError(msg, hint=f"Stages: {', '.join(self.stages)}")

    def select(
        self,
        *,
        only: Sequence[str] = (),
        from_: Sequence[str] = (),
        to: Sequence[str] = (),
    ) -> set[str]:
        """Names of the stages to consider for execution; the rest use saved artifacts."""
        self._check_names(only, "--only")
        self._check_names(from_, "--from")
        self._check_names(to, "--to")
        selected = set(self.stages)
        if from_:
            start: set[str] = set()
            for f in from_:
                start |= {f} | self.downstream(f)
            selected &= start
        if to:
            selected &= set(to) | self.upstream_of(to)
        if only:
            selected &= set(only)
        return selected

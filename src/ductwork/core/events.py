"""Events a run emits: plain dataclasses that the console and JSON renderers both read.

The JSON form of each event is part of the documented, versioned schema
(``ductwork.run/v1``, see ``docs/json-output.md`` and ``schemas/run-events.v1.json``).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

SCHEMA = "ductwork.run/v1"

StageStatus = Literal["ok", "cached", "failed", "skipped", "saved", "stale", "planned"]


@dataclass
class Event:
    event: str = field(init=False, default="")
    ts: float = field(init=False, default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RunStarted(Event):
    run_id: str
    pipeline: str
    stages: list[str]
    selected: list[str]
    executor: str
    workers: int
    dry_run: bool = False
    inputs: dict[str, list[str]] = field(default_factory=dict)  # the DAG: stage -> its inputs

    def __post_init__(self) -> None:
        self.event = "run_started"


@dataclass
class StageStarted(Event):
    run_id: str
    stage: str
    kind: str
    fingerprint: str
    reason: str = ""

    def __post_init__(self) -> None:
        self.event = "stage_started"


@dataclass
class StageProgress(Event):
    run_id: str
    stage: str
    done: float
    total: float | None
    unit: str

    def __post_init__(self) -> None:
        self.event = "stage_progress"


@dataclass
class StageFinished(Event):
    run_id: str
    stage: str
    kind: str
    status: StageStatus
    fingerprint: str | None
    duration_s: float
    rows_in: int | None
    rows_out: int | None
    outputs: dict[str, dict[str, Any]]
    metrics: dict[str, Any]
    reason: str = ""
    error: dict[str, Any] | None = None
    preview: dict[str, Any] | None = None  # dry runs only: the kind's preview (prompts, cost)

    def __post_init__(self) -> None:
        self.event = "stage_finished"


@dataclass
class RunFinished(Event):
    """The final summary object (the last JSON line of a run)."""

    schema: str
    run_id: str
    pipeline: str
    status: Literal["ok", "failed", "planned"]
    exit_code: int
    duration_s: float
    counts: dict[str, int]
    stages: list[dict[str, Any]]
    error: dict[str, Any] | None = None
    resume: str | None = None
    # what the stages that ran spent: llm_requests, llm_cache_hits, llm_input_tokens,
    # llm_output_tokens, llm_cost_usd ({} when nothing was spent)
    usage: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.event = "run_finished"

"""JSON for machines: one JSON object per line per event; the last line is the run summary.

The schema is versioned (``ductwork.run/v1``) and published as
``ductwork/schemas/run-events.v1.json``; see docs/json-output.md.
"""

from __future__ import annotations

import json
import sys
from typing import IO, Any

from ductwork.core.events import Event, StageProgress


class JsonRenderer:
    def __init__(self, stream: IO[str] | None = None, *, progress: bool = True) -> None:
        self.stream = stream or sys.stdout
        self.progress = progress

    def __call__(self, event: Event) -> None:
        if isinstance(event, StageProgress) and not self.progress:
            return
        self.write(event.to_dict())

    def write(self, obj: dict[str, Any]) -> None:
        self.stream.write(json.dumps(obj, default=str, separators=(",", ":")) + "\n")
        self.stream.flush()

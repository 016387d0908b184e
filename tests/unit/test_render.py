from __future__ import annotations

import io
import json

from rich.console import Console

from ductwork.core.events import RunFinished, RunStarted, StageFinished, StageProgress, StageStarted
from ductwork.render.console import ConsoleRenderer
from ductwork.render.jsonl import JsonRenderer


def events() -> list[object]:
    fin = StageFinished(
        run_id="r",
        stage="checked",
        kind="validate",
        status="failed",
        fingerprint="f",
        duration_s=0.25,
        rows_in=10,
        rows_out=None,
        outputs={},
        metrics={"rows_quarantined": 3, "unexpected_per_check": {"x:not_null": 3}},
        error={
            "type": "DataError",
            "message": "stage 'checked': column 'x' not found",
            "hint": "Columns: y",
            "exit_code": 2,
        },
    )
    ok = StageFinished(
        run_id="r",
        stage="src",
        kind="extract",
        status="ok",
        fingerprint="g",
        duration_s=1.5,
        rows_in=None,
        rows_out=1234,
        outputs={},
        metrics={},
        reason="never run",
    )
    return [
        RunStarted(
            run_id="r",
            pipeline="p",
            stages=["src", "checked"],
            selected=["src", "checked"],
            executor="local/thread",
            workers=2,
        ),
        StageStarted(run_id="r", stage="src", kind="extract", fingerprint="g", reason="never run"),
        StageProgress(run_id="r", stage="src", done=500, total=1000, unit="rows"),
        ok,
        fin,
        RunFinished(
            schema="ductwork.run/v1",
            run_id="r",
            pipeline="p",
            status="failed",
            exit_code=2,
            duration_s=1.8,
            counts={"ok": 1, "failed": 1},
            stages=[
                {"stage": "src", "status": "ok", "metrics": {}},
                {"stage": "checked", "status": "failed", "metrics": fin.metrics},
            ],
            error=fin.error,
            resume="ductwork run pipeline.yaml",
        ),
    ]


def test_console_renderer_summarises_a_failed_run() -> None:
    console = Console(record=True, width=140, force_terminal=False)
    render = ConsoleRenderer(console, live=False)
    for e in events():
        render(e)  # type: ignore[arg-type]
    text = console.export_text()
    assert "Running p · run r · 2/2 stages selected" in text
    assert "1,234" in text
    assert "Failed in 1.80 s: 1 failed, 1 ok" in text
    assert "error: stage 'checked': column 'x' not found" in text
    assert "Columns: y" in text
    assert "unexpected per check: x:not_null 3" in text
    assert "resumes from the failed stage" in text


def test_json_renderer_writes_one_object_per_line() -> None:
    out = io.StringIO()
    render = JsonRenderer(out)
    for e in events():
        render(e)  # type: ignore[arg-type]
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["event"] for line in lines] == [
        "run_started",
        "stage_started",
        "stage_progress",
        "stage_finished",
        "stage_finished",
        "run_finished",
    ]
    assert lines[-1]["exit_code"] == 2

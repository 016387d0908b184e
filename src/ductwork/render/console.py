"""Rich output for people: a live table of stages while a run goes, then a summary.

Only this package imports rich. ``NO_COLOR`` is respected (rich reads it).
"""

from __future__ import annotations

import os
import time
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ductwork.core.events import (
    Event,
    RunFinished,
    RunStarted,
    StageFinished,
    StageProgress,
    StageStarted,
)

STYLE = {
    "ok": "green",
    "cached": "cyan",
    "saved": "blue",
    "failed": "bold red",
    "skipped": "yellow",
    "stale": "magenta",
    "running": "bold",
    "pending": "dim",
}
SYMBOL = {
    "ok": "✓",
    "cached": "↺",
    "saved": "≡",
    "failed": "✗",
    "skipped": "–",
    "stale": "•",
    "running": "…",
    "pending": " ",
}


def _fmt_rows(n: int | None) -> str:
    return "" if n is None else f"{n:,}"


def _fmt_s(s: float | None) -> str:
    if s is None:
        return ""
    return f"{s * 1000:.0f} ms" if s < 1 else f"{s:.2f} s"


def _fmt_bytes(n: int | None) -> str:
    if n is None:
        return ""
    f = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if f < 1024 or unit == "GiB":
            return f"{f:.0f} {unit}" if unit == "B" else f"{f:.1f} {unit}"
        f /= 1024
    return f"{n} B"


def _fmt_usage(usage: dict[str, float]) -> str:
    parts = []
    if "llm_requests" in usage:
        parts.append(f"{usage['llm_requests']:,.0f} LLM requests")
    if "llm_cache_hits" in usage:
        parts.append(f"{usage['llm_cache_hits']:,.0f} cache hits")
    tokens_in, tokens_out = usage.get("llm_input_tokens"), usage.get("llm_output_tokens")
    if tokens_in is not None or tokens_out is not None:
        parts.append(f"{tokens_in or 0:,.0f} input + {tokens_out or 0:,.0f} output tokens")
    if "llm_cost_usd" in usage:
        parts.append(f"~${usage['llm_cost_usd']:.4f}")
    return ", ".join(parts)


class ConsoleRenderer:
    """Consumes run events and draws them."""

    def __init__(
        self, console: Console | None = None, *, live: bool | None = None, verbose: bool = False
    ) -> None:
        if console is None:
            console = Console(highlight=False)
            if not console.is_terminal and "COLUMNS" not in os.environ:
                console = Console(highlight=False, width=120)  # logs: don't wrap at 80
        self.console = console
        self.live_enabled = self.console.is_terminal if live is None else live
        self.verbose = verbose
        self.rows: dict[str, dict[str, Any]] = {}
        self.live: Live | None = None
        self.dry_run = False
        self.started = time.monotonic()

    def __call__(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self.dry_run = event.dry_run
            for s in event.stages:
                self.rows[s] = {
                    "status": "pending",
                    "kind": "",
                    "reason": "",
                    "progress": "",
                    "inputs": ", ".join(event.inputs.get(s, [])),
                }
            verb = "Planning" if event.dry_run else "Running"
            where = (
                "nothing runs"
                if event.dry_run
                else f"executor {event.executor} ({event.workers} worker{'s' if event.workers != 1 else ''})"
            )
            self.console.print(
                f"[bold]{verb}[/bold] {event.pipeline} · run {event.run_id} · "
                f"{len(event.selected)}/{len(event.stages)} stages selected · {where}"
            )
            if self.live_enabled:
                self.live = Live(
                    _LiveTable(self), console=self.console, refresh_per_second=8, transient=True
                )
                self.live.start()
        elif isinstance(event, StageStarted):
            row = self.rows.setdefault(event.stage, {})
            row.update(status="running", kind=event.kind, reason=event.reason, t0=time.monotonic())
        elif isinstance(event, StageProgress):
            row = self.rows.setdefault(event.stage, {})
            total = f"/{event.total:,.0f}" if event.total else ""
            pct = f" {100 * event.done / event.total:.0f}%" if event.total else ""
            if event.unit.startswith("waiting"):  # no count: another runner holds the stage
                row["progress"] = event.unit
            else:
                row["progress"] = f"{event.done:,.0f}{total} {event.unit}{pct}"
        elif isinstance(event, StageFinished):
            row = self.rows.setdefault(event.stage, {})
            row.update(
                status=event.status,
                kind=event.kind,
                reason=event.reason,
                duration=event.duration_s,
                rows_in=event.rows_in,
                rows_out=event.rows_out,
                metrics=event.metrics,
                error=event.error,
                bytes=sum(o.get("bytes") or 0 for o in event.outputs.values())
                if event.outputs
                else None,
                progress="",
            )
            if not self.live_enabled and self.verbose:
                self.console.print(self._line(event.stage, row))
        elif isinstance(event, RunFinished):
            self._finish(event)
            return
        if self.live is not None:
            self.live.refresh()

    def _line(self, name: str, row: dict[str, Any]) -> Text:
        st = row.get("status", "")
        return Text.assemble(
            (f"{SYMBOL.get(st, '?')} {st:<7} ", STYLE.get(st, "")),
            (f"{name} ", "bold"),
            (f"{_fmt_s(row.get('duration'))} {_fmt_rows(row.get('rows_out'))} rows", "dim"),
        )

    def _table(self) -> Table:
        t = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
        t.add_column("", width=1)
        t.add_column("stage")
        if self.dry_run:
            t.add_column("← inputs", style="dim", overflow="fold", max_width=30)
        t.add_column("kind", style="dim")
        t.add_column("status")
        t.add_column("time", justify="right")
        t.add_column("rows in", justify="right")
        t.add_column("rows out", justify="right")
        t.add_column("note", overflow="fold", max_width=60)
        now = time.monotonic()
        for name, row in self.rows.items():
            st = row.get("status", "pending")
            dur = row.get("duration")
            if st == "running" and "t0" in row:
                dur = now - row["t0"]
            note = row.get("progress") or row.get("reason") or ""
            if st == "ok" and row.get("reason") in ("never run",):
                note = ""
            if st == "failed" and row.get("error"):
                note = row["error"].get("message", "").split("\n")[0]
            cells: list[Any] = [Text(SYMBOL.get(st, "?"), style=STYLE.get(st, "")), name]
            if self.dry_run:
                cells.append(row.get("inputs", ""))
            t.add_row(
                *cells,
                row.get("kind", ""),
                Text(st, style=STYLE.get(st, "")),
                _fmt_s(dur) if st not in ("pending", "stale") else "",
                _fmt_rows(row.get("rows_in")),
                _fmt_rows(row.get("rows_out")),
                Text(note, style="dim" if st != "failed" else "red"),
            )
        return t

    def _finish(self, event: RunFinished) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None
        self.console.print(self._table())
        parts = [f"{n} {s}" for s, n in sorted(event.counts.items())]
        style = (
            "green" if event.status == "ok" else ("magenta" if event.status == "planned" else "red")
        )
        head = {"ok": "Done", "failed": "Failed", "planned": "Plan"}[event.status]
        self.console.print(
            Text.assemble(
                (f"{head} ", f"bold {style}"), f"in {_fmt_s(event.duration_s)}: ", ", ".join(parts)
            )
        )
        metric_lines = self._metric_lines(event.stages)
        if metric_lines:
            self.console.print(Group(*metric_lines))
        if event.usage:
            self.console.print(Text("Spent: " + _fmt_usage(event.usage), style="bold"))
        for s in event.stages:
            preview = s.get("preview")
            if preview:
                text = preview.get("text") or preview.get("error") or ""
                self.console.print(Text(f"Preview of {s['stage']}:", style="bold magenta"))
                self.console.print(Text(str(text)), soft_wrap=True)
        if event.error:
            err = event.error
            self.console.print(Text(f"error: {err.get('message')}", style="red"), soft_wrap=True)
            if err.get("hint"):
                self.console.print(Text(str(err["hint"]), style="yellow"), soft_wrap=True)
        kept = any(st.get("status") in ("ok", "cached", "saved") for st in event.stages)
        if event.resume and kept:
            self.console.print(
                Text(
                    f"Earlier stages' artifacts are kept; after a fix, `{event.resume}` resumes from the failed stage.",
                    style="dim",
                )
            )

    def _metric_lines(self, stages: list[dict[str, Any]]) -> list[Text]:
        lines = []
        for s in stages:
            m = s.get("metrics") or {}
            if not m or s.get("status") not in ("ok", "cached", "saved", "failed"):
                continue
            shown = []
            for k, v in m.items():
                if isinstance(v, dict | list):
                    if k in ("unexpected_per_check", "quarantined_by_check") and isinstance(
                        v, dict
                    ):
                        inner = ", ".join(
                            f"{ck} {cv:,}" if isinstance(cv, int) else f"{ck} {cv}"
                            for ck, cv in list(v.items())[:8]
                        )
                        shown.append(f"{k.replace('_', ' ')}: {inner}")
                    continue
                shown.append(
                    f"{k} {v:,}" if isinstance(v, int) and not isinstance(v, bool) else f"{k} {v}"
                )
            if shown:
                lines.append(
                    Text.assemble((f"  {s['stage']}: ", "bold"), ("; ".join(shown)[:400], ""))
                )
        return lines


class _LiveTable:
    """Re-renders on every refresh, so running stages show a ticking time."""

    def __init__(self, renderer: ConsoleRenderer) -> None:
        self.renderer = renderer

    def __rich__(self) -> Table:
        return self.renderer._table()


def print_error(message: str, hint: str | None = None, *, console: Console | None = None) -> None:
    c = console or Console(stderr=True, highlight=False)
    # never wrapped: `file:line:col: message` lines must stay whole for editors and grep
    c.print(Text(f"error: {message}", style="bold red"), soft_wrap=True)
    if hint:
        c.print(Text(hint, style="yellow"), soft_wrap=True)

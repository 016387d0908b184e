"""The ``report`` stage kind: a model's structured analysis as a JSON and a Markdown report.

The end of the profile → compress → generate → report shape. The input is a generate stage's
``llm_validated`` table holding ONE row (one analysis); its declared answer fields become
headed sections (text as paragraphs, lists as bullet lists). Optional inputs add what a reader
needs to judge the answer: the profiled table's size (``profile``), what the model was shown
and what was left out to fit its budget (``compressed``), and the model and tokens spent
(``usage``).

The report holds no wall-clock time and nothing else that changes between runs with the same
inputs, so it is byte-identical on a re-run and its artifact is reused from the cache. With
``dir`` it is also written to ``report.json`` and ``report.md`` in the project (atomically,
like a load).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, field_validator

from ductwork.core.contract import (
    InputArtifact,
    Inputs,
    Output,
    StageContext,
    StageKind,
    StageParams,
)
from ductwork.core.fingerprint import sha256_text
from ductwork.errors import DataError, did_you_mean

_JSON_INPUTS = ("profile", "compressed", "usage")
_HINT = "Name the inputs: inputs: {answer: analyse, profile: prof, compressed: comp, usage: analyse.usage}"


class ReportParams(StageParams):
    title: str = Field(default="Analysis", min_length=1, description="The report's heading.")
    dir: str | None = Field(
        default=None,
        description="Also write report.json and report.md into this project directory.",
    )
    sections: dict[str, str] | list[str] | None = Field(
        default=None,
        description="Answer fields to show, in order: a list of fields, or field -> heading. "
        "Default: every answer field.",
    )
    skip: list[str] = Field(
        default_factory=list,
        description="Columns of the answer table that are not answer fields (input columns "
        "generate kept); left out of the default sections.",
    )

    @field_validator("sections")
    @classmethod
    def _not_empty(cls, value: dict[str, str] | list[str] | None) -> Any:
        if value is not None and len(value) == 0:
            msg = "sections is empty: leave it out to show every answer field"
            raise ValueError(msg)
        if isinstance(value, list) and len(set(value)) != len(value):
            msg = "sections lists a field twice"
            raise ValueError(msg)
        return value


class Report(StageKind[ReportParams]):
    """A structured LLM answer as report.json + report.md, with the source stats and the cost."""

    name = "report"
    version = "1"
    Params = ReportParams
    summary = "a generate stage's answer as a JSON + Markdown report (with source stats, usage)"
    outputs: ClassVar[dict[str, Output]] = {
        "report": Output("json", description="title, sections, answer, source, model, usage"),
        "markdown": Output("text", description="the same as a Markdown document"),
    }
    min_inputs = 1
    max_inputs = 4

    def source_stamp(self, params: ReportParams, ctx: StageContext) -> str | None:
        # like a load: writing to another directory is a different stage run
        return "" if params.dir is None else sha256_text(f"report-dir|{params.dir}")

    def run(self, params: ReportParams, inputs: Inputs, ctx: StageContext) -> dict[str, Any]:
        answer_art, extra = _pick_inputs(inputs, ctx.stage)
        rows = answer_art.frame()
        if rows.height != 1:
            msg = (
                f"stage '{ctx.stage}': the answer input '{answer_art.name}' has {rows.height} "
                "rows; a report is of one analysis (one row)"
            )
            hint = (
                "generate put the answer in quarantine: see its quarantine output and llm_raw"
                if rows.height == 0
                else "Give generate one input row (e.g. compress's prompt output)."
            )
            raise DataError(msg, hint=hint)
        row = rows.row(0, named=True)
        usage = extra.get("usage")
        fields = _answer_fields(list(row), usage, params, ctx.stage)
        sections = [
            {"field": f, "title": title, "value": _plain(row[f])} for f, title in fields.items()
        ]
        report: dict[str, Any] = {
            "title": params.title,
            "sections": sections,
            "answer": {s["field"]: s["value"] for s in sections},
        }
        source = _source(extra.get("profile"), extra.get("compressed"))
        if source:
            report["source"] = source
        report.update(_usage(usage, row))
        markdown = to_markdown(report)
        if params.dir is not None:
            target = ctx.resolve_path(params.dir, what="report dir")
            target.mkdir(parents=True, exist_ok=True)
            _write_atomic(target / "report.json", _json_text(report))
            _write_atomic(target / "report.md", markdown)
            report_files = {"dir": params.dir, "files": ["report.json", "report.md"]}
            ctx.log(f"report: wrote {params.dir}/report.json and report.md")
        else:
            report_files = None
        ctx.metric(sections=len(sections))
        out = dict(report)
        if report_files is not None:
            out["written"] = report_files
        return {"report": out, "markdown": markdown}


# ------------------------------------------------------------------------------- inputs
def _pick_inputs(inputs: Inputs, stage: str) -> tuple[InputArtifact, dict[str, Any]]:
    """The answer table and the optional JSON inputs, by name or else by their content."""
    tables = [a for a in inputs.values() if a.info.type == "table"]
    answer = inputs["answer"] if "answer" in inputs else (tables[0] if len(tables) == 1 else None)
    if answer is None or answer.info.type != "table":
        msg = (
            f"stage '{stage}': report needs a generate stage's llm_validated table (input 'answer')"
        )
        raise DataError(msg, hint=_HINT)
    extra: dict[str, Any] = {}
    for name, art in inputs.items():
        if art is answer:
            continue
        if art.info.type != "json":
            msg = f"stage '{stage}': unexpected input '{name}' ({art.info.type} artifact)"
            raise DataError(msg, hint=_HINT)
        value = art.json()
        role = name if name in _JSON_INPUTS else _guess(value)
        if role is None:
            msg = (
                f"stage '{stage}': cannot tell what input '{name}' is"
                f"{did_you_mean(name, _JSON_INPUTS)}; report takes profile, compressed and usage"
            )
            raise DataError(msg, hint=_HINT)
        if role in extra:
            msg = f"stage '{stage}': two inputs are a {role} (the second is '{name}')"
            raise DataError(msg, hint=_HINT)
        if not isinstance(value, dict):
            msg = f"stage '{stage}': input '{name}' is not a JSON object"
            raise DataError(msg, hint=_HINT)
        extra[role] = value
    return answer, extra


def _guess(value: Any) -> str | None:
    if not isinstance(value, dict):
        return None
    if "text" in value and "budget_tokens" in value and "kept" in value:
        return "compressed"
    if isinstance(value.get("columns"), list) and "rows" in value:
        return "profile"
    if "model" in value and any("tokens" in k for k in value):
        return "usage"
    return None


def _answer_fields(
    columns: list[str], usage: dict[str, Any] | None, params: ReportParams, stage: str
) -> dict[str, str]:
    """field -> heading: the ``sections`` param, or every answer field in order."""
    if params.sections is not None:
        wanted = (
            dict(params.sections)
            if isinstance(params.sections, dict)
            else {f: _heading(f) for f in params.sections}
        )
        for f in wanted:
            if f not in columns:
                msg = (
                    f"stage '{stage}': section field '{f}' is not in the answer"
                    f"{did_you_mean(f, columns)}"
                )
                raise DataError(msg, hint=f"Answer columns: {', '.join(columns)}")
        return wanted
    # generate's own columns start with '_' (_row, _model, _input_tokens, ...)
    names = [c for c in columns if c not in params.skip and not c.startswith("_")]
    if not names:
        msg = f"stage '{stage}': the answer has no answer fields (columns: {', '.join(columns)})"
        raise DataError(msg, hint="Is the input a generate stage's llm_validated output?")
    return {f: _heading(f) for f in names}


def _heading(field: str) -> str:
    words = field.replace("_", " ").strip()
    return words[:1].upper() + words[1:]


# ------------------------------------------------------------------------------- content
def _plain(value: Any) -> Any:
    """A cell as JSON data (dates and other objects as text)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)


def _source(profile: dict[str, Any] | None, compressed: dict[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if profile is not None:
        out["rows"] = profile.get("rows")
        out["columns"] = len(profile.get("columns") or [])
    if compressed is not None:
        table = compressed.get("table") or {}
        out.setdefault("rows", table.get("rows"))
        out.setdefault("columns", table.get("columns"))
        kept = compressed.get("kept") or {}
        out["shown_to_model"] = {
            "columns": len(kept.get("columns") or []),
            "columns_with_statistics": len(kept.get("details") or []),
            "sample_rows": kept.get("sample_rows", 0),
            "estimated_tokens": compressed.get("estimated_tokens"),
            "budget_tokens": compressed.get("budget_tokens"),
        }
        out["left_out"] = compressed.get("dropped") or []
    return out


_USAGE_FIGURES = ("requests", "cache_hits", "input_tokens", "output_tokens", "cost_usd")


def _usage(usage: dict[str, Any] | None, row: Mapping[str, Any]) -> dict[str, Any]:
    """The model and the tokens spent: generate's usage output, else the answer row's own."""
    out: dict[str, Any] = {}
    if usage is not None:
        if usage.get("model") is not None:
            out["model"] = usage["model"]
        figures = {
            k: usage[k]
            for k in _USAGE_FIGURES
            if isinstance(usage.get(k), int | float) and not isinstance(usage.get(k), bool)
        }
    else:
        if row.get("_model") is not None:
            out["model"] = row["_model"]
        figures = {
            k: row[f"_{k}"]
            for k in ("input_tokens", "output_tokens")
            if isinstance(row.get(f"_{k}"), int)
        }
    if figures:
        out["usage"] = figures
    return out


def _json_text(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# ------------------------------------------------------------------------------- Markdown
def _md_value(value: Any) -> list[str]:
    if value is None or value == "" or value == []:
        return ["_(none)_"]
    if isinstance(value, list):
        return [f"- {_inline(v)}" for v in value]
    if isinstance(value, dict):
        return [f"- **{k}:** {_inline(v)}" for k, v in value.items()]
    if isinstance(value, bool):
        return [str(value).lower()]
    return [str(value).strip()]


def _inline(value: Any) -> str:
    if isinstance(value, dict):
        return "; ".join(f"{k}: {_inline(v)}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(_inline(v) for v in value)
    if isinstance(value, bool):
        return str(value).lower()
    return " ".join(str(value).split())


def _count(n: Any) -> str:
    return f"{n:,}" if isinstance(n, int) and not isinstance(n, bool) else str(n)


def to_markdown(report: Mapping[str, Any]) -> str:
    """The report as Markdown: the title, the source line, a section per field, the cost."""
    lines = [f"# {report['title']}", ""]
    source = report.get("source")
    if source:
        text = (
            f"Source: {_count(source.get('rows'))} rows, {_count(source.get('columns'))} columns."
        )
        shown = source.get("shown_to_model")
        if shown:
            text += (
                f" The model was shown {shown['columns']} columns "
                f"({shown['columns_with_statistics']} with statistics) and "
                f"{shown['sample_rows']} sample rows, {_count(shown['estimated_tokens'])} of a "
                f"{_count(shown['budget_tokens'])}-token budget."
            )
        lines += [text, ""]
        for part in source.get("left_out") or []:
            what = part.get("part", "?")
            detail = (
                f"{part['count']} sample rows"
                if "count" in part
                else ", ".join(part.get("columns") or [])
            )
            label = {"details": "statistics of", "columns": "columns"}.get(what, "")
            lines.append(f"- Left out: {label + ' ' if label else ''}{detail}")
        if source.get("left_out"):
            lines.append("")
    for section in report["sections"]:
        lines += [f"## {section['title']}", "", *_md_value(section["value"]), ""]
    footer = []
    if report.get("model"):
        footer.append(f"Model: {report['model']}")
    usage = report.get("usage") or {}
    if usage:
        footer.append(", ".join(f"{k.replace('_', ' ')} {_count(v)}" for k, v in usage.items()))
    if footer:
        lines += ["---", "", ". ".join(footer) + ".", ""]
    return "\n".join(lines).rstrip("\n") + "\n"

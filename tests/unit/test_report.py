"""The report stage kind: a generate stage's one-row answer as report.json and report.md."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from pydantic import ValidationError

from ductwork.errors import DataError
from ductwork.stages.report import Report
from ductwork.testing import StageOutcome, json_input, run_stage

FINDINGS = [
    "Departure delays are skewed: the mean is 12.6 minutes, the median -2.",
    "EWR is busiest.",
]
ISSUES = ["dep_delay is null for 2.5% of rows (cancelled flights)."]
STEPS = ["Model delays by hour of day.", "Join the weather table."]


def answer(rows: int = 1) -> pl.DataFrame:
    """What generate's llm_validated holds for a json input: _row, the answer fields, meta."""
    return pl.DataFrame(
        {
            "_row": list(range(rows)),
            "summary": ["336,776 flights from New York in 2013; delays are long-tailed."] * rows,
            "key_findings": [FINDINGS] * rows,
            "data_quality_issues": [ISSUES] * rows,
            "next_steps": [STEPS] * rows,
            "_model": ["stand-in"] * rows,
            "_input_tokens": [1600] * rows,
            "_output_tokens": [230] * rows,
        }
    )


PROFILE = {"rows": 336_776, "columns": [{"name": f"c{i}"} for i in range(19)], "top_k": 5}
COMPRESSED = {
    "text": "Table: ...",
    "estimated_tokens": 1480,
    "budget_tokens": 1500,
    "format": "markdown",
    "table": {"rows": 336_776, "columns": 19},
    "kept": {"columns": ["dep_delay", "origin"], "details": ["dep_delay"], "sample_rows": 3},
    "dropped": [
        {"part": "sample_rows", "count": 17, "reason": "over the budget"},
        {"part": "columns", "columns": ["minute", "hour"], "reason": "over the budget"},
    ],
}
USAGE = {  # the keys of generate's usage output that a report shows, and some it does not
    "provider": "anthropic",
    "model": "claude-haiku-4-5",
    "requests": 1,
    "calls": 1,
    "cache_hits": 0,
    "retries": 0,
    "input_tokens": 1612,
    "output_tokens": 240,
    "cost_usd": 0.0028,
    "price": {"input_per_mtok": 1.0, "output_per_mtok": 5.0},
    "budget_stopped": False,
}
FIELDS = ["summary", "key_findings", "data_quality_issues", "next_steps"]


def report(
    tmp_path: Path,
    frame: pl.DataFrame | None = None,
    *,
    extra: dict[str, Any] | None = None,
    **params: Any,
) -> StageOutcome:
    inputs: dict[str, Any] = {"answer": answer() if frame is None else frame}
    for name, value in (extra or {}).items():
        inputs[name] = json_input(name, value, tmp_path / "in")
    return run_stage("report", params, inputs, tmp_path, stage="report")


def test_every_answer_field_becomes_a_section(tmp_path: Path) -> None:
    out = report(
        tmp_path,
        extra={"profile": PROFILE, "compressed": COMPRESSED, "usage": USAGE},
        title="Flights 2013",
    )
    doc = out.values["report"]
    assert [s["field"] for s in doc["sections"]] == FIELDS
    assert [s["title"] for s in doc["sections"]] == [
        "Summary",
        "Key findings",
        "Data quality issues",
        "Next steps",
    ]
    assert doc["answer"]["key_findings"] == FINDINGS
    assert doc["source"]["rows"] == 336_776 and doc["source"]["columns"] == 19
    assert doc["source"]["shown_to_model"] == {
        "columns": 2,
        "columns_with_statistics": 1,
        "sample_rows": 3,
        "estimated_tokens": 1480,
        "budget_tokens": 1500,
    }
    assert doc["model"] == "claude-haiku-4-5"
    assert doc["usage"] == {
        "requests": 1,
        "cache_hits": 0,
        "input_tokens": 1612,
        "output_tokens": 240,
        "cost_usd": 0.0028,
    }
    assert "generated_at" not in json.dumps(doc)
    md = out.values["markdown"]
    assert md.startswith(
        "# Flights 2013\n\nSource: 336,776 rows, 19 columns. The model was shown 2 columns "
        "(1 with statistics) and 3 sample rows, 1,480 of a 1,500-token budget.\n\n"
        "- Left out: 17 sample rows\n- Left out: columns minute, hour\n\n## Summary\n\n"
        "336,776 flights from New York in 2013; delays are long-tailed.\n\n## Key findings\n\n"
        f"- {FINDINGS[0]}\n- {FINDINGS[1]}\n\n## Data quality issues\n\n- {ISSUES[0]}\n"
    )
    assert md.endswith(
        "---\n\nModel: claude-haiku-4-5. requests 1, cache hits 0, input tokens 1,612, "
        "output tokens 240, cost usd 0.0028.\n"
    )
    assert out.metrics == {"sections": 4}


def test_sections_choose_and_title_fields(tmp_path: Path) -> None:
    out = report(tmp_path, sections={"next_steps": "What to do", "summary": "In short"})
    doc = out.values["report"]
    assert [(s["field"], s["title"]) for s in doc["sections"]] == [
        ("next_steps", "What to do"),
        ("summary", "In short"),
    ]
    assert out.values["markdown"].startswith(
        f"# Analysis\n\n## What to do\n\n- {STEPS[0]}\n- {STEPS[1]}\n\n## In short\n\n"
    )
    listed = report(tmp_path / "l", sections=["key_findings"]).values["report"]
    assert listed["sections"][0]["title"] == "Key findings"
    assert "source" not in listed  # no profile or compressed input


def test_without_usage_the_row_says_the_model_and_tokens(tmp_path: Path) -> None:
    doc = report(tmp_path).values["report"]
    assert [s["field"] for s in doc["sections"]] == FIELDS  # not _row, _model, ...
    assert doc["model"] == "stand-in"
    assert doc["usage"] == {"input_tokens": 1600, "output_tokens": 230}


def test_skip_leaves_kept_input_columns_out(tmp_path: Path) -> None:
    kept = answer().insert_column(1, pl.Series("text", ["Table: 336776 rows ..."]))
    assert [s["field"] for s in report(tmp_path, kept).values["report"]["sections"]] == [
        "text",
        *FIELDS,
    ]
    out = report(tmp_path / "s", kept, skip=["text"])
    assert [s["field"] for s in out.values["report"]["sections"]] == FIELDS


def test_dir_writes_report_files_in_the_project(tmp_path: Path) -> None:
    out = report(tmp_path, extra={"usage": USAGE}, dir="out/analysis")
    folder = tmp_path / "out" / "analysis"
    assert sorted(p.name for p in folder.iterdir()) == ["report.json", "report.md"]
    written = json.loads((folder / "report.json").read_text())
    doc = out.values["report"]
    assert doc["written"] == {"dir": "out/analysis", "files": ["report.json", "report.md"]}
    assert written == {k: v for k, v in doc.items() if k != "written"}
    assert (folder / "report.md").read_text() == out.values["markdown"]
    with pytest.raises(DataError, match="escapes the project directory"):
        report(tmp_path / "x", dir="../elsewhere")


def test_same_inputs_same_bytes(tmp_path: Path) -> None:
    extra = {"profile": PROFILE, "compressed": COMPRESSED, "usage": USAGE}
    a = report(tmp_path / "a", extra=extra)
    b = report(tmp_path / "b", extra=extra)
    assert a.infos["report"].sha256 == b.infos["report"].sha256
    assert a.infos["markdown"].sha256 == b.infos["markdown"].sha256


def test_json_inputs_are_recognised_under_stage_names(tmp_path: Path) -> None:
    out = report(
        tmp_path, extra={"flights_profile": PROFILE, "brief": COMPRESSED, "analyse_usage": USAGE}
    )
    doc = out.values["report"]
    assert doc["source"]["shown_to_model"]["sample_rows"] == 3
    assert doc["model"] == "claude-haiku-4-5"


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="has 0 rows") as err:
        report(tmp_path / "a", answer(0))
    assert "quarantine" in str(err.value)
    with pytest.raises(DataError, match="has 2 rows; a report is of one analysis"):
        report(tmp_path / "b", answer(2))
    with pytest.raises(DataError, match="'sumary' is not in the answer - did you mean 'summary'"):
        report(tmp_path / "c", sections=["sumary"])
    with pytest.raises(DataError, match="cannot tell what input 'mystery' is"):
        report(tmp_path / "d", extra={"mystery": {"a": 1}})
    with pytest.raises(ValidationError, match="sections is empty"):
        Report.Params.model_validate({"sections": []})

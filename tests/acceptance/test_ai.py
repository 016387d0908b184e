"""The AI example (examples/pydocs) through the CLI, against the local LLM test server.

The LLM is ``ductwork.ai.testserver.LLMTestServer`` on 127.0.0.1 (a keyword-heuristic
stand-in, not a model), named by ``LLM_BASE_URL`` as the example's run_demo.py does; its
request counter is how these tests see whether a run called the model. Each test works in a
fresh copy of the example. Tests that embed need torch, sentence-transformers and Qdrant
(``importorskip``); the others stop the pipeline before ``embedded`` (``--to compare``).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ductwork.ai.testserver import LLMTestServer

from .conftest import ROOT, Cli, statuses

PYDOCS = ROOT / "examples" / "pydocs"


@pytest.fixture(scope="module")
def llm() -> Iterator[LLMTestServer]:
    with LLMTestServer() as server:
        yield server


@pytest.fixture
def server(llm: LLMTestServer) -> Iterator[LLMTestServer]:
    llm.reset()
    llm.fault_rates = {}
    yield llm
    llm.fault_rates = {}
    llm.reset()


class Project(Cli):
    """A copy of examples/pydocs whose runs talk to the test server."""

    def __init__(self, cwd: Path, server: LLMTestServer) -> None:
        super().__init__(cwd)
        self.env = {"LLM_BASE_URL": server.anthropic_url, "LLM_MODEL": "stand-in"}

    def run(self, *args: str, timeout: float = 600) -> dict[str, Any]:
        return self.summary("run", *args, env=self.env, timeout=timeout)


@pytest.fixture
def pydocs(tmp_path: Path, server: LLMTestServer) -> Project:
    for name in ("pipeline.yaml", "analysis.yaml", "stdlib_docs.py", "labels.csv"):
        shutil.copy(PYDOCS / name, tmp_path / name)
    return Project(tmp_path, server)


def outputs(summary: dict[str, Any], stage: str) -> dict[str, Any]:
    found: dict[str, Any] = next(s for s in summary["stages"] if s["stage"] == stage)["outputs"]
    return found


def rows(summary: dict[str, Any], stage: str, output: str) -> int:
    n = outputs(summary, stage)[output]["rows"]
    assert isinstance(n, int)
    return n


def test_labels_reconcile_and_a_rerun_calls_nothing(pydocs: Project, server: LLMTestServer) -> None:
    first = pydocs.run("--to", "compare")
    assert first["exit_code"] == 0, first["error"]
    assert statuses(first) == {
        "docstrings": "ok",
        "checked": "ok",
        "labelled": "ok",
        "compare": "ok",
    }
    collected = rows(first, "docstrings", "main")
    assert collected >= 300
    passed, held = rows(first, "checked", "passed"), rows(first, "checked", "quarantine")
    assert passed + held == collected
    validated, quarantined = (
        rows(first, "labelled", "llm_validated"),
        rows(first, "labelled", "quarantine"),
    )
    assert validated + quarantined == passed  # rows in = validated + quarantined
    assert validated >= 0.99 * passed
    assert rows(first, "compare", "main") == validated
    # one request per row (plus a repair turn for an invalid answer), all over the Messages API
    assert passed <= server.requests <= passed + quarantined * 2 + 5
    assert server.by_api == {"anthropic": server.requests}
    assert first["usage"]["llm_requests"] == server.requests
    # every request is the rendered template (doc, name, signature) with a forced tool call
    for body in server.bodies:
        (turn,) = body["messages"]
        content = turn["content"]
        text = content if isinstance(content, str) else "".join(b["text"] for b in content)
        assert "\n\nFunction: " in text and text.endswith("(one sentence)?")
        assert body["tool_choice"]["type"] == "tool"

    sent = server.requests
    again = pydocs.run("--to", "compare")
    assert again["exit_code"] == 0
    assert set(statuses(again).values()) == {"cached"}
    assert server.requests == sent  # zero LLM calls
    assert outputs(again, "labelled") == outputs(first, "labelled")


def test_dry_run_shows_the_prompts_and_calls_nothing(
    pydocs: Project, server: LLMTestServer
) -> None:
    assert pydocs.run("--to", "checked")["exit_code"] == 0
    code, lines = pydocs.json_lines("run", "--dry-run", "--to", "compare", env=pydocs.env)
    assert code == 0
    preview = next(e["preview"] for e in lines if e.get("stage") == "labelled" and e.get("preview"))
    assert preview["rows"] == rows(lines[-1], "checked", "passed")
    first = preview["prompts"][0]
    assert first["prompt"].endswith("what does it do (one sentence)?")
    assert "\n\nFunction: " in first["prompt"] and first["estimated_input_tokens"] > 0
    assert preview["estimated_input_tokens"] > 300 * 100
    assert "--- row " in preview["text"] and "[user] " in preview["text"]
    assert server.requests == 0
    assert statuses(lines[-1])["labelled"] == "stale"


@pytest.fixture
def analysis(pydocs: Project, flights_data: Path) -> Project:
    shutil.copytree(flights_data, pydocs.cwd / "data")
    return pydocs


def test_capstone_a_failing_model_keeps_the_work_before_it(
    analysis: Project, server: LLMTestServer
) -> None:
    """profile → compress → generate → report, with every LLM request answered by a 500."""
    server.fault_rates = {500: 1.0}
    failed = analysis.run("analysis.yaml")
    assert failed["exit_code"] == 1
    assert statuses(failed) == {
        "flights": "ok",
        "flights_profile": "ok",
        "brief": "ok",
        "analyse": "failed",
        "report": "skipped",
    }
    assert server.requests == 4  # the one request, tried 1 + max_retries (3) times
    # no row got an answer: the stage fails (not an empty output), naming the HTTP error
    message = failed["error"]["message"]
    assert "1 of 1 rows got no answer from the anthropic API after 3 retries" in message
    assert "HTTP 500" in message
    assert "--only analyse" in failed["error"]["hint"]
    assert not (analysis.cwd / "out" / "analysis").exists()

    # still failing: what was made before the model is kept and reused, the model is asked again
    again = analysis.run("analysis.yaml")
    assert again["exit_code"] == 1
    assert statuses(again) == {
        "flights": "cached",
        "flights_profile": "cached",
        "brief": "cached",
        "analyse": "failed",
        "report": "skipped",
    }
    assert outputs(again, "brief") == outputs(failed, "brief")
    assert server.requests == 8

    server.fault_rates = {}
    server.reset()
    only = analysis.run("analysis.yaml", "--only", "analyse")
    assert only["exit_code"] == 0, only["error"]
    ran = {s: st for s, st in statuses(only).items() if st in ("ok", "cached", "failed")}
    assert ran == {"analyse": "ok"}  # profile and compress were not run again
    assert server.requests == 1

    final = analysis.run("analysis.yaml")
    assert final["exit_code"] == 0, final["error"]
    assert statuses(final) == {
        "flights": "cached",
        "flights_profile": "cached",
        "brief": "cached",
        "analyse": "cached",
        "report": "ok",
    }
    assert server.requests == 1
    report = json.loads((analysis.cwd / "out" / "analysis" / "report.json").read_text())
    assert [s["field"] for s in report["sections"]] == [
        "summary",
        "key_findings",
        "data_quality_issues",
        "next_steps",
    ]
    assert report["source"]["rows"] == 336_776 and report["source"]["columns"] == 19
    shown = report["source"]["shown_to_model"]
    assert shown["estimated_tokens"] <= shown["budget_tokens"] == 1000
    assert report["model"] == "stand-in" and report["usage"]["requests"] == 1
    markdown = (analysis.cwd / "out" / "analysis" / "report.md").read_text()
    assert markdown.startswith("# Flights from New York, 2013: an LLM's analysis\n")
    assert "\n## Data quality issues\n" in markdown
    # the compressed text the model read is in the request: the profile's first column line
    sent = json.dumps(server.bodies[0])
    assert "Table: 336776 rows, 19 columns." in sent


def test_search_finds_the_right_function(pydocs: Project, server: LLMTestServer) -> None:
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("qdrant_client")
    first = pydocs.run(timeout=900)
    assert first["exit_code"] == 0, first["error"]
    assert statuses(first)["docs_index"] == "ok"
    found = pydocs("search", "split a string with a regular expression", "-k", "3", "--json")
    assert found.returncode == 0, found.stderr
    doc = json.loads(found.stdout.splitlines()[-1])
    assert doc["schema"] == "ductwork.search/v1"
    assert [h["rank"] for h in doc["hits"]] == [1, 2, 3]
    top = doc["hits"][0]
    assert top["id"] == "re.split"
    assert top["payload"]["module"] == "re" and "pattern" in top["payload"]["doc"]
    # restricted to one module by its payload
    found = pydocs("search", "compress bytes", "--where", "module=gzip", "--json")
    hits = json.loads(found.stdout.splitlines()[-1])["hits"]
    assert hits and {h["payload"]["module"] for h in hits} == {"gzip"}
    assert hits[0]["id"] == "gzip.compress"

"""The generate stage end to end against the local LLM test server, for both providers.

Real HTTP on 127.0.0.1: the Anthropic SDK and the OpenAI-compatible httpx client talk to
``LLMTestServer`` (latency 0), which answers any schema and injects faults on request. The
server's request counter is the proof of what was sent.
"""

from __future__ import annotations

import json
import re
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from ductwork.ai.cache import cache_path
from ductwork.ai.testserver import LLMCall, LLMTestServer, default_responder
from ductwork.core.contract import Inputs, StageContext
from ductwork.errors import DataError, SourceError, StageFailed, UsageError
from ductwork.stages.generate import Generate, GenerateParams
from ductwork.testing import StageOutcome, json_input, run_stage, table_input

pytest.importorskip("anthropic")
pytest.importorskip("jinja2")

PROVIDERS = ("anthropic", "openai")
N = 24
ANSWER: dict[str, Any] = {
    "echo": {"type": "string", "description": "the function's qualified name, as given"},
    "category": {"type": "string", "enum": ["math", "networking", "files", "other"]},
    "position": {"type": "integer", "minimum": 0},
    "score": {"type": "number", "minimum": 0, "maximum": 1},
    "pure": {"type": "boolean"},
    "tags": {"type": "array", "items": {"type": "string"}},
}
DOCS = pl.DataFrame(
    {
        "qualname": [f"pkg.mod{i % 3}.fn_{i:03d}" for i in range(N)],
        "doc": [
            ("Compute the square root of a number.", "Open a socket and send an HTTP request.",
             "Read a file from disk.")[i % 3]
            for i in range(N)
        ],
        "lines": list(range(10, 10 + N)),
    }
)  # fmt: skip
KEY_RE = re.compile(r"Function (\S+) at position (\d+)")


def echo_responder(call: LLMCall) -> Any:
    """The default answer, with the row's own key and position in it; later rows answer first."""
    first = next((m["content"] for m in call.messages if m.get("role") == "user"), call.prompt)
    match = KEY_RE.search(str(first))
    assert match is not None
    position = int(match.group(2))
    time.sleep(0.002 * (N - position) if position < N else 0)  # reverse the arrival order
    answer = dict(default_responder(call))  # type: ignore[arg-type]
    answer.update(
        echo=match.group(1), position=position, score=position / 100, pure=position % 2 == 0
    )
    return answer


@pytest.fixture(scope="module")
def server() -> Iterator[LLMTestServer]:
    with LLMTestServer(hang_s=1.0, retry_after_s=0) as s:
        yield s


@pytest.fixture(autouse=True)
def clean(server: LLMTestServer) -> Iterator[None]:
    server.reset()
    server.responder = echo_responder
    yield
    server.reset()
    server.responder = default_responder


def url(server: LLMTestServer, provider: str) -> str:
    return server.anthropic_url if provider == "anthropic" else server.openai_url


def params(server: LLMTestServer, provider: str, **changes: Any) -> dict[str, Any]:
    return {
        "provider": provider,
        "model": "claude-haiku-4-5" if provider == "anthropic" else "gpt-4o-mini",
        "base_url": url(server, provider),
        "system": "You label Python functions.",
        "prompt": "Function {{ qualname }} at position {{ lines - 10 }}: {{ doc }}",
        "answer": ANSWER,
        "key": "qualname",
        "keep": ["qualname", "lines"],
        "retry_delay_s": 0.001,
        "timeout_s": 5,
        **changes,
    }


def generate(
    tmp_path: Path,
    name: str,
    p: dict[str, Any],
    data: Any = DOCS,
) -> StageOutcome:
    """One run of the stage; runs with the same tmp_path share the store (and the cache)."""
    return run_stage(
        "generate", p, {"docs": data}, tmp_path / name, project_dir=tmp_path, stage="enrich"
    )


def raw_lines(out: StageOutcome) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.values["llm_raw"].splitlines()]


def assert_complete(out: StageOutcome, rows_in: int) -> None:
    good, bad = out.values["llm_validated"].height, out.values["quarantine"].height
    assert good + bad == rows_in
    assert out.violations == []
    assert out.metrics["rows_validated"] == good
    assert out.metrics["rows_quarantined"] == bad


# ------------------------------------------------------------------------------ answers
@pytest.mark.parametrize("provider", PROVIDERS)
def test_answers_land_typed_on_their_own_rows(
    server: LLMTestServer, tmp_path: Path, provider: str
) -> None:
    out = generate(tmp_path, "run", params(server, provider, concurrency=8))
    assert_complete(out, N)
    df = out.values["llm_validated"]
    assert df.columns == [
        "qualname", "lines", "echo", "category", "position", "score", "pure", "tags",
        "_model", "_input_tokens", "_output_tokens",
    ]  # fmt: skip
    assert df.schema["position"] == pl.Int64
    assert df.schema["score"] == pl.Float64
    assert df.schema["pure"] == pl.Boolean
    assert df.schema["tags"] == pl.List(pl.String)
    assert df.schema["lines"] == pl.Int64  # a kept column keeps the input's type
    # answers arrived in reverse order, yet every row holds its own answer, in input order
    assert df["qualname"].to_list() == DOCS["qualname"].to_list()
    assert df["echo"].to_list() == df["qualname"].to_list()
    assert df["position"].to_list() == list(range(N))
    assert df["pure"].to_list() == [i % 2 == 0 for i in range(N)]
    assert df["category"].to_list()[:3] == ["math", "networking", "files"]
    assert (df["_input_tokens"] > 0).all()
    assert server.requests == N
    assert server.by_api == {provider: N}
    usage = out.values["usage"]
    assert (usage["requests"], usage["cache_hits"], usage["retries"]) == (N, 0, 0)
    assert usage["input_tokens"] == df["_input_tokens"].sum()
    assert usage["cost_usd"] == pytest.approx(out.metrics["llm_cost_usd"])
    assert usage["cost_usd"] > 0
    assert out.metrics["llm_requests"] == N
    # the request as the provider sent it carries the schema
    body = server.bodies[0]
    if provider == "anthropic":
        assert body["tool_choice"]["type"] == "tool"
        assert body["tools"][0]["input_schema"]["required"] == list(ANSWER)
        assert body["system"] == "You label Python functions."
    else:
        assert body["response_format"]["type"] == "json_schema"
        assert body["messages"][0] == {"role": "system", "content": "You label Python functions."}
    lines = raw_lines(out)
    assert len(lines) == N
    assert [line["key"] for line in lines] == DOCS["qualname"].to_list()  # row order
    assert all(line["attempt"] == 1 and not line["cached"] for line in lines)
    assert lines[0]["request"]["prompt"].startswith("Function pkg.mod0.fn_000 at position 0")


@pytest.mark.parametrize(
    ("provider", "structured"),
    [("openai", "json_object"), ("openai", "prompt"), ("anthropic", "prompt")],
)
def test_servers_without_structured_output_get_the_schema_in_the_prompt(
    server: LLMTestServer, tmp_path: Path, provider: str, structured: str
) -> None:
    out = generate(tmp_path, "run", params(server, provider, structured=structured))
    assert_complete(out, N)
    df = out.values["llm_validated"]
    assert df["echo"].to_list() == DOCS["qualname"].to_list()
    body = server.bodies[0]
    assert "tools" not in body
    assert body.get("response_format", {}).get("type") in (
        {"json_object": "json_object", "prompt": None}[structured],
    )
    assert '"enum": ["math", "networking", "files", "other"]' in body["messages"][-1]["content"]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_faults_are_retried_and_the_run_completes(
    server: LLMTestServer, tmp_path: Path, provider: str
) -> None:
    faults = (429, 529, 500, 503, "timeout", "disconnect", "malformed")
    server.inject(*faults, retry_after=0)
    out = generate(tmp_path, "run", params(server, provider, timeout_s=0.3, concurrency=4))
    assert_complete(out, N)
    assert out.values["quarantine"].height == 0
    assert server.requests == N + len(faults)
    usage = out.values["usage"]
    assert usage["retries"] == len(faults)
    assert usage["requests"] == N + len(faults)
    errors = [line for line in raw_lines(out) if "error" in line]
    assert len(errors) == len(faults)
    statuses = sorted(str(line["error"]["status"]) for line in errors)
    assert statuses == sorted(["429", "529", "500", "503", "None", "None", "200"])
    assert all(line["attempt"] >= 1 for line in errors)
    df = out.values["llm_validated"]
    assert df["echo"].to_list() == df["qualname"].to_list()


@pytest.mark.parametrize("provider", PROVIDERS)
def test_an_invalid_answer_is_repaired_by_a_re_ask(
    server: LLMTestServer, tmp_path: Path, provider: str
) -> None:
    server.inject("invalid", "text")  # one at a time: the first row's first two answers
    out = generate(tmp_path, "run", params(server, provider, concurrency=1, repairs=2))
    assert_complete(out, N)
    assert out.values["quarantine"].height == 0
    assert server.requests == N + 2
    assert out.values["usage"]["repairs"] == 2
    row0 = [line for line in raw_lines(out) if line["row"] == 0]
    assert [line["turn"] for line in row0] == [0, 1, 2]
    second, third = row0[1]["request"], row0[2]["request"]
    assert [m["role"] for m in second["history"]] == ["user", "assistant"]
    assert "does not match the required structure" in second["prompt"]
    assert "field 'category'" in second["prompt"]  # the validation error, naming the field
    assert [m["role"] for m in third["history"]] == ["user", "assistant"] * 2
    assert "the answer is not JSON" in third["prompt"]
    # the conversation reached the server: the third request carried all five turns
    sent = server.bodies[2]["messages"]
    assert [m["role"] for m in sent if m["role"] != "system"] == [
        "user", "assistant", "user", "assistant", "user",
    ]  # fmt: skip
    # the repaired row is valid and cost all three turns
    df = out.values["llm_validated"]
    assert df.row(0, named=True)["echo"] == "pkg.mod0.fn_000"
    assert df["_input_tokens"][0] > 2 * df["_input_tokens"][3]


def test_one_repair_is_not_enough_for_two_bad_answers(
    server: LLMTestServer, tmp_path: Path
) -> None:
    server.inject("invalid", "text")
    out = generate(tmp_path, "run", params(server, "anthropic", concurrency=1, repairs=1))
    assert_complete(out, N)
    row = out.values["quarantine"].row(0, named=True)
    assert row["qualname"] == "pkg.mod0.fn_000"
    assert row["_error"].startswith("the answer is not JSON")  # the last error
    assert row["_attempts"] == 2


@pytest.mark.parametrize("provider", PROVIDERS)
def test_an_answer_that_stays_invalid_is_quarantined(
    server: LLMTestServer, tmp_path: Path, provider: str
) -> None:
    def stubborn(call: LLMCall) -> Any:
        answer = dict(echo_responder(call))
        if "fn_005" in str(call.messages[0]["content"]):
            answer["category"] = "cooking"
            answer["position"] = -1
        return answer

    server.responder = stubborn
    out = generate(tmp_path, "run", params(server, provider, repairs=2))
    assert_complete(out, N)
    q = out.values["quarantine"]
    assert q.columns == ["qualname", "lines", "_error", "_raw_text", "_attempts"]
    assert q["qualname"].to_list() == ["pkg.mod2.fn_005"]
    row = q.row(0, named=True)
    assert (
        "field 'category': Input should be 'math', 'networking', 'files' or 'other'"
        in row["_error"]
    )
    assert "field 'position': Input should be greater than or equal to 0" in row["_error"]
    assert json.loads(row["_raw_text"])["category"] == "cooking"
    assert row["_attempts"] == 3  # the first ask and two repairs
    assert server.requests == N + 2
    assert "pkg.mod2.fn_005" not in out.values["llm_validated"]["qualname"].to_list()
    assert out.metrics["rows_quarantined"] == 1


def test_malformed_text_without_repairs_is_quarantined_with_the_json_error(
    server: LLMTestServer, tmp_path: Path
) -> None:
    server.inject("text")
    out = generate(tmp_path, "run", params(server, "openai", repairs=0, concurrency=1))
    assert_complete(out, N)
    row = out.values["quarantine"].row(0, named=True)
    assert row["qualname"] == "pkg.mod0.fn_000"
    assert row["_error"].startswith("the answer is not JSON (Expecting value")
    assert row["_raw_text"] == "I am not able to answer that in the requested format."
    assert row["_attempts"] == 1


def test_a_request_that_keeps_failing_is_quarantined_with_the_http_error(
    server: LLMTestServer, tmp_path: Path
) -> None:
    def broken_for_one(call: LLMCall) -> Any:
        if "fn_007" in call.prompt:
            raise RuntimeError("the model fell over")
        return echo_responder(call)

    server.responder = broken_for_one
    out = generate(tmp_path, "run", params(server, "anthropic", max_retries=2))
    assert_complete(out, N)
    row = out.values["quarantine"].row(0, named=True)
    assert row["qualname"] == "pkg.mod1.fn_007"
    assert "HTTP 500" in row["_error"]
    assert "the model fell over" in row["_error"]
    assert "gave up after 3 attempts" in row["_error"]
    assert row["_raw_text"] is None
    assert server.requests == N + 2
    # an error is never cached: the next run asks again (and only that row)
    server.responder = echo_responder
    before = server.requests
    again = generate(tmp_path, "again", params(server, "anthropic", max_retries=2))
    assert server.requests - before == 1
    assert again.values["quarantine"].height == 0


def test_a_provider_that_never_answers_fails_the_stage(
    server: LLMTestServer, tmp_path: Path
) -> None:
    def down(call: LLMCall) -> Any:
        raise RuntimeError("upstream unavailable")

    server.responder = down
    with pytest.raises(StageFailed, match=rf"{N} of {N} rows got no answer") as info:
        generate(tmp_path, "run", params(server, "anthropic", max_retries=1))
    assert "HTTP 500" in str(info.value)
    assert "--only" in (info.value.hint or "")


def test_max_error_share_fails_on_partial_outages(server: LLMTestServer, tmp_path: Path) -> None:
    def broken_for_one(call: LLMCall) -> Any:
        if "fn_007" in call.prompt:
            raise RuntimeError("the model fell over")
        return echo_responder(call)

    server.responder = broken_for_one
    with pytest.raises(StageFailed, match=rf"1 of {N} rows got no answer"):
        generate(tmp_path, "run", params(server, "anthropic", max_retries=0, max_error_share=0.0))
    # the default tolerates it: the row is quarantined, the others answered (and cached)
    before = server.requests
    out = generate(tmp_path, "again", params(server, "anthropic", max_retries=0))
    assert out.values["quarantine"]["qualname"].to_list() == ["pkg.mod1.fn_007"]
    assert server.requests - before == 1


# ------------------------------------------------------------------------- cache, resume
@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_second_run_makes_zero_calls_and_the_same_bytes(
    server: LLMTestServer, tmp_path: Path, provider: str
) -> None:
    server.inject("invalid")  # a repaired row is served from the cache too (both turns)
    first = generate(tmp_path, "one", params(server, provider))
    sent = server.requests
    assert sent == N + 1
    # other params that do not change the requests: still served from the cache
    second = generate(tmp_path, "two", params(server, provider, concurrency=3, max_retries=0))
    assert server.requests == sent  # zero calls
    a = Path(first.infos["llm_validated"].path).read_bytes()
    b = Path(second.infos["llm_validated"].path).read_bytes()
    assert a == b
    assert second.infos["quarantine"].sha256 == first.infos["quarantine"].sha256
    usage = second.values["usage"]
    assert (usage["requests"], usage["cache_hits"], usage["input_tokens"]) == (0, N + 1, 0)
    assert usage["rows_cached"] == N
    assert usage["cost_usd"] == 0
    assert second.metrics["llm_cache_hits"] == N + 1
    lines = raw_lines(second)
    assert len(lines) == N + 1
    assert all(line["cached"] and line["attempt"] == 0 for line in lines)
    # a changed prompt is a new request: sent again
    generate(tmp_path, "three", params(server, provider, system="You label functions."))
    assert server.requests == sent + N


def test_cache_false_sends_every_request(server: LLMTestServer, tmp_path: Path) -> None:
    generate(tmp_path, "one", params(server, "openai", cache=False))
    generate(tmp_path, "two", params(server, "openai", cache=False))
    assert server.requests == 2 * N
    assert not cache_path(tmp_path / ".ductwork").exists()


# ----------------------------------------------------------------------------- budgets
@pytest.mark.parametrize("provider", PROVIDERS)
def test_budget_fail_stops_and_a_higher_budget_sends_only_the_rest(
    server: LLMTestServer, tmp_path: Path, provider: str
) -> None:
    budget = {"max_tokens": 3000}  # each call holds ~120 input + 512 max output tokens
    with pytest.raises(StageFailed) as info:
        generate(tmp_path, "one", params(server, provider, budget=budget, concurrency=2))
    answered = server.requests
    assert 0 < answered < N
    msg = str(info.value)
    assert msg.startswith("stage 'enrich' failed: the budget (max_tokens 3,000) is spent:")
    assert f"{answered} of {N} rows answered, {N - answered} not sent" in msg
    assert f"paid by {answered} requests in this run" in msg
    assert "nothing is paid twice" in msg
    # the same budget again: the cached answers use it up, nearly nothing more is sent
    with pytest.raises(StageFailed):
        generate(tmp_path, "again", params(server, provider, budget=budget, concurrency=2))
    assert server.requests - answered <= 2
    answered = server.requests
    # raise the budget: only the rows not answered are sent
    out = generate(tmp_path, "two", params(server, provider, budget={"max_tokens": 100_000}))
    assert server.requests == N
    assert_complete(out, N)
    assert out.values["usage"]["cache_hits"] == answered
    assert out.values["usage"]["requests"] == N - answered
    assert out.values["llm_validated"]["echo"].to_list() == DOCS["qualname"].to_list()


def test_budget_keep_publishes_what_was_answered(server: LLMTestServer, tmp_path: Path) -> None:
    p = params(server, "anthropic", budget={"max_tokens": 3000}, on_budget="keep", concurrency=2)
    out = generate(tmp_path, "one", p)
    answered = server.requests
    assert_complete(out, N)
    assert out.values["llm_validated"].height == answered
    q = out.values["quarantine"]
    assert q.height == N - answered
    assert set(q["_error"].to_list()) == {"budget: not sent"}
    assert set(q["_attempts"].to_list()) == {0}
    usage = out.values["usage"]
    assert usage["budget_stopped"] is True
    assert usage["rows_not_sent"] == N - answered
    assert usage["input_tokens"] + usage["output_tokens"] == usage["budget_spent_tokens"]
    assert usage["budget_spent_tokens"] <= 3000
    # the same budget again: cached answers count against it, so it is not paid again
    # (at most what the first run's estimates held back for calls in flight)
    again = generate(tmp_path, "two", p)
    usage = again.values["usage"]
    assert usage["cache_hits"] == answered
    assert usage["budget_spent_tokens"] <= 3000
    assert server.requests - answered == usage["requests"] <= 2
    assert again.values["llm_validated"].height == server.requests


def test_cost_budget_with_an_explicit_price(server: LLMTestServer, tmp_path: Path) -> None:
    price = {"input_per_mtok": 1000.0, "output_per_mtok": 1000.0}  # $0.001 a token
    p = params(
        server, "openai", model="local-model", price=price, budget={"max_cost_usd": 2.0},
        on_budget="keep", concurrency=1, max_tokens=100,
    )  # fmt: skip
    out = generate(tmp_path, "one", p)
    usage = out.values["usage"]
    assert usage["price"] == {
        "input_per_mtok": 1000.0,
        "output_per_mtok": 1000.0,
        "source": "params",
    }
    assert 0 < usage["cost_usd"] <= 2.0
    assert usage["budget_stopped"] is True
    assert 0 < out.values["llm_validated"].height < N


def test_unknown_model_has_no_cost_but_counts_tokens(server: LLMTestServer, tmp_path: Path) -> None:
    out = generate(tmp_path, "one", params(server, "openai", model="local-llama"))
    usage = out.values["usage"]
    assert usage["cost_usd"] is None
    assert usage["price"] is None
    assert usage["input_tokens"] > 0
    assert out.metrics["llm_cost_usd"] is None


# ------------------------------------------------------------------------------ inputs
def test_a_json_input_makes_one_request(server: LLMTestServer, tmp_path: Path) -> None:
    server.responder = default_responder
    profile = {"table": "flights", "rows": 336776, "columns": ["carrier", "dep_delay"]}
    p = params(
        server, "anthropic", key=None, keep=None,
        prompt="Summarise this profile in one sentence. {{ input | tojson }}",
        answer={"summary": "string", "rows": {"type": "integer", "minimum": 0}},
    )  # fmt: skip
    out = generate(tmp_path, "one", p, json_input("docs", profile, tmp_path))
    assert server.requests == 1
    assert_complete(out, 1)
    df = out.values["llm_validated"]
    assert df.columns == ["_row", "summary", "rows", "_model", "_input_tokens", "_output_tokens"]
    assert df["_row"].to_list() == [0]
    assert df["rows"].to_list() == [336776]  # the stand-in model read the number in the prompt
    assert '"rows": 336776' in server.bodies[0]["messages"][0]["content"]


def test_the_row_number_is_the_key_by_default(server: LLMTestServer, tmp_path: Path) -> None:
    out = generate(tmp_path, "one", params(server, "openai", key=None, keep=None))
    df = out.values["llm_validated"]
    assert df.columns[:4] == ["_row", "qualname", "doc", "lines"]
    assert df["_row"].to_list() == list(range(N))
    assert [line["key"] for line in raw_lines(out)] == list(range(N))


def test_a_duplicate_key_sends_nothing(server: LLMTestServer, tmp_path: Path) -> None:
    docs = pl.concat([DOCS, DOCS.head(2)])
    with pytest.raises(
        DataError, match=r"key column 'qualname' is not unique: 'pkg\.mod0\.fn_000'"
    ):
        generate(tmp_path, "one", params(server, "openai"), docs)
    assert server.requests == 0


def test_an_empty_table_gives_empty_typed_outputs(server: LLMTestServer, tmp_path: Path) -> None:
    out = generate(tmp_path, "one", params(server, "anthropic"), DOCS.clear())
    assert server.requests == 0
    assert out.values["llm_validated"].height == 0
    assert out.values["llm_validated"].schema["position"] == pl.Int64
    assert out.values["quarantine"].height == 0
    assert out.violations == []


# --------------------------------------------------------------------------- dry run
def test_preview_makes_no_call(server: LLMTestServer, tmp_path: Path) -> None:
    p = GenerateParams.model_validate(params(server, "anthropic"))
    ctx = StageContext(stage="enrich", run_id="dry", project_dir=tmp_path, work_dir=tmp_path / "w")
    inputs = Inputs({"docs": table_input("docs", DOCS, tmp_path / "in")})
    before = Generate().preview(p, inputs, ctx)
    assert server.requests == 0
    assert before["rows"] == N
    assert before["cached_rows"] == 0
    assert "[user] Function pkg.mod0.fn_000 at position 0: Compute" in before["text"]
    generate(tmp_path, "run", params(server, "anthropic"))
    after = Generate().preview(p, inputs, ctx)
    assert after["cached_rows"] == N
    assert after["estimated_cost_usd"] == {"low": 0.0, "high": 0.0}
    assert server.requests == N


# ----------------------------------------------------------------------------- secrets
SECRET = "sk-test-7c0ffee-DO-NOT-LOG-5ecret"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_no_api_key_in_raw_log_cache_usage_or_errors(
    tmp_path: Path, provider: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DW_TEST_LLM_KEY", SECRET)
    with LLMTestServer(api_key=SECRET, retry_after_s=0) as strict:
        p = params(strict, provider, api_key_env="DW_TEST_LLM_KEY")
        strict.inject(500, "invalid")
        out = generate(tmp_path, "one", p)
        assert strict.requests == N + 2  # the key was sent (the server checks it)
        assert_complete(out, N)
        assert SECRET not in out.values["llm_raw"]
        assert SECRET not in json.dumps(out.values["usage"])
        store = tmp_path / ".ductwork"
        for f in store.rglob("*"):
            if f.is_file():
                assert SECRET.encode() not in f.read_bytes(), f
        for name in ("llm_validated", "quarantine", "llm_raw", "usage"):
            assert SECRET.encode() not in Path(out.infos[name].path).read_bytes()
        # a wrong key: the run stops at the first 401, and the error does not show the key
        monkeypatch.setenv("DW_TEST_LLM_KEY", SECRET[::-1])
        with pytest.raises(SourceError) as info:
            generate(
                tmp_path, "two", params(strict, provider, api_key_env="DW_TEST_LLM_KEY", system="x")
            )
        text = f"{info.value}\n{info.value.hint}"
        assert "HTTP 401" in text
        assert "$DW_TEST_LLM_KEY" in text
        assert SECRET not in text and SECRET[::-1] not in text
        assert strict.requests <= N + 2 + 8  # stopped: at most the calls already in flight


def test_a_cached_run_needs_no_key_and_a_missing_key_names_the_variable(
    server: LLMTestServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DW_TEST_LLM_KEY", SECRET)
    p = params(server, "openai", api_key_env="DW_TEST_LLM_KEY")
    generate(tmp_path, "one", p)
    monkeypatch.delenv("DW_TEST_LLM_KEY")
    out = generate(tmp_path, "two", p)  # everything cached: no provider, no key needed
    assert out.values["usage"]["cache_hits"] == N
    more = pl.concat([DOCS, DOCS.head(1).with_columns(qualname=pl.lit("pkg.new"))])
    with pytest.raises(UsageError, match="DW_TEST_LLM_KEY is not set"):
        generate(tmp_path, "three", p, more)


# ------------------------------------------------------------------------- in a pipeline
def test_in_a_pipeline_run_metrics_and_the_second_run_is_cached(
    server: LLMTestServer, tmp_path: Path
) -> None:
    from ductwork import api

    DOCS.write_parquet(tmp_path / "docs.parquet")
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "label.j2").write_text(
        "Function {{ qualname }} at position {{ lines - 10 }}: {{ doc }}\n"
    )
    answer = json.dumps(ANSWER)
    (tmp_path / "pipeline.yaml").write_text(
        textwrap.dedent(
            f"""
            pipeline: llm
            stages:
              - name: docs
                kind: extract
                params: {{path: docs.parquet}}
              - name: enrich
                kind: generate
                inputs: [docs]
                params:
                  provider: openai
                  model: gpt-4o-mini
                  base_url: {server.openai_url}
                  prompt_file: prompts/label.j2
                  key: qualname
                  answer: {answer}
            """
        )
    )
    result = api.run(tmp_path / "pipeline.yaml")
    assert server.requests == N
    stage = result.stages["enrich"]
    assert stage.status == "ok"
    assert stage.metrics["llm_requests"] == N
    assert stage.metrics["rows_validated"] == N
    assert api.run(tmp_path / "pipeline.yaml").stages["enrich"].status == "cached"
    assert server.requests == N  # the stage is reused by its fingerprint
    # editing the prompt file changes the fingerprint: a dry run previews, a run asks again
    (tmp_path / "prompts" / "label.j2").write_text(
        "Function {{ qualname }} at position {{ lines - 10 }}. {{ doc }}\n"
    )
    dry = api.run(tmp_path / "pipeline.yaml", dry_run=True).stages["enrich"]
    assert dry.preview is not None
    assert (dry.preview["rows"], dry.preview["cached_rows"]) == (N, 0)
    assert dry.preview["prompts"][0]["prompt"].startswith("Function pkg.mod0.fn_000 at position 0.")
    assert server.requests == N
    api.run(tmp_path / "pipeline.yaml")
    assert server.requests == 2 * N


# ---------------------------------------------------------------------------- retrieval
def test_retrieval_puts_the_top_hits_in_the_prompt(server: LLMTestServer, tmp_path: Path) -> None:
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("qdrant_client")
    kb = pl.DataFrame(
        {
            "id": ["refunds", "shipping", "passwords"],
            "doc": [
                "Refunds are paid back to the original card within 5 business days.",
                "Parcels ship from our warehouse in Leeds and arrive in 2 to 4 days.",
                "To reset a forgotten password, use the link on the sign-in page.",
            ],
        }
    )
    embedded = run_stage(
        "embed", {"text": "doc", "key": "id", "keep": ["doc"]}, {"kb": kb},
        tmp_path / "embed", project_dir=tmp_path, stage="embed",
    )  # fmt: skip
    indexed = run_stage(
        "index", {}, {"embed": embedded.values["embeddings"]},
        tmp_path / "index", project_dir=tmp_path, stage="kb",
    )  # fmt: skip
    manifest = json_input("kb", indexed.values["index"], tmp_path / "manifest")
    questions = pl.DataFrame(
        {
            "ticket": ["t1", "t2"],
            "question": ["When do I get my money back?", "I cannot log in any more."],
        }
    )
    server.responder = default_responder
    p = params(
        server, "openai", key="ticket", keep=["ticket"],
        system=None,
        prompt=(
            "Question: {{ question }}\n"
            "{% for hit in context %}Source {{ hit.id }} ({{ '%.2f' % hit.score }}): "
            "{{ hit.doc }}\n{% endfor %}"
        ),
        answer={"reply": "string"},
        context={"index": "kb", "k": 1, "query": "{{ question }}"},
    )  # fmt: skip
    out = run_stage(
        "generate", p, {"questions": questions, "kb": manifest},
        tmp_path / "gen", project_dir=tmp_path, stage="answer",
    )  # fmt: skip
    assert_complete(out, 2)
    prompts = [line["request"]["prompt"] for line in raw_lines(out)]
    assert "Source refunds" in prompts[0]
    assert "original card within 5 business days" in prompts[0]
    assert "Source passwords" in prompts[1]
    assert "Source shipping" not in "".join(prompts)  # k: 1

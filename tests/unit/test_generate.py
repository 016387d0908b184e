"""The generate stage's parts without a server: params, cache, cost, budget, preview, errors.

The stage end to end (HTTP, retries, repairs, budgets, resume) is tested against the local LLM
test server in tests/integration/test_generate_http.py.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from pydantic import ValidationError

from ductwork.ai.cache import ResponseCache, cache_path
from ductwork.ai.cost import Price, cost_usd, known_price, resolve_price
from ductwork.ai.enrich import Budget, estimate_request_tokens, repair_request, validate_reply
from ductwork.ai.llm import LLMReply, LLMRequest, Usage
from ductwork.ai.schema import AnswerInvalid
from ductwork.core.contract import Inputs, StageContext
from ductwork.errors import DataError, MissingExtra, SpecError
from ductwork.spec import load_pipeline
from ductwork.stages.generate import Generate, GenerateParams
from ductwork.testing import json_input, run_stage, table_input

ANSWER = {
    "category": {"type": "string", "enum": ["text", "math", "other"]},
    "summary": {"type": "string"},
}
BASE: dict[str, Any] = {
    "provider": "anthropic",
    "model": "claude-haiku-4-5",
    "base_url": "http://127.0.0.1:9",  # nothing listens: these tests must never send
    "system": "You label Python functions.",
    "prompt": "Function {{ name }}: {{ doc }}",
    "answer": ANSWER,
}
DOCS = pl.DataFrame(
    {
        "name": ["sqrt", "upper", "open"],
        "doc": ["Square root of x.", "Upper-case a string.", "Open a file."],
        "module": ["math", "str", "io"],
    }
)


def params(**changes: Any) -> dict[str, Any]:
    return {**BASE, **changes}


def reply(data: Any, text: str | None = None, **kw: Any) -> LLMReply:
    return LLMReply(
        text=text if text is not None else json.dumps(data),
        data=data,
        usage=kw.pop("usage", Usage(10, 5)),
        model="claude-haiku-4-5-20251001",
        stop_reason=kw.pop("stop_reason", "tool_use"),
        raw={"id": "msg_1", "content": [{"type": "tool_use", "input": data}]},
        **kw,
    )


# ------------------------------------------------------------------------------- params
def test_params_defaults_and_registry() -> None:
    from ductwork.stages.registry import get_kind

    assert get_kind("generate") is Generate
    p = GenerateParams.model_validate(params())
    assert (p.max_tokens, p.concurrency, p.max_retries, p.repairs, p.cache) == (512, 8, 5, 1, True)
    assert p.on_budget == "fail"
    assert p.provider_config().model == "claude-haiku-4-5"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"prompt": None}, "set exactly one of prompt"),
        ({"prompt_file": "p.j2"}, "set exactly one of prompt"),
        ({"answer": {"category": {"type": "strng"}}}, "answer.category: type is 'strng'"),
        ({"prompt": "{{ name }"}, "the prompt template, line 1: unexpected '}'"),
        ({"system": "{% if x %}"}, "the system template, line 1"),
        ({"keep": ["name", "name"]}, "keep column 'name' is listed twice"),
        ({"budget": {"max_cost_usd": 1.0}, "model": "my-local-model"}, "needs a price"),
        ({"provider": "gemini"}, "Input should be 'anthropic' or 'openai'"),
        ({"concurrency": 0}, "greater than or equal to 1"),
        ({"on_budget": "stop"}, "Input should be 'fail' or 'keep'"),
        ({"structured": "json_schema"}, "structured: json_schema is not available with provider"),
    ],
)
def test_bad_params_are_errors_at_check(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as info:
        GenerateParams.model_validate(params(**changes))
    assert message in str(info.value)


def test_a_known_price_or_an_explicit_one_allows_a_cost_budget() -> None:
    GenerateParams.model_validate(params(budget={"max_cost_usd": 1.0}))
    GenerateParams.model_validate(
        params(
            model="my-local-model",
            budget={"max_cost_usd": 1.0},
            price={"input_per_mtok": 0.1, "output_per_mtok": 0.2},
        )
    )


def test_a_pasted_key_in_api_key_env_is_refused_without_echoing_it(tmp_path: Path) -> None:
    secret = "sk-ant-api03-abcdefghijklmnop-1234"
    spec = tmp_path / "pipeline.yaml"
    spec.write_text(
        textwrap.dedent(
            f"""
            pipeline: p
            stages:
              - name: docs
                kind: python
                uses: steps:src
              - name: enrich
                kind: generate
                params:
                  model: claude-haiku-4-5
                  api_key_env: "{secret}"
                  prompt: "{{{{ x }}}}"
                  answer: {{label: {{type: string, enum: [a, b]}}, n: {{type: integr}}}}
            """
        )
    )
    (tmp_path / "steps.py").write_text("def src():\n    return None\n")
    with pytest.raises(SpecError) as info:
        load_pipeline(spec)
    text = str(info.value)
    assert "api_key_env: must be the NAME of an environment variable" in text
    assert "answer.n: type is 'integr' - did you mean 'integer'?" in text
    assert "pipeline.yaml:" in text  # located in the file
    assert secret not in text


def test_the_stage_module_imports_no_ai_library() -> None:
    code = (
        "import sys, ductwork.stages.generate, ductwork.stages.registry as r; "
        "r.get_kind('generate'); "
        "bad = [m for m in ('jinja2', 'anthropic', 'httpx', 'torch') if m in sys.modules]; "
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -------------------------------------------------------------------------------- cache
def test_cache_round_trip_survives_a_reopen(tmp_path: Path) -> None:
    request = LLMRequest(prompt="p", schema={"type": "object"})
    key = request.cache_key("anthropic", "m", None)
    assert key != request.cache_key("anthropic", "m", "http://other")
    assert key != LLMRequest(prompt="p2").cache_key("anthropic", "m", None)
    with ResponseCache.in_store(tmp_path) as cache:
        assert cache.get(key) is None
        cache.put(key, reply({"category": "math"}), provider="anthropic", model="m")
    with ResponseCache.in_store(tmp_path) as cache:
        got = cache.get(key)
        assert len(cache) == 1
    assert got is not None
    assert got.data == {"category": "math"}
    assert got.usage == Usage(10, 5)
    assert got.model == "claude-haiku-4-5-20251001"
    assert got.raw["id"] == "msg_1"
    assert got.attempts == 0  # from the cache, not HTTP
    mode = sqlite3.connect(cache_path(tmp_path)).execute("pragma journal_mode").fetchone()[0]
    assert mode == "wal"


def test_a_readonly_cache_creates_nothing(tmp_path: Path) -> None:
    with ResponseCache.in_store(tmp_path, readonly=True) as cache:
        assert cache.get("x") is None
        assert cache.contains(["x", "y"]) == set()
        cache.put("x", reply({}), provider="a", model="m")
    assert not cache_path(tmp_path).exists()
    with ResponseCache.in_store(tmp_path) as cache:
        for i in range(1200):  # more than one batch of the IN query
            cache.put(f"k{i}", reply({}), provider="a", model="m")
    with ResponseCache.in_store(tmp_path, readonly=True) as cache:
        found = cache.contains([f"k{i}" for i in range(0, 2400, 2)])
    assert found == {f"k{i}" for i in range(0, 1200, 2)}


# --------------------------------------------------------------------------------- cost
def test_prices_known_dated_explicit_and_unknown() -> None:
    assert known_price("claude-haiku-4-5") == Price(1.0, 5.0)
    assert known_price("claude-haiku-4-5-20251001") == Price(1.0, 5.0)
    assert known_price("gpt-4o-mini-2024-07-18") == Price(0.15, 0.6)
    assert known_price("claude-haiku-4-5-turbo") is None  # no guessing from a similar name
    assert known_price("llama3") is None
    assert resolve_price("llama3") is None
    mine = resolve_price("claude-haiku-4-5", {"input_per_mtok": 2, "output_per_mtok": 4})
    assert mine == Price(2.0, 4.0, "params")  # an explicit price wins over the table
    assert cost_usd(Usage(1_000_000, 100_000), known_price("claude-haiku-4-5")) == 1.5
    assert cost_usd(Usage(10, 10), None) is None


# ------------------------------------------------------------------------------- budget
def test_budget_holds_the_worst_case_of_calls_in_flight() -> None:
    b = Budget(max_tokens=1000)
    first = b.reserve(200, 300)  # 500 held
    assert first is not None
    assert b.reserve(200, 300) is not None  # 1000 held: exactly at the cap
    assert b.held_tokens == 1000
    assert b.reserve(1, 0) is None  # would pass the cap: refused, and the budget stops
    assert b.stopped
    assert b.reason == "max_tokens 1,000"
    b.settle(first, Usage(180, 20))
    assert (b.spent_tokens, b.held_tokens) == (200, 500)
    assert b.reserve(1, 1) is None  # stopped stays stopped


def test_budget_stops_after_a_reply_reaches_the_cap() -> None:
    b = Budget(max_tokens=100)
    hold = b.reserve(10, 20)
    assert hold is not None
    b.settle(hold, Usage(60, 50))  # the estimate was low: the reply used 110
    assert b.stopped
    assert b.spent_tokens == 110


def test_a_failed_call_releases_its_hold() -> None:
    b = Budget(max_tokens=100)
    hold = b.reserve(40, 40)
    assert hold is not None
    b.settle(hold, None)
    assert (b.held_tokens, b.spent_tokens, b.stopped) == (0, 0, False)


def test_cached_answers_count_against_the_budget() -> None:
    # a re-run with the same budget stops where the first did instead of paying it again
    b = Budget(max_tokens=1000)
    for _ in range(4):
        b.charge(Usage(200, 40))  # four answers served from the cache
    assert (b.spent_tokens, b.stopped) == (960, False)
    assert b.reserve(30, 20) is None  # 960 + 50 > 1000
    assert b.stopped


def test_cost_budget_uses_the_price() -> None:
    b = Budget(max_cost_usd=0.01, price=Price(1.0, 5.0))  # $1 / $5 per million
    hold = b.reserve(1000, 1000)  # worst case $0.006
    assert hold is not None
    assert b.reserve(1000, 1000) is None  # $0.012 > $0.01
    b.settle(hold, Usage(1000, 200))
    assert b.spent_cost == pytest.approx(0.002)


# ----------------------------------------------------------------------- engine pieces
def test_repair_request_carries_the_conversation_and_the_error() -> None:
    first = LLMRequest(prompt="label f", system="sys", schema={"type": "object"}, max_tokens=99)
    bad = reply({"category": "cooking"})
    second = repair_request(first, bad, "field 'category': Input should be 'text'")
    assert [m["role"] for m in second.history] == ["user", "assistant"]
    assert second.history[0]["content"] == "label f"
    assert second.history[1]["content"] == bad.text
    assert "field 'category': Input should be 'text'" in second.prompt
    assert (second.system, second.schema, second.max_tokens) == ("sys", first.schema, 99)
    # a repair is a request of its own: its own cache key
    assert second.cache_key("anthropic", "m") != first.cache_key("anthropic", "m")
    assert estimate_request_tokens(second) > estimate_request_tokens(first)


def test_an_answer_that_is_not_json_says_why() -> None:
    def never(data: Any) -> dict[str, Any]:
        raise AssertionError

    with pytest.raises(AnswerInvalid, match=r"not JSON \(Unterminated string"):
        validate_reply(reply(None, text='{"category": "ma'), never)
    with pytest.raises(AnswerInvalid, match="cut off at max_tokens"):
        validate_reply(reply(None, text='{"category": "ma', stop_reason="max_tokens"), never)
    with pytest.raises(AnswerInvalid, match="it is empty"):
        validate_reply(reply(None, text=""), never)


# ----------------------------------------------------------------------- errors before a call
def run(tmp_path: Path, data: Any = DOCS, **changes: Any) -> Any:
    return run_stage("generate", params(**changes), {"docs": data}, tmp_path, stage="enrich")


def test_a_duplicate_key_is_a_data_error_naming_the_key(tmp_path: Path) -> None:
    docs = DOCS.with_columns(qualname=pl.Series(["m.sqrt", "s.upper", "m.sqrt"]))
    with pytest.raises(DataError) as info:
        run(tmp_path, docs, key="qualname")
    assert info.value.message == (
        "stage 'enrich': key column 'qualname' is not unique: 'm.sqrt' (2 rows)"
    )
    assert not (tmp_path / ".ductwork").exists()  # stopped before the cache was opened


def test_key_errors_missing_and_null(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="key column 'qualnme' not found in the input"):
        run(tmp_path, key="qualnme")
    docs = DOCS.with_columns(q=pl.Series(["a", None, "c"]))
    with pytest.raises(DataError, match="key column 'q' has 1 null values"):
        run(tmp_path, docs, key="q")


def test_an_unknown_template_variable_names_it_and_the_columns(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        run(tmp_path, prompt="Function {{ name }}:\n{{ docs }}")
    assert info.value.message == (
        "stage 'enrich': the prompt template, line 2, uses 'docs', which is not a column of "
        "input 'docs' - did you mean 'doc'?"
    )
    assert info.value.hint == "Available: name, doc, module"


def test_keep_and_answer_name_clashes(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="keep column 'modul' not found in the input"):
        run(tmp_path, keep=["modul"])
    clash = {**ANSWER, "module": {"type": "string"}}
    with pytest.raises(DataError, match="answer field 'module' has the name of an output column"):
        run(tmp_path, answer=clash)
    run_ok = params(answer=clash, keep=["name"])  # not kept: no clash
    GenerateParams.model_validate(run_ok)


def test_two_inputs_need_a_context_index(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="generate takes one data input"):
        run_stage("generate", params(), {"docs": DOCS, "more": DOCS}, tmp_path, stage="enrich")


# ------------------------------------------------------------------------------ preview
def preview(tmp_path: Path, data: Any = DOCS, **changes: Any) -> dict[str, Any]:
    p = GenerateParams.model_validate(params(**changes))
    art = data if not isinstance(data, pl.DataFrame) else table_input("docs", data, tmp_path)
    ctx = StageContext(stage="enrich", run_id="dry", project_dir=tmp_path, work_dir=tmp_path / "w")
    return Generate().preview(p, Inputs({"docs": art}), ctx)


def test_preview_renders_prompts_and_estimates_without_a_call(tmp_path: Path) -> None:
    docs = pl.concat([DOCS] * 4)  # 12 rows
    out = preview(tmp_path, docs)
    assert out["rows"] == 12
    assert len(out["prompts"]) == 3
    first = out["prompts"][0]
    assert first["key"] == 0
    assert first["system"] == "You label Python functions."
    assert first["prompt"] == "Function sqrt: Square root of x."
    assert first["estimated_input_tokens"] > 0
    assert (
        out["estimated_input_tokens"]
        == sum(p["estimated_input_tokens"] for p in out["prompts"]) * 4
    )
    assert out["max_output_tokens"] == 12 * 512
    low, high = out["estimated_cost_usd"]["low"], out["estimated_cost_usd"]["high"]
    assert low == pytest.approx(out["estimated_input_tokens"] * 1.0 / 1e6)
    assert high == pytest.approx(low + 12 * 512 * 5.0 / 1e6)
    assert out["cached_rows"] == 0
    assert "[user] Function upper: Upper-case a string." in out["text"]
    assert "... and 9 more rows" in out["text"]
    assert not (tmp_path / ".ductwork").exists()  # no cache file made by a dry run


def test_preview_counts_cached_rows_and_leaves_them_out_of_the_cost(tmp_path: Path) -> None:
    p = GenerateParams.model_validate(params())
    full = preview(tmp_path / "a")
    # answer row 1 in the cache the way a run would have
    from ductwork.stages.generate import _first_keys, _prepare

    ctx = StageContext(stage="enrich", run_id="x", project_dir=tmp_path, work_dir=tmp_path / "w")
    prep = _prepare(p, Inputs({"docs": table_input("docs", DOCS, tmp_path)}), ctx)
    key = _first_keys(p, prep.jobs)[1]
    with ResponseCache.in_store(tmp_path / ".ductwork") as cache:
        cache.put(key, reply({"category": "text", "summary": "x"}), provider="anthropic", model="m")
    out = preview(tmp_path)
    assert out["cached_rows"] == 1
    uncached_in = full["estimated_input_tokens"] - prep_tokens(prep, 1)
    assert out["estimated_cost_usd"]["low"] == pytest.approx(uncached_in / 1e6)


def prep_tokens(prep: Any, i: int) -> int:
    return estimate_request_tokens(prep.jobs[i].request)


def test_preview_of_a_json_input_is_one_request_and_unknown_cost(tmp_path: Path) -> None:
    doc = json_input("docs", {"columns": ["a", "b"], "rows": 10}, tmp_path)
    out = preview(
        tmp_path,
        doc,
        model="local-llama",
        prompt="Describe this profile: {{ input | tojson }}",
    )
    assert out["rows"] == 1
    assert (
        out["prompts"][0]["prompt"] == 'Describe this profile: {"columns": ["a", "b"], "rows": 10}'
    )
    assert out["estimated_cost_usd"] is None
    assert "no known price" in out["text"]


def test_the_doc_examples_are_valid_params() -> None:
    import re

    from ruamel.yaml import YAML

    doc = Path(__file__).resolve().parents[2] / "docs" / "stages" / "generate.md"
    blocks = re.findall(r"```yaml\n(.*?)```", doc.read_text(), re.S)
    stages = [YAML(typ="safe").load(b) for b in blocks if "kind: generate" in b]
    assert len(stages) >= 3
    for entry in stages:
        GenerateParams.model_validate(entry[0]["params"])


@pytest.mark.parametrize(
    ("module", "provider"),
    [("jinja2", "anthropic"), ("anthropic", "anthropic"), ("httpx", "openai")],
)
def test_a_missing_ai_library_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module: str, provider: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    with pytest.raises(MissingExtra) as info:
        run(tmp_path, provider=provider)
    assert f"requires the '{module}' module" in info.value.message
    assert info.value.hint == "Install it with: pip install 'ductwork[ai]'"

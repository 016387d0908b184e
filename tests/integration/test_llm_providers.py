"""Both LLM providers against the real local test server (HTTP on 127.0.0.1, faults injected).

The Anthropic provider goes through the official SDK, the OpenAI one through httpx; the
server is :class:`ductwork.ai.testserver.LLMTestServer`. Waits are asserted on the injected
sleep's arguments, never on wall time.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
from pydantic import BaseModel, Field, ValidationError

from ductwork.ai.limits import RetryPolicy, call_with_retries
from ductwork.ai.llm import LLMError, LLMReply, LLMRequest, ProviderConfig
from ductwork.ai.providers import make_provider, parse_json_answer
from ductwork.ai.testserver import LLMCall, LLMTestServer, default_responder
from ductwork.errors import UsageError

SECRET = "sk-test-DO-NOT-LEAK-4b1d9c"
KEY_ENV = "DUCTWORK_TEST_LLM_KEY"
CATEGORIES = ["database", "networking", "security", "other"]
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "category": {"type": "string", "enum": CATEGORIES},
        "summary": {"type": "string", "maxLength": 120},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
    },
    "required": ["category", "summary", "confidence"],
    "additionalProperties": False,
}
DOCSTRING = "Open a TCP socket to the host and send an HTTP request. Retries on a dropped port."
PROVIDERS = ["anthropic", "openai"]


@pytest.fixture(scope="module")
def server() -> Iterator[LLMTestServer]:
    with LLMTestServer(api_key=SECRET, hang_s=5.0, retry_after_s=1.0) as srv:
        yield srv


@pytest.fixture(autouse=True)
def _fresh(server: LLMTestServer, monkeypatch: pytest.MonkeyPatch) -> None:
    server.reset()
    monkeypatch.setenv(KEY_ENV, SECRET)


def config(server: LLMTestServer, provider: str, **kw: Any) -> ProviderConfig:
    url = server.anthropic_url if provider == "anthropic" else server.openai_url
    fields: dict[str, Any] = {
        "provider": provider,
        "model": f"{provider}-test-model",
        "base_url": url,
        "api_key_env": KEY_ENV,
        "timeout_s": 5.0,
        **kw,
    }
    return ProviderConfig(**fields)


def complete(cfg: ProviderConfig, request: LLMRequest) -> LLMReply:
    async def run() -> LLMReply:
        provider = make_provider(cfg)
        try:
            return await provider.complete(request)
        finally:
            await provider.aclose()

    return asyncio.run(run())


def fails(cfg: ProviderConfig, request: LLMRequest) -> LLMError:
    with pytest.raises(LLMError) as info:
        complete(cfg, request)
    return info.value


class Recorder:
    def __init__(self) -> None:
        self.sleeps: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)


def with_retries(
    cfg: ProviderConfig, request: LLMRequest, policy: RetryPolicy | None = None
) -> tuple[LLMReply, list[float]]:
    recorder = Recorder()

    async def run() -> LLMReply:
        provider = make_provider(cfg)
        try:
            return await call_with_retries(
                provider, request, policy or RetryPolicy(rand=lambda: 0.5), sleep=recorder.sleep
            )
        finally:
            await provider.aclose()

    return asyncio.run(run()), recorder.sleeps


def ask(prompt: str = DOCSTRING, **kw: Any) -> LLMRequest:
    return LLMRequest(prompt=prompt, schema=SCHEMA, schema_name="label", **kw)


# -- answers ----------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_structured_answer_is_parsed_into_data(server: LLMTestServer, provider: str) -> None:
    out = complete(config(server, provider), ask(system="You label Python functions."))
    assert out.data["category"] == "networking"  # socket, TCP, HTTP, host, port
    assert out.data["summary"] == "Open a TCP socket to the host and send an HTTP request."
    assert 0 <= out.data["confidence"] <= 1
    assert json.loads(out.text) == out.data
    assert out.model == f"{provider}-test-model"
    assert out.usage.input_tokens > 0
    assert out.usage.output_tokens > 0
    assert out.latency_s > 0
    assert out.attempts == 1
    assert out.stop_reason == ("tool_use" if provider == "anthropic" else "stop")
    assert isinstance(out.raw, dict)
    assert server.by_api == {provider: 1}


def test_anthropic_request_is_one_forced_tool_with_the_schema(server: LLMTestServer) -> None:
    history = (
        {"role": "user", "content": "first try"},
        {"role": "assistant", "content": '{"category": "nope"}'},
    )
    request = ask(system="You label functions.", history=history, max_tokens=77)
    complete(config(server, "anthropic"), request)
    (body,) = server.bodies
    assert body["tool_choice"] == {"type": "tool", "name": "label"}
    assert [t["name"] for t in body["tools"]] == ["label"]
    assert body["tools"][0]["input_schema"] == SCHEMA
    assert body["system"] == "You label functions."
    assert body["max_tokens"] == 77
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert body["messages"][-1]["content"] == DOCSTRING
    assert "temperature" not in body  # API 2026-10-21 rejects sampling parameters
    assert server.calls[0].headers["authorization"] == "***"  # sent, and not recorded


def test_openai_request_uses_response_format_json_schema(server: LLMTestServer) -> None:
    request = ask(system="You label functions.", extra={"top_p": 0.5}, max_tokens=50)
    complete(config(server, "openai"), request)
    (body,) = server.bodies
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "label", "schema": SCHEMA, "strict": True},
    }
    assert body["messages"] == [
        {"role": "system", "content": "You label functions."},
        {"role": "user", "content": DOCSTRING},
    ]
    assert body["max_tokens"] == 50
    assert body["temperature"] == 0.0
    assert body["top_p"] == 0.5
    assert body["model"] == "openai-test-model"


@pytest.mark.parametrize(
    ("provider", "mode"),
    [("openai", "json_object"), ("openai", "prompt"), ("anthropic", "prompt")],
)
def test_schema_in_the_prompt_modes(server: LLMTestServer, provider: str, mode: str) -> None:
    out = complete(config(server, provider, structured=mode), ask())
    assert out.data["category"] == "networking"
    (body,) = server.bodies
    prompt = body["messages"][-1]["content"]
    assert prompt.startswith(DOCSTRING)
    assert json.dumps(SCHEMA) in prompt
    assert "tools" not in body
    if mode == "json_object":
        assert body["response_format"] == {"type": "json_object"}
    else:
        assert "response_format" not in body


def test_json_object_schema_sends_the_schema_for_constrained_decoding(
    server: LLMTestServer,
) -> None:
    out = complete(config(server, "openai", structured="json_object_schema"), ask())
    assert out.data["category"] == "networking"
    (body,) = server.bodies
    assert body["response_format"] == {"type": "json_object", "schema": SCHEMA}
    assert body["messages"][-1]["content"] == DOCSTRING  # the grammar carries the schema


@pytest.mark.parametrize("provider", PROVIDERS)
def test_plain_text_without_a_schema(server: LLMTestServer, provider: str) -> None:
    out = complete(config(server, provider), LLMRequest(prompt="Say hello. Then stop."))
    assert out.text == "Say hello."
    assert out.data is None
    (body,) = server.bodies
    assert "tools" not in body
    assert "response_format" not in body


@pytest.mark.parametrize("provider", PROVIDERS)
def test_an_invalid_answer_is_returned_as_data_not_raised(
    server: LLMTestServer, provider: str
) -> None:
    server.inject("invalid")
    out = complete(config(server, provider), ask())
    assert out.data is not None
    assert out.data["category"] not in CATEGORIES  # the caller validates and repairs


@pytest.mark.parametrize("provider", PROVIDERS)
def test_prose_instead_of_json_gives_data_none(server: LLMTestServer, provider: str) -> None:
    server.inject("text")
    out = complete(config(server, provider), ask())
    assert out.data is None
    assert out.text.startswith("I am not able")


def test_a_json_fence_or_surrounding_prose_is_tolerated() -> None:
    assert parse_json_answer('```json\n{"a": 1}\n```') == {"a": 1}
    assert parse_json_answer('Here it is: {"a": [1, 2]} hope it helps') == {"a": [1, 2]}
    assert parse_json_answer("no json here") is None


# -- errors and retries -----------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_429_with_retry_after_then_success(server: LLMTestServer, provider: str) -> None:
    server.inject(429, retry_after=2.5)
    out, sleeps = with_retries(config(server, provider), ask())
    assert out.attempts == 2
    assert out.data["category"] == "networking"
    assert sleeps == [2.5]  # jitter drew 0.5 s; Retry-After (2.5 s) is the floor
    assert server.requests == 2
    assert [c.status for c in server.calls] == [429, 200]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_429_error_carries_status_and_retry_after(server: LLMTestServer, provider: str) -> None:
    server.inject(429, retry_after=4)
    error = fails(config(server, provider), ask())
    assert error.status == 429
    assert error.retryable
    assert error.retry_after == 4.0
    assert "rate" in str(error).lower()
    assert error.body is not None and "error" in error.body


@pytest.mark.parametrize("provider", PROVIDERS)
def test_retry_after_as_an_http_date(server: LLMTestServer, provider: str) -> None:
    server.inject(429, retry_after=email.utils.formatdate(time.time() + 30, usegmt=True))
    error = fails(config(server, provider), ask())
    assert error.retry_after is not None
    assert 25 <= error.retry_after <= 31


@pytest.mark.parametrize("provider", PROVIDERS)
def test_529_overloaded_is_retryable(server: LLMTestServer, provider: str) -> None:
    server.inject(529, retry_after=1)
    error = fails(config(server, provider), ask())
    assert (error.status, error.retryable, error.retry_after) == (529, True, 1.0)
    assert "overloaded" in str(error).lower()
    server.inject(529, 529)
    out, sleeps = with_retries(config(server, provider), ask())
    assert out.attempts == 3
    assert sleeps == [1.0, 1.0]  # server's Retry-After beats backoffs 0.5 and 1.0


@pytest.mark.parametrize("provider", PROVIDERS)
def test_500_is_retryable_and_400_is_not(server: LLMTestServer, provider: str) -> None:
    server.inject(500)
    error = fails(config(server, provider), ask())
    assert (error.status, error.retryable) == (500, True)
    server.reset()
    server.inject(400)
    with pytest.raises(LLMError) as info:
        with_retries(config(server, provider), ask())
    assert (info.value.status, info.value.retryable, info.value.attempts) == (400, False, 1)
    assert server.requests == 1


@pytest.mark.parametrize("provider", PROVIDERS)
def test_retries_run_out_and_the_last_error_is_raised(server: LLMTestServer, provider: str) -> None:
    server.inject(500, 503, 500)
    with pytest.raises(LLMError) as info:
        with_retries(config(server, provider), ask(), RetryPolicy(max_retries=2, jitter=False))
    assert info.value.attempts == 3
    assert info.value.status == 500
    assert server.requests == 3


@pytest.mark.parametrize("provider", PROVIDERS)
def test_timeout_is_retryable(server: LLMTestServer, provider: str) -> None:
    server.inject("timeout")
    cfg = config(server, provider, timeout_s=0.2)
    error = fails(cfg, ask())
    assert error.retryable
    assert error.status is None
    assert "timeout_s=0.2" in str(error)
    server.inject("timeout")
    out, sleeps = with_retries(cfg, ask())
    assert out.attempts == 2
    assert len(sleeps) == 1


@pytest.mark.parametrize("provider", PROVIDERS)
def test_dropped_connection_is_retryable(server: LLMTestServer, provider: str) -> None:
    server.inject("disconnect")
    error = fails(config(server, provider), ask())
    assert error.retryable
    assert "connection" in str(error).lower()


@pytest.mark.parametrize("provider", PROVIDERS)
def test_malformed_body_is_a_retryable_error(server: LLMTestServer, provider: str) -> None:
    server.inject("malformed")
    error = fails(config(server, provider), ask())
    assert (error.status, error.retryable) == (200, True)
    assert "not JSON" in str(error)
    assert error.body is not None and error.body.startswith("{")
    server.inject("malformed")
    out, _ = with_retries(config(server, provider), ask())
    assert out.attempts == 2


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_wrong_key_is_a_final_401_that_never_shows_the_key(
    server: LLMTestServer, provider: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = "sk-wrong-key-ALSO-SECRET-77"
    monkeypatch.setenv(KEY_ENV, wrong)
    with pytest.raises(LLMError) as info:
        with_retries(config(server, provider), ask())
    error = info.value
    assert (error.status, error.retryable, error.attempts) == (401, False, 1)
    assert "api_key_env" in str(error)
    for text in (str(error), repr(error), error.body or "", repr(server.calls)):
        assert wrong not in text
        assert SECRET not in text


@pytest.mark.parametrize("provider", PROVIDERS)
def test_no_key_appears_in_anything_recorded_or_raised(
    server: LLMTestServer, provider: str
) -> None:
    cfg = config(server, provider, timeout_s=0.2)
    seen: list[str] = []
    for fault in (429, 529, 500, "timeout", "disconnect", "malformed"):
        server.inject(fault)
        seen.append(str(vars(fails(cfg, ask()))))
    out = complete(cfg, ask())
    seen += [repr(out), json.dumps(out.raw), out.text, repr(make_provider(cfg))]
    seen += [repr(server.calls), json.dumps(server.bodies)]
    assert all(SECRET not in text for text in seen)
    assert all(c.headers.get("authorization") == "***" for c in server.calls)


# -- keys and settings ------------------------------------------------------------------------


def test_anthropic_without_a_key_is_a_usage_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(UsageError, match="ANTHROPIC_API_KEY is not set") as info:
        make_provider(ProviderConfig(provider="anthropic", model="claude-x"))
    assert "api_key_env" in str(info.value)
    monkeypatch.delenv("MY_ANTHROPIC_KEY", raising=False)
    with pytest.raises(UsageError, match="MY_ANTHROPIC_KEY"):
        make_provider(ProviderConfig(model="claude-x", api_key_env="MY_ANTHROPIC_KEY"))


def test_openai_needs_a_key_for_api_openai_com_but_not_for_a_local_server(
    server: LLMTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(UsageError, match="OPENAI_API_KEY"):
        make_provider(ProviderConfig(provider="openai", model="gpt-x"))
    with LLMTestServer() as open_server:  # a local server that wants no key
        cfg = ProviderConfig(provider="openai", model="local", base_url=open_server.openai_url)
        assert complete(cfg, ask()).data["category"] == "networking"
        assert "authorization" not in open_server.calls[0].headers


def test_a_structured_mode_the_provider_lacks_is_a_usage_error(server: LLMTestServer) -> None:
    with pytest.raises(UsageError, match="structured: tool is not available with provider openai"):
        make_provider(config(server, "openai", structured="tool"))
    with pytest.raises(UsageError, match="json_schema is not available with provider anthropic"):
        make_provider(config(server, "anthropic", structured="json_schema"))


def test_an_unreachable_server_is_a_retryable_connection_error() -> None:
    with LLMTestServer() as gone:
        url = gone.openai_url
    error = fails(ProviderConfig(provider="openai", model="m", base_url=url), ask())
    assert error.retryable
    assert error.status is None


# -- the test server itself -------------------------------------------------------------------


def call(prompt: str, schema: dict[str, Any]) -> LLMCall:
    return LLMCall("openai", "m", None, prompt, ({"role": "user", "content": prompt},), schema,
                   "x", None, None, {})  # fmt: skip


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        (DOCSTRING, "networking"),
        ("Hash the password with a salt before storing the credential.", "security"),
        ("Run a SQL query and return the rows of the table.", "database"),
        ("Adds two numbers.", "other"),  # no evidence: the fallback value
    ],
)
def test_default_responder_picks_enums_by_keyword_overlap(prompt: str, expected: str) -> None:
    answer = default_responder(call(prompt, SCHEMA))
    assert isinstance(answer, dict)
    assert answer["category"] == expected


class Location(BaseModel):
    city: str
    floor: int = Field(ge=1, le=40)


class Ticket(BaseModel):
    """A pydantic model: $defs, $ref, anyOf with null, arrays, bounds, booleans, literals."""

    kind: Literal["billing", "shipping", "bug", "other"]
    urgency: Literal["high", "low", "medium"]
    summary: str = Field(min_length=5, max_length=60)
    refund_requested: bool
    tags: list[str] = Field(min_length=1, max_length=4)
    location: Location
    order_id: int | None = Field(default=None, ge=1000)
    score: float = Field(gt=0, lt=10)


def test_default_responder_answers_a_pydantic_schema_with_a_valid_instance() -> None:
    prompt = "My card was charged twice for order 48213 and I want a refund ASAP, this is urgent."
    answer = default_responder(call(prompt, Ticket.model_json_schema()))
    ticket = Ticket.model_validate(answer)
    assert ticket.kind == "billing"
    assert ticket.urgency == "high"
    assert ticket.refund_requested is True
    assert ticket.order_id == 48213  # numbers in range are taken from the prompt
    assert ticket.summary.startswith("My card was charged twice")


def test_the_invalid_fault_breaks_a_pydantic_schema(server: LLMTestServer) -> None:
    server.inject("invalid")
    request = LLMRequest(prompt="The parcel is late.", schema=Ticket.model_json_schema())
    out = complete(config(server, "openai"), request)
    with pytest.raises(ValidationError):
        Ticket.model_validate(out.data)


def test_concurrent_requests_are_all_answered(server: LLMTestServer) -> None:
    async def run() -> list[LLMReply]:
        provider = make_provider(config(server, "anthropic"))
        try:
            return await asyncio.gather(
                *(provider.complete(ask(f"{i}. {DOCSTRING}")) for i in range(24))
            )
        finally:
            await provider.aclose()

    replies = asyncio.run(run())
    assert server.requests == 24
    assert all(r.data["category"] == "networking" for r in replies)


def test_the_server_runs_from_the_command_line() -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "ductwork.ai.testserver", "--port", "0", "--latency-ms", "1"]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env) as proc:
        try:
            assert proc.stdout is not None
            first = proc.stdout.readline()
            assert "not a model" in first
            url = first.split(" on ", 1)[1].split()[0]
            assert url.startswith("http://127.0.0.1:")
            body = {"model": "m", "messages": [{"role": "user", "content": "Hi there."}]}
            answer = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=10).json()
            assert answer["choices"][0]["message"]["content"] == "Hi there."
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def test_the_python_example_in_the_docs_runs(capsys: pytest.CaptureFixture[str]) -> None:
    doc = Path(__file__).resolve().parents[2] / "docs" / "llm-providers.md"
    (source,) = re.findall(r"```python\n(.*?)```", doc.read_text(), re.S)
    exec(source, {"__name__": "docs_example"})
    assert capsys.readouterr().out.strip() == "{'data': {'topic': 'networking'}, 'attempts': 2}"

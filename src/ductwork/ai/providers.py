"""LLM providers: Anthropic through its official SDK, OpenAI-compatible servers through httpx.

A provider sends one :class:`~ductwork.ai.llm.LLMRequest` once and returns what came back, or
raises :class:`~ductwork.ai.llm.LLMError` saying whether trying again could help. It never
retries (the SDK's own retries are off): retries, rate limits and budgets belong to
:func:`ductwork.ai.limits.call_with_retries` and the stage, which see every attempt.

* **anthropic**: ``AsyncAnthropic`` with ``max_retries=0``. A structured answer is asked for as
  one forced tool (``tool_choice: {type: tool, name}``) whose ``input_schema`` is the schema;
  the tool call's ``input`` is the answer. ``temperature`` is not sent: the API version the
  SDK speaks (2026-10-21) rejects sampling parameters. ``structured: prompt`` instead puts the schema in
  the prompt and parses the text (for Anthropic-compatible servers without tool use).
* **openai** (OpenAI, vLLM, llama.cpp, Ollama...): ``POST {base_url}/chat/completions``.
  ``structured``: ``json_schema`` (``auto``) sends ``response_format: {type: json_schema,
  json_schema: {name, schema, strict: true}}``; ``json_object_schema`` sends ``{type:
  json_object, schema}`` (llama.cpp servers constrain decoding to the schema with it);
  ``json_object`` sends ``{type: json_object}``
  and the schema in the prompt; ``prompt`` only puts the schema in the prompt.

The answer is not validated here: ``data`` is the parsed JSON (or ``None`` when the model
wrote something that is not JSON) and the caller decides whether it fits the schema.

Keys come from the environment variable named by ``api_key_env`` (default
``ANTHROPIC_API_KEY`` / ``OPENAI_API_KEY``), are read once when the provider is made and are
never part of a reply, an error or a log line.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import anthropic
import httpx

from ductwork.ai.llm import LLMError, LLMReply, LLMRequest, Provider, ProviderConfig, Usage
from ductwork.connectors.http import retry_after_seconds
from ductwork.errors import UsageError

DEFAULT_KEY_ENV = {"anthropic": "ANTHROPIC_API_KEY", "openai": "OPENAI_API_KEY"}
OPENAI_BASE_URL = "https://api.openai.com/v1"
BODY_LIMIT = 2000  # characters of an error body kept in an LLMError
RETRYABLE_STATUS = frozenset({408, 409, 429})  # and every status >= 500 (529 = overloaded)
# 429s that no amount of waiting fixes: the account is out of money or quota
_FINAL_CODES = frozenset({"insufficient_quota", "enforced_spend_limit_reached", "billing_error"})
_MODES = {
    "anthropic": ("auto", "tool", "prompt"),
    "openai": ("auto", "json_schema", "json_object", "json_object_schema", "prompt"),
}
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
_FENCE = re.compile(r"^```[a-zA-Z0-9_-]*\s*\n?(.*?)\n?```$", re.S)


def make_provider(config: ProviderConfig) -> Provider:
    """The provider ``config`` names, with its key read from the environment now."""
    allowed = _MODES[config.provider]
    if config.structured not in allowed:
        msg = (
            f"structured: {config.structured} is not available with provider "
            f"{config.provider}; use one of {', '.join(allowed)}"
        )
        raise UsageError(msg)
    if config.provider == "anthropic":
        return AnthropicProvider(config)
    return OpenAIProvider(config)


def _read_key(config: ProviderConfig, *, required: bool) -> str | None:
    env = config.api_key_env or DEFAULT_KEY_ENV[config.provider]
    key = os.environ.get(env) or None
    if key is None and required:
        what = "Anthropic" if config.provider == "anthropic" else "OpenAI-compatible"
        msg = f"the {what} API key variable {env} is not set (model {config.model})"
        raise UsageError(
            msg,
            hint=f"Export {env} (or put it in .env), or name another variable in "
            "api_key_env, and run again.",
        )
    return key


def _is_loopback(base_url: str | None) -> bool:
    return base_url is not None and (urlsplit(base_url).hostname or "") in _LOOPBACK


def tool_name(name: str) -> str:
    """``name`` made acceptable as a tool / json_schema name (``[A-Za-z0-9_-]{1,64}``)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)[:64] or "answer"


def schema_instruction(schema: Mapping[str, Any]) -> str:
    """What ``prompt`` and ``json_object`` modes append to the user turn."""
    return (
        "\n\nAnswer with one JSON object and nothing else (no prose, no code fence). "
        "It must follow this JSON Schema:\n" + json.dumps(schema, ensure_ascii=False)
    )


def parse_json_answer(text: str) -> Any | None:
    """The JSON value in a model's text: the whole text, a ```json fence, or the first object."""
    stripped = text.strip()
    fenced = _FENCE.match(stripped)
    if fenced:
        stripped = fenced.group(1).strip()
    try:
        return json.loads(stripped)
    except ValueError:
        pass
    start = stripped.find("{")
    if start == -1:
        return None
    try:
        value, _ = json.JSONDecoder().raw_decode(stripped, start)
    except ValueError:
        return None
    return value


def retry_after_from(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date)."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(float(ms) / 1000.0, 0.0)
        except ValueError:
            pass
    return retry_after_seconds(headers.get("retry-after"))


def is_retryable(status: int, headers: Mapping[str, str], body: Any) -> bool:
    """Whether a status is worth trying again: 408, 409, 429, 5xx (and 529 overloaded).

    ``x-should-retry`` from the server wins; a 429 that says the quota or spend limit is
    exhausted is final.
    """
    should = (headers.get("x-should-retry") or "").strip().lower()
    if should in ("true", "false"):
        return should == "true"
    if isinstance(body, Mapping):
        error = body.get("error")
        if isinstance(error, Mapping):
            details = error.get("details")
            codes = {
                error.get("code"),
                error.get("type"),
                details.get("error_code") if isinstance(details, Mapping) else None,
            }
            if codes & _FINAL_CODES:
                return False
    return status in RETRYABLE_STATUS or status >= 500


def _truncate(text: str, secret: str | None) -> str:
    if secret:
        text = text.replace(secret, "***")
    return text if len(text) <= BODY_LIMIT else text[:BODY_LIMIT] + f"... ({len(text)} chars)"


def _error_message(body: Any, text: str) -> str:
    """The server's own words from an error body of either API."""
    if isinstance(body, Mapping):
        error = body.get("error")
        if isinstance(error, Mapping):
            kind = error.get("type") or error.get("code")
            message = error.get("message") or ""
            return f"{kind}: {message}" if kind else str(message)
        if isinstance(error, str):
            return error
        if isinstance(body.get("message"), str):
            return str(body["message"])
    return text.strip()[:200] or "(empty body)"


def _status_error(
    where: str, status: int, headers: Mapping[str, str], text: str, secret: str | None
) -> LLMError:
    try:
        body: Any = json.loads(text) if text else None
    except ValueError:
        body = None
    retryable = is_retryable(status, headers, body)
    message = _truncate(_error_message(body, text), secret)
    if status == 529:
        message = f"overloaded ({message})"
    hint = "" if retryable else _hint(status)
    return LLMError(
        f"{where} answered HTTP {status}: {message}{hint}",
        status=status,
        retryable=retryable,
        retry_after=retry_after_from(headers),
        body=_truncate(text, secret),
    )


def _hint(status: int) -> str:
    if status == 401:
        return " - check the API key in the variable named by api_key_env"
    if status == 403:
        return " - the key is not allowed to use this model or endpoint"
    if status == 404:
        return " - check model and base_url"
    if status in (400, 422):
        return " - the server rejected the request (see the body); check model, schema and extra"
    return ""


class AnthropicProvider:
    """Anthropic Messages API through the official SDK (``AsyncAnthropic``, no SDK retries)."""

    name = "anthropic"

    def __init__(self, config: ProviderConfig) -> None:
        self.config = config
        self.model = config.model
        self.base_url = config.base_url
        # local Anthropic-compatible servers (and the test server) need no key unless one is named
        required = not _is_loopback(config.base_url) or config.api_key_env is not None
        key = _read_key(config, required=required)
        self._secret = key
        self._client = anthropic.AsyncAnthropic(
            api_key=key or "unused-local",
            base_url=config.base_url,
            max_retries=0,
            timeout=config.timeout_s,
        )
        self._where = (
            f"anthropic ({config.model}{' at ' + config.base_url if config.base_url else ''})"
        )

    def __repr__(self) -> str:
        return f"AnthropicProvider(model={self.model!r}, base_url={self.base_url!r})"

    def body(self, request: LLMRequest) -> dict[str, Any]:
        """The Messages API body for ``request`` (what the SDK sends, minus its defaults)."""
        prompt = request.prompt
        structured = request.schema is not None and self.config.structured != "prompt"
        if request.schema is not None and not structured:
            prompt += schema_instruction(request.schema)
        messages = [{"role": m["role"], "content": m["content"]} for m in request.history]
        messages.append({"role": "user", "content": prompt})
        # no temperature: API version 2026-10-21 (what this SDK sends) rejects sampling params
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": request.max_tokens,
            "messages": messages,
        }
        if request.system:
            body["system"] = request.system
        if structured and request.schema is not None:
            name = tool_name(request.schema_name)
            body["tools"] = [
                {
                    "name": name,
                    "description": f"Record the answer ({request.schema_name}). "
                    "Always answer by calling this tool.",
                    "input_schema": dict(request.schema),
                }
            ]
            body["tool_choice"] = {"type": "tool", "name": name}
        return body

    async def complete(self, request: LLMRequest) -> LLMReply:
        body = self.body(request)
        params = {k: v for k, v in body.items() if k != "model"}
        start = time.perf_counter()
        try:
            response = await self._client.messages.with_raw_response.create(
                model=self.model,
                **params,
                extra_body=dict(request.extra) or None,
            )
            text = response.http_response.text
        except anthropic.APITimeoutError as exc:
            msg = f"{self._where} did not answer within timeout_s={self.config.timeout_s:g}"
            raise LLMError(msg, retryable=True) from exc
        except anthropic.APIConnectionError as exc:
            cause = exc.__cause__ or exc
            msg = f"{self._where}: connection failed ({type(cause).__name__}: {cause})"
            raise LLMError(_truncate(msg, self._secret), retryable=True) from exc
        except anthropic.APIStatusError as exc:
            headers = dict(exc.response.headers.items())
            raise _status_error(
                self._where, exc.status_code, headers, exc.response.text, self._secret
            ) from exc
        except anthropic.AnthropicError as exc:
            msg = f"{self._where}: {type(exc).__name__}: {exc}"
            raise LLMError(_truncate(msg, self._secret)) from exc
        latency = time.perf_counter() - start
        raw = _json_body(text, self._where, self._secret)
        return self._reply(raw, request, latency)

    def _reply(self, raw: dict[str, Any], request: LLMRequest, latency: float) -> LLMReply:
        content = raw.get("content")
        if not isinstance(content, list):
            msg = f"{self._where} answered 200 without a 'content' list"
            raise LLMError(msg, status=200, retryable=True, body=_truncate(json.dumps(raw), None))
        blocks = [b for b in content if isinstance(b, Mapping)]
        tools = [b for b in blocks if b.get("type") == "tool_use"]
        texts = "".join(str(b.get("text", "")) for b in blocks if b.get("type") == "text")
        data: Any | None = None
        if request.schema is not None and tools:
            name = tool_name(request.schema_name)
            call = next((b for b in tools if b.get("name") == name), tools[0])
            data = call.get("input")
            text = json.dumps(data, ensure_ascii=False)
        else:
            text = texts
            if request.schema is not None:
                data = parse_json_answer(texts)
        usage = raw.get("usage") if isinstance(raw.get("usage"), Mapping) else {}
        assert isinstance(usage, Mapping)
        inputs = sum(
            _int(usage.get(k))
            for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
        )
        return LLMReply(
            text=text,
            data=data,
            usage=Usage(input_tokens=inputs, output_tokens=_int(usage.get("output_tokens"))),
            model=str(raw.get("model") or self.model),
            stop_reason=_str_or_none(raw.get("stop_reason")),
            raw=raw,
            latency_s=latency,
        )

    async def aclose(self) -> None:
        await self._client.close()


class OpenAIProvider:
    """OpenAI-compatible chat completions over plain httpx (OpenAI, vLLM, llama.cpp, Ollama)."""

    name = "openai"

    def __init__(self, config: ProviderConfig) -> None:
        self.config = config
        self.model = config.model
        self.base_url = config.base_url
        # a key is needed for api.openai.com or when a variable was named; local servers need none
        required = config.base_url is None or config.api_key_env is not None
        key = _read_key(config, required=required)
        self._secret = key
        self._url = (config.base_url or OPENAI_BASE_URL).rstrip("/") + "/chat/completions"
        headers = {"content-type": "application/json", "accept": "application/json"}
        if key:
            headers["authorization"] = f"Bearer {key}"
        self._client = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(config.timeout_s),
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
        )
        self._where = f"openai ({config.model} at {self._url})"

    def __repr__(self) -> str:
        return f"OpenAIProvider(model={self.model!r}, base_url={self.base_url!r})"

    def body(self, request: LLMRequest) -> dict[str, Any]:
        """The chat-completions body for ``request``."""
        mode = "json_schema" if self.config.structured == "auto" else self.config.structured
        prompt = request.prompt
        if request.schema is not None and mode in ("json_object", "prompt"):
            prompt += schema_instruction(request.schema)
        messages: list[dict[str, Any]] = []
        if request.system:
            messages.append({"role": "system", "content": request.system})
        messages.extend({"role": m["role"], "content": m["content"]} for m in request.history)
        messages.append({"role": "user", "content": prompt})
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "temperature": request.temperature,
        }
        if "max_completion_tokens" not in request.extra:
            body["max_tokens"] = request.max_tokens
        if request.schema is not None and mode == "json_schema":
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {
                    "name": tool_name(request.schema_name),
                    "schema": dict(request.schema),
                    "strict": True,
                },
            }
        elif request.schema is not None and mode == "json_object":
            body["response_format"] = {"type": "json_object"}
        elif request.schema is not None and mode == "json_object_schema":
            # llama-cpp-python's server turns the schema into a grammar: valid by construction
            body["response_format"] = {"type": "json_object", "schema": dict(request.schema)}
        body.update(request.extra)
        return body

    async def complete(self, request: LLMRequest) -> LLMReply:
        body = self.body(request)
        start = time.perf_counter()
        try:
            response = await self._client.post(self._url, json=body)
        except httpx.TimeoutException as exc:
            msg = f"{self._where} did not answer within timeout_s={self.config.timeout_s:g}"
            raise LLMError(msg, retryable=True) from exc
        except (httpx.UnsupportedProtocol, httpx.LocalProtocolError) as exc:
            msg = f"{self._where}: {type(exc).__name__}: {exc} - check base_url"
            raise LLMError(_truncate(msg, self._secret)) from exc
        except httpx.TransportError as exc:
            msg = f"{self._where}: connection failed ({type(exc).__name__}: {exc})"
            raise LLMError(_truncate(msg, self._secret), retryable=True) from exc
        latency = time.perf_counter() - start
        if response.status_code >= 400:
            headers = dict(response.headers.items())
            raise _status_error(
                self._where, response.status_code, headers, response.text, self._secret
            )
        raw = _json_body(response.text, self._where, self._secret)
        return self._reply(raw, request, latency)

    def _reply(self, raw: dict[str, Any], request: LLMRequest, latency: float) -> LLMReply:
        choices = raw.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], Mapping):
            msg = f"{self._where} answered 200 without choices[0]"
            raise LLMError(msg, status=200, retryable=True, body=_truncate(json.dumps(raw), None))
        choice = choices[0]
        message = choice.get("message") if isinstance(choice.get("message"), Mapping) else {}
        assert isinstance(message, Mapping)
        content = message.get("content")
        text = content if isinstance(content, str) else ""
        data = parse_json_answer(text) if request.schema is not None else None
        usage = raw.get("usage") if isinstance(raw.get("usage"), Mapping) else {}
        assert isinstance(usage, Mapping)
        return LLMReply(
            text=text,
            data=data,
            usage=Usage(
                input_tokens=_int(usage.get("prompt_tokens")),
                output_tokens=_int(usage.get("completion_tokens")),
            ),
            model=str(raw.get("model") or self.model),
            stop_reason=_str_or_none(choice.get("finish_reason")),
            raw=raw,
            latency_s=latency,
        )

    async def aclose(self) -> None:
        await self._client.aclose()


def _json_body(text: str, where: str, secret: str | None) -> dict[str, Any]:
    """The 200 body as a JSON object; a broken body is retryable (it is usually cut short)."""
    try:
        raw = json.loads(text)
    except ValueError as exc:
        msg = f"{where} answered 200 with a body that is not JSON ({exc})"
        raise LLMError(msg, status=200, retryable=True, body=_truncate(text, secret)) from exc
    if not isinstance(raw, dict):
        msg = f"{where} answered 200 with JSON that is not an object"
        raise LLMError(msg, status=200, retryable=True, body=_truncate(text, secret))
    return raw


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None

"""Provider-neutral types of an LLM call: request, reply, error, provider, provider settings.

One :class:`LLMRequest` is one user turn (plus an optional system prompt) that asks for one
structured answer: ``schema`` is the JSON Schema of that answer (an object). A provider turns
it into its API's shape (Anthropic: a forced tool call; OpenAI-compatible: ``response_format``
with a JSON schema, or a JSON-only instruction), sends it ONCE and returns an
:class:`LLMReply` or raises :class:`LLMError`. Retries, rate limits, the response cache and
budgets live above the provider (:mod:`ductwork.ai.limits`, :mod:`ductwork.ai.enrich`).

No secret is ever part of a request, a cache key or a reply: API keys are read from the
environment by the provider when it is made.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

ProviderName = Literal["anthropic", "openai"]
StructuredMode = Literal[
    "auto", "tool", "json_schema", "json_object", "json_object_schema", "prompt"
]


@dataclass(frozen=True)
class LLMRequest:
    """One call: a rendered prompt and the structure of the answer wanted."""

    prompt: str
    system: str | None = None
    schema: Mapping[str, Any] | None = None  # JSON Schema (type: object) of the answer
    schema_name: str = "answer"
    max_tokens: int = 1024
    temperature: float = 0.0
    # earlier turns, for a repair request: [{"role": "user"|"assistant", "content": str}, ...]
    history: tuple[Mapping[str, str], ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)  # provider body fields (top_p, ...)

    def to_dict(self) -> dict[str, Any]:
        return {
            "system": self.system,
            "history": [dict(m) for m in self.history],
            "prompt": self.prompt,
            "schema": self.schema,
            "schema_name": self.schema_name,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "extra": dict(self.extra),
        }

    def cache_key(self, provider: str, model: str, base_url: str | None = None) -> str:
        """sha256 of everything that decides the answer (never a secret)."""
        doc = {"provider": provider, "model": model, "base_url": base_url, **self.to_dict()}
        blob = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0

    @property
    def total(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True)
class LLMReply:
    """An answer as received (``raw``) and as understood (``text``, ``data``)."""

    text: str  # the answer's text (for a tool call: the tool input as JSON)
    data: Any | None  # the structured answer parsed from JSON, or None when it was not JSON
    usage: Usage
    model: str  # the model that answered, as the server reported it
    stop_reason: str | None
    raw: Mapping[str, Any]  # the response body as received
    attempts: int = 1  # HTTP attempts it took (set by the retry loop)
    latency_s: float = 0.0


class LLMError(Exception):
    """A call that failed. ``retryable`` errors (429, 5xx, overloaded, timeouts) may be retried."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
        body: str | None = None,
        attempts: int = 1,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after
        self.body = body
        self.attempts = attempts


class Provider(Protocol):
    """Sends one request, once. Made by :func:`ductwork.ai.providers.make_provider`."""

    name: str  # "anthropic" | "openai"
    model: str
    base_url: str | None

    async def complete(self, request: LLMRequest) -> LLMReply: ...

    async def aclose(self) -> None: ...


class ProviderConfig(BaseModel):
    """Where and how to call a model; the same fields appear in a generate stage's params."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    provider: ProviderName = "anthropic"
    model: str = Field(min_length=1)
    # OpenAI-compatible servers (vLLM, llama.cpp, Ollama, OpenAI) and Anthropic-compatible ones
    base_url: str | None = None
    # the NAME of the env var that holds the key (never the key): default ANTHROPIC_API_KEY for
    # anthropic, OPENAI_API_KEY for openai (optional there: local servers need none)
    api_key_env: str | None = None
    timeout_s: float = Field(default=60.0, gt=0)
    structured: StructuredMode = "auto"


def estimate_tokens(text: str) -> int:
    """A provider-neutral token estimate: ~4 characters a token (English prose and JSON).

    Used for dry runs, budgets before a call and compressing to a budget; real counts come
    from the provider's ``usage`` and are what the run records.
    """
    return math.ceil(len(text) / 4) if text else 0

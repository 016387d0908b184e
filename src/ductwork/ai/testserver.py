"""A local HTTP server that speaks the Anthropic Messages and OpenAI chat-completions APIs.

It exists so that the LLM code paths run for real — HTTP, the official SDK, error mapping,
retries, rate limits, concurrency — in tests, benchmarks and offline demos, with no network and
no key. It is **not a model**: the default responder answers any JSON Schema with a small,
deterministic keyword heuristic (an enum value wins by keyword overlap with the prompt, helped by
a little lexicon, so a docstring about sockets and HTTP gets ``networking``), strings come from
the prompt's first sentence, numbers are taken from the prompt when in range. Good enough to
make a pipeline's output look plausible; never evidence about a real model's quality.

* ``POST /v1/messages`` (Anthropic): forced tool use (``tools`` + ``tool_choice``) answers with a
  ``tool_use`` block whose ``input`` follows the tool's ``input_schema``; without tools, a text
  block. Point the SDK at :attr:`LLMTestServer.anthropic_url`.
* ``POST /v1/chat/completions`` (OpenAI-compatible): ``response_format`` ``json_schema`` or
  ``json_object`` (or a JSON Schema quoted in the prompt) gets a JSON ``content``. Point a
  client at :attr:`LLMTestServer.openai_url` (ends in ``/v1``).
* Faults, applied to the next requests in order: ``server.inject(429, 529, 500, "timeout",
  "disconnect", "malformed", "invalid", "text", retry_after=2)``; or at random with a seeded
  rate (``fault_rates={429: 0.05}``). Errors use each API's error body and carry
  ``Retry-After`` / ``retry-after-ms`` on 429 and 529.
* ``latency_s`` is slept per request in the request's own thread, so concurrent requests
  overlap instead of queueing.
* ``requests``, ``by_api``, ``bodies`` and ``calls`` count and record what arrived
  (authorization headers redacted). ``api_key=`` makes it check the key like a real server.

Run one in the foreground: ``python -m ductwork.ai.testserver --port 8765 --latency-ms 50``
(binds 127.0.0.1 only).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import re
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from ductwork.ai.llm import estimate_tokens

Fault = int | str
FAULT_NAMES = ("timeout", "disconnect", "malformed", "invalid", "text")
_HOST = "127.0.0.1"
_REDACTED = "***"
_SECRET_HEADERS = {"authorization", "x-api-key", "api-key", "proxy-authorization"}


@dataclass(frozen=True)
class LLMCall:
    """What a responder sees of one request, whichever API it came through."""

    api: str  # "anthropic" | "openai"
    model: str
    system: str | None
    prompt: str  # the text of the last user turn
    messages: tuple[Mapping[str, Any], ...]  # every turn as sent (system excluded)
    schema: Mapping[str, Any] | None  # the JSON Schema the answer must follow, if any
    schema_name: str | None  # the tool (Anthropic) or json_schema (OpenAI) name, if one was sent
    max_tokens: int | None
    temperature: float | None
    body: Mapping[str, Any]  # the request body as received


Answer = Mapping[str, Any] | str
Responder = Callable[[LLMCall], Answer]


@dataclass(frozen=True)
class RecordedCall:
    api: str
    path: str
    body: Any  # the parsed JSON body (or the text when it was not JSON)
    headers: Mapping[str, str]  # secrets redacted
    fault: Fault | None
    status: int | None  # None when the connection was dropped


@dataclass
class _Pending:
    fault: Fault
    retry_after: float | str | None


@dataclass
class _State:
    lock: threading.Lock = field(default_factory=threading.Lock)
    faults: list[_Pending] = field(default_factory=list)
    calls: list[RecordedCall] = field(default_factory=list)
    by_api: dict[str, int] = field(default_factory=dict)
    requests: int = 0
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))


class LLMTestServer:
    """A real HTTP server on 127.0.0.1 in a daemon thread; use it as a context manager.

    ``port=0`` takes a free port. ``latency_s`` is added to every request. ``hang_s`` is how long
    a ``"timeout"`` fault holds the request before dropping the connection (keep it above the
    client's timeout). ``retry_after_s`` is the Retry-After sent with an injected 429/529 when
    :meth:`inject` gives none (``None``: send no header).
    """

    def __init__(
        self,
        *,
        port: int = 0,
        latency_s: float = 0.0,
        responder: Responder | None = None,
        api_key: str | None = None,
        hang_s: float = 10.0,
        retry_after_s: float | None = 1.0,
        fault_rates: Mapping[Fault, float] | None = None,
        seed: int = 0,
    ) -> None:
        for fault in fault_rates or {}:
            _check_fault(fault)
        self.latency_s = latency_s
        self.responder: Responder = responder or default_responder
        self.hang_s = hang_s
        self.retry_after_s = retry_after_s
        self.fault_rates = dict(fault_rates or {})
        self._api_key = api_key
        self._random = random.Random(seed)
        self._state = _State()
        self._stopping = threading.Event()
        self._httpd = _Server((_HOST, port), _Handler)
        self._httpd.owner = self
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> LLMTestServer:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._httpd.serve_forever,
                kwargs={"poll_interval": 0.05},
                name="llm-test-server",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> LLMTestServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- addresses --------------------------------------------------------------------------
    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://{_HOST}:{self.port}"

    @property
    def anthropic_url(self) -> str:
        """The ``base_url`` for the Anthropic SDK (it appends ``/v1/messages``)."""
        return self.base_url

    @property
    def openai_url(self) -> str:
        """The ``base_url`` for OpenAI-compatible clients (they append ``/chat/completions``)."""
        return f"{self.base_url}/v1"

    # -- faults and records -----------------------------------------------------------------
    def inject(self, *faults: Fault, retry_after: float | str | None = None) -> None:
        """Queue faults for the next requests, one per request, in order.

        An int is an HTTP status answered with that API's error body (429 and 529 carry
        Retry-After); ``"timeout"`` holds the request for ``hang_s`` then drops it;
        ``"disconnect"`` drops it at once; ``"malformed"`` is a 200 whose body is broken JSON;
        ``"invalid"`` is a 200 whose answer breaks the schema; ``"text"`` is a 200 whose answer
        is prose instead of JSON. ``retry_after`` (seconds, or a string sent verbatim such as
        an HTTP date) overrides ``retry_after_s`` for these faults.
        """
        for fault in faults:
            _check_fault(fault)
        with self._state.lock:
            self._state.faults.extend(_Pending(f, retry_after) for f in faults)

    @property
    def pending_faults(self) -> int:
        with self._state.lock:
            return len(self._state.faults)

    @property
    def requests(self) -> int:
        with self._state.lock:
            return self._state.requests

    @property
    def by_api(self) -> dict[str, int]:
        with self._state.lock:
            return dict(self._state.by_api)

    @property
    def calls(self) -> list[RecordedCall]:
        with self._state.lock:
            return list(self._state.calls)

    @property
    def bodies(self) -> list[Any]:
        """The request bodies received, in arrival order."""
        with self._state.lock:
            return [c.body for c in self._state.calls]

    def reset(self) -> None:
        """Forget the records and any queued faults."""
        with self._state.lock:
            self._state.faults.clear()
            self._state.calls.clear()
            self._state.by_api.clear()
            self._state.requests = 0

    # -- used by the handler ----------------------------------------------------------------
    def _next_fault(self) -> _Pending | None:
        with self._state.lock:
            if self._state.faults:
                return self._state.faults.pop(0)
            for fault, rate in self.fault_rates.items():
                if self._random.random() < rate:
                    return _Pending(fault, None)
        return None

    def _record(self, call: RecordedCall) -> int:
        with self._state.lock:
            self._state.requests += 1
            self._state.by_api[call.api] = self._state.by_api.get(call.api, 0) + 1
            self._state.calls.append(call)
            return next(self._state.ids)

    def _wait(self, seconds: float) -> None:
        if seconds > 0:
            self._stopping.wait(seconds)


def _check_fault(fault: Fault) -> None:
    if isinstance(fault, bool) or not isinstance(fault, int | str):
        msg = f"unknown fault {fault!r}: use an HTTP status (429, 500, 529...) or one of {FAULT_NAMES}"
        raise ValueError(msg)
    if isinstance(fault, int) and not 400 <= fault <= 599:
        msg = f"fault status {fault} is not an HTTP error status (400-599)"
        raise ValueError(msg)
    if isinstance(fault, str) and fault not in FAULT_NAMES:
        msg = f"unknown fault {fault!r}: use an HTTP status or one of {FAULT_NAMES}"
        raise ValueError(msg)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # benchmarks open dozens of connections at once
    owner: LLMTestServer


_ROUTES = {"/v1/messages": "anthropic", "/v1/chat/completions": "openai"}
_ANTHROPIC_ERRORS = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
# from this Messages API version on, sampling parameters are rejected (as the real API does)
_NO_SAMPLING_VERSION = "2026-10-21"
_OPENAI_ERRORS = {
    400: "invalid_request_error",
    401: "invalid_api_key",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_exceeded",
    503: "service_unavailable",
}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: clients pool connections
    # headers and body are two writes: without TCP_NODELAY, Nagle + delayed ACK add ~40 ms
    disable_nagle_algorithm = True
    server: _Server
    timeout = 60  # an idle keep-alive connection is closed after this

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        if self.path.rstrip("/") in ("", "/health"):
            self._send_json(200, {"status": "ok", "apis": sorted(_ROUTES.values())})
        else:
            self._send_json(404, {"error": {"message": f"no route GET {self.path}"}})

    def do_POST(self) -> None:
        owner = self.server.owner
        path = self.path.split("?", 1)[0].rstrip("/")
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        api = _ROUTES.get(path, "unknown")
        try:
            body: Any = json.loads(raw or b"null")
        except ValueError:
            body = raw.decode("utf-8", "replace")
        headers = {
            k.lower(): (_REDACTED if k.lower() in _SECRET_HEADERS else v)
            for k, v in self.headers.items()
        }
        pending = owner._next_fault() if api != "unknown" else None
        fault = pending.fault if pending else None
        problem = None
        if api != "unknown":
            version = self.headers.get("anthropic-version") or ""
            problem = self._auth_problem(api) or _shape_problem(api, body, version)
        status: int | None = 200
        if api == "unknown":
            status = 404
        elif fault in ("timeout", "disconnect"):
            status = None
        elif isinstance(fault, int):
            status = fault
        elif problem is not None:
            status = problem[0]
        n = owner._record(RecordedCall(api, path, body, headers, fault, status))
        owner._wait(owner.latency_s)
        if api == "unknown":
            self._send_json(404, {"error": {"message": f"no route POST {path}"}})
            return
        if fault in ("timeout", "disconnect"):
            if fault == "timeout":
                owner._wait(owner.hang_s)
            self.close_connection = True
            return
        if isinstance(fault, int):
            assert pending is not None
            self._send_error(api, fault, _fault_message(fault), pending.retry_after)
            return
        if problem is not None:
            self._send_error(api, problem[0], problem[1], None)
            return
        assert isinstance(body, dict)
        call = _summarise(api, body)
        try:
            answer = owner.responder(call)
        except Exception as exc:  # a responder bug is a 500 the client can see
            self._send_error(api, 500, f"responder failed: {type(exc).__name__}: {exc}", None)
            return
        if fault == "invalid":
            answer = break_answer(answer, call.schema)
        elif fault == "text":
            answer = "I am not able to answer that in the requested format."
        if api == "anthropic":
            reply = _anthropic_reply(call, answer, n)
        else:
            reply = _openai_reply(call, answer, n)
        if fault == "malformed":
            text = json.dumps(reply)
            self._send_bytes(200, text[: max(len(text) // 2, 1)].encode(), "application/json")
            return
        self._send_json(200, reply)

    def _auth_problem(self, api: str) -> tuple[int, str] | None:
        want = self.server.owner._api_key
        if want is None:
            return None
        auth = self.headers.get("authorization") or ""
        bearer = auth[7:] if auth.lower().startswith("bearer ") else None
        # Anthropic takes x-api-key; its newer SDKs send the key as a bearer token
        got = {bearer, self.headers.get("x-api-key")} if api == "anthropic" else {bearer}
        if want not in got:
            return 401, "invalid x-api-key" if api == "anthropic" else "Incorrect API key provided."
        return None

    def _send_error(
        self, api: str, status: int, message: str, retry_after: float | str | None
    ) -> None:
        headers: dict[str, str] = {}
        if status in (429, 529):
            wait = retry_after if retry_after is not None else self.server.owner.retry_after_s
            if isinstance(wait, str):
                headers["retry-after"] = wait
            elif wait is not None:
                headers["retry-after"] = str(math.ceil(wait))
                headers["retry-after-ms"] = str(round(wait * 1000))
        if api == "anthropic":
            kind = _ANTHROPIC_ERRORS.get(
                status, "api_error" if status >= 500 else "invalid_request_error"
            )
            body: dict[str, Any] = {
                "type": "error",
                "error": {"type": kind, "message": message},
                "request_id": "req_test",
            }
        else:
            kind = _OPENAI_ERRORS.get(
                status, "server_error" if status >= 500 else "invalid_request_error"
            )
            body = {"error": {"message": message, "type": kind, "param": None, "code": kind}}
        self._send_json(status, body, headers)

    def _send_json(self, status: int, body: Any, headers: Mapping[str, str] | None = None) -> None:
        self._send_bytes(status, json.dumps(body).encode("utf-8"), "application/json", headers)

    def _send_bytes(
        self,
        status: int,
        data: bytes,
        content_type: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        try:
            self.send_response(status)
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (its timeout)
            self.close_connection = True


def _fault_message(status: int) -> str:
    return {
        429: "Rate limited (injected by the LLM test server).",
        500: "Internal server error (injected by the LLM test server).",
        529: "Overloaded (injected by the LLM test server).",
    }.get(status, f"Error {status} (injected by the LLM test server).")


def _shape_problem(api: str, body: Any, version: str = "") -> tuple[int, str] | None:
    """The 400 a real server would give for a request missing what its API requires."""
    if not isinstance(body, dict):
        return 400, "the request body is not a JSON object"
    need = ("model", "max_tokens", "messages") if api == "anthropic" else ("model", "messages")
    for key in need:
        if key not in body:
            return 400, f"{key}: Field required"
    messages = body["messages"]
    if not isinstance(messages, list) or not messages:
        return 400, "messages: at least one message is required"
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            return 400, f"messages.{i}: needs 'role' and 'content'"
    if api == "anthropic":
        if not isinstance(body["max_tokens"], int) or body["max_tokens"] < 1:
            return 400, "max_tokens: must be a positive integer"
        if version >= _NO_SAMPLING_VERSION:
            for key in ("temperature", "top_p", "top_k"):
                if key in body:
                    return 400, f"{key}: Extra inputs are not permitted"
        choice = body.get("tool_choice")
        if isinstance(choice, dict) and choice.get("type") == "tool":
            names = [t.get("name") for t in body.get("tools") or [] if isinstance(t, dict)]
            if choice.get("name") not in names:
                return 400, f"tool_choice: tool {choice.get('name')!r} is not in tools"
    return None


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for block in content:
            if isinstance(block, dict):
                if isinstance(block.get("text"), str):
                    parts.append(block["text"])
                elif "content" in block:
                    parts.append(_text_of(block["content"]))
                elif "input" in block:
                    parts.append(json.dumps(block["input"]))
        return "\n".join(parts)
    return ""


def _summarise(api: str, body: Mapping[str, Any]) -> LLMCall:
    messages = [m for m in body["messages"] if isinstance(m, dict)]
    if api == "anthropic":
        system = _text_of(body.get("system")) or None
        turns = messages
    else:
        system = "\n".join(_text_of(m["content"]) for m in messages if m.get("role") == "system")
        system = system or None
        turns = [m for m in messages if m.get("role") != "system"]
    users = [m for m in turns if m.get("role") == "user"]
    prompt = _text_of(users[-1]["content"]) if users else ""
    schema: Mapping[str, Any] | None = None
    name: str | None = None
    if api == "anthropic":
        tools = [t for t in body.get("tools") or [] if isinstance(t, dict)]
        choice = body.get("tool_choice") or {}
        if tools and choice.get("type") != "none":
            tool = next((t for t in tools if t.get("name") == choice.get("name")), tools[0])
            schema = tool.get("input_schema") or {"type": "object"}
            name = str(tool.get("name") or "answer")
        else:  # a schema told in words: the answer is JSON text
            schema = schema_in_text(prompt) or schema_in_text(system or "")
    else:
        fmt = body.get("response_format") or {}
        if fmt.get("type") == "json_schema":
            spec = fmt.get("json_schema") or {}
            schema, name = spec.get("schema") or {"type": "object"}, spec.get("name")
        elif fmt.get("type") == "json_object" and isinstance(fmt.get("schema"), dict):
            schema = fmt["schema"]  # llama.cpp servers' schema-constrained JSON
        else:
            schema = schema_in_text(prompt) or schema_in_text(system or "")
            if schema is None and fmt.get("type") == "json_object":
                schema = {"type": "object", "properties": {"answer": {"type": "string"}}}
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
    return LLMCall(
        api=api,
        model=str(body["model"]),
        system=system,
        prompt=prompt,
        messages=tuple(turns),
        schema=schema,
        schema_name=name,
        max_tokens=max_tokens if isinstance(max_tokens, int) else None,
        temperature=body.get("temperature"),
        body=body,
    )


def schema_in_text(text: str) -> dict[str, Any] | None:
    """The last JSON Schema quoted in a prompt (for servers told the schema in words)."""
    found: dict[str, Any] | None = None
    decoder = json.JSONDecoder()
    i = text.find("{")
    while i != -1:
        try:
            value, end = decoder.raw_decode(text, i)
        except ValueError:
            i = text.find("{", i + 1)
            continue
        if isinstance(value, dict) and ("properties" in value or value.get("type") == "object"):
            found = value
        i = text.find("{", end)
    return found


def _usage_in(call: LLMCall) -> int:
    parts = [call.system or "", *(_text_of(m.get("content")) for m in call.messages)]
    if call.schema is not None:
        parts.append(json.dumps(call.schema))
    return max(estimate_tokens("\n".join(parts)), 1)


def _anthropic_reply(call: LLMCall, answer: Answer, n: int) -> dict[str, Any]:
    if call.schema_name is not None and not isinstance(answer, str):  # a tool was asked for
        content: list[dict[str, Any]] = [
            {
                "type": "tool_use",
                "id": f"toolu_test_{n:06d}",
                "name": call.schema_name,
                "input": dict(answer),
            }
        ]
        out, stop = json.dumps(answer), "tool_use"
    else:
        out = answer if isinstance(answer, str) else json.dumps(answer)
        content, stop = [{"type": "text", "text": out}], "end_turn"
    return {
        "id": f"msg_test_{n:06d}",
        "type": "message",
        "role": "assistant",
        "model": call.model,
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": {"input_tokens": _usage_in(call), "output_tokens": max(estimate_tokens(out), 1)},
    }


def _openai_reply(call: LLMCall, answer: Answer, n: int) -> dict[str, Any]:
    out = answer if isinstance(answer, str) else json.dumps(answer)
    prompt_tokens, completion_tokens = _usage_in(call), max(estimate_tokens(out), 1)
    return {
        "id": f"chatcmpl-test-{n:06d}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": call.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": out},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


# -- the default responder: a deterministic keyword heuristic ---------------------------------

# concept -> words that suggest it (stems are compared, so "sockets" matches "socket")
LEXICON: dict[str, str] = {
    "network": "socket http https tcp udp url request response server client download upload "
    "dns port proxy api endpoint ssl tls websocket host fetch rest packet",
    "database": "sql query table row column index transaction sqlite postgres mysql schema "
    "cursor orm insert select commit migration record",
    "file": "path directory folder read write disk filesystem open stream io csv parquet "
    "storage bytes buffer",
    "security": "password token encrypt decrypt hash auth authentication permission secret key "
    "certificate signature crypto vulnerability login credential",
    "test": "assert mock fixture pytest unittest expect verify check",
    "math": "number sum matrix vector compute calculate integer float average mean statistic "
    "algebra equation numeric",
    "text": "string parse format regex word character encode decode unicode template markdown "
    "json yaml xml",
    "time": "date datetime timestamp clock timezone duration schedule calendar hour minute day",
    "concurrency": "thread async await lock parallel process queue worker pool concurrent "
    "asyncio semaphore future task",
    "log": "logging logger debug warning trace message output print",
    "config": "setting option environment env configuration default parameter flag argument",
    "ui": "button window widget render display screen click view layout css html gui "
    "interface frontend",
    "ml": "model train predict feature dataset learning neural tensor classifier regression "
    "embedding inference torch sklearn",
    "image": "pixel photo picture png jpeg resize color colour",
    "billing": "charge charged invoice payment refund price card pay subscription money bill "
    "cost credit",
    "shipping": "delivery package parcel shipment tracking courier arrive late address",
    "bug": "crash error broken fail exception wrong fix issue defect traceback",
    "feature": "add support request new enhancement wish please",
    "question": "how what why where when help wonder",
    "positive": "good great love excellent happy thanks awesome nice perfect fast recommend "
    "delighted pleased best",
    "negative": "bad terrible hate awful angry broken slow worst disappointed refund poor "
    "useless annoying late",
    "high": "urgent asap immediately critical outage down emergency blocker severe",
    "low": "minor cosmetic eventually whenever small typo trivial",
    "yes": "true correct affirmative",
    "no": "false none never without",
}
_FALLBACKS = ("other", "unknown", "none", "neutral", "misc", "general", "medium", "unclear")
_STOPWORD_TEXT = (
    "a an and are as at be by for from has have in into is it its of on or that the this to "
    "was were will with which you your we our they their it's not but if then than so such "
    "can could should would may might must do does did been being these those there here "
    "about above after again all also any each few more most other some only own same too "
    "very just one two return returns given following answer json schema field"
)
_STOPWORDS = frozenset(_STOPWORD_TEXT.split())
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_SUFFIXES = ("ations", "ation", "ings", "ing", "ers", "er", "ies", "es", "ed", "ly", "s", "e")


def stem(word: str) -> str:
    """A crude stem: enough for "sockets"/"socket" and "networking"/"network" to meet."""
    w = word.lower()
    for suffix in _SUFFIXES:
        if w.endswith(suffix) and len(w) - len(suffix) >= 3:
            w = w[: -len(suffix)]
            break
    return w[:7]


def _stems(text: str) -> list[str]:
    return [stem(w) for w in _WORD.findall(text.lower()) if w not in _STOPWORDS]


_LEXICON_STEMS: dict[str, frozenset[str]] = {
    stem(concept): frozenset(stem(w) for w in _WORD.findall(f"{concept} {words}"))
    for concept, words in LEXICON.items()
}


def _value_stems(value: Any, description: str | None) -> set[str]:
    """The words that vote for an enum value: its own words, its lexicon entry, its description."""
    words = set(_stems(str(value).replace("_", " ").replace("-", " ")))
    for w in list(words):
        for concept, related in _LEXICON_STEMS.items():
            short = min(len(w), len(concept))
            if w == concept or (short >= 4 and (w.startswith(concept) or concept.startswith(w))):
                words |= related
    if description:
        words |= set(_stems(description))
    return words


def enum_scores(
    values: Sequence[Any], text: str, descriptions: Sequence[str | None] = ()
) -> list[int]:
    """How many words of ``text`` vote for each value (by stem)."""
    counts: dict[str, int] = {}
    for s in _stems(text):
        counts[s] = counts.get(s, 0) + 1
    scores = []
    for i, value in enumerate(values):
        desc = descriptions[i] if i < len(descriptions) else None
        scores.append(sum(counts.get(s, 0) for s in _value_stems(value, desc)))
    return scores


def choose_enum(values: Sequence[Any], text: str, descriptions: Sequence[str | None] = ()) -> Any:
    """The value with the most keyword votes; a fallback ("other", "unknown"...) when none."""
    if not values:
        return None
    scores = enum_scores(values, text, descriptions)
    best = max(scores)
    if best == 0:
        for v in values:
            if str(v).lower() in _FALLBACKS:
                return v
        return values[0]
    return values[scores.index(best)]


def first_sentence(text: str, limit: int = 200) -> str:
    for line in text.strip().splitlines():
        line = line.strip().lstrip("#>*- ").strip()
        if line:
            match = re.match(r"(.+?[.!?])(\s|$)", line)
            sentence = match.group(1) if match else line
            return sentence[:limit].rstrip()
    return "No text was given."


def default_responder(call: LLMCall) -> Answer:
    """Answer ``call.schema`` from the prompt; without a schema, the prompt's first sentence."""
    users = [_text_of(m.get("content")) for m in call.messages if m.get("role") == "user"]
    first = users[0] if users else call.prompt
    if call.schema is None:
        return first_sentence(first)
    text = "\n".join([call.system or "", *users])
    value = answer_schema(call.schema, first, root=call.schema, context=text)
    return value if isinstance(value, dict) else {"value": value}


def _resolve(schema: Mapping[str, Any], root: Mapping[str, Any]) -> Mapping[str, Any]:
    seen = 0
    while "$ref" in schema and seen < 32:
        ref = str(schema["$ref"])
        node: Any = root
        for part in ref.lstrip("#/").split("/") if ref.startswith("#") else []:
            node = (
                node.get(part.replace("~1", "/").replace("~0", "~"), {})
                if isinstance(node, Mapping)
                else {}
            )
        rest = {k: v for k, v in schema.items() if k != "$ref"}
        schema = {**(node if isinstance(node, Mapping) else {}), **rest}
        seen += 1
    if "allOf" in schema and isinstance(schema["allOf"], list):
        merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
        for part in schema["allOf"]:
            if isinstance(part, Mapping):
                merged = {**_resolve(part, root), **merged}
        schema = merged
    return schema


def answer_schema(
    schema: Mapping[str, Any],
    prompt: str,
    *,
    root: Mapping[str, Any] | None = None,
    context: str | None = None,
    name: str = "",
) -> Any:
    """A value that follows ``schema``, made from the words of ``prompt``."""
    root = root if root is not None else schema
    text = context if context is not None else prompt
    schema = _resolve(schema, root)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list):
        return choose_enum(schema["enum"], text)
    for key in ("oneOf", "anyOf"):
        options = [_resolve(o, root) for o in schema.get(key) or [] if isinstance(o, Mapping)]
        if options and all("const" in o for o in options):
            return choose_enum(
                [o["const"] for o in options], text, [o.get("description") for o in options]
            )
        usable = [o for o in options if o.get("type") != "null"]
        if usable:
            return answer_schema(usable[0], prompt, root=root, context=context, name=name)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "string"
    if kind == "object":
        props = schema.get("properties") or {}
        return {
            key: answer_schema(sub, prompt, root=root, context=context, name=key)
            for key, sub in props.items()
            if isinstance(sub, Mapping)
        }
    if kind == "array":
        return _answer_array(schema, prompt, root, text, name)
    if kind == "boolean":
        words = [s for s in _stems(name.replace("_", " ")) if s not in {"is", "has", "contain"}]
        return bool(words) and any(s in set(_stems(text)) for s in words)
    if kind in ("integer", "number"):
        return _answer_number(schema, text, integer=kind == "integer")
    if kind == "null":
        return None
    return _answer_string(schema, prompt, name)


def _answer_array(
    schema: Mapping[str, Any], prompt: str, root: Mapping[str, Any], text: str, name: str
) -> list[Any]:
    items = (
        _resolve(schema.get("items") or {}, root)
        if isinstance(schema.get("items"), Mapping)
        else {}
    )
    lo = int(schema.get("minItems", 1))
    hi = int(schema.get("maxItems", max(lo, 3)))
    if isinstance(items.get("enum"), list):
        values = items["enum"]
        scores = enum_scores(values, text)
        ranked = [v for _, v in sorted(zip(scores, values, strict=True), key=lambda p: -p[0])]
        picked = [v for v, s in zip(values, scores, strict=True) if s > 0]
        picked = sorted(picked, key=ranked.index)[:hi]
        return picked if len(picked) >= lo else ranked[: max(lo, 1)]
    if items.get("type", "string") == "string" and "properties" not in items:
        counts: dict[str, int] = {}
        for w in _WORD.findall(prompt.lower()):
            if w not in _STOPWORDS and len(w) >= 4 and not w.isdigit():
                counts[w] = counts.get(w, 0) + 1
        words = sorted(counts, key=lambda w: (-counts[w], list(counts).index(w)))[:hi]
        while len(words) < lo:
            words.append(f"item{len(words) + 1}")
        return words
    count = max(lo, 1)
    return [answer_schema(items, prompt, root=root, context=text, name=name) for _ in range(count)]


def _answer_number(schema: Mapping[str, Any], text: str, *, integer: bool) -> int | float:
    lo = schema.get("minimum", schema.get("exclusiveMinimum"))
    hi = schema.get("maximum", schema.get("exclusiveMaximum"))

    def fits(x: float) -> bool:
        if "minimum" in schema and x < schema["minimum"]:
            return False
        if "exclusiveMinimum" in schema and x <= schema["exclusiveMinimum"]:
            return False
        if "maximum" in schema and x > schema["maximum"]:
            return False
        return not ("exclusiveMaximum" in schema and x >= schema["exclusiveMaximum"])

    for match in re.finditer(r"-?\d+(?:\.\d+)?", text):
        x = float(match.group())
        if (not integer or x.is_integer()) and fits(x):
            return int(x) if integer else x
    if lo is not None and hi is not None:
        x = lo + (hi - lo) * 0.75
    elif lo is not None:
        x = lo + 1
    elif hi is not None:
        x = hi - 1
    else:
        x = 1
    if integer:
        for candidate in (math.floor(x), math.ceil(x), math.floor(x) - 1, math.ceil(x) + 1):
            if fits(candidate):
                return int(candidate)
        return int(x)
    return round(float(x), 4)


def _answer_string(schema: Mapping[str, Any], prompt: str, name: str) -> str:
    fmt = schema.get("format")
    if fmt == "date-time":
        return "2024-01-01T00:00:00Z"
    if fmt == "date":
        return "2024-01-01"
    if fmt == "email":
        return "someone@example.com"
    if fmt in ("uri", "url"):
        return "https://example.com/"
    lo = int(schema.get("minLength", 0))
    hi = int(schema.get("maxLength", 200))
    value = first_sentence(prompt, limit=max(hi, 1))
    if len(value) < lo:
        value = (value + " " + "x" * lo)[: max(lo, hi)]
    return value[:hi]


def break_answer(answer: Answer, schema: Mapping[str, Any] | None) -> Answer:
    """The same answer, made invalid: an enum value not allowed, else a required field missing."""
    if schema is None or isinstance(answer, str):
        return "This is not what you asked for."
    broken = dict(answer)
    root = schema
    schema = _resolve(schema, root)
    props = {k: _resolve(v, root) for k, v in (schema.get("properties") or {}).items()}
    for key, sub in props.items():
        if key in broken and isinstance(sub.get("enum"), list):
            broken[key] = "not_an_allowed_value"
            return broken
    required = [k for k in schema.get("required") or [] if k in broken]
    if required:
        del broken[required[0]]
        return broken
    for key, sub in props.items():
        if key in broken:
            broken[key] = [] if sub.get("type") != "array" else "not an array"
            return broken
    return "This is not what you asked for."


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ductwork.ai.testserver",
        description="A local stand-in for the Anthropic and OpenAI APIs (tests, benchmarks, "
        "offline demos). Not a model: a deterministic keyword heuristic answers any JSON Schema.",
    )
    parser.add_argument("--port", type=int, default=8765, help="0 = a free port (default 8765)")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="added to every request")
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="FAULT:RATE",
        help="random faults, e.g. --fault 429:0.05 --fault timeout:0.01 (seeded)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random faults")
    parser.add_argument("--hang-s", type=float, default=10.0, help="how long a timeout hangs")
    args = parser.parse_args(argv)
    rates: dict[Fault, float] = {}
    for spec in args.fault:
        fault, _, rate = spec.partition(":")
        try:
            key: Fault = int(fault) if fault.isdigit() else fault
            _check_fault(key)
            rates[key] = float(rate or "0")
        except ValueError as exc:
            parser.error(f"--fault {spec}: {exc}")
    server = LLMTestServer(
        port=args.port,
        latency_s=args.latency_ms / 1000,
        fault_rates=rates,
        seed=args.seed,
        hang_s=args.hang_s,
    )
    with server:
        print(f"LLM test server on {server.base_url} (not a model; Ctrl-C stops it)")
        print(f"  anthropic: base_url={server.anthropic_url}  (POST /v1/messages)")
        print(f"  openai:    base_url={server.openai_url}  (POST /v1/chat/completions)")
        sys.stdout.flush()
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            print(f"\nstopped after {server.requests} requests {server.by_api}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The engine of the generate stage: many structured LLM calls, concurrent, cached, budgeted.

One :class:`Job` per row holds the row's first request. :func:`enrich` runs the jobs with
``concurrency`` workers (asyncio; the HTTP clients are async), each call going through the
:class:`~ductwork.ai.limits.RateLimiter` and :func:`~ductwork.ai.limits.call_with_retries`
(backoff on 429 / 5xx / overloaded / timeouts). For every row:

1. the request's cache key is looked up in the :class:`~ductwork.ai.cache.ResponseCache`; a
   hit costs nothing and sends nothing;
2. otherwise the :class:`Budget` must allow the call (estimated input tokens + ``max_tokens``,
   held while the call is in flight) before it is sent, and the reply is stored in the cache
   the moment it arrives;
3. the answer is validated against the declared structure; when it breaks it, a repair turn
   (the conversation so far + the validation error) is a new request, cached like the first,
   up to ``repairs`` times. An answer still invalid after that is quarantined with the error.

A budget that runs out stops new sends (calls in flight finish and are kept); rows still
answerable from the cache are answered; the rest are reported as not sent. An authentication
or not-found error (401/403/404) stops the run: every other row would get the same answer.

Every HTTP exchange and every cache hit is one line of the raw log (``llm_raw``), with the
request as sent to the provider layer, the body as received (or the error), the usage and the
latency. Results are kept by row position, so the order in which answers arrive never decides
which row they belong to.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ductwork.ai.cache import ResponseCache
from ductwork.ai.cost import Price
from ductwork.ai.llm import LLMError, LLMReply, LLMRequest, Provider, Usage, estimate_tokens
from ductwork.ai.schema import AnswerInvalid

Status = Literal["validated", "invalid", "http_error", "not_sent"]
FATAL_STATUSES = (401, 403, 404)
REPAIR_PROMPT = (
    "Your answer does not match the required structure: {error}\n"
    "Answer the same request again, as the {schema_name} with exactly the declared fields "
    "and allowed values."
)
NOT_SENT = "budget: not sent"


# ---------------------------------------------------------------------------------- budget
@dataclass
class Budget:
    """Caps on what the stage's answers cost; checked before each send and after each reply.

    What counts is every answer the run uses, including those served from the cache at the
    usage they were paid with: the budget caps the cost of the stage's output, not of one
    run, so re-running a stage that stopped (by hand, by a pipeline's ``retries`` or on a
    schedule) with the same budget stops at the same place instead of paying it again, and
    raising the budget pays only for the rest.

    Before a send, the call's worst case (its estimated input tokens + ``max_tokens``) is held
    against the cap together with the calls in flight, so concurrent calls cannot overshoot it
    between them; after the reply, the hold is replaced by the reported usage. Once a send is
    refused, or the spend reaches a cap, :attr:`stopped` is set and stays set.
    """

    max_tokens: int | None = None
    max_cost_usd: float | None = None
    price: Price | None = None
    spent_input: int = 0
    spent_output: int = 0
    held_tokens: int = 0
    held_cost: float = 0.0
    stopped: bool = False
    reason: str = ""

    @property
    def spent_tokens(self) -> int:
        return self.spent_input + self.spent_output

    @property
    def spent_cost(self) -> float | None:
        return None if self.price is None else self.price.cost(self.spent_input, self.spent_output)

    def _worst_cost(self, input_tokens: int, output_tokens: int) -> float:
        return 0.0 if self.price is None else self.price.cost(input_tokens, output_tokens)

    def reserve(self, input_tokens: int, max_output_tokens: int) -> tuple[int, float] | None:
        """Hold the worst case of one call, or refuse it (and stop) when it could pass a cap."""
        if self.stopped:
            return None
        tokens = input_tokens + max_output_tokens
        cost = self._worst_cost(input_tokens, max_output_tokens)
        if self.max_tokens is not None and (
            self.spent_tokens + self.held_tokens + tokens > self.max_tokens
        ):
            self.stop(f"max_tokens {self.max_tokens:,}")
            return None
        if self.max_cost_usd is not None and (
            (self.spent_cost or 0.0) + self.held_cost + cost > self.max_cost_usd
        ):
            self.stop(f"max_cost_usd {self.max_cost_usd:g}")
            return None
        self.held_tokens += tokens
        self.held_cost += cost
        return tokens, cost

    def settle(self, hold: tuple[int, float], usage: Usage | None) -> None:
        """Replace a hold by what the call used (nothing, when it failed)."""
        self.held_tokens -= hold[0]
        self.held_cost -= hold[1]
        if usage is not None:
            self.charge(usage)

    def charge(self, usage: Usage) -> None:
        """Count an answer's usage (a reply received, or one served from the cache)."""
        self.spent_input += usage.input_tokens
        self.spent_output += usage.output_tokens
        if self.max_tokens is not None and self.spent_tokens >= self.max_tokens:
            self.stop(f"max_tokens {self.max_tokens:,}")
        cost = self.spent_cost
        if self.max_cost_usd is not None and cost is not None and cost >= self.max_cost_usd:
            self.stop(f"max_cost_usd {self.max_cost_usd:g}")

    def stop(self, reason: str) -> None:
        if not self.stopped:
            self.stopped, self.reason = True, reason


# ------------------------------------------------------------------------------ jobs, results
@dataclass(frozen=True)
class Job:
    index: int  # the row's position in the input
    key: Any  # the row's key (a JSON-serialisable value)
    request: LLMRequest


@dataclass
class RowResult:
    index: int
    key: Any
    status: Status
    data: dict[str, Any] | None = None  # the validated answer, as column values
    error: str | None = None
    raw_text: str | None = None
    turns: int = 0  # answers asked for: the first request + repairs
    usage: Usage = field(default_factory=Usage)  # of every turn, cached or not
    model: str | None = None
    cached: bool = False  # every turn came from the cache


@dataclass
class Stats:
    requests: int = 0  # HTTP requests sent (every attempt)
    calls: int = 0  # requests that got a reply or failed for good (after retries)
    cache_hits: int = 0
    retries: int = 0
    repairs: int = 0  # repair turns asked (sent or cached)
    input_tokens: int = 0  # reported by replies received in this run (what was paid)
    output_tokens: int = 0
    http_errors: int = 0


@dataclass
class EnrichResult:
    rows: list[RowResult]
    stats: Stats
    budget: Budget
    raw: list[str]  # the raw log, one JSON line per exchange or cache hit, in row order


class FatalLLMError(Exception):
    """An error that every further request would get (bad key, unknown model)."""

    def __init__(self, error: LLMError, key: Any) -> None:
        super().__init__(error.message)
        self.error = error
        self.key = key


@dataclass(frozen=True)
class Settings:
    provider: str
    model: str
    base_url: str | None
    concurrency: int = 8
    repairs: int = 1
    policy: Any = None  # a limits.RetryPolicy
    limiter: Any = None  # a limits.RateLimiter or None


ProviderFactory = Callable[[], Provider]
Validate = Callable[[Any], dict[str, Any]]

# the row and turn of the call in progress, read by the recording wrapper (one per task)
_CURRENT: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("ductwork_llm_call")


def estimate_request_tokens(request: LLMRequest) -> int:
    """Input tokens of a request: system, earlier turns, prompt and the answer's schema."""
    parts = [request.system or "", *(m.get("content", "") for m in request.history)]
    parts.append(request.prompt)
    if request.schema is not None:
        parts.append(json.dumps(request.schema, separators=(",", ":")))
    return estimate_tokens("\n".join(parts))


def repair_request(request: LLMRequest, reply: LLMReply, error: str) -> LLMRequest:
    """The next turn: the conversation so far, the answer given and what was wrong with it."""
    history = (
        *request.history,
        {"role": "user", "content": request.prompt},
        {"role": "assistant", "content": reply.text},
    )
    return LLMRequest(
        prompt=REPAIR_PROMPT.format(error=error, schema_name=request.schema_name),
        system=request.system,
        schema=request.schema,
        schema_name=request.schema_name,
        max_tokens=request.max_tokens,
        temperature=request.temperature,
        history=history,
        extra=request.extra,
    )


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


class _Recorder:
    """A provider that writes one raw-log line per HTTP exchange, then hands on the result.

    The retry loop calls it once per attempt, so failed attempts are logged too; the row and
    turn come from the task's context (each worker task sets its own).
    """

    def __init__(self, inner: Provider) -> None:
        self.inner = inner
        self.name = inner.name
        self.model = inner.model
        self.base_url = inner.base_url
        self.requests = 0

    async def complete(self, request: LLMRequest) -> LLMReply:
        call = _CURRENT.get()
        call["attempt"] += 1
        self.requests += 1
        started = time.perf_counter()
        try:
            reply = await self.inner.complete(request)
        except LLMError as exc:
            call["log"](
                request,
                attempt=call["attempt"],
                latency_s=time.perf_counter() - started,
                error={
                    "status": exc.status,
                    "message": exc.message,
                    "retryable": exc.retryable,
                    "retry_after": exc.retry_after,
                    "body": exc.body,
                },
            )
            raise
        call["log"](
            request,
            attempt=call["attempt"],
            latency_s=reply.latency_s or time.perf_counter() - started,
            reply=reply,
        )
        return reply

    async def aclose(self) -> None:
        await self.inner.aclose()


async def enrich(
    jobs: Sequence[Job],
    settings: Settings,
    *,
    provider_factory: ProviderFactory,
    validate: Validate,
    cache: ResponseCache | None,
    budget: Budget,
    on_done: Callable[[int, int], None] | None = None,
    call: Callable[..., Any] | None = None,
) -> EnrichResult:
    """Answer every job (or say why not); see the module docstring for the rules.

    ``call`` is :func:`~ductwork.ai.limits.call_with_retries` (injected so this module stays
    testable without a provider). Raises :class:`FatalLLMError` after the calls in flight
    finish when the provider refused the credentials or the model.
    """
    if call is None:
        from ductwork.ai.limits import call_with_retries

        call = call_with_retries
    stats = Stats()
    results: dict[int, RowResult] = {}
    lines: list[tuple[int, int, str]] = []  # (row index, sequence, json line)
    seq = iter(range(1 << 62))
    recorder: _Recorder | None = None
    provider_lock = asyncio.Lock()
    fatal: list[FatalLLMError] = []
    jobs_iter: Iterator[Job] = iter(jobs)
    total = len(jobs)
    done = 0

    def log_line(
        job: Job,
        turn: int,
        request: LLMRequest,
        *,
        attempt: int,
        latency_s: float,
        reply: LLMReply | None = None,
        error: Mapping[str, Any] | None = None,
        cached: bool = False,
    ) -> None:
        doc: dict[str, Any] = {
            "key": _jsonable(job.key),
            "row": job.index,
            "turn": turn,
            "attempt": attempt,
            "cached": cached,
            "provider": settings.provider,
            "model": settings.model,
            "base_url": settings.base_url,
            "request": request.to_dict(),
        }
        if reply is not None:
            doc["reply"] = dict(reply.raw)
            doc["usage"] = {
                "input_tokens": reply.usage.input_tokens,
                "output_tokens": reply.usage.output_tokens,
            }
            doc["stop_reason"] = reply.stop_reason
        if error is not None:
            doc["error"] = dict(error)
        doc["latency_s"] = round(latency_s, 4)
        text = json.dumps(doc, ensure_ascii=False, separators=(",", ":"), default=str)
        lines.append((job.index, next(seq), text))

    async def get_provider() -> _Recorder:
        nonlocal recorder
        async with provider_lock:
            if recorder is None:  # made on the first miss: a fully cached run needs no key
                recorder = _Recorder(provider_factory())
        return recorder

    async def ask(job: Job) -> RowResult:
        request = job.request
        result = RowResult(job.index, job.key, "invalid", cached=True)
        usage_in = usage_out = 0
        last_error = ""
        for turn in range(settings.repairs + 1):
            if turn:
                stats.repairs += 1
            key = request.cache_key(settings.provider, settings.model, settings.base_url)
            reply = cache.get(key) if cache is not None else None
            if reply is not None:
                stats.cache_hits += 1
                budget.charge(reply.usage)
                log_line(job, turn, request, attempt=0, latency_s=0.0, reply=reply, cached=True)
            else:
                if fatal:
                    return _not_sent(job, result, turn, last_error)
                estimate = estimate_request_tokens(request)
                hold = budget.reserve(estimate, request.max_tokens)
                if hold is None:
                    return _not_sent(job, result, turn, last_error)
                provider = await get_provider()

                def _log(req: LLMRequest, *, _turn: int = turn, **kw: Any) -> None:
                    log_line(job, _turn, req, **kw)

                _CURRENT.set({"attempt": 0, "log": _log})
                try:
                    reply = await call(
                        provider,
                        request,
                        settings.policy,
                        settings.limiter,
                        estimated_tokens=estimate,
                    )
                except LLMError as exc:
                    budget.settle(hold, None)
                    stats.calls += 1
                    stats.http_errors += 1
                    stats.retries += max(exc.attempts - 1, 0)
                    if exc.status in FATAL_STATUSES:
                        fatal.append(FatalLLMError(exc, job.key))
                    result.status = "http_error"
                    result.cached = False
                    result.turns = turn + 1
                    result.error = exc.message  # names the server, the status, the attempts
                    if last_error:
                        result.error += f"; the previous answer was invalid: {last_error}"
                    result.usage = Usage(usage_in, usage_out)
                    return result
                assert reply is not None
                budget.settle(hold, reply.usage)
                stats.calls += 1
                stats.retries += max(reply.attempts - 1, 0)
                stats.input_tokens += reply.usage.input_tokens
                stats.output_tokens += reply.usage.output_tokens
                result.cached = False
                if cache is not None:
                    cache.put(key, reply, provider=settings.provider, model=settings.model)
            usage_in += reply.usage.input_tokens
            usage_out += reply.usage.output_tokens
            result.turns = turn + 1
            result.model = reply.model or settings.model
            result.raw_text = reply.text
            result.usage = Usage(usage_in, usage_out)
            try:
                result.data = validate(reply)
            except AnswerInvalid as exc:
                last_error = str(exc)
                request = repair_request(request, reply, last_error)
                continue
            result.status = "validated"
            result.error = None
            return result
        result.status = "invalid"
        result.error = last_error
        return result

    async def worker() -> None:
        nonlocal done
        for job in jobs_iter:  # shared iterator: each job is taken by one worker, in row order
            results[job.index] = await ask(job)
            done += 1
            if on_done is not None:
                on_done(done, total)

    workers = [
        asyncio.create_task(worker()) for _ in range(max(1, min(settings.concurrency, total or 1)))
    ]
    try:
        await asyncio.gather(*workers)
    except BaseException:
        for w in workers:
            w.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        raise
    finally:
        if recorder is not None:
            stats.requests = recorder.requests
            await recorder.aclose()
    if fatal:
        raise fatal[0]
    rows = [results[job.index] for job in jobs]
    lines.sort()
    return EnrichResult(rows=rows, stats=stats, budget=budget, raw=[t for _, _, t in lines])


def _not_sent(job: Job, result: RowResult, turn: int, last_error: str) -> RowResult:
    result.cached = False
    result.status = "not_sent"
    result.turns = turn
    result.error = NOT_SENT if not last_error else f"{NOT_SENT} (repair); {last_error}"
    return result


def validate_reply(reply: LLMReply, check: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
    """The answer of a reply as column values, or :class:`AnswerInvalid` saying what is wrong."""
    data = reply.data
    if data is None:
        reason = _json_problem(reply.text)
        cut = ""
        if reply.stop_reason in ("max_tokens", "length"):
            cut = "; the answer was cut off at max_tokens: raise max_tokens"
        msg = f"the answer is not JSON ({reason}){cut}"
        raise AnswerInvalid(msg)
    return check(data)


def _json_problem(text: str) -> str:
    if not text.strip():
        return "it is empty"
    try:
        json.loads(text)
    except ValueError as exc:
        return str(exc)
    return "the provider could not read it as a JSON object"


def run_coroutine(coro: Any) -> Any:
    """``asyncio.run``, also from a thread whose event loop is already running (notebooks)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()

"""Rate limits and retries for LLM calls: token buckets, backoff with full jitter, Retry-After.

Providers send once (:mod:`ductwork.ai.providers`); this module decides when to send and
whether to send again. Keeping both here, above the providers, means one place sees every
attempt — so ``attempts`` and the waits are counted once, and the SDK's own retries (off)
cannot multiply ours.

* :class:`RateLimiter` holds two token buckets, requests and tokens per minute. Each starts
  full (a minute's budget may go at once) and refills continuously; ``acquire`` waits until
  both hold enough. A request larger than the whole per-minute token budget waits for a full
  bucket and then goes, leaving the bucket in debt, instead of waiting forever.
* :class:`RetryPolicy` is "full jitter" exponential backoff: attempt ``n`` waits a uniform
  random time in ``[0, min(max_delay_s, base_delay_s * 2**(n-1))]``, and never less than the
  server's Retry-After (capped at ``max_delay_s``).
* :func:`call_with_retries` retries :class:`~ductwork.ai.llm.LLMError` with ``retryable``
  (429, 408, 409, 5xx, 529, timeouts, dropped connections, broken bodies) and raises anything
  else at once.

Clocks and sleeps are parameters, so tests run instantly and deterministically.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from ductwork.ai.llm import LLMError, LLMReply, LLMRequest, Provider

Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], float]
OnRetry = Callable[[int, LLMError, float], None]

_EPSILON = 1e-9


class _Bucket:
    """``capacity`` units refilling at ``capacity`` per minute, continuously."""

    def __init__(self, per_minute: float, now: float) -> None:
        self.capacity = float(per_minute)
        self.rate = self.capacity / 60.0  # units a second
        self.level = self.capacity
        self.stamp = now

    def refill(self, now: float) -> None:
        if now > self.stamp:
            self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = max(self.stamp, now)

    def wait_for(self, amount: float) -> float:
        """Seconds until ``amount`` (at most a full bucket) is available."""
        need = min(amount, self.capacity)
        return max(0.0, (need - self.level) / self.rate)


class RateLimiter:
    """Requests-per-minute and tokens-per-minute limits shared by concurrent calls.

    ``None`` means no limit of that kind. Waiters are served in arrival order.
    """

    def __init__(
        self,
        requests_per_minute: float | None,
        tokens_per_minute: float | None,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        for name, value in (
            ("requests_per_minute", requests_per_minute),
            ("tokens_per_minute", tokens_per_minute),
        ):
            if value is not None and not value > 0:
                msg = f"{name} must be a positive number or None, not {value!r}"
                raise ValueError(msg)
        self.requests_per_minute = requests_per_minute
        self.tokens_per_minute = tokens_per_minute
        self._clock = clock
        self._sleep = sleep
        now = clock()
        self._requests = _Bucket(requests_per_minute, now) if requests_per_minute else None
        self._tokens = _Bucket(tokens_per_minute, now) if tokens_per_minute else None
        self._lock = asyncio.Lock()
        self.waited_s = 0.0  # total time callers spent waiting in acquire
        self.acquired = 0

    async def acquire(self, tokens: int = 0) -> None:
        """Wait until one request and ``tokens`` tokens fit in the limits, then take them."""
        tokens = max(int(tokens), 0)
        async with self._lock:
            while True:
                now = self._clock()
                wait = 0.0
                if self._requests is not None:
                    self._requests.refill(now)
                    wait = self._requests.wait_for(1)
                if self._tokens is not None:
                    self._tokens.refill(now)
                    wait = max(wait, self._tokens.wait_for(tokens))
                if wait <= _EPSILON:
                    break
                self.waited_s += wait
                await self._sleep(wait)
            if self._requests is not None:
                self._requests.level -= 1
            if self._tokens is not None:
                self._tokens.level -= tokens
            self.acquired += 1

    def adjust(self, tokens: int) -> None:
        """Account for ``tokens`` more (or, negative, fewer) than were acquired.

        Called with ``actual - estimated`` once a reply reports its usage, so estimates that
        were too low slow the next calls down instead of overrunning the provider's limit.
        """
        if self._tokens is not None:
            self._tokens.refill(self._clock())
            self._tokens.level = min(self._tokens.capacity, self._tokens.level - tokens)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to wait before trying a retryable failure again."""

    max_retries: int = 5  # retries after the first attempt (attempts = max_retries + 1)
    base_delay_s: float = 1.0
    max_delay_s: float = 60.0
    jitter: bool = True
    rand: Callable[[], float] = field(default=random.random, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            msg = f"max_retries must be 0 or more, not {self.max_retries}"
            raise ValueError(msg)
        if self.base_delay_s < 0 or self.max_delay_s < 0:
            msg = "base_delay_s and max_delay_s must not be negative"
            raise ValueError(msg)

    def backoff(self, attempt: int) -> float:
        """The upper bound of the wait after failed attempt ``attempt`` (1-based)."""
        exponent = min(max(attempt - 1, 0), 62)
        return min(self.max_delay_s, self.base_delay_s * 2.0**exponent)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt ``attempt``: full jitter, at least Retry-After."""
        ceiling = self.backoff(attempt)
        wait = ceiling * self.rand() if self.jitter else ceiling
        if retry_after is not None and retry_after > 0:
            wait = max(wait, retry_after)
        return min(wait, self.max_delay_s)


async def call_with_retries(
    provider: Provider,
    request: LLMRequest,
    policy: RetryPolicy,
    limiter: RateLimiter | None = None,
    *,
    estimated_tokens: int = 0,
    sleep: Sleep = asyncio.sleep,
    on_retry: OnRetry | None = None,
) -> LLMReply:
    """Send ``request`` until it succeeds, fails for good, or the retries run out.

    Every attempt first takes ``estimated_tokens`` from ``limiter``. A retryable
    :class:`LLMError` waits ``policy.delay(attempt, error.retry_after)`` (through ``sleep``;
    ``on_retry(attempt, error, delay)`` is told first) and tries again; any other error, or
    the last one, is raised with ``attempts`` set. The reply's ``attempts`` says how many
    HTTP attempts it took.
    """
    attempt = 0
    while True:
        attempt += 1
        if limiter is not None:
            await limiter.acquire(estimated_tokens)
        try:
            reply = await provider.complete(request)
        except LLMError as error:
            error.attempts = attempt
            if not error.retryable or attempt > policy.max_retries:
                if attempt > 1:
                    error.message = f"{error.message} (gave up after {attempt} attempts)"
                    error.args = (error.message,)
                raise
            wait = policy.delay(attempt, error.retry_after)
            if on_retry is not None:
                on_retry(attempt, error, wait)
            await sleep(wait)
            continue
        if (
            limiter is not None and reply.usage.total > 0
        ):  # servers without usage: keep the estimate
            limiter.adjust(reply.usage.total - estimated_tokens)
        return dataclasses.replace(reply, attempts=attempt)

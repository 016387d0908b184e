"""Rate limiter, retry policy and retry loop, on a fake clock (instant and deterministic)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence

import pytest

from ductwork.ai.limits import RateLimiter, RetryPolicy, call_with_retries
from ductwork.ai.llm import LLMError, LLMReply, LLMRequest, Usage


class FakeTime:
    """A clock that only moves when someone sleeps; every sleep is recorded."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def reply(tokens: int = 10) -> LLMReply:
    return LLMReply(
        text="{}",
        data={},
        usage=Usage(input_tokens=tokens, output_tokens=0),
        model="fake",
        stop_reason="end_turn",
        raw={},
    )


class ScriptedProvider:
    """Answers from a script: each entry is raised (an exception) or returned (a reply)."""

    name = "fake"
    model = "fake-model"
    base_url = None

    def __init__(self, script: Sequence[LLMError | LLMReply | Exception]) -> None:
        self.script = list(script)
        self.calls = 0

    async def complete(self, request: LLMRequest) -> LLMReply:
        outcome = self.script[min(self.calls, len(self.script) - 1)]
        self.calls += 1
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def aclose(self) -> None:
        pass


def err(
    status: int | None = 429, *, retryable: bool = True, after: float | None = None
) -> LLMError:
    return LLMError(f"HTTP {status}", status=status, retryable=retryable, retry_after=after)


REQUEST = LLMRequest(prompt="hello")


# -- RetryPolicy ------------------------------------------------------------------------------


def test_backoff_doubles_from_the_base_delay_and_stops_at_the_cap() -> None:
    policy = RetryPolicy(base_delay_s=1.0, max_delay_s=20.0, jitter=False)
    assert [policy.delay(n) for n in range(1, 8)] == [1.0, 2.0, 4.0, 8.0, 16.0, 20.0, 20.0]
    assert policy.delay(500) == 20.0  # no overflow on a huge attempt number


def test_full_jitter_stays_between_zero_and_the_backoff_and_varies() -> None:
    policy = RetryPolicy(base_delay_s=0.5, max_delay_s=30.0, rand=random.Random(7).random)
    for attempt in range(1, 10):
        delays = [policy.delay(attempt) for _ in range(200)]
        assert all(0.0 <= d <= policy.backoff(attempt) for d in delays)
        assert len(set(delays)) > 100  # really random, not a constant
        assert max(delays) > 0.8 * policy.backoff(attempt)  # uses the whole range


def test_jitter_uses_the_random_draw_as_a_fraction_of_the_backoff() -> None:
    policy = RetryPolicy(base_delay_s=1.0, rand=lambda: 0.25)
    assert policy.delay(3) == pytest.approx(1.0)  # 0.25 * 4


def test_retry_after_is_a_floor_even_when_jitter_draws_zero() -> None:
    policy = RetryPolicy(base_delay_s=1.0, max_delay_s=60.0, rand=lambda: 0.0)
    assert policy.delay(1, retry_after=7.5) == 7.5
    assert policy.delay(1, retry_after=0.0) == 0.0
    # a larger backoff wins over a smaller Retry-After
    assert RetryPolicy(jitter=False).delay(5, retry_after=2.0) == 16.0


def test_retry_after_is_capped_at_max_delay() -> None:
    policy = RetryPolicy(max_delay_s=10.0, rand=lambda: 0.5)
    assert policy.delay(1, retry_after=3600.0) == 10.0


def test_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="max_retries"):
        RetryPolicy(max_retries=-1)
    with pytest.raises(ValueError, match="negative"):
        RetryPolicy(base_delay_s=-1.0)


# -- call_with_retries ------------------------------------------------------------------------


def test_retryable_errors_are_retried_until_success_and_attempts_counted() -> None:
    fake = FakeTime()
    provider = ScriptedProvider([err(429, after=3.0), err(500), err(None), reply()])
    policy = RetryPolicy(base_delay_s=1.0, jitter=False)
    out = asyncio.run(call_with_retries(provider, REQUEST, policy, sleep=fake.sleep))
    assert out.attempts == 4
    assert provider.calls == 4
    # 1st wait: Retry-After 3 beats the 1 s backoff; then 2 s, 4 s
    assert fake.sleeps == [3.0, 2.0, 4.0]


def test_non_retryable_error_is_raised_at_once() -> None:
    fake = FakeTime()
    provider = ScriptedProvider([err(400, retryable=False), reply()])
    with pytest.raises(LLMError) as info:
        asyncio.run(call_with_retries(provider, REQUEST, RetryPolicy(), sleep=fake.sleep))
    assert info.value.status == 400
    assert info.value.attempts == 1
    assert provider.calls == 1
    assert fake.sleeps == []
    assert "gave up" not in str(info.value)


def test_the_last_error_is_raised_when_retries_run_out() -> None:
    fake = FakeTime()
    provider = ScriptedProvider([err(529)])
    policy = RetryPolicy(max_retries=2, jitter=False)
    with pytest.raises(LLMError) as info:
        asyncio.run(call_with_retries(provider, REQUEST, policy, sleep=fake.sleep))
    assert provider.calls == 3
    assert info.value.attempts == 3
    assert info.value.status == 529
    assert "gave up after 3 attempts" in str(info.value)
    assert fake.sleeps == [1.0, 2.0]


def test_zero_retries_means_one_attempt() -> None:
    provider = ScriptedProvider([err(429), reply()])
    with pytest.raises(LLMError) as info:
        asyncio.run(call_with_retries(provider, REQUEST, RetryPolicy(max_retries=0)))
    assert info.value.attempts == 1
    assert provider.calls == 1


def test_other_exceptions_are_not_retried() -> None:
    provider = ScriptedProvider([RuntimeError("a bug"), reply()])
    with pytest.raises(RuntimeError, match="a bug"):
        asyncio.run(call_with_retries(provider, REQUEST, RetryPolicy()))
    assert provider.calls == 1


def test_on_retry_sees_each_failed_attempt_and_its_wait() -> None:
    fake = FakeTime()
    seen: list[tuple[int, int | None, float]] = []
    provider = ScriptedProvider([err(429, after=5.0), err(503), reply()])
    asyncio.run(
        call_with_retries(
            provider,
            REQUEST,
            RetryPolicy(jitter=False),
            sleep=fake.sleep,
            on_retry=lambda n, e, wait: seen.append((n, e.status, wait)),
        )
    )
    assert seen == [(1, 429, 5.0), (2, 503, 2.0)]


def test_every_attempt_goes_through_the_limiter() -> None:
    fake = FakeTime()
    limiter = RateLimiter(None, 600, clock=fake.clock, sleep=fake.sleep)
    provider = ScriptedProvider([err(500), err(500), reply(tokens=100)])
    out = asyncio.run(
        call_with_retries(
            provider,
            REQUEST,
            RetryPolicy(base_delay_s=0.0),
            limiter,
            estimated_tokens=100,
            sleep=fake.sleep,
        )
    )
    assert out.attempts == 3
    assert limiter.acquired == 3


# -- RateLimiter ------------------------------------------------------------------------------


def acquire_all(limiter: RateLimiter, amounts: Sequence[int]) -> None:
    async def run() -> None:
        for n in amounts:
            await limiter.acquire(n)

    asyncio.run(run())


def test_requests_per_minute_allow_a_full_bucket_then_space_calls_evenly() -> None:
    fake = FakeTime()
    limiter = RateLimiter(6, None, clock=fake.clock, sleep=fake.sleep)
    acquire_all(limiter, [0] * 9)
    # 6 at once (the bucket starts full), then one every 10 s
    assert fake.sleeps == pytest.approx([10.0, 10.0, 10.0])
    assert limiter.waited_s == pytest.approx(30.0)


def test_tokens_per_minute_wait_for_exactly_the_missing_tokens() -> None:
    fake = FakeTime()
    limiter = RateLimiter(None, 600, clock=fake.clock, sleep=fake.sleep)  # 10 tokens a second
    acquire_all(limiter, [600, 300, 100])
    assert fake.sleeps == pytest.approx([30.0, 10.0])


def test_the_bucket_refills_while_time_passes_without_calls() -> None:
    fake = FakeTime()
    limiter = RateLimiter(None, 600, clock=fake.clock, sleep=fake.sleep)
    acquire_all(limiter, [600])
    fake.now += 45.0  # 450 tokens back
    acquire_all(limiter, [450])
    assert fake.sleeps == []
    acquire_all(limiter, [20])
    assert fake.sleeps == pytest.approx([2.0])


def test_a_request_bigger_than_the_budget_waits_for_a_full_bucket_not_forever() -> None:
    fake = FakeTime()
    limiter = RateLimiter(None, 100, clock=fake.clock, sleep=fake.sleep)
    acquire_all(limiter, [50, 250])
    assert fake.sleeps == pytest.approx([30.0])  # 50 tokens missing at 100/60 a second
    # it went with a full bucket and left a debt of 150 that the next call waits out
    acquire_all(limiter, [10])
    assert fake.sleeps[1] == pytest.approx((150 + 10) / (100 / 60))


def test_both_limits_apply_and_the_slower_one_decides() -> None:
    fake = FakeTime()
    limiter = RateLimiter(60, 120, clock=fake.clock, sleep=fake.sleep)
    acquire_all(limiter, [120, 60])
    assert fake.sleeps == pytest.approx([30.0])  # the request bucket had room; tokens did not


def test_adjust_charges_tokens_used_beyond_the_estimate() -> None:
    fake = FakeTime()
    limiter = RateLimiter(None, 600, clock=fake.clock, sleep=fake.sleep)
    acquire_all(limiter, [100])
    limiter.adjust(200)  # the reply used 300, not 100
    acquire_all(limiter, [600])
    assert fake.sleeps == pytest.approx([30.0])
    limiter.adjust(-10_000)  # a refund never overfills the bucket
    acquire_all(limiter, [600, 60])
    assert fake.sleeps[1:] == pytest.approx([6.0])


def test_concurrent_callers_share_the_budget() -> None:
    fake = FakeTime()
    limiter = RateLimiter(None, 60, clock=fake.clock, sleep=fake.sleep)  # 1 token a second

    async def run() -> None:
        await asyncio.gather(*(limiter.acquire(30) for _ in range(4)))

    asyncio.run(run())
    assert limiter.acquired == 4
    assert fake.now == pytest.approx(60.0)  # 120 tokens with 60 in the bucket: 60 s of refill


def test_no_limits_never_wait() -> None:
    fake = FakeTime()
    limiter = RateLimiter(None, None, clock=fake.clock, sleep=fake.sleep)
    acquire_all(limiter, [10**9] * 5)
    assert fake.sleeps == []


@pytest.mark.parametrize("bad", [0, -5.0])
def test_limits_must_be_positive(bad: float) -> None:
    with pytest.raises(ValueError, match="requests_per_minute must be a positive number"):
        RateLimiter(bad, None)
    with pytest.raises(ValueError, match="tokens_per_minute must be a positive number"):
        RateLimiter(None, bad)

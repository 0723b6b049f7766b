"""Property tests: both limiters agree with a brute-force model of the sliding window, request by request."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mxn.limits import CONCURRENT, QUANTA, REQUESTS, TOKENS, Rule, headers
from mxn.limits.memory import MemoryLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def model_admits(log: list[tuple[float, int]], now: float, rule: Rule, w: int) -> bool:
    return sum(x for t, x in log if t > now - rule.window) + w <= rule.limit


def model_charge(log: list[tuple[float, int]], now: float, rule: Rule, w: int) -> None:
    """Charges within window / QUANTA of the newest entry join it, stamped now (never more permissive)."""
    if not w:
        return
    if log and now - log[-1][0] < rule.window / QUANTA:
        log[-1] = (now, log[-1][1] + w)
    else:
        log.append((now, w))


# Gaps from none at all to half a window: some charges share a log entry, most do not.
steps = st.lists(st.tuples(st.one_of(st.floats(0, 0.1), st.floats(0, 30)), st.integers(0, 40)), min_size=1, max_size=60)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps, st.integers(1, 6), st.integers(10, 80))
def test_memory_limiter_matches_the_sliding_window_model(seq: list[tuple[float, int]], rpm: int, tpm: int) -> None:
    clock = Clock()
    limiter = MemoryLimiter(clock)
    rules = [Rule("k:rpm", REQUESTS, rpm, 60), Rule("k:tpm", TOKENS, tpm, 60)]
    requests: list[tuple[float, int]] = []
    tokens: list[tuple[float, int]] = []

    async def run() -> None:
        for i, (gap, w) in enumerate(seq):
            clock.now += gap
            d = await limiter.acquire(rules, f"r{i}", w)
            expect = model_admits(requests, clock.now, rules[0], 1) and model_admits(tokens, clock.now, rules[1], w)
            assert d.allowed == expect
            if d.allowed:
                model_charge(requests, clock.now, rules[0], 1)
                model_charge(tokens, clock.now, rules[1], w)
            else:
                # Waiting exactly retry_after makes it fit (nothing else arriving meanwhile).
                assert d.retry_after > 0
                later = clock.now + d.retry_after + 1e-6
                fits = model_admits(requests, later, rules[0], 1) and model_admits(tokens, later, rules[1], w)
                assert fits or w > tpm
                assert int(headers(d)["retry-after"]) >= 1

    asyncio.run(run())


def test_a_busy_rule_keeps_a_bounded_log_and_admits_exactly_its_limit() -> None:
    clock = Clock()
    limiter = MemoryLimiter(clock)
    day = [Rule("k:rpd", REQUESTS, 50_000, 86400.0)]

    async def run() -> None:
        admitted = 0
        for i in range(60_000):  # 5,000 requests/s for 12 s
            clock.now += 0.0002
            admitted += (await limiter.acquire(day, f"r{i}", 0)).allowed
        assert admitted == 50_000
        assert len(limiter.logs["k:rpd"]) <= 12 / (86400 / QUANTA) + 2
        assert limiter.sums["k:rpd"] == 50_000

    asyncio.run(run())


def test_concurrency_slots_are_given_back() -> None:
    limiter = MemoryLimiter()
    rule = [Rule("k:conc", CONCURRENT, 2, 0)]

    async def run() -> None:
        assert (await limiter.acquire(rule, "a", 0)).allowed
        assert (await limiter.acquire(rule, "b", 0)).allowed
        assert not (await limiter.acquire(rule, "c", 0)).allowed
        await limiter.release(rule, "a")
        assert (await limiter.acquire(rule, "c", 0)).allowed

    asyncio.run(run())


_unique = itertools.count()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.integers(0, 30), min_size=1, max_size=25), st.integers(1, 8), st.integers(5, 100))
def test_redis_limiter_decides_like_the_memory_limiter(redis_url: str, weights: list[int], rpm: int, tpm: int) -> None:
    n = next(_unique)  # fresh keys per example: Redis keeps state between examples
    rules = [
        Rule(f"t{n}:rpm", REQUESTS, rpm, 60),
        Rule(f"t{n}:tpm", TOKENS, tpm, 60),
        Rule(f"t{n}:conc", CONCURRENT, 3, 0),
    ]
    memory = MemoryLimiter()

    async def run() -> None:
        from mxn.limits.redis import RedisLimiter

        redis_limiter = RedisLimiter(redis_url)
        try:
            await compare(redis_limiter)
        finally:
            await redis_limiter.close()

    async def compare(redis_limiter: Any) -> None:
        for i, w in enumerate(weights):
            a = await redis_limiter.acquire(rules, f"r{i}", w)
            b = await memory.acquire(rules, f"r{i}", w)
            assert a.allowed == b.allowed
            assert [u.used for u in a.usage] == [u.used for u in b.usage]
            if a.allowed and i % 2:
                await redis_limiter.release(rules, f"r{i}")
                await memory.release(rules, f"r{i}")

    asyncio.run(run())


def test_finish_charges_completion_tokens_and_frees_slots_on_both_back_ends(redis_url: str) -> None:
    n = next(_unique)

    async def check(limiter: Any) -> None:
        tpm, conc = Rule(f"f{n}:tpm", TOKENS, 100, 60), Rule(f"f{n}:conc", CONCURRENT, 1, 0)
        assert (await limiter.acquire([tpm, conc], "a", 10)).allowed
        assert not (await limiter.acquire([tpm, conc], "b", 10)).allowed  # the one slot is taken
        await limiter.finish([tpm], [conc], "a", 85)  # 10 prompt + 85 completion tokens
        assert not (await limiter.acquire([tpm, conc], "c", 10)).allowed  # slot free, but 95 + 10 > 100
        d = await limiter.acquire([tpm, conc], "d", 5)
        assert d.allowed and [u.used for u in d.usage] == [100, 1]

    async def run() -> None:
        from mxn.limits.redis import RedisLimiter

        await check(MemoryLimiter())
        redis_limiter = RedisLimiter(redis_url)
        try:
            await check(redis_limiter)
            # Redis forgot the script (a restart, SCRIPT FLUSH): finish() still charges and frees.
            tpm, conc = Rule(f"g{n}:tpm", TOKENS, 100, 60), Rule(f"g{n}:conc", CONCURRENT, 1, 0)
            assert (await redis_limiter.acquire([tpm, conc], "a", 10)).allowed
            await redis_limiter.redis.script_flush()
            await redis_limiter.finish([tpm], [conc], "a", 85)
            d = await redis_limiter.acquire([tpm, conc], "d", 5)
            assert d.allowed and [u.used for u in d.usage] == [100, 1]
        finally:
            await redis_limiter.close()

    asyncio.run(run())

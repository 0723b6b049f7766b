"""The resilient limiter against a private redis-server of its own, stopped (a hang) and killed (an outage).

Never the machine's shared Redis: these tests pause, kill and restart the server they use.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import signal
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

import anyio
import pytest
import redis

from mxn import metrics
from mxn.deploy.process import free_port
from mxn.deps import Dependency
from mxn.errors import ServiceUnavailable
from mxn.limits import CONCURRENT, REQUESTS, TOKENS, Rule
from mxn.limits.auth_failures import AuthThrottle, RedisCounter
from mxn.limits.resilient import Mode, ResilientLimiter, share
from tests.conftest import wait_for, wait_for_async

pytestmark = pytest.mark.e2e  # starts processes of its own

TIMEOUT = 0.3  # the bound on each Redis call
SLACK = 0.2  # scheduling on two busy cores
T = TypeVar("T")
_keys = iter(range(1_000_000))


def _killed_with_test_run() -> None:
    # SIGKILL rather than conftest's SIGTERM: a stopped (SIGSTOP) process never acts on SIGTERM, and this Redis
    # keeps nothing worth a clean exit.
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)


class RedisServer:
    def __init__(self, tmp: Path) -> None:
        self.dir, self.port = tmp, free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        cmd = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        with (self.dir / "redis.log").open("ab") as log:
            self.popen = subprocess.Popen(
                [*cmd, "--dir", str(self.dir)],
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_killed_with_test_run if threading.current_thread() is threading.main_thread() else None,
            )
        client = redis.Redis(port=self.port, socket_timeout=1, socket_connect_timeout=1)
        try:
            wait_for(lambda: self._pings(client), timeout=10, what="redis-server answering", interval=0.02)
        finally:
            client.close()

    def _pings(self, client: redis.Redis) -> bool:
        assert self.popen is not None and self.popen.poll() is None, (self.dir / "redis.log").read_text()
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False

    def pause(self) -> None:
        assert self.popen is not None
        self.popen.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.popen is not None
        self.popen.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()  # SIGKILL works on a stopped process too
            self.popen.wait(10)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()


@asynccontextmanager
async def replicas(url: str, mode: Mode = "local", n: int = 2) -> AsyncIterator[list[ResilientLimiter]]:
    """`n` limiters as `n` replicas would have them, each having seen all the others."""
    limiters = [ResilientLimiter(url, mode, f"replica-{i}", timeout=TIMEOUT) for i in range(n)]
    try:
        for limiter in limiters:
            limiter.start()
        await wait_for_async(lambda: _all_see(limiters, n), timeout=10, what=f"{n} replicas registered", interval=0.05)
        yield limiters
    finally:
        for limiter in limiters:
            await limiter.close()


async def _all_see(limiters: list[ResilientLimiter], n: int) -> bool:
    for limiter in limiters:
        if len(limiter.replicas) < n:
            await limiter.beat()
    return all(len(limiter.replicas) == n for limiter in limiters)


def rules(*kinds: tuple[str, int]) -> list[Rule]:
    n = next(_keys)
    return [Rule(f"t{n}:{kind}", kind, limit, 0.0 if kind == CONCURRENT else 60.0) for kind, limit in kinds]


async def timed(call: Awaitable[T]) -> tuple[T, float]:
    started = time.perf_counter()
    result = await call
    return result, time.perf_counter() - started


def sample(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def test_shares_add_up_to_the_limit_and_differ_by_at_most_one() -> None:
    for limit in range(0, 40):
        for n in range(1, 7):
            parts = [share(limit, n, rank) for rank in range(n)]
            assert sum(parts) == limit and max(parts) - min(parts) <= 1


async def test_two_replicas_enforce_one_shared_limit_while_redis_answers(redis_server: RedisServer) -> None:
    async with replicas(redis_server.url) as (a, b):
        rpm = rules((REQUESTS, 10))
        admitted = [(await (a, b)[i % 2].acquire(rpm, f"r{i}", 0)).allowed for i in range(30)]
        assert sum(admitted) == 10

        slots = rules((CONCURRENT, 1))
        assert (await a.acquire(slots, "x", 0)).allowed
        assert not (await b.acquire(slots, "y", 0)).allowed  # the slot a holds, in Redis
        await a.finish([], slots, "x", 0)
        assert (await b.acquire(slots, "y", 0)).allowed
        assert a.health.up and b.health.up and not a.elsewhere and not b.elsewhere


def break_redis(server: RedisServer, how: str) -> None:
    if how == "hang":
        server.pause()
    else:
        server.kill()


@pytest.mark.parametrize("how", ["hang", "down"])
async def test_local_mode_admits_each_replicas_share_while_redis_is_away(redis_server: RedisServer, how: str) -> None:
    async with replicas(redis_server.url, "local") as (a, b):
        held = rules((CONCURRENT, 5))
        assert (await a.acquire(held, "before", 0)).allowed  # admitted by Redis, finished during the outage
        break_redis(redis_server, how)
        rpm, slots = rules((REQUESTS, 11)), rules((CONCURRENT, 3))
        durations = []
        admitted = {}
        for limiter in (a, b):
            count = 0
            for i in range(20):
                decision, took = await timed(limiter.acquire(rpm, f"{limiter.replica_id}-{i}", 0))
                durations.append(took)
                count += decision.allowed
            admitted[limiter.replica_id] = count
        # 11 split between two replicas: 6 and 5, never more than the limit in all.
        assert sorted(admitted.values()) == [5, 6]
        assert max(durations) < TIMEOUT + SLACK, durations
        assert sorted(durations)[-3] < 0.05  # only the call that met the outage waited (one per replica)
        print(f"\n{how}: slowest acquire {max(durations):.3f}s, third slowest {sorted(durations)[-3] * 1000:.2f}ms")

        # Concurrency slots too: 3 split 2 + 1; a slot taken in memory is given back in memory.
        assert [(await a.acquire(slots, f"s{i}", 0)).allowed for i in range(3)] == [True, True, False]
        assert [(await b.acquire(slots, f"t{i}", 0)).allowed for i in range(2)] == [True, False]
        await a.release(slots, "s0")
        assert (await a.acquire(slots, "s3", 0)).allowed

        # Ending a request Redis admitted neither fails nor waits: its slot is owed to Redis, its tokens dropped.
        _, took = await timed(a.finish(rules((TOKENS, 100)), held, "before", 10))
        assert took < TIMEOUT + SLACK and "before" in a.owed
        assert not a.health.up and not b.health.up
        if how == "hang":
            redis_server.resume()  # lets close() leave the replica list


@pytest.mark.parametrize("how", ["hang", "down"])
async def test_open_mode_admits_everything_while_redis_is_away(redis_server: RedisServer, how: str) -> None:
    async with replicas(redis_server.url, "open") as (a, b):
        break_redis(redis_server, how)
        before = sample("mxn_limiter_fallback_total", mode="open")
        rpm = rules((REQUESTS, 1), (CONCURRENT, 1))
        durations = []
        for i in range(50):
            decision, took = await timed((a, b)[i % 2].acquire(rpm, f"r{i}", 0))
            assert decision.allowed
            durations.append(took)
        assert max(durations) < TIMEOUT + SLACK, durations
        assert sample("mxn_limiter_fallback_total", mode="open") - before == 50
        for i in range(50):  # nothing was taken, nothing to give back
            await (a, b)[i % 2].finish([rpm[0]], [rpm[1]], f"r{i}", 5)
        assert not a.elsewhere and not b.elsewhere
        # Owed to Redis: only the slot of the one request per replica whose script may have run unanswered.
        assert set(a.owed) <= {"r0"} and set(b.owed) <= {"r1"}
        if how == "hang":
            redis_server.resume()  # lets close() leave the replica list


@pytest.mark.parametrize("how", ["hang", "down"])
async def test_closed_mode_refuses_with_503_limiter_unavailable(redis_server: RedisServer, how: str) -> None:
    async with replicas(redis_server.url, "closed", n=1) as (a,):
        break_redis(redis_server, how)
        before = sample("mxn_refused_total", cause="limiter_unavailable")
        for i in range(10):
            started = time.perf_counter()
            with pytest.raises(ServiceUnavailable) as refused:
                await a.acquire(rules((REQUESTS, 100)), f"r{i}", 0)
            assert time.perf_counter() - started < TIMEOUT + SLACK
            assert refused.value.status == 503 and refused.value.code == "limiter_unavailable"
            assert refused.value.headers["retry-after"] in ("1", "2")
        assert sample("mxn_refused_total", cause="limiter_unavailable") - before == 10
        assert (await a.acquire([], "no-limits", 0)).allowed  # nothing to check, nothing refused
        if how == "hang":
            redis_server.resume()  # lets close() leave the replica list


@pytest.mark.parametrize("how", ["hang", "down"])
async def test_shared_limits_resume_soon_after_redis_is_back(
    redis_server: RedisServer, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mxn.deps")
    async with replicas(redis_server.url, "local") as (a, b):
        held = rules((CONCURRENT, 1))
        assert (await a.acquire(held, "held", 0)).allowed  # in Redis
        break_redis(redis_server, how)
        # A request Redis admitted ends as the outage begins (the first call to meet it), under the same shield
        # as Admission.finish: bounded all the same, and its slot owed.
        with anyio.CancelScope(shield=True):
            _, took = await timed(a.finish([], held, "held", 0))
        assert took < TIMEOUT + SLACK and not a.health.up and "held" in a.owed
        for limiter in (a, b):
            for i in range(30):
                await limiter.acquire(rules((REQUESTS, 4)), f"{limiter.replica_id}-{i}", 0)
        local = rules((CONCURRENT, 2))
        assert (await a.acquire(local, "in-memory", 0)).allowed  # a's share: 1 of 2

        if how == "hang":
            redis_server.resume()
        else:
            redis_server.start()  # same port, empty
        back = time.perf_counter()
        await wait_for_async(lambda: _both_up(a, b), timeout=3, what="shared enforcement back", interval=0.02)
        recovered_in = time.perf_counter() - back
        print(f"\n{how}: shared enforcement back {recovered_in:.2f}s after Redis")
        assert recovered_in < 2.0

        rpm = rules((REQUESTS, 10))
        assert sum([(await (a, b)[i % 2].acquire(rpm, f"after{i}", 0)).allowed for i in range(30)]) == 10
        # The slot `held` was given back in Redis once it answered (after a hang it still had it).
        assert not a.owed
        assert (await b.acquire(held, "next", 0)).allowed
        # The slot taken in memory is given back in memory, though Redis decides again.
        await a.release(local, "in-memory")
        assert "in-memory" not in a.elsewhere

    lines = [r for r in caplog.records if r.name == "mxn.deps"]
    down = [r.getMessage().split(":")[0] for r in lines if "recovered" not in r.getMessage()]
    assert down == ["redis unavailable"] * 2 and all(r.levelno == logging.WARNING for r in lines)
    assert len([r for r in lines if "recovered" in r.getMessage()]) == 2
    assert not any(r.exc_info for r in lines)


async def _both_up(a: ResilientLimiter, b: ResilientLimiter) -> bool:
    return a.health.up and b.health.up


@pytest.mark.parametrize("how", ["hang", "down"])
async def test_the_auth_failure_throttle_goes_on_without_redis_and_logs_the_outage_once(
    redis_server: RedisServer, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mxn.deps")
    counter = RedisCounter(redis_server.url, timeout=TIMEOUT)
    throttle = AuthThrottle(2, 60.0, counter)
    throttle.start()
    try:
        await throttle.failed("10.0.0.1")
        break_redis(redis_server, how)
        durations = []
        for _ in range(4):  # uncounted meanwhile: nobody is blocked, every attempt waits at most the bound
            _, took = await timed(throttle.failed("10.0.0.1"))
            durations.append(took)
            async with throttle.attempt("10.0.0.2"):
                pass
        await asyncio.sleep(2.5)  # the broadcast's subscription is tried again every second meanwhile
        assert max(durations) < TIMEOUT + SLACK, durations
        assert not throttle.blocked and not counter.health.up
        if how == "hang":
            redis_server.resume()
        else:
            redis_server.start()  # same port, empty

        async def counted() -> bool:
            await throttle.failed("10.0.0.3")
            return counter.health.up

        await wait_for_async(counted, timeout=3, what="the counter back", interval=0.1)
    finally:
        await throttle.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "mxn.deps"]
    assert len(lines) == 2, lines
    assert lines[0].startswith("auth-failure counter unavailable") and "go uncounted" in lines[0]
    assert lines[1].startswith("auth-failure counter recovered")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_dependency_logs_when_it_fails_now_and_then_while_down_and_when_it_is_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="mxn.deps")
    clock = Clock()
    dep = Dependency("redis", "rate limits: local", clock=clock)
    error = ConnectionRefusedError(111, "Connection refused")
    for _ in range(50):  # 50 failures in 4.9 s
        dep.failed(error)
        clock.now += 0.1
    assert not dep.up and dep.failures == 50
    assert sample("mxn_dependency_up", dependency="redis") == 0
    snapshot = dep.snapshot()
    assert snapshot["up"] is False and snapshot["failures"] == 50 and "Connection refused" in snapshot["error"]
    dep.ok()
    dep.ok()
    assert dep.up and dep.failures == 0 and dep.snapshot()["error"] is None
    assert sample("mxn_dependency_up", dependency="redis") == 1

    messages = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert messages == [
        (
            logging.WARNING,
            "redis unavailable: ConnectionRefusedError: [Errno 111] Connection refused; rate limits: local",
        ),
        (logging.WARNING, "redis recovered after 5.0s down, 50 failed calls"),
    ]
    assert not any(r.exc_info or "Traceback" in r.getMessage() for r in caplog.records)


def test_a_long_outage_gets_one_summary_line_per_ten_seconds(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mxn.deps")
    clock = Clock()
    dep = Dependency("postgres", clock=clock)
    for _ in range(200):  # 25 s of failures, eight a second
        dep.failed(TimeoutError())
        clock.now += 0.125
    dep.ok()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "postgres unavailable: TimeoutError",
        "postgres still unavailable after 10s: 80 failed calls since the last report; last: TimeoutError",
        "postgres still unavailable after 20s: 80 failed calls since the last report; last: TimeoutError",
        "postgres recovered after 25.0s down, 200 failed calls",
    ]

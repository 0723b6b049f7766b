"""Rate limits that outlive Redis: Redis decides while it answers; while it does not, the configured fallback does.

Every Redis call is bounded (`timeout`), so a Redis that hangs costs the requests in flight at that moment that
long, once; after the first failure requests go straight to the fallback, and a background task probes Redis
every `probe_every` seconds, going back to shared enforcement on the first answer. Fallbacks
(MXN_LIMITS_WHEN_REDIS_DOWN):

- local: each replica enforces the limits in memory, with its share of each limit. Replicas know each other
  through Redis: each writes a heartbeat to a sorted set every `beat_every` seconds and reads the live ones
  back; during an outage the last list read is used. Shares add up to the limit, never more (with fewer units
  than replicas, some replicas get none).
- open: every request is admitted, and counted (mxn_limiter_fallback_total{mode="open"}).
- closed: every request with limits gets 503 limiter_unavailable and a Retry-After.

A request is given back where it was admitted: one admitted in memory releases in memory, even after Redis is
back. Completion tokens that cannot reach Redis are dropped; slots that cannot be given back in Redis are
remembered and given back when it answers again (or free themselves after SLOT_TTL).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import time
from collections.abc import Awaitable
from dataclasses import replace
from typing import TYPE_CHECKING, Literal, TypeVar

from mxn import metrics
from mxn.deps import Dependency
from mxn.errors import ServiceUnavailable
from mxn.limits import CONCURRENT, SLOT_TTL, Decision, Rule
from mxn.limits.memory import MemoryLimiter

if TYPE_CHECKING:  # imported when one is made: a gateway without Redis never loads redis-py (~8 MiB)
    from mxn.limits.redis import RedisLimiter

Mode = Literal["local", "open", "closed"]
T = TypeVar("T")

REPLICAS = "mxn:replicas"
# Slot releases remembered for a Redis that is away: beyond this many requests, the rest free themselves.
_MAX_OWED = 100_000
_IMPACT = {
    "local": "rate limits enforced per replica in memory until it is back",
    "open": "rate limits off until it is back",
    "closed": "requests with rate limits refused (503) until it is back",
}

# KEYS[1]: the replicas' sorted set. ARGV: this replica's id, seconds a heartbeat stays alive. Redis's clock, so
# replica clocks do not matter. Returns the live replicas.
_BEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local ttl = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - ttl)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('EXPIRE', KEYS[1], math.ceil(ttl) + 1)
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""


def share(limit: int, replicas: int, rank: int) -> int:
    """Replica `rank`'s part of `limit` among `replicas`: the parts differ by at most one and add up to `limit`."""
    whole, extra = divmod(limit, replicas)
    return whole + (1 if rank < extra else 0)


class ResilientLimiter:
    def __init__(
        self,
        redis_url: str,
        mode: Mode = "local",
        replica_id: str | None = None,
        *,
        timeout: float = 0.3,
        probe_every: float = 0.5,
        beat_every: float = 2.0,
    ) -> None:
        from redis.exceptions import RedisError

        from mxn.limits.redis import RedisLimiter

        self.mode = mode
        # One per process: each uvicorn worker enforces its own share.
        self.replica_id = replica_id or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.timeout = timeout
        self.probe_every = probe_every
        self.beat_every = beat_every
        self.shared: RedisLimiter = RedisLimiter(redis_url, connect_timeout=timeout)
        # Connection refused or reset, timeouts (builtin TimeoutError is an OSError), a Redis answering only errors.
        self._outage = (RedisError, OSError)
        self.local = MemoryLimiter()
        self.health = Dependency("redis", _IMPACT[mode])
        self.replicas = [self.replica_id]  # the live replicas as Redis last listed them, sorted
        # Requests not admitted by Redis: request id -> (the MemoryLimiter that admitted it, or None when the
        # limits were open; when, time.monotonic()). Insertion order is admission order.
        self.elsewhere: dict[str, tuple[MemoryLimiter | None, float]] = {}
        self.owed: dict[str, list[Rule]] = {}  # request id -> slots to give back in Redis when it answers
        self._beat = self.shared.redis.register_script(_BEAT)
        self._fallback = metrics.LIMITER_FALLBACK.labels(mode)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        """Register this replica and keep watch on Redis (from inside the event loop; idempotent)."""
        if self._task is None:
            self._task = asyncio.create_task(self._watch())

    async def _redis(self, call: Awaitable[T]) -> T:
        async with asyncio.timeout(self.timeout):
            return await call

    def _lost(self, exc: BaseException) -> None:
        was_up = self.health.up
        self.health.failed(exc)
        if was_up:
            self._wake.set()  # probe from now on, not at the next heartbeat

    async def acquire(self, rules: list[Rule], request_id: str, tokens: int) -> Decision:
        if not rules:
            return Decision(True, 0.0, ())
        self.start()
        if self.health.up:
            try:
                return await self._redis(self.shared.acquire(rules, request_id, tokens))
            except self._outage as exc:
                self._lost(exc)
                self._owe(rules, request_id)  # the script may have run, its answer lost
        return await self._acquire_without_redis(rules, request_id, tokens)

    async def _acquire_without_redis(self, rules: list[Rule], request_id: str, tokens: int) -> Decision:
        self._fallback.inc()
        if self.mode == "closed":
            metrics.REFUSED.labels("limiter_unavailable").inc()
            raise ServiceUnavailable(
                "Rate limits cannot be checked right now; retry shortly.",
                code="limiter_unavailable",
                headers={"retry-after": "1"},
            )
        if self.mode == "open":
            self.elsewhere[request_id] = (None, time.monotonic())
            return Decision(True, 0.0, ())
        local = self.local
        decision = await local.acquire(self._shares(rules), request_id, tokens)
        if decision.allowed:
            self.elsewhere[request_id] = (local, time.monotonic())
        return decision

    def _shares(self, rules: list[Rule]) -> list[Rule]:
        n = len(self.replicas)
        if n <= 1:
            return rules
        rank = self.replicas.index(self.replica_id)
        return [replace(r, limit=share(r.limit, n, rank)) for r in rules]

    async def add_tokens(self, rules: list[Rule], request_id: str, tokens: int) -> None:
        if request_id in self.elsewhere:
            local = self.elsewhere[request_id][0]
            if local is not None:
                await local.add_tokens(rules, request_id, tokens)
        elif rules and tokens > 0 and self.health.up:
            try:
                await self._redis(self.shared.add_tokens(rules, request_id, tokens))
            except self._outage as exc:  # the tokens go uncounted
                self._lost(exc)

    async def release(self, rules: list[Rule], request_id: str) -> None:
        if request_id in self.elsewhere:
            local = self.elsewhere.pop(request_id)[0]
            if local is not None:
                await local.release(rules, request_id)
        elif rules:
            if self.health.up:
                try:
                    await self._redis(self.shared.release(rules, request_id))
                    return
                except self._outage as exc:
                    self._lost(exc)
            self._owe(rules, request_id)

    async def finish(self, token_rules: list[Rule], slot_rules: list[Rule], request_id: str, tokens: int) -> None:
        if request_id in self.elsewhere:
            local = self.elsewhere.pop(request_id)[0]
            if local is not None:
                await local.finish(token_rules, slot_rules, request_id, tokens)
            return
        if self.health.up:
            try:
                await self._redis(self.shared.finish(token_rules, slot_rules, request_id, tokens))
                return
            except self._outage as exc:  # the tokens go uncounted; the slots are given back later
                self._lost(exc)
        self._owe(slot_rules, request_id)

    def _owe(self, rules: list[Rule], request_id: str) -> None:
        slots = [r for r in rules if r.kind == CONCURRENT]
        if slots and len(self.owed) < _MAX_OWED:
            self.owed[request_id] = slots

    async def _watch(self) -> None:
        """Heartbeat while Redis answers, probe while it does not; settle what is owed once it is back."""
        while True:
            await self.beat()
            self._forget_stale()
            self._wake.clear()
            if self._closing:
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.beat_every if self.health.up else self.probe_every):
                    await self._wake.wait()

    async def beat(self) -> None:
        """One heartbeat: register this replica, learn the live ones; back to Redis if it was away."""
        owed, self.owed = self.owed, {}
        try:
            live: list[str] = await self._redis(
                self._beat(keys=[REPLICAS], args=[self.replica_id, 3 * self.beat_every])
            )
            if owed:  # before Redis decides again, so that these slots are free when it does
                await self._redis(self.shared.release_many(owed))
        except Exception as exc:  # whatever it is, the watch goes on: Redis is not answering as it should
            self.owed = {**owed, **self.owed}
            self.health.failed(exc)
            return
        self.replicas = sorted(live)
        if not self.health.up:
            self.local = MemoryLimiter()  # the next outage starts afresh; requests admitted in this one keep theirs
            self.health.ok()

    def _forget_stale(self) -> None:
        # Requests that never released (a crash between acquire and finish) are forgotten as Redis would.
        cutoff = time.monotonic() - SLOT_TTL
        while self.elsewhere:
            first = next(iter(self.elsewhere))
            if self.elsewhere[first][1] > cutoff:
                return
            del self.elsewhere[first]

    async def close(self) -> None:
        if self._task is not None:
            self._closing = True  # should the cancellation be lost inside redis-py, the loop still ends
            self._wake.set()
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.health.up:
            # Leave the list now rather than when the heartbeat runs out: the others' shares grow at once.
            with contextlib.suppress(*self._outage):
                await self._redis(self.shared.redis.zrem(REPLICAS, self.replica_id))
        await self.shared.close()

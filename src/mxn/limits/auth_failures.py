"""Failed authentications per client address: after `limit` in a window, every attempt waits the window out.

A request whose key is right, from an address that is not throttled, costs one dict lookup (`check`) and
nothing else: only failures are counted, in Redis when there is one (INCR + PEXPIRE in one script, a fixed
window from the first failure). The replica that sees the limit reached broadcasts the block, and every replica
keeps the blocked addresses in a local dict until their window ends, so a blocked address is refused
everywhere without a Redis round trip per request. A replica that missed the broadcast (it started later, or
its subscription was reconnecting) learns on the next failure it sees: at most one extra guess per replica.

Keys are 285-bit random, so for them counting after the fact is enough. Passwords and the operator's admin key
may be weak, so those attempts (rare, and slow anyway) are counted before they are checked and given back on
success (`attempt`): concurrent guesses cannot slip past the limit, on one replica or many. That costs /admin
calls made with a key two counter operations each; /admin is not the hot path. With Redis unreachable or hung
(each call bounded at `timeout`), the throttle lets attempts through rather than turn every 401 and login into
a 500 or a wait, and says so as for any dependency: once when it goes, now and then while away, once when back.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, TypeVar

from mxn.deps import Dependency
from mxn.errors import AuthError, MxnError, TooManyAuthFailures
from mxn.limits import retry_seconds

T = TypeVar("T")


class FailureCounter(Protocol):
    """A counter whose calls can fail says so in the log itself, once per outage: the throttle only carries on."""

    async def hit(self, address: str, window: float) -> tuple[int, float]:
        """Count one failure; the count in the current window and the seconds it has left."""

    async def undo(self, address: str) -> None:
        """Take back a `hit` that turned out not to be a failure."""

    async def announce(self, address: str, seconds: float) -> None:
        """Tell the other replicas that `address` is blocked for `seconds`."""

    def listen(self, on_block: Callable[[str, float], None]) -> None:
        """Call `on_block(address, seconds)` for each block announced by another replica."""

    async def close(self) -> None: ...


class MemoryCounter:
    """One process's windows, oldest first: with a fixed window length, insertion order is expiry order."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.windows: dict[str, list[float]] = {}  # address -> [count, end]

    async def hit(self, address: str, window: float) -> tuple[int, float]:
        now = self.clock()
        _drop_expired(self.windows, now, lambda entry: entry[1])
        entry = self.windows.setdefault(address, [0, now + window])
        entry[0] += 1
        return int(entry[0]), entry[1] - now

    async def undo(self, address: str) -> None:
        entry = self.windows.get(address)
        if entry is not None and entry[0] > 0:
            entry[0] -= 1

    async def announce(self, address: str, seconds: float) -> None:
        pass

    def listen(self, on_block: Callable[[str, float], None]) -> None:
        pass

    async def close(self) -> None:
        pass


_PREFIX, _CHANNEL = "mxn:af:", "mxn:af:blocked"
# KEYS[1]: the address's counter. ARGV[1]: the window in ms. Returns the count and the ms the window has left.
_HIT = """
local n = redis.call('INCR', KEYS[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
return {n, ttl}
"""
# Never creates the key (a late undo after the window ended must not leave a counter without expiry).
_UNDO = """
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('DECR', KEYS[1]) end
return 0
"""


class RedisCounter:
    """The counters in Redis, shared by every replica; blocks broadcast on a pub/sub channel."""

    def __init__(self, url: str, timeout: float = 0.3) -> None:
        # Imported here: a gateway without Redis never loads redis-py.
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self.timeout = timeout
        # As RedisLimiter's: no retries and no socket_timeout, each call bounded by `_redis` instead.
        options = {"socket_connect_timeout": timeout, "retry": Retry(NoBackoff(), 0)}
        self.redis: Any = aioredis.from_url(url, decode_responses=True, **options)
        self.health = Dependency("auth-failure counter", "failed authentications go uncounted until it is back")
        self._hit = self.redis.register_script(_HIT)
        self._undo = self.redis.register_script(_UNDO)
        self._listener: asyncio.Task[None] | None = None

    async def _redis(self, call: Awaitable[T]) -> T:
        try:
            async with asyncio.timeout(self.timeout):
                result = await call
        except Exception as exc:
            self.health.failed(exc)
            raise
        self.health.ok()
        return result

    async def hit(self, address: str, window: float) -> tuple[int, float]:
        n, ttl = await self._redis(self._hit(keys=[_PREFIX + address], args=[max(1, round(window * 1000))]))
        return int(n), int(ttl) / 1000

    async def undo(self, address: str) -> None:
        await self._redis(self._undo(keys=[_PREFIX + address]))

    async def announce(self, address: str, seconds: float) -> None:
        await self._redis(self.redis.publish(_CHANNEL, f"{seconds:.3f} {address}"))

    def listen(self, on_block: Callable[[str, float], None]) -> None:
        self._listener = asyncio.create_task(self._listen(on_block))

    async def _listen(self, on_block: Callable[[str, float], None]) -> None:
        while True:
            try:
                async with self.redis.pubsub() as pubsub:
                    await pubsub.subscribe(_CHANNEL)
                    self.health.ok()
                    async for message in pubsub.listen():
                        if message["type"] == "message":
                            seconds, _, address = message["data"].partition(" ")
                            on_block(address, float(seconds))
            except Exception as exc:  # Redis away: failures still reach the counters; subscribe again
                self.health.failed(exc)
                await asyncio.sleep(1.0)

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        await self.redis.aclose()


def _drop_expired(entries: dict[str, Any], now: float, end: Callable[[Any], float]) -> None:
    while entries:
        first = next(iter(entries))
        if end(entries[first]) > now:
            return
        del entries[first]


def _v6_block(host: str) -> str:
    try:
        return str(ipaddress.IPv6Network((host, 64), strict=False))
    except ValueError:
        return host


def address_of(host: str) -> str:
    """The unit that is throttled: an IPv4 address, or the /64 an IPv6 address belongs to (one subscriber's)."""
    return _v6_block(host) if ":" in host else host


class AuthThrottle:
    def __init__(
        self, limit: int, window: float, counter: FailureCounter, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit  # 0: off
        self.window = window
        self.counter = counter
        self.clock = clock
        self.blocked: dict[str, float] = {}  # address -> when its block ends (clock time)

    def start(self) -> None:
        self.counter.listen(self._block_locally)

    def check(self, host: str) -> None:
        """429 if the address is blocked; the only cost a good request pays."""
        if not self.blocked:
            return
        address = address_of(host)
        until = self.blocked.get(address)
        if until is not None:
            left = until - self.clock()
            if left > 0:
                raise _refusal(left)
            del self.blocked[address]

    async def failed(self, host: str) -> None:
        """Count a failure already answered; 429 instead when the address was over the limit before it."""
        if not self.limit:
            return
        address = address_of(host)
        n, left = await self._hit(address)
        if n == self.limit:
            await self._block(address, left)
        elif n > self.limit:  # blocked through another replica, and the broadcast did not reach this one
            self._block_locally(address, left)
            raise _refusal(left)

    @contextlib.asynccontextmanager
    async def attempt(self, host: str, failure: type[MxnError] = AuthError) -> AsyncIterator[None]:
        """Count the attempt before it is checked; give it back unless it fails with `failure`."""
        self.check(host)
        if not self.limit:
            yield
            return
        address = address_of(host)
        n, left = await self._hit(address)
        if n > self.limit:
            raise _refusal(left)
        try:
            yield
        except failure:
            if n == self.limit:
                await self._block(address, left)
            raise
        except BaseException:
            await self._undo(address, n)
            raise
        await self._undo(address, n)

    async def _hit(self, address: str) -> tuple[int, float]:
        try:
            return await self.counter.hit(address, self.window)
        except Exception:  # Redis away: answer as if unthrottled rather than fail every login
            return 0, 0.0

    async def _undo(self, address: str, n: int) -> None:
        if n:  # 0: never counted
            with contextlib.suppress(Exception):
                await self.counter.undo(address)

    async def _block(self, address: str, seconds: float) -> None:
        self._block_locally(address, seconds)
        with contextlib.suppress(Exception):  # the others learn on the next failure they see
            await self.counter.announce(address, seconds)

    def _block_locally(self, address: str, seconds: float) -> None:
        now = self.clock()
        _drop_expired(self.blocked, now, lambda until: until)
        self.blocked.pop(address, None)  # re-inserted at the end, so the oldest blocks stay in front
        self.blocked[address] = now + seconds

    async def close(self) -> None:
        await self.counter.close()


def _refusal(seconds: float) -> TooManyAuthFailures:
    return TooManyAuthFailures(
        "Too many failed authentication attempts from your address; try again later.",
        headers={"retry-after": retry_seconds(seconds)},
    )


def make_throttle(limit: int, window: float, redis_url: str | None) -> AuthThrottle:
    counter: FailureCounter = RedisCounter(redis_url) if redis_url else MemoryCounter()
    return AuthThrottle(limit, window, counter)

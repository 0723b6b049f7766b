"""The Redis limiter: the same rules, checked and charged in one Lua script, so replicas agree exactly.

Each REQUESTS/TOKENS rule is a sorted set of `<id>:<weight>` members scored by their time, plus a running
sum; each CONCURRENT rule is a sorted set of request ids scored by when their slot expires. Time is the
Redis server's, so replica clocks do not matter.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError

from mxn.limits import CONCURRENT, QUANTA, SLOT_TTL, Decision, Rule, Usage, weight

PREFIX = "mxn:rl:"

# KEYS: one per rule. ARGV: member, n, then per rule: limit, window, weight, kind ("c" or "l"),
# then charge (1 = acquire: check all, charge all or nothing; 0 = charge only, no check).
_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local member, n, charge_only = ARGV[1], tonumber(ARGV[2]), ARGV[3] == '1'
local out, wait, denied = {}, 0, 0
for i = 1, n do
  local key, b = KEYS[i], 3 + (i - 1) * 4
  local limit, window, w, kind = tonumber(ARGV[b+1]), tonumber(ARGV[b+2]), tonumber(ARGV[b+3]), ARGV[b+4]
  local used, reset = 0, 0
  if kind == 'c' then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
    used = redis.call('ZCARD', key)
    if not charge_only and used + 1 > limit then wait = math.max(wait, 1); denied = i end
  else
    local old = redis.call('ZRANGEBYSCORE', key, '-inf', now - window)
    if #old > 0 then
      local freed = 0
      for _, m in ipairs(old) do freed = freed + tonumber(string.match(m, ':(%d+)$')) end
      redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
      redis.call('DECRBY', key .. ':sum', freed)
    end
    used = tonumber(redis.call('GET', key .. ':sum') or '0')
    local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    if #first > 0 then reset = tonumber(first[2]) + window - now end
    if not charge_only and used + w > limit then
      local need, freed, at = used + w - limit, 0, now + window
      local entries = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
      for j = 1, #entries, 2 do
        freed = freed + tonumber(string.match(entries[j], ':(%d+)$'))
        if freed >= need then at = tonumber(entries[j+1]) + window; break end
      end
      if at - now > wait then wait = at - now; denied = i end
    end
  end
  out[#out + 1] = tostring(used)
  out[#out + 1] = tostring(reset)
end
if wait > 0 then return {'0', tostring(wait), tostring(denied), unpack(out)} end
for i = 1, n do
  local key, b = KEYS[i], 3 + (i - 1) * 4
  local window, w, kind = tonumber(ARGV[b+2]), tonumber(ARGV[b+3]), ARGV[b+4]
  if kind == 'c' then
    redis.call('ZADD', key, now + SLOT_TTL, member)
    redis.call('EXPIRE', key, math.ceil(SLOT_TTL) + 1)
  elseif w > 0 then
    -- A charge within window / QUANTA of the newest joins it (see limits.QUANTA).
    local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
    if #last > 0 and now - tonumber(last[2]) < window / QUANTA then
      redis.call('ZREM', key, last[1])
      local id, old = string.match(last[1], '^(.*):(%d+)$')
      redis.call('ZADD', key, now, id .. ':' .. (tonumber(old) + w))
    else
      redis.call('ZADD', key, now, member .. ':' .. w)
    end
    redis.call('INCRBY', key .. ':sum', w)
    redis.call('EXPIRE', key, math.ceil(window) + 1)
    redis.call('EXPIRE', key .. ':sum', math.ceil(window) + 1)
  end
end
return {'1', '0', '0', unpack(out)}
""".replace("SLOT_TTL", str(SLOT_TTL)).replace("QUANTA", str(QUANTA))


class RedisLimiter:
    def __init__(self, url: str, connect_timeout: float | None = None) -> None:
        """`connect_timeout`: seconds a connection may take, and no retries, for a caller that bounds each call
        itself (`asyncio.timeout` around it) and decides what a failure means; None: redis-py's defaults."""
        options: dict[str, Any] = {}
        if connect_timeout is not None:
            # Not socket_timeout: with it set, redis-py sends every command under asyncio.wait_for, which on
            # Python 3.11 can swallow a cancellation that arrives as the send completes.
            options = {"socket_connect_timeout": connect_timeout, "retry": Retry(NoBackoff(), 0)}
        self.redis: Any = aioredis.from_url(url, decode_responses=True, **options)
        self.script = self.redis.register_script(_SCRIPT)

    @staticmethod
    def _args(rules: list[Rule], member: str, tokens: int, charge_only: bool) -> tuple[list[str], list[Any]]:
        keys = [PREFIX + r.key for r in rules]
        args: list[Any] = [member, len(rules), "1" if charge_only else "0"]
        for r in rules:
            args += [r.limit, r.window, weight(r, tokens), "c" if r.kind == CONCURRENT else "l"]
        return keys, args

    async def _run(self, rules: list[Rule], member: str, tokens: int, charge_only: bool) -> list[str]:
        keys, args = self._args(rules, member, tokens, charge_only)
        result: list[str] = await self.script(keys=keys, args=args)
        return result

    async def acquire(self, rules: list[Rule], request_id: str, tokens: int) -> Decision:
        if not rules:
            return Decision(True, 0.0, ())
        res = await self._run(rules, request_id, tokens, charge_only=False)
        allowed, wait, denied = res[0] == "1", float(res[1]), int(res[2])
        usage = tuple(
            Usage(r, int(res[3 + 2 * i]) + (weight(r, tokens) if allowed else 0), float(res[4 + 2 * i]))
            for i, r in enumerate(rules)
        )
        return Decision(allowed, wait, usage, rules[denied - 1] if denied else None)

    async def add_tokens(self, rules: list[Rule], request_id: str, tokens: int) -> None:
        if rules and tokens > 0:
            await self._run(rules, request_id + ":c", tokens, charge_only=True)

    async def finish(self, token_rules: list[Rule], slot_rules: list[Rule], request_id: str, tokens: int) -> None:
        if not slot_rules:
            await self.add_tokens(token_rules, request_id, tokens)
            return
        # EVALSHA straight into the pipeline (a Script object would ask SCRIPT EXISTS first: another round trip);
        # acquire() has loaded the script, and if Redis lost it meanwhile the calls are made one by one.
        pipe = self.redis.pipeline(transaction=False)
        if token_rules and tokens > 0:
            keys, args = self._args(token_rules, request_id + ":c", tokens, charge_only=True)
            pipe.evalsha(self.script.sha, len(keys), *keys, *args)
        for r in slot_rules:
            pipe.zrem(PREFIX + r.key, request_id)
        try:
            await pipe.execute()
        except NoScriptError:
            await self.add_tokens(token_rules, request_id, tokens)
            await self.release(slot_rules, request_id)

    async def release(self, rules: list[Rule], request_id: str) -> None:
        if rules:
            pipe = self.redis.pipeline(transaction=False)
            for r in rules:
                pipe.zrem(PREFIX + r.key, request_id)
            await pipe.execute()

    async def release_many(self, slots: dict[str, list[Rule]]) -> None:
        """Give back the slots of many requests (request id -> its CONCURRENT rules) in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for request_id, rules in slots.items():
            for r in rules:
                pipe.zrem(PREFIX + r.key, request_id)
        await pipe.execute()

    async def close(self) -> None:
        await self.redis.aclose()

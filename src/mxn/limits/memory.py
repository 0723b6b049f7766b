"""The in-process limiter: exact within one process (one worker); Redis is for several.

Nothing here awaits between reading a rule and charging it, so on one event loop every call is atomic by itself:
no lock is needed.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from mxn.limits import CONCURRENT, QUANTA, SLOT_TTL, Decision, Rule, Usage, weight


class MemoryLimiter:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.logs: dict[str, deque[tuple[float, int]]] = {}
        self.sums: dict[str, int] = {}
        self.slots: dict[str, dict[str, float]] = {}

    def _expire(self, rule: Rule, now: float) -> None:
        log = self.logs.setdefault(rule.key, deque())
        while log and log[0][0] <= now - rule.window:
            self.sums[rule.key] -= log.popleft()[1]

    def _check(self, rule: Rule, now: float, w: int) -> tuple[Usage, float]:
        """The rule's usage, and how long until `w` more would fit (0 if it fits now)."""
        if rule.kind == CONCURRENT:
            slots = self.slots.setdefault(rule.key, {})
            if len(slots) >= rule.limit:  # full: slots past their TTL (a request that never ended) do not count
                for member, expiry in list(slots.items()):
                    if expiry <= now:
                        del slots[member]
            used = len(slots)
            return Usage(rule, used, 0.0), (1.0 if used + 1 > rule.limit else 0.0)
        self._expire(rule, now)
        log, used = self.logs[rule.key], self.sums.setdefault(rule.key, 0)
        reset = log[0][0] + rule.window - now if log else 0.0
        if used + w <= rule.limit:
            return Usage(rule, used, reset), 0.0
        need, freed = used + w - rule.limit, 0
        for ts, amount in log:
            freed += amount
            if freed >= need:
                return Usage(rule, used, reset), ts + rule.window - now
        return Usage(rule, used, reset), rule.window  # more than the limit alone: a full window

    async def acquire(self, rules: list[Rule], request_id: str, tokens: int) -> Decision:
        now = self.clock()
        checked = [(r, *self._check(r, now, weight(r, tokens))) for r in rules]
        waits = [(wait, r) for r, _u, wait in checked if wait > 0]
        if waits:
            wait, rule = max(waits, key=lambda x: x[0])
            return Decision(False, wait, tuple(u for _r, u, _w in checked), rule)
        for r in rules:
            self._charge(r, request_id, now, weight(r, tokens))
        return Decision(True, 0.0, tuple(Usage(u.rule, u.used + weight(r, tokens), u.reset) for r, u, _w in checked))

    def _charge(self, rule: Rule, request_id: str, now: float, w: int) -> None:
        if rule.kind == CONCURRENT:
            self.slots.setdefault(rule.key, {})[request_id] = now + SLOT_TTL
        elif w:
            log = self.logs.setdefault(rule.key, deque())
            if log and now - log[-1][0] < rule.window / QUANTA:
                log.append((now, log.pop()[1] + w))
            else:
                log.append((now, w))
            self.sums[rule.key] = self.sums.get(rule.key, 0) + w

    async def add_tokens(self, rules: list[Rule], request_id: str, tokens: int) -> None:
        now = self.clock()
        for r in rules:
            self._expire(r, now)
            self._charge(r, request_id, now, tokens)

    async def finish(self, token_rules: list[Rule], slot_rules: list[Rule], request_id: str, tokens: int) -> None:
        await self.add_tokens(token_rules, request_id, tokens)
        await self.release(slot_rules, request_id)

    async def release(self, rules: list[Rule], request_id: str) -> None:
        for r in rules:
            self.slots.get(r.key, {}).pop(request_id, None)

    async def close(self) -> None:
        pass

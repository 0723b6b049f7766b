"""Rate limits: sliding-window logs of requests and tokens, and concurrent-request slots.

One interface, two back ends: in-process (`memory.py`, the default, exact within one process) and Redis
(`redis.py`, atomic Lua scripts, exact across replicas). A rule is checked and charged all-or-nothing
with every other rule of the same request.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

REQUESTS, TOKENS, CONCURRENT = "requests", "tokens", "concurrent"
# A concurrent slot left behind by a crashed replica frees itself after this long.
SLOT_TTL = 900.0
# Charges closer together than window / QUANTA share one log entry, stamped with the newest time: a rule keeps at
# most about QUANTA entries however busy it is, and sharing can only make it stricter (an entry leaves the window
# when its newest charge does; Retry-After may be later by at most window / QUANTA, 60 ms for a minute).
QUANTA = 1000


@dataclass(frozen=True, slots=True)
class Rule:
    key: str  # e.g. "key:12:rpm"
    kind: str  # REQUESTS, TOKENS or CONCURRENT
    limit: int
    window: float  # seconds; unused for CONCURRENT


@dataclass(frozen=True, slots=True)
class Usage:
    """A rule's state when it was checked: how much of the window is used, and when it frees up."""

    rule: Rule
    used: int
    reset: float  # seconds until the oldest entry leaves the window (0 when empty)

    @property
    def remaining(self) -> int:
        return max(self.rule.limit - self.used, 0)


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    retry_after: float  # seconds, when not allowed
    usage: tuple[Usage, ...]
    denied_by: Rule | None = None


class Limiter(Protocol):
    async def acquire(self, rules: list[Rule], request_id: str, tokens: int) -> Decision:
        """Admit one request costing `tokens` (prompt) on the TOKENS rules, or say when to retry."""

    async def add_tokens(self, rules: list[Rule], request_id: str, tokens: int) -> None:
        """Charge tokens known only after the call (the completion) to the TOKENS rules."""

    async def release(self, rules: list[Rule], request_id: str) -> None:
        """Give back the request's CONCURRENT slots."""

    async def finish(self, token_rules: list[Rule], slot_rules: list[Rule], request_id: str, tokens: int) -> None:
        """At the end of a request: add_tokens and release together (one round trip where there is one)."""

    async def close(self) -> None: ...


def weight(rule: Rule, tokens: int) -> int:
    return tokens if rule.kind == TOKENS else 1


def retry_seconds(value: float) -> str:
    """Retry-After in whole seconds, rounded up (at least 1)."""
    return str(max(1, math.ceil(value - 1e-6)))


def _duration(seconds: float) -> str:
    # OpenAI's x-ratelimit-reset-* format: "6m0s", "1.5s", "0s".
    if seconds >= 60:
        minutes, rest = divmod(math.ceil(seconds), 60)
        return f"{minutes}m{rest}s"
    return f"{round(seconds, 3):g}s"


def headers(decision: Decision) -> dict[str, str]:
    """x-ratelimit-{limit,remaining,reset}-{requests,tokens} from the tightest per-minute rules."""
    out: dict[str, str] = {}
    for kind, suffix in ((REQUESTS, "requests"), (TOKENS, "tokens")):
        minute = [u for u in decision.usage if u.rule.kind == kind and u.rule.window == 60]
        if not minute:
            continue
        tightest = min(minute, key=lambda u: u.remaining)
        out[f"x-ratelimit-limit-{suffix}"] = str(tightest.rule.limit)
        out[f"x-ratelimit-remaining-{suffix}"] = str(tightest.remaining)
        out[f"x-ratelimit-reset-{suffix}"] = _duration(tightest.reset)
    if not decision.allowed:
        out["retry-after"] = retry_seconds(decision.retry_after)
    return out

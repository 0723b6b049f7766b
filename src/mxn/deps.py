"""What mxn depends on and can lose (Redis, PostgreSQL), as an operator reads it in the logs and on /readyz.

A dependency that goes away fails every call made to it, hundreds a second: a line per failure (and a traceback
each) would bury the one line that matters. So: one warning when it goes down, then at most one line every
`every` seconds saying how many calls failed since the last, and one line when it comes back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from mxn import metrics

log = logging.getLogger("mxn.deps")


def describe(exc: BaseException) -> str:
    """The exception in one short line: its class and message, never a traceback."""
    text = " ".join(str(exc).split())[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Dependency:
    """Call `failed(exc)` on each failed call and `ok()` on each success; `ok()` costs one attribute test while up."""

    def __init__(
        self, name: str, impact: str = "", every: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.name = name
        self.impact = impact  # what the outage means for requests, said in the warning (e.g. "rate limits: local")
        self.every = every
        self.clock = clock
        self.up = True
        self.since = time.time()  # when it last went down or came back (Unix time)
        self.failures = 0  # failed calls since it went down; 0 while up
        self.error: str | None = None  # the last failure, described
        self._down_at = 0.0
        self._logged_at = 0.0
        self._unlogged = 0  # failures since the last line
        metrics.DEPENDENCY_UP.labels(name).set(1)

    def failed(self, exc: BaseException) -> None:
        now = self.clock()
        self.error = describe(exc)
        self.failures += 1
        if self.up:
            self.up, self.since, self._down_at, self._logged_at, self._unlogged = False, time.time(), now, now, 0
            metrics.DEPENDENCY_UP.labels(self.name).set(0)
            log.warning("%s unavailable: %s%s", self.name, self.error, f"; {self.impact}" if self.impact else "")
            return
        self._unlogged += 1
        if now - self._logged_at >= self.every:
            log.warning(
                "%s still unavailable after %.0fs: %d failed calls since the last report; last: %s",
                self.name,
                now - self._down_at,
                self._unlogged,
                self.error,
            )
            self._logged_at, self._unlogged = now, 0

    def failed_in(self, task: asyncio.Future[Any]) -> None:
        """A done-callback for a call made in the background: its failure is counted here, nowhere else."""
        if not task.cancelled() and (exc := task.exception()) is not None:
            self.failed(exc)

    def ok(self) -> None:
        if self.up:
            return
        log.warning(  # as loud as the failure it ends: with the default log level, an operator sees both
            "%s recovered after %.1fs down, %d failed calls", self.name, self.clock() - self._down_at, self.failures
        )
        self.up, self.since, self.failures = True, time.time(), 0
        metrics.DEPENDENCY_UP.labels(self.name).set(1)

    def snapshot(self) -> dict[str, Any]:
        """For /readyz: up or not, since when (Unix time), failed calls since then, the last error while down."""
        return {"up": self.up, "since": self.since, "failures": self.failures, "error": None if self.up else self.error}

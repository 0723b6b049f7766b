"""The router's choices and breaker, on catalogue objects without HTTP."""

from __future__ import annotations

from collections import Counter

import pytest

from mxn.catalog.registry import Cell, ChipInfo, EndpointInfo, ModelInfo
from mxn.errors import RateLimited, ServiceUnavailable
from mxn.routing import CLOSED, HALF_OPEN, OPEN, Router


def cell(*endpoints: EndpointInfo) -> Cell:
    model = ModelInfo("m", None, "chat", 4096, None, True, {})
    return Cell(1, model, ChipInfo("nvidia", "NVIDIA", None), True, 0, 0, {}, list(endpoints))


def ep(i: int, weight: int = 1, priority: int = 0, cap: int | None = None) -> EndpointInfo:
    return EndpointInfo(i, "running", weight, priority, None, None, object(), {"url": "http://x"}, cap)  # type: ignore[arg-type]


def test_weight_decides_among_idle_endpoints() -> None:
    router, c = Router(), cell(ep(1, weight=1), ep(2, weight=9))
    picks = Counter(router.candidates(c)[0].id for _ in range(5000))
    assert 0.85 < picks[2] / 5000 < 0.95


def test_priority_tier_first_then_least_loaded() -> None:
    router, c = Router(), cell(ep(1, priority=1), ep(2, priority=1), ep(3, priority=0))
    busy = router.started(c, c.endpoints[0])
    order = [e.id for e in router.candidates(c)]
    assert order == [2, 1, 3]
    router.finished(busy)


def test_concurrency_cap_is_counted_when_the_request_starts() -> None:
    router, c = Router(), cell(ep(1, cap=1))
    router.started(c, router.candidates(c)[0])
    with pytest.raises(RateLimited):
        router.candidates(c)


def test_breaker_opens_probes_once_and_a_probe_without_verdict_frees_it() -> None:
    router, c = Router(failures_to_open=3, cooldown=0.0), cell(ep(1))
    h = router.of(c, c.endpoints[0])
    for _ in range(3):
        router.failed(router.started(c, c.endpoints[0]), "boom")
    assert h.breaker == OPEN
    probe = router.started(c, router.candidates(c)[0])  # cooldown over: half-open, one probe
    assert h.breaker == HALF_OPEN
    with pytest.raises(ServiceUnavailable):
        router.candidates(c)  # a second request may not probe at the same time
    router.finished(probe)  # e.g. the probe got a 429: no verdict, but the slot is free again
    router.succeeded(router.started(c, router.candidates(c)[0]))
    assert h.breaker == CLOSED

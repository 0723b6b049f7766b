"""The router's choices and breaker, on catalogue objects (HTTP only for a health check)."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import aiohttp
import pytest
from aiohttp import web

from mxn.catalog.registry import Catalog, Cell, ChipInfo, EndpointInfo, EndpointState, ModelInfo
from mxn.engines import EndpointConfig, Unavailable
from mxn.errors import RateLimited, ServiceUnavailable
from mxn.routing import CLOSED, HALF_OPEN, OPEN, Router


def cell(*endpoints: EndpointInfo) -> Cell:
    model = ModelInfo("m", None, "chat", 4096, None, True, {})
    return Cell(1, model, ChipInfo("nvidia", "NVIDIA", None), True, 0, 0, {}, list(endpoints))


def ep(i: int, weight: int = 1, priority: int = 0, cap: int | None = None) -> EndpointInfo:
    config = EndpointConfig(i, "openai", url="http://x")
    return EndpointInfo(i, EndpointState.RUNNING, weight, priority, None, None, Unavailable("unused"), config, cap)


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


class KnowsItsHealth(Unavailable):
    def __init__(self, healthy: bool) -> None:
        super().__init__("unused")
        self.healthy = healthy

    async def health(self) -> bool:
        return self.healthy


async def test_an_engine_that_knows_its_health_is_not_probed_over_http() -> None:
    asked: list[str] = []

    async def models(request: web.Request) -> web.Response:
        asked.append(request.path)
        return web.Response()

    app = web.Application()
    app.router.add_get("/models", models)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        local, remote = ep(1), ep(2)
        remote = replace(remote, config=replace(remote.config, url=f"http://127.0.0.1:{port}"))
        local.engine = KnowsItsHealth(False)
        router, c = Router(), cell(local, remote)
        async with aiohttp.ClientSession() as client:
            await router.check_all(Catalog(cells={("m", "nvidia"): c}), client)
    finally:
        await runner.cleanup()
    assert asked == ["/models"]
    assert router.state(c, local) == EndpointState.UNHEALTHY == "unhealthy"
    assert router.state(c, remote) == "running" and router.cell_state(c) == "running"


def test_an_endpoint_moved_elsewhere_starts_with_a_clean_record() -> None:
    router, c = Router(failures_to_open=1), cell(ep(1))
    router.failed(router.started(c, c.endpoints[0]), "boom")
    assert router.state(c, c.endpoints[0]) == "unhealthy"
    same = replace(c.endpoints[0], config=replace(c.endpoints[0].config, timeouts={"total": 5.0}))
    assert router.of(c, same).breaker == OPEN  # a reload that did not move it keeps what was learnt
    moved = replace(same, config=replace(same.config, url="http://y"))
    assert router.of(c, moved).breaker == CLOSED and router.state(c, moved) == "running"

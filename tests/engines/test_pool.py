"""The engine pool across catalogue reloads: kept while an endpoint's config is unchanged, rebuilt when it changes,
closed when its endpoint goes."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import aiohttp
import pytest

from mxn.engines import ChunkStream, EndpointConfig, Engine, Unavailable, build
from mxn.engines.pool import EnginePool


class Recorded(Engine):
    """An engine that only records its life."""

    def __init__(self, config: EndpointConfig) -> None:
        self.config = config
        self.closed = 0

    async def call(self, route: str, body: dict[str, Any]) -> dict[str, Any]:
        return {"choices": []}

    async def open_stream(self, route: str, body: dict[str, Any]) -> ChunkStream:
        raise NotImplementedError

    async def close(self) -> None:
        self.closed += 1


class Factory:
    def __init__(self) -> None:
        self.built: list[Recorded] = []

    def __call__(self, config: EndpointConfig, _client: aiohttp.ClientSession | None) -> Engine:
        self.built.append(Recorded(config))
        return self.built[-1]


A = EndpointConfig(1, "scripted", url="http://a/v1")
B = EndpointConfig(2, "scripted", url="http://b/v1", timeouts={"total": 60.0}, options={"x": 1})


async def test_an_unchanged_endpoint_keeps_its_engine_across_reloads() -> None:
    factory = Factory()
    pool = EnginePool(None, factory)
    first = await pool.sync([A, B])
    # A reload builds new config objects from the store: equal, not the same.
    second = await pool.sync([replace(A), replace(B, timeouts={"total": 60.0}, options={"x": 1})])
    assert second[1] is first[1] and second[2] is first[2]
    assert len(factory.built) == 2 and not any(e.closed for e in factory.built)
    assert pool.get(1) is first[1]


async def test_a_changed_endpoint_gets_a_new_engine_and_the_old_one_is_closed() -> None:
    factory = Factory()
    pool = EnginePool(None, factory)
    first = await pool.sync([A, B])
    moved = replace(B, url="http://b2/v1")
    second = await pool.sync([A, moved])
    assert second[1] is first[1]
    new = second[2]
    assert isinstance(new, Recorded) and new is not first[2] and new.config == moved
    assert [e.closed for e in factory.built] == [0, 1, 0]


async def test_a_removed_endpoint_is_evicted_and_its_engine_closed() -> None:
    factory = Factory()
    pool = EnginePool(None, factory)
    first = await pool.sync([A, B])
    assert set(await pool.sync([A])) == {1}
    assert pool.get(2) is None
    assert [e.closed for e in factory.built] == [0, 1]
    # The same endpoint coming back is a new engine: the closed one is never handed out again.
    again = await pool.sync([A, B])
    assert again[2] is not first[2] and len(factory.built) == 3


async def test_closing_the_pool_closes_every_engine_once() -> None:
    factory = Factory()
    pool = EnginePool(None, factory)
    await pool.sync([A, B])
    await pool.close()
    await pool.close()
    assert [e.closed for e in factory.built] == [1, 1]
    assert pool.get(1) is None


async def test_a_failed_build_leaves_the_pool_as_it_was() -> None:
    factory = Factory()

    def flaky(config: EndpointConfig, client: aiohttp.ClientSession | None) -> Engine:
        if config.id == 3:
            raise ValueError("unknown dtype")
        return factory(config, client)

    pool = EnginePool(None, flaky)
    first = await pool.sync([A])
    with pytest.raises(ValueError):
        await pool.sync([replace(A, url="http://a2/v1"), EndpointConfig(3, "scripted")])
    # The engine built for the changed A before the failure is closed; the serving one is untouched.
    assert [e.closed for e in factory.built] == [0, 1]
    assert pool.get(1) is first[1]


async def test_an_http_engine_without_a_client_session_is_unavailable() -> None:
    engine = build(EndpointConfig(1, "openai", url="http://a/v1"), None)
    assert isinstance(engine, Unavailable) and "HTTP client" in engine.reason
    assert engine.ready and not engine.failed and engine.stats() == {} and engine.hardware == {}
    assert await engine.health() is None  # the router probes its URL, as for any remote engine

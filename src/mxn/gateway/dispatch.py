"""Send a prepared request to a deployment's endpoints, failing over while nothing has reached the client."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from mxn.catalog.registry import Cell, EndpointInfo
from mxn.engines import ChunkStream
from mxn.errors import MxnError, RateLimited, ServiceUnavailable, UpstreamError, UpstreamTimeout
from mxn.gateway.params import Prepared, for_endpoint
from mxn.routing import Health, Router

log = logging.getLogger("mxn.dispatch")
T = TypeVar("T")
# Worth another endpoint: it may well succeed where this one failed.
RETRYABLE = (UpstreamError, UpstreamTimeout, RateLimited, ServiceUnavailable)
# An endpoint that is busy (429) is not broken: it goes to the next without counting against its breaker.
BUSY = (RateLimited,)


async def _failover(
    router: Router,
    cell: Cell,
    candidates: list[EndpointInfo],
    prepared: Prepared,
    attempt: Callable[[EndpointInfo, dict[str, Any]], Awaitable[T]],
) -> tuple[EndpointInfo, Health, T]:
    last: MxnError | None = None
    for i, endpoint in enumerate(candidates):
        if i:
            await asyncio.sleep(min(0.05 * 2 ** (i - 1), 0.5))  # back off a little before the next endpoint
            if not router.available(cell, endpoint):
                continue
        health = router.started(cell, endpoint)
        try:
            result = await attempt(endpoint, for_endpoint(prepared, endpoint))
        except RETRYABLE as exc:
            router.finished(health)
            if not isinstance(exc, BUSY):
                router.failed(health, exc.code or type(exc).__name__)
            log.warning(
                "endpoint %s failed (%s)%s",
                endpoint.id,
                exc.message,
                "; trying the next" if i + 1 < len(candidates) else "",
            )
            last = exc
            continue
        except BaseException:
            router.finished(health)
            raise
        router.succeeded(health)
        return endpoint, health, result
    if last is None:
        raise ServiceUnavailable("no endpoint to send this request to")
    raise last


async def call(
    router: Router, cell: Cell, candidates: list[EndpointInfo], route: str, prepared: Prepared
) -> tuple[EndpointInfo, dict[str, Any]]:
    endpoint, health, data = await _failover(
        router, cell, candidates, prepared, lambda e, body: e.engine.call(route, body)
    )
    router.finished(health)
    return endpoint, data


async def open_stream(
    router: Router, cell: Cell, candidates: list[EndpointInfo], route: str, prepared: Prepared
) -> tuple[EndpointInfo, Primed]:
    """A stream whose first chunk has already arrived: until then, failing over is still invisible."""

    async def attempt(endpoint: EndpointInfo, body: dict[str, Any]) -> tuple[ChunkStream, Any, Any]:
        stream = await endpoint.engine.open_stream(route, body)
        chunks = aiter(stream)
        try:
            first = await anext(chunks, None)
        except BaseException:
            await stream.aclose()
            raise
        return stream, chunks, first

    endpoint, health, (stream, chunks, first) = await _failover(router, cell, candidates, prepared, attempt)
    return endpoint, Primed(stream, chunks, first, router, health)


class Primed(ChunkStream):
    """A stream with its first chunk read ahead; it tells the router how the rest went."""

    def __init__(
        self,
        stream: ChunkStream,
        chunks: AsyncIterator[dict[str, Any]],
        first: dict[str, Any] | None,
        router: Router,
        health: Health,
    ) -> None:
        self.stream, self.chunks, self.first = stream, chunks, first
        self.router, self.health = router, health
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        if self.first is not None:
            yield self.first
        try:
            async for chunk in self.chunks:
                yield chunk
        except MxnError as exc:
            self.router.failed(self.health, exc.code or "stream broke")
            raise

    @property
    def buffered(self) -> int:
        """Chunks that have arrived and can be had without waiting (0 if the engine does not say)."""
        return self.stream.buffered

    async def aclose(self) -> None:
        if not self.closed:
            self.closed = True
            self.router.finished(self.health)
            await self.stream.aclose()

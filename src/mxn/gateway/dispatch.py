"""Send a prepared request to a deployment's endpoints, failing over while nothing has reached the client."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import anyio
import orjson

from mxn.catalog.registry import Cell, EndpointInfo
from mxn.engines import ChunkStream
from mxn.errors import MxnError, RateLimited, ServiceUnavailable, UpstreamError, UpstreamTimeout
from mxn.gateway.normalize import StreamNormalizer
from mxn.gateway.params import Prepared, for_endpoint
from mxn.moderation.check import StreamGuard, moderate_chunk
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
) -> tuple[EndpointInfo, ChunkStream]:
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


class Primed:
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
        return int(getattr(self.stream, "buffered", 0))

    async def aclose(self) -> None:
        if not self.closed:
            self.closed = True
            self.router.finished(self.health)
            await self.stream.aclose()


DONE = b"data: [DONE]\n\n"


def sse(data: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


# Called once when a stream ends, however it ends: (status, error code or None).
Finish = Callable[[int, str | None], Awaitable[None]]
CLIENT_CLOSED = 499


async def sse_events(
    stream: ChunkStream,
    norm: StreamNormalizer,
    include_usage: bool,
    finish: Finish,
    guard: StreamGuard | None = None,
) -> AsyncIterator[bytes]:
    """The client's stream. Once it has begun, an error is an event, then [DONE]; never a hang.

    Events of chunks that arrived together go out in one write; nothing waits for a chunk still to come.
    """
    status = CLIENT_CLOSED
    error: str | None = "client_closed"
    ready: list[bytes] = []
    try:
        async for chunk in stream:
            if "error" in chunk and not chunk.get("choices"):
                yield b"".join(ready) + sse({"error": _error_body(chunk["error"])})
                ready.clear()
                status, error = 502, "upstream_error"
                break
            out = norm.chunk(chunk)
            # With moderation, a chunk whose text is all held back for now is not sent.
            if out is not None and (guard is None or await moderate_chunk(guard, out, norm.chat)):
                ready.append(sse(out))
            if guard is not None and guard.blocked:
                break
            if ready and not getattr(stream, "buffered", 0):
                yield b"".join(ready)
                ready.clear()
        else:
            if ready:
                yield b"".join(ready)
                ready.clear()
            if guard is not None and guard.held():
                # The upstream ended without a finish_reason: what was held back still goes out (or is cut).
                yield sse(norm.text_chunk({i: await guard.feed(i, "", True) for i in guard.held()}))
            status, error = 200, None
        if ready:  # the loop stopped early: what was ready still goes first
            yield b"".join(ready)
            ready.clear()
        if guard is not None and guard.blocked:
            # Generation stops here (closing the stream cancels it upstream); the client is told why.
            yield sse({**norm.text_chunk({}, "content_filter"), "blocked": True})
            status, error = 200, "content_filter"
        if status == 200 and include_usage:
            yield sse(norm.usage_chunk())
    except MxnError as exc:
        status, error = exc.status, exc.code
        yield b"".join(ready) + sse(exc.body())
    except Exception as exc:  # e.g. a chunk of an unexpected shape: the stream still ends cleanly
        log.error("stream failed: %s", type(exc).__name__)
        broken = UpstreamError("the upstream sent a stream that could not be read")
        status, error = broken.status, broken.code
        yield b"".join(ready) + sse(broken.body())
    finally:
        with anyio.CancelScope(shield=True):
            await stream.aclose()
            await finish(status, error)
    yield DONE


def _error_body(err: Any) -> dict[str, Any]:
    message = err.get("message") if isinstance(err, dict) else str(err)
    return {"message": f"upstream error: {message}", "type": "upstream_error", "param": None, "code": "upstream_error"}

"""A streamed answer: the engine's chunks normalised, moderated and rendered in the client's protocol, then
settled. Once it has begun, an error is an event, then the end; never a hang."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, AsyncIterator
from typing import TYPE_CHECKING, Any

import anyio
from starlette.responses import StreamingResponse

from mxn.catalog.registry import EndpointInfo
from mxn.errors import MxnError, UpstreamError
from mxn.gateway import moderate
from mxn.gateway.dispatch import Primed
from mxn.gateway.normalize import StreamNormalizer

if TYPE_CHECKING:
    from mxn.gateway.pipeline import Call

log = logging.getLogger("mxn.stream")
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
CLIENT_CLOSED = 499  # the status a stream is settled with when the client left before its end


def respond(call: Call, endpoint: EndpointInfo, opened: Primed) -> StreamingResponse:
    return StreamingResponse(
        events(call, endpoint, opened),
        media_type="text/event-stream",
        headers={**SSE_HEADERS, **call.admission.headers},
    )


async def events(call: Call, endpoint: EndpointInfo, opened: Primed) -> AsyncIterator[bytes]:
    """The client's stream, settled once however it ends.

    Pieces of chunks that arrived together go out in one write; nothing waits for a chunk still to come.
    """
    protocol = call.protocol
    call.norm = protocol.normalizer(call)
    chunks = moderate.output_stream(call, normalized(opened, call.norm))
    status: int = CLIENT_CLOSED
    error: str | None = "client_closed"
    ready: list[bytes] = []
    try:
        async for piece in protocol.events(chunks, call):
            ready.append(piece)
            if not opened.buffered:
                yield b"".join(ready)
                ready.clear()
        if ready:
            yield b"".join(ready)
            ready.clear()
        status, error = 200, call.blocked
    except MxnError as exc:
        status, error = exc.status, exc.code
        yield b"".join(ready) + protocol.stream_error(exc)
    except Exception as exc:  # e.g. a chunk of an unexpected shape: the stream still ends cleanly
        log.error("stream failed: %s", type(exc).__name__)
        broken = UpstreamError("the upstream sent a stream that could not be read")
        status, error = broken.status, broken.code
        yield b"".join(ready) + protocol.stream_error(broken)
    finally:
        with anyio.CancelScope(shield=True):
            await opened.aclose()
            used = call.norm.usage()
            await call.admission.finish(status, used["prompt_tokens"], used["completion_tokens"], endpoint.id, error)
    yield protocol.stream_end()


async def normalized(chunks: AsyncIterable[dict[str, Any]], norm: StreamNormalizer) -> AsyncIterator[dict[str, Any]]:
    """The engine's chunks in OpenAI's shape; an error the upstream sent as a chunk ends the stream as one."""
    async for chunk in chunks:
        if "error" in chunk and not chunk.get("choices"):
            err = chunk["error"]
            raise UpstreamError(f"upstream error: {err.get('message') if isinstance(err, dict) else err}")
        out = norm.chunk(chunk)
        if out is not None:
            yield out

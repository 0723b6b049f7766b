"""An OpenAI-compatible upstream (vLLM, SGLang, Ollama, llama.cpp, TGI, ...) over pooled HTTP (aiohttp)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import aiohttp
import orjson

from mxn.engines.base import ChunkStream, EndpointConfig, Engine
from mxn.errors import InvalidRequest, MxnError, PayloadTooLarge, RateLimited, UpstreamError, UpstreamTimeout

DEFAULT_TIMEOUTS = {"connect": 10.0, "first_token": 300.0, "between_tokens": 300.0, "total": 3600.0}


@contextmanager
def upstream_errors(endpoint_id: int) -> Iterator[None]:
    """Translate transport and parsing failures into mxn errors at the engine boundary."""
    try:
        yield
    except MxnError:
        raise
    except TimeoutError:  # aiohttp's own timeouts are TimeoutErrors too
        raise UpstreamTimeout(f"endpoint {endpoint_id} timed out")
    except (aiohttp.ClientError, OSError) as exc:
        raise UpstreamError(f"endpoint {endpoint_id} failed: {type(exc).__name__}")
    except orjson.JSONDecodeError:
        raise UpstreamError(f"endpoint {endpoint_id} sent malformed JSON")


def _status_error(endpoint_id: int, status: int, body: bytes, retry_after: str | None = None) -> MxnError:
    """An upstream error answer, as the error our client should see."""
    message = f"endpoint {endpoint_id} answered {status}"
    try:
        detail = orjson.loads(body)
        err = detail.get("error", detail) if isinstance(detail, dict) else detail
        text = err.get("message") if isinstance(err, dict) else err
        if isinstance(text, str) and text:
            message = f"{message}: {text[:500]}"
    except orjson.JSONDecodeError:
        pass
    if status in (400, 422):
        return InvalidRequest(message, code="upstream_rejected")
    if status == 413:
        return PayloadTooLarge(message)
    if status == 429:
        return RateLimited(message, code="upstream_rate_limited", headers={"retry-after": retry_after or "1"})
    return UpstreamError(message)


class OpenAICompatEngine(Engine):
    """Its health is its upstream's, which the router probes over HTTP (`health()` stays None)."""

    def __init__(self, config: EndpointConfig, session: aiohttp.ClientSession) -> None:
        self.config = config
        self.session = session
        self.base = (config.url or "").rstrip("/")
        t = {**DEFAULT_TIMEOUTS, **config.timeouts}
        self.first_token = t["first_token"]
        self.total = t["total"]
        self.between_tokens = t["between_tokens"]
        # A whole answer must come within `total`; a stream's windows are kept per read in UpstreamStream.
        self.call_timeout = aiohttp.ClientTimeout(total=t["total"], sock_connect=t["connect"])
        self.stream_timeout = aiohttp.ClientTimeout(total=None, sock_connect=t["connect"])
        self.headers = {"content-type": "application/json"}
        if config.api_key:
            self.headers["authorization"] = f"Bearer {config.api_key}"

    async def call(self, route: str, body: dict[str, Any]) -> dict[str, Any]:
        with upstream_errors(self.config.id):
            async with self.session.post(
                f"{self.base}/{route}", data=orjson.dumps(body), headers=self.headers, timeout=self.call_timeout
            ) as response:
                content = await response.read()
            if response.status >= 400:
                raise _status_error(self.config.id, response.status, content, response.headers.get("retry-after"))
            data = orjson.loads(content)
        if not isinstance(data, dict):
            raise UpstreamError(f"endpoint {self.config.id} sent a non-object response")
        return data

    async def open_stream(self, route: str, body: dict[str, Any]) -> UpstreamStream:
        sent = time.monotonic()
        with upstream_errors(self.config.id):
            async with asyncio.timeout(self.first_token):
                response = await self.session.post(
                    f"{self.base}/{route}", data=orjson.dumps(body), headers=self.headers, timeout=self.stream_timeout
                )
                if response.status >= 400:
                    try:
                        content = await response.read()
                        raise _status_error(
                            self.config.id, response.status, content, response.headers.get("retry-after")
                        )
                    finally:
                        response.release()
        return UpstreamStream(self, response, sent)


class UpstreamStream(ChunkStream):
    """Chunks of an SSE or bare-JSON-lines stream, as dicts, as soon as each line arrives.

    The socket is read in whatever pieces arrive and split into lines here: one read and one timer per network
    read, not per line.
    """

    def __init__(self, engine: OpenAICompatEngine, response: aiohttp.ClientResponse, opened: float) -> None:
        self.engine = engine
        self.response = response
        self.opened = opened  # the first-token window began when the request was sent
        self.ended = False
        self._buffered = 0

    @property
    def buffered(self) -> int:
        # Chunks already received and parsed but not yet yielded: a consumer may send what it has in one write.
        return self._buffered

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[dict[str, Any]]:
        endpoint = self.engine.config.id
        deadline = self.opened + self.engine.total
        first_by = self.opened + self.engine.first_token
        first = True
        content = self.response.content
        rest = b""
        with upstream_errors(endpoint):
            while True:
                now = time.monotonic()
                wait = min(deadline, first_by) - now if first else min(deadline - now, self.engine.between_tokens)
                async with asyncio.timeout(max(wait, 0.001)):
                    data = await content.readany()
                if not data:  # the upstream closed the stream; a last line may lack its newline
                    self.ended = True
                    lines, rest = [rest], b""
                else:
                    *lines, rest = (rest + data).split(b"\n")
                payloads = [p for p in map(_payload, lines) if p is not None]
                for i, payload in enumerate(payloads):
                    if payload == b"[DONE]":
                        return
                    chunk = orjson.loads(payload)
                    if not isinstance(chunk, dict):
                        raise UpstreamError(f"endpoint {endpoint} sent a non-object chunk")
                    first = False
                    self._buffered = len(payloads) - i - 1
                    yield chunk
                self._buffered = 0
                if self.ended:
                    return

    async def aclose(self) -> None:
        # A stream read to its end gives its connection back to the pool; one cut short closes it, which is
        # how the upstream learns to stop generating.
        if self.response.content.at_eof():
            self.response.release()
        else:
            self.response.close()


def _payload(line: bytes) -> bytes | None:
    """The JSON of one stream line: `data: {...}` (SSE) or a bare `{...}` (JSON lines)."""
    line = line.strip()
    if not line:
        return None
    if line.startswith(b"data:"):
        return line[5:].strip()
    if line.startswith(b"{"):
        return line
    return None  # SSE comments, event:, id:, retry:

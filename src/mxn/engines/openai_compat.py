"""An OpenAI-compatible upstream (vLLM, SGLang, Ollama, llama.cpp, TGI, ...) over pooled HTTP."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import orjson

from mxn.engines import EndpointConfig
from mxn.errors import InvalidRequest, MxnError, PayloadTooLarge, RateLimited, UpstreamError, UpstreamTimeout

DEFAULT_TIMEOUTS = {"connect": 10.0, "first_token": 300.0, "between_tokens": 300.0, "total": 3600.0}


@contextmanager
def upstream_errors(endpoint_id: int) -> Iterator[None]:
    """Translate httpx and parsing failures into mxn errors at the engine boundary."""
    try:
        yield
    except MxnError:
        raise
    except (httpx.TimeoutException, TimeoutError):
        raise UpstreamTimeout(f"endpoint {endpoint_id} timed out")
    except httpx.HTTPError as exc:
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


class OpenAICompatEngine:
    supports_stream = True

    def __init__(self, config: EndpointConfig, client: httpx.AsyncClient) -> None:
        self.config = config
        self.client = client
        self.base = (config.url or "").rstrip("/")
        t = {**DEFAULT_TIMEOUTS, **config.timeouts}
        self.first_token = t["first_token"]
        self.total = t["total"]
        self.between_tokens = t["between_tokens"]
        # The socket may wait as long as either window; which window applies is decided per chunk below.
        read = max(t["first_token"], t["between_tokens"])
        self.timeout = httpx.Timeout(connect=t["connect"], read=read, write=t["connect"], pool=t["connect"])
        self.headers = {"content-type": "application/json"}
        if config.api_key:
            self.headers["authorization"] = f"Bearer {config.api_key}"

    def _request(self, route: str, body: dict[str, Any]) -> httpx.Request:
        return self.client.build_request(
            "POST", f"{self.base}/{route}", content=orjson.dumps(body), headers=self.headers, timeout=self.timeout
        )

    async def call(self, route: str, body: dict[str, Any]) -> dict[str, Any]:
        with upstream_errors(self.config.id):
            async with asyncio.timeout(self.total):
                response = await self.client.send(self._request(route, body))
            if response.status_code >= 400:
                raise _status_error(
                    self.config.id, response.status_code, response.content, response.headers.get("retry-after")
                )
            data = orjson.loads(response.content)
        if not isinstance(data, dict):
            raise UpstreamError(f"endpoint {self.config.id} sent a non-object response")
        return data

    async def open_stream(self, route: str, body: dict[str, Any]) -> UpstreamStream:
        sent = time.monotonic()
        with upstream_errors(self.config.id):
            async with asyncio.timeout(self.first_token):
                response = await self.client.send(self._request(route, body), stream=True)
                if response.status_code >= 400:
                    try:
                        content = await response.aread()
                        raise _status_error(
                            self.config.id, response.status_code, content, response.headers.get("retry-after")
                        )
                    finally:
                        await response.aclose()
        return UpstreamStream(self, response, sent)


class UpstreamStream:
    """Chunks of an SSE or bare-JSON-lines stream, as dicts, as soon as each line arrives."""

    def __init__(self, engine: OpenAICompatEngine, response: httpx.Response, opened: float) -> None:
        self.engine = engine
        self.response = response
        self.opened = opened  # the first-token window began when the request was sent

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[dict[str, Any]]:
        endpoint = self.engine.config.id
        deadline = self.opened + self.engine.total
        first_by = self.opened + self.engine.first_token
        first = True
        lines = self.response.aiter_lines()
        with upstream_errors(endpoint):
            while True:
                now = time.monotonic()
                wait = min(deadline, first_by) - now if first else min(deadline - now, self.engine.between_tokens)
                try:
                    async with asyncio.timeout(max(wait, 0.001)):
                        line = await anext(lines)
                except StopAsyncIteration:
                    return
                payload = _payload(line)
                if payload is None:
                    continue
                if payload == b"[DONE]":
                    return
                chunk = orjson.loads(payload)
                if not isinstance(chunk, dict):
                    raise UpstreamError(f"endpoint {endpoint} sent a non-object chunk")
                first = False
                yield chunk

    async def aclose(self) -> None:
        await self.response.aclose()


def _payload(line: str) -> bytes | None:
    """The JSON of one stream line: `data: {...}` (SSE) or a bare `{...}` (JSON lines)."""
    line = line.strip()
    if not line:
        return None
    if line.startswith("data:"):
        return line[5:].strip().encode()
    if line.startswith("{"):
        return line.encode()
    return None  # SSE comments, event:, id:, retry:

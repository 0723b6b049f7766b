"""One streamed chat completion, timed the way vLLM's benchmark_serving times it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson


@dataclass
class StreamResult:
    text: str = ""
    ttft: float | None = None  # seconds from sending to the first content
    itl: list[float] = field(default_factory=list)  # seconds between consecutive content chunks
    latency: float = 0.0  # seconds from sending to the end of the stream
    prompt_tokens: int | None = None
    completion_tokens: int | None = None  # from the server's usage, when it sent one
    chunks: int = 0  # content chunks received
    finish_reason: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def headers(api_key: str | None) -> dict[str, str]:
    """Headers of every client request: the JSON content type and the key, when there is one."""
    # Every body the client tools send is JSON, and servers insist on being told so: vLLM answers 400 ("Only
    # 'application/json' is allowed") and llama.cpp's server 500 to a body without this header.
    sent = {"content-type": "application/json"}
    if api_key:
        sent["authorization"] = f"Bearer {api_key}"
    return sent


async def stream_chat(http: aiohttp.ClientSession, url: str, api_key: str | None, body: dict[str, Any]) -> StreamResult:
    """POST `body` with stream on to `url` (a .../chat/completions URL); never raises for HTTP errors.

    aiohttp, as vLLM's own benchmark client uses: on a machine whose cores the engine shares, the client's CPU per
    chunk slows what it measures, and aiohttp's C parser reads a chunk for well under half of httpx's cost.
    """
    result = StreamResult()
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    last: float | None = None
    parts: list[str] = []
    try:
        async with http.post(url, data=orjson.dumps(body), headers=headers(api_key)) as r:
            if r.status >= 400:
                detail = (await r.read()).decode(errors="replace")[:300]
                result.error = f"HTTP {r.status}: {detail}"
                return result
            async for raw in r.content:  # one line at a time
                if not raw.startswith(b"data:"):
                    continue
                data = raw[5:].strip()
                if data == b"[DONE]":
                    break
                chunk = orjson.loads(data)
                if "error" in chunk and not chunk.get("choices"):
                    result.error = str(chunk["error"].get("message", chunk["error"]))[:300]
                    break
                if isinstance(chunk.get("usage"), dict):
                    result.prompt_tokens = chunk["usage"].get("prompt_tokens")
                    result.completion_tokens = chunk["usage"].get("completion_tokens")
                for choice in chunk.get("choices") or ():
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        now = time.perf_counter()
                        if last is None:
                            result.ttft = now - start
                        else:
                            result.itl.append(now - last)
                        last = now
                        result.chunks += 1
                        parts.append(text)
                    if choice.get("finish_reason"):
                        result.finish_reason = choice["finish_reason"]
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"[:300]
    result.latency = time.perf_counter() - start
    result.text = "".join(parts)
    return result


def session(timeout: float, connections: int) -> aiohttp.ClientSession:
    """The client tools' HTTP session: `connections` pooled keep-alive connections, no proxy from the environment.

    `timeout` bounds connecting and each wait for data, not a whole answer (a long stream that keeps coming is fine).
    """
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout),
        connector=aiohttp.TCPConnector(limit=connections),
        trust_env=False,
    )

"""One streamed chat completion, timed the way vLLM's benchmark_serving times it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import httpx
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


async def stream_chat(http: httpx.AsyncClient, url: str, api_key: str | None, body: dict[str, Any]) -> StreamResult:
    """POST `body` with stream on to `url` (a .../chat/completions URL); never raises for HTTP errors."""
    result = StreamResult()
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    last: float | None = None
    parts: list[str] = []
    try:
        async with http.stream("POST", url, content=orjson.dumps(body), headers=headers(api_key)) as r:
            if r.status_code >= 400:
                detail = (await r.aread()).decode(errors="replace")[:300]
                result.error = f"HTTP {r.status_code}: {detail}"
                return result
            async for line in r.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
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
    except (httpx.HTTPError, ValueError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"[:300]
    result.latency = time.perf_counter() - start
    result.text = "".join(parts)
    return result

"""A very fast OpenAI-compatible upstream for gateway benchmarks: precomputed bytes, a bare ASGI app.

    python bench/mock_upstream.py --port 9100 [--chunks 20] [--token-delay 0]

POST .../chat/completions answers a fixed completion, or with `"stream": true` a stream of `--chunks`
content chunks (`--token-delay` seconds apart), a usage chunk and [DONE]. GET .../models answers a list.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import orjson
import uvicorn

CHUNKS = 20
DELAY = 0.0
USAGE = {"prompt_tokens": 12, "completion_tokens": CHUNKS, "total_tokens": 12 + CHUNKS}
COMPLETION = b""
STREAM: list[bytes] = []
MODELS = orjson.dumps({"object": "list", "data": [{"id": "mock", "object": "model", "created": 0, "owned_by": "x"}]})
JSON = [(b"content-type", b"application/json")]
SSE = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


def build(chunks: int) -> None:
    global COMPLETION, STREAM, USAGE
    USAGE = {"prompt_tokens": 12, "completion_tokens": chunks, "total_tokens": 12 + chunks}
    COMPLETION = orjson.dumps(
        {
            "id": "chatcmpl-mock",
            "object": "chat.completion",
            "created": 1700000000,
            "model": "mock",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": " tok" * chunks}, "finish_reason": "stop"}
            ],
            "usage": USAGE,
        }
    )
    head = {"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1700000000, "model": "mock"}
    STREAM = [
        b"data: "
        + orjson.dumps(
            {
                **head,
                "choices": [
                    {"index": 0, "delta": {"content": " tok"}, "finish_reason": "stop" if i == chunks - 1 else None}
                ],
            }
        )
        + b"\n\n"
        for i in range(chunks)
    ]
    STREAM.append(b"data: " + orjson.dumps({**head, "choices": [], "usage": USAGE}) + b"\n\n")
    STREAM.append(b"data: [DONE]\n\n")


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    if scope["method"] == "GET":
        await send({"type": "http.response.start", "status": 200, "headers": JSON})
        await send({"type": "http.response.body", "body": MODELS})
        return
    if b'"stream":true' in body.replace(b" ", b""):
        await send({"type": "http.response.start", "status": 200, "headers": SSE})
        for part in STREAM:
            if DELAY:
                await asyncio.sleep(DELAY)
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    await send({"type": "http.response.start", "status": 200, "headers": JSON})
    await send({"type": "http.response.body", "body": COMPLETION})


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--chunks", type=int, default=20)
    ap.add_argument("--token-delay", type=float, default=0.0)
    args = ap.parse_args()
    DELAY = args.token_delay
    build(args.chunks)
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
        backlog=4096,
    )

"""The least a Python gateway on mxn's stack can cost: uvicorn (uvloop + httptools) receiving a request and
aiohttp passing it to the upstream, with no logic at all. A reference for bench/gateway_overhead.py.

    python bench/python_floor.py --port 9200 --upstream http://127.0.0.1:9100
"""

from __future__ import annotations

import argparse
from typing import Any

import aiohttp
import uvicorn

UPSTREAM = ""
session: aiohttp.ClientSession | None = None


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    global session
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), auto_decompress=False)
                await send({"type": "lifespan.startup.complete"})
            else:
                await session.close()  # type: ignore[union-attr]
                await send({"type": "lifespan.shutdown.complete"})
                return
    assert session is not None
    body, more = b"", True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    method = scope["method"]
    async with session.request(
        method, UPSTREAM + scope["path"], data=body or None, headers={"content-type": "application/json"}
    ) as r:
        headers = [(b"content-type", r.headers.get("content-type", "application/json").encode())]
        await send({"type": "http.response.start", "status": r.status, "headers": headers})
        async for data in r.content.iter_any():
            await send({"type": "http.response.body", "body": data, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--upstream", required=True)
    args = ap.parse_args()
    UPSTREAM = args.upstream.rstrip("/")
    uvicorn.run(
        app, host="127.0.0.1", port=args.port, loop="uvloop", http="httptools", access_log=False, log_level="warning"
    )

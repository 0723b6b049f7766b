"""`mxn engine`'s own OpenAI server, in-process: OpenAI's envelope and SSE framing from `mxn.wire`."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import orjson

from mxn.engines.local.server import EngineServer


async def test_the_engine_server_answers_in_openai_shapes(model_dir: Path) -> None:
    server = EngineServer(str(model_dir), "tiny", {})
    body = {"model": "tiny", "prompt": "hello", "max_tokens": 4, "temperature": 0, "ignore_eos": True}
    transport = httpx.ASGITransport(app=server.app())
    async with httpx.AsyncClient(transport=transport, base_url="http://engine") as client:
        for _ in range(300):
            health = await client.get("/health")
            if health.status_code == 200:
                break
            assert health.json()["error"]["code"] == "loading"
            await asyncio.sleep(0.1)
        assert health.json()["status"] == "ok" and health.json()["loaded"] is True

        whole = (await client.post("/v1/completions", json=body)).json()
        assert whole["id"].startswith("cmpl-") and whole["object"] == "text_completion"
        assert list(whole)[:4] == ["id", "object", "created", "model"] and whole["model"] == "tiny"
        assert whole["choices"][0]["logprobs"] is None and whole["usage"]["completion_tokens"] == 4

        chat = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "ignore_eos": True}
        stream = {**chat, "stream": True, "stream_options": {"include_usage": True}}
        raw = (await client.post("/v1/chat/completions", json=stream)).content
        events = raw.split(b"\n\n")
        assert events[-2:] == [b"data: [DONE]", b""]
        chunks = [orjson.loads(e.removeprefix(b"data: ")) for e in events[:-2]]
        assert {c["id"] for c in chunks} == {chunks[0]["id"]} and chunks[0]["id"].startswith("chatcmpl-")
        assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
        assert chunks[-2]["choices"][0]["finish_reason"] == "length" and chunks[-1]["usage"]["completion_tokens"] == 3

        refused = await client.post("/v1/completions", json={**body, "logprobs": 1})
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "logprobs"
    await server.engine.close()

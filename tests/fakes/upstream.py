"""A fake OpenAI-compatible upstream, run as its own process by the tests.

Modes: `sse` (a well-behaved vLLM), `jsonl` (GenStudio's bare JSON lines: no `data:`, no [DONE],
`object`/`created` only on the last chunk), `nousage` (no usage, id or created; odd finish_reason),
`fail` (500 on every generation), `busy` (429 with Retry-After), `dies` (a stream that breaks off after two chunks).
With `--json-only`, in any mode, a POST whose body is not declared `application/json` gets vLLM's 400.
GET /_last returns the last request body it received, so tests can see what the gateway forwarded;
GET /_streams counts streams sent to the end and streams the client closed early.
A user message `reverse: TEXT` is answered with TEXT reversed (an answer the question does not contain).
Tools, as vLLM serves them: a chat request with `tools` (and `tool_choice` not "none") whose last message is the
user's is answered with a call of the first tool (or the one `tool_choice` names), its required string arguments
set to the user's text (numbers to 1), finish_reason `tool_calls`, streamed as vLLM streams them (the name first,
then the arguments in pieces); once the last message is a tool's result, the answer is `tool said: RESULT`.
POST /moderations is a classifier in OpenAI's moderation shape: it flags text containing "classifier-bad".
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import time
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

MODE = "sse"
REJECT: set[str] = set()
DELAY = 0.0
JSON_ONLY = False
LAST: dict[str, Any] = {}
STREAMS = {"completed": 0, "cancelled": 0}


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def _not_json(request: Request) -> Response | None:
    """vLLM's answer to a body not declared JSON (its `validate_json_request`), when `--json-only` is on."""
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if not JSON_ONLY or media_type == "application/json":
        return None
    message = "Unsupported Media Type: Only 'application/json' is allowed"
    return _json({"error": {"message": message, "type": "BadRequestError", "code": 400}}, 400)


def _tool_call(body: dict[str, Any]) -> dict[str, Any] | None:
    """The call this fake makes of the request's tools, or None when it answers in text."""
    tools, choice, messages = body.get("tools"), body.get("tool_choice"), body.get("messages") or []
    if not tools or choice == "none" or not messages or messages[-1].get("role") != "user":
        return None
    try:  # a shape this fake does not know (a fuzzer's): answered in text, as an engine would ignore it
        tool = tools[0]["function"]
        if isinstance(choice, dict):
            tool = next(t["function"] for t in tools if t["function"]["name"] == choice["function"]["name"])
        return _call_of(tool, messages[-1].get("content"))
    except (KeyError, TypeError, AttributeError, StopIteration):
        return None


def _call_of(tool: dict[str, Any], text: Any) -> dict[str, Any]:
    text = text if isinstance(text, str) else " ".join(p.get("text", "") for p in text or [])
    schema = tool.get("parameters") or {}
    props = schema.get("properties") or {}
    args = {k: 1 if props.get(k, {}).get("type") in ("number", "integer") else text for k in schema.get("required", [])}
    return {
        "id": "call_fake1",
        "type": "function",
        "function": {"name": tool["name"], "arguments": orjson.dumps(args).decode()},
    }


def _reply(body: dict[str, Any]) -> str:
    messages = body.get("messages") or []
    if messages and messages[-1].get("role") == "tool":
        return f"tool said: {messages[-1].get('content')}"
    if "messages" in body:
        users = [m for m in body["messages"] if m.get("role") == "user"]
        text = users[-1].get("content") if users else ""
        if isinstance(text, str) and text.startswith("reverse: "):
            text = text.removeprefix("reverse: ")[::-1]
        return f"echo({len(body['messages'])}): {text}"
    return f"completion of: {body.get('prompt')}"


def _pieces(text: str) -> list[str]:
    words = text.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


async def generate(request: Request) -> Response:
    if refused := _not_json(request):
        return refused
    body = orjson.loads(await request.body())
    LAST.clear()
    LAST.update(body)
    bad = sorted(REJECT & set(body))
    if bad:
        return _json({"error": {"message": f"unsupported parameter: {bad[0]}", "type": "BadRequestError"}}, 400)
    if MODE == "fail":
        return _json({"error": {"message": "engine crashed", "type": "InternalServerError"}}, 500)
    if MODE == "busy":
        response = _json({"error": {"message": "too many requests", "type": "RateLimitError"}}, 429)
        response.headers["retry-after"] = "7"
        return response
    chat = request.url.path.endswith("chat/completions")
    call = _tool_call(body) if chat else None
    if call is not None:
        return _called(body, call)
    text = _reply(body)
    usage = {"prompt_tokens": 11, "completion_tokens": len(_pieces(text)), "total_tokens": 11 + len(_pieces(text))}
    if body.get("stream"):
        return StreamingResponse(_stream(body, chat, text, usage), media_type="text/event-stream")
    if DELAY:  # not a wait: a slow engine answers a whole completion as late as it would have streamed it
        await asyncio.sleep(DELAY * len(_pieces(text)))
    data: dict[str, Any] = {
        "id": "up-1",
        "object": "chat.completion" if chat else "text_completion",
        "created": 1700000000,
        "model": body.get("model"),
        "usage": usage,
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                **({"message": {"role": "assistant", "content": text}} if chat else {"text": text}),
            }
        ],
    }
    if MODE == "nousage":
        for k in ("id", "created", "usage", "object"):
            data.pop(k)
        data["choices"][0]["finish_reason"] = "eos"
    return _json(data)


def _called(body: dict[str, Any], call: dict[str, Any]) -> Response:
    """A tool call, whole or streamed."""
    usage = {"prompt_tokens": 11, "completion_tokens": 9, "total_tokens": 20}
    if not body.get("stream"):
        message = {"role": "assistant", "content": None, "tool_calls": [call]}
        choice = {"index": 0, "finish_reason": "tool_calls", "message": message}
        return _json({"id": "up-t", "object": "chat.completion", "created": 1700000000, "model": body.get("model"),
                      "usage": usage, "choices": [choice]})  # fmt: skip
    args = call["function"]["arguments"]
    head = {
        "index": 0,
        "id": call["id"],
        "type": "function",
        "function": {"name": call["function"]["name"], "arguments": ""},
    }
    deltas = [{"role": "assistant", "content": None, "tool_calls": [head]}]
    deltas += [
        {"tool_calls": [{"index": 0, "function": {"arguments": args[i : i + 8]}}]} for i in range(0, len(args), 8)
    ]

    async def parts():  # type: ignore[no-untyped-def]
        for i, delta in enumerate(deltas):
            finish = "tool_calls" if i == len(deltas) - 1 else None
            chunk = {"id": "up-t", "object": "chat.completion.chunk", "created": 1, "model": body.get("model"),
                     "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}  # fmt: skip
            yield b"data: " + orjson.dumps(chunk) + b"\n\n"
        if (body.get("stream_options") or {}).get("include_usage"):
            chunk = {"id": "up-t", "object": "chat.completion.chunk", "created": 1, "model": body.get("model"),
                     "choices": [], "usage": usage}  # fmt: skip
            yield b"data: " + orjson.dumps(chunk) + b"\n\n"
        yield b"data: [DONE]\n\n"

    return StreamingResponse(parts(), media_type="text/event-stream")


async def _stream(body: dict[str, Any], chat: bool, text: str, usage: dict[str, int]):  # type: ignore[no-untyped-def]
    try:
        async for part in _stream_parts(body, chat, text, usage):
            yield part
    except (asyncio.CancelledError, GeneratorExit):
        STREAMS["cancelled"] += 1
        raise
    STREAMS["completed"] += 1


async def _stream_parts(body: dict[str, Any], chat: bool, text: str, usage: dict[str, int]):  # type: ignore[no-untyped-def]
    pieces = _pieces(text)
    for i, piece in enumerate(pieces):
        if DELAY:
            await asyncio.sleep(DELAY)  # not a wait: the pace of a slow engine (--delay), what tests time against
        last = i == len(pieces) - 1
        choice: dict[str, Any] = {
            "index": 0,
            "finish_reason": ("eos" if MODE == "nousage" else "stop") if last else None,
        }
        if chat:
            choice["delta"] = {"content": piece} if i else {"role": "assistant", "content": piece}
        else:
            choice["text"] = piece
        chunk: dict[str, Any] = {"id": "up-2", "model": body.get("model"), "choices": [choice]}
        if MODE == "jsonl":
            if last:
                chunk.update(object="chat.completion.chunk", created=int(time.time()), usage=usage)
            yield orjson.dumps(chunk) + b"\n"
            continue
        if MODE == "nousage":
            chunk.pop("id")
        else:
            chunk.update(object="chat.completion.chunk" if chat else "text_completion", created=int(time.time()))
        yield b"data: " + orjson.dumps(chunk) + b"\n\n"
        if MODE == "dies" and i == 1:
            raise RuntimeError("the engine process died")
    if MODE == "sse" and (body.get("stream_options") or {}).get("include_usage"):
        yield (
            b"data: "
            + orjson.dumps(
                {
                    "id": "up-2",
                    "object": "chat.completion.chunk",
                    "created": 1,
                    "model": body.get("model"),
                    "choices": [],
                    "usage": usage,
                }
            )
            + b"\n\n"
        )
    if MODE != "jsonl":
        yield b"data: [DONE]\n\n"


async def embeddings(request: Request) -> Response:
    if refused := _not_json(request):
        return refused
    body = orjson.loads(await request.body())
    LAST.clear()
    LAST.update(body)
    inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
    data = [
        {
            "object": "embedding",
            "index": i,
            "embedding": [b / 255 for b in hashlib.sha256(str(x).encode()).digest()[:8]],
        }
        for i, x in enumerate(inputs)
    ]
    return _json(
        {
            "object": "list",
            "data": data,
            "model": body.get("model"),
            "usage": {"prompt_tokens": 3 * len(inputs), "total_tokens": 3 * len(inputs)},
        }
    )


async def models(_request: Request) -> Response:
    return _json({"object": "list", "data": [{"id": "fake", "object": "model", "created": 0, "owned_by": "fake"}]})


async def last(_request: Request) -> Response:
    return _json(LAST)


async def streams(_request: Request) -> Response:
    return _json(STREAMS)


async def moderations(request: Request) -> Response:
    if refused := _not_json(request):
        return refused
    text = orjson.loads(await request.body()).get("input", "")
    return _json({"id": "modr-1", "results": [{"flagged": "classifier-bad" in text, "categories": {}}]})


app = Starlette(
    routes=[
        Route("/v1/chat/completions", generate, methods=["POST"]),
        Route("/v1/completions", generate, methods=["POST"]),
        Route("/v1/embeddings", embeddings, methods=["POST"]),
        Route("/v1/models", models),
        Route("/_last", last),
        Route("/_streams", streams),
        Route("/moderations", moderations, methods=["POST"]),
    ]
)

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mode", default="sse", choices=["sse", "jsonl", "nousage", "fail", "dies", "busy"])
    parser.add_argument("--reject", default="", help="comma-separated parameters answered with 400")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds between stream chunks")
    parser.add_argument("--json-only", action="store_true", help="400 to a POST not sent as application/json")
    args = parser.parse_args()
    MODE, DELAY, JSON_ONLY = args.mode, args.delay, args.json_only
    REJECT = {x for x in args.reject.split(",") if x}
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")

"""OpenAI's wire format, shared by the gateway and the embedded engine's own server: SSE framing, response ids,
the fields around a completion's choices, and JSON bodies in and out. Imports nothing of `mxn.gateway`."""

from __future__ import annotations

import itertools
import secrets
import time
from typing import Any

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from mxn.errors import ClientGone, InvalidRequest, MxnError, PayloadTooLarge

# --- SSE ---
DONE = b"data: [DONE]\n\n"


def sse(data: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


def sse_event(name: str, data: dict[str, Any]) -> bytes:
    """A server-sent event with its `event:` line, as the Responses and Anthropic streams name theirs."""
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


# --- ids ---
# Unique across replicas and restarts without asking the OS for randomness on every request.
_PROCESS = secrets.token_hex(6)
_serial = itertools.count()


def request_id() -> str:
    return f"{_PROCESS}{next(_serial):x}"


def new_id(prefix: str) -> str:
    return f"{prefix}-{_PROCESS}{next(_serial):012x}"


def completion_id(chat: bool) -> str:
    """`chatcmpl-...` for a chat completion, `cmpl-...` for a text completion."""
    return new_id("chatcmpl" if chat else "cmpl")


# --- the envelope ---
FINISH_REASONS = {"stop", "length", "tool_calls", "content_filter", "function_call"}
_FINISH_ALIASES = {
    "eos": "stop",
    "eos_token": "stop",
    "stop_sequence": "stop",
    "end_turn": "stop",
    "abort": "stop",
    "max_tokens": "length",
    "max_length": "length",
    "model_length": "length",
    "tool_use": "tool_calls",
}


def finish_reason(value: Any) -> str | None:
    """OpenAI's finish_reason for whatever an engine called it (`eos`, `max_tokens`, ...)."""
    if value is None or value in FINISH_REASONS:
        return value
    return _FINISH_ALIASES.get(str(value).lower(), "stop")


def object_name(chat: bool, chunk: bool = False) -> str:
    if chat:
        return "chat.completion.chunk" if chunk else "chat.completion"
    return "text_completion"  # a text completion's stream chunks are `text_completion` too


def envelope(
    response_id: str, chat: bool, model: str, created: int | None = None, chunk: bool = False
) -> dict[str, Any]:
    """The fields around a completion's choices, in OpenAI's order: id, object, created, model."""
    return {
        "id": response_id,
        "object": object_name(chat, chunk),
        "created": int(time.time()) if created is None else created,
        "model": model,
    }


def usage(prompt: int, completion: int) -> dict[str, Any]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


# --- JSON bodies ---
def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS),
        status_code=status,
        headers=headers,
        media_type="application/json",
    )


def error_response(exc: MxnError) -> Response:
    return Response(exc.json(), status_code=exc.status, headers=exc.headers, media_type="application/json")


async def read_json(request: Request, max_bytes: int, max_depth: int) -> dict[str, Any]:
    """A request's JSON object, read within a size and a nesting limit."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(f"request body is larger than {max_bytes} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise PayloadTooLarge(f"request body is larger than {max_bytes} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        raise ClientGone("the client went away while sending its request")
    raw = b"".join(chunks)
    if not raw.strip():
        raise InvalidRequest("the request body is empty; send a JSON object")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"We could not parse the JSON body of your request: {exc.msg}", code="invalid_json")
    if not isinstance(data, dict):
        raise InvalidRequest("the request body must be a JSON object", code="invalid_json")
    if _depth(data) > max_depth:
        raise InvalidRequest(f"the JSON body is nested deeper than {max_depth} levels", code="invalid_json")
    return data


def _depth(value: Any) -> int:
    """Nesting depth of containers, iteratively (a recursive walk could itself be the bomb)."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if level > deepest:
            deepest = level
        children = item.values() if isinstance(item, dict) else item
        stack.extend((c, level + 1) for c in children if isinstance(c, dict | list))
    return deepest

"""Read a JSON request body within size and depth limits, and validate it into a protocol model."""

from __future__ import annotations

import logging
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect, Request

from mxn.errors import ClientGone, InvalidRequest, PayloadTooLarge

M = TypeVar("M", bound=BaseModel)
log = logging.getLogger("mxn.protocol")


async def read_json(request: Request, max_bytes: int, max_depth: int) -> dict[str, Any]:
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


_seen_extras: set[str] = set()


def validate(model: type[M], data: dict[str, Any]) -> M:
    try:
        parsed = model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc)
    if parsed.model_extra:
        for name in parsed.model_extra.keys() - _seen_extras:
            # Forwarded as they are; logged once per name so that typos can be found.
            _seen_extras.add(name)
            log.info("forwarding unknown request field %r", name[:64])
    return parsed


def validation_error(exc: ValidationError) -> InvalidRequest:
    err = exc.errors(include_url=False)[0]
    loc = [str(p) for p in err["loc"] if not _is_union_tag(p)]
    param = ".".join(loc) or None
    return InvalidRequest(f"{param}: {err['msg']}" if param else err["msg"], param=param)


def _is_union_tag(part: object) -> bool:
    # pydantic names union members in error locations ('function-after[...]', 'str', 'list[str]').
    return isinstance(part, str) and (part in {"str", "int", "float", "bool"} or "[" in part)

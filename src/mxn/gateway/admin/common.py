"""What the /admin route modules share: the app's state, who is asking, ids from paths."""

from __future__ import annotations

from fastapi import Request

from mxn.audit import Actor, actor_of
from mxn.errors import NotFound
from mxn.gateway.state import AppState


def state(request: Request) -> AppState:
    found: AppState = request.app.state.mxn
    return found


def actor(request: Request) -> Actor:
    return actor_of(request)


def number(raw: str, what: str) -> int:
    """A path's id as an int. The GET and DELETE routes by id take `item_id` as text, as the OpenAPI document has
    always said; anything but ASCII digits is a 404, as a missing row is."""
    if not (raw.isascii() and raw.isdigit()):  # str.isdigit() also takes '²', which int() refuses
        raise NotFound(f"no {what} '{raw[:64]}'", code=f"{what}_not_found")
    return int(raw)

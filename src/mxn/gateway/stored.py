"""Stored responses of the Responses API: kept for the user who made them until `responses_ttl` runs out.

Another user's response, or an expired one, is answered as one that does not exist. Keeping a response never
fails or holds up its answer: while the store is known to be away it is not tried, otherwise it gets
KEEP_TIMEOUT, and a response that could not be kept says `"store": false`. Each write also removes up to SWEEP
expired responses, so the table stays bounded with no task of its own.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, delete, select

from mxn.gateway.state import AppState
from mxn.store.db import unreachable
from mxn.store.models import StoredResponse

log = logging.getLogger("mxn.responses")
KEEP_TIMEOUT = 2.0
SWEEP = 50


async def keep(state: AppState, user_id: int, response: dict[str, Any], items: list[dict[str, Any]]) -> bool:
    """Store `response` (and the input items it answered) for `user_id`; False when it could not be."""
    if not state.store_health.up:
        return False
    now = datetime.now(UTC)
    row = StoredResponse(
        id=response["id"],
        user_id=user_id,
        created_at=now,
        expires_at=now + timedelta(seconds=state.settings.responses_ttl),
        model=response["model"],
        input=items,
        response=response,
    )
    expired = select(StoredResponse.id).where(StoredResponse.expires_at <= now).limit(SWEEP)
    try:
        async with asyncio.timeout(KEEP_TIMEOUT), state.sessions() as s, s.begin():
            s.add(row)
            await s.execute(delete(StoredResponse).where(StoredResponse.id.in_(expired)))
    except Exception as exc:
        if unreachable(exc) or isinstance(exc, TimeoutError):
            state.store_health.failed(exc)  # logged once for the outage, not per response
        else:
            log.warning("a response could not be stored: %s", type(exc).__name__)
        return False
    return True


def _own(user_id: int, response_id: str) -> tuple[ColumnElement[bool], ...]:
    """The user's own unexpired response with this id: anyone else's, or an expired one, is not there."""
    now = datetime.now(UTC)
    return StoredResponse.id == response_id, StoredResponse.user_id == user_id, StoredResponse.expires_at > now


async def find(state: AppState, user_id: int, response_id: str) -> StoredResponse | None:
    """The user's own unexpired response with this id, or None."""
    async with state.sessions() as s:
        row = await s.scalar(select(StoredResponse).where(*_own(user_id, response_id)))
    return row


async def remove(state: AppState, user_id: int, response_id: str) -> bool:
    """Delete the user's own response; False when there was none to delete."""
    async with state.sessions() as s, s.begin():
        done = await s.execute(delete(StoredResponse).where(*_own(user_id, response_id)))
    return bool(getattr(done, "rowcount", 0))


def item_page(items: list[dict[str, Any]], limit: int, order: str, after: str | None) -> dict[str, Any]:
    """A page of input items in OpenAI's list form: `after` an item id, `order` asc or desc (OpenAI's default)."""
    ordered = items if order == "asc" else items[::-1]
    if after is not None:
        ids = [i.get("id") for i in ordered]
        ordered = ordered[ids.index(after) + 1 :] if after in ids else []
    page = ordered[:limit]
    return {
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else "",
        "last_id": page[-1]["id"] if page else "",
        "has_more": len(ordered) > limit,
    }

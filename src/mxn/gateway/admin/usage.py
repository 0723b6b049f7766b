"""/admin/usage, /admin/audit, /admin/alerts: what happened, the newest first."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from mxn import alerts, audit
from mxn.gateway.admin.common import state
from mxn.gateway.usage_views import parse_since, usage_response, usage_rows
from mxn.wire import json_response

router = APIRouter()


@router.get("/usage")
async def admin_usage(
    request: Request, user: str | None = None, since: str | None = None, limit: int = 10_000, format: str = "json"
) -> Response:
    async with state(request).sessions() as s:
        rows = await usage_rows(s, user=user, since=since, limit=limit)
    return usage_response(rows, format)


@router.get("/audit")
async def list_audit(
    request: Request, action: str | None = None, actor: str | None = None, since: str | None = None, limit: int = 1000
) -> Response:
    """The newest first."""
    async with state(request).sessions() as s:
        found = await audit.rows(
            s, action=action, actor=actor, since=parse_since(since), limit=max(1, min(limit, 10_000))
        )
        return json_response({"data": [audit.view(a) for a in found]})


@router.get("/alerts")
async def list_alerts(
    request: Request, kind: str | None = None, user: int | None = None, since: str | None = None, limit: int = 1000
) -> Response:
    """The newest first; `kind` is one of usage_spike, new_ip, quota_80, quota_100, endpoint_down."""
    async with state(request).sessions() as s:
        found = await alerts.rows(
            s, kind=kind, user_id=user, since=parse_since(since), limit=max(1, min(limit, 10_000))
        )
        return json_response({"data": [alerts.view(a) for a in found]})

"""/api: what a user does for themselves with their key (or console session): profile, codes, usage."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from mxn.accounts import codes
from mxn.gateway.auth import api_principal
from mxn.gateway.responses import json_response
from mxn.gateway.state import AppState
from mxn.gateway.usage_views import usage_response, usage_rows
from mxn.store.models import ApiKey, User

router = APIRouter(prefix="/api", tags=["user"])


class Redeem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: str = Field(min_length=4, max_length=128)


@router.post("/codes/redeem")
async def redeem(body: Redeem, request: Request) -> Response:
    principal = await api_principal(request)
    state: AppState = request.app.state.mxn
    async with state.sessions() as s:
        amount = await codes.redeem(s, state.secret, principal.user_id, body.code)
        user = await s.get(User, principal.user_id)
        return json_response({"redeemed": amount, "quota": user.quota if user else None})


@router.get("/me")
async def me(request: Request) -> Response:
    principal = await api_principal(request)
    state: AppState = request.app.state.mxn
    async with state.sessions() as s:
        user = await s.get(User, principal.user_id)
        key = await s.get(ApiKey, principal.key_id)
    assert user is not None and key is not None
    return json_response(
        {
            "user": user.name,
            "role": user.role,
            "group": user.group,
            "quota": user.quota,
            "key": {
                "id": key.id,
                "name": key.name,
                "prefix": key.prefix,
                "quota": key.quota,
                "limits": dict(principal.key_limits),
            },
        }
    )


@router.get("/usage")
async def my_usage(request: Request, since: str | None = None, limit: int = 10_000, format: str = "json") -> Response:
    principal = await api_principal(request)
    state: AppState = request.app.state.mxn
    async with state.sessions() as s:
        rows = await usage_rows(s, user_id=principal.user_id, since=since, limit=limit)
    return usage_response(rows, format)

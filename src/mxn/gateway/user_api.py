"""/api: what a user does for themselves with their key (or console session): profile, codes, usage."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.responses import Response

from mxn import alerts, audit, services
from mxn.accounts import codes
from mxn.accounts import service as accounts
from mxn.accounts.passwords import verify_password
from mxn.errors import AuthError, PermissionDenied
from mxn.gateway.auth import SESSION_COOKIE, api_principal, client_host, held_balances_back
from mxn.gateway.openapi import PUBLIC
from mxn.gateway.state import AppState
from mxn.gateway.usage_views import parse_since, usage_response, usage_rows
from mxn.store.models import ApiKey, User
from mxn.wire import json_response

router = APIRouter(prefix="/api", tags=["user"])


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Login(Body):
    name: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


class Confirm(Body):
    password: str = Field(min_length=1, max_length=1024)


class KeyCreate(Confirm):
    name: str = Field(default="", max_length=64)
    models: list[str] | None = None
    chips: list[str] | None = None
    expires: str | None = None
    ips: list[str] | None = None


def _state(request: Request) -> AppState:
    state: AppState = request.app.state.mxn
    return state


@router.post("/login", openapi_extra=PUBLIC)
async def login(body: Login, request: Request) -> Response:
    state = _state(request)
    # Password guesses count as failed authentications of the client's address, before they are checked.
    async with state.throttle.attempt(client_host(request)), state.sessions() as s:
        user, token = await accounts.login(s, state.secret, body.name, body.password)
    response = json_response({"user": user.name, "role": user.role})
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=accounts.SESSION_DAYS * 86400,
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
        path="/",
    )
    return response


@router.post("/logout", openapi_extra=PUBLIC)
async def logout(request: Request) -> Response:
    state = _state(request)
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        async with state.sessions() as s:
            await accounts.logout(s, state.secret, token)
    response = json_response({"logged_out": True})
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


async def _confirm_password(request: Request, s: AsyncSession, user_id: int, password: str) -> User:
    """The seeds' "second verification": anything that makes or reveals a secret asks for the password again."""
    # A stolen key must not become a way to guess its owner's password: wrong ones are throttled like logins.
    async with _state(request).throttle.attempt(client_host(request), failure=PermissionDenied):
        user = await s.get(User, user_id)
        if user is None or not await asyncio.to_thread(verify_password, user.password_hash, password):
            raise PermissionDenied("the password is not right", param="password", code="wrong_password")
    return user


@router.get("/keys")
async def my_keys(request: Request) -> Response:
    principal = await api_principal(request)
    async with _state(request).sessions() as s:
        rows = await services.keys.of_user(s, principal.user_id)
        return json_response({"data": [accounts.key_view(k, principal.user) for k in rows]})


@router.post("/keys", status_code=201)
async def create_my_key(body: KeyCreate, request: Request) -> Response:
    principal = await api_principal(request)
    state = _state(request)
    async with state.sessions() as s:
        user = await _confirm_password(request, s, principal.user_id, body.password)
        row, key = await services.keys.create(
            s, audit.actor_of(request), state.secret, user, **body.model_dump(include=accounts.KEY_FIELDS)
        )
        return json_response({**accounts.key_view(row, user.name), "key": key}, 201)


@router.post("/keys/{key_id}/rotate")
async def rotate_my_key(key_id: int, body: Confirm, request: Request) -> Response:
    principal = await api_principal(request)
    state = _state(request)
    async with state.sessions() as s:
        await _confirm_password(request, s, principal.user_id, body.password)
        row = await services.keys.owned(s, principal.user_id, key_id)
        key = await services.keys.rotate(s, audit.actor_of(request), state.secret, row)
        return json_response({**accounts.key_view(row, principal.user), "key": key})


@router.post("/keys/{key_id}/revoke")
async def revoke_my_key(key_id: int, request: Request) -> Response:
    principal = await api_principal(request)
    async with _state(request).sessions() as s:
        row = await services.keys.owned(s, principal.user_id, key_id)
        await services.keys.revoke(s, audit.actor_of(request), row)
        return json_response(accounts.key_view(row, principal.user))


@router.delete("/keys/{key_id}")
async def delete_my_key(key_id: int, request: Request) -> Response:
    principal = await api_principal(request)
    async with _state(request).sessions() as s:
        row = await services.keys.owned(s, principal.user_id, key_id)
        await services.keys.delete(s, audit.actor_of(request), row)
        return json_response({"id": key_id, "deleted": True})


class Redeem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: str = Field(min_length=4, max_length=128)


@router.post("/codes/redeem")
async def redeem(body: Redeem, request: Request) -> Response:
    principal = await api_principal(request)
    state: AppState = request.app.state.mxn
    await held_balances_back(request)
    async with state.sessions() as s:
        amount = await codes.redeem(s, state.secret, principal.user_id, body.code)
        user = await s.get(User, principal.user_id)
        return json_response({"redeemed": amount, "quota": user.quota if user else None})


@router.get("/session", openapi_extra=PUBLIC)
async def session(request: Request) -> Response:
    """Who the console is signed in as: /me's answer, or `{"user": null}` (200, not 401) when nobody is."""
    if not request.cookies.get(SESSION_COOKIE):
        return json_response({"user": None})
    try:
        return await me(request)
    except AuthError:
        return json_response({"user": None})


@router.get("/me")
async def me(request: Request) -> Response:
    principal = await api_principal(request)
    state: AppState = request.app.state.mxn
    await held_balances_back(request)
    async with state.sessions() as s:
        user = await s.get(User, principal.user_id)
        key = await s.get(ApiKey, principal.key_id) if principal.key_id else None
    assert user is not None
    key_info = {"id": key.id, "name": key.name, "prefix": key.prefix, "quota": key.quota} if key else None
    return json_response(
        {
            "user": user.name,
            "role": user.role,
            "group": user.group,
            "quota": user.quota,
            "key": key_info,
            "limits": dict(principal.key_limits),
        }
    )


@router.get("/usage")
async def my_usage(request: Request, since: str | None = None, limit: int = 10_000, format: str = "json") -> Response:
    principal = await api_principal(request)
    state: AppState = request.app.state.mxn
    async with state.sessions() as s:
        rows = await usage_rows(s, user_id=principal.user_id, since=since, limit=limit)
    return usage_response(rows, format)


@router.get("/alerts")
async def my_alerts(request: Request, since: str | None = None, limit: int = 100) -> Response:
    """Alerts about the caller's own account and keys, the newest first."""
    principal = await api_principal(request)
    async with _state(request).sessions() as s:
        found = await alerts.rows(
            s, user_id=principal.user_id, since=parse_since(since), limit=max(1, min(limit, 1000))
        )
        return json_response({"data": [alerts.view(a) for a in found]})

"""Who is calling: an `sk-` key (Bearer or `api-key:`), or the operator's admin key for /admin."""

from __future__ import annotations

import hmac

from starlette.requests import Request

from mxn.accounts.service import Principal, authenticate
from mxn.errors import AuthError, PermissionDenied
from mxn.gateway.state import AppState


def presented_key(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return request.headers.get("api-key") or None


async def api_principal(request: Request) -> Principal:
    state: AppState = request.app.state.mxn
    key = presented_key(request)
    if not key:
        raise AuthError(
            "You didn't provide an API key. Send it as 'Authorization: Bearer sk-...'.", code="missing_api_key"
        )
    async with state.sessions() as s:
        return await authenticate(s, state.secret, key, request.client.host if request.client else None)


async def admin_principal(request: Request) -> Principal | None:
    """The operator's MXN_ADMIN_KEY (None is returned), or the key of an admin user."""
    state: AppState = request.app.state.mxn
    key = presented_key(request)
    admin_key = state.settings.admin_key
    if key and admin_key and hmac.compare_digest(key.encode(), admin_key.encode()):
        return None
    principal = await api_principal(request)
    if not principal.is_admin:
        raise PermissionDenied("this needs an admin key", code="admin_only")
    return principal

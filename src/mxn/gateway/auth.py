"""Who is calling: an `sk-` key (Bearer or `api-key:`), or the operator's admin key for /admin."""

from __future__ import annotations

import hmac

from starlette.requests import Request

from mxn.accounts.service import Principal, authenticate, session_principal
from mxn.errors import AuthError, PermissionDenied
from mxn.gateway.state import AppState


def presented_key(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return request.headers.get("api-key") or None


SESSION_COOKIE = "mxn_session"


async def api_principal(request: Request) -> Principal:
    """An API key when one is presented; otherwise the console's login session."""
    state: AppState = request.app.state.mxn
    key = presented_key(request)
    token = request.cookies.get(SESSION_COOKIE)
    if not key and token:
        # A cookie rides along with cross-site form posts; a JSON body cannot be sent that way without a CORS
        # preflight (which is refused), and other unsafe methods always need one.
        if request.method == "POST" and not request.headers.get("content-type", "").startswith("application/json"):
            raise PermissionDenied("console requests must send JSON", code="csrf")
        async with state.sessions() as s:
            principal = await session_principal(s, state.secret, token)
        request.state.actor = f"user:{principal.user}"
        return principal
    if not key:
        raise AuthError(
            "You didn't provide an API key. Send it as 'Authorization: Bearer sk-...'.", code="missing_api_key"
        )
    async with state.sessions() as s:
        principal = await authenticate(s, state.secret, key, request.client.host if request.client else None)
    request.state.actor = f"user:{principal.user}"
    return principal


async def admin_principal(request: Request) -> Principal | None:
    """The operator's MXN_ADMIN_KEY (None is returned), or the key of an admin user."""
    state: AppState = request.app.state.mxn
    key = presented_key(request)
    admin_key = state.settings.admin_key
    if key and admin_key and hmac.compare_digest(key.encode(), admin_key.encode()):
        request.state.actor = "admin-key"
        return None
    principal = await api_principal(request)
    if not principal.is_admin:
        raise PermissionDenied("this needs an admin key", code="admin_only")
    return principal

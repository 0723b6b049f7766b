"""Who is calling: an `sk-` key (Bearer, `api-key:` or `x-api-key:`), or the operator's admin key for /admin.

Identity comes from these credentials or the console's session cookie only, never from a header naming a user
(GenStudio's `INFINI_USERINFO_V1` is the flaw to avoid). Failed attempts are throttled per client address
(`limits.auth_failures`); the address is the TCP peer's unless `forwarded_allow_ips` names a trusted proxy.
"""

from __future__ import annotations

import hashlib
import hmac

from starlette.requests import Request

from mxn.accounts.cache import utcnow
from mxn.accounts.keys import hash_key, split_pin
from mxn.accounts.service import Principal, check_key, session_principal
from mxn.errors import AuthError, PermissionDenied
from mxn.gateway.state import AppState


def presented_key(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return request.headers.get("api-key") or request.headers.get("x-api-key") or None  # x-api-key: Anthropic's


def client_host(request: Request) -> str:
    return request.client.host if request.client else ""


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
        # Session tokens are not counted as failures: 256 random bits are not guessed, and a console left open
        # on an ended session would otherwise lock its whole address out.
        async with state.sessions() as s:
            principal = await session_principal(s, state.secret, token)
        request.state.actor = f"user:{principal.user}"
        return principal
    if not key:
        raise AuthError(
            "You didn't provide an API key. Send it as 'Authorization: Bearer sk-...'.", code="missing_api_key"
        )
    host = client_host(request)
    state.throttle.check(host)
    try:
        return await _by_key(request, state, key, host)
    except AuthError:
        await state.throttle.failed(host)
        raise


async def _by_key(request: Request, state: AppState, presented: str, host: str) -> Principal:
    key, pin = split_pin(presented)
    record = await state.keys.record(hash_key(state.secret, key))
    if record is None:
        raise AuthError("Incorrect API key provided.")
    now = utcnow()
    principal = check_key(record, pin, host or None, now)
    state.keys.used(record, now)
    request.state.actor = f"user:{principal.user}"
    return principal


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()


async def held_balances_back(request: Request) -> None:
    """Before balances are shown or changed: what this replica holds of them goes back to the store first."""
    state: AppState = request.app.state.mxn
    await state.holds.give_back()


async def admin_principal(request: Request) -> Principal | None:
    """The operator's MXN_ADMIN_KEY (None is returned), or the key or session of an admin user."""
    state: AppState = request.app.state.mxn
    key = presented_key(request)
    if not key:
        principal = await api_principal(request)  # the console's session, or 401
    else:
        host = client_host(request)
        # The admin key may be a weak word an operator chose: each attempt is counted before it is compared.
        async with state.throttle.attempt(host):
            admin_key = state.settings.admin_key
            # Digests of equal length, so that the comparison tells nothing, not even the key's length.
            if admin_key and hmac.compare_digest(_digest(key), _digest(admin_key)):
                request.state.actor = "admin-key"
                return None
            principal = await _by_key(request, state, key, host)
    if not principal.is_admin:
        raise PermissionDenied("this needs an admin key", code="admin_only")
    return principal

"""JSON responses with orjson, and the one place errors become HTTP."""

from __future__ import annotations

import logging
import sys
from collections.abc import Awaitable, Callable

from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import DataError, DBAPIError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from mxn import metrics
from mxn.errors import InvalidRequest, MxnError, NotFound, ServiceUnavailable
from mxn.store.db import unreachable
from mxn.wire import error_response

log = logging.getLogger("mxn")
Render = Callable[[MxnError], Response]


async def on_mxn_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, MxnError)
    return error_response(exc)


async def on_validation_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    err = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    loc = [str(p) for p in err.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    message = f"{param}: {err.get('msg')}" if param else str(err.get("msg"))
    return error_response(InvalidRequest(message, param=param))


async def on_http_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return error_response(NotFound("no such route", code="unknown_route"))
    kind = InvalidRequest if exc.status_code < 500 else MxnError  # e.g. 405: the client's mistake, not a server_error
    err = kind(str(exc.detail), code=f"http_{exc.status_code}")
    return Response(err.json(), status_code=exc.status_code, media_type="application/json")


def _unstorable(exc: Exception) -> bool:
    """A value from the request that the store cannot hold: an integer past its columns' range, or text with NUL.

    SQLite's driver raises OverflowError for integers past 64 bits; asyncpg refuses out-of-range integers and NUL
    characters with its DataError, which SQLAlchemy passes on as a plain DBAPIError.
    """
    if isinstance(exc, OverflowError | DataError):
        return True
    asyncpg = sys.modules.get("asyncpg")  # loaded only where the store is PostgreSQL
    return (
        asyncpg is not None
        and isinstance(exc, DBAPIError)
        and isinstance(getattr(exc.orig, "__cause__", None), asyncpg.exceptions.DataError)
    )


def store_unavailable(request: Request, exc: BaseException, render: Render = error_response) -> Response:
    """503 `store_unavailable` with Retry-After; the outage is logged by `deps.Dependency`, not per request."""
    state = getattr(request.app.state, "mxn", None)
    if state is not None:
        state.store_health.failed(exc)
    metrics.REFUSED.labels("store_unavailable").inc()
    return render(
        ServiceUnavailable(
            "the store is not reachable; try again shortly", code="store_unavailable", headers={"retry-after": "2"}
        )
    )


async def rendered(request: Request, work: Awaitable[Response], render: Render) -> Response:
    """`work`'s response, or its failure in the shape `render` gives (a protocol's own), as the app's handlers
    would answer it: an mxn error as it is, anything else logged and never shown."""
    try:
        return await work
    except MxnError as exc:
        return render(exc)
    except Exception as exc:
        return await on_unexpected(request, exc, render)


async def on_unexpected(request: Request, exc: Exception, render: Render = error_response) -> Response:
    """`render`: a protocol's own error shape (`Protocol.error_response`) on its routes; OpenAI's elsewhere."""
    if unreachable(exc):
        return store_unavailable(request, exc, render)
    if _unstorable(exc):
        message = "a value in the request is out of range or cannot be stored (too large a number, or a NUL character)"
        return render(InvalidRequest(message, code="value_out_of_range"))
    # The details go to the server log, never to the client.
    log.exception("unhandled error: %s", type(exc).__name__)
    if isinstance(exc, TimeoutError):
        return render(ServiceUnavailable("the server is busy; try again", code="busy"))
    return render(MxnError("The server had an error while processing your request."))

"""The generation routes answered in front of the framework's router: the request path's own door.

FastAPI's routing, dependency solving and exception layers cost more per request than everything mxn does for
a small completion, so POSTs to the generation routes are matched here by their path and handed straight to the
pipeline. Security headers and CORS still wrap them (this sits inside those middlewares); the FastAPI routes stay
registered for the OpenAPI document and anything this does not match.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from mxn.errors import MxnError
from mxn.gateway import pipeline, responses

Handler = Callable[[Request, pipeline.CellRef], Awaitable[Response]]


async def _embeddings(request: Request, _ref: pipeline.CellRef) -> Response:
    return await pipeline.embeddings(request)


_V1: dict[str, Handler] = {
    "/v1/chat/completions": pipeline.chat_completions,
    "/v1/completions": pipeline.completions,
    "/v1/embeddings": _embeddings,
}


def match(path: str) -> tuple[Handler, pipeline.CellRef] | None:
    """The handler and cell of a generation route, as the FastAPI routes would match it, or None."""
    handler = _V1.get(path)
    if handler is not None:
        return handler, None
    if not path.startswith("/maas/"):
        return None
    parts = path.split("/")  # '', 'maas', model, chip, then 'chat', 'completions' or 'completions'
    if len(parts) < 5 or not parts[2] or not parts[3]:
        return None
    ref = (parts[2], parts[3])
    if len(parts) == 6 and parts[4] == "chat" and parts[5] == "completions":
        return pipeline.chat_completions, ref
    if len(parts) == 5 and parts[4] == "completions":
        return pipeline.completions, ref
    return None


class FastRoutes:
    """A pure ASGI middleware: a matched generation route is answered here, anything else passes on."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            found = match(scope["path"])
            if found is not None:
                await self._answer(*found, scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _answer(
        self, handler: Handler, ref: pipeline.CellRef, scope: Scope, receive: Receive, send: Send
    ) -> None:
        request = Request(scope, receive)
        try:
            response = await handler(request, ref)
        except MxnError as exc:
            response = responses.error_response(exc)
        except Exception as exc:  # answered as the app's own handler answers it: logged, never shown
            response = await responses.on_unexpected(request, exc)
        await response(scope, receive, send)

"""The generation routes: one table, answered in front of the framework's router and registered with it.

FastAPI's routing, dependency solving and exception layers cost more per request than everything mxn does for a
small completion, so POSTs to these routes are matched here by their path and handed straight to the pipeline.
Security headers and CORS still wrap them (this sits inside those middlewares). The same table registers them
with FastAPI (`routes.py`), for the OpenAPI document: one list, so the two cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from mxn.gateway import pipeline, responses
from mxn.gateway.headers import secured
from mxn.gateway.openapi import request_body
from mxn.gateway.protocols import CHAT, COMPLETIONS, EMBEDDINGS, MESSAGES, RESPONSES, Protocol
from mxn.protocol.anthropic import MessagesRequest
from mxn.protocol.openai import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from mxn.protocol.responses import ResponsesRequest

MAAS = "/maas/{model}/{chip}/"  # the GenStudio M×N form: the cell is in the path


@dataclass(frozen=True, slots=True)
class Route:
    name: str  # the route's name in FastAPI, and so its OpenAPI operation
    path: str
    protocol: Protocol
    tag: str
    body: dict[str, Any] = field(hash=False)  # the request body as /docs shows it


# The /v1 form names its cell in `model` (`name` or `name@chip`); a /maas path names it instead.
GENERATION = (
    Route("v1_chat", "/v1/chat/completions", CHAT, "openai", request_body(ChatCompletionRequest, require=("model",))),
    Route(
        "v1_completions", "/v1/completions", COMPLETIONS, "openai", request_body(CompletionRequest, require=("model",))
    ),
    Route("v1_embeddings", "/v1/embeddings", EMBEDDINGS, "openai", request_body(EmbeddingRequest, require=("model",))),
    Route("v1_responses", "/v1/responses", RESPONSES, "openai", request_body(ResponsesRequest, require=("model",))),
    Route("maas_chat", MAAS + "chat/completions", CHAT, "maas", request_body(ChatCompletionRequest)),
    Route("maas_completions", MAAS + "completions", COMPLETIONS, "maas", request_body(CompletionRequest)),
    Route("maas_responses", MAAS + "responses", RESPONSES, "maas", request_body(ResponsesRequest)),
    # Anthropic's Messages API. Its SDK (and Claude Code) append /v1/messages to a base URL: a cell's base URL,
    # /maas/{model}/{chip}, sends every request to that cell whatever model it names.
    Route("v1_messages", "/v1/messages", MESSAGES, "anthropic", request_body(MessagesRequest, require=("model",))),
    Route("maas_messages", MAAS + "messages", MESSAGES, "maas", request_body(MessagesRequest)),
    Route("maas_v1_messages", MAAS + "v1/messages", MESSAGES, "maas", request_body(MessagesRequest)),
)
_V1 = {r.path: r for r in GENERATION if not r.path.startswith(MAAS)}
_MAAS = {r.path.removeprefix(MAAS): r for r in GENERATION if r.path.startswith(MAAS)}


def match(path: str) -> tuple[Route, pipeline.CellRef] | None:
    """The route and cell of a generation path, as the framework's router matches it, or None."""
    route = _V1.get(path)
    if route is not None:
        return route, None
    if not path.startswith("/maas/"):
        return None
    parts = path.split("/", 4)  # '', 'maas', model, chip, the rest
    if len(parts) < 5 or not parts[2] or not parts[3]:
        return None
    route = _MAAS.get(parts[4])
    return None if route is None else (route, (parts[2], parts[3]))


class FastRoutes:
    """A pure ASGI middleware: a matched generation route is answered here, anything else passes on.

    Installed inside CORS, for the requests `Gateway` leaves to the framework because CORS applies to them."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            found = match(scope["path"])
            if found is not None:
                await answer(*found, scope, receive, send)
                return
        await self.app(scope, receive, send)


async def answer(route: Route, ref: pipeline.CellRef, scope: Scope, receive: Receive, send: Send) -> None:
    request = Request(scope, receive)
    work = pipeline.handle(route.protocol, request, ref)
    response = await responses.rendered(request, work, route.protocol.error_response)
    await response(scope, receive, send)


class Gateway(FastAPI):
    """FastAPI, with the generation routes answered before its middleware stack is entered.

    The stack's layers (its error middleware, the security-header and CORS middlewares, the framework's own
    telemetry and body-limit layers) each wrap every request and its `send`; a generation route needs only the
    security headers, added here. A request that CORS applies to (an `Origin` header, with origins configured)
    takes the whole stack, where `FastRoutes` answers it inside CORS."""

    cors: bool = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            found = match(scope["path"])
            if found is not None and not (self.cors and _has_origin(scope)):
                scope["app"] = self
                await answer(*found, scope, receive, secured(send))
                return
        await super().__call__(scope, receive, send)


def _has_origin(scope: Scope) -> bool:
    return any(name == b"origin" for name, _ in scope["headers"])

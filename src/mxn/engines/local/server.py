"""`mxn engine`: the embedded engine as an OpenAI-compatible server of its own, so that launch recipes can start
it on a node's devices like vLLM or llama.cpp. One model per process; the gateway in front does accounts,
limits and moderation."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from mxn import __version__
from mxn.config import get_settings
from mxn.engines.base import ChunkStream, EndpointConfig
from mxn.engines.local.engine import LocalEngine
from mxn.errors import MxnError, ServiceUnavailable
from mxn.wire import DONE, completion_id, envelope, error_response, finish_reason, json_response, read_json, sse


class EngineServer:
    def __init__(self, path: str, name: str, options: dict[str, Any]) -> None:
        self.name = name
        settings = get_settings()  # the gateway's body limits (MXN_MAX_BODY_BYTES, MXN_MAX_JSON_DEPTH) hold here too
        self.max_body_bytes, self.max_json_depth = settings.max_body_bytes, settings.max_json_depth
        self.created = int(time.time())
        self.engine = LocalEngine(EndpointConfig(id=0, engine="local", path=path, options=options))

    def app(self) -> Starlette:
        routes = [
            Route("/health", self.health),
            Route("/version", self.version),
            Route("/v1/models", self.models),
            Route("/v1/chat/completions", self.generate, methods=["POST"]),
            Route("/v1/completions", self.generate, methods=["POST"]),
            Route("/v1/embeddings", self.generate, methods=["POST"]),
        ]
        return Starlette(routes=routes, exception_handlers={MxnError: _on_error})

    async def health(self, _request: Request) -> Response:
        if not self.engine.ready:
            return error_response(ServiceUnavailable("the model is loading", code="loading"))
        if self.engine.failed:
            return error_response(ServiceUnavailable("the model failed to load", code="engine_load_failed"))
        return json_response({"status": "ok", "model": self.name, **self.engine.stats()})

    async def version(self, _request: Request) -> Response:
        return json_response({"version": __version__, "hardware": self.engine.hardware})

    async def models(self, _request: Request) -> Response:
        card = {"id": self.name, "object": "model", "created": self.created, "owned_by": "mxn"}
        return json_response({"object": "list", "data": [card]})

    async def generate(self, request: Request) -> Response:
        body = await read_json(request, self.max_body_bytes, self.max_json_depth)
        route = request.url.path.removeprefix("/v1/")
        if route == "embeddings":
            data = await self.engine.call(route, body)
            return json_response({**data, "model": self.name})
        envelope = _Envelope(route == "chat/completions", self.name)
        if body.get("stream"):
            stream = await self.engine.open_stream(route, body)
            usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return StreamingResponse(envelope.events(stream, usage), media_type="text/event-stream")
        return json_response(envelope.complete(await self.engine.call(route, body)))


class _Envelope:
    """The OpenAI fields around the engine's choices: id, object, created, model."""

    def __init__(self, chat: bool, model: str) -> None:
        self.chat, self.model = chat, model
        self.id, self.created = completion_id(chat), int(time.time())

    def _wrap(self, data: dict[str, Any], chunk: bool) -> dict[str, Any]:
        return {**envelope(self.id, self.chat, self.model, self.created, chunk), **data}

    def complete(self, data: dict[str, Any]) -> dict[str, Any]:
        for choice in data["choices"]:
            choice.setdefault("logprobs", None)
        return self._wrap(data, chunk=False)

    async def events(self, stream: ChunkStream, include_usage: bool) -> AsyncIterator[bytes]:
        try:
            async for chunk in stream:
                if not chunk["choices"]:
                    if include_usage:
                        yield sse(self._wrap(chunk, chunk=True))
                    continue
                for choice in chunk["choices"]:
                    choice["finish_reason"] = finish_reason(choice.get("finish_reason"))
                    choice.setdefault("logprobs", None)
                yield sse(self._wrap(chunk, chunk=True))
        except MxnError as exc:  # the status line is gone: the error travels as an event
            yield sse(exc.body())
        finally:
            await stream.aclose()
        yield DONE


async def _on_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, MxnError)
    return error_response(exc)

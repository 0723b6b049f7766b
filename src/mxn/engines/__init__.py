"""Engines: how a request reaches the thing that generates. One module per kind."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp

from mxn.errors import ServiceUnavailable


@dataclass(frozen=True, slots=True)
class EndpointConfig:
    """What an engine needs to know about its endpoint (a row of `endpoints`, frozen)."""

    id: int
    engine: str
    url: str | None = None
    path: str | None = None
    upstream_model: str | None = None
    api_key: str | None = None
    stream_format: str = "sse"
    timeouts: dict[str, float] = field(default_factory=dict)
    supports: frozenset[str] | None = None
    options: dict[str, Any] = field(default_factory=dict)


class ChunkStream(Protocol):
    """An open upstream stream: the status is known, chunks are parsed dicts."""

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]: ...

    async def aclose(self) -> None: ...


class Engine(Protocol):
    """`route` is the OpenAI path below the base URL: chat/completions, completions, embeddings."""

    supports_stream: bool

    async def call(self, route: str, body: dict[str, Any]) -> dict[str, Any]: ...

    async def open_stream(self, route: str, body: dict[str, Any]) -> ChunkStream: ...


# Engines that call upstreams over HTTP share one aiohttp session: pooled, keep-alive connections.
EngineFactory = Callable[[EndpointConfig, aiohttp.ClientSession], Engine]
_REGISTRY: dict[str, EngineFactory] = {}


def register(kind: str, factory: EngineFactory) -> None:
    _REGISTRY[kind] = factory


def build(config: EndpointConfig, client: aiohttp.ClientSession) -> Engine:
    factory = _REGISTRY.get(config.engine)
    if factory is None:
        return Unavailable(f"engine '{config.engine}' is not available in this build")
    return factory(config, client)


class Unavailable:
    """Stands in for an engine kind that is not installed, so the catalogue still loads."""

    supports_stream = True

    def __init__(self, reason: str) -> None:
        self.reason = reason

    async def call(self, route: str, body: dict[str, Any]) -> dict[str, Any]:
        raise ServiceUnavailable(self.reason, code="engine_unavailable")

    async def open_stream(self, route: str, body: dict[str, Any]) -> ChunkStream:
        raise ServiceUnavailable(self.reason, code="engine_unavailable")


def _register_builtins() -> None:
    from mxn.engines import openai_compat

    register("openai", openai_compat.OpenAICompatEngine)
    register("local", _local)


def _local(config: EndpointConfig, client: aiohttp.ClientSession) -> Engine:
    # Imported on first use: torch is heavy, and a gateway without local models never needs it.
    try:
        from mxn.engines.local.engine import local_engine
    except ImportError as exc:  # the catalogue still loads; this endpoint answers 503 saying why
        return Unavailable(f"engine 'local' needs torch and transformers (pip install 'mxn[local]'): {exc.name}")
    return local_engine(config, client)


_register_builtins()

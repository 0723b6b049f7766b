"""Engines: how a request reaches the thing that generates. One module per kind, registered by name."""

from __future__ import annotations

from collections.abc import Callable

import aiohttp

from mxn.engines.base import ChunkStream, EndpointConfig, Engine, Unavailable
from mxn.engines.openai_compat import OpenAICompatEngine

__all__ = ["ChunkStream", "EndpointConfig", "Engine", "EngineFactory", "Unavailable", "build", "register"]

# Engines that call upstreams over HTTP share one aiohttp session (pooled, keep-alive connections); a process
# without one (`mxn engine`, tests) passes None, and an engine that needs it is then Unavailable.
EngineFactory = Callable[[EndpointConfig, aiohttp.ClientSession | None], Engine]
_REGISTRY: dict[str, EngineFactory] = {}


def register(kind: str, factory: EngineFactory) -> None:
    _REGISTRY[kind] = factory


def unregister(kind: str) -> None:
    _REGISTRY.pop(kind, None)


def build(config: EndpointConfig, client: aiohttp.ClientSession | None) -> Engine:
    factory = _REGISTRY.get(config.engine)
    if factory is None:
        return Unavailable(f"engine '{config.engine}' is not available in this build")
    return factory(config, client)


def _openai(config: EndpointConfig, client: aiohttp.ClientSession | None) -> Engine:
    if client is None:
        return Unavailable("engine 'openai' needs the gateway's HTTP client session")
    return OpenAICompatEngine(config, client)


def _local(config: EndpointConfig, _client: aiohttp.ClientSession | None) -> Engine:
    # Imported on first use: torch is heavy, and a gateway without local models never needs it.
    try:
        from mxn.engines.local.engine import LocalEngine
    except ImportError as exc:  # the catalogue still loads; this endpoint answers 503 saying why
        return Unavailable(f"engine 'local' needs torch and transformers (pip install 'mxn[local]'): {exc.name}")
    return LocalEngine(config)


register("openai", _openai)
register("local", _local)

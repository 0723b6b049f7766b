"""The engine seam: what the gateway may ask of any engine, and of the streams it opens."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

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


class ChunkStream(ABC):
    """An open upstream stream: the status is known, chunks are parsed dicts."""

    @abstractmethod
    def __aiter__(self) -> AsyncIterator[dict[str, Any]]: ...

    @property
    def buffered(self) -> int:
        """Chunks that have arrived and can be had without waiting, so a consumer may send them in one write."""
        return 0

    @abstractmethod
    async def aclose(self) -> None:
        """Stop reading; a stream closed before its end tells its upstream to stop generating."""


class Engine(ABC):
    """How one endpoint's requests reach the thing that generates.

    `route` is the OpenAI path below the base URL: chat/completions, completions, embeddings. Errors leave an engine
    as mxn errors only (`UpstreamError`, `UpstreamTimeout`, ...): it translates its own at its boundary.
    """

    @property
    def ready(self) -> bool:
        """False while the engine is still getting ready (a model loading); /readyz waits for it."""
        return True

    @property
    def failed(self) -> bool:
        """True when the engine can never serve (its model failed to load)."""
        return False

    @property
    def unsupported(self) -> frozenset[str]:
        """Optional request parameters this engine cannot take, once it can tell (the embedded engine's model may
        have a chat template without tools); the gateway then routes such a request elsewhere or refuses it."""
        return frozenset()

    @property
    def hardware(self) -> dict[str, Any]:
        """What the engine runs on, when it can tell (the embedded engine); the deployment's disclosure otherwise."""
        return {}

    def stats(self) -> dict[str, Any]:
        """Live state for /admin (the embedded engine's queue); {} when the engine has none to give."""
        return {}

    async def health(self) -> bool | None:
        """The engine's health when it can tell from inside this process; None when only a probe of its URL can
        (the router then asks the upstream's health path over HTTP)."""
        return None

    @abstractmethod
    async def call(self, route: str, body: dict[str, Any]) -> dict[str, Any]: ...

    @abstractmethod
    async def open_stream(self, route: str, body: dict[str, Any]) -> ChunkStream: ...

    async def close(self) -> None:
        """Release what this engine holds of its own (a loaded model); requests already running may finish."""
        return None  # most engines hold nothing of their own: the HTTP pool is shared


class Unavailable(Engine):
    """Stands in for an engine kind that is not installed, so the catalogue still loads."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    # health() stays None: its endpoint's URL, if it has one, is probed as before.

    async def call(self, route: str, body: dict[str, Any]) -> dict[str, Any]:
        raise ServiceUnavailable(self.reason, code="engine_unavailable")

    async def open_stream(self, route: str, body: dict[str, Any]) -> ChunkStream:
        raise ServiceUnavailable(self.reason, code="engine_unavailable")

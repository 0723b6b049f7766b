"""The engines of one process, one per endpoint, kept across catalogue reloads."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import aiohttp

from mxn.engines import EngineFactory, build
from mxn.engines.base import EndpointConfig, Engine

log = logging.getLogger("mxn.engines")


class EnginePool:
    """Engines by endpoint id. A reload keeps an endpoint's engine while its config is unchanged (a local model is
    not loaded again), builds a new one when the config changed, and closes the engines it no longer holds."""

    def __init__(self, client: aiohttp.ClientSession | None, factory: EngineFactory = build) -> None:
        self.client = client
        self.factory = factory
        self._held: dict[int, tuple[EndpointConfig, Engine]] = {}

    def get(self, endpoint_id: int) -> Engine | None:
        held = self._held.get(endpoint_id)
        return held[1] if held else None

    async def sync(self, configs: Iterable[EndpointConfig]) -> dict[int, Engine]:
        """The engines of exactly these endpoints, by id; those of changed or removed endpoints are closed."""
        held: dict[int, tuple[EndpointConfig, Engine]] = {}
        built: list[Engine] = []
        try:
            for config in configs:
                old = self._held.get(config.id)
                if old is not None and old[0] == config:
                    held[config.id] = old
                else:
                    held[config.id] = (config, self.factory(config, self.client))
                    built.append(held[config.id][1])
        except BaseException:  # the catalogue keeps its old snapshot, and the pool its old engines
            await _close_all(built)
            raise
        retired = [e for i, (_, e) in self._held.items() if i not in held or held[i][1] is not e]
        self._held = held
        await _close_all(retired)
        return {endpoint_id: engine for endpoint_id, (_, engine) in held.items()}

    async def close(self) -> None:
        held, self._held = self._held, {}
        await _close_all(engine for _, engine in held.values())


async def _close_all(engines: Iterable[Engine]) -> None:
    for engine in engines:
        try:
            await engine.close()
        except Exception:  # one engine that fails to let go must not keep the others, or a reload, from going on
            log.exception("closing an engine failed")

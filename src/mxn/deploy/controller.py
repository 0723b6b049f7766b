"""The deployment controller: makes what runs match what the store asks for.

Every `interval` seconds the gateway that holds the lease reads `managed_deployments`, asks placement to start
missing replicas and stop surplus ones (`mxn scale`, `mxn undeploy`), and writes each replica as an endpoint of its
deployment (`source='managed'`, one row per replica number): its URL once it has one, its state, so routing
sends requests only to replicas that are running, and its hardware as read from the running engine. A cell may be
served by several managed deployments, one per engine (`mxn-demo@cpu/vllm`, `mxn-demo@cpu/llamacpp`), and by
catalogue endpoints besides. A managed deployment is `deploying` until a replica runs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from mxn.deploy import recipes
from mxn.deploy.leader import Lease
from mxn.deploy.process import ReplicaSpec, ReplicaView
from mxn.deps import Dependency
from mxn.store.db import unreachable
from mxn.store.models import Deployment, Endpoint, ManagedDeployment, Model

log = logging.getLogger("mxn.deploy")


class Placement(Protocol):
    kind: str

    async def ensure(self, spec: ReplicaSpec) -> None: ...

    async def remove(self, deployment: str, index: int) -> None: ...

    def deployments(self) -> list[str]: ...

    async def replicas(self, deployment: str) -> list[ReplicaView]: ...

    async def nodes(self) -> list[dict[str, Any]]: ...

    async def close(self) -> None: ...


class Controller:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        placement: Placement,
        lease: Lease,
        interval: float,
        on_change: Callable[[], Awaitable[None]],
        store_health: Dependency | None = None,
    ) -> None:
        self.sessions = sessions
        self.store_health = store_health or Dependency("store")  # an unreachable store is logged there, once
        self.placement = placement
        self.lease = lease
        self.interval = interval
        self.on_change = on_change
        self.views: dict[str, list[ReplicaView]] = {}  # the last seen state of each deployment's replicas
        # Per deployment, the replicas that could not be placed, by index, and why (each reason logged once).
        self.unplaced: dict[str, dict[int, str]] = {}
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="mxn-deploy-controller")

    def wake(self) -> None:
        """Reconcile now rather than at the next tick (after a change made through this gateway)."""
        self._wake.set()

    async def _loop(self) -> None:
        while True:
            try:
                if await self.lease.acquire() and await self.reconcile():
                    await self.on_change()
            except Exception as exc:  # the next tick tries again
                if unreachable(exc):
                    self.store_health.failed(exc)
                else:
                    log.warning("deployment controller: %s: %s", type(exc).__name__, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            self._wake.clear()

    async def reconcile(self) -> bool:
        """One pass; True when an endpoint or a deployment's state changed."""
        changed = False
        async with self.sessions() as s:
            rows = (
                await s.execute(
                    select(ManagedDeployment, Deployment, Model.context_length)
                    .join(Deployment, ManagedDeployment.deployment_id == Deployment.id)
                    .join(Model, Deployment.model == Model.name)
                )
            ).all()
            wanted = {managed_key(d.model, d.chip, m.engine): (m, d, n) for m, d, n in rows}
            for key in self.placement.deployments():
                if key not in wanted:  # its deployment was deleted outright
                    await self._scale(key, None, None, 0)
            for key, (m, d, context_length) in wanted.items():
                count = 0 if m.state == "removing" else m.replicas
                views = await self._scale(key, m, d, count, context_length)
                self.views[key] = views
                changed |= await self._register(s, d.id, m, views)
                if m.state == "removing" and not views:
                    await self._forget(s, m, d)
                    self.views.pop(key, None)
                    self.unplaced.pop(key, None)
                    changed = True
                    continue
                state = "running" if any(v.state == "running" for v in views) else "deploying"
                if m.state not in (state, "removing"):
                    m.state = state
                    changed = True
            await s.commit()
        return changed

    async def _scale(
        self, key: str, m: ManagedDeployment | None, d: Deployment | None, count: int, context_length: int = 4096
    ) -> list[ReplicaView]:
        unplaced = self.unplaced.setdefault(key, {})
        if m is not None and d is not None:
            for index in range(count):
                spec = ReplicaSpec(
                    key, index, m.engine, m.source, d.model, d.chip, m.devices, m.memory_fraction, context_length
                )
                try:
                    await self.placement.ensure(spec)
                    unplaced.pop(index, None)
                except Exception as exc:
                    if unplaced.get(index) != str(exc):
                        log.warning("replica %s cannot be placed: %s", spec.key, exc)
                    unplaced[index] = str(exc)
        views = await self.placement.replicas(key)
        for view in views:
            if view.index >= count:
                await self.placement.remove(key, view.index)
        for surplus in [i for i in unplaced if i >= count]:
            del unplaced[surplus]
        return [v for v in views if v.index < count]

    async def _register(
        self, s: AsyncSession, deployment_id: int, m: ManagedDeployment, views: list[ReplicaView]
    ) -> bool:
        rows = {e.replica: e for e in (await s.execute(select(Endpoint).where(Endpoint.managed_id == m.id))).scalars()}
        recipe = recipes.load().engines.get(m.engine)
        supports = recipe.supports if recipe else None
        changed = False
        for view in views:
            row = rows.pop(view.index, None)
            if view.url is None:  # not placed yet, or being placed again: nothing to route to
                if row is not None and row.state != view.state:
                    row.state, changed = view.state, True
                continue
            values: dict[str, Any] = {"url": view.url, "upstream_model": view.upstream_model, "state": view.state}
            if view.hardware is not None:  # known once the engine answers; kept while it restarts
                values["hardware"] = view.hardware
            if row is None:
                s.add(
                    Endpoint(
                        deployment_id=deployment_id,
                        managed_id=m.id,
                        source="managed",
                        replica=view.index,
                        engine="openai",
                        supports=supports,
                        **values,
                    )
                )
                changed = True
            elif any(getattr(row, k) != v for k, v in values.items()):
                for k, v in values.items():
                    setattr(row, k, v)
                changed = True
        for row in rows.values():
            await s.delete(row)
            changed = True
        return changed

    async def _forget(self, s: AsyncSession, m: ManagedDeployment, d: Deployment) -> None:
        """The end of `mxn undeploy`: its row goes, and the cell too if deploy made it and nothing else serves it.
        While another engine's managed deployment remains in the cell, that one inherits the cell."""
        await s.delete(m)
        if not m.created_cell:
            return
        same_cell = (ManagedDeployment.deployment_id == d.id, ManagedDeployment.id != m.id)
        heir = (await s.execute(select(ManagedDeployment).where(*same_cell))).scalar()
        if heir is not None:
            heir.created_cell = True
            return
        others = (await s.execute(select(func.count()).where(Endpoint.deployment_id == d.id))).scalar_one()
        if not others:
            await s.execute(delete(Deployment).where(Deployment.id == d.id))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.placement.close()
        await self.lease.release()


def managed_key(model: str, chip: str, engine: str) -> str:
    """How placement names one managed deployment: `mxn-demo@cpu/vllm`."""
    return f"{model}@{chip}/{engine}"


def make_placement(ray_address: str | None, log_dir: Path, start_timeout: float) -> Placement:
    """On the Ray cluster at `ray_address`; without one, on this machine."""
    if ray_address:
        from mxn.deploy.on_ray import RayPlacement  # Ray is imported only where it is used

        return RayPlacement(ray_address, log_dir)
    from mxn.deploy.local import LocalPlacement

    return LocalPlacement(log_dir, start_timeout)

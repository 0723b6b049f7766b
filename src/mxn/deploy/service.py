"""Deploy, scale and undeploy: the store changes that `mxn deploy|scale|undeploy` and `/admin/managed` make.
The controller of the gateway that holds the lease carries them out."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from mxn.catalog.schema import CHIP_TYPES
from mxn.deploy import recipes
from mxn.deploy.controller import managed_key
from mxn.errors import Conflict, InvalidRequest, NotFound
from mxn.services import deployments
from mxn.store.models import Chip, Deployment, Endpoint, ManagedDeployment, Model

MAX_REPLICAS = 64


class DeployRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str = Field(min_length=1, max_length=512)  # what the engine loads: a directory, a file, a hub id
    chip: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,31}$")
    replicas: int = Field(default=1, ge=1, le=MAX_REPLICAS)
    engine: str | None = None  # default: the embedded engine on the CPU, vLLM on accelerators
    name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
    devices: int = Field(default=1, ge=1, le=64)
    memory_fraction: float = Field(default=0.9, gt=0, le=1)
    kind: str = Field(default="chat", pattern="^(chat|completion|embedding)$")
    context_length: int = Field(default=4096, ge=1)


def served_name(source: str) -> str:
    """`/models/qwen2-7b` → `qwen2-7b`, `Qwen/Qwen2-7B-Instruct` → `Qwen2-7B-Instruct`."""
    tail = Path(source.rstrip("/")).name or source
    return re.sub(r"[^A-Za-z0-9_.:-]", "-", tail).lstrip("-._:")[:128] or "model"


async def _cell(s: AsyncSession, model: str, chip: str) -> Deployment:
    """The cell, found as every writer finds it. (`services.managed` wraps this module with audit records; this
    one uses only `services.deployments`, which imports nothing of `mxn.deploy`: no module cycle.)"""
    try:
        return await deployments.by_name(s, f"{model}@{chip}")
    except NotFound:  # `mxn scale|undeploy` say it in their own words (tests and scripts match them)
        raise NotFound(f"deployment {model}@{chip} does not exist", code="deployment_not_found") from None


async def _managed(s: AsyncSession, model: str, chip: str, engine: str | None = None) -> ManagedDeployment:
    """The managed deployment of `engine` in the cell; without `engine`, the cell's only one."""
    cell = await _cell(s, model, chip)
    rows = (await s.execute(select(ManagedDeployment).where(ManagedDeployment.deployment_id == cell.id))).scalars()
    found = [r for r in rows if engine in (None, r.engine)]
    if not found:
        which = f" with engine '{engine}'" if engine else ""
        raise NotFound(f"{model}@{chip} has no managed deployment{which} (mxn deploy makes one)", code="not_managed")
    if len(found) > 1:
        engines = ", ".join(sorted(r.engine for r in found))
        raise InvalidRequest(f"{model}@{chip} runs several engines ({engines}); say which one", param="engine")
    return found[0]


async def deploy(s: AsyncSession, req: DeployRequest) -> ManagedDeployment:
    """Record a managed deployment (its model, chip and cell are made if missing); replicas start shortly."""
    engine = req.engine or ("mxn" if req.chip == "cpu" else "vllm")
    recipes.check(engine, req.chip)
    name = req.name or served_name(req.source)
    if await s.get(Chip, req.chip) is None:
        if req.chip not in CHIP_TYPES:
            raise InvalidRequest(f"unknown chip '{req.chip}'; add it to the catalogue first", param="chip")
        s.add(Chip(id=req.chip, name=CHIP_TYPES[req.chip]))
    if await s.get(Model, name) is None:
        s.add(Model(name=name, kind=req.kind, context_length=req.context_length))
    await s.flush()
    cell = (await s.execute(select(Deployment).where(Deployment.model == name, Deployment.chip == req.chip))).scalar()
    created = cell is None
    if cell is None:
        cell = Deployment(model=name, chip=req.chip)
        s.add(cell)
        await s.flush()
    elif (
        await s.execute(
            select(ManagedDeployment).where(
                ManagedDeployment.deployment_id == cell.id, ManagedDeployment.engine == engine
            )
        )
    ).scalar():
        raise Conflict(f"{name}@{req.chip} runs on {engine} already; `mxn scale` changes its replicas")
    row = ManagedDeployment(
        deployment_id=cell.id,
        engine=engine,
        source=req.source,
        replicas=req.replicas,
        devices=req.devices,
        memory_fraction=req.memory_fraction,
        state="deploying",
        created_cell=created,
    )
    s.add(row)
    await s.flush()
    return row


async def scale(s: AsyncSession, model: str, chip: str, replicas: int, engine: str | None = None) -> ManagedDeployment:
    if not 0 <= replicas <= MAX_REPLICAS:
        raise InvalidRequest(f"replicas is between 0 and {MAX_REPLICAS}", param="replicas")
    row = await _managed(s, model, chip, engine)
    if row.state == "removing":
        raise Conflict(f"{model}@{chip} is being undeployed")
    row.replicas = replicas
    return row


async def undeploy(s: AsyncSession, model: str, chip: str, engine: str | None = None) -> ManagedDeployment:
    row = await _managed(s, model, chip, engine)
    row.state = "removing"
    return row


async def views(
    s: AsyncSession, live: dict[str, list[Any]] | None = None, unplaced: dict[str, dict[int, str]] | None = None
) -> list[dict[str, Any]]:
    """Every managed deployment with its replicas as registered (and, on the gateway that places them, as
    placement sees them, and those it could not place: `pending`, with why)."""
    rows = (
        await s.execute(select(ManagedDeployment, Deployment).join(Deployment).order_by(ManagedDeployment.id))
    ).all()
    endpoints: dict[int, list[Endpoint]] = {}
    for e in (
        await s.execute(select(Endpoint).where(Endpoint.managed_id.is_not(None)).order_by(Endpoint.replica))
    ).scalars():
        endpoints.setdefault(e.managed_id or 0, []).append(e)
    out = []
    for m, d in rows:
        name = managed_key(d.model, d.chip, m.engine)
        # Registered replicas (endpoints), and on the gateway that places them, those not yet registered too.
        by_index: dict[int, dict[str, Any]] = {
            e.replica: {"index": e.replica, "endpoint": e.id, "state": e.state, "url": e.url, "hardware": e.hardware}
            for e in endpoints.get(m.id, [])
            if e.replica is not None
        }
        for v in (live or {}).get(name, []):
            seen = v.view()
            replica = by_index.setdefault(
                v.index, {"index": v.index, "endpoint": None, "state": v.state, "url": v.url, "hardware": v.hardware}
            )
            replica.update({k: seen[k] for k in ("node", "pid", "restarts", "detail")})
        for index, why in (unplaced or {}).get(name, {}).items():
            pending = {"index": index, "endpoint": None, "state": "pending", "url": None, "detail": why}
            by_index.setdefault(index, pending)
        replicas = [by_index[i] for i in sorted(by_index)]
        out.append(
            {
                "id": m.id,
                "deployment": f"{d.model}@{d.chip}",
                "key": name,
                "model": d.model,
                "chip": d.chip,
                "engine": m.engine,
                "source": m.source,
                "replicas": m.replicas,
                "devices": m.devices,
                "memory_fraction": m.memory_fraction,
                "state": m.state,
                "running": sum(1 for r in replicas if r["state"] == "running"),
                "instances": replicas,
            }
        )
    return out

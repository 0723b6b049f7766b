"""Managed deployments as the CLI and /admin/managed see them: what a deploy asks for, and every deployment with
its replicas. The changes themselves are `services.managed`'s."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from mxn.deploy.controller import managed_key
from mxn.store.models import Deployment, Endpoint, ManagedDeployment

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

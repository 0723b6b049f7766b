"""Placement on a Ray cluster: each replica is a detached, restartable Ray actor that starts its engine process on
the devices Ray gave it. Ray puts it on a node advertising the chip (`chip:<type>`, and GPU/NPU where Ray knows
them); when that node is lost, Ray starts the actor again on another, and the controller registers its new URL.

Actors are named `<model>@<chip>/<engine>#<index>` in the `mxn` namespace, so a gateway that restarts (or a second
gateway replica) finds the replicas that are already running instead of starting more."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayError

from mxn.chips.detect import RAY_NAMES
from mxn.deploy import process
from mxn.deploy.process import EngineProcess, ReplicaSpec, ReplicaView, free_port

log = logging.getLogger("mxn.deploy")

NAMESPACE = "mxn"
INFO_TIMEOUT = 3.0


class EngineReplica:
    """Runs in a Ray worker on the node Ray chose. Restarted by Ray (max_restarts=-1) when its node or process is
    lost: __init__ then starts the engine again there."""

    def __init__(self, spec: ReplicaSpec, log_dir: str) -> None:
        context = ray.get_runtime_context()
        ids = context.get_accelerator_ids()
        devices = [int(i) for i in ids.get(RAY_NAMES.get(spec.chip, ""), [])]
        host = ray.util.get_node_ip_address()
        self.node = context.get_node_id()
        self.spec, self.devices = spec, devices
        self.hardware: dict[str, Any] | None = None
        launched = process.launch(spec, free_port(host), devices, host)
        self.process = EngineProcess(launched, Path(log_dir) / f"{spec.key.replace('/', '_')}.log")
        self.process.start()

    def info(self) -> dict[str, Any]:
        code = self.process.exit_code
        healthy = code is None and self.process.healthy()
        if healthy and self.hardware is None:
            self.hardware = process.describe(self.process.launch, self.spec.chip, self.devices)
        return {
            "hardware": self.hardware,
            "url": self.process.launch.base_url,
            "upstream_model": self.process.launch.upstream_model,
            "node": self.node,
            "pid": self.process.pid,
            "state": "running" if healthy else ("deploying" if code is None else "unhealthy"),
            "detail": None if code is None else f"exited ({code}): {self.process.tail(300)}",
        }

    def stop(self) -> None:
        self.process.stop()


def _parse_name(name: str) -> tuple[str, int] | None:
    deployment, sep, index = name.rpartition("#")
    return (deployment, int(index)) if sep and index.isdigit() and "@" in deployment else None


class RayPlacement:
    kind = "ray"

    def __init__(self, address: str, log_dir: Path) -> None:
        self.address = address
        self.log_dir = log_dir
        self._actors: dict[str, dict[int, Any]] = {}
        self._started = False

    async def _connect(self) -> None:
        if self._started:
            return
        await asyncio.to_thread(
            ray.init, address=self.address, namespace=NAMESPACE, ignore_reinit_error=True, log_to_driver=False
        )
        # The replicas that are already there, started by this gateway before a restart or by another replica.
        for entry in await asyncio.to_thread(ray.util.list_named_actors, all_namespaces=True):
            parsed = _parse_name(entry["name"]) if entry.get("namespace") == NAMESPACE else None
            if parsed:
                with contextlib.suppress(ValueError):
                    handle = ray.get_actor(entry["name"], namespace=NAMESPACE)
                    self._actors.setdefault(parsed[0], {})[parsed[1]] = handle
        self._started = True

    async def ensure(self, spec: ReplicaSpec) -> None:
        await self._connect()
        group = self._actors.setdefault(spec.deployment, {})
        if spec.index in group:
            return
        resources = {f"chip:{spec.chip}": float(spec.devices)}
        options: dict[str, Any] = {
            "name": spec.key,
            "namespace": NAMESPACE,
            "lifetime": "detached",
            "get_if_exists": True,
            "max_restarts": -1,
            "num_cpus": 0,
            "scheduling_strategy": "SPREAD",
        }
        ray_name = RAY_NAMES.get(spec.chip)
        if ray_name == "GPU":
            options["num_gpus"] = spec.devices
        elif ray_name:
            resources[ray_name] = float(spec.devices)
        options["resources"] = resources
        actor = ray.remote(EngineReplica).options(**options).remote(spec, str(self.log_dir))
        group[spec.index] = actor

    async def remove(self, deployment: str, index: int) -> None:
        await self._connect()
        actor = self._actors.get(deployment, {}).pop(index, None)
        if not self._actors.get(deployment, True):
            del self._actors[deployment]
        if actor is None:
            return
        with contextlib.suppress(RayError, asyncio.TimeoutError):
            await asyncio.wait_for(actor.stop.remote(), 15)
        with contextlib.suppress(RayError, ValueError):
            ray.kill(actor, no_restart=True)

    def deployments(self) -> list[str]:
        return list(self._actors)

    async def replicas(self, deployment: str) -> list[ReplicaView]:
        await self._connect()
        views = []
        for index, actor in sorted(self._actors.get(deployment, {}).items()):
            try:
                info = await asyncio.wait_for(actor.info.remote(), INFO_TIMEOUT)
            except (TimeoutError, RayActorError, GetTimeoutError) as exc:
                # Being placed or restarted by Ray (its node is gone), or not yet started.
                views.append(ReplicaView(index, "deploying", detail=f"{type(exc).__name__}: waiting for Ray"))
                continue
            views.append(
                ReplicaView(
                    index,
                    info["state"],
                    info["url"],
                    info["upstream_model"],
                    info["node"],
                    info["pid"],
                    detail=info["detail"],
                    hardware=info.get("hardware"),
                )
            )
        return views

    async def nodes(self) -> list[dict[str, Any]]:
        await self._connect()
        where: dict[str, list[str]] = {}
        for deployment in list(self._actors):
            for view in await self.replicas(deployment):
                if view.node:
                    where.setdefault(view.node, []).append(f"{deployment}#{view.index}")
        out = []
        for node in await asyncio.to_thread(ray.nodes):
            resources = {
                k: v
                for k, v in node.get("Resources", {}).items()
                if k.startswith("chip:") or k in ("GPU", "NPU", "CPU")
            }
            out.append(
                {
                    "id": node["NodeID"],
                    "address": node.get("NodeManagerAddress"),
                    "alive": bool(node.get("Alive")),
                    "devices": [],
                    "resources": resources,
                    "replicas": where.get(node["NodeID"], []),
                }
            )
        return out

    async def close(self) -> None:
        """Leaves the replicas running (they are detached): the next gateway finds them."""
        if self._started:
            await asyncio.to_thread(ray.shutdown)

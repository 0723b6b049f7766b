"""Placement on this machine, without Ray: each replica is an engine process that a supervisor task starts,
health-checks and starts again when it exits. The zero-config default."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from pathlib import Path
from typing import Any

from mxn.chips.detect import Device, detect
from mxn.deploy import process
from mxn.deploy.process import EngineProcess, ReplicaSpec, ReplicaView, free_port

log = logging.getLogger("mxn.deploy")

BACKOFF_MAX = 30.0


class LocalReplica:
    def __init__(self, spec: ReplicaSpec, devices: list[int], log_dir: Path, start_timeout: float) -> None:
        self.spec = spec
        self.devices = devices
        self.log = log_dir / f"{spec.deployment.replace('/', '_')}-{spec.index}.log"
        self.start_timeout = start_timeout
        self.view = ReplicaView(spec.index, "deploying", node=socket.gethostname())
        self.process: EngineProcess | None = None
        self.task = asyncio.create_task(self._supervise(), name=f"mxn-replica-{spec.key}")

    async def _supervise(self) -> None:
        backoff = 1.0
        while True:
            self.view.state = "deploying"
            try:
                # Off the loop: a GGUF conversion may run first.
                launched = await asyncio.to_thread(process.launch, self.spec, free_port(), self.devices)
                self.process = EngineProcess(launched, self.log)
                self.process.start()
            except Exception as exc:  # a recipe that cannot render or a command that does not exist
                self.view.state, self.view.detail = "unhealthy", f"cannot start: {exc}"
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            self.view.pid, self.view.url, self.view.upstream_model = (
                self.process.pid,
                launched.base_url,
                launched.upstream_model,
            )
            if await self._until_healthy(self.process):
                backoff = 1.0
                self.view.hardware = await asyncio.to_thread(process.describe, launched, self.spec.chip, self.devices)
                self.view.state, self.view.detail = "running", None
                await self._watch(self.process)
            self.process.stop()
            self.view.restarts += 1
            self.view.detail = f"exited ({self.process.exit_code}): {self.process.tail(300)}"
            log.warning("replica %s: %s; starting again in %.0f s", self.spec.key, self.view.detail, backoff)
            self.view.state = "unhealthy"
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def _until_healthy(self, process: EngineProcess) -> bool:
        deadline = asyncio.get_running_loop().time() + self.start_timeout
        while asyncio.get_running_loop().time() < deadline:
            if process.exit_code is not None:
                return False
            if await asyncio.to_thread(process.healthy):
                return True
            await asyncio.sleep(0.5)
        return False

    async def _watch(self, process: EngineProcess) -> None:
        """Until the process exits; a live process that stops answering is unhealthy, not restarted."""
        while process.exit_code is None:
            await asyncio.sleep(1.0)
            if process.exit_code is None:
                self.view.state = "running" if await asyncio.to_thread(process.healthy) else "unhealthy"

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        if self.process is not None:
            await asyncio.to_thread(self.process.stop)
        self.view.state = "stopped"


class LocalPlacement:
    kind = "local"

    def __init__(self, log_dir: Path, start_timeout: float = 600.0, devices: list[Device] | None = None) -> None:
        self.log_dir = log_dir
        self.start_timeout = start_timeout
        self._devices = devices
        self._replicas: dict[str, dict[int, LocalReplica]] = {}

    def devices(self) -> list[Device]:
        if self._devices is None:
            self._devices = detect()
        return self._devices

    def _allocate(self, spec: ReplicaSpec) -> list[int]:
        """`spec.devices` devices of the chip that no other replica on this machine holds."""
        if spec.chip == "cpu":
            return []
        held = {
            d
            for group in self._replicas.values()
            for r in group.values()
            if r.spec.chip == spec.chip
            for d in r.devices
        }
        free = [d.index for d in self.devices() if d.chip == spec.chip and d.index not in held]
        if len(free) < spec.devices:
            raise RuntimeError(f"needs {spec.devices} free {spec.chip} device(s), this machine has {len(free)}")
        return free[: spec.devices]

    async def ensure(self, spec: ReplicaSpec) -> None:
        group = self._replicas.setdefault(spec.deployment, {})
        if spec.index not in group:
            group[spec.index] = LocalReplica(spec, self._allocate(spec), self.log_dir, self.start_timeout)

    async def remove(self, deployment: str, index: int) -> None:
        replica = self._replicas.get(deployment, {}).pop(index, None)
        if replica is not None:
            await replica.stop()
        if not self._replicas.get(deployment, True):
            del self._replicas[deployment]

    def deployments(self) -> list[str]:
        return list(self._replicas)

    async def replicas(self, deployment: str) -> list[ReplicaView]:
        return [r.view for _, r in sorted(self._replicas.get(deployment, {}).items())]

    async def nodes(self) -> list[dict[str, Any]]:
        devices = await asyncio.to_thread(self.devices)
        replicas = [f"{d}#{i}" for d, group in self._replicas.items() for i in group]
        return [
            {
                "id": socket.gethostname(),
                "address": "127.0.0.1",
                "alive": True,
                "devices": [d.view() for d in devices],
                "resources": {},
                "replicas": replicas,
            }
        ]

    async def close(self) -> None:
        for deployment in list(self._replicas):
            for index in list(self._replicas.get(deployment, {})):
                await self.remove(deployment, index)

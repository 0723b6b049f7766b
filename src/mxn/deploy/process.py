"""One engine process: started from a rendered recipe, health-checked, stopped with its whole process group.
Local placement runs it in the gateway's machine; a Ray replica actor runs it on its node."""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import os
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mxn.chips.detect import cpu_model, detect
from mxn.config import cpu_set, get_settings
from mxn.deploy import gguf, recipes
from mxn.deploy.recipes import Launch


@dataclass(frozen=True, slots=True)
class ReplicaSpec:
    """What one replica of a managed deployment runs."""

    deployment: str  # model@chip
    index: int
    engine: str  # recipe name
    source: str  # what the engine loads
    name: str  # the served model name
    chip: str
    devices: int = 1
    memory_fraction: float = 0.9
    context_length: int = 4096

    @property
    def key(self) -> str:
        return f"{self.deployment}#{self.index}"


@dataclass(slots=True)
class ReplicaView:
    """A replica as placement sees it; `url` is the engine's OpenAI base URL once it has one."""

    index: int
    state: str  # deploying, running, unhealthy, stopped
    url: str | None = None
    upstream_model: str | None = None
    node: str | None = None
    pid: int | None = None
    restarts: int = 0
    detail: str | None = None
    hardware: dict[str, Any] | None = None  # read from the running engine and its node

    def view(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "state": self.state,
            "url": self.url,
            "node": self.node,
            "pid": self.pid,
            "restarts": self.restarts,
            "detail": self.detail,
        }


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def launch(spec: ReplicaSpec, port: int, devices: list[int], host: str = "127.0.0.1") -> Launch:
    """Render the replica's recipe; a recipe that serves GGUF files gets the model converted first (once, cached)."""
    settings = get_settings()
    recipe = recipes.check(spec.engine, spec.chip)
    source, dtype = spec.source, None
    if recipe.prepare == "gguf":
        source = gguf.ensure_gguf(spec.source, Path(settings.data_dir) / "gguf", Path(settings.engines_dir))
        dtype = gguf.file_type(source)
    rendered = recipes.render(
        spec.engine,
        chip=spec.chip,
        model=source,
        name=spec.name,
        host=host,
        port=port,
        devices=devices,
        memory_fraction=spec.memory_fraction,
        context_length=spec.context_length,
        engines_dir=settings.engines_dir,
    )
    if dtype is not None:
        rendered = dataclasses.replace(rendered, dtype=dtype)
    return rendered


def describe(launched: Launch, chip: str, devices: list[int], timeout: float = 10.0) -> dict[str, Any]:
    """A running replica's hardware disclosure: the engine and the version it reports, its dtype, and the chips it
    holds as this node's tools name them."""
    answer = _engine_version(launched, timeout)
    info: dict[str, Any] = {"engine": launched.engine, "engine_version": answer.get(launched.version.field)}
    said = answer.get("hardware")  # an engine that reports its own (mxn's does) knows its dtype best
    dtype = said.get("dtype") if isinstance(said, dict) else None
    if dtype or launched.dtype:
        info["dtype"] = dtype or launched.dtype
    if chip == "cpu":
        cpus = engine_cpus()
        info.update(chip="cpu", chip_model=cpu_model(), count=1, cores=len(cpus) if cpus else os.cpu_count())
    else:
        names = {d.index: d.name for d in detect() if d.chip == chip}
        info.update(chip=chip, chip_model=", ".join(sorted({names.get(i, chip) for i in devices})), count=len(devices))
    info["node"] = socket.gethostname()
    return info


def _engine_version(launched: Launch, timeout: float) -> dict[str, Any]:
    """What the running engine says of its version: the JSON at its version URL, else its package's version in
    its own interpreter (as `{field: version}`); {} when it does not say."""
    how = launched.version
    if how.url:
        where = urllib.parse.urlsplit(launched.health_url)
        try:
            with urllib.request.urlopen(f"{where.scheme}://{where.netloc}{how.url}", timeout=timeout) as r:
                answer = json.loads(r.read())
            return answer if isinstance(answer, dict) else {}
        except (OSError, ValueError):
            return {}
    if how.package and launched.python:
        code = f"import importlib.metadata as m; print(m.version({how.package!r}))"
        try:
            done = subprocess.run([launched.python, "-c", code], capture_output=True, text=True, timeout=timeout * 3)
        except (OSError, subprocess.SubprocessError):
            return {}
        return {how.field: done.stdout.strip()} if done.returncode == 0 and done.stdout.strip() else {}
    return {}


def _die_with_parent() -> None:
    """In the child before exec: its own process group, and SIGTERM when the process that started it dies
    (Linux), so that a killed supervisor or Ray worker leaves no engine behind."""
    os.setsid()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def engine_cpus() -> set[int] | None:
    """The cores `MXN_ENGINE_CPUS` keeps engines to, None for all."""
    spec = get_settings().engine_cpus
    if not spec:
        return None
    cpus = cpu_set(spec)
    if not cpus <= os.sched_getaffinity(0):
        raise ValueError(f"MXN_ENGINE_CPUS={spec} names cores this machine does not give mxn")
    return cpus


def _start_engine(cpus: set[int] | None) -> Callable[[], None]:
    def setup() -> None:
        _die_with_parent()
        if cpus:
            os.sched_setaffinity(0, cpus)  # inherited by every process and thread the engine starts

    return setup


class EngineProcess:
    def __init__(self, launch: Launch, log: Path | None = None) -> None:
        self.launch = launch
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        out: Any = subprocess.DEVNULL
        if self.log is not None:
            self.log.parent.mkdir(parents=True, exist_ok=True)
            out = self.log.open("ab")
        try:
            self.proc = subprocess.Popen(
                self.launch.argv,
                env={**os.environ, **self.launch.env},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=_start_engine(engine_cpus()),
            )
        finally:
            if out is not subprocess.DEVNULL:
                out.close()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def exit_code(self) -> int | None:
        """None while it runs."""
        return self.proc.poll() if self.proc else -1

    def healthy(self, timeout: float = 2.0) -> bool:
        try:
            with urllib.request.urlopen(self.launch.health_url, timeout=timeout) as r:
                return bool(r.status == 200)
        except (OSError, ValueError):
            return False

    def tail(self, size: int = 2000) -> str:
        """The end of the process's log, to say why it failed."""
        if self.log is None or not self.log.exists():
            return ""
        with self.log.open("rb") as f:
            f.seek(max(f.seek(0, os.SEEK_END) - size, 0))
            return f.read().decode(errors="replace").strip()

    def stop(self, grace: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while self.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

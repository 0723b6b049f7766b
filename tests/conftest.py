"""Fixtures that start real processes: fake upstreams and `mxn serve`, on free ports, on SQLite or PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from mxn.deploy.process import free_port

ROOT = Path(__file__).resolve().parent.parent
pytest_plugins = ("tests.stores",)  # fixtures of stores a test starts and stops itself

# A run started as a background job of a non-interactive shell (`make test &`, some CI runners) inherits SIGINT
# ignored, and so would every process a test starts: the tests of Ctrl-C in `mxn chat` and `mxn batch` could not
# work. Children get the default back (a Python child then raises KeyboardInterrupt on it, as in a terminal).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
PG_ADMIN_URL = os.environ.get("MXN_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
E2E = ROOT / "tests" / "e2e"
# A test that uses one of these fixtures needs that service on this machine.
SERVICE_FIXTURES = {"pg_url": "postgres", "redis_url": "redis"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Markers from where a test is and what it uses (pyproject.toml lists them): everything under tests/e2e
    starts processes; a PostgreSQL or Redis fixture needs that service. Elsewhere a test says so itself."""
    for item in items:
        if item.path.resolve().is_relative_to(E2E):  # ROOT is resolved: a checkout reached through a link
            item.add_marker(pytest.mark.e2e)
        for fixture, marker in SERVICE_FIXTURES.items():
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(marker)


def wait_for(check: Callable[[], Any], timeout: float = 20, what: str = "seen", interval: float = 0.2) -> Any:
    """Poll `check` until it returns something truthy, and return that; fail after `timeout` seconds (having
    checked at least once)."""
    deadline = time.monotonic() + timeout
    while not (found := check()):
        if time.monotonic() >= deadline:
            raise AssertionError(f"not {what} within {timeout:g}s")
        time.sleep(interval)
    return found


async def wait_for_async(
    check: Callable[[], Awaitable[Any]],
    timeout: float = 20,  # noqa: ASYNC109 - as wait_for's: a caller's asyncio.timeout could not say what never came
    what: str = "seen",
    interval: float = 0.2,
) -> Any:
    """`wait_for` inside an event loop: await `check` until it returns something truthy; a hung check counts too."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                if found := await check():
                    return found
                await asyncio.sleep(interval)
    except TimeoutError:
        raise AssertionError(f"not {what} within {timeout:g}s") from None


@dataclass
class Proc:
    popen: subprocess.Popen[str]
    url: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                # Stuck: SIGABRT makes Python's faulthandler (PYTHONFAULTHANDLER, set by `start`) write every
                # thread's stack to the log, so that a hang says where it hung.
                self.popen.send_signal(signal.SIGABRT)
                try:
                    self.popen.wait(5)
                except subprocess.TimeoutExpired:
                    self.popen.kill()
                    self.popen.wait(5)


def _die_with_test_run() -> None:
    """In the child: SIGTERM when the test run that started it dies, even killed (Linux PR_SET_PDEATHSIG)."""
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


def start(cmd: list[str], ready_url: str, log: Path, env: dict[str, str] | None = None, timeout: float = 60) -> Proc:
    """Start a process and poll `ready_url` until it answers 200; dump its output if it never does."""
    handle = log.open("w")
    popen = subprocess.Popen(
        cmd,
        stdout=handle,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONFAULTHANDLER": "1", **(env or {})},
        # Only from the main thread: the signal follows the thread that started the child, not the process.
        preexec_fn=_die_with_test_run if threading.current_thread() is threading.main_thread() else None,
    )
    proc = Proc(popen, ready_url.rsplit("/", 1)[0], log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            raise RuntimeError(f"{cmd} exited with {popen.returncode}:\n{proc.output()}")
        try:
            if httpx.get(ready_url, timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.stop()
    raise RuntimeError(f"{cmd} not ready after {timeout}s:\n{proc.output()}")


def start_serve(log: Path, database_url: str, *args: str, env: dict[str, str] | None = None) -> Proc:
    """`mxn serve` on a free port with these extra arguments, ready when this returns."""
    port = free_port()
    cmd = [sys.executable, "-m", "mxn", "serve", "--port", str(port), "--database-url", database_url, *args]
    return start(cmd, f"http://127.0.0.1:{port}/readyz", log, env=env)


# One cell, `m@cpu`, with one endpoint: what the failure tests (outages, a killed replica) serve.
ONE_CELL = """\
models:
  - {name: m, context_length: 4096, tokenizer: "tiktoken:gpt2", kind: chat}
deployments:
  - model: m
    chip: cpu
    endpoints: [{url: "%s"}]
"""
# A group whose limits are far above any test's load: what refuses then is the fault, never a limit.
BIG_GROUP = {"name": "big", "rpm": 10**6, "rpd": 10**9, "tpm": 10**9, "concurrency": 1000}


def one_cell_catalog(tmp: Path, upstream_url: str) -> Path:
    path = tmp / "catalog.yaml"
    path.write_text(ONE_CELL % upstream_url)
    return path


def start_upstream(tmp: Path, mode: str, *extra: str, port: int | None = None) -> Proc:
    port = port or free_port()
    cmd = [sys.executable, str(ROOT / "tests/fakes/upstream.py"), "--port", str(port), "--mode", mode, *extra]
    proc = start(cmd, f"http://127.0.0.1:{port}/v1/models", tmp / f"upstream-{mode}-{port}.log")
    proc.url = f"http://127.0.0.1:{port}/v1"
    return proc


def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database for this run, dropped afterwards."""
    import asyncpg

    name = f"mxn_test_{secrets.token_hex(4)}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(PG_ADMIN_URL)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('db') / 'mxn.db'}"
    else:
        yield from pg_database()


def mxn(
    *args: str, database_url: str, stdin: str | None = None, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "mxn", *args, "--database-url", database_url]
    done = subprocess.run(
        cmd, input=stdin, capture_output=True, text=True, cwd=ROOT, timeout=120, env={**os.environ, **(env or {})}
    )
    if check and done.returncode != 0:
        raise AssertionError(f"{cmd} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


@dataclass
class Server:
    url: str
    key: str
    admin_key: str
    database_url: str
    proc: Proc
    upstreams: dict[str, Proc]

    def admin(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"authorization": f"Bearer {self.admin_key}"}, timeout=30)

    def client(self, key: str | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"authorization": f"Bearer {key or self.key}"}, timeout=30)

    def usage_written(self) -> bool:
        """The usage writer has nothing pending: every request `mxn_requests_total` counted has its record in the
        store (one record per counted request, as test_routing_chaos asserts)."""
        from prometheus_client.parser import text_string_to_metric_families

        with self.admin() as admin:
            families = text_string_to_metric_families(admin.get("/metrics").text)
            counted = sum(s.value for f in families for s in f.samples if s.name == "mxn_requests_total")
            written = len(admin.get("/admin/usage", params={"limit": 100_000}).json()["data"])
        return written >= counted

    @contextmanager
    def temporary_cell(self, model: str, chip: str, *endpoints: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """A deployment made through /admin for one test and deleted after it, whatever happens."""
        with self.admin() as admin:
            r = admin.post("/admin/deployments", json={"model": model, "chip": chip, "endpoints": list(endpoints)})
            assert r.status_code == 201, r.text
            try:
                yield r.json()
            finally:
                admin.delete(f"/admin/deployments/{r.json()['id']}")


def first_start_key(output: str) -> str:
    m = re.search(r"API key:\s+(sk-[A-Za-z0-9]+)", output)
    assert m, f"no first-start key in:\n{output}"
    return m.group(1)


@pytest.fixture(scope="session")
def demo_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir holding the demo model, built once per run (a short training: tests need it, not its prose)."""
    from mxn.engines.local.demo import create_demo

    data = tmp_path_factory.mktemp("mxn-data")
    # A fixed number of steps, so the model (and what the tests see it say) is the same however busy the
    # machine is; the time bound only stops a pathologically slow machine.
    create_demo(
        data / "models" / "mxn-demo",
        seconds=300,
        report=lambda _line: None,
        max_steps=int(os.environ.get("MXN_TEST_DEMO_STEPS", "60")),
    )
    return data


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """An empty Redis database index of its own for this run, flushed afterwards."""
    import redis

    for index in range(15, 0, -1):
        client = redis.Redis(host="127.0.0.1", port=6379, db=index)
        # Claim the index atomically, so two runs at once never share one.
        if client.dbsize() == 0 and client.set("mxn:test:claim", "1", nx=True):
            try:
                yield f"redis://127.0.0.1:6379/{index}"
            finally:
                client.flushdb()
                client.close()
            return
        client.close()
    raise RuntimeError("no free Redis database index")

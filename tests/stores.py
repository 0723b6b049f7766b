"""Stores of a test's own, started and stopped by it: never the machine's shared PostgreSQL or Redis."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from mxn.deploy.process import free_port
from mxn.store.migrate import upgrade
from tests.conftest import wait_for


@dataclass
class PrivatePostgres:
    """initdb'd in a temporary directory; `postgres` runs as a child that dies with the test run (PR_SET_PDEATHSIG),
    and `pg_ctl stop` stops it."""

    base: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def _as_postgres(self) -> None:
        """In the child: PostgreSQL will not run as root; the death signal is set after the change of user, which
        clears it."""
        import ctypes

        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGQUIT)  # PR_SET_PDEATHSIG: immediate shutdown

    def run(self, *cmd: str) -> None:
        subprocess.run(cmd, check=True, capture_output=True, preexec_fn=self._as_postgres, timeout=120)

    def start(self) -> None:
        listen = ("-p", str(self.port), "-k", str(self.base), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off")
        log = (self.base / "postgres.log").open("ab")
        self.proc = subprocess.Popen(
            ["postgres", "-D", str(self.base / "data"), *listen], stdout=log, stderr=log, preexec_fn=self._as_postgres
        )
        wait_for(self._ready, 30, "PostgreSQL up")

    def _ready(self) -> bool:
        assert self.proc and self.proc.poll() is None, (self.base / "postgres.log").read_text(errors="replace")
        return subprocess.run(["pg_isready", "-q", "-h", "127.0.0.1", "-p", str(self.port)]).returncode == 0

    def stop(self, mode: str = "fast") -> None:
        if self.proc and self.proc.poll() is None:
            self.run("pg_ctl", "stop", "-D", str(self.base / "data"), "-m", mode, "-w")
            self.proc.wait(30)


@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    base = Path(tempfile.mkdtemp(prefix="mxn-pg-", dir="/tmp"))  # short: it holds the server's Unix socket
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(base, user.pw_uid, user.pw_gid)
    pg = PrivatePostgres(base, free_port())
    try:
        pg.run("initdb", "-D", str(base / "data"), "-A", "trust", "-U", "postgres", "--no-sync")
        pg.start()
        upgrade(pg.url)
        yield pg
    finally:
        try:
            pg.stop("immediate")
        finally:
            if pg.proc and pg.proc.poll() is None:
                pg.proc.kill()
            shutil.rmtree(base, ignore_errors=True)


def _killed_with_test_run() -> None:
    """In the child: SIGKILL when the test run dies; SIGKILL, as a stopped (SIGSTOP) server never acts on SIGTERM."""
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass
class PrivateRedis:
    """A `redis-server` child on a port of its own, keeping nothing on disk: `stop()` then `start()` is an outage
    that loses every key, as a Redis without persistence restarted would."""

    base: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        cmd = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        with (self.base / "redis.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [*cmd, "--dir", str(self.base)],
                stdout=log,
                stderr=subprocess.STDOUT,
                # Only from the main thread: the signal follows the thread that started the child.
                preexec_fn=_killed_with_test_run if threading.current_thread() is threading.main_thread() else None,
            )
        wait_for(self._ready, 10, "redis-server answering", interval=0.02)

    def _ready(self) -> bool:
        assert self.proc and self.proc.poll() is None, (self.base / "redis.log").read_text(errors="replace")
        client = redis.Redis(port=self.port, socket_timeout=1, socket_connect_timeout=1)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    base = tmp_path / "redis"
    base.mkdir()
    server = PrivateRedis(base, free_port())
    try:
        server.start()
        yield server
    finally:
        server.stop()

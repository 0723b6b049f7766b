"""A PostgreSQL of this test's own, stopped while usage records are added: the adds keep returning (durable in the
journal), and once it is back every record lands within seconds, each once."""

from __future__ import annotations

import asyncio
import logging
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mxn.deploy.process import free_port
from mxn.store.db import create_engine, sessionmaker
from mxn.store.migrate import upgrade
from mxn.usage import UsageWriter
from mxn.usage.journal import journals
from tests.conftest import wait_for, wait_for_async
from tests.usage import Sessions, stored, usage_row

pytestmark = pytest.mark.skipif(not shutil.which("pg_ctl"), reason="needs PostgreSQL's binaries (initdb, pg_ctl)")


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


async def test_adds_stay_durable_while_postgres_is_down_and_land_once_when_it_is_back(
    private_pg: PrivatePostgres, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = create_engine(private_pg.url)
    sessions = sessionmaker(db)
    writer = UsageWriter(sessions, tmp_path / "journal", interval=0.1)
    writer.start()
    added: list[str] = []

    async def add(n: int) -> None:
        rows = [usage_row(i) for i in range(n)]
        await asyncio.wait_for(asyncio.gather(*(writer.add(row) for row in rows)), 1)  # durable, store or no store
        added.extend(row["record_id"] for row in rows)

    try:
        with caplog.at_level(logging.WARNING, "mxn.usage"):
            await add(50)
            await wait_for_async(lambda: _count(sessions, len(added)), 10, "the first records stored")
            private_pg.stop()
            down = time.monotonic()
            while time.monotonic() - down < 3:
                await add(20)
                await asyncio.sleep(0.05)
            assert journals(tmp_path / "journal") and len(added) > 500
            private_pg.start()  # on this thread: the death signal follows the thread that started it
            back = time.monotonic()
            await wait_for_async(lambda: _count(sessions, len(added)), 10, "every record stored")
            landed = time.monotonic() - back
        ids = await stored(sessions)
        assert len(ids) == len(set(ids)) and set(ids) == set(added)
        assert landed < 5, f"the records took {landed:.1f}s to land"
        # One line when the store starts failing, one when it is back: not one per attempt.
        assert caplog.text.count("the store fails") == 1 and caplog.text.count("reach the store again") == 1
    finally:
        await writer.close()
        await db.dispose()
    assert not journals(tmp_path / "journal")


async def _count(sessions: Sessions, expected: int) -> bool:
    return len(await stored(sessions)) >= expected

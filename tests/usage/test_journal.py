"""Usage records survive a replica killed with SIGKILL, a torn journal, a batch moved twice and a store that fails:
every acknowledged record reaches the store, and none twice. On SQLite; test_outage.py stops a real PostgreSQL."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from mxn.store.db import create_engine, sessionmaker
from mxn.store.migrate import upgrade
from mxn.usage import UsageWriter
from mxn.usage.journal import JournalFile, decode, encode, journals, read
from mxn.usage.writer import REJECTED, insert
from tests.conftest import ROOT, wait_for_async
from tests.usage import Sessions, stored, usage_row

pytestmark = pytest.mark.e2e  # starts processes of its own


def dead_journal(directory: Path, rows: int, name: str = "0123456789abcdef-000001") -> tuple[Path, list[str]]:
    """A journal left by a replica that died: `rows` records, nobody holding it."""
    directory.mkdir(parents=True, exist_ok=True)
    ids = [f"{name}-{n}" for n in range(rows)]
    path = directory / f"{name}.journal"
    path.write_bytes(b"".join(encode(usage_row(n, record_id=i)) for n, i in enumerate(ids)))
    return path, ids


def leftovers(directory: Path) -> set[str]:
    """What is in a journal directory beside its id: journals, their side files."""
    return {p.name for p in directory.iterdir()} - {"id"}


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("usage-store") / "template.db"
    upgrade(f"sqlite+aiosqlite:///{path}")
    return path


@pytest.fixture
def store_url(template: Path, tmp_path: Path) -> str:
    """A migrated, empty store of the test's own."""
    shutil.copy(template, tmp_path / "mxn.db")
    return f"sqlite+aiosqlite:///{tmp_path / 'mxn.db'}"


@pytest.fixture
async def sessions(store_url: str) -> AsyncIterator[Sessions]:
    db = create_engine(store_url)
    yield sessionmaker(db)
    await db.dispose()


@pytest.fixture
async def writers(sessions: Sessions) -> AsyncIterator[list[UsageWriter]]:
    """Writers a test starts, closed after it (before its store is)."""
    made: list[UsageWriter] = []
    yield made
    for writer in made:
        if not writer.closing:
            await writer.close()


def start(writers: list[UsageWriter], sessions: Sessions, directory: Path, **options: Any) -> UsageWriter:
    writer = UsageWriter(sessions, directory, **options)
    writer.start()
    writers.append(writer)
    return writer


def _die_with_test_run() -> None:
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def test_a_line_is_checksummed_and_a_damaged_one_is_never_misread() -> None:
    row = usage_row(record_id="r-1", error="a\nb")
    line = encode(row)
    assert line.count(b"\n") == 1 and decode(line) == row
    for damaged in (line[:-1], line[:20], line.replace(b'"m"', b'"n"'), b"\0" * len(line), b"zzzzzzzz " + line[9:]):
        assert decode(damaged) is None


@pytest.mark.parametrize("fsync", ["interval", "always"])
async def test_records_acknowledged_before_sigkill_all_reach_the_store_once(
    sessions: Sessions, store_url: str, tmp_path: Path, writers: list[UsageWriter], fsync: str
) -> None:
    directory = tmp_path / "journal"
    child = await asyncio.create_subprocess_exec(
        *(sys.executable, str(Path(__file__).with_name("journal_child.py")), store_url, str(directory), fsync),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        preexec_fn=_die_with_test_run,
    )
    assert child.stdout and child.stderr
    acked: list[str] = []
    try:
        while len(acked) < 400:
            line = await child.stdout.readline()
            assert line, f"the child stopped: {(await child.stderr.read()).decode()}"
            acked.append(line.decode().strip())
    finally:
        child.kill()
        rest, _ = await child.communicate()
    acked += rest.decode().split()  # acknowledged before the kill, read after it
    moved_by_child = len(await stored(sessions))
    assert journals(directory) and moved_by_child < len(acked)  # the kill left records only in the journal

    survivor = start(writers, sessions, directory, interval=0.05)

    def left() -> bool:
        return not [p for p in journals(directory) if not p.name.startswith(survivor.replica)]

    await wait_for_async(lambda: asyncio.to_thread(left), 20, "the killed replica's journals moved")
    ids = await stored(sessions)
    assert len(ids) == len(set(ids)), "a record counted twice"
    assert set(acked) <= set(ids), f"{len(set(acked) - set(ids))} acknowledged records lost"


async def test_a_torn_tail_and_a_damaged_line_are_skipped_and_the_rest_moved(
    sessions: Sessions, tmp_path: Path, writers: list[UsageWriter], caplog: pytest.LogCaptureFixture
) -> None:
    path, ids = dead_journal(tmp_path / "journal", 10)
    lines = path.read_bytes().splitlines(keepends=True)
    lines[3] = lines[3].replace(b'"chat"', b'"chaT"')  # damaged in the middle: its checksum no longer matches
    path.write_bytes(b"".join(lines)[: -len(lines[-1]) // 2])  # torn in the middle of the last record
    fd = os.open(path, os.O_RDONLY)
    try:
        batch = read(fd, 0, 100)
    finally:
        os.close(fd)
    assert [r["record_id"] for r in batch.rows] == ids[:3] + ids[4:9] and batch.eof
    assert batch.skipped == len(lines[3]) + len(lines[-1]) - len(lines[-1]) // 2

    with caplog.at_level(logging.WARNING, "mxn.usage"):
        await start(writers, sessions, path.parent).flush()
    assert sorted(await stored(sessions)) == sorted(ids[:3] + ids[4:9])
    assert not path.exists() and "torn or damaged" in caplog.text


async def test_a_batch_that_already_landed_is_not_counted_twice(
    sessions: Sessions, tmp_path: Path, writers: list[UsageWriter]
) -> None:
    """A mover that died after the store's commit and before its side file: the next one moves the batch again."""
    path, ids = dead_journal(tmp_path / "journal", 120)
    fd = os.open(path, os.O_RDONLY)
    try:
        landed = read(fd, 0, 50)
    finally:
        os.close(fd)
    await insert(sessions, landed.rows)
    await start(writers, sessions, path.parent, batch=30).flush()
    assert sorted(await stored(sessions)) == sorted(ids) and not path.exists()


async def test_the_side_file_says_where_moving_goes_on_and_a_bad_one_means_from_the_start(
    sessions: Sessions, tmp_path: Path, writers: list[UsageWriter]
) -> None:
    directory = tmp_path / "journal"
    path, ids = dead_journal(directory, 20)
    line = len(encode(usage_row(0, record_id=ids[0])))  # every line of this journal is as long
    path.with_suffix(".moved").write_text(f"{5 * line}\n")
    bad, bad_ids = dead_journal(directory, 20, name="fedcba9876543210-000001")
    bad.with_suffix(".moved").write_text(f"{5 * line + 3}\n")  # not the end of a line: not trusted
    writer = start(writers, sessions, directory)
    await writer.flush()
    await writer.close()
    assert sorted(await stored(sessions)) == sorted(ids[5:] + bad_ids)
    assert not leftovers(directory)


async def test_a_dead_replicas_journal_is_moved_once_by_racing_survivors_and_a_live_ones_is_left(
    sessions: Sessions, tmp_path: Path, writers: list[UsageWriter]
) -> None:
    directory = tmp_path / "journal"
    dead, ids = dead_journal(directory, 1000)
    live, _ = dead_journal(directory, 10, name="aaaaaaaaaaaaaaaa-000001")
    with live.open("rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # its replica is alive
        survivors = [start(writers, sessions, directory, batch=40) for _ in range(4)]
        await asyncio.gather(*(s.flush() for s in survivors))
        await wait_for_async(lambda: asyncio.to_thread(lambda: not dead.exists()), 10, "the dead journal moved")
        assert sorted(await stored(sessions)) == sorted(ids)
        assert live.exists()
    for survivor in survivors:
        await survivor.close()
    assert leftovers(directory) == {live.name}


async def test_a_survivor_finishes_what_a_dead_mover_began(sessions: Sessions, tmp_path: Path) -> None:
    path, ids = dead_journal(tmp_path / "journal", 100)
    first = JournalFile.claim(path)
    assert first and JournalFile.claim(path) is None  # held: nobody else takes it
    batch = read(first.fd, 0, 30)
    await insert(sessions, batch.rows)
    first.save_moved(batch.end)
    first.close()  # its mover dies here
    writer = UsageWriter(sessions, path.parent)
    writer.start()
    await writer.flush()
    await writer.close()
    assert sorted(await stored(sessions)) == sorted(ids) and not leftovers(path.parent)


async def test_clean_shutdown_moves_everything_and_leaves_no_journal(
    sessions: Sessions, tmp_path: Path, writers: list[UsageWriter]
) -> None:
    writer = start(writers, sessions, tmp_path / "journal", interval=60)
    rows = [usage_row(n) for n in range(300)]
    await asyncio.gather(*(writer.add(row) for row in rows))
    assert len(journals(tmp_path / "journal")) == 1 and not await stored(sessions)
    await writer.close()
    assert sorted(await stored(sessions)) == sorted(row["record_id"] for row in rows)
    assert not leftovers(tmp_path / "journal")


async def test_adds_return_while_the_store_fails_and_the_records_move_once_it_is_back(
    store_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A store that cannot be opened, then one that can (the same journal directory): one log line each way."""
    directory = tmp_path / "journal"
    broken = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'missing' / 'mxn.db'}")
    writer = UsageWriter(sessionmaker(broken), directory, interval=0.05)
    writer.start()
    with caplog.at_level(logging.WARNING, "mxn.usage"):
        rows = [usage_row(n) for n in range(50)]
        for row in rows:
            await asyncio.wait_for(writer.add(row), 1)
        await asyncio.sleep(0.5)  # the mover tries, and tries again
        await writer.close()
    await broken.dispose()
    assert caplog.text.count("the store fails") == 1 and "left in" in caplog.text
    assert journals(directory)

    db = create_engine(store_url)
    writer = UsageWriter(sessionmaker(db), directory)
    writer.start()
    await writer.flush()
    await writer.close()
    assert sorted(await stored(sessionmaker(db))) == sorted(row["record_id"] for row in rows)
    await db.dispose()


async def test_a_record_the_store_refuses_is_set_aside_and_the_rest_move_on(
    sessions: Sessions, writers: list[UsageWriter], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "journal"
    writer = start(writers, sessions, directory)
    bad = usage_row(1, model=None)  # NOT NULL: no store takes it, however often it is moved
    await writer.add(usage_row(0))
    await writer.add(bad)
    await writer.add(usage_row(2))
    with caplog.at_level(logging.ERROR, "mxn.usage"):
        await writer.flush()
    assert sorted(await stored(sessions)) == sorted([f"{writer.replica}-1", f"{writer.replica}-3"])
    kept = (directory / REJECTED).read_bytes().splitlines(keepends=True)
    assert [decode(line) for line in kept] == [{**bad, "created_at": bad["created_at"]}]
    assert "refused by the store" in caplog.text
    await writer.add(usage_row(4))
    await writer.flush()
    assert f"{writer.replica}-4" in await stored(sessions), "moving goes on"


async def test_records_with_and_without_holds_move_in_one_batch(
    sessions: Sessions, writers: list[UsageWriter], tmp_path: Path
) -> None:
    writer = start(writers, sessions, tmp_path / "journal")
    await writer.add(usage_row(0, user_hold="h-1", request_id="r0"))
    await writer.add(usage_row(1))  # refused: paid from nothing
    await writer.flush()
    assert len(await stored(sessions)) == 2

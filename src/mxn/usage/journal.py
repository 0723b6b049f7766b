"""The usage journal on disk: checksummed lines in files that one live process at a time holds.

A line is `<crc32 of the JSON, 8 hex digits> <the record as JSON>\\n`. A crash can leave the last line torn (cut
short, or zeros where the last write never landed): its checksum or its missing newline gives it away, and a reader
skips it rather than misread it. Each `<name>.journal` is held with an exclusive `flock` by the process that has it
(the replica writing it, or a survivor moving it into the store), for as long as it has it; a lock anyone can take
means its holder is dead. Beside it, `<name>.moved` says how far into it records are in the store.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import secrets
import zlib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy.engine import URL, make_url

from mxn.config import Settings

SUFFIX = ".journal"
MAX_LINE = 1 << 20  # a longer line is damage: read, and skipped, in pieces of this size


def journal_dir(settings: Settings, database_url: str | URL | None = None) -> Path:
    """Where the usage journals of this store are: a subdirectory per store, so that a survivor never moves a dead
    replica's records into another store than theirs (replicas of different stores may share a data dir)."""
    root = Path(settings.usage_journal_dir) if settings.usage_journal_dir else Path(settings.data_dir) / "usage"
    return root / store_key(database_url or settings.database_url)


def store_key(database_url: str | URL) -> str:
    """A short name for the store a URL reaches: password and driver left out, a SQLite file's path made absolute."""
    url = make_url(database_url)
    url = url.set(drivername=url.get_backend_name(), password=None)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        url = url.set(database=str(Path(url.database).resolve()))
    return hashlib.sha256(url.render_as_string(hide_password=False).encode()).hexdigest()[:16]


def encode(row: dict[str, Any]) -> bytes:
    payload = orjson.dumps(row)
    return b"%08x %b\n" % (zlib.crc32(payload), payload)


def decode(line: bytes) -> dict[str, Any] | None:
    """The record on this line, or None if the line is torn or damaged."""
    if len(line) < 11 or line[8:9] != b" " or line[-1:] != b"\n":
        return None
    payload = line[9:-1]
    try:
        if int(line[:8], 16) != zlib.crc32(payload):
            return None
        row = orjson.loads(payload)
    except ValueError:
        return None
    if not isinstance(row, dict):
        return None
    if isinstance(row.get("created_at"), str):
        row["created_at"] = datetime.fromisoformat(row["created_at"])
    return row


@dataclass
class Batch:
    rows: list[dict[str, Any]]
    end: int  # the offset after the lines read
    skipped: int  # bytes of torn or damaged lines passed over
    eof: bool


def read(fd: int, offset: int, limit: int) -> Batch:
    """Up to `limit` records from `offset` (a line's start) on. A damaged line is skipped whole and reading goes on
    after it: every line stands on its own checksum."""
    rows: list[dict[str, Any]] = []
    skipped = 0
    # A buffer of its own each time, over the same descriptor (and lock): nothing read earlier is trusted.
    with open(fd, "rb", closefd=False) as f:
        f.seek(offset)
        while len(rows) < limit:
            line = f.readline(MAX_LINE)
            if not line:
                return Batch(rows, offset, skipped, eof=True)
            offset += len(line)
            row = decode(line)
            if row is None:
                skipped += len(line)
            else:
                rows.append(row)
    return Batch(rows, offset, skipped, eof=False)


def journals(directory: Path, replica: str = "") -> list[Path]:
    """The journals in `directory`, or only those `replica` wrote."""
    return sorted(directory.glob(f"{replica}-*{SUFFIX}" if replica else f"*{SUFFIX}"))


def directory_id(directory: Path) -> str:
    """The journal directory's own id, made by whoever used it first: replicas that share the directory (and so
    can move each other's journals) see the same id, wherever they mount it."""
    path = directory / "id"
    with contextlib.suppress(FileNotFoundError):
        return path.read_text().strip()
    tmp = directory / f"id.{secrets.token_hex(4)}.tmp"
    tmp.write_text(secrets.token_hex(8))
    try:
        os.link(tmp, path)  # atomic, and fails if another replica made it first
    except FileExistsError:
        pass
    else:
        _sync_dir(directory)
    finally:
        tmp.unlink()
    return path.read_text().strip()


@dataclass
class JournalFile:
    """A journal this process holds: open, locked, and how much of it there is."""

    path: Path
    fd: int
    size: int  # bytes in it; for the file being written, bytes written and synced
    moved: int | None = None  # how far into it records are in the store, once read from the side file

    @classmethod
    def create(cls, path: Path) -> JournalFile | None:
        """A new journal, held; None if a survivor sweeping the directory took it in the instant before the lock
        (finding it empty, it removes it)."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        held = cls._hold(path, fd)
        if held:
            _sync_dir(path.parent)  # the file must outlive a power cut as surely as the records in it
        return held

    @classmethod
    def claim(cls, path: Path) -> JournalFile | None:
        """The journal at `path`, held, if nobody held it (its writer is dead); None if somebody does or it is gone."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        return cls._hold(path, fd)

    @classmethod
    def _hold(cls, path: Path, fd: int) -> JournalFile | None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # A journal is removed by whoever holds it, before letting go: a lock got on a file no longer at
            # `path` is a lock on a removed file.
            held, there = os.fstat(fd), os.stat(path)
            if (held.st_dev, held.st_ino) == (there.st_dev, there.st_ino):
                return cls(path, fd, held.st_size)
        except (BlockingIOError, FileNotFoundError):
            pass
        os.close(fd)
        return None

    @property
    def side(self) -> Path:
        return self.path.with_suffix(".moved")

    def load_moved(self) -> int:
        """The offset the side file gives, if it is the end of a line in this journal; else 0: records moved again
        are counted once (their ids are unique in the store), records skipped would be lost."""
        try:
            offset = int(self.side.read_bytes())
        except (OSError, ValueError):
            return 0
        if 0 < offset <= self.size and os.pread(self.fd, 1, offset - 1) == b"\n":
            return offset
        return 0

    def save_moved(self, offset: int) -> None:
        """Atomically: a temporary file, synced, renamed over the side file. A crash leaves the old offset or this."""
        tmp = self.side.with_suffix(".moved.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, b"%d\n" % offset)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.side)
        self.moved = offset

    def append(self, data: bytes, sync: bool = True) -> None:
        """Write `data` after what the file holds, and sync it (unless told not to: `sync()` then does it later).
        On failure the file is cut back, so that no part of this group lies before the next one."""
        try:
            view, at = memoryview(data), self.size
            while view:
                written = os.pwrite(self.fd, view, at)
                view, at = view[written:], at + written
            if sync:
                os.fdatasync(self.fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, self.size)
            raise
        self.size += len(data)

    def sync(self) -> None:
        if self.fd >= 0:
            os.fdatasync(self.fd)

    def remove(self) -> None:
        """Remove the journal (everything in it is in the store) and let go of it."""
        for path in (self.side, self.side.with_suffix(".moved.tmp"), self.path):
            path.unlink(missing_ok=True)
        self.close()

    def close(self) -> None:
        """Let go of it (the lock goes with the descriptor); the file stays for whoever takes it next."""
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)


def _sync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

"""What CLI commands share: the store option, running async code, clean errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, nullcontext
from typing import Annotated, TypeVar

import typer
from sqlalchemy.ext.asyncio import AsyncSession

from mxn.accounts.secrets import load_secret
from mxn.config import get_settings
from mxn.errors import MxnError
from mxn.store.db import create_engine, sessionmaker
from mxn.store.locks import STARTUP_LOCK_ID, exclusive
from mxn.store.migrate import upgrade

T = TypeVar("T")

DatabaseUrl = Annotated[
    str | None,
    typer.Option("--database-url", envvar="MXN_DATABASE_URL", help="SQLAlchemy URL of the store (default: ./mxn.db)"),
]


def database_url(value: str | None) -> str:
    return value or get_settings().database_url


@asynccontextmanager
async def store(url: str, startup: bool = False) -> AsyncIterator[tuple[AsyncSession, bytes]]:
    """A session on the migrated store, and the secret that keys the key hashes. `startup`: replicas starting
    together take turns (the first one to get here applies the catalogue and makes the admin user; the others
    then find them made)."""
    engine = create_engine(url)
    sessions = sessionmaker(engine)
    try:
        lock = exclusive(engine, url, get_settings().data_dir, "startup", STARTUP_LOCK_ID) if startup else nullcontext()
        async with lock:
            secret = await load_secret(sessions, get_settings().secret)
            async with sessions() as s:
                yield s, secret
    finally:
        await engine.dispose()


def run(url: str, work: Callable[[AsyncSession, bytes], Awaitable[T]], startup: bool = False) -> T:
    """Migrate, then run `work` in a session; an mxn error becomes a message and exit code 1."""
    upgrade(url)

    async def main() -> T:
        async with store(url, startup) as (s, secret):
            return await work(s, secret)

    try:
        return asyncio.run(main())
    except MxnError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1)

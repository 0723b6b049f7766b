"""`mxn serve`: migrate the store, apply the catalogue, first-start bootstrap, then uvicorn."""

from __future__ import annotations

import os
import secrets
from typing import Annotated

import typer
import uvicorn
from sqlalchemy import func, select

from mxn.accounts import service as accounts
from mxn.catalog.apply import apply_catalog
from mxn.cli.catalog import load_or_exit
from mxn.cli.common import run
from mxn.config import get_settings
from mxn.store.models import User


def serve(
    host: Annotated[str | None, typer.Option("--host", help="bind address [MXN_HOST, default 127.0.0.1]")] = None,
    port: Annotated[int | None, typer.Option("--port", help="port [MXN_PORT, default 8000]")] = None,
    catalog: Annotated[str | None, typer.Option("--catalog", help="catalogue YAML to apply [MXN_CATALOG]")] = None,
    workers: Annotated[int | None, typer.Option("--workers", help="worker processes [MXN_WORKERS]")] = None,
    database_url: Annotated[str | None, typer.Option("--database-url", help="[MXN_DATABASE_URL]")] = None,
) -> None:
    """Run the gateway."""
    # Flags become env vars so that every uvicorn worker process reads the same settings.
    for name, value in {
        "HOST": host,
        "PORT": port,
        "CATALOG": catalog,
        "WORKERS": workers,
        "DATABASE_URL": database_url,
    }.items():
        if value is not None:
            os.environ[f"MXN_{name}"] = str(value)
    get_settings.cache_clear()
    settings = get_settings()
    spec = load_or_exit(settings.catalog) if settings.catalog else None

    async def prepare(s, secret):  # type: ignore[no-untyped-def]
        if spec is not None:
            counts = await apply_catalog(s, spec)
            typer.echo(
                f"catalogue {settings.catalog}: {counts['created']} created, {counts['updated']} updated, "
                f"{counts['removed']} removed",
                err=True,
            )
        return await _first_start(s, secret)

    first = run(settings.database_url, prepare)
    base = f"http://{settings.host}:{settings.port}"
    if first:
        password, key = first
        typer.echo(
            "\nFirst start: created the admin user. This is the only time these are shown.\n"
            f"  user:     admin\n  password: {password}\n  API key:  {key}\n"
            f"  API:      {base}/v1  (GenStudio form: {base}/maas/{{model}}/{{chip}}/)\n"
        )
    uvicorn.run(
        "mxn.app:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        loop="uvloop",
        http="httptools",
        log_level=settings.log_level,
        access_log=False,
        timeout_graceful_shutdown=30,
    )


async def _first_start(s, secret):  # type: ignore[no-untyped-def]
    """With no user at all, make `admin` with a random password and a first key (OneAPI's root, done safely)."""
    if (await s.execute(select(func.count()).select_from(User))).scalar_one():
        return None
    password = secrets.token_urlsafe(15)
    user = await accounts.create_user(s, "admin", password, admin=True)
    _row, key = await accounts.create_key(s, secret, user, name="first key")
    await s.commit()
    return password, key

"""`mxn serve`: migrate the store, apply the catalogue, first-start bootstrap, then become the server."""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
from typing import Annotated

import typer
from pydantic import ValidationError
from sqlalchemy import func, select

from mxn.accounts import service as accounts
from mxn.catalog.apply import apply_catalog
from mxn.catalog.defaults import default_catalog, demo_path, local_engine_installed
from mxn.cli.catalog import load_or_exit
from mxn.cli.common import run
from mxn.config import get_settings
from mxn.store.models import Deployment, User


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
    try:
        settings = get_settings()
    except ValidationError as exc:
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"])
            typer.echo(f"error: invalid setting{' MXN_' + field.upper() if field else ''}: {err['msg']}", err=True)
        raise typer.Exit(2)
    spec = load_or_exit(settings.catalog) if settings.catalog else None

    async def prepare(s, secret):  # type: ignore[no-untyped-def]
        spec_now = spec if spec is not None else await _zero_config(s, settings)
        if spec_now is not None:
            counts = await apply_catalog(s, spec_now)
            typer.echo(
                f"catalogue {settings.catalog or 'built-in demo'}: {counts['created']} created, "
                f"{counts['updated']} updated, {counts['removed']} removed",
                err=True,
            )
        return await _first_start(s, secret)

    first = run(settings.database_url, prepare, startup=True)
    base = f"http://{settings.host}:{settings.port}"
    if first:
        password, key = first
        typer.echo(
            "\nFirst start: created the admin user. This is the only time these are shown.\n"
            f"  user:     admin\n  password: {password}\n  API key:  {key}\n"
            f"  API:      {base}/v1  (GenStudio form: {base}/maas/{{model}}/{{chip}}/)\n"
        )
    # The start-up work ends here, and with it everything it imported: the process becomes `mxn.server` (same
    # pid, so process managers and their signals still reach the server), which imports only what serving needs
    # and reads the settings from the environment. The arguments stay on its command line, for `ps` and `pgrep`.
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "mxn.server", *sys.argv[1:]])


async def _zero_config(s, settings):  # type: ignore[no-untyped-def]
    """No catalogue and an empty store: the demo chat model and MiniLM embeddings, built here if needed."""
    if not settings.demo or (await s.execute(select(func.count()).select_from(Deployment))).scalar_one():
        return None
    if not local_engine_installed():
        typer.echo(
            "no catalogue, and the embedded engine is not installed (pip install 'mxn[local]'): "
            "starting with an empty catalogue",
            err=True,
        )
        return None
    path = demo_path(settings.data_dir)
    if not (path / "config.json").exists():
        from mxn.engines.local.demo import create_demo

        typer.echo(f"building the demo model in {path} (once, about a minute)", err=True)
        await asyncio.to_thread(create_demo, path, 60.0, lambda line: typer.echo(line, err=True))
    return default_catalog(settings.data_dir)


async def _first_start(s, secret):  # type: ignore[no-untyped-def]
    """With no user at all, make `admin` with a random password and a first key (OneAPI's root, done safely)."""
    if (await s.execute(select(func.count()).select_from(User))).scalar_one():
        return None
    password = secrets.token_urlsafe(15)
    user = await accounts.create_user(s, "admin", password, admin=True)
    _row, key = await accounts.create_key(s, secret, user, name="first key")
    await s.commit()
    return password, key

"""`mxn moderation on|off MODEL@CHIP`: off needs a confirmation (a prompt, or --yes) and is audited."""

from __future__ import annotations

from typing import Annotated

import typer

from mxn import audit, services
from mxn.cli.common import DatabaseUrl, database_url, run

app = typer.Typer(no_args_is_help=True, help="Content moderation per deployment.")


def _set(cell: str, on: bool, db: str | None) -> None:
    async def work(s, _secret):  # type: ignore[no-untyped-def]
        await services.moderation.set(s, audit.cli(), await services.deployments.by_name(s, cell), on)

    run(database_url(db), work)
    typer.echo(f"moderation {'on' if on else 'off'} for {cell}")


@app.command("off")
def off(
    cell: Annotated[str, typer.Argument(help="the deployment, as model@chip")],
    yes: Annotated[bool, typer.Option("--yes", help="confirm without a prompt")] = False,
    db: DatabaseUrl = None,
) -> None:
    """Turn moderation off for one deployment: its input and output are no longer checked."""
    if not yes and not typer.confirm(f"Turn content moderation OFF for {cell}?", default=False):
        typer.echo("left on", err=True)
        raise typer.Exit(1)
    _set(cell, False, db)


@app.command("on")
def on(cell: Annotated[str, typer.Argument(help="the deployment, as model@chip")], db: DatabaseUrl = None) -> None:
    _set(cell, True, db)

"""`mxn moderation on|off MODEL@CHIP`: off needs a confirmation (a prompt, or --yes) and is audited."""

from __future__ import annotations

from typing import Annotated

import typer
from sqlalchemy import select

from mxn import audit
from mxn.cli.common import DatabaseUrl, database_url, run
from mxn.errors import NotFound
from mxn.store.models import Deployment

app = typer.Typer(no_args_is_help=True, help="Content moderation per deployment.")


def _set(cell: str, on: bool, db: str | None) -> None:
    model, _, chip = cell.partition("@")

    async def work(s, _secret):  # type: ignore[no-untyped-def]
        row = (await s.execute(select(Deployment).where(Deployment.model == model, Deployment.chip == chip))).scalar()
        if row is None:
            raise NotFound(f"no deployment '{cell}' (write it as model@chip)")
        if row.moderation != on:
            row.moderation = on
            audit.add(
                s,
                audit.cli_actor(),
                "moderation.on" if on else "moderation.off",
                f"deployment:{row.id}",
                None,
                {"deployment": cell},
            )
            await s.commit()

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

"""`mxn catalog check|apply FILE`."""

from __future__ import annotations

import typer

from mxn import audit, services
from mxn.catalog.loader import CatalogError, load_catalog
from mxn.catalog.schema import CatalogFile
from mxn.cli.common import DatabaseUrl, database_url, run

app = typer.Typer(no_args_is_help=True, help="The catalogue of chips, models, deployments and endpoints.")


def load_or_exit(path: str) -> CatalogFile:
    try:
        return load_catalog(path)
    except CatalogError as exc:
        typer.echo(f"error: invalid catalogue: {exc}", err=True)
        raise typer.Exit(2)


@app.command("check")
def check(path: str) -> None:
    """Validate a catalogue file without touching the store."""
    spec = load_or_exit(path)
    typer.echo(f"{path}: ok ({len(spec.chips)} chips, {len(spec.models)} models, {len(spec.deployments)} deployments)")


@app.command("apply")
def apply(path: str, db: DatabaseUrl = None) -> None:
    """Write a catalogue file into the store (idempotent)."""
    spec = load_or_exit(path)

    async def work(s, _secret):  # type: ignore[no-untyped-def]
        return await services.catalog.apply(s, audit.cli(), spec)

    counts = run(database_url(db), work)
    typer.echo(
        f"{path}: applied ({counts['created']} created, {counts['updated']} updated, {counts['removed']} removed)"
    )

"""`mxn codes create` and `mxn usage`: redemption codes and usage records, on the same store as the server."""

from __future__ import annotations

from typing import Annotated

import orjson
import typer

from mxn import audit, services
from mxn.cli.common import DatabaseUrl, database_url, run
from mxn.gateway.usage_views import to_csv, usage_rows

codes = typer.Typer(no_args_is_help=True, help="Redemption codes.")


@codes.command("create")
def codes_create(
    quota: Annotated[int, typer.Option("--quota", help="quota each code adds")],
    count: Annotated[int, typer.Option("--count", help="how many codes")] = 1,
    db: DatabaseUrl = None,
) -> None:
    """Print the new codes, one a line; they are not shown again."""

    async def work(s, secret):  # type: ignore[no-untyped-def]
        return await services.codes.create(s, audit.cli(), secret, quota, count)

    for code in run(database_url(db), work):
        typer.echo(code)


def usage(
    user: Annotated[str | None, typer.Option("--user")] = None,
    since: Annotated[str | None, typer.Option("--since", help="24h, 7d or an ISO date")] = None,
    fmt: Annotated[str, typer.Option("--format", help="csv or json")] = "csv",
    limit: Annotated[int, typer.Option("--limit")] = 10_000,
    db: DatabaseUrl = None,
) -> None:
    """Usage records, newest first."""
    if fmt not in ("csv", "json"):
        typer.echo("error: --format is csv or json", err=True)
        raise typer.Exit(1)

    async def work(s, _secret):  # type: ignore[no-untyped-def]
        return await usage_rows(s, user=user, since=since, limit=limit)

    rows = run(database_url(db), work)
    if fmt == "csv":
        typer.echo(to_csv(rows), nl=False)
    else:
        typer.echo(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())

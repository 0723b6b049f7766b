"""`mxn users ...` and `mxn keys ...`: the same operations as /admin/users and /admin/keys, through the same
services (and so the same audit records, made by `cli:OSUSER`)."""

from __future__ import annotations

import sys
from typing import Annotated

import orjson
import typer

from mxn import audit, services
from mxn.accounts import service as accounts
from mxn.cli.common import DatabaseUrl, database_url, run

users = typer.Typer(no_args_is_help=True, help="Users: create and list.")
keys = typer.Typer(no_args_is_help=True, help="API keys: create, list, revoke.")


def _csv(value: str | None) -> list[str] | None:
    return [x.strip() for x in value.split(",") if x.strip()] if value else None


@users.command("create")
def users_create(
    name: str,
    password_stdin: Annotated[bool, typer.Option("--password-stdin", help="read the password from stdin")] = False,
    admin: Annotated[bool, typer.Option("--admin")] = False,
    group: Annotated[str | None, typer.Option("--group", help="default: 'default', or 'unlimited' for --admin")] = None,
    quota: Annotated[int | None, typer.Option("--quota", help="token quota (unset = unlimited)")] = None,
    db: DatabaseUrl = None,
) -> None:
    password = sys.stdin.readline().rstrip("\n") if password_stdin else None
    if password_stdin and len(password or "") < 8:
        typer.echo("error: the password needs at least 8 characters", err=True)
        raise typer.Exit(1)

    async def work(s, _secret):  # type: ignore[no-untyped-def]
        return await services.users.create(s, audit.cli(), name, password, admin=admin, group=group, quota=quota)

    user = run(database_url(db), work)
    typer.echo(f"created user {user.name} (id {user.id}, {user.role})")


@users.command("list")
def users_list(db: DatabaseUrl = None) -> None:
    async def work(s, _secret):  # type: ignore[no-untyped-def]
        return await services.users.every(s)

    for u in run(database_url(db), work):
        typer.echo(f"{u.id}\t{u.name}\t{u.role}\t{u.group}\t{'enabled' if u.enabled else 'disabled'}")


@keys.command("create")
def keys_create(
    user: Annotated[str, typer.Option("--user", help="owner of the key")],
    name: Annotated[str, typer.Option("--name")] = "",
    models: Annotated[str | None, typer.Option("--models", help="allowed models, comma-separated")] = None,
    chips: Annotated[str | None, typer.Option("--chips", help="allowed chips, comma-separated")] = None,
    expires: Annotated[str | None, typer.Option("--expires", help="e.g. 30d, 12h, or an ISO date")] = None,
    rpm: Annotated[int | None, typer.Option("--rpm")] = None,
    rpd: Annotated[int | None, typer.Option("--rpd")] = None,
    tpm: Annotated[int | None, typer.Option("--tpm")] = None,
    concurrency: Annotated[int | None, typer.Option("--concurrency")] = None,
    quota: Annotated[int | None, typer.Option("--quota")] = None,
    ips: Annotated[str | None, typer.Option("--ips", help="allowed CIDRs, comma-separated")] = None,
    db: DatabaseUrl = None,
) -> None:
    """Create a key; it is printed once, alone on the last line."""

    async def work(s, secret):  # type: ignore[no-untyped-def]
        owner = await services.users.by_name(s, user)
        return await services.keys.create(
            s,
            audit.cli(),
            secret,
            owner,
            name=name,
            models=_csv(models),
            chips=_csv(chips),
            expires=expires,
            ips=_csv(ips),
            limits={"rpm": rpm, "rpd": rpd, "tpm": tpm, "concurrency": concurrency, "quota": quota},
        )

    row, key = run(database_url(db), work)
    typer.echo(f"created key {row.id} for {user}; it is shown only now:", err=True)
    typer.echo(key)


@keys.command("list")
def keys_list(
    user: Annotated[str | None, typer.Option("--user")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    db: DatabaseUrl = None,
) -> None:
    async def work(s, _secret):  # type: ignore[no-untyped-def]
        return [accounts.key_view(k, n) for k, n in await services.keys.listing(s, user)]

    rows = run(database_url(db), work)
    if as_json:
        typer.echo(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
        return
    for k in rows:
        state = "enabled" if k["enabled"] else "revoked"
        typer.echo(f"{k['id']}\t{k['user']}\t{k['prefix']}\t{k['name']}\t{state}\tlast used {k['last_used_at'] or '-'}")


@keys.command("rotate")
def keys_rotate(key_id: int, db: DatabaseUrl = None) -> None:
    """A new secret for the key, printed alone on the last line; the old one stops working."""

    async def work(s, secret):  # type: ignore[no-untyped-def]
        return await services.keys.rotate(s, audit.cli(), secret, await services.keys.by_id(s, key_id))

    key = run(database_url(db), work)
    typer.echo(f"rotated key {key_id}; the new key is shown only now:", err=True)
    typer.echo(key)


@keys.command("delete")
def keys_delete(key_id: int, db: DatabaseUrl = None) -> None:
    async def work(s, _secret):  # type: ignore[no-untyped-def]
        await services.keys.delete(s, audit.cli(), await services.keys.by_id(s, key_id))

    run(database_url(db), work)
    typer.echo(f"deleted key {key_id}")


@keys.command("revoke")
def keys_revoke(key_id: int, db: DatabaseUrl = None) -> None:
    async def work(s, _secret):  # type: ignore[no-untyped-def]
        await services.keys.revoke(s, audit.cli(), await services.keys.by_id(s, key_id))

    run(database_url(db), work)
    typer.echo(f"revoked key {key_id}")

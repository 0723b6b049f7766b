"""The audit log: who did what, when, from where. Rows are added in the same transaction as the change."""

from __future__ import annotations

import getpass
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import Request

from mxn.store.models import Audit

SECRET_FIELDS = frozenset({"password", "api_key", "key", "secret", "code", "new_password"})

# What a change is called in the log, `noun.verb`, whoever makes it (/admin, /api or the CLI); `mxn.services`
# writes these. Targets name the row the same way: `user_id=3`, `key_id=7`, `dep_id=2`, `model=NAME`, ...
Action = Literal[
    "user.create",
    "user.update",
    "user.delete",
    "group.create",
    "group.update",
    "group.delete",
    "key.create",
    "key.update",
    "key.rotate",
    "key.revoke",
    "key.delete",
    "code.create",
    "code.delete",
    "catalog.apply",
    "chip.create",
    "chip.update",
    "chip.delete",
    "model.create",
    "model.update",
    "model.delete",
    "deployment.create",
    "deployment.update",
    "deployment.delete",
    "endpoint.create",
    "endpoint.update",
    "endpoint.delete",
    "moderation.on",
    "moderation.off",
    "moderation.rules.create",
    "moderation.rules.update",
    "moderation.rules.delete",
    "managed.deploy",
    "managed.scale",
    "managed.undeploy",
]


@dataclass(frozen=True, slots=True)
class Actor:
    """Who makes a change (`admin-key`, `user:NAME`, `cli:OSUSER`) and from which address, if over HTTP."""

    name: str
    ip: str | None = None


def actor_of(request: Request) -> Actor:
    """The caller the auth step named, and the client's address."""
    name = getattr(request.state, "actor", None) or "anonymous"
    return Actor(name, request.client.host if request.client else None)


def cli() -> Actor:
    return Actor(cli_actor())


def record(s: AsyncSession, actor: Actor, action: Action, target: str = "", details: Any = None) -> None:
    """One event, added to the session: it is committed with the change it describes, or not at all. Details are
    what the caller asked for, with secrets masked."""
    add(s, actor.name, action, target, actor.ip, redact(details))


def add(s: AsyncSession, actor: str, action: str, target: str = "", ip: str | None = None, details: Any = None) -> None:
    """A row as given; changes are recorded through `record`, by `mxn.services`."""
    s.add(Audit(at=datetime.now(UTC), actor=actor, action=action, target=target[:256], ip=ip, details=details))


def cli_actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def redact(body: Any) -> Any:
    """A request body fit for the log: secrets replaced, long lists summarised."""
    if isinstance(body, dict):
        return {k: "***" if k in SECRET_FIELDS and v is not None else redact(v) for k, v in body.items()}
    if isinstance(body, list):
        return [redact(v) for v in body[:20]] + ([f"... {len(body) - 20} more"] if len(body) > 20 else [])
    if isinstance(body, str) and len(body) > 512:
        return body[:512] + f"... ({len(body)} characters)"
    return body


def view(a: Audit) -> dict[str, Any]:
    return {
        "id": a.id,
        "at": a.at.isoformat() if a.at else None,
        "actor": a.actor,
        "action": a.action,
        "target": a.target,
        "ip": a.ip,
        "details": a.details,
    }


async def rows(
    s: AsyncSession,
    *,
    action: str | None = None,
    actor: str | None = None,
    since: datetime | None = None,
    limit: int = 1000,
) -> list[Audit]:
    q = select(Audit).order_by(Audit.id.desc()).limit(limit)
    if action:
        q = q.where(Audit.action == action)
    if actor:
        q = q.where(Audit.actor == actor)
    if since:
        q = q.where(Audit.at >= since)
    return list((await s.execute(q)).scalars())

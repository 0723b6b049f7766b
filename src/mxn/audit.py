"""The audit log: who did what, when, from where. Rows are added in the same transaction as the change."""

from __future__ import annotations

import getpass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import Request

from mxn.store.models import Audit

SECRET_FIELDS = frozenset({"password", "api_key", "key", "secret", "code", "new_password"})
MAX_DETAILS = 4096  # bytes of a request body kept as details; a bigger one is summarised


def add(s: AsyncSession, actor: str, action: str, target: str = "", ip: str | None = None, details: Any = None) -> None:
    s.add(Audit(at=datetime.now(UTC), actor=actor, action=action, target=target[:256], ip=ip, details=details))


def from_request(s: AsyncSession, request: Request, action: str, target: str = "", details: Any = None) -> None:
    """An event caused by an HTTP request: the actor the auth step named, the client's address."""
    actor = getattr(request.state, "actor", None) or "anonymous"
    add(s, actor, action, target, request.client.host if request.client else None, details)


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

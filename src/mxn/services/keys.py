"""API keys: `key.create`, `key.update`, `key.rotate`, `key.revoke`, `key.delete`, whoever asks (an admin, the
key's owner, the CLI). The key itself is returned once and stored only as its HMAC."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from mxn import audit
from mxn.accounts import service as accounts
from mxn.audit import Actor
from mxn.errors import NotFound
from mxn.services.common import assign, commit, get
from mxn.store.models import ApiKey, User


async def by_id(s: AsyncSession, key_id: int) -> ApiKey:
    return await get(s, ApiKey, key_id, "key")


async def owned(s: AsyncSession, user_id: int, key_id: int) -> ApiKey:
    """The user's own key; someone else's is as missing as one that does not exist."""
    row = await s.get(ApiKey, key_id)
    if row is None or row.user_id != user_id:
        raise NotFound(f"no key {key_id}", code="key_not_found")
    return row


async def listing(s: AsyncSession, user: str | None = None) -> list[tuple[ApiKey, str]]:
    """Keys with their owners' names, of one user (by name) or of everyone."""
    q = select(ApiKey, User.name).join(User, User.id == ApiKey.user_id).order_by(ApiKey.id)
    if user:
        q = q.where(User.name == user)
    return [(k, n) for k, n in (await s.execute(q)).all()]


async def of_user(s: AsyncSession, user_id: int) -> list[ApiKey]:
    q = select(ApiKey).where(ApiKey.user_id == user_id).order_by(ApiKey.id)
    return list((await s.execute(q)).scalars())


async def create(
    s: AsyncSession,
    actor: Actor,
    secret: bytes,
    user: User,
    *,
    name: str = "",
    models: list[str] | None = None,
    chips: list[str] | None = None,
    expires: str | None = None,
    ips: list[str] | None = None,
    limits: dict[str, int | None] | None = None,
) -> tuple[ApiKey, str]:
    """The row and the key; `limits` (rpm, rpd, tpm, concurrency, quota) are an admin's to set."""
    row, key = await accounts.create_key(
        s, secret, user, name=name, models=models, chips=chips, expires=expires, ips=ips, limits=limits
    )
    settings = {"models": models, "chips": chips, "expires": expires, "ips": ips, **(limits or {})}
    details = {"user": user.name, "name": name, **{k: v for k, v in settings.items() if v is not None}}
    audit.record(s, actor, "key.create", f"key_id={row.id}", details)
    await commit(s)
    return row, key


async def update(s: AsyncSession, actor: Actor, row: ApiKey, changes: dict[str, Any]) -> ApiKey:
    """`changes` name columns: `name`, `enabled`, `models`, `chips`, the limits and `quota`."""
    assign(row, changes)
    audit.record(s, actor, "key.update", f"key_id={row.id}", changes)
    await commit(s)
    return row


async def rotate(s: AsyncSession, actor: Actor, secret: bytes, row: ApiKey) -> str:
    """A new secret for the same key; the old one stops working. Returns the new key."""
    key = await accounts.rotate_key(s, secret, row)
    audit.record(s, actor, "key.rotate", f"key_id={row.id}")
    await commit(s)
    return key


async def revoke(s: AsyncSession, actor: Actor, row: ApiKey) -> ApiKey:
    row.enabled = False
    audit.record(s, actor, "key.revoke", f"key_id={row.id}")
    await commit(s)
    return row


async def delete(s: AsyncSession, actor: Actor, row: ApiKey) -> None:
    audit.record(s, actor, "key.delete", f"key_id={row.id}")
    await s.delete(row)
    await commit(s)

"""A token in the store that changes whenever a user, key or group changes, so that what a replica caches about
them (`accounts.cache`) can be dropped: at once in the process that made the change, and within a poll interval
in every other replica and after changes made by the CLI.

The change is detected at flush time from the ORM's own bookkeeping, so no code path has to remember to call
anything. Spending a balance and noting a key's last use are not changes of who a caller is: they leave the
token alone (they are bulk UPDATEs or listed in `_VOLATILE`).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

from sqlalchemy import event, inspect, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session as OrmSession

from mxn.store.models import KV, ApiKey, Group, User

KEY = "auth_generation"
_WATCHED = (User, ApiKey, Group)
_VOLATILE = frozenset({"last_used_at", "quota_granted", "quota_alerted", "quota_epoch"})
_CHANGED = "mxn_accounts_changed"
# Called after a commit that changed accounts, in this process (each app's cache registers its `clear`).
listeners: list[Callable[[], None]] = []


def _changed(obj: Any) -> bool:
    state = inspect(obj)
    return any(attr.history.has_changes() for attr in state.attrs if attr.key not in _VOLATILE)


@event.listens_for(OrmSession, "after_flush")
def _after_flush(session: OrmSession, _context: Any) -> None:
    touched = any(isinstance(o, _WATCHED) for o in (*session.new, *session.deleted)) or any(
        isinstance(o, _WATCHED) and _changed(o) for o in session.dirty
    )
    if touched:
        session.connection().execute(update(KV).where(KV.key == KEY).values(value=secrets.token_hex(8)))
        session.info[_CHANGED] = True


@event.listens_for(OrmSession, "after_commit")
def _after_commit(session: OrmSession) -> None:
    if session.info.pop(_CHANGED, False):
        for callback in listeners:
            callback()


@event.listens_for(OrmSession, "after_rollback")
def _after_rollback(session: OrmSession) -> None:
    session.info.pop(_CHANGED, None)


async def current(s: AsyncSession) -> str | None:
    value: str | None = (await s.execute(select(KV.value).where(KV.key == KEY))).scalar_one_or_none()
    return value

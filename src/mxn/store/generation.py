"""A token in the store that changes whenever a user, key or group changes, so that what a replica caches about
them (`accounts.cache`) can be dropped: at once in the process that made the change, and within a poll interval
in every other replica and after changes made by the CLI.

The change is detected at flush time from the ORM's own bookkeeping, by hooks on the sessions that
`store.db.sessionmaker` makes (`AccountChanges`), so no code path has to remember to call anything. Spending a
balance and noting a key's last use are not changes of who a caller is: they leave the token alone (they are
bulk UPDATEs or listed in `_VOLATILE`).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

from sqlalchemy import event, inspect, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session as OrmSession

from mxn.store.models import KV, ApiKey, Group, User

KEY = "auth_generation"
_WATCHED = (User, ApiKey, Group)
_VOLATILE = frozenset({"last_used_at", "quota_granted", "quota_alerted", "quota_epoch"})
_CHANGED = "mxn_accounts_changed"


class AccountChanges:
    """The hooks of one session factory (`store.db.sessionmaker`): a flush that changes a user, key or group moves
    the generation on, and its commit then calls `listeners` (each app's key cache registers its `clear`).

    The hooks sit on a Session class of its own, as SQLAlchemy's `sessionmaker` events do, so that importing
    this module registers nothing and only sessions of that factory are watched.
    """

    def __init__(self) -> None:
        self.listeners: list[Callable[[], None]] = []
        self.session_class: type[OrmSession] = type("AccountWatchingSession", (OrmSession,), {"account_changes": self})
        event.listen(self.session_class, "after_flush", self._after_flush)
        event.listen(self.session_class, "after_commit", self._after_commit)
        event.listen(self.session_class, "after_rollback", self._after_rollback)

    @staticmethod
    def _after_flush(session: OrmSession, _context: Any) -> None:
        touched = any(isinstance(o, _WATCHED) for o in (*session.new, *session.deleted)) or any(
            isinstance(o, _WATCHED) and _changed(o) for o in session.dirty
        )
        if touched:
            session.connection().execute(update(KV).where(KV.key == KEY).values(value=secrets.token_hex(8)))
            session.info[_CHANGED] = True

    def _after_commit(self, session: OrmSession) -> None:
        if session.info.pop(_CHANGED, False):
            for callback in self.listeners:
                callback()

    @staticmethod
    def _after_rollback(session: OrmSession) -> None:
        session.info.pop(_CHANGED, None)


def changes_of(sessions: async_sessionmaker[AsyncSession]) -> AccountChanges:
    """The hooks of a session factory made by `store.db.sessionmaker`, to subscribe to its account changes."""
    changes = getattr(sessions.kw.get("sync_session_class"), "account_changes", None)
    if not isinstance(changes, AccountChanges):
        raise TypeError("these sessions watch no account changes: make them with mxn.store.db.sessionmaker")
    return changes


def _changed(obj: Any) -> bool:
    state = inspect(obj)
    return any(attr.history.has_changes() for attr in state.attrs if attr.key not in _VOLATILE)


async def current(s: AsyncSession) -> str | None:
    value: str | None = (await s.execute(select(KV.value).where(KV.key == KEY))).scalar_one_or_none()
    return value

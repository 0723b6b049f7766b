"""Engine and session factory for the configured store (SQLite by default, PostgreSQL by URL)."""

from __future__ import annotations

import socket
import sys

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as SATimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from mxn.store.generation import AccountChanges

CONNECT_TIMEOUT = 5.0
# asyncpg's own errors for a server that went away or is not accepting connections yet.
_PG_GONE = ("PostgresConnectionError", "CannotConnectNowError", "OperatorInterventionError", "InterfaceError")


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def create_engine(url: str) -> AsyncEngine:
    if is_sqlite(url):
        engine = create_async_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            # WAL lets readers run beside one writer, which several workers need.
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    # A store that does not answer fails a connection attempt within CONNECT_TIMEOUT seconds (asyncpg's own
    # default is 60): requests that need it get their 503 soon, and the rest go on.
    return create_async_engine(
        url,
        pool_size=10,
        max_overflow=20,
        pool_pre_ping=True,
        pool_timeout=CONNECT_TIMEOUT,
        connect_args={"timeout": CONNECT_TIMEOUT},
    )


def sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions on the store whose commits mark changes to accounts (`store.generation`); the hooks that do it
    belong to this factory, so `generation.changes_of(factory)` subscribes to them."""
    changes = AccountChanges()
    return async_sessionmaker(engine, expire_on_commit=False, sync_session_class=changes.session_class)


def unreachable(exc: BaseException) -> bool:
    """The store did not answer (refused, reset, shut down, timed out): not the request's fault, nor a bug."""
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError):
            return True
        cause = getattr(exc.orig, "__cause__", None) or exc.orig
        if not isinstance(cause, BaseException):
            return False
        exc = cause
    return isinstance(exc, (ConnectionError, socket.gaierror, SATimeoutError, *asyncpg_errors(*_PG_GONE)))


def asyncpg_errors(*names: str) -> tuple[type[Exception], ...]:
    """asyncpg's exception classes of these names; none while asyncpg is not imported, when none can be raised.

    Looked up rather than imported: a gateway on SQLite never loads asyncpg (~3 MiB)."""
    asyncpg = sys.modules.get("asyncpg")
    return tuple(getattr(asyncpg.exceptions, name) for name in names) if asyncpg is not None else ()

"""Engines and sessions for SQLite (embedded default) and PostgreSQL (production).

SQLite is set up for several processes (watcher, workers, web UI) sharing one file: write-ahead
logging so readers never block the writer, foreign keys enforced (so ``ON DELETE CASCADE`` works),
a 30 s busy timeout so a writer waits for another instead of failing, and ``synchronous=NORMAL``
(safe with WAL). Every new connection gets these settings.

Engines also guard against being inherited across ``fork()`` (Celery's prefork pool): a pooled
connection opened by another process is discarded instead of being shared.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event, exc
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection

__all__ = ["SQLITE_PRAGMAS", "make_engine", "make_session_factory", "session_scope"]

SQLITE_PRAGMAS: dict[str, str] = {
    "journal_mode": "WAL",
    "foreign_keys": "ON",
    "busy_timeout": "30000",
    "synchronous": "NORMAL",
}
"""PRAGMAs run on every new SQLite connection, in this order."""

_BUSY_TIMEOUT_S = 30.0


def _sqlite_file(url: URL) -> Path | None:
    """The database file of a SQLite URL, or ``None`` for in-memory databases."""
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:") or url.query.get("uri"):
        return None
    return Path(database).expanduser()


def _set_sqlite_pragmas(dbapi_connection: Any, connection_record: ConnectionPoolEntry) -> None:
    """Apply :data:`SQLITE_PRAGMAS` to a new DBAPI connection (outside any transaction)."""
    cursor = dbapi_connection.cursor()
    try:
        for name, value in SQLITE_PRAGMAS.items():
            cursor.execute(f"PRAGMA {name}={value}")
    finally:
        cursor.close()


def _remember_pid(dbapi_connection: Any, connection_record: ConnectionPoolEntry) -> None:
    connection_record.info["pid"] = os.getpid()


def _refuse_foreign_pid(
    dbapi_connection: Any, connection_record: ConnectionPoolEntry, connection_proxy: PoolProxiedConnection
) -> None:
    """Discard a pooled connection that was opened in another process (after ``fork()``)."""
    pid = os.getpid()
    if connection_record.info.get("pid") != pid:
        connection_record.dbapi_connection = connection_proxy.dbapi_connection = None
        raise exc.DisconnectionError(
            f"connection record belongs to pid {connection_record.info.get('pid')}, attempting to "
            f"check out in pid {pid}"
        )


def make_engine(url: str | URL, **kwargs: Any) -> Engine:
    """Create an engine for ``url``, configured for labpipe's multi-process use.

    Parameters
    ----------
    url:
        SQLAlchemy URL, e.g. ``sqlite:///labpipe-data/labpipe.sqlite`` or
        ``postgresql+psycopg://user@host/db``.
    **kwargs:
        Passed on to :func:`sqlalchemy.create_engine` (for example ``poolclass``).

    Returns
    -------
    Engine
        For SQLite, the database file's parent folder exists and every connection runs
        :data:`SQLITE_PRAGMAS`. For other backends, connections are pinged before use.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = _sqlite_file(parsed)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        connect_args = {"timeout": _BUSY_TIMEOUT_S, **kwargs.pop("connect_args", {})}
        engine = sa.create_engine(parsed, connect_args=connect_args, **kwargs)
        event.listen(engine, "connect", _set_sqlite_pragmas)
    else:
        kwargs.setdefault("pool_pre_ping", True)
        engine = sa.create_engine(parsed, **kwargs)
    event.listen(engine, "connect", _remember_pid)
    event.listen(engine, "checkout", _refuse_foreign_pid)
    return engine


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """A session factory bound to ``engine``.

    Objects stay usable after commit (``expire_on_commit=False``): a worker commits, then logs or
    returns what it wrote without another round trip.
    """
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session that commits when the block ends normally and rolls back when it raises.

    Example
    -------
    >>> with session_scope(factory) as session:  # doctest: +SKIP
    ...     session.add(Sample(id="S1"))
    """
    with factory() as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise

"""The embedded broker: a SQLite file shared by the processes of one machine, no server.

Built on kombu's SQLAlchemy transport (``sqla+sqlite://``), which stores each message as a row and
hides it (``visible = 0``) when a worker takes it. On its own that transport never deletes a row
and never gives a hidden one back: a message whose worker was killed would be lost. This subclass
adds what late acknowledgement needs:

- **ack deletes** the row, so the hidden rows are exactly the messages being worked on;
- **reject / restore** (a worker process lost with ``task_reject_on_worker_lost``, a warm shutdown
  returning prefetched messages) makes the same row visible again, flagged ``redelivered``;
- **a visibility timeout**: :func:`restore_expired`, run by the watcher's sweeper, makes rows hidden
  for longer than ``[queue] visibility_timeout`` visible again (their worker died with them).

Limits: one machine only (SQLite over a network share is not safe); a hidden message of a killed
worker comes back only after the visibility timeout (the database sweeper, ``[queue]
stuck_after``, is the second net); polling (``[queue] poll_interval``) instead of push; a few
hundred tasks per second at most, far more than plates need. No fanout: remote control
(``celery inspect``) is off with this broker.

URL: ``labpipe-embedded+sqlite:////abs/path/broker.sqlite`` (registered as a kombu transport alias
when this module is imported).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
from typing import Any

import sqlalchemy as sa
from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import sqlalchemy as kombu_sqla
from kombu.utils.encoding import bytes_to_str

__all__ = ["SCHEME", "Channel", "Transport", "embedded_queue_depth", "restore_expired"]

SCHEME = "labpipe-embedded"
TRANSPORT_ALIASES[SCHEME] = "workers.embedded:Transport"

_ENGINE_OPTIONS_NOT = {
    "queue_tablename",
    "message_tablename",
    "callback",
    "errback",
    "max_retries",
    "interval_start",
    "interval_step",
    "interval_max",
    "retry_errors",
    "polling_interval",
    "visibility_timeout",
    "confirm_publish",
}
_LOCK = threading.RLock()
_BUSY_TIMEOUT_S = 30.0

_messages = sa.table(
    "kombu_message",
    sa.column("id", sa.Integer),
    sa.column("visible", sa.Boolean),
    sa.column("timestamp", sa.DateTime),
    sa.column("payload", sa.Text),
    sa.column("queue_id", sa.Integer),
)
_queues = sa.table("kombu_queue", sa.column("id", sa.Integer), sa.column("name", sa.String))


def _sqlite_engine(url: str, **kwargs: Any) -> sa.Engine:
    engine = sa.create_engine(
        url, connect_args={"timeout": _BUSY_TIMEOUT_S, "check_same_thread": False}, **kwargs
    )

    @sa.event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    return engine


def _create_tables(engine: sa.Engine) -> None:
    """kombu's two tables, tolerating another process creating them at the same moment."""
    for attempt in range(3):
        try:
            kombu_sqla.metadata.create_all(engine)
            return
        except sa.exc.OperationalError:
            if attempt == 2:
                raise


def _flag_redelivered(payload: dict[str, Any]) -> dict[str, Any]:
    props = payload.setdefault("properties", {})
    info = props.setdefault("delivery_info", {})
    info["redelivered"] = True
    return payload


class Channel(kombu_sqla.Channel):
    """kombu's SQLAlchemy channel with deleting acks and in-place restores (module docstring)."""

    _engines: dict[tuple[int, str], Any] = {}  # noqa: RUF012 (kombu's own cache, per process here)

    def __init__(self, connection: Any, **kwargs: Any) -> None:
        super().__init__(connection, **kwargs)
        self._rows: dict[str, int] = {}
        """delivery tag -> message row id, for the messages this channel handed out."""

    def _engine_from_config(self) -> sa.Engine:
        conninfo = self.connection.client
        options = {k: v for k, v in conninfo.transport_options.items() if k not in _ENGINE_OPTIONS_NOT}
        return _sqlite_engine(conninfo.hostname, **options)

    def _open(self) -> Any:
        """One engine per process and URL (an engine inherited through ``fork()`` is not reused)."""
        key = (os.getpid(), self.connection.client.hostname)
        with _LOCK:
            if key not in self._engines:
                engine = self._engine_from_config()
                _create_tables(engine)
                self._engines[key] = engine, kombu_sqla.sessionmaker(bind=engine)
        return self._engines[key]

    @property
    def _engine(self) -> sa.Engine:
        return self._open()[0]

    def _get(self, queue: str) -> dict[str, Any]:
        obj = self._get_or_create(queue)
        session = self.session
        session.execute(sa.text("BEGIN IMMEDIATE TRANSACTION"))
        try:
            msg = (
                session.query(self.message_cls)
                .filter(self.message_cls.queue_id == obj.id)
                .filter(self.message_cls.visible != False)  # noqa: E712 (SQL expression)
                .order_by(self.message_cls.sent_at)
                .order_by(self.message_cls.id)
                .limit(1)
                .first()
            )
            if msg is None:
                raise kombu_sqla.Empty()
            msg.visible = False  # the transport's onupdate stamps sent_at: the visibility clock starts
            payload = json.loads(bytes_to_str(msg.payload))
            tag = payload.get("properties", {}).get("delivery_tag")
            if tag is not None:
                self._rows[tag] = msg.id
            return payload
        finally:
            session.commit()

    def basic_ack(self, delivery_tag: str, multiple: bool = False) -> None:
        """Acknowledge: delete the message's row (may run in another thread than ``_get``)."""
        row = self._rows.pop(delivery_tag, None)
        if row is not None:
            with self._engine.begin() as conn:
                conn.execute(sa.delete(_messages).where(_messages.c.id == row))
        super().basic_ack(delivery_tag, multiple)

    def _restore(self, message: Any) -> None:
        """Give a handed-out message back: the same row becomes visible, flagged redelivered."""
        payload = _flag_redelivered(message.serializable())
        row = self._rows.pop(message.delivery_tag, None)
        if row is not None:
            with self._engine.begin() as conn:
                done = conn.execute(
                    sa.update(_messages)
                    .where(_messages.c.id == row)
                    .values(visible=True, payload=json.dumps(payload), timestamp=dt.datetime.now())
                ).rowcount
            if done:
                return
        info = message.delivery_info
        for queue in self._lookup(info["exchange"], info["routing_key"]):
            self._put(queue, payload)


class Transport(kombu_sqla.Transport):
    Channel = Channel
    driver_name = "labpipe-embedded"


def _plain_url(url: str) -> str:
    """``labpipe-embedded+sqlite:///x`` -> ``sqlite:///x``."""
    return url.split("+", 1)[1] if url.startswith(SCHEME + "+") else url


def restore_expired(url: str, visibility_timeout: float) -> int:
    """Make messages hidden for longer than ``visibility_timeout`` seconds visible again.

    Their worker died without acknowledging or rejecting them (acknowledged rows are deleted).
    Returns how many came back.
    """
    engine = _sqlite_engine(_plain_url(url), poolclass=sa.pool.NullPool)
    try:
        if not sa.inspect(engine).has_table("kombu_message"):
            return 0
        cutoff = dt.datetime.now() - dt.timedelta(seconds=visibility_timeout)
        with engine.begin() as conn:
            rows = conn.execute(
                sa.select(_messages.c.id, _messages.c.payload).where(
                    _messages.c.visible == False,  # noqa: E712
                    _messages.c.timestamp < cutoff,
                )
            ).all()
            for row_id, raw in rows:
                payload = _flag_redelivered(json.loads(raw))
                conn.execute(
                    sa.update(_messages)
                    .where(_messages.c.id == row_id)
                    .values(visible=True, payload=json.dumps(payload), timestamp=dt.datetime.now())
                )
        return len(rows)
    finally:
        engine.dispose()


def embedded_queue_depth(url: str, queue: str) -> int:
    """Messages of ``queue`` in the embedded broker, waiting or being worked on."""
    engine = _sqlite_engine(_plain_url(url), poolclass=sa.pool.NullPool)
    try:
        if not sa.inspect(engine).has_table("kombu_message"):
            return 0
        with engine.connect() as conn:
            return int(
                conn.execute(
                    sa.select(sa.func.count(_messages.c.id))
                    .select_from(_messages.join(_queues, _messages.c.queue_id == _queues.c.id))
                    .where(_queues.c.name == queue)
                ).scalar_one()
            )
    finally:
        engine.dispose()

"""The Celery app, configured from labpipe's settings; the watcher's task sender; starting a worker.

Queue semantics (the same for Redis and for the embedded broker):

- tasks are acknowledged *late*, after their results are committed (``task_acks_late``), and given
  back to the queue when their worker process dies (``task_reject_on_worker_lost``);
- a worker process takes one task at a time (``worker_prefetch_multiplier = 1``, ``-O fair``);
- Redis hands an unacknowledged task to another worker after ``[queue] visibility_timeout`` (set
  it above the longest task), and restores such tasks every quarter of that time;
- two queues: ``labpipe.images`` (one detect task per image, fed by the watcher) and
  ``labpipe.stages`` (the classify batches of images already detected); a worker consumes both in
  turn, so an image in progress does not wait behind the whole inbox;
- no result backend: results live in the database.

``celery -A workers.app worker`` works too (settings from ``config.toml`` and ``LABPIPE_*``), but
``labpipe worker`` is the documented way.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from celery import Celery
from kombu import Queue

from labpipe.config import Settings, load_settings
from workers import embedded

__all__ = [
    "IMAGES_QUEUE",
    "STAGES_QUEUE",
    "TaskSender",
    "app",
    "broker_url",
    "celery_config",
    "configure",
    "current_settings",
    "is_embedded",
    "queue_depths",
    "run_worker",
]

IMAGES_QUEUE = "labpipe.images"
STAGES_QUEUE = "labpipe.stages"
DETECT_TASK = "labpipe.detect"
CLASSIFY_TASK = "labpipe.classify"

app = Celery("labpipe", include=["workers.tasks"])
_settings: Settings | None = None


def broker_url(settings: Settings) -> str:
    """``[queue] broker_url``, or the embedded broker's SQLite file in the storage root."""
    if settings.queue.broker_url:
        return settings.queue.broker_url
    path = (settings.storage.root / "broker.sqlite").absolute()
    return f"{embedded.SCHEME}+sqlite:///{path.as_posix()}"


def is_embedded(url: str) -> bool:
    return url.startswith(embedded.SCHEME + "+")


def _redacted(url: str) -> str:
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.split('@', 1)[1]}"


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings for ``settings`` (module docstring)."""
    q = settings.queue
    url = broker_url(settings)
    if is_embedded(url):
        transport_options: dict[str, Any] = {"polling_interval": q.poll_interval}
    elif url.split("://", 1)[0] in ("redis", "rediss", "redis+socket", "sentinel"):
        transport_options = {
            "visibility_timeout": q.visibility_timeout,
            "unacked_restore_interval": max(1, min(60, q.visibility_timeout // 4)),
            "unacked_restore_throttle": 1,
            "socket_connect_timeout": 5,
            "socket_keepalive": True,
            "retry_on_timeout": True,
            "health_check_interval": 10,
        }
    else:
        transport_options = {"visibility_timeout": q.visibility_timeout}
    return {
        "broker_url": url,
        "broker_transport_options": transport_options,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        "broker_channel_error_retry": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": 1,
        "task_ignore_result": True,
        "result_backend": None,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_default_queue": IMAGES_QUEUE,
        "task_queues": (Queue(IMAGES_QUEUE), Queue(STAGES_QUEUE)),
        "task_routes": {CLASSIFY_TASK: {"queue": STAGES_QUEUE}, DETECT_TASK: {"queue": IMAGES_QUEUE}},
        "worker_concurrency": max(1, q.worker_concurrency),
        "worker_max_tasks_per_child": q.max_tasks_per_child or None,
        "worker_max_memory_per_child": q.max_memory_per_child_mb * 1024 or None,
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,
        "worker_enable_remote_control": not is_embedded(url),
        "worker_send_task_events": False,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "enable_utc": True,
        "timezone": "UTC",
    }


def configure(settings: Settings) -> Celery:
    """Point the app at ``settings`` (broker, queue semantics, worker limits); returns the app.

    Pointed at another broker than before (a process serving two data folders, tests), the pooled
    connections to the old one are dropped, so tasks go where the settings say.
    """
    global _settings
    previous = broker_url(_settings) if _settings is not None else None
    _settings = settings
    app.conf.update(celery_config(settings))
    if previous is not None and previous != app.conf.broker_url:
        _drop_connections()
    return app


def _drop_connections() -> None:
    """Forget the app's pooled broker connections and producers (they name the old broker)."""
    pool, app._pool = app._pool, None
    if pool is not None:
        pool.force_close_all()
    amqp = app.__dict__.get("amqp")
    if amqp is not None:
        amqp._producer_pool = None


def current_settings() -> Settings:
    """The settings the app was configured with (loaded from file and environment if never set)."""
    if _settings is None:
        configure(load_settings())
    assert _settings is not None
    return _settings


class TaskSender:
    """The watcher's :class:`~labpipe.ingest.watcher.TaskQueue`: sends detect tasks by name."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.url = broker_url(settings)
        configure(settings)

    def send(self, image_id: int, *, takeover: bool = False, content_hash: str | None = None) -> None:
        app.send_task(
            DETECT_TASK,
            kwargs={"image_id": image_id, "takeover": takeover, "content_hash": content_hash},
            queue=IMAGES_QUEUE,
            retry=True,
            retry_policy={"max_retries": 2, "interval_start": 0.5, "interval_step": 1.0, "interval_max": 2.0},
        )

    def depth(self) -> int | None:
        """Detect tasks the broker holds, waiting or being worked on (``None``: unknown broker)."""
        if is_embedded(self.url):
            return embedded.embedded_queue_depth(self.url, IMAGES_QUEUE)
        depths = queue_depths(self.settings)
        if depths is None:
            return None
        return depths.get(IMAGES_QUEUE, 0) + depths.get("unacked", 0)

    def housekeeping(self) -> None:
        if is_embedded(self.url):
            embedded.restore_expired(self.url, self.settings.queue.visibility_timeout)


def queue_depths(settings: Settings) -> dict[str, int] | None:
    """Tasks waiting per queue (and ``unacked``: being worked on, Redis and embedded only)."""
    url = broker_url(settings)
    configure(settings)
    if is_embedded(url):
        return {
            IMAGES_QUEUE: embedded.embedded_queue_depth(url, IMAGES_QUEUE),
            STAGES_QUEUE: embedded.embedded_queue_depth(url, STAGES_QUEUE),
        }
    with app.connection_for_read() as conn:
        conn.ensure_connection(max_retries=1, timeout=5)
        channel = conn.default_channel
        client = getattr(channel, "client", None)
        if client is not None and hasattr(client, "llen"):  # Redis: one consistent snapshot
            pipe = client.pipeline(transaction=True)
            pipe.llen(IMAGES_QUEUE).llen(STAGES_QUEUE).hlen(getattr(channel, "unacked_key", "unacked"))
            images, stages, unacked = pipe.execute()
            return {IMAGES_QUEUE: int(images), STAGES_QUEUE: int(stages), "unacked": int(unacked)}
        out = {}
        for name in (IMAGES_QUEUE, STAGES_QUEUE):
            out[name] = channel.queue_declare(queue=name, passive=True).message_count
        return out


def run_worker(settings: Settings, *, concurrency: int | None = None, loglevel: str = "INFO") -> int:
    """Run a Celery worker in this process until it is stopped; returns its exit code.

    SIGTERM is a warm shutdown: the tasks in progress finish, prefetched ones go back to the queue.
    """
    configure(settings)
    import workers.tasks  # noqa: F401 (registers the tasks)

    worker = app.Worker(
        hostname=f"labpipe-{os.getpid()}@{socket.gethostname()}",
        concurrency=concurrency or settings.queue.worker_concurrency,
        pool="prefork",
        queues=[IMAGES_QUEUE, STAGES_QUEUE],
        loglevel=loglevel,
        optimization="fair",
        without_gossip=True,
        without_mingle=True,
        without_heartbeat=True,
        quiet=True,
    )
    worker.start()
    return int(worker.exitcode or 0)


def describe(settings: Settings) -> str:
    """One line naming the broker (password hidden)."""
    url = broker_url(settings)
    return "embedded (" + url.split("+", 1)[1] + ")" if is_embedded(url) else _redacted(url)

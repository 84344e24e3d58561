"""The Celery tasks: thin wrappers around :mod:`labpipe.daemon.jobs`. They carry ids, never data.

- ``labpipe.detect(image_id, takeover=False, resumed=False, content_hash=None)``: check the task is
  meant for this database (the image's content hash), claim, read, detect, crop; sends
  one ``labpipe.classify`` per batch of specimens (an image with none is recorded at once).
- ``labpipe.classify(image_id, attempt, batch)``: classify one batch; the last batch records the
  image and moves the original to the archive.

Transient errors (database locked or unreachable, broker unavailable) are retried with exponential
backoff and jitter, up to ``[queue] max_retries``; bad input is quarantined by the job and never
retried. A task redelivered because its worker died (``redelivered``) may take over the image.
"""

from __future__ import annotations

import os
import random
from typing import Any

import kombu.exceptions
from celery import Task

from labpipe.daemon.jobs import JobContext, classify_job, detect_job, fail_image
from labpipe.logs import get_logger
from workers.app import CLASSIFY_TASK, DETECT_TASK, IMAGES_QUEUE, STAGES_QUEUE, app, current_settings

__all__ = ["BROKER_TRANSIENT_ERRORS", "classify", "context", "detect"]

log = get_logger(__name__)


def _broker_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [kombu.exceptions.OperationalError, ConnectionError, TimeoutError]
    try:
        import redis.exceptions

        errors += [redis.exceptions.ConnectionError, redis.exceptions.TimeoutError]
    except ImportError:  # pragma: no cover - redis is optional with the embedded broker
        pass
    return tuple(errors)


BROKER_TRANSIENT_ERRORS = _broker_errors()
"""Broker errors retried like database ones."""

_PUBLISH_RETRY = {"max_retries": 5, "interval_start": 0.5, "interval_step": 1.0, "interval_max": 5.0}
_context: JobContext | None = None
_context_pid: int | None = None


def context() -> JobContext:
    """This worker process's models and database, loaded on its first task (after the fork)."""
    global _context, _context_pid
    if _context is None or _context_pid != os.getpid():
        _context = JobContext.from_settings(current_settings(), transient=BROKER_TRANSIENT_ERRORS)
        _context_pid = os.getpid()
    return _context


class _Followups:
    """Sends the next tasks of an image (:class:`labpipe.daemon.jobs.Followups`)."""

    def classify(self, image_id: int, attempt: str, batch: int) -> None:
        classify.apply_async(
            kwargs={"image_id": image_id, "attempt": attempt, "batch": batch},
            queue=STAGES_QUEUE,
            retry=True,
            retry_policy=_PUBLISH_RETRY,
        )

    def detect(
        self, image_id: int, *, takeover: bool, resumed: bool, content_hash: str | None = None
    ) -> None:
        detect.apply_async(
            kwargs={
                "image_id": image_id,
                "takeover": takeover,
                "resumed": resumed,
                "content_hash": content_hash,
            },
            queue=IMAGES_QUEUE,
            retry=True,
            retry_policy=_PUBLISH_RETRY,
        )


class LabpipeTask(Task):
    """Late acknowledgement, requeue on a lost worker, and ``failed`` recorded after the last retry."""

    acks_late = True
    reject_on_worker_lost = True
    ignore_result = True
    typing = True

    def retry_transient(self, exc: BaseException, **kwargs: Any) -> None:
        """Retry with exponential backoff and jitter (raises :class:`celery.exceptions.Retry`)."""
        q = current_settings().queue
        countdown = min(q.retry_backoff_max, 2 ** min(self.request.retries, 16)) * random.uniform(0.5, 1.0)
        log.warning(
            "transient error, retrying",
            task=self.name,
            image_id=kwargs.get("image_id"),
            retry=self.request.retries + 1,
            countdown=round(countdown, 1),
            error=str(exc),
        )
        raise self.retry(exc=exc, countdown=countdown, max_retries=q.max_retries, args=(), kwargs=kwargs)

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        image_id = (kwargs or {}).get("image_id")
        if image_id is None:
            return
        try:
            fail_image(context(), int(image_id), f"{self.name} gave up: {exc!r}")
        except Exception as error:  # the database itself may be the problem: the sweeper follows up
            log.error("could not mark the image failed", image_id=image_id, error=str(error))


@app.task(bind=True, base=LabpipeTask, name=DETECT_TASK)
def detect(
    self: LabpipeTask,
    image_id: int,
    takeover: bool = False,
    resumed: bool = False,
    content_hash: str | None = None,
) -> str:
    """Claim, read, detect and crop one image; send its classify tasks."""
    ctx = context()
    redelivered = bool((self.request.delivery_info or {}).get("redelivered"))
    try:
        return detect_job(
            ctx,
            image_id,
            _Followups(),
            takeover=takeover or redelivered,
            resumed=resumed,
            content_hash=content_hash,
        )
    except Exception as exc:
        if ctx.is_transient(exc):
            self.retry_transient(
                exc, image_id=image_id, takeover=True, resumed=True, content_hash=content_hash
            )
        raise


@app.task(bind=True, base=LabpipeTask, name=CLASSIFY_TASK)
def classify(self: LabpipeTask, image_id: int, attempt: str, batch: int) -> str:
    """Classify one batch of a detected image; the last batch records the image."""
    ctx = context()
    try:
        return classify_job(ctx, image_id, attempt, batch, _Followups())
    except Exception as exc:
        if ctx.is_transient(exc):
            self.retry_transient(exc, image_id=image_id, attempt=attempt, batch=batch)
        raise

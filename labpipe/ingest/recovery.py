"""Stuck plates and the operator's retry (``labpipe retry``, the dashboard's retry button).

A plate is *stuck* when it is ``processing`` but no live worker is moving it on: its worker's lease
expired (the worker, or the whole daemon, was killed and no watcher has handed it over yet), or its
lease is still renewed but nothing happened for ``[queue] stuck_after`` seconds (a hung worker, or
classify tasks a broker lost). The watcher hands the first kind over by itself within a third of
``[queue] lease_seconds``; a plate listed as stuck for longer means no watcher is running, or the
second kind.

A retry puts an image back to work without ever processing it twice at once:

- a ``processing`` image goes back to ``queued`` (its lease dropped, its count of interrupted
  attempts reset) and its task is sent again as a takeover, so it resumes from the detections its
  last attempt left. One still held by a live worker (its lease not expired) is refused unless
  ``force``: then that worker finds the image taken over and stops;
- a ``failed`` or ``quarantined`` image's file moves from the quarantine back into the inbox
  (:func:`labpipe.web.retry.retry_image`), under a free name: a file dropped there meanwhile is
  never overwritten;
- a ``queued`` image's task is sent again (a lost task; a duplicate one does nothing);
- a ``done`` image is refused (``labpipe process`` or ``reclassify`` redo finished work).

Sending needs the broker; when it cannot be reached the image waits as ``queued`` and the
watcher's sweeper sends it again after ``[queue] requeue_after`` seconds.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from labpipe.config import Settings
from labpipe.db.models import Image, ImageStatus, utcnow
from labpipe.errors import LabpipeError
from labpipe.ingest.lifecycle import AttemptCounter, lease_expired, release_for_takeover
from labpipe.logs import get_logger

__all__ = ["RetryRefused", "RetryResult", "StuckImage", "broker_sender", "retry", "stuck_images"]

log = get_logger(__name__)

Sender = Callable[[int, bool, str], None]
"""``send(image_id, takeover, content_hash)``: sends the image's detect task (raises when it cannot)."""


def broker_sender(settings: Settings) -> Sender:
    """A :data:`Sender` through the configured broker (Celery is loaded on the first send)."""
    sender: Any = None

    def send(image_id: int, takeover: bool, content_hash: str) -> None:
        nonlocal sender
        if sender is None:
            from workers.app import TaskSender

            sender = TaskSender(settings)
        sender.send(image_id, takeover=takeover, content_hash=content_hash)

    return send


class RetryRefused(LabpipeError):
    """The image cannot be retried now (unknown, done, or still held by a live worker)."""


@dataclass
class StuckImage:
    """A processing image no live worker is moving on (module docstring)."""

    image_id: int
    file: str
    sample: str | None
    reason: str
    """``lease expired``, ``no lease`` or ``no progress for N s``."""
    leased: bool
    """Its worker's lease is still renewed: a retry needs ``force``."""
    lease_owner: str | None
    seconds_since_progress: float
    lease_expired_seconds_ago: float | None
    """How long ago its lease lapsed (``None``: still running, or never had one)."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _stuck(image: Image, now: dt.datetime, stuck_after: float) -> StuckImage:
    expires = image.lease_expires_at
    leased = expires is not None and expires >= now
    progress = (now - image.updated_at).total_seconds()
    if expires is None:
        reason = "no lease"
    elif not leased:
        reason = "lease expired"
    else:
        reason = f"no progress for {int(stuck_after)} s"
    return StuckImage(
        image_id=image.id,
        file=image.file_name,
        sample=image.sample_id,
        reason=reason,
        leased=leased,
        lease_owner=image.lease_owner,
        seconds_since_progress=round(progress, 1),
        lease_expired_seconds_ago=None
        if leased or expires is None
        else round((now - expires).total_seconds(), 1),
    )


def stuck_images(
    session: Session, *, stuck_after: float, now: dt.datetime | None = None, limit: int = 1000
) -> list[StuckImage]:
    """Processing images whose lease expired (or that have none), or without progress for
    ``stuck_after`` seconds; oldest progress first."""
    now = now or utcnow()
    rows = session.scalars(
        select(Image)
        .where(
            Image.status == ImageStatus.PROCESSING.value,
            or_(lease_expired(now), Image.updated_at < now - dt.timedelta(seconds=stuck_after)),
        )
        .order_by(Image.updated_at, Image.id)
        .limit(limit)
    )
    return [_stuck(image, now, stuck_after) for image in rows]


@dataclass
class RetryResult:
    """What a retry did."""

    image_id: int
    action: str
    """``requeued`` (a processing image handed to a worker), ``returned`` (the file is back in the
    inbox) or ``resent`` (a queued image's task sent again)."""
    message: str
    path: Path | None = None
    """``returned``: where the file is now."""
    sent: bool = False
    """The task reached the broker (``False``: the watcher sends it later)."""


def _send(send: Sender | None, image: Image) -> bool:
    if send is None:
        return False
    try:
        send(image.id, True, image.content_hash)
    except Exception as exc:  # broker down: the image waits as queued, the sweeper sends it again
        log.warning("broker unavailable: the watcher will send the task", image_id=image.id, error=str(exc))
        return False
    return True


def _requeue(
    session: Session, image: Image, settings: Settings, force: bool, send: Sender | None
) -> RetryResult:
    now = utcnow()
    expires = image.lease_expires_at
    if expires is not None and expires >= now and not force:
        raise RetryRefused(
            f"image {image.id} ({image.file_name})",
            f"is being processed by {image.lease_owner}, whose lease is renewed (it ends in "
            f"{(expires - now).total_seconds():.0f} s unless renewed again)",
            "wait for it; --force hands it to another worker anyway",
        )
    previous = release_for_takeover(session, image.id, expired_only=not force)
    if previous is None:
        raise RetryRefused(
            f"image {image.id}", "changed meanwhile (a worker renewed or finished it)", "look again"
        )
    AttemptCounter(settings.storage.root / "state" / "attempts").clear(image.id)
    log.warning(
        "retry: image handed to another worker",
        image_id=image.id,
        image=image.source_path,
        previous_owner=previous or None,
        forced=force,
    )
    sent = _send(send, image)
    return RetryResult(image.id, "requeued", "queued again as a takeover", sent=sent)


def retry(
    session: Session, image_id: int, settings: Settings, *, force: bool = False, send: Sender | None = None
) -> RetryResult:
    """Put image ``image_id`` back to work (module docstring); raises :class:`RetryRefused`."""
    from labpipe.web.retry import RetryError, retry_image

    image = session.get(Image, image_id, populate_existing=True)
    if image is None:
        raise RetryRefused(f"image {image_id}", "no such image")
    if image.status == ImageStatus.PROCESSING.value:
        return _requeue(session, image, settings, force, send)
    if image.status in (ImageStatus.FAILED.value, ImageStatus.QUARANTINED.value):
        try:
            path = retry_image(session, image, settings)
        except RetryError as exc:
            raise RetryRefused(exc.subject, exc.problem, exc.hint) from None
        log.info("retry: file back in the inbox", image_id=image.id, image=str(path))
        return RetryResult(image.id, "returned", f"file back in the inbox as {path}", path=path)
    if image.status == ImageStatus.QUEUED.value:
        sent = _send(send, image)
        return RetryResult(
            image.id, "resent", "task sent again" if sent else "waits for the watcher", sent=sent
        )
    raise RetryRefused(
        f"image {image.id} ({image.file_name})",
        "is done",
        "labpipe reclassify redoes the classification of finished plates",
    )

"""An image's life in the database: queued -> processing -> done | failed | quarantined.

The database, not the broker, is the record of what must still be done. The watcher registers an
image (``queued``) before it sends a task; a worker *claims* it (``processing``) with one
conditional UPDATE, so of two deliveries of the same task only one does the work; the result is
recorded in one transaction under a row lock (see :func:`lock_image`); the original file moves out
of the inbox only after the commit that says ``done`` (or ``quarantined``/``failed``). Only a file
inside the inbox ever moves: an image processed from elsewhere (``labpipe process
/some/folder/plate.tif``) keeps its file where it is (see :mod:`labpipe.ingest.moves`).

A worker holds each image it claims with a *lease*: ``images.lease_owner`` names its process
(:func:`lease_owner_id`) and ``images.lease_expires_at`` says until when; a heartbeat
(:class:`LeaseKeeper`) renews every lease of a live process. A processing image whose lease has
expired lost its worker (killed, the whole daemon killed, the machine gone): the sweeper hands it to
another worker at once (:func:`release_for_takeover`), and a worker may claim it directly.

``images.updated_at`` records progress: every stage of a processing image touches it. The sweeper
(:func:`stale_images`) finds queued images whose task was lost (a broker restarted without
persistence), processing images whose lease expired, and processing images without progress for
``stuck_after`` although their lease is renewed (a hung worker, or classify tasks the broker lost),
so nothing is lost even when the broker forgets.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import ColumnElement, and_, func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from labpipe.config import StorageConfig
from labpipe.db.models import Image, ImageStatus, utcnow
from labpipe.ingest.moves import inside_inbox, link_in_inbox, move_link, move_original, write_reason_file
from labpipe.logs import get_logger

__all__ = [
    "AttemptCounter",
    "LeaseKeeper",
    "StaleImages",
    "claim_image",
    "expired_leases",
    "finish_move",
    "lease_expired",
    "lease_owner_id",
    "lock_image",
    "mark_failed",
    "mark_quarantined",
    "quarantine_link",
    "release_for_takeover",
    "renew_leases",
    "stale_images",
    "touch_image",
]

log = get_logger(__name__)

FINISHED = (ImageStatus.DONE.value, ImageStatus.FAILED.value, ImageStatus.QUARANTINED.value)


def lease_owner_id() -> str:
    """A name for this process that no other process has had: ``host:pid:token``."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def lease_expired(now: dt.datetime) -> ColumnElement[bool]:
    """SQL: the image's lease has lapsed (or it never had one, like images from before leases)."""
    return or_(Image.lease_expires_at.is_(None), Image.lease_expires_at < now)


def claim_image(
    session: Session,
    image_id: int,
    *,
    owner: str,
    lease_seconds: float,
    stuck_after: float,
    force: bool = False,
) -> Image | None:
    """Mark the image ``processing`` under ``owner``'s lease, or return ``None`` when it is not ours.

    It is ours when it is ``queued``, or ``processing`` but abandoned: its lease expired (the worker
    died) or it made no progress for ``stuck_after`` seconds. A duplicate delivery of the task finds
    it held (by another process or by this one) and does nothing. ``force`` claims a processing
    image whatever its lease (a retry of an attempt whose task failed transiently, possibly in
    another process). Done, failed and quarantined images are never claimed.
    """
    now = utcnow()
    abandoned = Image.status == ImageStatus.PROCESSING.value
    if not force:
        abandoned = and_(
            abandoned,
            or_(lease_expired(now), Image.updated_at < now - dt.timedelta(seconds=stuck_after)),
        )
    result = session.execute(
        update(Image)
        .where(Image.id == image_id)
        .where(or_(Image.status == ImageStatus.QUEUED.value, abandoned))
        .values(
            status=ImageStatus.PROCESSING.value,
            error=None,
            updated_at=now,
            lease_owner=owner,
            lease_expires_at=now + dt.timedelta(seconds=lease_seconds),
        )
        .execution_options(synchronize_session=False)
    )
    session.commit()
    if result.rowcount != 1:
        return None
    return session.get(Image, image_id, populate_existing=True)


def renew_leases(session: Session, owner: str, lease_seconds: float) -> int:
    """Heartbeat: extend every lease ``owner`` holds on a processing image; returns how many."""
    result = session.execute(
        update(Image)
        .where(Image.lease_owner == owner, Image.status == ImageStatus.PROCESSING.value)
        .values(lease_expires_at=utcnow() + dt.timedelta(seconds=lease_seconds))
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return result.rowcount


def release_for_takeover(session: Session, image_id: int, *, expired_only: bool = True) -> str | None:
    """Give an abandoned processing image back to the queue (``queued``, no lease); commits.

    The caller then sends its task (with ``takeover``): whichever worker gets it claims a queued image
    as usual, so a second sweep before that worker starts sends nothing twice. With
    ``expired_only``, a lease renewed meanwhile (its worker was only slow) is left alone. Returns the
    previous lease owner (``""`` when there was none), or ``None`` when nothing was released.
    """
    now = utcnow()
    image = session.get(Image, image_id, populate_existing=True)
    if image is None:
        return None
    previous = image.lease_owner or ""
    conditions = [Image.id == image_id, Image.status == ImageStatus.PROCESSING.value]
    if expired_only:
        conditions.append(lease_expired(now))
    result = session.execute(
        update(Image)
        .where(*conditions)
        .values(status=ImageStatus.QUEUED.value, lease_owner=None, lease_expires_at=None, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return previous if result.rowcount == 1 else None


class LeaseKeeper:
    """A worker process's heartbeat: renews its leases every third of ``lease_seconds``.

    One thread per process, started on the first claim (after a ``fork()``, in the process that
    claims); it renews with one UPDATE every lease of ``owner`` on a processing image, so an image
    whose classify tasks wait in the queue stays held while this process lives, and is released
    within ``lease_seconds`` when it dies. A renewal that fails (database away for a moment) is
    logged and tried again at the next beat.
    """

    def __init__(self, session_factory: sessionmaker[Session], lease_seconds: float) -> None:
        self.session_factory = session_factory
        self.lease_seconds = max(1.0, float(lease_seconds))
        self.owner = lease_owner_id()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start the heartbeat thread, once."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="labpipe-lease", daemon=True)
            self._thread.start()

    def beat(self) -> int:
        """Renew now; returns how many leases were renewed."""
        with self.session_factory() as session:
            return renew_leases(session, self.owner, self.lease_seconds)

    def _run(self) -> None:
        while not self._stop.wait(self.lease_seconds / 3):
            try:
                self.beat()
            except Exception as exc:  # the database away for a moment: the next beat tries again
                log.warning("could not renew leases", owner=self.owner, error=str(exc))

    def stop(self) -> None:
        """Stop the heartbeat (the leases then lapse unless finished)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)


def touch_image(session: Session, image_id: int) -> None:
    """Heartbeat: the image is still being worked on."""
    session.execute(
        update(Image)
        .where(Image.id == image_id)
        .values(updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    session.commit()


def lock_image(session: Session, image_id: int) -> Image | None:
    """Begin a transaction holding the image's row lock, and return the fresh row.

    An UPDATE is the first statement, so on PostgreSQL it takes the row lock and on SQLite the
    database write lock before anything is read: two workers finishing the same image one after the
    other each see what the other committed (no duplicate specimens, no double recording).
    """
    session.execute(
        update(Image)
        .where(Image.id == image_id)
        .values(updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return session.get(Image, image_id, populate_existing=True)


def mark_quarantined(session: Session, image: Image, message: str) -> None:
    """Bad input: ``quarantined`` with the reason; never retried."""
    image.status = ImageStatus.QUARANTINED.value
    image.error = message
    image.updated_at = utcnow()
    session.commit()


def mark_failed(session: Session, image: Image, message: str) -> None:
    """An internal error (or a worker that kept dying): ``failed`` with the reason."""
    image.status = ImageStatus.FAILED.value
    image.error = message
    image.updated_at = utcnow()
    session.commit()


def finish_move(session: Session, image: Image, storage: StorageConfig, reason_code: str = "") -> Path | None:
    """Move a finished image's original out of the inbox and record where it went.

    ``done`` -> archive; ``quarantined``/``failed`` -> quarantine, with ``<name>.reason.txt``.
    Idempotent: nothing happens when the file was already moved (``archived_path`` set) or is no
    longer at its source path. A file that is not inside the inbox (processed from elsewhere, or a
    symbolic link in the inbox) is never moved: it stays where it is and ``None`` is returned.
    Must be called only after the status was committed.
    """
    if image.archived_path or image.status not in FINISHED:
        return None
    source = Path(image.source_path)
    if not source.is_file():
        return None
    bound = log.bind(image=str(source), image_id=image.id)
    if not source.is_absolute() or not inside_inbox(source, storage.inbox_dir):
        bound.info(
            "original left where it is: not a file received in the inbox (processed from "
            "elsewhere, or a symbolic link)",
            inbox=str(storage.inbox_dir),
            status=image.status,
        )
        return None
    if image.status == ImageStatus.DONE.value:
        target = move_original(source, storage.inbox_dir, storage.archive_dir, image.content_hash)
    else:
        target = move_original(source, storage.inbox_dir, storage.quarantine_dir, image.content_hash)
        write_reason_file(
            target,
            status=image.status,
            reason_code=reason_code or ("ImageReadError" if image.status == "quarantined" else "failed"),
            message=image.error or "",
            image_id=image.id,
            content_hash=image.content_hash,
            original=source,
        )
    image.archived_path = str(target)
    session.commit()
    bound.info("moved original", status=image.status, to=str(target))
    return target


def quarantine_link(session: Session, image: Image, storage: StorageConfig) -> Path | None:
    """Move a quarantined symbolic link (the link itself, never its target) from the inbox to the
    quarantine, with its reason file, and record where it went.

    Idempotent like :func:`finish_move`; ``None`` when there is nothing to move: already moved, gone,
    or not a link received in the inbox (a file reached through a linked folder stays where it is).
    """
    source = Path(image.source_path)
    if image.archived_path or image.status != ImageStatus.QUARANTINED.value:
        return None
    if not link_in_inbox(source, storage.inbox_dir):
        return None
    target = move_link(source, storage.inbox_dir, storage.quarantine_dir, image.content_hash)
    write_reason_file(
        target,
        status=image.status,
        reason_code="SymbolicLink",
        message=image.error or "",
        image_id=image.id,
        content_hash=None,
        original=source,
    )
    image.archived_path = str(target)
    session.commit()
    log.bind(image=str(source), image_id=image.id).info("moved symbolic link to quarantine", to=str(target))
    return target


@dataclass
class StaleImages:
    """What the sweeper found (image ids)."""

    queued: list[int]
    """Queued for longer than ``requeue_after`` (their task may have been lost)."""
    queued_total: int
    """All queued images (to compare with the broker's queue depth)."""
    processing: list[int]
    """Processing without progress for ``stuck_after`` although their lease may still be renewed
    (a hung worker, or classify tasks the broker lost)."""
    expired: list[int]
    """Processing with an expired lease, or none (their worker died): handed over at once."""
    unmoved: list[int]
    """Finished for a while, but the original is still in the inbox (interrupted move). Images
    whose file is not inside the inbox (processed from elsewhere) are never listed."""


def _inbox_prefixes(inbox: Path) -> list[str]:
    """``inbox`` as written and as its real path, each with a trailing separator (SQL prefixes)."""
    prefixes = []
    for form in (inbox.absolute(), inbox.resolve()):
        text = str(form).rstrip(os.sep) + os.sep
        if text not in prefixes:
            prefixes.append(text)
    return prefixes


def _unmoved(session: Session, inbox: Path, older_than: dt.datetime, limit: int) -> list[int]:
    """Finished images not moved yet whose original is a file inside ``inbox``.

    The database narrows by path prefix (so images processed from elsewhere never fill ``limit``);
    :func:`~labpipe.ingest.moves.inside_inbox` then decides on the real path (links, ``..``).
    """
    in_inbox = or_(*(Image.source_path.startswith(p, autoescape=True) for p in _inbox_prefixes(inbox)))
    stmt = (
        select(Image.id, Image.source_path)
        .where(
            Image.status.in_(FINISHED),
            Image.archived_path.is_(None),
            Image.updated_at < older_than,
            in_inbox,
        )
        .order_by(Image.updated_at, Image.id)
        .limit(limit)
    )
    return [image_id for image_id, path in session.execute(stmt) if inside_inbox(Path(path), inbox)]


def stale_images(
    session: Session,
    *,
    inbox: Path,
    requeue_after: float,
    stuck_after: float,
    move_grace: float = 60.0,
    limit: int = 1000,
) -> StaleImages:
    """The images the sweeper must look after (see :class:`StaleImages`); ``inbox`` is
    ``[storage] inbox``: only originals inside it are listed as unmoved."""
    now = utcnow()

    def ids(*conditions) -> list[int]:
        stmt = select(Image.id).where(*conditions).order_by(Image.updated_at, Image.id).limit(limit)
        return list(session.scalars(stmt))

    return StaleImages(
        queued=ids(
            Image.status == ImageStatus.QUEUED.value,
            Image.updated_at < now - dt.timedelta(seconds=requeue_after),
        ),
        queued_total=session.scalar(
            select(func.count(Image.id)).where(Image.status == ImageStatus.QUEUED.value)
        )
        or 0,
        processing=ids(
            Image.status == ImageStatus.PROCESSING.value,
            Image.updated_at < now - dt.timedelta(seconds=stuck_after),
        ),
        expired=expired_leases(session, now=now, limit=limit),
        unmoved=_unmoved(session, inbox, now - dt.timedelta(seconds=move_grace), limit),
    )


def expired_leases(session: Session, *, now: dt.datetime | None = None, limit: int = 1000) -> list[int]:
    """Processing images whose lease has expired (oldest first): their worker is gone."""
    stmt = (
        select(Image.id)
        .where(Image.status == ImageStatus.PROCESSING.value, lease_expired(now or utcnow()))
        .order_by(Image.updated_at, Image.id)
        .limit(limit)
    )
    return list(session.scalars(stmt))


class AttemptCounter:
    """How often a worker started on an image, kept in ``<folder>/<image id>`` on shared storage.

    Guards against a poison image: one that kills its worker every time (out of memory) would
    otherwise be redelivered forever. Only the worker holding the claim writes an image's file.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _file(self, image_id: int) -> Path:
        return self.folder / str(image_id)

    def get(self, image_id: int) -> int:
        try:
            return int(self._file(image_id).read_text().strip() or 0)
        except (OSError, ValueError):
            return 0

    def bump(self, image_id: int) -> int:
        """Count one more attempt; returns the new count (1 for the first)."""
        count = self.get(image_id) + 1
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".{image_id}.{os.getpid()}"
        tmp.write_text(str(count))
        os.replace(tmp, self._file(image_id))
        return count

    def clear(self, image_id: int) -> None:
        self._file(image_id).unlink(missing_ok=True)

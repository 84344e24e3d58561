"""Register a complete file from the inbox: one image row per content hash.

The same bytes dropped twice make one image: the second copy is not processed again (it is
archived as a duplicate). A different file with the same name is a new image, and the note says
so. Bytes that failed before and are dropped again are a new attempt on the same image row.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from labpipe.db.models import Image, ImageStatus, utcnow
from labpipe.record import ensure_sample

__all__ = ["Outcome", "Registration", "register_file", "register_unreadable"]


class Outcome(StrEnum):
    """What registering a file did."""

    NEW = "new"
    """A new image, queued."""
    RETRY = "retry"
    """Bytes that had failed or been quarantined, dropped again: queued for another attempt."""
    DUPLICATE = "duplicate"
    """The same bytes as an image registered from another path: not processed again."""
    KNOWN = "known"
    """This very file was registered before (a rescan, a restart) and is still waiting to be moved:
    nothing new. The same bytes at the same path after the original was moved away are a
    ``DUPLICATE`` (or a ``RETRY`` for bytes that failed)."""
    QUARANTINED = "quarantined"
    """An unreadable file, recorded as quarantined with its reason."""


@dataclass(frozen=True)
class Registration:
    outcome: Outcome
    image_id: int
    status: str
    """The image's status after registration."""
    note: str | None = None
    """For people: a duplicate, a same-named different file, a retry."""

    @property
    def enqueue(self) -> bool:
        """Whether a task must be sent for this image now."""
        return self.outcome in (Outcome.NEW, Outcome.RETRY)


def _same_name_note(session: Session, name: str, content_hash: str) -> str | None:
    other = session.scalar(
        select(Image.id).where(Image.file_name == name, Image.content_hash != content_hash).limit(1)
    )
    if other is None:
        return None
    return f"same file name as image {other} but different content: recorded as a new image"


def _insert(
    session: Session,
    path: Path,
    content_hash: str,
    size: int,
    sample_id: str | None,
    status: ImageStatus,
    error: str | None,
) -> Image | None:
    """Insert the row; ``None`` when another process registered the same hash (or sample) first."""
    try:
        ensure_sample(session, sample_id)
        image = Image(
            content_hash=content_hash,
            source_path=str(path),
            file_name=path.name,
            size_bytes=size,
            sample_id=sample_id,
            status=status.value,
            error=error,
        )
        session.add(image)
        session.commit()
    except IntegrityError:
        session.rollback()
        return None
    return image


def register_file(
    session: Session, path: Path, content_hash: str, size: int, sample_id: str | None
) -> Registration:
    """Register a complete, readable file (see the module docstring for the rules)."""
    for _ in range(3):
        image = session.scalar(select(Image).where(Image.content_hash == content_hash))
        if image is None:
            note = _same_name_note(session, path.name, content_hash)
            image = _insert(session, path, content_hash, size, sample_id, ImageStatus.QUEUED, None)
            if image is None:
                continue  # lost a race with another watcher: look again
            return Registration(Outcome.NEW, image.id, image.status, note)
        if image.source_path == str(path) and not image.archived_path:
            return Registration(Outcome.KNOWN, image.id, image.status)
        # The same path again after its original was moved away: a new copy of known bytes.
        if image.status in (ImageStatus.FAILED.value, ImageStatus.QUARANTINED.value):
            previous = image.error
            ensure_sample(session, sample_id)
            image.source_path = str(path)
            image.file_name = path.name
            image.archived_path = None
            image.status = ImageStatus.QUEUED.value
            image.error = None
            image.updated_at = utcnow()
            if sample_id:
                image.sample_id = sample_id
            session.commit()
            return Registration(
                Outcome.RETRY,
                image.id,
                image.status,
                f"dropped again after it {'failed' if previous else 'stopped'}: queued for another attempt",
            )
        return Registration(
            Outcome.DUPLICATE,
            image.id,
            image.status,
            f"same content as image {image.id} ({image.file_name}, {image.status}): not processed again",
        )
    raise RuntimeError(f"could not register {path}: the image row keeps changing")


def register_unreadable(
    session: Session, path: Path, content_hash: str, size: int, sample_id: str | None, reason: str
) -> Registration:
    """Record a file that never became a readable image as ``quarantined`` with ``reason``."""
    for _ in range(3):
        image = session.scalar(select(Image).where(Image.content_hash == content_hash))
        if image is None:
            image = _insert(session, path, content_hash, size, sample_id, ImageStatus.QUARANTINED, reason)
            if image is None:
                continue
            return Registration(Outcome.QUARANTINED, image.id, image.status, reason)
        if (
            image.source_path == str(path)
            and image.status == ImageStatus.QUARANTINED.value
            and not image.archived_path
        ):
            return Registration(Outcome.KNOWN, image.id, image.status, image.error)
        if image.status not in (ImageStatus.FAILED.value, ImageStatus.QUARANTINED.value):
            return Registration(
                Outcome.DUPLICATE,
                image.id,
                image.status,
                f"same content as image {image.id} ({image.file_name}, {image.status})",
            )
        image.source_path = str(path)
        image.file_name = path.name
        image.archived_path = None
        image.status = ImageStatus.QUARANTINED.value
        image.error = reason
        image.updated_at = utcnow()
        session.commit()
        return Registration(Outcome.QUARANTINED, image.id, image.status, reason)
    raise RuntimeError(f"could not register {path}: the image row keeps changing")

"""The dashboard's retry button: put a failed or quarantined plate back into the inbox.

The daemon already knows what to do with bytes that failed before and are dropped again: the
watcher registers them as a new attempt on the same image row (see
:mod:`labpipe.ingest.register`, outcome ``retry``) and sends the task. A retry therefore only
moves the file from the quarantine folder back to where it was dropped, and records first that the
file was last seen in the quarantine, so that the watcher does not take the returning file for one
it registered already. Without a running watcher, the file waits in the inbox like any other.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from sqlalchemy.orm import Session

from labpipe.config import Settings
from labpipe.db.models import Image, ImageStatus, utcnow
from labpipe.errors import LabpipeError
from labpipe.ingest.moves import move_file, reason_file_for
from labpipe.ingest.rules import sidecar_path
from labpipe.web.media import inside

__all__ = ["RetryError", "retry_image"]


class RetryError(LabpipeError):
    """The image cannot be retried from here (wrong status, file not in the quarantine)."""


def _free_name(target: Path) -> Path:
    """``target``, or ``<stem>-retry<n><suffix>`` beside it when that name is taken."""
    if not target.exists():
        return target
    for n in range(1, 1000):
        candidate = target.with_name(f"{target.stem}-retry{n}{target.suffix}")
        if not candidate.exists():
            return candidate
    raise RetryError(target, "too many files of this name in the inbox", "clean up the inbox first")


def retry_image(session: Session, image: Image, settings: Settings) -> Path:
    """Move ``image``'s file from the quarantine (or archive) back into the inbox; returns the new
    path. Commits.

    Raises :class:`RetryError` when the image is not failed or quarantined, or its file is not in
    the quarantine or archive folder any more (then: drop the original into the inbox again).
    """
    if image.status not in (ImageStatus.FAILED.value, ImageStatus.QUARANTINED.value):
        raise RetryError(f"image {image.id}", f"is {image.status}, not failed or quarantined")
    storage = settings.storage
    current = inside(image.archived_path, [storage.quarantine_dir, storage.archive_dir])
    if current is None:
        raise RetryError(
            f"image {image.id}",
            "its file is not in the quarantine folder",
            "drop the original file into the inbox again to retry it",
        )
    inbox = storage.inbox_dir.resolve()
    wanted = inside(image.source_path, [inbox])  # normally gone: it was moved out
    source = Path(image.source_path)
    try:
        relative = source.resolve().relative_to(inbox) if source.is_absolute() else Path(source.name)
    except ValueError:
        relative = Path(source.name)
    if wanted is not None or ".." in relative.parts:
        relative = Path(source.name)
    # Record where the file is now before it moves: the watcher compares the path it finds with
    # the image's source path, and must see a different one to take the file as a new attempt.
    image.source_path = str(current)
    image.updated_at = utcnow()
    session.commit()
    side = sidecar_path(current)
    target = _move_back(current, inbox / relative)
    if side.is_file() and side != current:
        with contextlib.suppress(FileExistsError):  # the sample named in the sidecar comes back with it
            move_file(side, sidecar_path(target))
    reason_file_for(current).unlink(missing_ok=True)
    return target


def _move_back(current: Path, wanted: Path) -> Path:
    """Move ``current`` to ``wanted`` or a free name beside it; a file someone drops there at the
    same moment is never overwritten."""
    for _ in range(5):
        target = _free_name(wanted)
        try:
            move_file(current, target)
        except FileExistsError:
            continue
        return target
    raise RetryError(wanted, "no free name in the inbox for the retried file", "clean up the inbox first")

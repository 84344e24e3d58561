"""Look-ups for box editing on the plate view (:mod:`labpipe.box_edits`)."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from labpipe.db.models import AuditEvent, Classification, Image, Specimen

__all__ = ["image_or_none", "latest_event", "next_index", "specimen_classification", "taken_crop_paths"]


def image_or_none(session: Session, image_id: int) -> Image | None:
    return session.get(Image, image_id)


def next_index(session: Session, image_id: int) -> int:
    """The next free specimen number on a plate (1-based)."""
    return (
        int(
            session.scalar(select(func.max(Specimen.index_in_image)).where(Specimen.image_id == image_id))
            or 0
        )
        + 1
    )


def taken_crop_paths(session: Session, image_id: int) -> set[str]:
    return {p for p in session.scalars(select(Specimen.crop_path).where(Specimen.image_id == image_id)) if p}


def specimen_classification(session: Session, specimen_id: int, model_id: int) -> Classification | None:
    return session.scalar(
        select(Classification).where(
            Classification.specimen_id == specimen_id, Classification.model_id == model_id
        )
    )


def latest_event(session: Session, specimen_id: int, action: str) -> AuditEvent | None:
    """A specimen's newest audit event of ``action``."""
    return session.scalar(
        select(AuditEvent)
        .where(AuditEvent.specimen_id == specimen_id, AuditEvent.action == action)
        .order_by(AuditEvent.id.desc())
        .limit(1)
    )

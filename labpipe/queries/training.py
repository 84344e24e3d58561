"""Plates and boxes for detector training data (:mod:`labpipe.reports.coco`).

Which plates count as reviewed (:func:`training_images`) and, for their specimens, how each box
came to be (:func:`box_origins`). A specimen's call (its verdict and family) comes from
:func:`labpipe.queries.listings.image_specimens`, as the plate view shows it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import and_, exists, or_, select
from sqlalchemy.orm import Session

from labpipe.db.models import Image, Specimen, Verification

__all__ = ["BoxOrigin", "box_origins", "training_images"]


def _verified(specimen_id: object) -> object:
    """A verification that counts (not retracted) exists for the specimen."""
    return exists().where(Verification.specimen_id == specimen_id, Verification.retracted_at.is_(None))


def training_images(
    session: Session, *, sample: str | None = None, reviewed_only: bool = False
) -> list[Image]:
    """The plates whose boxes a person checked, by id (only plates with a known size).

    A plate counts when it is marked boxes reviewed (``images.boxes_reviewed_at`` set); without
    ``reviewed_only`` also when every specimen on it (at least one) carries a verification that
    counts: every box was checked, though nobody said that none is missing.
    """
    marked = Image.boxes_reviewed_at.is_not(None)
    if reviewed_only:
        wanted = marked
    else:
        unchecked = (
            exists().where(Specimen.image_id == Image.id).where(~_verified(Specimen.id))  # type: ignore[operator]
        )
        wanted = or_(marked, and_(exists().where(Specimen.image_id == Image.id), ~unchecked))
    query = select(Image).where(wanted, Image.width.is_not(None), Image.height.is_not(None))
    if sample is not None:
        query = query.where(Image.sample_id == sample)
    return list(session.scalars(query.order_by(Image.id)))


@dataclass(frozen=True)
class BoxOrigin:
    """How a specimen's box came to be."""

    detection_state: str
    """``detected``, ``not_redetected`` or ``drawn`` (:class:`~labpipe.db.models.DetectionState`)."""
    edited: bool
    """A person set the box by hand."""


def box_origins(session: Session, image_ids: Iterable[int]) -> dict[int, BoxOrigin]:
    """Per specimen id of the given images: its detection state and whether its box was edited."""
    ids = list(image_ids)
    if not ids:
        return {}
    query = select(Specimen.id, Specimen.detection_state, Specimen.box_edited_at).where(
        Specimen.image_id.in_(ids)
    )
    return {sid: BoxOrigin(state, edited is not None) for sid, state, edited in session.execute(query)}

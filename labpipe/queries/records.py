"""Single rows the routes need: one image, specimen, sample or model by id; which specimen ids
exist; a specimen's crop path and its verifications.

An id outside the database's integer range is no row (``None``), not an error, so a route can
answer 404 for any id a URL carries.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from labpipe.db.models import BarcodeLink, Image, Model, Sample, Specimen, Verification

__all__ = [
    "existing_specimen_ids",
    "get_image",
    "get_model",
    "get_sample",
    "get_specimen",
    "plated_specimen_ids",
    "specimen_crop_path",
    "verifications_of",
]

_MAX_ID = 2**31
"""Ids are 32-bit signed integers in every database labpipe runs on."""


def _valid(row_id: int) -> bool:
    """
    >>> _valid(1), _valid(0), _valid(2**31)
    (True, False, False)
    """
    return 0 < row_id < _MAX_ID


def get_image(session: Session, image_id: int) -> Image | None:
    """The image with this id, or ``None``."""
    return session.get(Image, image_id) if _valid(image_id) else None


def get_specimen(session: Session, specimen_id: int) -> Specimen | None:
    """The specimen with this id, or ``None``."""
    return session.get(Specimen, specimen_id) if _valid(specimen_id) else None


def get_model(session: Session, model_id: int) -> Model | None:
    """The registered model with this id, or ``None``."""
    return session.get(Model, model_id) if _valid(model_id) else None


def get_sample(session: Session, sample_id: str) -> Sample | None:
    """The sample with this id, or ``None``."""
    return session.get(Sample, sample_id)


def existing_specimen_ids(session: Session, ids: Iterable[int]) -> set[int]:
    """Those of ``ids`` that are specimens."""
    wanted = [i for i in dict.fromkeys(int(i) for i in ids) if _valid(i)]
    if not wanted:
        return set()
    return set(session.scalars(select(Specimen.id).where(Specimen.id.in_(wanted))))


def plated_specimen_ids(session: Session, ids: Iterable[int]) -> set[int]:
    """Those of ``ids`` that are in a well of some 96-well plate."""
    wanted = list(dict.fromkeys(int(i) for i in ids))
    out: set[int] = set()
    for start in range(0, len(wanted), 900):  # below SQLite's bound-parameter limit
        chunk = wanted[start : start + 900]
        out.update(
            i
            for i in session.scalars(
                select(BarcodeLink.specimen_id).where(
                    BarcodeLink.specimen_id.in_(chunk), BarcodeLink.plate.is_not(None)
                )
            )
            if i is not None
        )
    return out


def specimen_crop_path(session: Session, specimen_id: int) -> str | None:
    """The specimen's crop path (relative to the crops folder), or ``None`` for no such specimen."""
    if not _valid(specimen_id):
        return None
    return session.scalar(select(Specimen.crop_path).where(Specimen.id == specimen_id))


def verifications_of(session: Session, specimen_id: int) -> list[Verification]:
    """Every verification of a specimen, retracted ones included, newest first (the first that is
    not retracted is the one that counts)."""
    return list(
        session.scalars(
            select(Verification)
            .where(Verification.specimen_id == specimen_id)
            .order_by(Verification.verified_at.desc(), Verification.id.desc())
        )
    )

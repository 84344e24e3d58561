"""The numbers sample pages and the counts need: how many samples (of a site), specimens on no
sample, a sample's images, processed images per sample, sample rows by id.

The listing of samples with their images and specimens per status is
:func:`labpipe.samples.list_samples` (it shapes the API's answer).
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from labpipe.db.models import Image, ImageStatus, Sample, Specimen
from labpipe.queries.calls import CountFilter

__all__ = [
    "count_samples",
    "done_images_per_sample",
    "sample_images",
    "samples_by_id",
    "unassigned_specimens",
]


def count_samples(session: Session, site: str | None = None) -> int:
    """How many samples there are (of ``site``)."""
    query = select(func.count()).select_from(Sample)
    if site is not None:
        query = query.where(Sample.site == site)
    return int(session.scalar(query) or 0)


def unassigned_specimens(session: Session) -> int:
    """How many specimens lie on images that belong to no sample."""
    query = (
        select(func.count(Specimen.id))
        .join(Image, Image.id == Specimen.image_id)
        .where(Image.sample_id.is_(None))
    )
    return int(session.scalar(query) or 0)


def sample_images(session: Session, sample_id: str, limit: int = 500) -> tuple[int, list[Image]]:
    """``(total, images)``: how many images the sample has, and the first ``limit`` of them by id."""
    total = int(session.scalar(select(func.count(Image.id)).where(Image.sample_id == sample_id)) or 0)
    rows = session.scalars(select(Image).where(Image.sample_id == sample_id).order_by(Image.id).limit(limit))
    return total, list(rows)


def done_images_per_sample(session: Session, flt: CountFilter) -> dict[str | None, int]:
    """Processed images per sample (``None``: images of no sample), among those ``flt`` selects."""
    query = (
        select(Image.sample_id, func.count(Image.id))
        .where(Image.status == ImageStatus.DONE.value)
        .group_by(Image.sample_id)
    )
    return {sample: n for sample, n in session.execute(flt.apply(query))}


def samples_by_id(session: Session, ids: Iterable[str | None]) -> dict[str | None, Sample]:
    """The sample rows of these ids (``None`` and unknown ids are left out)."""
    wanted = [i for i in dict.fromkeys(ids) if i is not None]
    if not wanted:
        return {}
    return {row.id: row for row in session.scalars(select(Sample).where(Sample.id.in_(wanted)))}

"""The web UI's database queries: filtered, sorted, paged specimens; images; the dashboard.

Everything that filters or sorts is SQL, so a page costs one page of rows plus one count however
many specimens the database holds. How a specimen counts follows
:func:`labpipe.reports.counts.resolve` (a person's latest verification wins, otherwise the chosen
classification's stored decision); the SQL of :func:`_outcome_columns` mirrors it for filtering,
and each shown row is resolved again in Python with the very function the counts use.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Select, and_, case, func, select
from sqlalchemy.orm import Session, aliased

from labpipe.db.models import (
    Classification,
    Image,
    ImageStatus,
    Model,
    ModelKind,
    Specimen,
    Verification,
    VerificationStatus,
)
from labpipe.pipeline import STAGE_DIR_PREFIX
from labpipe.reports.counts import Resolution, SpecimenCall, resolve

__all__ = [
    "SORTS",
    "STATES",
    "GalleryRow",
    "SpecimenFilter",
    "failures",
    "image_list",
    "image_specimens",
    "known_families",
    "model_usage",
    "neighbours",
    "plate_progress",
    "recent_images",
    "specimen_page",
    "specimen_page_by_ids",
    "utc_age",
]

STATES = ("accepted", "rejected", "excluded", "unclassified", "verified", "unverified")
"""Gallery ``state`` filter values (``verified``: any verification; ``unverified``: none)."""

SORTS: dict[str, str] = {
    "uncertain": "least confident first",
    "confident": "most confident first",
    "newest": "newest first",
    "oldest": "oldest first",
    "largest": "largest first",
}


@dataclass(frozen=True)
class SpecimenFilter:
    """What the gallery shows (every field optional)."""

    sample: str | None = None
    image_id: int | None = None
    family: str | None = None
    """Counted family, or for specimens that are not counted as a family, the model's best guess."""
    state: str | None = None
    """One of :data:`STATES`."""
    p_min: float | None = None
    p_max: float | None = None
    """Range of the chosen classification's calibrated probability (inclusive)."""
    model: str | None = None
    """A model version: only specimens it classified, judged by its classification."""
    sort: str = "uncertain"

    def __post_init__(self) -> None:
        if self.state is not None and self.state not in STATES:
            raise ValueError(f"state must be one of {STATES}, given state {self.state!r}")
        if self.sort not in SORTS:
            raise ValueError(f"sort must be one of {tuple(SORTS)}, given sort {self.sort!r}")


@dataclass
class GalleryRow:
    """One specimen as the gallery and the review page show it."""

    specimen_id: int
    image_id: int
    index_in_image: int
    sample: str | None
    bbox: tuple[int, int, int, int]
    length_mm: float | None
    call: SpecimenCall
    resolution: Resolution = field(init=False)

    def __post_init__(self) -> None:
        self.resolution = resolve(self.call)

    @property
    def best_family(self) -> str | None:
        """What the model thought, even when rejected."""
        c = self.call
        return c.family or (c.top_k[0][0] if c.top_k else None)

    @property
    def shown_family(self) -> str | None:
        """The family to show: the counted one, else the model's best guess."""
        if self.resolution.outcome == "excluded":
            return None
        return self.resolution.family or self.best_family

    @property
    def uncertainty(self) -> float | None:
        p = self.call.probability
        return None if p is None else round(1.0 - p, 3)


def _chosen_id(model: str | None) -> Any:
    """Correlated SQL for a specimen's chosen classification id: its newest, or that of version
    ``model`` (one index lookup per specimen; much faster than a grouped subquery on SQLite)."""
    other = aliased(Classification)
    if model is not None:
        query = select(func.max(other.id)).where(other.specimen_id == Specimen.id)
        query = query.where(other.model_id.in_(select(Model.id).where(Model.version == model)))
        return query.correlate(Specimen).scalar_subquery()
    # the default classifier's call where it has one, else the newest (as the counts choose)
    defaults = select(Model.id).where(Model.is_default.is_(True), Model.kind == ModelKind.CLASSIFIER.value)
    return (
        select(other.id)
        .where(other.specimen_id == Specimen.id)
        .order_by(case((other.model_id.in_(defaults), 0), else_=1), other.id.desc())
        .limit(1)
        .correlate(Specimen)
        .scalar_subquery()
    )


def _latest_verification_id() -> Any:
    """Correlated SQL for the id of a specimen's latest verification (by time, then id)."""
    other = aliased(Verification)
    return (
        select(other.id)
        .where(other.specimen_id == Specimen.id, other.retracted_at.is_(None))
        .order_by(other.verified_at.desc(), other.id.desc())
        .limit(1)
        .correlate(Specimen)
        .scalar_subquery()
    )


def _outcome_columns(cls: Any, ver: Any) -> tuple[Any, Any]:
    """SQL for (counted family or NULL, outcome): :func:`~labpipe.reports.counts.resolve` without a
    query-time threshold (a confirmation without a family counts as the model's stored family)."""
    v = VerificationStatus
    counted = case(
        (ver.status == v.NOT_SPECIMEN.value, None),
        (ver.status == v.CORRECTED.value, ver.family),
        (ver.status == v.CONFIRMED.value, func.coalesce(ver.family, cls.family)),
        (and_(ver.status == v.MULTIPLE.value, ver.family.is_not(None)), ver.family),
        (cls.id.is_(None), None),
        (cls.rejected.is_(True), None),
        else_=cls.family,
    )
    outcome = case(
        (ver.status == v.NOT_SPECIMEN.value, "excluded"),
        (counted.is_not(None), "accepted"),
        (and_(cls.id.is_(None), ver.status.is_(None)), "unclassified"),
        else_="rejected",
    )
    return counted, outcome


def _base(flt: SpecimenFilter) -> tuple[Select[Any], Any, Any]:
    ver = aliased(Verification, name="latest_verification")
    query = (
        select(
            Specimen.id,
            Specimen.image_id,
            Specimen.index_in_image,
            Specimen.x,
            Specimen.y,
            Specimen.w,
            Specimen.h,
            Specimen.length_mm,
            Image.sample_id,
            Classification.family,
            Classification.probability,
            Classification.rejected,
            Classification.reason,
            Classification.top_k,
            Model.version,
            ver.status,
            ver.family,
        )
        .select_from(Specimen)
        .join(Image, Image.id == Specimen.image_id)
    )
    chosen = Classification.id == _chosen_id(flt.model)
    if flt.model is not None:  # only specimens this model classified
        query = query.join(Classification, chosen)
    else:
        query = query.outerjoin(Classification, chosen)
    query = query.outerjoin(Model, Model.id == Classification.model_id).outerjoin(
        ver, ver.id == _latest_verification_id()
    )
    return query, Classification, ver


def _filtered(flt: SpecimenFilter) -> Select[Any]:
    query, cls, ver = _base(flt)
    counted, outcome = _outcome_columns(cls, ver)
    if flt.sample is not None:
        query = query.where(Image.sample_id == flt.sample)
    if flt.image_id is not None:
        query = query.where(Specimen.image_id == flt.image_id)
    if flt.family:
        wanted = flt.family.strip().lower()
        shown = case((outcome == "excluded", None), else_=func.coalesce(counted, cls.family))
        query = query.where(func.lower(shown) == wanted)
    if flt.state in ("accepted", "rejected", "excluded", "unclassified"):
        query = query.where(outcome == flt.state)
    elif flt.state == "verified":
        query = query.where(ver.status.is_not(None))
    elif flt.state == "unverified":
        query = query.where(ver.status.is_(None))
    if flt.p_min is not None:
        query = query.where(cls.probability >= flt.p_min)
    if flt.p_max is not None:
        query = query.where(cls.probability <= flt.p_max)
    return query


def _order(query: Select[Any], flt: SpecimenFilter) -> Select[Any]:
    p = Classification.probability
    if flt.sort == "uncertain":  # no probability (unclassified) first: nobody has judged those either
        return query.order_by(p.is_not(None), p.asc(), Specimen.id)
    if flt.sort == "confident":
        return query.order_by(p.is_(None), p.desc(), Specimen.id)
    if flt.sort == "newest":
        return query.order_by(Specimen.id.desc())
    if flt.sort == "largest":
        return query.order_by((Specimen.w * Specimen.h).desc(), Specimen.id)
    return query.order_by(Specimen.id)


def _needs_joins_for_count(flt: SpecimenFilter) -> bool:
    return bool(
        flt.family or flt.state or flt.p_min is not None or flt.p_max is not None or flt.model is not None
    )


def _count(session: Session, flt: SpecimenFilter) -> int:
    if _needs_joins_for_count(flt):
        query = _filtered(flt).with_only_columns(Specimen.id)
        return int(session.scalar(select(func.count()).select_from(query.subquery())) or 0)
    # Only sample/image filters: count specimens directly (no classification or verification join).
    query = select(func.count(Specimen.id))
    if flt.sample is not None:
        query = query.join(Image, Image.id == Specimen.image_id).where(Image.sample_id == flt.sample)
    if flt.image_id is not None:
        query = query.where(Specimen.image_id == flt.image_id)
    return int(session.scalar(query) or 0)


def _row(r: Any) -> GalleryRow:
    (sid, image_id, index, x, y, w, h, length, sample, family, prob, rejected, reason, top_k, version) = r[
        :15
    ]
    vstatus, vfamily = r[15], r[16]
    call = SpecimenCall(
        specimen_id=sid,
        sample_id=sample,
        family=family,
        probability=prob,
        rejected=bool(rejected) if rejected is not None else True,
        reason=reason,
        top_k=tuple((str(f), float(p)) for f, p in (top_k or [])),
        model_version=version,
        verification=vstatus,
        verified_family=vfamily,
    )
    return GalleryRow(sid, image_id, index, sample, (x, y, w, h), length, call)


def specimen_page(
    session: Session, flt: SpecimenFilter, *, limit: int, offset: int = 0, count: bool = True
) -> tuple[int | None, list[GalleryRow]]:
    """``(total, rows)``: one page of specimens matching ``flt`` in its sort order.

    ``total`` is ``None`` when ``count`` is false (the caller only needs the rows).
    """
    # First the page's ids (the sort and filters need few columns), then the rows of those ids only:
    # deep pages do not drag every skipped row's JSON along.
    ids_query = _order(_filtered(flt), flt).with_only_columns(Specimen.id).limit(limit).offset(offset)
    ids = list(session.scalars(ids_query))
    rows = []
    if ids:
        full, _, _ = _base(flt)
        by_id = {r[0]: r for r in session.execute(full.where(Specimen.id.in_(ids)))}
        rows = [_row(by_id[i]) for i in ids if i in by_id]
    total = _count(session, flt) if count else None
    return total, rows


def specimen_page_by_ids(session: Session, ids: list[int]) -> list[GalleryRow]:
    """The rows of these specimens (unknown ids are left out), in the order given."""
    wanted = list(dict.fromkeys(int(i) for i in ids))
    if not wanted:
        return []
    full, _, _ = _base(SpecimenFilter())
    by_id = {r[0]: r for r in session.execute(full.where(Specimen.id.in_(wanted)))}
    return [_row(by_id[i]) for i in wanted if i in by_id]


def image_specimens(session: Session, image_id: int) -> list[GalleryRow]:
    """Every specimen of one image (the plate view draws them all), in index order."""
    query = _filtered(SpecimenFilter(image_id=image_id)).order_by(Specimen.index_in_image)
    return [_row(r) for r in session.execute(query)]


def neighbours(session: Session, flt: SpecimenFilter, specimen_id: int, pos: int) -> dict[str, Any]:
    """Previous and next specimen ids around ``specimen_id``, expected near position ``pos`` of the
    filtered list (the review flow's "next").

    The list may have moved since the link was made (a verified specimen leaves a review queue of
    unverified ones), so the specimen is looked for a few places around ``pos``; when it is no
    longer in the list, the specimens now at ``pos - 1`` and ``pos`` are its neighbours.
    """
    start = max(0, pos - 2)
    window = list(
        session.scalars(_order(_filtered(flt), flt).with_only_columns(Specimen.id).limit(5).offset(start))
    )
    if specimen_id in window:
        i = window.index(specimen_id)
        return {
            "prev": window[i - 1] if i > 0 else None,
            "next": window[i + 1] if i + 1 < len(window) else None,
            "pos": start + i,
        }
    here = pos - start
    return {
        "prev": window[here - 1] if 0 < here <= len(window) else None,
        "next": window[here] if here < len(window) else None,
        "pos": pos,
    }


def known_families(session: Session, limit: int = 500) -> list[str]:
    """Family names seen anywhere (model labels, classifications, verifications), for the correction
    form's suggestions."""
    names: set[str] = set()
    for labels in session.scalars(select(Model.labels)):
        names.update(str(x) for x in (labels or []))
    names.update(
        f
        for f in session.scalars(
            select(Verification.family).where(Verification.family.is_not(None)).distinct()
        )
        if f
    )
    if len(names) < limit:
        names.update(
            f
            for f in session.scalars(
                select(Classification.family)
                .where(Classification.family.is_not(None))
                .distinct()
                .limit(limit)
            )
            if f
        )
    return sorted(names, key=str.lower)[:limit]


# --------------------------------------------------------------------------------------------------
# Images and the dashboard


def recent_images(session: Session, limit: int = 15) -> list[Image]:
    """The images changed most recently (any status)."""
    return list(
        session.scalars(select(Image).order_by(Image.updated_at.desc(), Image.id.desc()).limit(limit))
    )


def image_list(
    session: Session, *, status: str | None, sample: str | None, limit: int, offset: int
) -> tuple[int, list[Image]]:
    """Images (newest first) with an optional status and sample filter."""
    query = select(Image)
    if status:
        query = query.where(Image.status == ImageStatus(status).value)
    if sample:
        query = query.where(Image.sample_id == sample)
    total = int(session.scalar(select(func.count()).select_from(query.subquery())) or 0)
    rows = list(session.scalars(query.order_by(Image.id.desc()).limit(limit).offset(offset)))
    return total, rows


def plate_progress(crops_dir: Path, image_id: int) -> dict[str, Any] | None:
    """How far a processing image has got, from its stage directory on the shared storage.

    Returns ``{"stage": "detecting"}`` while the detect task runs (no manifest yet), then
    ``{"stage": "classifying", "specimens": n, "batches": b, "batches_done": k}``; ``None`` when
    there is no stage directory (processed by ``labpipe process``, or not started).
    """
    prefix = f"{STAGE_DIR_PREFIX}{image_id:06d}-"
    try:
        dirs = [p for p in crops_dir.iterdir() if p.name.startswith(prefix) and p.is_dir()]
    except OSError:
        return None
    if not dirs:
        return None
    newest = max(dirs, key=lambda p: p.stat().st_mtime)
    manifest = newest / "manifest.json"
    if not manifest.is_file():
        return {"stage": "detecting"}
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"stage": "detecting"}
    n = len(data.get("specimens", []))
    per_batch = max(1, int(data.get("per_batch") or 1))
    batches = -(-n // per_batch)
    done = len(list(newest.glob("classified-*.json")))
    return {"stage": "classifying", "specimens": n, "batches": batches, "batches_done": min(done, batches)}


def failures(session: Session, limit: int = 20) -> list[Image]:
    """Failed and quarantined images, newest first."""
    return list(
        session.scalars(
            select(Image)
            .where(Image.status.in_([ImageStatus.FAILED.value, ImageStatus.QUARANTINED.value]))
            .order_by(Image.updated_at.desc(), Image.id.desc())
            .limit(limit)
        )
    )


def model_usage(session: Session) -> dict[int, int]:
    """Classifications per model id."""
    return {
        mid: int(n)
        for mid, n in session.execute(
            select(Classification.model_id, func.count(Classification.id)).group_by(Classification.model_id)
        )
    }


def utc_age(when: dt.datetime | None, now: dt.datetime) -> str:
    """``"12 s ago"``, ``"5 min ago"``, ``"3 h ago"``, or the date.

    >>> now = dt.datetime(2024, 1, 2, 12, 0, tzinfo=dt.UTC)
    >>> utc_age(now - dt.timedelta(seconds=30), now), utc_age(now - dt.timedelta(hours=2), now)
    ('30 s ago', '2 h ago')
    """
    if when is None:
        return "-"
    seconds = (now - when).total_seconds()
    if seconds < 90:
        return f"{max(0, round(seconds))} s ago"
    if seconds < 5400:
        return f"{round(seconds / 60)} min ago"
    if seconds < 48 * 3600:
        return f"{round(seconds / 3600)} h ago"
    return when.strftime("%Y-%m-%d")

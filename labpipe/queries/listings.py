"""Specimen and image listings: filtered, sorted, paged; the web UI, the HTTP API and the CLI list with them.

Everything that filters or sorts is SQL, so a page costs one page of rows plus one count however
many specimens the database holds. Each listed specimen carries its call (chosen classification and
latest verification, :mod:`labpipe.queries.calls`) and is resolved in Python with the very rule the
counts use (:func:`labpipe.queries.rule.resolve`); the SQL filters on outcome and family mirror that
rule (:func:`labpipe.queries.calls.outcome_columns`). A query-time threshold changes outcomes, which
that SQL does not know: with a threshold, filters on outcome or family are applied to the resolved
rows in Python (the sample, image, probability, model and verified filters stay SQL).
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Select, and_, case, func, or_, select
from sqlalchemy.orm import Session, aliased

from labpipe.barcoding.ids import specimen_code
from labpipe.db.models import (
    Agreement,
    BarcodeLink,
    Classification,
    Image,
    ImageStatus,
    Model,
    Specimen,
    Verification,
)
from labpipe.queries.calls import (
    call_columns,
    call_from_row,
    chosen_classification_id,
    latest_verification_id,
    outcome_columns,
)
from labpipe.queries.rule import Resolution, SpecimenCall, resolve

__all__ = [
    "DNA_FILTERS",
    "OUTCOMES",
    "SORTS",
    "STATES",
    "ImageFilter",
    "SpecimenFilter",
    "SpecimenRow",
    "code_search_ids",
    "failures",
    "image_page",
    "image_specimens",
    "known_families",
    "neighbours",
    "recent_images",
    "specimen_page",
    "specimen_rows",
]

OUTCOMES = ("accepted", "rejected", "excluded", "unclassified")
"""The values of :class:`~labpipe.queries.rule.Outcome`."""

STATES = (*OUTCOMES, "verified", "unverified")
"""``state`` filter values: an outcome, or ``verified`` (any verification) / ``unverified`` (none)."""

SORTS: dict[str, str] = {
    "uncertain": "least confident first",
    "confident": "most confident first",
    "newest": "newest first",
    "oldest": "oldest first",
    "largest": "largest first",
}

DNA_FILTERS: dict[str, str] = {
    "disagree": "disagrees with the image",
    "review": "disagrees, not reviewed yet",
}
"""``dna`` filter values. ``disagree``: a barcode record of the specimen is marked ``disagree`` (the
list ``labpipe barcodes agreement`` prints as "marked for review"); ``review``: such a record still
waits for a person (``needs_review``: no verification since). The marks are those of the last
``labpipe barcodes agreement`` run."""

_SEARCH_MAX = 128


@dataclass(frozen=True)
class SpecimenFilter:
    """Which specimens to list, and in which order (every field optional)."""

    sample: str | None = None
    image_id: int | None = None
    family: str | None = None
    """Shown family: the counted one, or for specimens not counted as a family, the model's best guess."""
    counted_family: str | None = None
    """Counted family (accepted specimens only; an empty string matches those with none)."""
    state: str | None = None
    """One of :data:`STATES`."""
    p_min: float | None = None
    p_max: float | None = None
    """Range of the chosen classification's calibrated probability (inclusive)."""
    model: str | None = None
    """A model version: only specimens it classified, judged by its classification."""
    threshold: float | None = None
    """Query-time acceptance threshold the rows are resolved at (``None``: the stored decisions)."""
    sort: str = "uncertain"
    """One of :data:`SORTS` (``oldest``: by specimen id)."""
    search: str | None = None
    """Free text: a part of the sample id, of a barcode record's process ID, BIN or Sample ID
    (case ignored), or (with :attr:`search_ids`) a specimen's Sample ID exactly."""
    search_ids: tuple[int, ...] = ()
    """Specimens whose Sample ID (code) is :attr:`search`, from :func:`code_search_ids` (codes are
    made from a pattern, so no SQL can match them)."""
    dna: str | None = None
    """One of :data:`DNA_FILTERS`."""

    def __post_init__(self) -> None:
        if self.state is not None and self.state not in STATES:
            raise ValueError(f"state must be one of {STATES}, given state {self.state!r}")
        if self.dna is not None and self.dna not in DNA_FILTERS:
            raise ValueError(f"dna must be one of {tuple(DNA_FILTERS)}, given dna {self.dna!r}")
        if self.search is not None and len(self.search) > _SEARCH_MAX:
            raise ValueError(f"search text longer than {_SEARCH_MAX} characters")
        if self.sort not in SORTS:
            raise ValueError(f"sort must be one of {tuple(SORTS)}, given sort {self.sort!r}")
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], given threshold {self.threshold}")


@dataclass
class SpecimenRow:
    """One listed specimen: where it lies, its call, and how that call counts."""

    specimen_id: int
    image_id: int
    index_in_image: int
    sample: str | None
    bbox: tuple[int, int, int, int]
    length_mm: float | None
    call: SpecimenCall
    width_mm: float | None = None
    score: float | None = None
    threshold: float | None = None
    um_per_px: float | None = None
    """The plate's scale (``None``: unknown)."""
    image_size: tuple[int | None, int | None] = (None, None)
    """The plate's width and height in pixels."""
    crop_size: int | None = None
    """The side of the stored square crop, in plate pixels."""
    resolution: Resolution = field(init=False)

    def __post_init__(self) -> None:
        self.resolution = resolve(self.call, self.threshold)

    @property
    def best_family(self) -> str | None:
        """What the model thought, even when rejected."""
        return self.call.best_family

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


# --------------------------------------------------------------------------------------------------
# Specimens


def _base(flt: SpecimenFilter) -> tuple[Select[Any], Any]:
    """Every column of a row, and the latest verification's alias."""
    ver = aliased(Verification, name="latest_verification")
    query = (
        select(
            *call_columns(ver.status, ver.family),
            Specimen.image_id,
            Specimen.index_in_image,
            Specimen.x,
            Specimen.y,
            Specimen.w,
            Specimen.h,
            Specimen.length_mm,
            Specimen.width_mm,
            Specimen.score,
            Image.um_per_px,
            Image.width,
            Image.height,
            Specimen.crop_size,
        )
        .select_from(Specimen)
        .join(Image, Image.id == Specimen.image_id)
    )
    chosen = Classification.id == chosen_classification_id(flt.model)
    if flt.model is not None:  # only specimens this model classified
        query = query.join(Classification, chosen)
    else:
        query = query.outerjoin(Classification, chosen)
    query = query.outerjoin(Model, Model.id == Classification.model_id).outerjoin(
        ver, ver.id == latest_verification_id()
    )
    return query, ver


def _in_python(flt: SpecimenFilter) -> bool:
    """Outcome and family filters at a threshold are applied to resolved rows, not in SQL."""
    outcome_filter = flt.state in OUTCOMES or bool(flt.family) or flt.counted_family is not None
    return flt.threshold is not None and outcome_filter


def _filtered(flt: SpecimenFilter) -> Select[Any]:
    query, ver = _base(flt)
    cls = Classification
    counted, outcome = outcome_columns(cls, ver.status, ver.family)
    if flt.sample is not None:
        query = query.where(Image.sample_id == flt.sample)
    if flt.image_id is not None:
        query = query.where(Specimen.image_id == flt.image_id)
    if not _in_python(flt):
        if flt.family:
            wanted = flt.family.strip().lower()
            shown = case((outcome == "excluded", None), else_=func.coalesce(counted, cls.family))
            query = query.where(func.lower(shown) == wanted)
        if flt.counted_family is not None:
            query = query.where(func.coalesce(func.lower(counted), "") == flt.counted_family.strip().lower())
        if flt.state in OUTCOMES:
            query = query.where(outcome == flt.state)
    if flt.state == "verified":
        query = query.where(ver.status.is_not(None))
    elif flt.state == "unverified":
        query = query.where(ver.status.is_(None))
    if flt.p_min is not None:
        query = query.where(cls.probability >= flt.p_min)
    if flt.p_max is not None:
        query = query.where(cls.probability <= flt.p_max)
    if flt.search and flt.search.strip():
        text = flt.search.strip()
        records = select(BarcodeLink.specimen_id).where(
            BarcodeLink.specimen_id.is_not(None),
            or_(
                BarcodeLink.processid.icontains(text, autoescape=True),
                BarcodeLink.bin_uri.icontains(text, autoescape=True),
                BarcodeLink.sampleid.icontains(text, autoescape=True),
            ),
        )
        found = [Image.sample_id.icontains(text, autoescape=True), Specimen.id.in_(records)]
        if flt.search_ids:
            found.append(Specimen.id.in_(list(flt.search_ids)))
        query = query.where(or_(*found))
    if flt.dna is not None:
        marked = select(BarcodeLink.specimen_id).where(BarcodeLink.specimen_id.is_not(None))
        if flt.dna == "disagree":
            marked = marked.where(BarcodeLink.agreement == Agreement.DISAGREE.value)
        else:
            marked = marked.where(BarcodeLink.needs_review.is_(True))
        query = query.where(Specimen.id.in_(marked))
    return query


def _matches(row: SpecimenRow, flt: SpecimenFilter) -> bool:
    """The outcome and family filters, on a resolved row (the SQL of :func:`_filtered` in Python)."""
    if flt.state in OUTCOMES and row.resolution.outcome.value != flt.state:
        return False
    if flt.family:
        shown = row.shown_family
        if shown is None or shown.lower() != flt.family.strip().lower():
            return False
    counted = flt.counted_family
    return counted is None or (row.resolution.family or "").lower() == counted.strip().lower()


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
        flt.family
        or flt.counted_family is not None
        or flt.state
        or flt.p_min is not None
        or flt.p_max is not None
        or flt.model is not None
        or bool(flt.search)
        or flt.dna is not None
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


def _row(r: Any, threshold: float | None) -> SpecimenRow:
    call = call_from_row(r)
    image_id, index, x, y, w, h, length, width, score, um_per_px, image_w, image_h, side = r[10:23]
    return SpecimenRow(
        call.specimen_id,
        image_id,
        index,
        call.sample_id,
        (x, y, w, h),
        length,
        call,
        width_mm=width,
        score=score,
        threshold=threshold,
        um_per_px=um_per_px,
        image_size=(image_w, image_h),
        crop_size=side,
    )


def _resolved(session: Session, flt: SpecimenFilter) -> list[SpecimenRow]:
    """Every row matching ``flt`` in its order, the outcome and family filters applied in Python."""
    rows = (_row(r, flt.threshold) for r in session.execute(_order(_filtered(flt), flt)))
    return [row for row in rows if _matches(row, flt)]


def specimen_page(
    session: Session, flt: SpecimenFilter, *, limit: int, offset: int = 0, count: bool = True
) -> tuple[int | None, list[SpecimenRow]]:
    """``(total, rows)``: one page of specimens matching ``flt`` in its sort order.

    ``total`` is ``None`` when ``count`` is false (the caller only needs the rows).
    """
    if _in_python(flt):
        everything = _resolved(session, flt)
        return (len(everything) if count else None), everything[offset : offset + limit]
    # First the page's ids (the sort and filters need few columns), then the rows of those ids only:
    # deep pages do not drag every skipped row's JSON along.
    ids_query = _order(_filtered(flt), flt).with_only_columns(Specimen.id).limit(limit).offset(offset)
    ids = list(session.scalars(ids_query))
    rows = []
    if ids:
        full, _ = _base(flt)
        by_id = {r[0]: r for r in session.execute(full.where(Specimen.id.in_(ids)))}
        rows = [_row(by_id[i], flt.threshold) for i in ids if i in by_id]
    total = _count(session, flt) if count else None
    return total, rows


def specimen_rows(session: Session, ids: list[int], threshold: float | None = None) -> list[SpecimenRow]:
    """The rows of these specimens (unknown ids are left out), in the order given."""
    wanted = list(dict.fromkeys(int(i) for i in ids))
    if not wanted:
        return []
    full, _ = _base(SpecimenFilter())
    by_id = {r[0]: r for r in session.execute(full.where(Specimen.id.in_(wanted)))}
    return [_row(by_id[i], threshold) for i in wanted if i in by_id]


def image_specimens(session: Session, image_id: int) -> list[SpecimenRow]:
    """Every specimen of one image (the plate view draws them all), in index order."""
    query = _filtered(SpecimenFilter(image_id=image_id)).order_by(Specimen.index_in_image)
    return [_row(r, None) for r in session.execute(query)]


def _window(session: Session, flt: SpecimenFilter, start: int, size: int) -> list[int]:
    if _in_python(flt):
        return [r.specimen_id for r in _resolved(session, flt)[start : start + size]]
    query = _order(_filtered(flt), flt).with_only_columns(Specimen.id).limit(size).offset(start)
    return list(session.scalars(query))


def neighbours(session: Session, flt: SpecimenFilter, specimen_id: int, pos: int) -> dict[str, Any]:
    """Previous and next specimen ids around ``specimen_id``, expected near position ``pos`` of the
    filtered list (the review flow's "next").

    The list may have moved since the link was made (a verified specimen leaves a review queue of
    unverified ones), so the specimen is looked for a few places around ``pos``; when it is no
    longer in the list, the specimens now at ``pos - 1`` and ``pos`` are its neighbours.
    """
    start = max(0, pos - 2)
    window = _window(session, flt, start, 5)
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


def _code_regex(pattern: str, sample_length: int | None = None) -> re.Pattern[str] | None:
    """A regular expression reading a Sample ID made with ``pattern`` back into its fields (the
    sample part ``sample_length`` characters long, or as short as can be), or ``None`` for a
    pattern with a field it cannot read (a number not formatted as decimal).

    >>> _code_regex("{sample}-{image:05d}-{index:03d}").fullmatch("CY-2024-00042-007").groupdict()
    {'sample': 'CY-2024', 'image': '00042', 'index': '007'}
    """
    parts: list[str] = []
    seen: set[str] = set()
    try:
        parsed = list(string.Formatter().parse(pattern))
    except ValueError:
        return None
    for literal, name, spec, conversion in parsed:
        parts.append(re.escape(literal))
        if name is None:
            continue
        if name not in ("sample", "image", "index", "specimen") or conversion:
            return None
        if name in seen:
            parts.append(f"(?P={name})")
            continue
        seen.add(name)
        if name == "sample":
            parts.append(rf"(?P<sample>.{{{sample_length}}})" if sample_length else r"(?P<sample>.+?)")
        elif re.fullmatch(r"0?\d*d?", spec or ""):
            parts.append(rf"(?P<{name}>\d+)")
        else:
            return None
    return re.compile("".join(parts), re.IGNORECASE | re.DOTALL)


def _code_readings(text: str, pattern: str) -> list[dict[str, int]]:
    """Every way ``text`` reads as a Sample ID of ``pattern``: the image, index and specimen numbers
    of each (a sample part may end where a number begins, so each length of it is tried)."""
    first = _code_regex(pattern)
    if first is None or not 0 < len(text) <= _SEARCH_MAX:
        return []
    lengths = range(1, len(text) + 1) if "(?P<sample>" in first.pattern else [None]
    readings: list[dict[str, int]] = []
    for length in lengths:
        regex = _code_regex(pattern, length)
        found = regex.fullmatch(text) if regex is not None else None
        if found is None:
            continue
        numbers = {k: int(v) for k, v in found.groupdict().items() if k != "sample" and v is not None}
        if numbers and all(0 < n < 2**31 for n in numbers.values()) and numbers not in readings:
            readings.append(numbers)
    return readings


def code_search_ids(session: Session, text: str, pattern: str, limit: int = 50) -> tuple[int, ...]:
    """The specimens whose Sample ID (made with ``pattern``, :func:`labpipe.barcoding.ids.specimen_code`)
    is ``text`` (case ignored).

    The text is read back into image, index or specimen numbers, the few specimens with those
    numbers are fetched, and each one's Sample ID is made again and compared: only exact matches
    are returned, whatever the pattern.
    """
    text = text.strip()
    readings = _code_readings(text, pattern)
    if not readings:
        return ()
    columns = {"specimen": Specimen.id, "image": Image.id, "index": Specimen.index_in_image}
    query = (
        select(Specimen.id, Specimen.index_in_image, Image.id, Image.sample_id)
        .join(Image, Image.id == Specimen.image_id)
        .where(or_(*(and_(*(columns[k] == n for k, n in r.items())) for r in readings[:limit])))
        .order_by(Specimen.id)
    )
    wanted = text.casefold()
    return tuple(
        specimen_id
        for specimen_id, index, image_id, sample_id in session.execute(query.limit(limit))
        if specimen_code(sample_id, image_id, index, specimen_id, pattern).casefold() == wanted
    )


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
# Images


@dataclass(frozen=True)
class ImageFilter:
    """Which plate images to list, and in which order."""

    status: str | None = None
    """An :class:`~labpipe.db.models.ImageStatus` value."""
    sample: str | None = None
    unassigned: bool = False
    """Only images that belong to no sample."""
    newest_first: bool = True
    """By id, descending (the UI and the API); else ascending (the CLI)."""

    def __post_init__(self) -> None:
        if self.status is not None:
            ImageStatus(self.status)  # ValueError for a status that does not exist


def image_page(
    session: Session,
    flt: ImageFilter,
    *,
    limit: int | None = None,
    offset: int = 0,
    count: bool = True,
) -> tuple[int | None, list[Image]]:
    """``(total, rows)``: images matching ``flt`` (all of them without ``limit``); ``total`` is
    ``None`` when ``count`` is false."""
    query = select(Image)
    if flt.status is not None:
        query = query.where(Image.status == ImageStatus(flt.status).value)
    if flt.sample is not None:
        query = query.where(Image.sample_id == flt.sample)
    if flt.unassigned:
        query = query.where(Image.sample_id.is_(None))
    total = None
    if count:
        total = int(session.scalar(select(func.count()).select_from(query.subquery())) or 0)
    query = query.order_by(Image.id.desc() if flt.newest_first else Image.id)
    if limit is not None:
        query = query.limit(limit)
    return total, list(session.scalars(query.offset(offset)))


def recent_images(session: Session, limit: int = 15) -> list[Image]:
    """The images changed most recently (any status)."""
    return list(
        session.scalars(select(Image).order_by(Image.updated_at.desc(), Image.id.desc()).limit(limit))
    )


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

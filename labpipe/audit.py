"""The audit trail: every change to people's work is an :class:`~labpipe.db.models.AuditEvent`.

Who, what, when, and the values before and after. Box edits and verifications write one event
each; :func:`undo` reverts an event from its stored ``before`` (a box goes back to its previous
coordinates, a verification is retracted: it stays as history but no longer counts) and writes an
``undo`` event of its own, so an undo can be traced, too.

The functions here flush, never commit: the caller's transaction decides.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from labpipe.db.models import Agreement, AuditEvent, BarcodeLink, Image, Specimen, Verification, utcnow
from labpipe.errors import LabpipeError
from labpipe.samples import NotFoundError

__all__ = [
    "AuditError",
    "AuditNotFoundError",
    "box_snapshot",
    "edit_box",
    "events_for",
    "mark_boxes_reviewed",
    "record_event",
    "record_undo",
    "restore_box",
    "specimen_snapshot",
    "undo",
]


class AuditError(LabpipeError):
    """An edit or undo that cannot be done (bad box, already undone, nothing to undo)."""


class AuditNotFoundError(AuditError, NotFoundError):
    """The specimen or event named does not exist."""


def record_event(
    session: Session,
    *,
    actor: str,
    action: str,
    specimen_id: int | None = None,
    image_id: int | None = None,
    model_id: int | None = None,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    note: str | None = None,
    at: dt.datetime | None = None,
) -> AuditEvent:
    """Append one event (flushed, so it has its id)."""
    event = AuditEvent(
        at=at or utcnow(),
        actor=" ".join(str(actor or "unknown").split())[:255] or "unknown",
        action=action,
        specimen_id=specimen_id,
        image_id=image_id,
        model_id=model_id,
        before=before,
        after=after,
        note=note,
    )
    session.add(event)
    session.flush()
    return event


def box_snapshot(specimen: Specimen) -> dict[str, Any]:
    """The specimen's box and who last edited it, as an audit event keeps it (JSON)."""
    return {
        "box": [specimen.x, specimen.y, specimen.w, specimen.h],
        "box_edited_by": specimen.box_edited_by,
        "box_edited_at": specimen.box_edited_at.isoformat() if specimen.box_edited_at else None,
    }


def restore_box(specimen: Specimen, snapshot: dict[str, Any]) -> None:
    """Put back a box saved by :func:`box_snapshot` (an undo)."""
    specimen.x, specimen.y, specimen.w, specimen.h = (int(v) for v in snapshot["box"])
    specimen.box_edited_by = snapshot.get("box_edited_by")
    edited_at = snapshot.get("box_edited_at")
    specimen.box_edited_at = dt.datetime.fromisoformat(edited_at) if edited_at else None


def specimen_snapshot(session: Session, specimen: Specimen) -> dict[str, Any]:
    """Everything a person attached to ``specimen``, as JSON (kept in the trail when it is dropped)."""
    links = session.scalars(select(BarcodeLink).where(BarcodeLink.specimen_id == specimen.id)).all()
    return {
        **box_snapshot(specimen),
        "index_in_image": specimen.index_in_image,
        "crop_path": specimen.crop_path,
        "verifications": [
            {
                "status": v.status,
                "family": v.family,
                "verified_by": v.verified_by,
                "verified_at": v.verified_at.isoformat() if v.verified_at else None,
                "note": v.note,
                "retracted_at": v.retracted_at.isoformat() if v.retracted_at else None,
            }
            for v in specimen.verifications
        ],
        "barcode_links": [
            {"id": b.id, "plate": b.plate, "well": b.well, "sampleid": b.sampleid, "bin_uri": b.bin_uri}
            for b in links
        ],
    }


def edit_box(
    session: Session,
    specimen_id: int,
    box: tuple[int, int, int, int],
    *,
    edited_by: str,
    note: str | None = None,
) -> AuditEvent:
    """Set a specimen's box by hand (full-resolution pixels ``x, y, w, h``), keeping the old one in
    the trail. A re-run keeps a person's box. The crop is not re-cut here (the caller may)."""
    specimen = session.get(Specimen, specimen_id)
    if specimen is None:
        raise AuditNotFoundError(f"specimen {specimen_id}", "no such specimen", "check the id")
    x, y, w, h = (int(v) for v in box)
    if w <= 0 or h <= 0 or x < 0 or y < 0:
        raise AuditError(str(list(box)), "a box needs x, y >= 0 and a positive width and height")
    image = specimen.image
    if image.width and image.height and (x + w > image.width or y + h > image.height):
        raise AuditError(
            str(list(box)),
            f"the box leaves the image ({image.width} x {image.height} px)",
            "give the box in full-resolution pixels of the displayed image",
        )
    who = " ".join(str(edited_by or "").split())
    if not who:
        raise AuditError("edited_by", "a box edit needs the name of the person", "log in with a name")
    before = box_snapshot(specimen)
    now = utcnow()
    specimen.x, specimen.y, specimen.w, specimen.h = x, y, w, h
    specimen.box_edited_by, specimen.box_edited_at = who[:255], now
    return record_event(
        session,
        actor=who,
        action="box_edit",
        specimen_id=specimen.id,
        image_id=specimen.image_id,
        before=before,
        after=box_snapshot(specimen),
        note=note,
        at=now,
    )


def _reviewed(image: Image) -> dict[str, Any]:
    at = image.boxes_reviewed_at
    return {"boxes_reviewed_by": image.boxes_reviewed_by, "boxes_reviewed_at": at.isoformat() if at else None}


def mark_boxes_reviewed(
    session: Session, image_id: int, *, by: str, reviewed: bool = True, note: str | None = None
) -> AuditEvent:
    """Mark a plate's boxes reviewed (every specimen on it checked by a person, none missing), or
    take the mark off (``reviewed=False``). One ``boxes_reviewed`` or ``boxes_unreviewed`` event
    keeps the values before and after; :func:`undo` restores the previous mark. Marking a marked
    plate again renews the name and time (an event, too)."""
    image = session.get(Image, image_id)
    if image is None:
        raise AuditNotFoundError(f"image {image_id}", "no such image", "check the id")
    who = " ".join(str(by or "").split())
    if not who:
        raise AuditError("by", "marking a plate needs the name of the person", "log in with a name")
    if not reviewed and image.boxes_reviewed_at is None:
        raise AuditError(f"image {image_id}", "the plate is not marked boxes reviewed")
    before = _reviewed(image)
    now = utcnow()
    image.boxes_reviewed_by, image.boxes_reviewed_at = (who[:255], now) if reviewed else (None, None)
    return record_event(
        session,
        actor=who,
        action="boxes_reviewed" if reviewed else "boxes_unreviewed",
        image_id=image.id,
        before=before,
        after=_reviewed(image),
        note=note,
        at=now,
    )


def events_for(session: Session, specimen_id: int) -> list[AuditEvent]:
    """A specimen's trail, newest first."""
    return list(
        session.scalars(
            select(AuditEvent)
            .where(AuditEvent.specimen_id == specimen_id)
            .order_by(AuditEvent.at.desc(), AuditEvent.id.desc())
        )
    )


def _mark_for_review_again(session: Session, verification: Verification, link_ids: Any) -> list[int]:
    """The barcode records a retracted verification had taken off the review list (``link_ids``,
    kept in its event's ``before``) go back on it, when they still disagree and belong to the
    specimen and no other verification of the specimen still counts. Returns those marked."""
    if not isinstance(link_ids, list) or not link_ids:
        return []
    still_verified = session.scalar(
        select(Verification.id).where(
            Verification.specimen_id == verification.specimen_id,
            Verification.retracted_at.is_(None),
            Verification.id != verification.id,
        )
    )
    if still_verified is not None:
        return []
    links = session.scalars(
        select(BarcodeLink).where(
            BarcodeLink.id.in_([int(i) for i in link_ids]),
            BarcodeLink.specimen_id == verification.specimen_id,
            BarcodeLink.agreement == Agreement.DISAGREE.value,
        )
    ).all()
    for link in links:
        link.needs_review = True
    return sorted(link.id for link in links)


def record_undo(
    session: Session,
    event: AuditEvent,
    *,
    actor: str,
    before: dict[str, Any] | None,
    after: dict[str, Any],
    specimen_id: int | None = None,
) -> AuditEvent:
    """Record the ``undo`` event of ``event`` (who, and the values before and after) and mark
    ``event`` undone by it; flushed, not committed. ``specimen_id`` defaults to the event's."""
    undo_event = record_event(
        session,
        actor=actor,
        action="undo",
        specimen_id=event.specimen_id if specimen_id is None else specimen_id,
        image_id=event.image_id,
        before=before,
        after=after,
    )
    event.undone_by = undo_event.id
    session.flush()
    return undo_event


def undo(session: Session, event_id: int, *, undone_by: str) -> AuditEvent:
    """Revert one ``box_edit``, ``verify``, ``boxes_reviewed`` or ``boxes_unreviewed`` event;
    returns the ``undo`` event.

    A box goes back to the value before the edit (refused when the box was edited again since:
    undo the later edit first). A verification is retracted; the barcode records it had taken off
    the review list (image and DNA disagree) go back on it, unless another verification of the
    specimen still counts. A plate's boxes-reviewed mark goes back to what it was (refused when the
    mark changed again since).
    """
    event = session.get(AuditEvent, event_id)
    if event is None:
        raise AuditNotFoundError(f"event {event_id}", "no such audit event", "list a specimen's events first")
    if event.undone_by is not None:
        raise AuditError(f"event {event_id}", f"already undone by event {event.undone_by}")
    who = " ".join(str(undone_by or "").split())
    if not who:
        raise AuditError("undone_by", "an undo needs the name of the person")
    if event.action == "box_edit":
        specimen = session.get(Specimen, event.specimen_id) if event.specimen_id else None
        if specimen is None:
            raise AuditError(f"event {event_id}", "its specimen no longer exists")
        later = session.scalar(
            select(AuditEvent.id).where(
                AuditEvent.specimen_id == specimen.id,
                AuditEvent.action == "box_edit",
                AuditEvent.id > event.id,
                AuditEvent.undone_by.is_(None),
            )
        )
        if later is not None:
            raise AuditError(
                f"event {event_id}", f"the box was edited again (event {later})", "undo that first"
            )
        before = event.before or {}
        current = box_snapshot(specimen)
        restore_box(specimen, before)
        after = box_snapshot(specimen)
    elif event.action == "verify":
        verification_id = (event.after or {}).get("verification_id")
        verification = session.get(Verification, verification_id) if verification_id else None
        if verification is None:
            raise AuditError(f"event {event_id}", "its verification no longer exists")
        current = {"retracted_at": None}
        verification.retracted_at, verification.retracted_by = utcnow(), who[:255]
        after = {"verification_id": verification.id, "retracted_at": verification.retracted_at.isoformat()}
        marked = _mark_for_review_again(session, verification, (event.before or {}).get("needs_review"))
        if marked:
            after["needs_review"] = marked
    elif event.action in ("boxes_reviewed", "boxes_unreviewed"):
        image = session.get(Image, event.image_id) if event.image_id else None
        if image is None:
            raise AuditError(f"event {event_id}", "its image no longer exists")
        later = session.scalar(
            select(AuditEvent.id).where(
                AuditEvent.image_id == image.id,
                AuditEvent.action.in_(("boxes_reviewed", "boxes_unreviewed")),
                AuditEvent.id > event.id,
                AuditEvent.undone_by.is_(None),
            )
        )
        if later is not None:
            raise AuditError(
                f"event {event_id}", f"the plate's mark changed again (event {later})", "undo that first"
            )
        current = _reviewed(image)
        before = event.before or {}
        at = before.get("boxes_reviewed_at")
        image.boxes_reviewed_by = before.get("boxes_reviewed_by")
        image.boxes_reviewed_at = dt.datetime.fromisoformat(at) if at else None
        after = _reviewed(image)
    else:
        raise AuditError(
            f"event {event_id}",
            f"a {event.action!r} event cannot be undone",
            "undo box edits, verifications or a plate's boxes-reviewed mark",
        )
    return record_undo(session, event, actor=who, before=current, after={**after, "undid": event.id})

"""Box editing on the plate view: draw a box round a missed specimen, delete a false detection,
split a box that holds several specimens, resize a box; each one audit event that can be undone.

* **add**: a new specimen (``detection_state`` ``drawn``, the next number on its plate), its crop
  cut from full resolution and classified at once (``box_add``).
* **delete**: a ``not_specimen`` verdict (a ``verify`` event): the row stays, hidden from the plate's
  boxes and from every count, and it is a negative for training; undo retracts the verdict.
* **split**: the merged box becomes the first part (its crop cut again and classified; the
  verdicts it had are retracted, they were about several specimens) and every other part becomes a
  new drawn specimen; one ``box_split`` event, so one undo reverts the whole split.
* **resize**: :func:`labpipe.audit.edit_box`, then the crop is cut again and classified.

Undo (:func:`undo_edit`) reverts any of these and cuts the crop again where a box changed back.
Crops and classification use :func:`labpipe.analysis.cut_square` (the pipeline's cut) and the
classifier in use now (:func:`labpipe.active_models.active_classifier`). Functions flush; the
caller commits (and then calls :func:`remove_files` for crops no row points at any more).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from labpipe.analysis import cut_square
from labpipe.audit import (
    AuditError,
    AuditNotFoundError,
    box_snapshot,
    edit_box,
    record_event,
    record_undo,
    restore_box,
)
from labpipe.audit import undo as audit_undo
from labpipe.classify.base import FamilyClassifier
from labpipe.config import Settings
from labpipe.crops import save_crop
from labpipe.db.models import (
    AuditEvent,
    Classification,
    DetectionState,
    Image,
    Specimen,
    Verification,
    VerificationStatus,
    utcnow,
)
from labpipe.imaging import open_image
from labpipe.queries.boxes import (
    image_or_none,
    latest_event,
    next_index,
    specimen_classification,
    taken_crop_paths,
)
from labpipe.record import _free_crop_path, classifier_rule, ensure_classifier_model
from labpipe.review import record_verification

__all__ = ["BoxEditResult", "add_box", "delete_box", "remove_files", "resize_box", "split_box", "undo_edit"]

NEW_CROPS = "labpipe.box_edits.new_crops"
"""``session.info`` key: crop files written by this transaction (to delete if it rolls back)."""

ClassifierSource = Callable[[], FamilyClassifier]


@dataclass
class BoxEditResult:
    """What an edit did: its event, the specimens whose box is new or changed (to draw), those no
    longer shown, and crop files to delete after the commit."""

    event: AuditEvent
    shown: list[Specimen] = field(default_factory=list)
    hidden: list[int] = field(default_factory=list)
    old_files: list[Path] = field(default_factory=list)
    seconds: float = 0.0


def _who(name: str | None) -> str:
    who = " ".join(str(name or "").split())
    if not who:
        raise AuditError("name", "a box edit needs the name of the person", "log in with a name")
    return who[:255]


def _check_box(image: Image, box: Sequence[int]) -> tuple[int, int, int, int]:
    if len(box) != 4:
        raise AuditError(str(list(box)), "a box is four numbers: x, y, w, h")
    x, y, w, h = (int(v) for v in box)
    if w < 2 or h < 2 or x < 0 or y < 0:
        raise AuditError(str(list(box)), "a box needs x, y >= 0 and a width and height of 2 px or more")
    if image.width and image.height and (x + w > image.width or y + h > image.height):
        raise AuditError(str(list(box)), f"the box leaves the image ({image.width} x {image.height} px)")
    return x, y, w, h


def recut_and_classify(
    session: Session, specimens: Sequence[Specimen], settings: Settings, classifier: FamilyClassifier
) -> list[Path]:
    """Cut each specimen's crop again from the full-resolution plate, store it at a fresh path and
    classify it with ``classifier`` (its row for that model is replaced). Returns the old crop files."""
    if not specimens:
        return []
    image = specimens[0].image
    from labpipe.web.media import image_file

    path = image_file(image, settings)
    if path is None:
        raise AuditError(
            f"image {image.id}",
            "the plate file is no longer in the storage folders",
            "the crop cannot be cut",
        )
    cfg = settings
    crops_dir = settings.storage.crops_dir
    squares = []
    with open_image(
        path,
        um_per_px_fallback=cfg.um_per_px_fallback,
        max_pixels=cfg.imaging.max_pixels,
        max_decoded_pixels=cfg.imaging.max_decoded_pixels,
        tile_cache_mb=cfg.imaging.tile_cache_mb,
    ) as plate:
        for s in specimens:
            squares.append(cut_square(plate, (s.x, s.y, s.w, s.h), cfg.crops.margin))
    results = classifier.classify(squares)
    model_id = ensure_classifier_model(session, classifier).id
    rule = classifier_rule(classifier)
    taken = taken_crop_paths(session, image.id)
    old: list[Path] = []
    scale_mm = image.um_per_px / 1000.0 if image.um_per_px else None
    for s, square, res in zip(specimens, squares, results, strict=True):
        rel = _free_crop_path(crops_dir, image, s.id, taken)
        save_crop(square, crops_dir / rel)
        session.info.setdefault(NEW_CROPS, []).append(crops_dir / rel)
        taken.add(rel.as_posix())
        if s.crop_path:
            old.append(crops_dir / s.crop_path)
        s.crop_path, s.crop_size = rel.as_posix(), int(square.shape[0])
        s.length_mm = max(s.w, s.h) * scale_mm if scale_mm else None
        s.width_mm = min(s.w, s.h) * scale_mm if scale_mm else None
        row = specimen_classification(session, s.id, model_id) or Classification(
            specimen_id=s.id, model_id=model_id
        )
        row.family, row.probability, row.rejected, row.reason = (
            res.family,
            res.probability,
            res.rejected,
            res.reason,
        )
        row.top_k = [[f, p] for f, p in res.top]
        row.threshold, row.rule, row.decided_at = rule.get("threshold"), rule or None, utcnow()
        session.add(row)
    session.flush()
    return old


def _new_specimen(session: Session, image: Image, box: tuple[int, int, int, int], who: str) -> Specimen:
    x, y, w, h = box
    specimen = Specimen(
        image_id=image.id,
        index_in_image=next_index(session, image.id),
        x=x,
        y=y,
        w=w,
        h=h,
        score=1.0,
        detector_version="drawn",
        detection_state=DetectionState.DRAWN.value,
        box_edited_by=who,
        box_edited_at=utcnow(),
        crop_path="",
        crop_size=0,
    )
    session.add(specimen)
    session.flush()
    return specimen


def add_box(
    session: Session,
    image_id: int,
    box: Sequence[int],
    *,
    edited_by: str,
    settings: Settings,
    classifier: ClassifierSource,
) -> BoxEditResult:
    """A box drawn round a missed specimen: a new ``drawn`` specimen, cropped and classified."""
    image = image_or_none(session, image_id)
    if image is None:
        raise AuditNotFoundError(f"image {image_id}", "no such image")
    who = _who(edited_by)
    clean = _check_box(image, box)
    specimen = _new_specimen(session, image, clean, who)
    old = recut_and_classify(session, [specimen], settings, classifier())
    event = record_event(
        session,
        actor=who,
        action="box_add",
        specimen_id=specimen.id,
        image_id=image.id,
        after={"box": list(clean), "index_in_image": specimen.index_in_image},
    )
    return BoxEditResult(event, shown=[specimen], old_files=old)


def _specimen(session: Session, specimen_id: int) -> Specimen:
    specimen = session.get(Specimen, specimen_id)
    if specimen is None:
        raise AuditNotFoundError(f"specimen {specimen_id}", "no such specimen")
    return specimen


def delete_box(session: Session, specimen_id: int, *, edited_by: str) -> BoxEditResult:
    """A false detection: a ``not_specimen`` verdict (the row stays; undo retracts it)."""
    specimen = _specimen(session, specimen_id)
    who = _who(edited_by)
    verification = record_verification(
        session,
        specimen.id,
        VerificationStatus.NOT_SPECIMEN.value,
        verified_by=who,
        note="deleted on the plate view",
    )
    event = latest_event(session, specimen.id, "verify")
    if event is None or (event.after or {}).get("verification_id") != verification.id:
        raise AuditError(f"specimen {specimen.id}", "the verdict was not recorded in the audit trail")
    return BoxEditResult(event, hidden=[specimen.id])


def resize_box(
    session: Session,
    specimen_id: int,
    box: Sequence[int],
    *,
    edited_by: str,
    settings: Settings,
    classifier: ClassifierSource,
) -> BoxEditResult:
    """Edges dragged to fit: :func:`labpipe.audit.edit_box`, then the crop is cut again and classified."""
    specimen = _specimen(session, specimen_id)
    clean = _check_box(specimen.image, box)
    event = edit_box(session, specimen.id, clean, edited_by=_who(edited_by), note="resized on the plate view")
    old = recut_and_classify(session, [specimen], settings, classifier())
    return BoxEditResult(event, shown=[specimen], old_files=old)


def split_box(
    session: Session,
    specimen_id: int,
    boxes: Sequence[Sequence[int]],
    *,
    edited_by: str,
    settings: Settings,
    classifier: ClassifierSource,
) -> BoxEditResult:
    """A box holding several specimens replaced by ``boxes`` (two or more): the first part keeps the
    specimen (its verdicts, about several specimens, are retracted), the others are new drawn
    specimens; all cropped and classified; one ``box_split`` event."""
    specimen = _specimen(session, specimen_id)
    who = _who(edited_by)
    if len(boxes) < 2:
        raise AuditError(str(list(boxes)), "a split needs two boxes or more")
    clean = [_check_box(specimen.image, b) for b in boxes]
    before = {**box_snapshot(specimen), "detection_state": specimen.detection_state}
    now = utcnow()
    retracted = []
    for v in specimen.verifications:
        if v.retracted_at is None:
            v.retracted_at, v.retracted_by = now, who
            retracted.append(v.id)
    specimen.x, specimen.y, specimen.w, specimen.h = clean[0]
    specimen.box_edited_by, specimen.box_edited_at = who, now
    new = [_new_specimen(session, specimen.image, b, who) for b in clean[1:]]
    old = recut_and_classify(session, [specimen, *new], settings, classifier())
    event = record_event(
        session,
        actor=who,
        action="box_split",
        specimen_id=specimen.id,
        image_id=specimen.image_id,
        before={**before, "retracted": retracted},
        after={"boxes": [list(b) for b in clean], "new_specimens": [s.id for s in new]},
        note=f"a box of {len(clean)} specimens (multiple) split on the plate view",
        at=now,
    )
    return BoxEditResult(event, shown=[specimen, *new], old_files=old)


def _drop(session: Session, specimen: Specimen, settings: Settings) -> list[Path]:
    files = [settings.storage.crops_dir / specimen.crop_path] if specimen.crop_path else []
    session.delete(specimen)
    return files


def undo_edit(
    session: Session, event_id: int, *, undone_by: str, settings: Settings, classifier: ClassifierSource
) -> BoxEditResult:
    """Undo one plate-view edit (``box_add``, ``box_split``, ``box_edit``, a ``verify``)."""
    event = session.get(AuditEvent, event_id)
    if event is None:
        raise AuditNotFoundError(f"event {event_id}", "no such audit event")
    who = _who(undone_by)
    if event.undone_by is not None:
        raise AuditError(f"event {event_id}", f"already undone by event {event.undone_by}")
    if event.action in ("box_edit", "verify"):
        undo_event = audit_undo(session, event_id, undone_by=who)
        specimen = session.get(Specimen, event.specimen_id) if event.specimen_id else None
        result = BoxEditResult(undo_event)
        if specimen is not None:
            session.refresh(specimen)
            hidden = _is_hidden(specimen)
            (result.hidden if hidden else result.shown).append(specimen.id if hidden else specimen)
            if event.action == "box_edit":
                result.old_files = recut_and_classify(session, [specimen], settings, classifier())
        return result
    if event.action == "box_add":
        specimen = session.get(Specimen, event.specimen_id) if event.specimen_id else None
        files = _drop(session, specimen, settings) if specimen is not None else []
        undo_event = record_undo(
            session,
            event,
            actor=who,
            before=event.after,
            after={"undid": event.id, "removed": event.specimen_id},
        )
        return BoxEditResult(undo_event, hidden=[event.specimen_id or 0], old_files=files)
    if event.action == "box_split":
        specimen = _specimen(session, event.specimen_id or 0)
        before, after = event.before or {}, event.after or {}
        files: list[Path] = []
        for sid in after.get("new_specimens", []):
            row = session.get(Specimen, sid)
            if row is not None:
                files += _drop(session, row, settings)
        restore_box(specimen, before)
        for vid in before.get("retracted", []):
            v = session.get(Verification, vid)
            if v is not None:
                v.retracted_at, v.retracted_by = None, None
        session.flush()
        files += recut_and_classify(session, [specimen], settings, classifier())
        undo_event = record_undo(
            session,
            event,
            actor=who,
            before=after,
            after={"undid": event.id, "box": before["box"]},
            specimen_id=specimen.id,
        )
        return BoxEditResult(
            undo_event, shown=[specimen], hidden=list(after.get("new_specimens", [])), old_files=files
        )
    raise AuditError(f"event {event_id}", f"a {event.action!r} event is not a plate-view edit")


def _is_hidden(specimen: Specimen) -> bool:
    live = [v for v in specimen.verifications if v.retracted_at is None]
    if not live:
        return False
    latest = max(live, key=lambda v: (v.verified_at, v.id))
    return latest.status == VerificationStatus.NOT_SPECIMEN.value


def remove_files(paths: Sequence[Path], settings: Settings) -> None:
    """Delete crop files no row points at any more (only inside the crops folder); after the commit."""
    root = settings.storage.crops_dir.resolve()
    for p in paths:
        try:
            if p.resolve().is_relative_to(root) and p.is_file():
                p.unlink()
        except OSError:
            pass


def shown_box(specimen: Specimen) -> dict[str, Any]:
    return {
        "id": specimen.id,
        "index": specimen.index_in_image,
        "box": [specimen.x, specimen.y, specimen.w, specimen.h],
    }

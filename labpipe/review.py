"""Human review of specimens: record verifications (one or many), and export the verified crops as a
training folder for the next model.

A verification is a row of its own (:class:`~labpipe.db.models.Verification`): who, when, what
they said. Nothing is overwritten; the latest verification of a specimen that is not retracted
wins over every prediction in the counts (which one is :mod:`labpipe.queries.calls`, how it counts
:func:`labpipe.queries.rule.resolve`). The four verdicts:

==============  ===========================================================================
``confirmed``   the model's family is right (``family`` may repeat it, or stay empty)
``corrected``   the family is ``family`` instead (required)
``not_specimen`` debris, a shadow, a label: excluded from every count
``multiple``    the box holds several specimens (counted once; ``family`` optional)
==============  ===========================================================================

Every family a person gives must be a name this lab knows (:mod:`labpipe.families`: the shipped
list of arthropod families, a registered model's labels, or the lab's own list); it is stored in
the listed spelling (``"carabidae "`` becomes ``Carabidae``). Anything else, a typo such as
``Carbidae``, is refused with the closest known names (:class:`UnknownFamilyError`), so it never
reaches the counts, the plate legend or a training folder. A truly new name is recorded only with
``add_family=True``, which also adds it to the lab's list.

:func:`export_training_folder` writes ``OUT/<Family>/<file>.png``: every specimen whose latest
verification names a family (confirmed or corrected), the crop copied as is, plus ``labels.csv``
(one row per file: who verified it and when). That is the layout ``labpipe train classifier``
reads.
"""

from __future__ import annotations

import datetime as dt
import shutil
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from labpipe.crops.store import safe_component
from labpipe.db.models import BarcodeLink, Image, Specimen, Verification, VerificationStatus, utcnow
from labpipe.errors import LabpipeError
from labpipe.families import FamilyListError, accepted_families, add_lab_family, check_new_family_name
from labpipe.queries.calls import best_families, latest_verifications
from labpipe.queries.records import existing_specimen_ids
from labpipe.reports.cells import SafeCsvWriter
from labpipe.samples import NotFoundError

__all__ = [
    "MAX_BULK",
    "ReviewError",
    "TrainingExport",
    "UnknownFamilyError",
    "UnknownSpecimenError",
    "VerificationBatch",
    "export_training_folder",
    "record_verification",
    "record_verification_batch",
    "record_verifications",
    "undo_verifications",
]

MAX_BULK = 1000
"""Most specimens one bulk verification may touch (a page of the gallery is far fewer)."""

_FAMILY_MAX = 128
_NAME_MAX = 255


class ReviewError(LabpipeError):
    """A verification that cannot be recorded (unknown specimen, missing family, bad verdict)."""


class UnknownSpecimenError(ReviewError, NotFoundError):
    """A verification names a specimen that does not exist (HTTP 404)."""


class UnknownFamilyError(ReviewError):
    """A family that is not a name this lab knows: a typo, or a new name not yet confirmed."""

    def __init__(self, family: str, suggestions: Sequence[str]) -> None:
        self.family = family
        self.suggestions = list(suggestions)
        confirm = (
            f"to add {family} as a new name, confirm it: tick 'add to the list' in the web form, "
            'or send "add_family": true to the API'
        )
        if self.suggestions:
            best, *others = self.suggestions
            also = f" (or {', '.join(others)})" if others else ""
            hint = f"did you mean {best}{also}? {confirm[0].upper()}{confirm[1:]}"
        else:
            hint = f"check the spelling; {confirm}"
        super().__init__(family, "not a family known to this lab", hint)


@dataclass(frozen=True)
class VerificationBatch:
    """What :func:`record_verification_batch` recorded: the verifications and their audit events."""

    verifications: list[Verification]
    event_ids: list[int]
    """The ``verify`` events, one per verification in the same order (what an Undo reverts)."""


def _clean_family(family: str | None) -> str | None:
    """Trim, collapse inner whitespace; empty becomes ``None``.

    >>> _clean_family("  Carabidae "), _clean_family(""), _clean_family("Leaf  beetles")
    ('Carabidae', None, 'Leaf beetles')
    """
    if family is None:
        return None
    text = " ".join(str(family).split())
    return text or None


def _check(status: str, family: str | None, verified_by: str) -> tuple[VerificationStatus, str | None, str]:
    try:
        verdict = VerificationStatus(status)
    except ValueError:
        known = ", ".join(v.value for v in VerificationStatus)
        raise ReviewError(status, "not a verdict", f"use one of {known}") from None
    family = _clean_family(family)
    if verdict is VerificationStatus.CORRECTED and family is None:
        raise ReviewError("corrected", "a correction needs the right family", "pick or type the family")
    if verdict is VerificationStatus.NOT_SPECIMEN:
        family = None  # debris has no family: whatever was typed is dropped
    if family is not None and len(family) > _FAMILY_MAX:
        raise ReviewError(family[:40] + "...", f"family longer than {_FAMILY_MAX} characters")
    who = " ".join(str(verified_by or "").split())
    if not who:
        raise ReviewError("verified_by", "a verification needs the name of the person", "log in with a name")
    return verdict, family, who[:_NAME_MAX]


def record_verification_batch(
    session: Session,
    specimen_ids: Iterable[int],
    status: str,
    *,
    family: str | None = None,
    verified_by: str,
    note: str | None = None,
    at: dt.datetime | None = None,
    families_file: Path | None = None,
    add_family: bool = False,
) -> VerificationBatch:
    """Add one verification per specimen (all with the same verdict, person and time), each with its
    ``verify`` event in the audit trail; flushed, not committed.

    Parameters
    ----------
    specimen_ids:
        The specimens (duplicates are verified once); at most :data:`MAX_BULK`.
    status:
        A :class:`~labpipe.db.models.VerificationStatus` value.
    family:
        The family: required for ``corrected``, optional for ``confirmed`` and ``multiple``,
        ignored for ``not_specimen``. It must be a name this lab knows (case and spacing are
        ignored; the listed spelling is stored).
    verified_by, note, at:
        Who, why, and when (default: now, UTC).
    families_file:
        The lab's own list of family names (``Settings.families_path``); ``None``: only the
        shipped list and the registered models' labels are known.
    add_family:
        The person confirms that ``family`` is a new name: it is recorded and appended to
        ``families_file`` (created with a header if missing). Without it an unknown name is refused.

    Raises
    ------
    UnknownFamilyError
        The family is not a known name (and ``add_family`` is not given); it carries the closest
        known names.
    UnknownSpecimenError
        An id that is no specimen.
    ReviewError
        Unknown verdict, a correction without a family, no name, too many specimens, a new name that
        cannot be a family name or cannot be added. Whatever is refused, nothing is added.

    A specimen's barcode records that were waiting for review (``needs_review``) are marked
    reviewed: a person has now looked at it. Their ids are kept in the event's ``before``
    (``needs_review``), so that undoing the verification marks them again.
    """
    verdict, family, who = _check(status, family, verified_by)
    ids = list(dict.fromkeys(int(i) for i in specimen_ids))
    if not ids:
        raise ReviewError(None, "no specimen selected", "tick at least one specimen")
    if len(ids) > MAX_BULK:
        raise ReviewError(None, f"{len(ids)} specimens selected, at most {MAX_BULK} at once")
    family, new_name = _known_family(session, family, families_file, add_family=add_family)
    found = existing_specimen_ids(session, ids)
    missing = [i for i in ids if i not in found]
    if missing:
        raise UnknownSpecimenError(
            f"specimen {missing[0]}", "no such specimen", "it may have been re-processed"
        )
    if new_name is not None and families_file is not None:
        try:
            add_lab_family(families_file, new_name, added_by=who)
        except FamilyListError as exc:
            raise ReviewError(exc.subject, exc.problem, exc.hint) from exc
    when = at or utcnow()
    note = (note or "").strip() or None
    rows = [
        Verification(
            specimen_id=i, status=verdict.value, family=family, verified_by=who, verified_at=when, note=note
        )
        for i in ids
    ]
    session.add_all(rows)
    waiting: dict[int, list[int]] = {}
    for link_id, specimen_id in session.execute(
        select(BarcodeLink.id, BarcodeLink.specimen_id).where(
            BarcodeLink.specimen_id.in_(ids), BarcodeLink.needs_review.is_(True)
        )
    ):
        waiting.setdefault(specimen_id, []).append(link_id)
    session.execute(
        update(BarcodeLink)
        .where(BarcodeLink.specimen_id.in_(ids), BarcodeLink.needs_review.is_(True))
        .values(needs_review=False)
    )
    session.flush()
    from labpipe.audit import record_event

    image_of = dict(session.execute(select(Specimen.id, Specimen.image_id).where(Specimen.id.in_(ids))).all())
    events = []
    for row in rows:
        marks = sorted(waiting.get(row.specimen_id, []))
        event = record_event(
            session,
            actor=who,
            action="verify",
            specimen_id=row.specimen_id,
            image_id=image_of.get(row.specimen_id),
            before={"needs_review": marks} if marks else None,
            after={"verification_id": row.id, "status": row.status, "family": row.family},
            note=note,
            at=when,
        )
        events.append(event.id)
    return VerificationBatch(rows, events)


def record_verifications(
    session: Session,
    specimen_ids: Iterable[int],
    status: str,
    *,
    family: str | None = None,
    verified_by: str,
    note: str | None = None,
    at: dt.datetime | None = None,
    families_file: Path | None = None,
    add_family: bool = False,
) -> list[Verification]:
    """The verifications of :func:`record_verification_batch` (same arguments, same rules)."""
    return record_verification_batch(
        session,
        specimen_ids,
        status,
        family=family,
        verified_by=verified_by,
        note=note,
        at=at,
        families_file=families_file,
        add_family=add_family,
    ).verifications


def undo_verifications(session: Session, event_ids: Iterable[int], *, undone_by: str) -> int:
    """Undo a batch of ``verify`` events of ``undone_by`` (the Undo after a bulk verdict): each
    verification is retracted (:func:`labpipe.audit.undo`), so the verdict before it, or the model's
    call, counts again. Events already undone are passed over; returns how many were undone now.
    Flushed, not committed.

    Raises
    ------
    ReviewError
        An event that does not exist, is no verification, or is someone else's (each person undoes
        their own); or nothing left to undo. Nothing is undone then.
    """
    from labpipe.audit import AuditError, undo
    from labpipe.db.models import AuditEvent

    who = " ".join(str(undone_by or "").split())[:_NAME_MAX]
    ids = list(dict.fromkeys(int(i) for i in event_ids))
    if not ids:
        raise ReviewError(None, "nothing to undo")
    if len(ids) > MAX_BULK:
        raise ReviewError(None, f"{len(ids)} verdicts to undo, at most {MAX_BULK} at once")
    events = {e.id: e for e in session.scalars(select(AuditEvent).where(AuditEvent.id.in_(ids)))}
    for event_id in ids:
        event = events.get(event_id)
        if event is None or event.action != "verify":
            raise ReviewError(f"event {event_id}", "no verification to undo")
        if event.actor != who:
            raise ReviewError(
                f"event {event_id}", f"recorded by {event.actor}, not by {who}", "undo your own verdicts"
            )
    pending = [i for i in ids if events[i].undone_by is None]
    if not pending:
        raise ReviewError(None, "already undone", "reload the page to see the verdicts as they are")
    try:
        for event_id in pending:
            undo(session, event_id, undone_by=who)
    except AuditError as exc:
        raise ReviewError(exc.subject, exc.problem, exc.hint) from exc
    return len(pending)


def record_verification(
    session: Session,
    specimen_id: int,
    status: str,
    *,
    family: str | None = None,
    verified_by: str,
    note: str | None = None,
    at: dt.datetime | None = None,
    families_file: Path | None = None,
    add_family: bool = False,
) -> Verification:
    """One specimen's verification (see :func:`record_verifications`); flushed, not committed."""
    (row,) = record_verifications(
        session,
        [specimen_id],
        status,
        family=family,
        verified_by=verified_by,
        note=note,
        at=at,
        families_file=families_file,
        add_family=add_family,
    )
    return row


def _known_family(
    session: Session, family: str | None, families_file: Path | None, *, add_family: bool
) -> tuple[str | None, str | None]:
    """``(family to store, new name to add to the lab's list or None)``; see :func:`record_verifications`."""
    if family is None:
        return None, None
    try:
        known = accepted_families(session, families_file)
    except FamilyListError as exc:
        raise ReviewError(exc.subject, exc.problem, exc.hint) from exc
    canonical = known.canonical(family)
    if canonical is not None:
        return canonical, None
    if not add_family:
        raise UnknownFamilyError(family, known.closest(family))
    if families_file is None:
        raise ReviewError(
            family, "cannot add a new family name: no lab list is configured", "set [review] families_file"
        )
    try:
        clean = check_new_family_name(family)
    except FamilyListError as exc:
        raise ReviewError(exc.subject, exc.problem, exc.hint) from exc
    return clean, clean


@dataclass
class TrainingExport:
    """What :func:`export_training_folder` wrote."""

    out_dir: Path
    families: dict[str, int] = field(default_factory=dict)
    """Files written per family folder."""
    missing_crops: list[int] = field(default_factory=list)
    """Specimens whose crop file was not found (left out)."""
    skipped: Counter[str] = field(default_factory=Counter)
    """Verified specimens left out, by why (``not_specimen``, ``multiple``, ``no_family``)."""

    @property
    def files(self) -> int:
        return sum(self.families.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "out_dir": str(self.out_dir),
            "files": self.files,
            "families": dict(sorted(self.families.items())),
            "missing_crops": list(self.missing_crops),
            "skipped": dict(self.skipped),
        }


def export_training_folder(
    session: Session,
    crops_dir: Path,
    out_dir: Path,
    *,
    samples: Sequence[str] = (),
    since: dt.datetime | None = None,
) -> TrainingExport:
    """Copy the crops of verified specimens into ``out_dir/<Family>/`` (the training layout).

    Parameters
    ----------
    crops_dir:
        The crops folder (``[storage] crops``): crop paths are relative to it, and files outside it
        are never read.
    out_dir:
        Created if needed; must not already hold family folders from another export (files of the
        same name are overwritten, others are left).
    samples, since:
        Only specimens of these samples, only verifications at or after this time.

    Only the latest verification of each specimen counts: ``confirmed`` (the named family, else the
    model's) and ``corrected`` go in; ``not_specimen`` and ``multiple`` (a box with several
    specimens is a bad training example) are counted in ``skipped``.
    """
    latest = latest_verifications()
    query = (
        select(Specimen.id, Specimen.crop_path, Image.sample_id, latest.c.status, latest.c.family)
        .add_columns(latest.c.verified_by, latest.c.verified_at)
        .join(latest, latest.c.specimen_id == Specimen.id)
        .join(Image, Image.id == Specimen.image_id)
        .order_by(Specimen.id)
    )
    if samples:
        query = query.where(Image.sample_id.in_(list(samples)))
    if since is not None:
        query = query.where(latest.c.verified_at >= since)
    rows = session.execute(query).all()
    confirmed_without = [r[0] for r in rows if r[3] == VerificationStatus.CONFIRMED and not r[4]]
    predicted = best_families(session, confirmed_without)
    result = TrainingExport(Path(out_dir))
    base = crops_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_rows: list[list[Any]] = []
    for sid, crop_path, sample, status, family, who, when in rows:
        if status in (VerificationStatus.NOT_SPECIMEN, VerificationStatus.MULTIPLE):
            result.skipped[status] += 1
            continue
        family = family or (predicted.get(sid) if status == VerificationStatus.CONFIRMED else None)
        if not family:
            result.skipped["no_family"] += 1
            continue
        source = (base / crop_path).resolve() if crop_path else None
        if source is None or not source.is_relative_to(base) or not source.is_file():
            result.missing_crops.append(sid)
            continue
        folder = safe_component(family)
        target = out_dir / folder / f"{safe_component(sample) if sample else '_'}-{sid:07d}{source.suffix}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        result.families[folder] = result.families.get(folder, 0) + 1
        manifest_rows.append(
            [target.relative_to(out_dir).as_posix(), family, sid, sample or "", status, who, when.isoformat()]
        )
    with (out_dir / "labels.csv").open("w", encoding="utf-8", newline="") as fh:
        writer = SafeCsvWriter(fh)
        writer.writerow(["file", "family", "specimen_id", "sample", "status", "verified_by", "verified_at"])
        writer.writerows(manifest_rows)
    return result

"""``/api/specimens/{id}/verifications`` and ``/api/verifications``: a person's verdicts, as in the web UI.

Scripts and other LIMS record verifications here exactly as people do in the review pages: the
same verdicts, the same check of the family name (a name this lab does not know is refused with
422 and the closest known names; ``add_family`` confirms a new one), the same rule for a
confirmation that names no family (the model's best family is recorded). Every write needs the
API token; the person is ``verified_by`` (the token belongs to the lab, not to a person).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, status
from sqlalchemy.orm import Session

from labpipe.api.deps import SessionDep, SettingsDep, require_read, require_write
from labpipe.api.schemas import (
    ErrorOut,
    FamilyErrorOut,
    VerificationBatchOut,
    VerificationIn,
    VerificationRecordOut,
    VerificationsIn,
)
from labpipe.config import Settings
from labpipe.db.models import Verification, VerificationStatus, utcnow
from labpipe.queries.calls import best_families
from labpipe.queries.records import existing_specimen_ids, verifications_of
from labpipe.review import UnknownSpecimenError, record_verifications

__all__ = ["router"]

router = APIRouter(tags=["verifications"])
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut},
    401: {"model": ErrorOut},
    404: {"model": ErrorOut},
}
_WRITE_ERRORS: dict[int | str, dict[str, Any]] = {
    **_ERRORS,
    403: {"model": ErrorOut},
    422: {
        "model": FamilyErrorOut,
        "description": "The family is not a name this lab knows (`suggestions` holds the closest "
        "names; send `add_family: true` to add a new one), or the request body is not valid.",
    },
}
DbId = Annotated[int, Path(ge=1, le=2**31 - 1)]


def _out(row: Verification) -> dict[str, Any]:
    return {
        "verification_id": row.id,
        "specimen_id": row.specimen_id,
        "status": row.status,
        "family": row.family,
        "verified_by": row.verified_by,
        "verified_at": row.verified_at,
        "note": row.note,
        "retracted_at": row.retracted_at,
    }


def _require_specimens(session: Session, ids: Sequence[int]) -> None:
    found = existing_specimen_ids(session, ids)
    missing = [i for i in ids if i not in found]
    if missing:
        raise UnknownSpecimenError(
            f"specimen {missing[0]}", "no such specimen", "it may have been re-processed"
        )


def _record(
    session: Session, settings: Settings, ids: Sequence[int], body: VerificationIn
) -> list[Verification]:
    """Record ``body`` for ``ids`` and commit; errors propagate (the app answers 400, 404 or 422)."""
    unique = list(dict.fromkeys(ids))
    options: dict[str, Any] = {
        "verified_by": body.verified_by,
        "note": body.note,
        "at": utcnow(),
        "families_file": settings.families_path,
        "add_family": body.add_family,
    }
    family = " ".join((body.family or "").split()) or None
    rows: list[Verification] = []
    if body.status == VerificationStatus.CONFIRMED and family is None:
        _require_specimens(session, unique)
        predicted = best_families(session, unique)
        groups: dict[str | None, list[int]] = {}
        for sid in unique:
            groups.setdefault(predicted.get(sid), []).append(sid)
        for fam, group in groups.items():
            rows += record_verifications(session, group, body.status, family=fam, **options)
    else:
        rows = record_verifications(session, unique, body.status, family=family, **options)
    session.commit()
    order = {sid: i for i, sid in enumerate(unique)}
    return sorted(rows, key=lambda r: order[r.specimen_id])


@router.get(
    "/specimens/{specimen_id}/verifications",
    response_model=list[VerificationRecordOut],
    dependencies=[Depends(require_read)],
    responses=_ERRORS,
)
def get_verifications(specimen_id: DbId, session: SessionDep) -> list[dict[str, Any]]:
    """A specimen's verifications, newest first, retracted ones included (the first that is not
    retracted is the one that counts)."""
    _require_specimens(session, [specimen_id])
    return [_out(r) for r in verifications_of(session, specimen_id)]


@router.post(
    "/specimens/{specimen_id}/verifications",
    response_model=VerificationRecordOut,
    status_code=status.HTTP_201_CREATED,
    dependencies=[Depends(require_write)],
    responses=_WRITE_ERRORS,
)
def post_verification(
    specimen_id: DbId, body: VerificationIn, session: SessionDep, settings: SettingsDep
) -> dict[str, Any]:
    """Record a person's verdict on one specimen (as the specimen page of the web UI)."""
    (row,) = _record(session, settings, [specimen_id], body)
    return _out(row)


@router.post(
    "/verifications",
    response_model=VerificationBatchOut,
    status_code=status.HTTP_201_CREATED,
    dependencies=[Depends(require_write)],
    responses=_WRITE_ERRORS,
)
def post_verifications(body: VerificationsIn, session: SessionDep, settings: SettingsDep) -> dict[str, Any]:
    """One verdict for many specimens (as the review page's bulk bar); all or nothing. A confirmation
    without a family confirms each specimen's own best family."""
    rows = _record(session, settings, body.specimen_ids, body)
    return {"recorded": len(rows), "items": [_out(r) for r in rows]}

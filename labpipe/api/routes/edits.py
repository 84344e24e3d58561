"""Box corrections, the audit trail, undo, and the default model, over HTTP.

``PUT /api/specimens/{id}/box`` sets a specimen's box by hand (a re-run then keeps it);
``GET /api/specimens/{id}/events`` lists its audit trail; ``POST /api/events/{id}/undo`` reverts a
box edit, retracts a verification or restores a plate's boxes-reviewed mark.
``PUT``/``DELETE /api/images/{id}/boxes-reviewed`` marks a plate's boxes reviewed (every specimen
checked, none missing) or takes the mark off. ``GET /api/models`` lists the registry with the models in use
now, and ``PUT /api/models/default`` changes the default that the daemon, the CLI and the web UI
follow. Writes need the API token; the person is named in the body (the token is the lab's).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path

from labpipe.active_models import active_classifier, active_detector, change_default
from labpipe.api.deps import SessionDep, SettingsDep, require_read, require_write
from labpipe.api.schemas import (
    ActiveModelsOut,
    AuditEventOut,
    BoxEditIn,
    BoxesReviewedIn,
    DefaultModelIn,
    ModelOut,
    UndoIn,
)
from labpipe.api.schemas import ErrorOut as _ErrorOut
from labpipe.audit import edit_box, events_for, mark_boxes_reviewed, undo
from labpipe.db.models import AuditEvent, Model
from labpipe.registry import list_models

__all__ = ["router"]

router = APIRouter(tags=["edits"])
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": _ErrorOut},
    401: {"model": _ErrorOut},
    403: {"model": _ErrorOut},
    404: {"model": _ErrorOut},
}
DbId = Annotated[int, Path(ge=1, le=2**31 - 1)]


def _event_out(event: AuditEvent) -> dict[str, Any]:
    return {
        "event_id": event.id,
        "at": event.at,
        "actor": event.actor,
        "action": event.action,
        "specimen_id": event.specimen_id,
        "image_id": event.image_id,
        "model_id": event.model_id,
        "before": event.before,
        "after": event.after,
        "note": event.note,
        "undone_by": event.undone_by,
    }


def _model_out(row: Model) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "kind": row.kind,
        "version": row.version,
        "is_default": bool(row.is_default),
        "path": row.path,
        "labels": list(row.labels or []),
        "settings": row.settings,
        "created_at": row.created_at,
    }


@router.put(
    "/specimens/{specimen_id}/box",
    response_model=AuditEventOut,
    dependencies=[Depends(require_write)],
    responses=_ERRORS,
)
def put_box(specimen_id: DbId, body: BoxEditIn, session: SessionDep) -> dict[str, Any]:
    """Set a specimen's box by hand (full-resolution pixels of the displayed image); the previous box
    is kept in the audit trail, and a re-run of the plate keeps this one."""
    event = edit_box(session, specimen_id, tuple(body.box), edited_by=body.edited_by, note=body.note)
    session.commit()
    return _event_out(event)


@router.put(
    "/images/{image_id}/boxes-reviewed",
    response_model=AuditEventOut,
    dependencies=[Depends(require_write)],
    responses=_ERRORS,
)
def put_boxes_reviewed(image_id: DbId, body: BoxesReviewedIn, session: SessionDep) -> dict[str, Any]:
    """Mark the plate's boxes reviewed: every specimen on it checked, none missing (its boxes then
    go into ``/api/exports/coco.json``). Recorded in the audit trail; undo restores the mark before."""
    event = mark_boxes_reviewed(session, image_id, by=body.by, reviewed=True, note=body.note)
    session.commit()
    return _event_out(event)


@router.delete(
    "/images/{image_id}/boxes-reviewed",
    response_model=AuditEventOut,
    dependencies=[Depends(require_write)],
    responses=_ERRORS,
)
def delete_boxes_reviewed(image_id: DbId, body: BoxesReviewedIn, session: SessionDep) -> dict[str, Any]:
    """Take the plate's boxes-reviewed mark off (400 when it is not marked); recorded in the trail."""
    event = mark_boxes_reviewed(session, image_id, by=body.by, reviewed=False, note=body.note)
    session.commit()
    return _event_out(event)


@router.get(
    "/specimens/{specimen_id}/events",
    response_model=list[AuditEventOut],
    dependencies=[Depends(require_read)],
    responses=_ERRORS,
)
def get_events(specimen_id: DbId, session: SessionDep) -> list[dict[str, Any]]:
    """A specimen's audit trail, newest first: verifications, box edits, undos, a drop."""
    return [_event_out(e) for e in events_for(session, specimen_id)]


@router.post(
    "/events/{event_id}/undo",
    response_model=AuditEventOut,
    dependencies=[Depends(require_write)],
    responses=_ERRORS,
)
def post_undo(event_id: DbId, body: UndoIn, session: SessionDep) -> dict[str, Any]:
    """Undo a box edit (the box goes back) or a verification (it is retracted and no longer counts)."""
    event = undo(session, event_id, undone_by=body.undone_by)
    session.commit()
    return _event_out(event)


@router.get(
    "/models", response_model=ActiveModelsOut, dependencies=[Depends(require_read)], responses=_ERRORS
)
def get_models(session: SessionDep, settings: SettingsDep) -> dict[str, Any]:
    """Registered models, and the classifier and detector in use now (and where that choice comes from)."""
    rows = list_models(session, kind=None)
    return {
        "classifier": active_classifier(session, settings).as_dict(),
        "detector": active_detector(session, settings).as_dict(),
        "models": [_model_out(r) for r in rows],
    }


@router.put(
    "/models/default", response_model=ModelOut, dependencies=[Depends(require_write)], responses=_ERRORS
)
def put_default(body: DefaultModelIn, session: SessionDep) -> dict[str, Any]:
    """Make a registered version (or a unique prefix) the default of its kind; recorded in the audit
    trail. A running daemon uses it from its next image."""
    row = change_default(session, body.version, actor=body.changed_by)
    session.commit()
    return _model_out(row)

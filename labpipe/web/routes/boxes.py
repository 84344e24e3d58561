"""Box editing from the plate view, as JSON (the plate view's edit mode calls these; a script with
the token in ``Authorization: Bearer`` may, too). Each answers the edit's audit event and the boxes
to draw or hide; the person is the logged-in name. See :mod:`labpipe.box_edits`.

* ``POST /images/{id}/boxes`` ``{"box": [x, y, w, h]}``: a new drawn specimen
* ``POST /specimens/{id}/box`` ``{"box": [...]}``: resize
* ``POST /specimens/{id}/box/delete``: not a specimen
* ``POST /specimens/{id}/box/split`` ``{"boxes": [[...], [...]]}``
* ``POST /box-events/{id}/undo``

Every body carries ``"csrf"``, the page's form token.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.exc import IntegrityError

from labpipe import box_edits
from labpipe.active_models import active_classifier
from labpipe.api.deps import SessionDep, SettingsDep
from labpipe.audit import AuditError, AuditNotFoundError
from labpipe.classify.base import FamilyClassifier
from labpipe.web.auth import check_write, get_viewer

__all__ = ["router"]

router = APIRouter(include_in_schema=False)

Box = list[int]


class EditIn(BaseModel):
    csrf: str = Field("", max_length=128)
    box: Box | None = Field(None, min_length=4, max_length=4)
    boxes: list[Box] | None = Field(None, min_length=2, max_length=20)


def _classifier(request: Request, session: Any, settings: Any):
    """The classifier in use now, loaded once per spec and kept on the app."""

    def load() -> FamilyClassifier:
        state = request.app.state
        spec = active_classifier(session, settings).spec
        cache = getattr(state, "box_classifiers", None)
        if cache is None:
            cache = state.box_classifiers = {}
        if spec not in cache:
            from labpipe.classify.loader import configured_classifier

            cache[spec] = configured_classifier(settings, model=spec)
        return cache[spec]

    return load


def _run(request: Request, body: EditIn, session: Any, settings: Any, edit) -> JSONResponse:
    viewer = get_viewer(request)
    check_write(request, viewer, body.csrf)
    t0 = time.perf_counter()
    try:
        result = edit(viewer.name or "unknown", _classifier(request, session, settings))
        session.commit()
    except BaseException as exc:
        session.rollback()
        box_edits.remove_files(session.info.pop(box_edits.NEW_CROPS, []), settings)
        if isinstance(exc, IntegrityError):
            raise HTTPException(
                status.HTTP_409_CONFLICT, "another edit of this plate came first: reload and try again"
            ) from None
        if isinstance(exc, AuditNotFoundError):
            raise HTTPException(status.HTTP_404_NOT_FOUND, exc.message) from None
        if isinstance(exc, AuditError):
            raise HTTPException(status.HTTP_400_BAD_REQUEST, exc.message) from None
        raise
    session.info.pop(box_edits.NEW_CROPS, None)
    box_edits.remove_files(result.old_files, settings)
    return JSONResponse(
        {
            "event_id": result.event.id,
            "action": result.event.action,
            "shown": [box_edits.shown_box(s) for s in result.shown],
            "hidden": result.hidden,
            "seconds": round(time.perf_counter() - t0, 3),
        }
    )


def _need(value: Any, what: str) -> Any:
    if value is None:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"give {what}")
    return value


@router.post("/images/{image_id}/boxes")
def add(
    request: Request, image_id: int, body: EditIn, session: SessionDep, settings: SettingsDep
) -> JSONResponse:
    box = _need(body.box, "box: [x, y, w, h]")
    return _run(
        request,
        body,
        session,
        settings,
        lambda who, clf: box_edits.add_box(
            session, image_id, box, edited_by=who, settings=settings, classifier=clf
        ),
    )


@router.post("/specimens/{specimen_id}/box")
def resize(
    request: Request, specimen_id: int, body: EditIn, session: SessionDep, settings: SettingsDep
) -> JSONResponse:
    box = _need(body.box, "box: [x, y, w, h]")
    return _run(
        request,
        body,
        session,
        settings,
        lambda who, clf: box_edits.resize_box(
            session, specimen_id, box, edited_by=who, settings=settings, classifier=clf
        ),
    )


@router.post("/specimens/{specimen_id}/box/delete")
def delete(
    request: Request, specimen_id: int, body: EditIn, session: SessionDep, settings: SettingsDep
) -> JSONResponse:
    return _run(
        request,
        body,
        session,
        settings,
        lambda who, clf: box_edits.delete_box(session, specimen_id, edited_by=who),
    )


@router.post("/specimens/{specimen_id}/box/split")
def split(
    request: Request, specimen_id: int, body: EditIn, session: SessionDep, settings: SettingsDep
) -> JSONResponse:
    boxes = _need(body.boxes, "boxes: two or more [x, y, w, h]")
    return _run(
        request,
        body,
        session,
        settings,
        lambda who, clf: box_edits.split_box(
            session, specimen_id, boxes, edited_by=who, settings=settings, classifier=clf
        ),
    )


@router.post("/box-events/{event_id}/undo")
def undo(
    request: Request, event_id: int, body: EditIn, session: SessionDep, settings: SettingsDep
) -> JSONResponse:
    return _run(
        request,
        body,
        session,
        settings,
        lambda who, clf: box_edits.undo_edit(
            session, event_id, undone_by=who, settings=settings, classifier=clf
        ),
    )

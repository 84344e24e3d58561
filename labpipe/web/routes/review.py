"""Recording verdicts: one specimen's review form, one verdict for the ticked specimens, undoing
them, and the verified crops as a training folder.

After a verdict the page comes back with an Undo button: the redirect carries the ``verify`` audit
events just written (``?undo=``, :func:`~labpipe.web.routes.common.id_ranges`), and
``POST /review/undo`` retracts them all (:func:`labpipe.review.undo_verifications`), so the
verdicts that counted before, or the model's calls, count again.

A family that is not a name the lab knows is never recorded: the answer is the form again, with the
closest known names and a box to confirm the typed name as a new one (``add_family``). A
confirmation that names no family confirms each specimen's own best family, by its chosen
classification (:func:`labpipe.queries.calls.best_families`), as the API does.
"""

from __future__ import annotations

import datetime as dt
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Query, Request, status
from fastapi.responses import FileResponse, HTMLResponse, Response
from sqlalchemy.orm import Session
from starlette.background import BackgroundTask

from labpipe.api.deps import SessionDep, SettingsDep
from labpipe.config import Settings
from labpipe.db.models import utcnow
from labpipe.queries.calls import best_families
from labpipe.review import (
    ReviewError,
    UnknownFamilyError,
    export_training_folder,
    record_verification_batch,
    undo_verifications,
)
from labpipe.web.auth import CSRF_FIELD, Viewer, check_write, get_viewer, safe_next
from labpipe.web.routes.common import (
    ViewerDep,
    accepted_names,
    id_ranges,
    parse_id_ranges,
    redirect,
    render_page,
    specimen_or_404,
    with_flash,
)

__all__ = ["router"]

router = APIRouter(include_in_schema=False)


def _verifier(viewer: Viewer) -> str:
    return viewer.name or ("api" if viewer.via_header else "web user")


def _family_page(
    request: Request,
    viewer: Viewer,
    session: Session,
    settings: Settings,
    exc: UnknownFamilyError,
    *,
    action: str,
    family_field: str,
    fields: list[tuple[str, str]],
    back: str,
) -> HTMLResponse:
    """The form again, for a family that is not a known name: the closest names to pick, or the
    typed name to correct or to confirm as a new name of the lab's list. Nothing was recorded."""
    context = {
        "page": "review",
        "error": exc.message,
        "typed": exc.family,
        "suggestions": exc.suggestions,
        "action": action,
        "family_field": family_field,
        "fields": [(CSRF_FIELD, viewer.csrf or ""), *fields],
        "back": back,
        "families": accepted_names(session, settings),
        "lab_file": settings.review.families_file,
    }
    return render_page(
        request, "review_family.html", viewer, context, code=status.HTTP_422_UNPROCESSABLE_CONTENT
    )


def _verdict(status_: str, family: str, pick: str, best: str | None) -> tuple[str, str | None]:
    """What a review form's buttons mean: ``pick`` (a top-k button) confirms when it is the
    model's family and corrects otherwise; ``corrected`` takes the typed family.

    >>> _verdict("", "", "Carabidae", "Carabidae"), _verdict("", "", "Apidae", "Carabidae")
    (('confirmed', 'Carabidae'), ('corrected', 'Apidae'))
    """
    pick = " ".join(pick.split())
    if pick:
        return ("confirmed" if best and pick == best else "corrected"), pick
    family_ = " ".join(family.split()) or None
    return status_, family_


@router.post("/specimens/{specimen_id}/verify")
def verify(
    request: Request,
    specimen_id: int,
    session: SessionDep,
    settings: SettingsDep,
    csrf: Annotated[str, Form(max_length=128)] = "",
    status_: Annotated[str, Form(alias="status", max_length=32)] = "",
    family: Annotated[str, Form(max_length=256)] = "",
    pick: Annotated[str, Form(max_length=256)] = "",
    note: Annotated[str, Form(max_length=2000)] = "",
    next: Annotated[str, Form(max_length=4096)] = "",
    add_family: Annotated[bool, Form()] = False,
) -> Response:
    """Record one verification (who and when from the login), then go to ``next``. A family that is
    not a known name is not recorded: the answer is a page with the closest names and a box to
    confirm it as a new name (``add_family``)."""
    viewer = get_viewer(request)
    check_write(request, viewer, csrf)
    spec = specimen_or_404(session, specimen_id)
    best = best_families(session, [spec.id]).get(spec.id)
    verdict, fam = _verdict(status_, family, pick, best)
    if verdict == "confirmed" and fam is None:
        fam = best
    try:
        batch = record_verification_batch(
            session,
            [spec.id],
            verdict,
            family=fam,
            verified_by=_verifier(viewer),
            note=note,
            families_file=settings.families_path,
            add_family=add_family,
        )
    except UnknownFamilyError as exc:
        session.rollback()
        fields = [("status", verdict), ("note", note), ("next", next)]
        back = f"/specimens/{spec.id}"
        return _family_page(
            request,
            viewer,
            session,
            settings,
            exc,
            action=f"{back}/verify",
            family_field="family",
            fields=fields,
            back=back,
        )
    except ReviewError as exc:
        session.rollback()
        raise HTTPException(status.HTTP_400_BAD_REQUEST, exc.message) from None
    session.commit()
    target = safe_next(next, default=f"/specimens/{spec.id}")
    return redirect(with_flash(target, "verified", n=1, what=verdict, undo=id_ranges(batch.event_ids)))


def _best_families(session: Session, ids: list[int]) -> dict[int, str | None]:
    """Each ticked specimen's own best family, in the order ticked; an id that is no specimen is refused."""
    found = best_families(session, ids)
    missing = [i for i in ids if i not in found]
    if missing:
        raise ReviewError(f"specimen {missing[0]}", "no such specimen", "it may have been re-processed")
    return {i: found[i] for i in dict.fromkeys(ids)}


@router.post("/review/bulk")
def verify_bulk(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    ids: Annotated[list[int], Form()] = [],  # noqa: B006 (FastAPI reads the default, never mutates it)
    csrf: Annotated[str, Form(max_length=128)] = "",
    status_: Annotated[str, Form(alias="status", max_length=32)] = "",
    bulk_family: Annotated[str, Form(max_length=256)] = "",
    next: Annotated[str, Form(max_length=4096)] = "",
    add_family: Annotated[bool, Form()] = False,
) -> Response:
    """One verdict for every ticked specimen (``confirmed`` keeps each specimen's own family); an
    unknown family is answered as in :func:`verify`."""
    viewer = get_viewer(request)
    check_write(request, viewer, csrf)
    family = " ".join(bulk_family.split()) or None
    lab_list = settings.families_path
    when = utcnow()  # one time for the whole batch
    events: list[int] = []
    try:
        if status_ == "confirmed" and family is None:
            for sid, fam in _best_families(session, ids).items():
                batch = record_verification_batch(
                    session,
                    [sid],
                    "confirmed",
                    family=fam,
                    verified_by=_verifier(viewer),
                    at=when,
                    families_file=lab_list,
                )
                events.extend(batch.event_ids)
            if not ids:
                raise ReviewError(None, "no specimen selected", "tick at least one specimen")
        else:
            batch = record_verification_batch(
                session,
                ids,
                status_,
                family=family,
                verified_by=_verifier(viewer),
                at=when,
                families_file=lab_list,
                add_family=add_family,
            )
            events.extend(batch.event_ids)
    except UnknownFamilyError as exc:
        session.rollback()
        fields = [("status", status_), ("next", next), *(("ids", str(i)) for i in dict.fromkeys(ids))]
        return _family_page(
            request,
            viewer,
            session,
            settings,
            exc,
            action="/review/bulk",
            family_field="bulk_family",
            fields=fields,
            back=safe_next(next, default="/review"),
        )
    except ReviewError as exc:
        session.rollback()
        raise HTTPException(status.HTTP_400_BAD_REQUEST, exc.message) from None
    session.commit()
    target = safe_next(next, default="/review")
    return redirect(with_flash(target, "verified", n=len(set(ids)), what=status_, undo=id_ranges(events)))


@router.post("/review/undo")
def undo_bulk(
    request: Request,
    session: SessionDep,
    events: Annotated[str, Form(max_length=8000)] = "",
    csrf: Annotated[str, Form(max_length=128)] = "",
    next: Annotated[str, Form(max_length=4096)] = "",
) -> Response:
    """Withdraw the verdicts just recorded (the ``verify`` events in ``events``, the viewer's own):
    each verification is retracted, so what counted before counts again."""
    viewer = get_viewer(request)
    check_write(request, viewer, csrf)
    try:
        event_ids = parse_id_ranges(events)
    except ValueError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None
    try:
        n = undo_verifications(session, event_ids, undone_by=_verifier(viewer))
    except ReviewError as exc:
        session.rollback()
        raise HTTPException(status.HTTP_409_CONFLICT, exc.message) from None
    session.commit()
    return redirect(with_flash(safe_next(next, default="/review"), "undone", n=n))


@router.get("/review/training.zip")
def training_zip(
    request: Request,
    viewer: ViewerDep,
    session: SessionDep,
    settings: SettingsDep,
    sample: Annotated[list[str] | None, Query()] = None,
) -> Response:
    """The verified crops as a training folder (``<Family>/*.png`` + ``labels.csv``), zipped."""
    tmp = Path(tempfile.mkdtemp(prefix="labpipe-training-"))
    folder = tmp / "training"
    result = export_training_folder(session, settings.storage.crops_dir, folder, samples=tuple(sample or ()))
    archive = tmp / "training.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as zf:  # PNGs do not deflate
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(folder).as_posix())
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M")

    def cleanup() -> None:
        shutil.rmtree(tmp, ignore_errors=True)

    return FileResponse(
        archive,
        media_type="application/zip",
        filename=f"labpipe-training-{stamp}.zip",
        headers={"X-Labpipe-Files": str(result.files)},
        background=BackgroundTask(cleanup),
    )

"""Plate images: the list (by status and sample), the plate view with every specimen box, its
overview, putting a failed or quarantined plate back into the inbox, and handing a stuck plate to
another worker, and marking a plate's boxes reviewed."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Request, status
from fastapi.responses import HTMLResponse, Response

from labpipe.api.conditional import content_response
from labpipe.api.deps import SessionDep, SettingsDep
from labpipe.audit import AuditError, mark_boxes_reviewed
from labpipe.config import Settings
from labpipe.db.models import Image, ImageStatus
from labpipe.ingest.recovery import RetryRefused, broker_sender
from labpipe.ingest.recovery import retry as requeue
from labpipe.queries.listings import ImageFilter, image_page, image_specimens
from labpipe.web.auth import check_write, get_viewer
from labpipe.web.charts import plate_extent
from labpipe.web.geometry import scale_bar
from labpipe.web.media import image_file, overview_cache_path, overview_digest, overview_file
from labpipe.web.progress import plate_progress
from labpipe.web.render import family_colours
from labpipe.web.retry import RetryError, retry_image
from labpipe.web.routes.common import (
    LIST_PAGE,
    ViewerDep,
    image_or_404,
    int_param,
    page_offset,
    pager,
    redirect,
    render_page,
    with_flash,
)

__all__ = ["router"]

router = APIRouter(include_in_schema=False)


@router.post("/images/{image_id}/retry")
def retry(
    request: Request,
    image_id: int,
    session: SessionDep,
    settings: SettingsDep,
    csrf: Annotated[str, Form(max_length=128)] = "",
    force: Annotated[bool, Form()] = False,
) -> Response:
    """Put a failed or quarantined plate back into the inbox (the watcher takes it again), or hand a
    stuck processing plate to another worker (``force``: even one a live worker still holds)."""
    check_write(request, get_viewer(request), csrf)
    image = image_or_404(session, image_id)
    if image.status == ImageStatus.PROCESSING.value:
        try:
            requeue(session, image.id, settings, force=force, send=broker_sender(settings))
        except RetryRefused as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, exc.message) from None
        return redirect("/?ok=requeued")
    try:
        retry_image(session, image, settings)
    except RetryError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, exc.message) from None
    return redirect("/?ok=retry")


@router.post("/images/{image_id}/boxes-reviewed")
def boxes_reviewed(
    request: Request,
    image_id: int,
    session: SessionDep,
    csrf: Annotated[str, Form(max_length=128)] = "",
    unmark: Annotated[bool, Form()] = False,
) -> Response:
    """Mark the plate's boxes reviewed (every specimen checked, none missing) under the logged-in
    name, or take the mark off (``unmark``); recorded in the audit trail."""
    viewer = get_viewer(request)
    check_write(request, viewer, csrf)
    image = image_or_404(session, image_id)
    try:
        mark_boxes_reviewed(session, image.id, by=viewer.name or "web", reviewed=not unmark)
    except AuditError as exc:
        session.rollback()
        raise HTTPException(status.HTTP_409_CONFLICT, exc.message) from None
    session.commit()
    return redirect(with_flash(f"/images/{image.id}", "unreviewed" if unmark else "reviewed"))


@router.get("/images", response_class=HTMLResponse)
def images_page(request: Request, viewer: ViewerDep, session: SessionDep) -> HTMLResponse:
    state = request.query_params.get("status") or None
    if state is not None and state not in {s.value for s in ImageStatus}:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"{state!r}: not an image status")
    sample = (request.query_params.get("sample") or "").strip()[:64] or None
    page = int_param(request, "page")
    total, rows = image_page(
        session,
        ImageFilter(status=state, sample=sample),
        limit=LIST_PAGE,
        offset=page_offset(page, LIST_PAGE),
    )
    context = {
        "page": "images",
        "rows": rows,
        "pager": pager(total, page, LIST_PAGE),
        "status_filter": state,
        "sample_filter": sample,
        "statuses": [s.value for s in ImageStatus],
    }
    return render_page(request, "images.html", viewer, context)


@router.get("/images/{image_id}", response_class=HTMLResponse)
def plate_view(
    request: Request, image_id: int, viewer: ViewerDep, session: SessionDep, settings: SettingsDep
) -> HTMLResponse:
    """The plate with every specimen box, coloured by family, rejected ones dashed; a scale bar
    when the plate's scale is known."""
    image = image_or_404(session, image_id)
    everything = image_specimens(session, image.id)
    rows = [r for r in everything if r.resolution.outcome.value != "excluded"]  # deleted boxes hidden
    per_family: dict[str, int] = {}
    per_outcome: dict[str, int] = {}
    for row in rows:
        if row.resolution.outcome.value == "accepted" and row.resolution.family:
            per_family[row.resolution.family] = per_family.get(row.resolution.family, 0) + 1
        else:
            outcome = row.resolution.outcome.value
            per_outcome[outcome] = per_outcome.get(outcome, 0) + 1
    ordered = sorted(per_family, key=lambda f: (-per_family[f], f.lower()))
    colours = family_colours(ordered)
    legend = [{"label": f, "n": per_family[f], "colour": colours[f]} for f in ordered]
    legend += [{"label": o, "n": n, "colour": None} for o, n in sorted(per_outcome.items())]
    width, height = plate_extent(image.width, image.height, [r.bbox for r in rows])
    context = {
        "page": "images",
        "image": image,
        "rows": rows,
        "legend": legend,
        "colours": colours,
        "width": width,
        "height": height,
        "has_file": image.width is not None and _overview_possible(image, settings),
        "bar": scale_bar(image.um_per_px, width, 0.2),
        "progress": plate_progress(settings.storage.crops_dir, image.id),
        "deleted": len(everything) - len(rows),
        "editable": viewer.can_write and image.width is not None,
    }
    return render_page(request, "plate.html", viewer, context)


def _overview_possible(image: Image, settings: Settings) -> bool:
    return overview_cache_path(image, settings).is_file() or image_file(image, settings) is not None


@router.get("/images/{image_id}/overview.jpg")
def plate_overview(
    request: Request, image_id: int, viewer: ViewerDep, session: SessionDep, settings: SettingsDep
) -> Response:
    """The plate's overview; its ETag is the plate's content hash (the id may name another plate later)."""
    image = image_or_404(session, image_id)
    made = overview_file(image, settings)
    if made is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"image {image_id}: no plate file in the storage folders"
        )
    return content_response(request, made[0], overview_digest(image), "image/jpeg")

"""The web UI's pages: dashboard, plate view, specimens gallery, review, samples, models, login.

Server-rendered HTML (Jinja2) with a little JavaScript for zoom/pan, keyboard shortcuts and the
dashboard's live refresh; every page works without it. URLs:

=================================  =============================================================
``/``                              dashboard (``?fragment=live``: the live part only)
``/images``                        plate images, filtered by status and sample, paged
``/images/{id}``                   plate view: overview with every specimen box, zoom and pan
``/images/{id}/overview.jpg``      the cached overview
``/images/{id}/retry``             POST: put a failed or quarantined plate back into the inbox
``/specimens``                     gallery: filters, sort by uncertainty, paging, bulk review
``/review``                        the gallery as a review queue (unverified, doubtful first)
``/specimens/{id}``                one specimen with its review form (keyboard shortcuts)
``/specimens/{id}/verify``         POST: record a verification
``/specimens/{id}/thumb/{n}.jpg``  cached thumbnail (n = 160 or 320); ``.../crop.png`` the crop
``/review/bulk``                   POST: one verdict for the ticked specimens
``/review/training.zip``           verified crops as a training folder (one folder per family)
``/samples``, ``/samples/{id}``    samples; one sample's counts, chart, exports, plate layout
``/exports/{kind}``                counts.csv, matrix.csv, dwca.zip, bold.zip (``?sample=``)
``/plates/layout``                 POST: lay a sample out on 96-well plates
``/plates/{plate}/manifest.csv``   manifest; ``/plates/{plate}/sheet`` the picking sheet
``/models``, ``/models/{id}``      model versions, the default, evaluation reports with plots
``/login``, ``/logout``            the API token as an HttpOnly cookie
=================================  =============================================================
"""

from __future__ import annotations

import datetime as dt
import json
import math
import secrets
import shutil
import tempfile
import threading
import time
import zipfile
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, Form, HTTPException, Query, Request, status
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from starlette.background import BackgroundTask

from labpipe.api.conditional import content_response
from labpipe.api.deps import SessionDep, SettingsDep
from labpipe.api.routes import reports as api_reports
from labpipe.barcoding.ids import specimen_code
from labpipe.barcoding.plates import (
    layout_plates,
    list_plates,
    manifest_csv,
    picking_sheet_html,
    plate_manifest,
)
from labpipe.config import Settings
from labpipe.crops.store import safe_component
from labpipe.db.models import Image, ImageStatus, Model, Sample, Specimen, utcnow
from labpipe.errors import LabpipeError
from labpipe.families import FamilyListError, accepted_families
from labpipe.logs import get_logger
from labpipe.reports.counts import (
    OTHER,
    REJECTED,
    CountFilter,
    compute_counts,
    counts_to_csv,
    matrix_to_csv,
)
from labpipe.review import ReviewError, UnknownFamilyError, export_training_folder, record_verifications
from labpipe.samples import list_samples
from labpipe.status import image_status
from labpipe.web import queries
from labpipe.web.auth import (
    CSRF_FIELD,
    NAME_COOKIE,
    SESSION_COOKIE,
    Viewer,
    check_write,
    get_viewer,
    require_page_read,
    safe_next,
    session_value,
)
from labpipe.web.media import (
    THUMB_SIZES,
    crop_file,
    image_file,
    inside,
    overview_cache_path,
    overview_digest,
    overview_file,
    thumbnail_file,
)
from labpipe.web.render import STATIC_DIR, family_colour, family_colours, templates
from labpipe.web.retry import RetryError, retry_image

__all__ = ["router"]

router = APIRouter(include_in_schema=False)
log = get_logger(__name__)

ViewerDep = Annotated[Viewer, Depends(require_page_read)]
DbId = Annotated[int, Query(ge=1, le=2**31 - 1)]
GALLERY_PAGE = 60
REVIEW_PAGE = 24
LIST_PAGE = 50
MAX_PAGE = 1_000_000

FLASH = {
    "verified": "Recorded: {n} specimen(s) {what}.",
    "retry": "The file is back in the inbox; the daemon will process it again.",
    "layout": "Laid out {n} specimen(s) on new plates.",
    "login": "Logged in: your reviews are recorded as {who}.",
    "logout": "Logged out.",
}
VERDICT_WORDS = {
    "confirmed": "confirmed",
    "corrected": "corrected",
    "not_specimen": "marked as not a specimen",
    "multiple": "marked as several specimens",
}


# --------------------------------------------------------------------------------------------------
# Helpers


def _page(
    request: Request, name: str, viewer: Viewer, context: dict[str, Any], code: int = 200
) -> HTMLResponse:
    flash = None
    ok = request.query_params.get("ok")
    if ok in FLASH:
        n = request.query_params.get("n", "")
        what = VERDICT_WORDS.get(request.query_params.get("what", ""), "verified")
        flash = FLASH[ok].format(n=n if n.isdigit() else "", what=what, who=viewer.name or "you")
    return templates.TemplateResponse(
        request,
        name,
        {"viewer": viewer, "flash": flash, "csrf_field": CSRF_FIELD, "now": utcnow(), **context},
        status_code=code,
    )


def _redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=status.HTTP_303_SEE_OTHER)


def _offset(page: int, size: int) -> int:
    return (max(1, min(page, MAX_PAGE)) - 1) * size


def _pager(total: int | None, page: int, size: int) -> dict[str, Any]:
    pages = max(1, math.ceil((total or 0) / size))
    page = max(1, min(page, MAX_PAGE))
    return {"page": page, "pages": pages, "size": size, "total": total, "first": (page - 1) * size + 1}


def _verifier(viewer: Viewer) -> str:
    return viewer.name or ("api" if viewer.via_header else "web user")


def _accepted_names(session: Session, settings: Settings) -> list[str]:
    """The family names a person may give (for the forms' suggestions); a broken lab list is logged
    and left out here (recording a verification reports it)."""
    try:
        return accepted_families(session, settings.families_path).names()
    except FamilyListError as exc:
        log.warning("lab list of families unreadable", error=exc.message)
        return accepted_families(session, None).names()


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
        "families": _accepted_names(session, settings),
        "lab_file": settings.review.families_file,
    }
    return _page(request, "review_family.html", viewer, context, code=status.HTTP_422_UNPROCESSABLE_CONTENT)


def _float_or_none(text: str | None) -> float | None:
    if text is None or not text.strip():
        return None
    try:
        value = float(text)
    except ValueError:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"{text!r}: not a number") from None
    if not 0.0 <= value <= 1.0 or not math.isfinite(value):
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"{text!r}: a probability is between 0 and 1")
    return value


def _specimen_filter(
    request: Request, *, default_state: str | None = None, sort: str | None = None
) -> queries.SpecimenFilter:
    q = request.query_params
    state = q.get("state", default_state) or None
    if state == "any":
        state = None
    image = q.get("image")
    image_id = int(image) if image and image.isdigit() and 0 < int(image) < 2**31 else None
    try:
        return queries.SpecimenFilter(
            sample=(q.get("sample") or "").strip()[:64] or None,
            image_id=image_id,
            family=(q.get("family") or "").strip()[:128] or None,
            state=state,
            p_min=_float_or_none(q.get("p_min")),
            p_max=_float_or_none(q.get("p_max")),
            model=(q.get("model") or "").strip()[:255] or None,
            sort=q.get("sort") or sort or "uncertain",
        )
    except ValueError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None


def _here(request: Request) -> str:
    """The current page's URL without the flash message's parameters (to come back to after a post)."""
    items = [(k, v) for k, v in request.query_params.multi_items() if k not in ("ok", "n", "what")]
    return request.url.path + (f"?{urlencode(items)}" if items else "")


def _int_param(request: Request, name: str, default: int = 1) -> int:
    text = request.query_params.get(name, "")
    return int(text) if text.isdigit() and len(text) < 10 else default


# --------------------------------------------------------------------------------------------------
# Login


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, next: str = "/") -> HTMLResponse:
    viewer = get_viewer(request)
    return _page(request, "login.html", viewer, {"next": safe_next(next), "error": None, "page": "login"})


@router.post("/login", response_class=HTMLResponse)
def login(
    request: Request,
    settings: SettingsDep,
    token: Annotated[str, Form(max_length=4096)] = "",
    name: Annotated[str, Form(max_length=255)] = "",
    next: Annotated[str, Form(max_length=2048)] = "/",
) -> Response:
    """Check the token; set the session cookie (HttpOnly, SameSite=Strict) and the reviewer's name."""
    viewer = get_viewer(request)
    expected = settings.api.token
    error = None
    if not expected:
        error = "This labpipe has no API token ([api] token): the web UI is read-only."
    elif not token or not _token_ok(token, expected):
        time.sleep(0.5)  # slows down guessing
        error = "That is not the API token of this labpipe ([api] token in its configuration)."
    elif not " ".join(name.split()):
        error = "Give your name: verifications are recorded with it."
    if error:
        context = {"next": safe_next(next), "error": error, "name": name, "page": "login"}
        return _page(request, "login.html", viewer, context, code=401)
    who = " ".join(name.split())
    response = _redirect(_with_flash(safe_next(next), "login"))
    secure = request.url.scheme == "https"
    response.set_cookie(
        SESSION_COOKIE, session_value(expected), httponly=True, samesite="strict", secure=secure, path="/"
    )
    response.set_cookie(
        NAME_COOKIE, quote(who, safe=" "), httponly=True, samesite="strict", secure=secure, path="/"
    )
    return response


def _token_ok(given: str, expected: str) -> bool:
    return secrets.compare_digest(given.strip().encode("utf-8"), expected.encode("utf-8"))


def _with_flash(url: str, code: str, **extra: Any) -> str:
    params = "&".join(f"{k}={quote(str(v), safe='')}" for k, v in {"ok": code, **extra}.items())
    return url + ("&" if "?" in url else "?") + params


@router.post("/logout")
def logout(request: Request, csrf: Annotated[str, Form(max_length=128)] = "") -> Response:
    viewer = get_viewer(request)
    if viewer.logged_in and not viewer.via_header:
        check_write(request, viewer, csrf)
    response = _redirect("/login?ok=logout")
    response.delete_cookie(SESSION_COOKIE, path="/")
    response.delete_cookie(NAME_COOKIE, path="/")
    return response


# --------------------------------------------------------------------------------------------------
# Static files (a fixed list: nothing else under the package is reachable)

_STATIC = {"labpipe.css": "text/css", "labpipe.js": "text/javascript", "favicon.svg": "image/svg+xml"}


@router.get("/static/{name}")
def static_file(name: str) -> FileResponse:
    if name not in _STATIC:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"{name}: no such file")
    return FileResponse(
        STATIC_DIR / name, media_type=_STATIC[name], headers={"Cache-Control": "public, max-age=3600"}
    )


# --------------------------------------------------------------------------------------------------
# Dashboard


class _QueueProbe:
    """The broker's queue depths, asked in the background and cached: a slow or absent broker
    never holds a page up."""

    def __init__(self, ttl: float = 1.0) -> None:
        self.ttl = ttl
        self.value: dict[str, int] | None = None
        self.error: str | None = "not asked yet"
        self.at = 0.0
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _ask(self, settings: Settings) -> None:
        try:
            from workers.app import queue_depths

            self.value, self.error = queue_depths(settings), None
        except Exception as exc:  # broker down, Celery missing: the dashboard still shows the rest
            self.value, self.error = None, str(exc) or type(exc).__name__
        self.at = time.monotonic()

    def get(self, settings: Settings, wait: float = 0.5) -> tuple[dict[str, int] | None, str | None]:
        started = None
        with self._lock:
            stale = time.monotonic() - self.at > self.ttl
            if stale and (self._thread is None or not self._thread.is_alive()):
                started = self._thread = threading.Thread(target=self._ask, args=(settings,), daemon=True)
                started.start()
        if started is not None:
            started.join(wait)  # the embedded broker answers in milliseconds; Redis down: not waited for
        return self.value, self.error


_queue_probe = _QueueProbe()


def _dashboard_context(session: Session, settings: Settings) -> dict[str, Any]:
    report = image_status(session, failures=20)
    images = report["images"]
    finished = images["done"] + images["failed"] + images["quarantined"]
    in_progress = []
    for item in report["in_progress"]:
        item = dict(item)
        item["progress"] = queries.plate_progress(settings.storage.crops_dir, item["image_id"])
        in_progress.append(item)
    queue, queue_error = _queue_probe.get(settings)
    return {
        "report": report,
        "images": images,
        "finished": finished,
        "in_progress": in_progress,
        "recent": queries.recent_images(session, 15),
        "failures": queries.failures(session, 20),
        "queue": None
        if queue is None
        else {
            "waiting": sum(v for k, v in queue.items() if k != "unacked"),
            "parts": [(k.removeprefix("labpipe."), v) for k, v in queue.items()],
        },
        "queue_error": queue_error,
        "age": queries.utc_age,
    }


@router.get("/", response_class=HTMLResponse)
def dashboard(
    request: Request, viewer: ViewerDep, session: SessionDep, settings: SettingsDep
) -> HTMLResponse:
    """What the daemon is doing now; ``?fragment=live`` returns only the part that refreshes."""
    context = {"page": "dashboard", **_dashboard_context(session, settings)}
    if request.query_params.get("fragment") == "live":
        return _page(request, "_live.html", viewer, context)
    return _page(request, "dashboard.html", viewer, context)


@router.post("/images/{image_id}/retry")
def retry(
    request: Request,
    image_id: int,
    session: SessionDep,
    settings: SettingsDep,
    csrf: Annotated[str, Form(max_length=128)] = "",
) -> Response:
    """Put a failed or quarantined plate back into the inbox (the watcher takes it again)."""
    check_write(request, get_viewer(request), csrf)
    image = session.get(Image, image_id)
    if image is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"image {image_id}: no such image")
    try:
        retry_image(session, image, settings)
    except RetryError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, exc.message) from None
    return _redirect("/?ok=retry")


# --------------------------------------------------------------------------------------------------
# Images and the plate view


@router.get("/images", response_class=HTMLResponse)
def images_page(request: Request, viewer: ViewerDep, session: SessionDep) -> HTMLResponse:
    state = request.query_params.get("status") or None
    if state is not None and state not in {s.value for s in ImageStatus}:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"{state!r}: not an image status")
    sample = (request.query_params.get("sample") or "").strip()[:64] or None
    page = _int_param(request, "page")
    total, rows = queries.image_list(
        session, status=state, sample=sample, limit=LIST_PAGE, offset=_offset(page, LIST_PAGE)
    )
    context = {
        "page": "images",
        "rows": rows,
        "pager": _pager(total, page, LIST_PAGE),
        "status_filter": state,
        "sample_filter": sample,
        "statuses": [s.value for s in ImageStatus],
    }
    return _page(request, "images.html", viewer, context)


def _get_image(session: Session, image_id: int) -> Image:
    image = session.get(Image, image_id) if 0 < image_id < 2**31 else None
    if image is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"image {image_id}: no such image")
    return image


@router.get("/images/{image_id}", response_class=HTMLResponse)
def plate_view(
    request: Request, image_id: int, viewer: ViewerDep, session: SessionDep, settings: SettingsDep
) -> HTMLResponse:
    """The plate with every specimen box, coloured by family, rejected ones dashed."""
    image = _get_image(session, image_id)
    rows = queries.image_specimens(session, image.id)
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
    context = {
        "page": "images",
        "image": image,
        "rows": rows,
        "legend": legend,
        "colours": colours,
        "width": image.width or max([r.bbox[0] + r.bbox[2] for r in rows] or [1000]),
        "height": image.height or max([r.bbox[1] + r.bbox[3] for r in rows] or [1000]),
        "has_file": image.width is not None and _overview_possible(image, settings),
        "progress": queries.plate_progress(settings.storage.crops_dir, image.id),
    }
    return _page(request, "plate.html", viewer, context)


def _overview_possible(image: Image, settings: Settings) -> bool:
    return overview_cache_path(image, settings).is_file() or image_file(image, settings) is not None


@router.get("/images/{image_id}/overview.jpg")
def plate_overview(
    request: Request, image_id: int, viewer: ViewerDep, session: SessionDep, settings: SettingsDep
) -> Response:
    """The plate's overview; its ETag is the plate's content hash (the id may name another plate later)."""
    image = _get_image(session, image_id)
    made = overview_file(image, settings)
    if made is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"image {image_id}: no plate file in the storage folders"
        )
    return content_response(request, made[0], overview_digest(image), "image/jpeg")


# --------------------------------------------------------------------------------------------------
# Specimens: gallery, review queue, one specimen


def _models(session: Session) -> list[Model]:
    return list(session.scalars(select(Model).order_by(Model.created_at.desc(), Model.id.desc())))


def _gallery(
    request: Request, viewer: Viewer, session: Session, settings: Settings, *, review: bool
) -> HTMLResponse:
    flt = _specimen_filter(request, default_state="unverified" if review else None)
    size = REVIEW_PAGE if review else GALLERY_PAGE
    page = _int_param(request, "page")
    offset = _offset(page, size)
    total, rows = queries.specimen_page(session, flt, limit=size, offset=offset)
    seen: dict[str, int] = {}
    for row in rows:
        if row.resolution.family:
            seen[row.resolution.family] = seen.get(row.resolution.family, 0) + 1
    context = {
        "colours": family_colours(sorted(seen, key=lambda f: (-seen[f], f.lower()))),
        "page": "review" if review else "specimens",
        "review": review,
        "flt": flt,
        "rows": rows,
        "offset": offset,
        "pager": _pager(total, page, size),
        "states": queries.STATES,
        "sorts": queries.SORTS,
        "models": _models(session),
        "families": queries.known_families(session),
        "accepted": _accepted_names(session, settings),
        "thumb": 320 if review else 160,
        "here": _here(request),
        "queue_query": _queue_query(request),
    }
    return _page(request, "specimens.html", viewer, context)


def _queue_query(request: Request) -> str:
    """The filter part of the current query string (no paging), carried to specimen pages."""
    keep = ("sample", "image", "family", "state", "p_min", "p_max", "model", "sort")
    return urlencode([(k, v) for k, v in request.query_params.multi_items() if k in keep and v])


@router.get("/specimens", response_class=HTMLResponse)
def specimens_page(
    request: Request, viewer: ViewerDep, session: SessionDep, settings: SettingsDep
) -> HTMLResponse:
    """Crops filtered by sample, family, state, confidence and model version; paged."""
    return _gallery(request, viewer, session, settings, review=False)


@router.get("/review", response_class=HTMLResponse)
def review_page(
    request: Request, viewer: ViewerDep, session: SessionDep, settings: SettingsDep
) -> HTMLResponse:
    """The review queue: unverified specimens, the least confident first, with quick verdicts."""
    return _gallery(request, viewer, session, settings, review=True)


def _get_specimen(session: Session, specimen_id: int) -> Specimen:
    spec = session.get(Specimen, specimen_id) if 0 < specimen_id < 2**31 else None
    if spec is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"specimen {specimen_id}: no such specimen")
    return spec


@router.get("/specimens/{specimen_id}", response_class=HTMLResponse)
def specimen_page(
    request: Request, specimen_id: int, viewer: ViewerDep, session: SessionDep, settings: SettingsDep
) -> HTMLResponse:
    """One specimen: crop, where it lies on the plate, every classification, the review form."""
    spec = _get_specimen(session, specimen_id)
    image = spec.image
    (row,) = queries.specimen_page_by_ids(session, [spec.id])
    labels: list[str] = []
    for c in spec.classifications:
        labels.extend(str(x) for x in (c.model.labels or []))
    labels = sorted(set(labels), key=str.lower)
    nav: dict[str, Any] = {"prev": None, "next": None}
    pos = request.query_params.get("pos", "")
    queue_query = _queue_query(request)
    from_review = request.query_params.get("from") == "review"
    if pos.isdigit() and len(pos) < 10:
        flt = _specimen_filter(request, default_state="unverified" if from_review else None)
        nav = queries.neighbours(session, flt, spec.id, int(pos))
    back_to_queue = "/review" if request.query_params.get("from") == "review" else "/specimens"
    context = {
        "page": "review" if request.query_params.get("from") == "review" else "specimens",
        "spec": spec,
        "row": row,
        "image": image,
        "code": specimen_code(
            image.sample_id, image.id, spec.index_in_image, spec.id, settings.bold.sample_id_pattern
        ),
        "labels": labels,
        "families": _accepted_names(session, settings),
        "nav": nav,
        "queue_query": queue_query,
        "from_review": request.query_params.get("from") == "review",
        "back_to_queue": back_to_queue + (f"?{queue_query}" if queue_query else ""),
        "here": _here(request),
        "plate_w": image.width or 1000,
        "plate_h": image.height or 1000,
    }
    return _page(request, "specimen.html", viewer, context)


@router.get("/specimens/{specimen_id}/crop.png")
def specimen_crop(
    request: Request, specimen_id: int, viewer: ViewerDep, session: SessionDep, settings: SettingsDep
) -> Response:
    """The specimen's crop; its ETag is the sha256 of the crop's bytes, revalidated on every use."""
    spec = _get_specimen(session, specimen_id)
    crop = crop_file(spec.crop_path, settings)
    if crop is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"specimen {specimen_id}: crop file is missing")
    return content_response(request, crop.path, crop.digest, "image/png")


@router.get("/specimens/{specimen_id}/thumb/{size}.jpg")
def specimen_thumb(
    request: Request,
    specimen_id: int,
    size: int,
    viewer: ViewerDep,
    session: SessionDep,
    settings: SettingsDep,
) -> Response:
    """The crop's thumbnail, cached by the crop's content; its ETag is that content's sha256."""
    if size not in THUMB_SIZES:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"thumbnails come in {THUMB_SIZES} pixels")
    crop_path = session.scalar(select(Specimen.crop_path).where(Specimen.id == specimen_id))
    if crop_path is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"specimen {specimen_id}: no such specimen")
    thumb = thumbnail_file(specimen_id, crop_path, size, settings)
    if thumb is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"specimen {specimen_id}: crop file is missing")
    return content_response(request, thumb.path, thumb.digest, "image/jpeg")


def _verdict(status_: str, family: str, pick: str, best: str | None) -> tuple[str, str | None]:
    """What a review form's buttons mean: ``pick`` (a top-k button) confirms when it is the
    model's family and corrects otherwise; ``corrected`` takes the typed family."""
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
    spec = _get_specimen(session, specimen_id)
    best = None
    if spec.classifications:
        newest = spec.classifications[-1]
        best = newest.family or (str(newest.top_k[0][0]) if newest.top_k else None)
    verdict, fam = _verdict(status_, family, pick, best)
    if verdict == "confirmed" and fam is None:
        fam = best
    try:
        record_verifications(
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
    return _redirect(_with_flash(target, "verified", n=1, what=verdict))


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
    try:
        if status_ == "confirmed" and family is None:
            for sid, fam in _best_families(session, ids).items():
                record_verifications(
                    session,
                    [sid],
                    "confirmed",
                    family=fam,
                    verified_by=_verifier(viewer),
                    families_file=lab_list,
                )
            if not ids:
                raise ReviewError(None, "no specimen selected", "tick at least one specimen")
        else:
            record_verifications(
                session,
                ids,
                status_,
                family=family,
                verified_by=_verifier(viewer),
                families_file=lab_list,
                add_family=add_family,
            )
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
    return _redirect(_with_flash(target, "verified", n=len(set(ids)), what=status_))


def _best_families(session: Session, ids: list[int]) -> dict[int, str | None]:
    rows = queries.specimen_page_by_ids(session, ids)
    found = {r.specimen_id: r.best_family for r in rows}
    missing = [i for i in ids if i not in found]
    if missing:
        raise ReviewError(f"specimen {missing[0]}", "no such specimen", "it may have been re-processed")
    return found


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


# --------------------------------------------------------------------------------------------------
# Samples, counts and exports


@router.get("/samples", response_class=HTMLResponse)
def samples_page(request: Request, viewer: ViewerDep, session: SessionDep) -> HTMLResponse:
    page = _int_param(request, "page")
    site = (request.query_params.get("site") or "").strip()[:255] or None
    total_query = select(func.count()).select_from(Sample)
    if site:
        total_query = total_query.where(Sample.site == site)
    total = int(session.scalar(total_query) or 0)
    rows = list_samples(session, site=site, limit=LIST_PAGE, offset=_offset(page, LIST_PAGE))
    unassigned = int(
        session.scalar(
            select(func.count(Specimen.id))
            .join(Image, Image.id == Specimen.image_id)
            .where(Image.sample_id.is_(None))
        )
        or 0
    )
    context = {
        "page": "samples",
        "rows": rows,
        "pager": _pager(total, page, LIST_PAGE),
        "site": site,
        "unassigned": unassigned,
    }
    return _page(request, "samples.html", viewer, context)


def _chart(counts: dict[str, Any], colours: dict[str, str], width: int = 640) -> dict[str, Any]:
    """Bar chart geometry (server-side SVG): one bar per family, the expected interval as a whisker."""
    fams = list(counts["families"].items())
    expected = counts.get("expected", {})
    for fam in sorted(set(expected) - set(counts["families"])):
        if expected[fam]["mean"] >= 0.5:
            fams.append((fam, 0))
    top = max([n for _, n in fams] + [e["high"] for e in expected.values()] + [counts[REJECTED], 1])
    label_w, bar_h, gap = 150, 22, 6
    scale = (width - label_w - 60) / top
    bars = []
    for i, (fam, n) in enumerate(fams):
        e = expected.get(fam)
        bars.append(
            {
                "label": fam,
                "n": n,
                "y": i * (bar_h + gap),
                "w": n * scale,
                "colour": colours.get(fam) or family_colour(fam),
                "low": e["low"] * scale if e else None,
                "high": e["high"] * scale if e else None,
                "mean": e["mean"] * scale if e else None,
            }
        )
    i = len(bars)
    bars.append(
        {
            "label": REJECTED,
            "n": counts[REJECTED],
            "y": i * (bar_h + gap),
            "w": counts[REJECTED] * scale,
            "colour": "#9a9a9a",
            "low": None,
            "high": None,
            "mean": None,
        }
    )
    ticks = _ticks(top)
    return {
        "bars": bars,
        "label_w": label_w,
        "bar_h": bar_h,
        "width": width,
        "height": len(bars) * (bar_h + gap) + 24,
        "ticks": [{"x": label_w + t * scale, "v": t} for t in ticks],
    }


def _ticks(top: float) -> list[int]:
    """Round tick values from 0 to ``top``.

    >>> _ticks(7), _ticks(230)
    ([0, 1, 2, 3, 4, 5, 6, 7], [0, 50, 100, 150, 200])
    """
    raw = max(1.0, top / 6)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    step = max(1, int(step))
    return list(range(0, int(top) + 1, step))


@router.get("/samples/{sample_id:path}", response_class=HTMLResponse)
def sample_page(
    request: Request, sample_id: str, viewer: ViewerDep, session: SessionDep, settings: SettingsDep
) -> HTMLResponse:
    """Metadata, family counts with a chart, expected counts with intervals, exports, plate layout."""
    sample = session.get(Sample, sample_id)
    if sample is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"sample {sample_id}: no such sample")
    threshold = _float_or_none(request.query_params.get("threshold"))
    table = compute_counts(session, CountFilter(samples=(sample.id,)), threshold=threshold)
    counts = table[0].as_dict() if table else None
    images = list(
        session.scalars(select(Image).where(Image.sample_id == sample.id).order_by(Image.id).limit(500))
    )
    n_images = int(session.scalar(select(func.count(Image.id)).where(Image.sample_id == sample.id)) or 0)
    expected_rows = []
    colours: dict[str, str] = {}
    if counts:
        exp = counts["expected"]
        rest = sorted(set(exp) - set(counts["families"]), key=lambda f: (-exp[f]["mean"], f.lower()))
        for fam in list(counts["families"]) + rest:
            expected_rows.append({"family": fam, "n": counts["families"].get(fam, 0), "e": exp.get(fam)})
        colours = family_colours(r["family"] for r in expected_rows)
    context = {
        "page": "samples",
        "sample": sample,
        "counts": counts,
        "expected_rows": expected_rows,
        "other": OTHER,
        "chart": _chart(counts, colours) if counts else None,
        "colours": colours,
        "images": images,
        "n_images": n_images,
        "threshold": threshold,
        "plates": list_plates(session, sample.id),
        "sample_q": quote(sample.id, safe=""),
    }
    return _page(request, "sample.html", viewer, context)


def _download(content: bytes | str, name: str, media_type: str) -> Response:
    return Response(
        content,
        media_type=media_type,
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


def _export_name(samples: list[str], what: str) -> str:
    stem = safe_component(samples[0]) if len(samples) == 1 else "labpipe"
    return f"{stem}-{what}"


@router.get("/exports/{kind}")
def export(
    kind: str,
    viewer: ViewerDep,
    session: SessionDep,
    settings: SettingsDep,
    sample: Annotated[list[str] | None, Query()] = None,
    threshold: Annotated[float | None, Query(ge=0.0, le=1.0)] = None,
    expected: bool = False,
    all_specimens: Annotated[bool, Query(alias="all")] = True,
) -> Response:
    """Downloads: ``counts.csv`` (long), ``matrix.csv`` (community matrix), ``dwca.zip`` (Darwin
    Core Archive), ``bold.zip`` (BOLD submission) for the given samples (all without)."""
    samples = [s[:64] for s in (sample or [])]
    flt = CountFilter(samples=tuple(samples))
    if kind == "counts.csv":
        table = [c.as_dict() for c in compute_counts(session, flt, threshold=threshold)]
        name = _export_name(samples, "counts-expected.csv" if expected else "counts.csv")
        return _download(counts_to_csv(table, expected=expected), name, "text/csv")
    if kind == "matrix.csv":
        table = [c.as_dict() for c in compute_counts(session, flt, threshold=threshold)]
        text = matrix_to_csv(table, "expected" if expected else "count")
        return _download(text, _export_name(samples, "matrix.csv"), "text/csv")
    if kind == "dwca.zip":
        q = api_reports.CountQuery(sample=samples or None, threshold=threshold)
        response = api_reports.get_dwca(session, settings, q)
        return _download(response.body, _export_name(samples, "dwca.zip"), "application/zip")
    if kind == "bold.zip":
        if len(samples) != 1:
            raise HTTPException(
                status.HTTP_400_BAD_REQUEST, "a BOLD export is made per sample: give ?sample="
            )
        response = api_reports.get_bold(
            session, settings, plate=None, sample=samples[0], all_specimens=all_specimens, threshold=threshold
        )
        return _download(response.body, _export_name(samples, "bold.zip"), "application/zip")
    raise HTTPException(
        status.HTTP_404_NOT_FOUND, f"{kind}: no such export (counts.csv, matrix.csv, dwca.zip, bold.zip)"
    )


@router.post("/plates/layout")
def plate_layout(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    sample: Annotated[str, Form(max_length=64)],
    csrf: Annotated[str, Form(max_length=128)] = "",
    family: Annotated[str, Form(max_length=128)] = "",
    include_rejected: Annotated[bool, Form()] = False,
) -> Response:
    """Lay the sample's specimens out on new 96-well plates (as ``labpipe plates layout``)."""
    check_write(request, get_viewer(request), csrf)
    cfg = settings.plates
    try:
        result = layout_plates(
            session,
            sample,
            pattern=settings.bold.sample_id_pattern,
            family=" ".join(family.split()) or None,
            include_rejected=include_rejected,
            order=cfg.order,
            controls=cfg.controls,
            prefix=cfg.prefix,
        )
    except (LabpipeError, ValueError) as exc:
        session.rollback()
        raise HTTPException(status.HTTP_400_BAD_REQUEST, getattr(exc, "message", str(exc))) from None
    session.commit()
    return _redirect(_with_flash(f"/samples/{quote(sample, safe='')}", "layout", n=len(result.placed)))


@router.get("/plates/{plate}/manifest.csv")
def plate_manifest_csv(plate: str, viewer: ViewerDep, session: SessionDep, settings: SettingsDep) -> Response:
    cfg = settings.plates
    rows = plate_manifest(session, [plate[:64]], controls=cfg.controls, order=cfg.order)
    return _download(manifest_csv(rows), f"{safe_component(plate)}-manifest.csv", "text/csv")


@router.get("/plates/{plate}/sheet", response_class=HTMLResponse)
def plate_sheet(plate: str, viewer: ViewerDep, session: SessionDep, settings: SettingsDep) -> HTMLResponse:
    cfg = settings.plates
    rows = plate_manifest(session, [plate[:64]], controls=cfg.controls, order=cfg.order)
    return HTMLResponse(
        picking_sheet_html(rows, settings.storage.crops_dir, cfg.thumbnail_px, f"Plate {plate}")
    )


# --------------------------------------------------------------------------------------------------
# Models

_PLOTS = {
    "test-confusion": "confusion.png",
    "test-risk": "risk_coverage.png",
    "eval-confusion": "eval/confusion.png",
    "eval-risk": "eval/risk_coverage.png",
}
_REPORTS = {"test": "metrics.json", "eval": "eval/report.json"}


def _model_dir(model: Model) -> Path | None:
    if not model.path:
        return None
    path = Path(model.path)
    return path if path.is_dir() else None


def _read_json(directory: Path | None, relative: str) -> dict[str, Any] | None:
    if directory is None:
        return None
    path = inside(directory / relative, [directory])
    if path is None:
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@router.get("/models", response_class=HTMLResponse)
def models_page(request: Request, viewer: ViewerDep, session: SessionDep) -> HTMLResponse:
    rows = _models(session)
    usage = queries.model_usage(session)
    context = {"page": "models", "rows": rows, "usage": usage}
    return _page(request, "models.html", viewer, context)


@router.get("/models/{model_id}", response_class=HTMLResponse)
def model_page(request: Request, model_id: int, viewer: ViewerDep, session: SessionDep) -> HTMLResponse:
    """A model version: labels, configuration, and its evaluation reports with plots."""
    model = session.get(Model, model_id) if 0 < model_id < 2**31 else None
    if model is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"model {model_id}: no such model")
    directory = _model_dir(model)
    reports = {}
    for key, rel in _REPORTS.items():
        data = _read_json(directory, rel)
        if data is None and key == "test":
            data = model.metrics
        if data:
            reports[key] = data
    plots = {
        key: f"/models/{model.id}/plots/{key}.png"
        for key, rel in _PLOTS.items()
        if directory is not None and inside(directory / rel, [directory]) is not None
    }
    config = _read_json(directory, "config.json") or {}
    context = {
        "page": "models",
        "model": model,
        "reports": reports,
        "plots": plots,
        "config": {
            k: config.get(k)
            for k in ("threshold", "temperature", "input_size", "architecture")
            if k in config
        },
        "usage": queries.model_usage(session).get(model.id, 0),
    }
    return _page(request, "model.html", viewer, context)


@router.get("/models/{model_id}/plots/{key}.png")
def model_plot(model_id: int, key: str, viewer: ViewerDep, session: SessionDep) -> Response:
    """A plot of a registered model's evaluation: only the fixed file names of a model directory."""
    model = session.get(Model, model_id) if 0 < model_id < 2**31 else None
    directory = _model_dir(model) if model is not None else None
    path = inside(directory / _PLOTS[key], [directory]) if directory is not None and key in _PLOTS else None
    if path is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"model {model_id}: no plot {key!r}")
    return FileResponse(path, media_type="image/png", headers={"Cache-Control": "private, max-age=600"})

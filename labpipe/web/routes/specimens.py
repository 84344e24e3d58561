"""Specimens: the gallery (search, filters, sort by uncertainty, paging, bulk review), the review
queue, one specimen with its review form, and its crop and thumbnails.

The gallery comes in two views (``?view=``): ``dense``, the gallery's default, square tiles of an
adjustable size (``?tile=`` pixels, a slider on the page) with a one-line caption, two dozen and
more on a laptop screen; and ``cards``, the review queue's default, with the quick verdict buttons.
On every crop the page outlines the specimen the crop is about and, when the plate's scale is
known, draws a scale bar (:mod:`labpipe.web.geometry`); the crop file itself is never changed.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import HTMLResponse, Response
from sqlalchemy.orm import Session

from labpipe.api.conditional import content_response
from labpipe.api.deps import SessionDep, SettingsDep
from labpipe.barcoding.ids import specimen_code
from labpipe.config import Settings
from labpipe.queries import listings, records
from labpipe.queries.listings import SpecimenFilter, SpecimenRow
from labpipe.queries.models import models_newest_first
from labpipe.web.auth import Viewer
from labpipe.web.charts import plate_extent, share_width
from labpipe.web.geometry import crop_outline, scale_bar
from labpipe.web.media import THUMB_SIZES, crop_file, thumbnail_file
from labpipe.web.render import family_colours
from labpipe.web.routes.common import (
    DENSE_PAGE,
    GALLERY_PAGE,
    REVIEW_PAGE,
    ViewerDep,
    accepted_names,
    here,
    int_param,
    page_offset,
    pager,
    probability_param,
    render_page,
    specimen_or_404,
)

__all__ = ["TILE_SIZES", "VIEWS", "crop_pictures", "router", "specimen_filter"]

router = APIRouter(include_in_schema=False)

_QUEUE_KEYS = ("q", "sample", "image", "family", "state", "dna", "p_min", "p_max", "model", "sort")
"""The query parameters that make a list of specimens (carried from the gallery to a specimen)."""

VIEWS = {"dense": "dense tiles", "cards": "cards"}
"""The gallery's views (``?view=``)."""
TILE_SIZES = (64, 320, 112)
"""Smallest, largest and default side of a dense tile, in CSS pixels (``?tile=``)."""
_CROP_BAR = 0.3
"""A crop's scale bar is the longest round length up to this share of the crop's side."""


def specimen_filter(
    request: Request,
    *,
    default_state: str | None = None,
    sort: str | None = None,
    session: Session | None = None,
    code_pattern: str | None = None,
) -> SpecimenFilter:
    """The gallery's filter from the query string (a bad value is a 400). With ``session`` and the
    Sample ID pattern, a search text that is a specimen's Sample ID finds that specimen."""
    q = request.query_params
    search = (q.get("q") or "").strip()[:128] or None
    search_ids: tuple[int, ...] = ()
    if search and session is not None and code_pattern:
        search_ids = listings.code_search_ids(session, search, code_pattern)
    state = q.get("state", default_state) or None
    if state == "any":
        state = None
    image = q.get("image")
    image_id = int(image) if image and image.isdigit() and 0 < int(image) < 2**31 else None
    try:
        return SpecimenFilter(
            sample=(q.get("sample") or "").strip()[:64] or None,
            image_id=image_id,
            family=(q.get("family") or "").strip()[:128] or None,
            state=state,
            p_min=probability_param(q.get("p_min")),
            p_max=probability_param(q.get("p_max")),
            model=(q.get("model") or "").strip()[:255] or None,
            sort=q.get("sort") or sort or "uncertain",
            search=search,
            search_ids=search_ids,
            dna=q.get("dna") or None,
        )
    except ValueError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None


def _queue_query(request: Request) -> str:
    """The filter part of the current query string (no paging), carried to specimen pages."""
    return urlencode([(k, v) for k, v in request.query_params.multi_items() if k in _QUEUE_KEYS and v])


def crop_pictures(rows: list[SpecimenRow], margin: float) -> dict[int, dict[str, Any]]:
    """What each crop's picture carries: the specimen's outline and a scale bar (either ``None``
    when not known)."""
    out: dict[int, dict[str, Any]] = {}
    for row in rows:
        out[row.specimen_id] = {
            "outline": crop_outline(row.bbox, row.crop_size, row.image_size, margin),
            "bar": scale_bar(row.um_per_px, row.crop_size, _CROP_BAR),
        }
    return out


def _view(request: Request, review: bool) -> tuple[str, int]:
    """The gallery's view and tile size from the query string (anything unknown: the defaults)."""
    view = request.query_params.get("view", "")
    if view not in VIEWS:
        view = "cards" if review else "dense"
    smallest, largest, default = TILE_SIZES
    tile = int_param(request, "tile", default)
    return view, max(smallest, min(largest, tile))


def _gallery(
    request: Request, viewer: Viewer, session: Session, settings: Settings, *, review: bool
) -> HTMLResponse:
    flt = specimen_filter(
        request,
        default_state="unverified" if review else None,
        session=session,
        code_pattern=settings.bold.sample_id_pattern,
    )
    view, tile = _view(request, review)
    size = DENSE_PAGE if view == "dense" else (REVIEW_PAGE if review else GALLERY_PAGE)
    page = int_param(request, "page")
    offset = page_offset(page, size)
    total, rows = listings.specimen_page(session, flt, limit=size, offset=offset)
    seen: dict[str, int] = {}
    for row in rows:
        if row.resolution.family:
            seen[row.resolution.family] = seen.get(row.resolution.family, 0) + 1
    pattern = settings.bold.sample_id_pattern
    codes = {
        r.specimen_id: specimen_code(r.sample, r.image_id, r.index_in_image, r.specimen_id, pattern)
        for r in rows
    }
    context = {
        "colours": family_colours(sorted(seen, key=lambda f: (-seen[f], f.lower()))),
        "page": "review" if review else "specimens",
        "review": review,
        "flt": flt,
        "rows": rows,
        "codes": codes,
        "pictures": crop_pictures(rows, settings.crops.margin),
        "offset": offset,
        "pager": pager(total, page, size),
        "states": listings.STATES,
        "sorts": listings.SORTS,
        "dna_filters": listings.DNA_FILTERS,
        "views": VIEWS,
        "view": view,
        "tile": tile,
        "tile_sizes": TILE_SIZES,
        "models": models_newest_first(session),
        "families": listings.known_families(session),
        "accepted": accepted_names(session, settings),
        "thumb": 320 if review else 160,
        "here": here(request),
        "queue_query": _queue_query(request),
    }
    return render_page(request, "specimens.html", viewer, context)


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


@router.get("/specimens/{specimen_id}", response_class=HTMLResponse)
def specimen_page(
    request: Request, specimen_id: int, viewer: ViewerDep, session: SessionDep, settings: SettingsDep
) -> HTMLResponse:
    """One specimen: crop, where it lies on the plate, every classification, the review form."""
    spec = specimen_or_404(session, specimen_id)
    image = spec.image
    (row,) = listings.specimen_rows(session, [spec.id])
    labels: list[str] = []
    for c in spec.classifications:
        labels.extend(str(x) for x in (c.model.labels or []))
    labels = sorted(set(labels), key=str.lower)
    nav: dict[str, Any] = {"prev": None, "next": None}
    pos = request.query_params.get("pos", "")
    queue_query = _queue_query(request)
    from_review = request.query_params.get("from") == "review"
    if pos.isdigit() and len(pos) < 10:
        flt = specimen_filter(
            request,
            default_state="unverified" if from_review else None,
            session=session,
            code_pattern=settings.bold.sample_id_pattern,
        )
        nav = listings.neighbours(session, flt, spec.id, int(pos))
    back_to_queue = "/review" if from_review else "/specimens"
    plate_w, plate_h = plate_extent(image.width, image.height, [])
    context = {
        "page": "review" if from_review else "specimens",
        "spec": spec,
        "row": row,
        "top_k": [(f, p, share_width(p)) for f, p in row.call.top_k],
        "image": image,
        "code": specimen_code(
            image.sample_id, image.id, spec.index_in_image, spec.id, settings.bold.sample_id_pattern
        ),
        "labels": labels,
        "families": accepted_names(session, settings),
        "nav": nav,
        "queue_query": queue_query,
        "from_review": from_review,
        "back_to_queue": back_to_queue + (f"?{queue_query}" if queue_query else ""),
        "here": here(request),
        "plate_w": plate_w,
        "plate_h": plate_h,
        "picture": crop_pictures([row], settings.crops.margin)[row.specimen_id],
    }
    return render_page(request, "specimen.html", viewer, context)


@router.get("/specimens/{specimen_id}/crop.png")
def specimen_crop(
    request: Request, specimen_id: int, viewer: ViewerDep, session: SessionDep, settings: SettingsDep
) -> Response:
    """The specimen's crop; its ETag is the sha256 of the crop's bytes, revalidated on every use."""
    spec = specimen_or_404(session, specimen_id)
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
    crop_path = records.specimen_crop_path(session, specimen_id)
    if crop_path is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"specimen {specimen_id}: no such specimen")
    thumb = thumbnail_file(specimen_id, crop_path, size, settings)
    if thumb is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"specimen {specimen_id}: crop file is missing")
    return content_response(request, thumb.path, thumb.digest, "image/jpeg")

"""What every page module shares: rendering a page with its flash message, redirects, paging,
query-string parameters, downloads, and 404s for rows that do not exist."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import Depends, HTTPException, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.orm import Session

from labpipe.config import Settings
from labpipe.db.models import Image, Specimen, utcnow
from labpipe.families import FamilyListError, accepted_families
from labpipe.logs import get_logger
from labpipe.queries import records
from labpipe.web.auth import CSRF_FIELD, Viewer, require_page_read
from labpipe.web.render import templates

__all__ = [
    "DENSE_PAGE",
    "GALLERY_PAGE",
    "LIST_PAGE",
    "MAX_PAGE",
    "REVIEW_PAGE",
    "ViewerDep",
    "accepted_names",
    "download",
    "here",
    "id_ranges",
    "image_or_404",
    "int_param",
    "page_offset",
    "pager",
    "parse_id_ranges",
    "probability_param",
    "redirect",
    "render_page",
    "specimen_or_404",
    "with_flash",
]

log = get_logger(__name__)

ViewerDep = Annotated[Viewer, Depends(require_page_read)]
GALLERY_PAGE = 60
DENSE_PAGE = 120
REVIEW_PAGE = 24
LIST_PAGE = 50
MAX_PAGE = 1_000_000

FLASH = {
    "verified": "Recorded: {n} specimen(s) {what}.",
    "undone": "Undone: {n} verdict(s) withdrawn; what counted before counts again.",
    "retry": "The file is back in the inbox; the daemon will process it again.",
    "requeued": "The plate is queued again: the next free worker takes it over.",
    "layout": "Laid out {n} specimen(s) on new plates.",
    "login": "Logged in: your reviews are recorded as {who}.",
    "logout": "Logged out.",
    "reviewed": "Plate marked boxes reviewed as {who}: its boxes go into the training data (COCO export).",
    "unreviewed": "The plate's boxes-reviewed mark is off.",
}
VERDICT_WORDS = {
    "confirmed": "confirmed",
    "corrected": "corrected",
    "not_specimen": "marked as not a specimen",
    "multiple": "marked as several specimens",
}


_ID_RANGES = re.compile(r"\d{1,10}(?:-\d{1,10})?(?:,\d{1,10}(?:-\d{1,10})?)*")
_MAX_RANGE_IDS = 1000


def id_ranges(ids: Iterable[int]) -> str:
    """Ids as short text for a URL: runs of consecutive ids as ``first-last``.

    >>> id_ranges([12, 13, 14, 20, 7])
    '7,12-14,20'
    """
    runs: list[list[int]] = []
    for i in sorted(set(ids)):
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ",".join(f"{a}-{b}" if b > a else str(a) for a, b in runs)


def parse_id_ranges(text: str) -> list[int]:
    """The ids of :func:`id_ranges`' text; ``ValueError`` for anything else or over 1000 ids.

    >>> parse_id_ranges("7,12-14,20")
    [7, 12, 13, 14, 20]
    """
    if len(text) > 8000 or not _ID_RANGES.fullmatch(text):
        raise ValueError(f"{text[:40]!r}: not a list of ids")
    ids: list[int] = []
    for run in text.split(","):
        first, _, last = run.partition("-")
        a, b = int(first), int(last or first)
        if b < a or len(ids) + b - a + 1 > _MAX_RANGE_IDS:
            raise ValueError(f"{run!r}: not a run of at most {_MAX_RANGE_IDS} ids")
        ids.extend(range(a, b + 1))
    return ids


def render_page(
    request: Request, name: str, viewer: Viewer, context: dict[str, Any], code: int = 200
) -> HTMLResponse:
    """Template ``name`` with ``context``, the viewer, the CSRF field name, the time, and the flash
    message named by ``?ok=`` (after a redirect from a form); with ``?undo=`` (the audit events of
    the verdicts just recorded, :func:`id_ranges`) the message offers an Undo button."""
    flash = None
    undo = None
    ok = request.query_params.get("ok")
    if ok in FLASH:
        n = request.query_params.get("n", "")
        what = VERDICT_WORDS.get(request.query_params.get("what", ""), "verified")
        flash = FLASH[ok].format(n=n if n.isdigit() else "", what=what, who=viewer.name or "you")
        events = request.query_params.get("undo", "")
        if ok == "verified" and events and len(events) <= 8000 and _ID_RANGES.fullmatch(events):
            undo = events
    return templates.TemplateResponse(
        request,
        name,
        {
            "viewer": viewer,
            "flash": flash,
            "flash_undo": undo,
            "flash_back": here(request),
            "csrf_field": CSRF_FIELD,
            "now": utcnow(),
            **context,
        },
        status_code=code,
    )


def redirect(url: str) -> RedirectResponse:
    """303 See Other: after a form post, the browser gets ``url``."""
    return RedirectResponse(url, status_code=status.HTTP_303_SEE_OTHER)


def with_flash(url: str, code: str, **extra: Any) -> str:
    """``url`` with ``?ok=code`` (and ``extra``) for :func:`render_page`'s flash message.

    >>> with_flash("/samples/S1", "layout", n=3)
    '/samples/S1?ok=layout&n=3'
    """
    params = "&".join(f"{k}={quote(str(v), safe='')}" for k, v in {"ok": code, **extra}.items())
    return url + ("&" if "?" in url else "?") + params


def page_offset(page: int, size: int) -> int:
    """Rows before page ``page`` (1-based, clipped to :data:`MAX_PAGE`) of ``size`` rows.

    >>> page_offset(3, 50), page_offset(0, 50)
    (100, 0)
    """
    return (max(1, min(page, MAX_PAGE)) - 1) * size


def pager(total: int | None, page: int, size: int) -> dict[str, Any]:
    """What ``_pager.html`` shows: this page, how many, and the first row's number."""
    pages = max(1, math.ceil((total or 0) / size))
    page = max(1, min(page, MAX_PAGE))
    return {"page": page, "pages": pages, "size": size, "total": total, "first": (page - 1) * size + 1}


def int_param(request: Request, name: str, default: int = 1) -> int:
    """A small non-negative integer query parameter, else ``default``."""
    text = request.query_params.get(name, "")
    return int(text) if text.isdigit() and len(text) < 10 else default


def probability_param(text: str | None) -> float | None:
    """A probability typed into a form: empty is ``None``; anything not in [0, 1] is a 400."""
    if text is None or not text.strip():
        return None
    try:
        value = float(text)
    except ValueError:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"{text!r}: not a number") from None
    if not 0.0 <= value <= 1.0 or not math.isfinite(value):
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"{text!r}: a probability is between 0 and 1")
    return value


def here(request: Request) -> str:
    """The current page's URL without the flash message's parameters (to come back to after a post)."""
    items = [(k, v) for k, v in request.query_params.multi_items() if k not in ("ok", "n", "what", "undo")]
    return request.url.path + (f"?{urlencode(items)}" if items else "")


def download(content: bytes | str, name: str, media_type: str) -> Response:
    """A file the browser saves as ``name``."""
    return Response(
        content,
        media_type=media_type,
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


def accepted_names(session: Session, settings: Settings) -> list[str]:
    """The family names a person may give (for the forms' suggestions); a broken lab list is logged
    and left out here (recording a verification reports it)."""
    try:
        return accepted_families(session, settings.families_path).names()
    except FamilyListError as exc:
        log.warning("lab list of families unreadable", error=exc.message)
        return accepted_families(session, None).names()


def image_or_404(session: Session, image_id: int) -> Image:
    """The image, or a 404 page."""
    image = records.get_image(session, image_id)
    if image is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"image {image_id}: no such image")
    return image


def specimen_or_404(session: Session, specimen_id: int) -> Specimen:
    """The specimen, or a 404 page."""
    spec = records.get_specimen(session, specimen_id)
    if spec is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"specimen {specimen_id}: no such specimen")
    return spec

"""Files served under URLs that name a database id (``/specimens/7/crop.png``): keyed by content.

An id names a row, not a picture: after a plate is processed again, the same id may stand for
another specimen. Such a URL is therefore never cached as immutable. Its answer carries a strong
ETag made from the sha256 of the bytes it shows, and ``Cache-Control: private, max-age=0,
must-revalidate``: the browser keeps its copy but asks every time, and a request whose
``If-None-Match`` names the current ETag is answered ``304 Not Modified`` without a body.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import Request
from fastapi.responses import FileResponse, Response

__all__ = ["REVALIDATE", "content_response", "etag_matches", "etag_of"]

REVALIDATE = "private, max-age=0, must-revalidate"
"""``Cache-Control`` of every answer whose URL names an id: kept, but checked on every use."""


def etag_of(digest: str) -> str:
    """The strong ETag of content whose sha256 (hex) is ``digest``."""
    return f'"{digest}"'


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """Whether an ``If-None-Match`` header names ``etag`` (weak comparison, ``*`` matches any).

    >>> etag_matches('W/"ab", "cd"', '"cd"'), etag_matches('"ab"', '"cd"'), etag_matches(None, '"cd"')
    (True, False, False)
    """
    if not if_none_match:
        return False
    for candidate in if_none_match.split(","):
        tag = candidate.strip()
        if tag == "*" or tag.removeprefix("W/") == etag:
            return True
    return False


def content_response(
    request: Request, path: Path, digest: str, media_type: str, *, filename: str | None = None
) -> Response:
    """``path`` with the ETag of ``digest`` (the sha256 of what it shows), or ``304`` when the
    browser's copy is that one (see the module docstring)."""
    headers = {"ETag": etag_of(digest), "Cache-Control": REVALIDATE}
    if etag_matches(request.headers.get("if-none-match"), headers["ETag"]):
        return Response(status_code=304, headers=headers)
    return FileResponse(path, media_type=media_type, headers=headers, filename=filename)

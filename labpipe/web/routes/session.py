"""Logging in and out (the API token as an HttpOnly cookie, the reviewer's name beside it), and the
UI's static files."""

from __future__ import annotations

import secrets
import time
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Form, HTTPException, Request, status
from fastapi.responses import FileResponse, HTMLResponse, Response

from labpipe.api.deps import SettingsDep
from labpipe.api.guard import limiter_for
from labpipe.web.auth import (
    NAME_COOKIE,
    SESSION_COOKIE,
    check_write,
    get_viewer,
    new_session,
    safe_next,
    session_max_age,
    session_store,
)
from labpipe.web.render import STATIC_DIR
from labpipe.web.routes.common import redirect, render_page, with_flash

__all__ = ["router"]

router = APIRouter(include_in_schema=False)


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, next: str = "/") -> HTMLResponse:
    viewer = get_viewer(request)
    return render_page(
        request, "login.html", viewer, {"next": safe_next(next), "error": None, "page": "login"}
    )


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
    limiter = limiter_for(request)
    limiter.check(request)  # 429 after too many wrong tokens from this address
    error = None
    if not expected:
        error = "This labpipe has no API token ([api] token): the web UI is read-only."
    elif not token or not _token_ok(token, expected):
        limiter.record(request)
        time.sleep(0.5)  # slows down guessing
        error = "That is not the API token of this labpipe ([api] token in its configuration)."
    elif not " ".join(name.split()):
        error = "Give your name: verifications are recorded with it."
    if error:
        context = {"next": safe_next(next), "error": error, "name": name, "page": "login"}
        return render_page(request, "login.html", viewer, context, code=401)
    who = " ".join(name.split())
    response = redirect(with_flash(safe_next(next), "login"))
    secure = request.url.scheme == "https"
    response.set_cookie(
        SESSION_COOKIE,
        new_session(settings),
        httponly=True,
        samesite="strict",
        secure=secure,
        path="/",
        max_age=int(session_max_age(settings)),
    )
    response.set_cookie(
        NAME_COOKIE, quote(who, safe=" "), httponly=True, samesite="strict", secure=secure, path="/"
    )
    return response


def _token_ok(given: str, expected: str) -> bool:
    return secrets.compare_digest(given.strip().encode("utf-8"), expected.encode("utf-8"))


@router.post("/logout")
def logout(
    request: Request, settings: SettingsDep, csrf: Annotated[str, Form(max_length=128)] = ""
) -> Response:
    """End this session on the server (the cookie stops working even if kept) and in the browser."""
    viewer = get_viewer(request)
    if viewer.logged_in and not viewer.via_header:
        check_write(request, viewer, csrf)
        if viewer.session:
            session_store(settings).revoke(viewer.session, time.time() + session_max_age(settings))
    response = redirect("/login?ok=logout")
    response.delete_cookie(SESSION_COOKIE, path="/")
    response.delete_cookie(NAME_COOKIE, path="/")
    return response


# Static files: a fixed list, nothing else under the package is reachable.
_STATIC = {"labpipe.css": "text/css", "labpipe.js": "text/javascript", "favicon.svg": "image/svg+xml"}


@router.get("/static/{name}")
def static_file(name: str) -> FileResponse:
    if name not in _STATIC:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"{name}: no such file")
    return FileResponse(
        STATIC_DIR / name, media_type=_STATIC[name], headers={"Cache-Control": "public, max-age=3600"}
    )

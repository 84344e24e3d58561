"""labpipe's web UI for technicians and ecologists, served by the same process as the HTTP API.

``create_web_app(settings)`` is the HTTP API of :func:`labpipe.api.create_app` with the UI's
pages mounted at the root through the factory's ``extra_routers`` (``labpipe api`` and
``labpipe serve --api`` serve it). To add the UI to an app built elsewhere, pass
:data:`ui_router` in ``extra_routers``; :func:`create_web_app` only adds HTML error pages on top.

The pages are listed in :mod:`labpipe.web.routes`; access rules are in :mod:`labpipe.web.auth`.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

from labpipe.web.routes import router as ui_router

if TYPE_CHECKING:
    from fastapi import FastAPI, Request
    from fastapi.responses import Response
    from sqlalchemy.orm import Session, sessionmaker

    from labpipe.config import Settings

__all__ = ["CSP", "create_web_app", "ui_router"]

CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
"""Content-Security-Policy of every UI page (the API's docs page loads its own assets)."""


def create_web_app(settings: Settings, *, session_factory: sessionmaker[Session] | None = None) -> FastAPI:
    """The HTTP API (under ``/api``) and the web UI (everything else) in one ASGI app."""
    from fastapi import HTTPException
    from fastapi.exception_handlers import http_exception_handler
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from labpipe.api import create_app

    app = create_app(settings, session_factory=session_factory, extra_routers=[ui_router])

    async def html_errors(request: Request, exc: Exception) -> Response:
        """HTML error pages for the UI's URLs (API URLs keep their JSON errors)."""
        assert isinstance(exc, StarletteHTTPException)
        wants_html = "text/html" in request.headers.get("accept", "")
        if request.url.path.startswith("/api") or not wants_html or exc.status_code < 400:
            return await http_exception_handler(request, exc)  # type: ignore[arg-type]
        from fastapi.responses import HTMLResponse

        return HTMLResponse(_error_page(exc.status_code, exc.detail), status_code=exc.status_code)

    app.add_exception_handler(StarletteHTTPException, html_errors)
    app.add_exception_handler(HTTPException, html_errors)

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Any) -> Response:
        """The UI's pages may not be framed (clickjacking) and run only this site's scripts."""
        response: Response = await call_next(request)
        if not request.url.path.startswith("/api"):
            response.headers.setdefault("Content-Security-Policy", CSP)
            response.headers.setdefault("X-Frame-Options", "DENY")
            response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    return app


def _error_page(code: int, detail: Any) -> str:
    text = detail if isinstance(detail, str) else "the request was not understood"
    titles = {401: "Please log in", 403: "Not allowed", 404: "Not found", 409: "Cannot do that now"}
    title = titles.get(code, "Something was wrong with the request")
    login = '<p><a href="/login">Log in</a></p>' if code == 401 else ""
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{code} · labpipe</title>"
        '<link rel="stylesheet" href="/static/labpipe.css"></head><body>'
        '<header class="top"><a class="brand" href="/">labpipe</a></header>'
        f'<main class="narrow"><h1>{html.escape(title)}</h1><p class="error-detail">{html.escape(text)}</p>'
        f'{login}<p><a href="/">Dashboard</a></p></main>'
        "</body></html>"
    )

"""Who may see and who may change what, for the web UI (the same rules as the HTTP API).

- **Reads** follow ``[api] read_access``: ``localhost`` lets browsers on this machine in and sends
  everyone else to the login page; ``anyone`` opens the pages; ``token`` asks everyone to log in.
- **Writes** (every POST) need the API token: either the login cookie or, for scripts,
  ``Authorization: Bearer <token>``. With no token configured, the UI is read-only.

The login page takes the token once and sets an HttpOnly, ``SameSite=Strict`` session cookie
(:mod:`labpipe.web.sessions`): signed with the token, never holding it, expiring after
``[api] session_hours``, ended on the server by logging out, and all at once by
``labpipe sessions revoke`` or by changing ``[api] token``. Wrong tokens and forged cookies count
against the client's address (:mod:`labpipe.api.guard`). Cross-site request forgery is refused three times
over: the cookie is not sent on cross-site requests (SameSite=Strict), every form carries a
per-session token (:func:`csrf_value`) that another site cannot read, and a request whose
``Origin`` header names another host is refused.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from fastapi import HTTPException, Request, status

from labpipe.api.deps import is_local_client
from labpipe.config import Settings
from labpipe.web.sessions import SessionStore, issue_session, session_nonce

__all__ = [
    "CSRF_FIELD",
    "NAME_COOKIE",
    "SESSION_COOKIE",
    "Viewer",
    "check_write",
    "csrf_value",
    "get_viewer",
    "new_session",
    "require_page_read",
    "safe_next",
    "session_max_age",
    "session_store",
]

SESSION_COOKIE = "labpipe_session"
NAME_COOKIE = "labpipe_user"
CSRF_FIELD = "csrf"
_CSRF_MESSAGE = b"labpipe web form v2"


def session_store(settings: Settings) -> SessionStore:
    """Where the session generation and the logged-out sessions are kept."""
    return SessionStore(settings.storage.root / "state")


def session_max_age(settings: Settings) -> float:
    """How long a login lasts, in seconds."""
    return float(settings.api.session_hours) * 3600.0


def new_session(settings: Settings) -> str:
    """A new session cookie value for a successful login."""
    return issue_session(settings.api.token, session_store(settings).generation(), time.time())


def csrf_value(token: str, session: str) -> str:
    """The hidden form field every write form of one session carries (readable only by this site's
    pages; another session's value is refused)."""
    return hmac.new(
        token.encode("utf-8"), _CSRF_MESSAGE + b"|" + session.encode(), hashlib.sha256
    ).hexdigest()


def _equal(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and secrets.compare_digest(a.encode(), b.encode())


@dataclass(frozen=True)
class Viewer:
    """The person looking at a page."""

    logged_in: bool
    """Holds the token (cookie or Bearer header): may write."""
    name: str | None
    """The name given at login (recorded as ``verified_by``)."""
    via_header: bool
    """Authenticated by ``Authorization: Bearer`` (a script): no form token needed."""
    csrf: str | None
    """The form token to embed in write forms (``None`` when not logged in)."""
    writes_enabled: bool
    """A token is configured at all."""
    session: str | None = None
    """The login session's nonce (cookie logins only): logging out revokes it."""

    @property
    def can_write(self) -> bool:
        return self.logged_in and self.writes_enabled


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def get_viewer(request: Request) -> Viewer:
    """Who is asking (dependency)."""
    settings: Settings = request.app.state.settings
    token = settings.api.token
    if not token:
        return Viewer(False, None, False, None, False)
    from labpipe.api.guard import limiter_for

    presented_header, presented_cookie = _bearer(request), request.cookies.get(SESSION_COOKIE)
    by_header = _equal(presented_header, token)
    nonce = None
    if presented_cookie:
        store = session_store(settings)
        nonce = session_nonce(
            presented_cookie,
            token,
            store.generation(),
            time.time(),
            session_max_age(settings),
            store.revoked(),
        )
    by_cookie = nonce is not None
    logged_in = by_header or by_cookie
    if (presented_header and not by_header) or (presented_cookie and not by_cookie):
        limiter = limiter_for(request)
        limiter.check(request)  # 429 once this address has guessed too often
        limiter.record(request)
    name = (request.cookies.get(NAME_COOKIE) or "").strip()[:255] or None
    if by_header and not by_cookie:
        name = request.headers.get("x-labpipe-user", "").strip()[:255] or "api"
    csrf = csrf_value(token, nonce) if nonce else (csrf_value(token, "bearer") if by_header else None)
    return Viewer(logged_in, name, by_header and not by_cookie, csrf, True, nonce)


def safe_next(target: str | None, default: str = "/") -> str:
    """A local path to go back to after login (never another site).

    >>> safe_next("/specimens?family=X"), safe_next("//evil.example/x"), safe_next("https://a.b/")
    ('/specimens?family=X', '/', '/')
    """
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return default
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return default
    return target


def _login_redirect(request: Request) -> HTTPException:
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return HTTPException(
        status.HTTP_303_SEE_OTHER,
        "log in first",
        headers={"Location": f"/login?next={quote(here, safe='')}"},
    )


def may_read(request: Request, viewer: Viewer) -> bool:
    """The ``[api] read_access`` rule, with the login cookie counting as the token."""
    mode = request.app.state.settings.api.read_access
    if mode == "anyone" or viewer.logged_in:
        return True
    return mode == "localhost" and is_local_client(request.client.host if request.client else None)


def require_page_read(request: Request) -> Viewer:
    """Dependency of every page: the viewer, or a redirect to the login page (files: 401)."""
    viewer = get_viewer(request)
    if may_read(request, viewer):
        return viewer
    if request.url.path.endswith((".png", ".jpg", ".csv", ".zip", ".css", ".js")):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "log in first (/login)")
    raise _login_redirect(request)


def _same_origin(request: Request) -> bool:
    origin = request.headers.get("origin")
    if origin is None:
        return True  # not sent by every browser on same-origin posts; the form token still applies
    host = request.headers.get("host", "")
    return urlsplit(origin).netloc.lower() == host.lower() and bool(host)


def check_write(request: Request, viewer: Viewer, form_token: str | None) -> None:
    """Allow a write, or raise: 403 when writes are disabled or the request comes from another
    site, 401 when not logged in."""
    if not viewer.writes_enabled:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            "writes are disabled: set [api] token in the configuration (or LABPIPE_API_TOKEN)",
        )
    if not viewer.logged_in:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "log in with the API token first (/login)")
    if viewer.via_header:
        return  # a script with the token in a header: browsers cannot forge that cross-site
    if not _same_origin(request):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "refused: this form was posted from another site")
    if not _equal(form_token, viewer.csrf):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, "the form is out of date (log in again, then reload the page)"
        )

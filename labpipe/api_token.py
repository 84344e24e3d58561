"""The lab's API token on first start: generated once, kept in the data folder, reused afterwards.

With ``[api] token`` empty the web UI is read-only and the API refuses every write. ``labpipe
serve`` and ``labpipe api`` therefore call :func:`ensure_api_token` before they start: a token set
in the configuration or the environment (``LABPIPE_API_TOKEN``) always wins; otherwise the token
stored in ``<storage root>/state/api-token`` is used, and on the very first start one is generated
(:func:`secrets.token_urlsafe`) and written there, readable by its owner only (mode 0600), created
atomically so that two processes starting together end up with the same token. The daemon hands
it to its children as ``LABPIPE_API_TOKEN`` with the rest of its settings.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from labpipe.config import Settings

__all__ = ["ApiToken", "ensure_api_token", "load_or_create_token", "login_message", "token_file", "web_url"]

TOKEN_FILE = Path("state") / "api-token"
"""Where the generated token is kept, under the storage root."""


@dataclass(frozen=True)
class ApiToken:
    token: str
    path: Path | None
    """The file it is stored in; None when it came from the configuration or the environment."""
    created: bool
    """True when this start generated it."""


def token_file(settings: Settings) -> Path:
    """``<storage root>/state/api-token``."""
    return settings.storage.root / TOKEN_FILE


def load_or_create_token(path: Path) -> tuple[str, bool]:
    """The token stored in ``path``, or a new one written there (mode 0600); returns it and
    whether it was created now. A stored file readable by others is tightened to 0600."""
    existing = _read(path)
    if existing:
        return existing, False
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(token + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # fails if another process got there first: use its token
        except FileExistsError:
            existing = _read(path)
            if existing:
                return existing, False
            os.replace(tmp, path)  # an empty file left by a crash: take its place
        except OSError:  # file systems without hard links
            os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return token, True


def _read(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return ""
    if text and path.stat().st_mode & 0o077:
        path.chmod(0o600)
    return text


def ensure_api_token(settings: Settings) -> ApiToken:
    """Make sure ``settings.api.token`` is set (module docstring); sets it in place."""
    path = token_file(settings)
    if settings.api.token:
        # the daemon's children get the stored token through LABPIPE_API_TOKEN: say where it is kept
        stored = settings.api.token == _read(path) if path.is_file() else False
        return ApiToken(settings.api.token, path if stored else None, False)
    token, created = load_or_create_token(path)
    settings.api.token = token
    return ApiToken(token, path, created)


def web_url(host: str, port: int) -> str:
    """The address to open in a browser for a server listening on ``host``:``port``.

    >>> web_url("127.0.0.1", 8000)
    'http://127.0.0.1:8000/'
    >>> web_url("0.0.0.0", 8080)
    'http://127.0.0.1:8080/'
    >>> web_url("::1", 8000)
    'http://[::1]:8000/'
    """
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/"


def login_message(settings: Settings, token: ApiToken) -> str:
    """What ``serve`` and ``api`` print: where the web UI is and how to log in."""
    url = web_url(settings.api.host, settings.api.port)
    if token.path is None:
        how = "log in with the token of [api] token (configuration or LABPIPE_API_TOKEN)"
    else:
        made = "generated now, " if token.created else ""
        how = f"log in with the token: {token.token}  ({made}stored in {token.path.absolute()})"
    return f"web UI: {url}  {how}"

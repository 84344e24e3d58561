"""Login sessions of the web UI: signed, expiring, revocable.

A session cookie is ``v2.<issued>.<nonce>.<signature>``: when it was issued (Unix seconds), a random
nonce, and an HMAC of both with the API token and the current *generation*. It holds neither the
token nor the person's name. It is refused when

- it is older than ``[api] session_hours``;
- the generation changed (``labpipe sessions revoke``: every session at once), or the token did;
- its nonce was revoked (logging out revokes that session on the server, not only in the browser).

The generation and the revoked nonces live in ``<storage root>/state/`` so that every process of
the deployment sees them. The pure functions :func:`issue_session` and :func:`session_nonce` take
the generation and the clock as arguments; :class:`SessionStore` keeps the files.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
import time
from pathlib import Path

__all__ = ["SessionStore", "issue_session", "session_nonce"]

_VERSION = "v2"
_MESSAGE = "labpipe web session v2"


def _signature(token: str, issued: int, nonce: str, generation: int) -> str:
    message = f"{_MESSAGE}|{issued}|{nonce}|{generation}".encode()
    return hmac.new(token.encode("utf-8"), message, hashlib.sha256).hexdigest()


def issue_session(token: str, generation: int, now: float, nonce: str | None = None) -> str:
    """A new session cookie value.

    >>> cookie = issue_session("abc", 0, 1000.0, nonce="n1")
    >>> cookie.startswith("v2.1000.n1."), session_nonce(cookie, "abc", 0, 1001.0, 3600) == "n1"
    (True, True)
    """
    nonce = nonce or secrets.token_hex(16)
    issued = int(now)
    return f"{_VERSION}.{issued}.{nonce}.{_signature(token, issued, nonce, generation)}"


def session_nonce(
    cookie: str | None,
    token: str,
    generation: int,
    now: float,
    max_age_s: float,
    revoked: frozenset[str] | set[str] = frozenset(),
) -> str | None:
    """The nonce of a valid session cookie; ``None`` when it is forged, expired or revoked.

    >>> c = issue_session("abc", 0, 1000.0, nonce="n1")
    >>> session_nonce(c, "abc", 0, 1000.0 + 7200, 3600) is None    # expired
    True
    >>> session_nonce(c, "abc", 1, 1001.0, 3600) is None           # every session revoked
    True
    >>> session_nonce(c, "abd", 0, 1001.0, 3600) is None           # another token
    True
    >>> session_nonce(c, "abc", 0, 1001.0, 3600, {"n1"}) is None   # this session logged out
    True
    """
    if not cookie or not token:
        return None
    parts = cookie.split(".")
    if len(parts) != 4 or parts[0] != _VERSION or not parts[1].isdigit():
        return None
    _, issued_text, nonce, signature = parts
    issued = int(issued_text)
    expected = _signature(token, issued, nonce, generation)
    if not secrets.compare_digest(signature.encode(), expected.encode()):
        return None
    if not (issued - 60 <= now <= issued + max_age_s) or nonce in revoked:
        return None
    return nonce


class SessionStore:
    """The generation counter and the revoked nonces, as files in ``state_dir``."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self._lock = threading.Lock()
        self._cache: tuple[float, frozenset[str]] | None = None

    @property
    def _generation_file(self) -> Path:
        return self.state_dir / "session-generation"

    @property
    def _revoked_file(self) -> Path:
        return self.state_dir / "revoked-sessions"

    def generation(self) -> int:
        """The current generation (0 before any ``revoke_all``)."""
        try:
            return int(self._generation_file.read_text().strip() or 0)
        except (OSError, ValueError):
            return 0

    def revoke_all(self) -> int:
        """End every session (the next generation); returns it."""
        with self._lock:
            value = self.generation() + 1
            self._write(self._generation_file, f"{value}\n")
            return value

    def revoke(self, nonce: str, until: float) -> None:
        """End one session (kept on the list until it would have expired anyway)."""
        with self._lock:
            now = time.time()
            keep = [f"{n} {u:.0f}" for n, u in self._entries() if u > now and n != nonce]
            keep.append(f"{nonce} {until:.0f}")
            self._write(self._revoked_file, "\n".join(keep) + "\n")
            self._cache = None

    def revoked(self) -> frozenset[str]:
        """The nonces of the sessions that were logged out."""
        try:
            mtime = self._revoked_file.stat().st_mtime
        except OSError:
            return frozenset()
        if self._cache is not None and self._cache[0] == mtime:
            return self._cache[1]
        nonces = frozenset(n for n, u in self._entries() if u > time.time())
        self._cache = (mtime, nonces)
        return nonces

    def _entries(self) -> list[tuple[str, float]]:
        try:
            lines = self._revoked_file.read_text().splitlines()
        except OSError:
            return []
        out = []
        for line in lines:
            nonce, _, until = line.partition(" ")
            try:
                out.append((nonce, float(until)))
            except ValueError:
                continue
        return out

    def _write(self, path: Path, text: str) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)

"""Guards in front of every request: trusted host names, and a brake on token guessing.

**Host names.** With ``read_access = "localhost"`` the API trusts clients on this machine. A web
page on another site can make a lab member's browser send requests to ``127.0.0.1:PORT`` under its
own host name (DNS rebinding) and read the answers. So every request must name a host in
``[api] allowed_hosts`` (default: ``localhost``, ``127.0.0.1``, ``::1``; add the server's public
name when serving the network; ``*`` allows any, behind a proxy that checks it); any other
``Host`` header gets 400 before a route runs.

**Failed authentication.** A wrong token (Bearer header, login form or login cookie) counts as a
failure of the client's address. After ``[api] auth_failures`` failures within
``[api] auth_window_s`` seconds the address is refused (429, with ``Retry-After``) until the window
has passed, so guessing a token costs hours instead of seconds. The count is per process (the
embedded service runs one API process).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable

from fastapi import HTTPException, Request, status

__all__ = ["FailureLimiter", "allowed_host_names", "host_allowed", "limiter_for"]


def allowed_host_names(text: str) -> tuple[str, ...]:
    """The host names of ``[api] allowed_hosts`` (comma-separated), lower-case, without ports.

    >>> allowed_host_names(" localhost, 127.0.0.1 ,::1, Lab.example.org:8000 ")
    ('localhost', '127.0.0.1', '::1', 'lab.example.org')
    """
    names = []
    for item in text.split(","):
        item = item.strip().lower()
        if not item:
            continue
        if item.startswith("[") and "]" in item:  # [::1]:8000
            item = item[1 : item.index("]")]
        elif item.count(":") == 1:  # name:port (an IPv6 address has several colons)
            item = item.split(":", 1)[0]
        names.append(item)
    return tuple(names)


def host_allowed(host_header: str | None, allowed: Iterable[str]) -> bool:
    """Whether a request's ``Host`` header names an allowed host (any port).

    >>> ok = ("localhost", "127.0.0.1", "::1")
    >>> host_allowed("127.0.0.1:8000", ok), host_allowed("[::1]:8000", ok)
    (True, True)
    >>> host_allowed("evil.example:8000", ok)
    False
    >>> host_allowed(None, ok), host_allowed("anything", ("*",))
    (False, True)
    """
    allowed = tuple(allowed)
    if "*" in allowed:
        return True
    named = allowed_host_names(host_header or "")
    return len(named) == 1 and named[0].rstrip(".") in allowed


class FailureLimiter:
    """Counts failed authentications per client address in a sliding window (thread-safe).

    >>> now = [0.0]
    >>> limiter = FailureLimiter(max_failures=2, window_s=60, clock=lambda: now[0])
    >>> limiter.fail("1.2.3.4"); limiter.retry_after("1.2.3.4")
    0
    >>> limiter.fail("1.2.3.4"); limiter.retry_after("1.2.3.4")
    60
    >>> now[0] = 61.0; limiter.retry_after("1.2.3.4")
    0
    """

    def __init__(
        self, max_failures: int, window_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_failures = max(1, int(max_failures))
        self.window_s = float(window_s)
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, client: str, now: float) -> deque[float]:
        times = self._failures.setdefault(client, deque())
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if not times:
            self._failures.pop(client, None)
        return times

    def fail(self, client: str) -> None:
        """Record one failed authentication of ``client``."""
        with self._lock:
            now = self._clock()
            times = self._recent(client, now)
            times.append(now)
            self._failures[client] = times
            if len(self._failures) > 10_000:  # a flood of addresses: forget the quietest
                for key in [k for k, v in self._failures.items() if len(v) < self.max_failures][:5_000]:
                    self._failures.pop(key, None)

    def retry_after(self, client: str) -> int:
        """Seconds until ``client`` may try again (0: now)."""
        with self._lock:
            now = self._clock()
            times = self._recent(client, now)
            if len(times) < self.max_failures:
                return 0
            return max(1, int(times[0] + self.window_s - now + 0.999))

    def check(self, request: Request) -> None:
        """Raise 429 when the request's client is locked out."""
        wait = self.retry_after(_client(request))
        if wait:
            raise HTTPException(
                status.HTTP_429_TOO_MANY_REQUESTS,
                f"too many failed logins or wrong tokens from this address: try again in {wait} s",
                headers={"Retry-After": str(wait)},
            )

    def record(self, request: Request) -> None:
        """Count a failed authentication of the request's client."""
        self.fail(_client(request))


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def limiter_for(request: Request) -> FailureLimiter:
    """The app's limiter (made by :func:`labpipe.api.app.create_app`)."""
    return request.app.state.auth_limiter  # type: ignore[no-any-return]

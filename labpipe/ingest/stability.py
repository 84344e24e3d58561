"""Is a file in the inbox complete? Size and modification time stable, and the image readable to its end.

Copying a plate of several gigabytes onto a network share takes minutes, and a stitching program
may write a BigTIFF in bursts with pauses between them. A file is taken only when

1. its size and modification time have not changed for ``stable_seconds``, or its writer has
   finished with it: it closed the file after writing (inotify's ``IN_CLOSE_WRITE``) or renamed
   it into place, and it has not changed since (:meth:`StabilityTracker.writer_finished`), and
2. :func:`labpipe.imaging.verify_readable` accepts it: the header parses and every tile or strip of
   every page lies inside the file (a half-written TIFF has its directory but not all of its data).

The second way in takes a plate within a second of its copy finishing on a local disk; on network
shares, where such events do not arrive, the quiet period decides.

A file that stays unreadable although it has not changed for ``unreadable_grace`` seconds is given
up on: the caller quarantines it with the reason (a truncated TIFF, a text file named ``.tif``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from labpipe.errors import ImageReadError

__all__ = ["Completeness", "StabilityTracker", "Verdict"]


class Completeness(StrEnum):
    """What to do with a file now."""

    WAIT = "wait"
    """Still changing, not stable long enough, or not (yet) readable: look again later."""
    READY = "ready"
    """Complete and readable: take it."""
    UNREADABLE = "unreadable"
    """Stable for the grace period and still not a readable image: quarantine it."""
    GONE = "gone"
    """The file disappeared (moved away, deleted, renamed from its temporary name)."""


@dataclass(frozen=True)
class Verdict:
    state: Completeness
    reason: str | None = None
    """Why the file is not readable (for ``WAIT`` while unreadable, and for ``UNREADABLE``)."""
    size: int = 0
    mtime_ns: int = 0


@dataclass
class _Seen:
    size: int
    mtime_ns: int
    since: float
    """Clock time at which this (size, mtime) was first seen."""
    finished: bool = False
    """The writer closed or renamed the file at this (size, mtime)."""


class StabilityTracker:
    """Remembers, per path, when its size and modification time last changed.

    Parameters
    ----------
    stable_seconds:
        How long size and modification time must stay the same.
    unreadable_grace:
        How long a stable but unreadable file is waited for before it is given up on (at least
        ``stable_seconds``).
    verify:
        Raises :class:`~labpipe.errors.ImageReadError` when a file is not a complete image
        (normally :func:`labpipe.imaging.verify_readable`).
    clock:
        Monotonic seconds; injectable so tests need not sleep.

    Example
    -------
    >>> t = [0.0]
    >>> tracker = StabilityTracker(2.0, 10.0, verify=lambda p: None, clock=lambda: t[0])
    >>> # tracker.check(path) -> WAIT now, READY once t[0] has advanced 2 s without a change
    """

    def __init__(
        self,
        stable_seconds: float,
        unreadable_grace: float,
        verify: Callable[[Path], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if stable_seconds < 0 or unreadable_grace < 0:
            raise ValueError(
                f"stable_seconds and unreadable_grace must be >= 0, given {stable_seconds} and "
                f"{unreadable_grace}"
            )
        self.stable_seconds = stable_seconds
        self.unreadable_grace = max(unreadable_grace, stable_seconds)
        self._verify = verify
        self._clock = clock
        self._seen: dict[Path, _Seen] = {}

    def __contains__(self, path: Path) -> bool:
        return path in self._seen

    def __len__(self) -> int:
        return len(self._seen)

    def forget(self, path: Path) -> None:
        self._seen.pop(path, None)

    def writer_finished(self, path: Path) -> None:
        """The writer closed ``path`` after writing to it, or renamed it into place: its current
        size and modification time need no quiet period (it is still verified)."""
        try:
            st = os.stat(path)
        except OSError:
            return
        seen = self._seen.get(path)
        if seen is None or (seen.size, seen.mtime_ns) != (st.st_size, st.st_mtime_ns):
            self._seen[path] = _Seen(st.st_size, st.st_mtime_ns, self._clock(), finished=True)
        else:
            seen.finished = True

    def check(self, path: Path) -> Verdict:
        """Look at ``path`` now and say whether it can be taken."""
        try:
            st = os.stat(path)
        except FileNotFoundError:
            self.forget(path)
            return Verdict(Completeness.GONE)
        except OSError as exc:  # a share that went away for a moment: look again later
            return Verdict(Completeness.WAIT, f"cannot stat: {exc.strerror or exc}")
        now = self._clock()
        seen = self._seen.get(path)
        if seen is None or (seen.size, seen.mtime_ns) != (st.st_size, st.st_mtime_ns):
            self._seen[path] = _Seen(st.st_size, st.st_mtime_ns, now)
            return Verdict(Completeness.WAIT, None, st.st_size, st.st_mtime_ns)
        quiet = now - seen.since
        if quiet < self.stable_seconds and not seen.finished:
            return Verdict(Completeness.WAIT, None, st.st_size, st.st_mtime_ns)
        try:
            self._verify(path)
        except ImageReadError as exc:
            state = Completeness.UNREADABLE if quiet >= self.unreadable_grace else Completeness.WAIT
            # Closed but not a complete image (a writer that closes between bursts): from now on,
            # only the quiet period counts, and the file is not verified again until then.
            seen.finished = False
            return Verdict(
                state, exc.message if quiet >= self.stable_seconds else None, st.st_size, st.st_mtime_ns
            )
        return Verdict(Completeness.READY, None, st.st_size, st.st_mtime_ns)

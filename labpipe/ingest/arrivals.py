"""Files in the inbox that the watcher has seen but not taken yet, for people to see.

A file being copied, or one that is stable but not a complete image yet, sits in the inbox without
an image row. Each watcher writes what it is waiting for to ``<root>/state/arrivals/<watcher>.json``
(atomically, whenever it changes and at least every ``refresh`` seconds); the dashboard and
``labpipe status`` read every watcher's file that is fresh (a watcher that stopped, or died, leaves
a file that soon counts as stale and is ignored).
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["ARRIVALS_DIR", "Arrival", "ArrivalBoard", "read_arrivals"]

ARRIVALS_DIR = Path("state") / "arrivals"
"""Below the storage root: one file per running watcher."""

QUIET_REASON = "still changing, or not quiet for [ingest] stable_seconds yet"
"""Why a file that has not been looked at as an image yet is waiting."""


@dataclass(frozen=True)
class Arrival:
    """One file the watcher is waiting for."""

    file: str
    """Its path below the inbox."""
    size_bytes: int
    first_seen: float
    """When the watcher first saw it (seconds since the epoch)."""
    reason: str
    """Why it is not taken yet, in words."""

    def waiting_seconds(self, now: float | None = None) -> float:
        """How long it has been waiting.

        >>> Arrival("S1/p.tif", 10, first_seen=100.0, reason="x").waiting_seconds(now=130.0)
        30.0
        """
        return max(0.0, (time.time() if now is None else now) - self.first_seen)


class ArrivalBoard:
    """What one watcher writes: its own file below ``<root>/state/arrivals``."""

    def __init__(self, root: Path, refresh: float = 10.0) -> None:
        self.folder = root / ARRIVALS_DIR
        self.path = self.folder / f"{socket.gethostname()}-{os.getpid()}.json"
        self.refresh = refresh
        self._last: list[Arrival] | None = None
        self._written_at = 0.0

    def publish(self, arrivals: list[Arrival]) -> None:
        """Write ``arrivals`` when they changed, or to show the watcher is alive every ``refresh`` s."""
        now = time.monotonic()
        if arrivals == self._last and now - self._written_at < self.refresh:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        payload = {"written_at": time.time(), "arrivals": [asdict(a) for a in arrivals]}
        tmp.write_text(json.dumps(payload), encoding="utf-8")
        os.replace(tmp, self.path)
        self._last, self._written_at = list(arrivals), now

    def close(self) -> None:
        """The watcher stops: its file goes."""
        self.path.unlink(missing_ok=True)


def read_arrivals(root: Path, *, stale_after: float = 60.0, now: float | None = None) -> list[Arrival]:
    """Every fresh watcher's waiting files, longest waiting first; unreadable or stale files are
    passed over (a watcher writes at least every few seconds while it runs)."""
    folder = root / ARRIVALS_DIR
    now = time.time() if now is None else now
    found: dict[str, Arrival] = {}
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
            if now - float(payload["written_at"]) > stale_after:
                continue
            for item in payload["arrivals"]:
                arrival = Arrival(
                    file=str(item["file"]),
                    size_bytes=int(item["size_bytes"]),
                    first_seen=float(item["first_seen"]),
                    reason=str(item["reason"]),
                )
                known = found.get(arrival.file)
                if known is None or arrival.first_seen < known.first_seen:
                    found[arrival.file] = arrival
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return sorted(found.values(), key=lambda a: (a.first_seen, a.file))

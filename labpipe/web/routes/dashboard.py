"""The dashboard: what the daemon is doing now (tiles per status, the broker's queue, plates in
progress, files arriving in the inbox with their waiting time, stuck plates with a retry button,
recent plates, failures); ``?fragment=live`` is the part
the page refreshes."""

from __future__ import annotations

import threading
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlalchemy.orm import Session

from labpipe.api.deps import SessionDep, SettingsDep
from labpipe.config import Settings
from labpipe.queries.listings import failures, recent_images
from labpipe.status import arriving_files, image_status
from labpipe.web.progress import plate_progress
from labpipe.web.render import utc_age
from labpipe.web.routes.common import ViewerDep, render_page

__all__ = ["router"]

router = APIRouter(include_in_schema=False)


class _QueueProbe:
    """The broker's queue depths, asked in the background and cached: a slow or absent broker
    never holds a page up."""

    def __init__(self, ttl: float = 1.0) -> None:
        self.ttl = ttl
        self.value: dict[str, int] | None = None
        self.error: str | None = "not asked yet"
        self.at = 0.0
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _ask(self, settings: Settings) -> None:
        try:
            from workers.app import queue_depths

            self.value, self.error = queue_depths(settings), None
        except Exception as exc:  # broker down, Celery missing: the dashboard still shows the rest
            self.value, self.error = None, str(exc) or type(exc).__name__
        self.at = time.monotonic()

    def get(self, settings: Settings, wait: float = 0.5) -> tuple[dict[str, int] | None, str | None]:
        started = None
        with self._lock:
            stale = time.monotonic() - self.at > self.ttl
            if stale and (self._thread is None or not self._thread.is_alive()):
                started = self._thread = threading.Thread(target=self._ask, args=(settings,), daemon=True)
                started.start()
        if started is not None:
            started.join(wait)  # the embedded broker answers in milliseconds; Redis down: not waited for
        return self.value, self.error


_queue_probe = _QueueProbe()


def _dashboard_context(session: Session, settings: Settings) -> dict[str, Any]:
    report = image_status(session, failures=20, stuck_after=settings.queue.stuck_after)
    images = report["images"]
    finished = images["done"] + images["failed"] + images["quarantined"]
    in_progress = []
    for item in report["in_progress"]:
        item = dict(item)
        item["progress"] = plate_progress(settings.storage.crops_dir, item["image_id"])
        in_progress.append(item)
    queue, queue_error = _queue_probe.get(settings)
    return {
        "report": report,
        "images": images,
        "finished": finished,
        "in_progress": in_progress,
        "stuck": report["stuck"],
        "arriving": arriving_files(settings.storage.root),
        "recent": recent_images(session, 15),
        "failures": failures(session, 20),
        "queue": None
        if queue is None
        else {
            "waiting": sum(v for k, v in queue.items() if k != "unacked"),
            "parts": [(k.removeprefix("labpipe."), v) for k, v in queue.items()],
        },
        "queue_error": queue_error,
        "age": utc_age,
    }


@router.get("/", response_class=HTMLResponse)
def dashboard(
    request: Request, viewer: ViewerDep, session: SessionDep, settings: SettingsDep
) -> HTMLResponse:
    """What the daemon is doing now; ``?fragment=live`` returns only the part that refreshes."""
    context = {"page": "dashboard", **_dashboard_context(session, settings)}
    if request.query_params.get("fragment") == "live":
        return render_page(request, "_live.html", viewer, context)
    return render_page(request, "dashboard.html", viewer, context)

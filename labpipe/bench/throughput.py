"""Throughput: classifier crops per second, and plates per hour through the real queue.

- :func:`classifier_throughput` classifies production-sized crops (cut from a benchmark plate at
  its true boxes, margin and pad as in the pipeline) in batches of the configured size, resizing
  included, after one warm-up batch.
- :func:`queue_throughput` runs the daemon as ``labpipe serve`` does (the watcher and N worker
  processes under :class:`labpipe.daemon.service.Supervisor`), copies plates into its inbox, and
  measures how long the queue takes to finish them, and how long after each copy closed its file
  the watcher registered it (the pick-up delay). It never touches the lab's own queue or database:
  by default a fresh SQLite database and the embedded broker under the benchmark's folder; a
  Redis broker and a PostgreSQL database only when given explicitly (use a scratch database and
  a Redis database number no worker of the lab listens on).
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["QueueRun", "classifier_throughput", "plate_crops", "queue_throughput"]


def plate_crops(
    plate: Path, boxes: Sequence[tuple[float, float, float, float]], margin: float, limit: int
) -> list[np.ndarray]:
    """Up to ``limit`` crops of ``plate`` at ``boxes``: margin, full resolution, padded to squares."""
    from labpipe.crops import margin_box, pad_to_square
    from labpipe.imaging import open_image

    crops = []
    with open_image(plate) as image:
        for x, y, w, h in list(boxes)[:limit]:
            x0, y0, x1, y1 = margin_box(
                round(x), round(y), round(w), round(h), margin, image.width, image.height
            )
            crops.append(pad_to_square(image.read_region(x0, y0, x1 - x0, y1 - y0)))
    return crops


def classifier_throughput(
    classifier: Any, crops: Sequence[np.ndarray], min_seconds: float = 5.0
) -> dict[str, Any]:
    """Crops per second of ``classifier.classify`` over ``crops`` (repeated for at least ``min_seconds``)."""
    if not crops:
        raise ValueError("no crops to classify")
    batch = max(1, int(getattr(classifier, "batch_size", 16)))
    classifier.classify(list(crops[:batch]))  # warm-up: first-call allocations
    done, started = 0, time.perf_counter()
    while True:
        for start in range(0, len(crops), batch):
            chunk = list(crops[start : start + batch])
            classifier.classify(chunk)
            done += len(chunk)
        elapsed = time.perf_counter() - started
        if elapsed >= min_seconds:
            break
    sides = [c.shape[0] for c in crops]
    return {
        "model": classifier.version,
        "batch_size": batch,
        "crops": done,
        "seconds": round(elapsed, 2),
        "crops_per_second": round(done / elapsed, 1),
        "crop_side_px": {"median": int(np.median(sides)), "max": int(max(sides))},
    }


@dataclass
class QueueRun:
    workers: int
    broker: str
    plates: int
    seconds: float
    """From the first copy into the inbox to the last plate done."""
    pickup_seconds: list[float] = field(default_factory=list)
    """Per plate: from the end of its copy to its registration by the watcher."""
    failed: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "workers": self.workers,
            "broker": self.broker,
            "plates": self.plates,
            "failed": self.failed,
            "seconds": round(self.seconds, 1),
            "plates_per_hour": round(self.plates / self.seconds * 3600, 1) if self.seconds > 0 else None,
            "pickup_seconds": {
                "median": round(float(np.median(self.pickup_seconds)), 2) if self.pickup_seconds else None,
                "max": round(max(self.pickup_seconds), 2) if self.pickup_seconds else None,
            },
        }


def _utc(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def queue_throughput(
    settings: Any,
    plates: Sequence[Path],
    workers: int,
    work: Path,
    timeout: float = 1800.0,
    *,
    broker_url: str = "",
    database_url: str = "",
) -> QueueRun:
    """Process ``plates`` through the daemon with ``workers`` worker processes (module docstring).

    ``settings`` gives the models and their settings; the storage root is a fresh folder under
    ``work``, the database ``database_url`` (default: a fresh SQLite file there) and the broker
    ``broker_url`` (default: the embedded one there), never the ones ``settings`` name.
    """
    from labpipe.daemon.service import Supervisor
    from labpipe.db.database import open_database
    from labpipe.db.models import ImageStatus
    from workers.app import describe

    root = work / f"queue-{workers}w"
    shutil.rmtree(root, ignore_errors=True)
    run_settings = replace(
        settings,
        storage=replace(settings.storage, root=root),
        database=replace(settings.database, url=database_url),
        logging=replace(settings.logging, level="WARNING"),
        queue=replace(settings.queue, serve_workers=workers, broker_url=broker_url),
    )
    factory = open_database(run_settings.database_url)
    supervisor = Supervisor(run_settings, workers=workers, log_file=root / "daemon.log")
    thread = threading.Thread(target=supervisor.run, name="bench-supervisor", daemon=True)
    inbox = run_settings.storage.inbox_dir
    inbox.mkdir(parents=True, exist_ok=True)
    dropped: dict[str, dt.datetime] = {}
    service_log = logging.getLogger("labpipe.daemon.service")
    level = service_log.level
    service_log.setLevel(logging.WARNING)
    try:
        thread.start()
        # The first plate warms the daemon up (watcher watching, a worker's models loaded).
        shutil.copyfile(plates[0], inbox / plates[0].name)
        _wait_finished(factory, {plates[0].name}, timeout=120.0)
        started = time.perf_counter()
        for plate in plates[1:]:
            shutil.copyfile(plate, inbox / plate.name)
            dropped[plate.name] = dt.datetime.now(dt.UTC)
        images = _wait_finished(factory, set(dropped), timeout)
        seconds = time.perf_counter() - started
        pickups = [(_utc(i.created_at) - dropped[i.file_name]).total_seconds() for i in images]
        failed = sum(1 for i in images if i.status == ImageStatus.FAILED.value)
    finally:
        supervisor.request_stop()
        thread.join(timeout=run_settings.queue.shutdown_timeout + 30)
        service_log.setLevel(level)
        bind = factory.kw.get("bind")
        if bind is not None:
            bind.dispose()
    return QueueRun(workers, describe(run_settings), len(dropped), seconds, pickups, failed)


def _wait_finished(factory: Any, names: set[str], timeout: float) -> list[Any]:
    """The image rows of the files ``names``, once every one is done or failed."""
    from sqlalchemy import select

    from labpipe.db.models import Image, ImageStatus

    finished = {ImageStatus.DONE.value, ImageStatus.FAILED.value}
    deadline = time.monotonic() + timeout
    while True:
        with factory() as session:
            images = list(session.scalars(select(Image).where(Image.file_name.in_(names))))
        done = sum(1 for i in images if i.status in finished)
        if done == len(names):
            return images
        if time.monotonic() > deadline:
            raise TimeoutError(f"{done} of {len(names)} plates done after {timeout:.0f} s")
        time.sleep(0.2)

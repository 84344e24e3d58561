"""What the daemon is doing, from the database: images per state, work in progress, stuck plates
(processing, but no live worker moves them on), the last failures with their reasons, and
throughput over the last hour; and the files arriving in the inbox that no image row holds yet
(what the watchers wrote, :func:`arriving_files`). ``labpipe status`` adds the broker's queue depth
(which needs the broker, so it is not queried here).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from labpipe.db.models import Image, ImageStatus, utcnow
from labpipe.ingest.arrivals import read_arrivals
from labpipe.ingest.recovery import stuck_images

__all__ = ["arriving_files", "format_status", "image_status"]


def _iso(value: dt.datetime | None) -> str | None:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if value else None


def image_status(
    session: Session, *, now: dt.datetime | None = None, failures: int = 10, stuck_after: float = 1800
) -> dict[str, Any]:
    """The database half of ``labpipe status --json``.

    Returns
    -------
    dict
        ``images`` (count per state, every state present, and ``total``), ``in_progress`` (the
        processing images with how long since their last progress, the worker holding each and
        the seconds left on its lease), ``stuck`` (processing images whose lease expired, or without
        progress for ``stuck_after`` seconds: see :mod:`labpipe.ingest.recovery`; ``labpipe retry``
        and the dashboard hand them to a worker), ``oldest_queued_seconds``,
        ``last_failures`` (newest first: id, file, sample, status, reason, when, where the file
        went), and ``last_hour`` (images done, specimens found, images per hour, mean seconds per
        image).
    """
    now = now or utcnow()
    counts = {s.value: 0 for s in ImageStatus}
    for status, n in session.execute(select(Image.status, func.count(Image.id)).group_by(Image.status)):
        counts[status] = int(n)
    counts["total"] = sum(counts.values())

    in_progress = [
        {
            "image_id": image.id,
            "file": image.file_name,
            "sample": image.sample_id,
            "seconds_since_progress": round((now - image.updated_at).total_seconds(), 1),
            "lease_owner": image.lease_owner,
            "lease_seconds_left": round((image.lease_expires_at - now).total_seconds(), 1)
            if image.lease_expires_at is not None
            else None,
        }
        for image in session.scalars(
            select(Image).where(Image.status == ImageStatus.PROCESSING.value).order_by(Image.updated_at)
        )
    ]
    oldest_queued = session.scalar(
        select(func.min(Image.created_at)).where(Image.status == ImageStatus.QUEUED.value)
    )

    failed = session.scalars(
        select(Image)
        .where(Image.status.in_([ImageStatus.FAILED.value, ImageStatus.QUARANTINED.value]))
        .order_by(Image.updated_at.desc(), Image.id.desc())
        .limit(failures)
    )
    last_failures = [
        {
            "image_id": image.id,
            "file": image.file_name,
            "sample": image.sample_id,
            "status": image.status,
            "reason": image.error,
            "at": _iso(image.updated_at),
            "moved_to": image.archived_path,
        }
        for image in failed
    ]

    hour_ago = now - dt.timedelta(hours=1)
    done_n, specimens, mean_seconds, first, last = session.execute(
        select(
            func.count(Image.id),
            func.coalesce(func.sum(Image.n_specimens), 0),
            func.avg(Image.seconds),
            func.min(Image.processed_at),
            func.max(Image.processed_at),
        ).where(Image.status == ImageStatus.DONE.value, Image.processed_at >= hour_ago)
    ).one()
    return {
        "time": _iso(now),
        "images": counts,
        "in_progress": in_progress,
        "stuck": [item.as_dict() for item in stuck_images(session, stuck_after=stuck_after, now=now)],
        "oldest_queued_seconds": round((now - oldest_queued).total_seconds(), 1) if oldest_queued else None,
        "last_failures": last_failures,
        "last_hour": {
            "images": int(done_n),
            "specimens": int(specimens),
            "images_per_hour": int(done_n),
            "busy_rate_per_hour": _rate(int(done_n), first, last),
            "mean_seconds_per_image": round(float(mean_seconds), 3) if mean_seconds is not None else None,
            "first_done": _iso(first),
            "last_done": _iso(last),
        },
    }


def _rate(n: int, first: dt.datetime | None, last: dt.datetime | None) -> float | None:
    """Images per hour between the first and the last image done (the rate while busy)."""
    if n < 2 or first is None or last is None or last <= first:
        return None
    return round((n - 1) / (last - first).total_seconds() * 3600.0, 1)


def _bar(done: int, total: int, width: int = 30) -> str:
    filled = round(width * done / total) if total else 0
    return "[" + "#" * filled + "." * (width - filled) + "]"


def arriving_files(root: Path) -> list[dict[str, Any]]:
    """Files in the inbox that a running watcher waits for (being copied, or stable but not a
    complete image yet), longest waiting first; see :mod:`labpipe.ingest.arrivals`."""
    return [
        {
            "file": a.file,
            "size_bytes": a.size_bytes,
            "waiting_seconds": round(a.waiting_seconds(), 1),
            "reason": a.reason,
        }
        for a in read_arrivals(root)
    ]


def format_status(report: dict[str, Any]) -> str:
    """A terminal view of a status report (``labpipe status`` and ``--watch``)."""
    images = report["images"]
    finished = images["done"] + images["failed"] + images["quarantined"]
    lines = [
        f"labpipe status at {report['time']}",
        f"database: {report.get('database', '-')}    broker: {report.get('broker', '-')}",
        "",
        f"progress {_bar(finished, images['total'])} {finished}/{images['total']} finished",
        "images:  "
        + "  ".join(f"{s} {images[s]}" for s in ("queued", "processing", "done", "failed", "quarantined")),
    ]
    queue = report.get("queue")
    if queue is None:
        lines.append(f"queue:   unknown ({report.get('queue_error') or 'broker not reachable'})")
    else:
        lines.append("queue:   " + "  ".join(f"{k} {v}" for k, v in queue.items()))
    hour = report["last_hour"]
    mean = hour["mean_seconds_per_image"]
    lines.append(
        f"last hour: {hour['images']} images, {hour['specimens']} specimens"
        + (f", {mean:.1f} s per image" if mean is not None else "")
        + (f", {hour['busy_rate_per_hour']:.0f}/h while busy" if hour["busy_rate_per_hour"] else "")
    )
    if report.get("oldest_queued_seconds") is not None:
        lines.append(f"oldest queued image waits for {report['oldest_queued_seconds']:.0f} s")
    if report["in_progress"]:
        lines += ["", "in progress:"]
        lines += [
            f"  #{p['image_id']} {p['file']} (sample {p['sample'] or '-'}), "
            f"last progress {p['seconds_since_progress']:.0f} s ago"
            for p in report["in_progress"]
        ]
    if report.get("arriving"):
        lines += ["", "arriving (in the inbox, not taken yet):"]
        lines += [
            f"  {a['file']} ({a['size_bytes'] / 1e6:.1f} MB), "
            f"waiting {a['waiting_seconds']:.0f} s: {a['reason']}"
            for a in report["arriving"]
        ]
    if report.get("stuck"):
        lines += ["", "stuck (processing, but no live worker moves them on; `labpipe retry --stuck`):"]
        for item in report["stuck"]:
            held = f", held by {item['lease_owner']}" if item["leased"] else ""
            lines.append(
                f"  #{item['image_id']} {item['file']} (sample {item['sample'] or '-'}): {item['reason']}"
                f"{held}, last progress {item['seconds_since_progress']:.0f} s ago"
            )
    if report["last_failures"]:
        lines += ["", "last failures:"]
        for f in report["last_failures"]:
            lines.append(f"  #{f['image_id']} {f['file']} {f['status']} at {f['at']}: {f['reason']}")
            if f["moved_to"]:
                lines.append(f"      now at {f['moved_to']}")
    return "\n".join(lines)

"""The folder watcher: finds complete files in the inbox, registers them, and sends their tasks.

One loop, every ``[ingest] poll_interval`` seconds:

1. take the paths that file-system events named since the last round (a ``watchdog`` observer:
   native events, or polling for network shares where native events never arrive), and every
   ``rescan_interval`` seconds all files of the inbox (the start is a full rescan: files dropped
   while the daemon was down are found);
2. for each candidate, ask :class:`~labpipe.ingest.stability.StabilityTracker` whether it is
   complete (a file whose writer closed it, or renamed it into place, is looked at at once: the
   loop wakes for it instead of waiting out ``poll_interval``); take the complete ones: hash,
   register (:mod:`labpipe.ingest.register`), then send the
   task. The row exists before the task does, so a lost task is found again by the sweeper;
3. every third of ``[queue] lease_seconds`` (and at start), hand every processing image whose
   worker's lease expired (the worker, or the whole daemon, was killed) to another worker: back to
   ``queued`` and its task sent again, marked as a takeover;
4. every ``[queue] sweep_interval`` seconds, sweep: send again the tasks of queued images that
   the broker lost, hand over images without progress for ``stuck_after``, finish interrupted
   moves, remove abandoned stage directories. Only originals inside the inbox are ever moved: an
   image processed from elsewhere (``labpipe process``) keeps its file where it is.

The watcher does not import Celery: it is given a :class:`TaskQueue`.
"""

from __future__ import annotations

import hashlib
import os
import queue
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from sqlalchemy.orm import Session, sessionmaker

from labpipe.analysis import file_sha256
from labpipe.config import Settings
from labpipe.db.models import Image
from labpipe.errors import ConfigError
from labpipe.imaging import verify_readable
from labpipe.imaging.memory import MemoryBudget
from labpipe.ingest.arrivals import QUIET_REASON, Arrival, ArrivalBoard
from labpipe.ingest.lifecycle import (
    expired_leases,
    finish_move,
    quarantine_link,
    release_for_takeover,
    stale_images,
    touch_image,
)
from labpipe.ingest.moves import inside_inbox, move_original
from labpipe.ingest.register import Outcome, register_file, register_unreadable
from labpipe.ingest.rules import IngestRules
from labpipe.ingest.stability import Completeness, StabilityTracker, Verdict
from labpipe.logs import BoundLogger, get_logger
from labpipe.pipeline import STAGE_DIR_PREFIX

__all__ = ["NETWORK_FILESYSTEMS", "TaskQueue", "Watcher", "choose_observer", "filesystem_type"]

log = get_logger(__name__)

LINK_REASON = (
    "a symbolic link (or a file reached through a linked folder): labpipe never follows links out "
    "of its inbox, so the file it points to was not read. Copy the file itself into the inbox "
    "(for example cp -L) to process it."
)
"""The reason recorded for a link in the inbox; it names nothing about the link's target."""


def not_received_hash(path: Path) -> str:
    """The key an image row for a link gets instead of a content hash (its target is never read)."""
    return hashlib.sha256(f"not-received:{path}".encode()).hexdigest()


NETWORK_FILESYSTEMS = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smbfs",
        "smb3",
        "9p",
        "afs",
        "ceph",
        "glusterfs",
        "fuse.glusterfs",
        "fuse.sshfs",
        "fuse.rclone",
        "davfs",
        "fuse.davfs2",
        "lustre",
        "gpfs",
    }
)
"""File systems on which native change events do not arrive (from other machines): poll instead."""


class TaskQueue(Protocol):
    """Where the watcher sends work (the Celery broker, in :mod:`workers.app`)."""

    def send(self, image_id: int, *, takeover: bool = False, content_hash: str | None = None) -> None:
        """Send the image's first task; raises when the broker cannot be reached.

        ``content_hash`` lets the worker check that the task is meant for its database.
        """
        ...

    def depth(self) -> int | None:
        """Image tasks the broker holds (waiting or being worked on); ``None`` when unknown."""
        ...

    def housekeeping(self) -> None:
        """Broker-specific upkeep, run with each sweep (the embedded broker's visibility timeout)."""
        ...


def filesystem_type(path: Path, mounts: Path = Path("/proc/mounts")) -> str | None:
    """The type of the file system holding ``path`` (``ext4``, ``nfs4``, ...), from ``/proc/mounts``."""
    try:
        lines = mounts.read_text().splitlines()
    except OSError:
        return None
    target = os.path.realpath(path)
    best, best_type = "", None
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) > len(best):
            best, best_type = point, fields[2]
    return best_type


def choose_observer(mode: str, inbox: Path) -> str:
    """``native`` or ``poll`` for ``[ingest] observer`` (``auto`` polls on network file systems)."""
    mode = mode.lower()
    if mode in ("native", "poll"):
        return mode
    if mode != "auto":
        raise ConfigError("[ingest] observer", f"unknown observer {mode!r}", "use auto, native or poll")
    return "poll" if (filesystem_type(inbox) or "") in NETWORK_FILESYSTEMS else "native"


def _hash_of(session: Session, image_id: int) -> str | None:
    image = session.get(Image, image_id)
    return image.content_hash if image is not None else None


class Watcher:
    """Watches ``[storage] inbox`` and feeds a :class:`TaskQueue` (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        session_factory: sessionmaker[Session],
        tasks: TaskQueue,
        *,
        verify: Callable[[Path], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.session_factory = session_factory
        self.tasks = tasks
        self.storage = settings.storage
        self.inbox = settings.storage.inbox_dir.absolute()
        cfg = settings.ingest
        self.rules = IngestRules.from_config(cfg.extensions, cfg.ignore, cfg.sample_from, cfg.sample_pattern)
        imaging = settings.imaging
        budget = MemoryBudget.for_settings(settings)  # what a worker may hold: refused before queueing
        self.tracker = StabilityTracker(
            cfg.stable_seconds,
            cfg.unreadable_grace,
            verify
            or (
                lambda p: verify_readable(
                    p,
                    max_pixels=imaging.max_pixels,
                    max_decoded_pixels=imaging.max_decoded_pixels,
                    memory_budget=budget,
                )
            ),
            clock=clock,
        )
        self._clock = clock
        self._candidates: set[Path] = set()
        self._events: queue.SimpleQueue[tuple[Path, bool, bool]] = queue.SimpleQueue()
        self._wakeup = threading.Event()
        """Set by a writer-finished event: the loop looks at candidates now."""
        self._taken: dict[Path, tuple[int, int]] = {}
        """Files already handled, with the (size, mtime) they had: skipped by later rescans."""
        self._waiting: dict[Path, tuple[int, int]] = {}
        self._wait_reasons: dict[Path, str] = {}
        """Why a stable file is not a complete image yet (shown on the dashboard)."""
        self._first_seen: dict[Path, float] = {}
        """When each candidate was first seen (wall clock), for the dashboard's waiting time."""
        self.arrivals = ArrivalBoard(settings.storage.root)
        """Stable but unreadable files already logged, with the (size, mtime) they had."""
        self._unsent: dict[int, tuple[bool, str | None]] = {}
        """Images whose task could not be sent yet (broker down): image id -> (takeover, hash)."""
        self._excluded = [
            d.absolute()
            for d in (self.storage.archive_dir, self.storage.quarantine_dir, self.storage.crops_dir)
        ]
        self._linked_folders: set[Path] = set()
        """Symbolic links to folders found in the inbox (logged once; never followed)."""
        self._last_rescan = -1e18
        self._last_sweep = clock()
        self._last_lease_check = clock()
        self.counts: Counter[str] = Counter()

    # -- finding candidates ----------------------------------------------------------------------

    def _is_excluded(self, path: Path) -> bool:
        return any(path == d or d in path.parents for d in self._excluded)

    def _add_candidate(self, path: Path) -> None:
        if path in self._candidates or self._is_excluded(path) or not self.rules.wants(path, self.inbox):
            return
        taken = self._taken.get(path)
        if taken is not None:
            try:
                st = path.lstat() if path.is_symlink() else path.stat()
            except OSError:
                self._taken.pop(path, None)
                return
            if (st.st_size, st.st_mtime_ns) == taken:
                return
            self._taken.pop(path, None)  # the same name holds something new: look at it again
        self._candidates.add(path)
        self._first_seen.setdefault(path, time.time())

    def _walk(self, top: Path) -> None:
        for dirpath, dirnames, filenames in os.walk(top):
            here = Path(dirpath)
            dirnames[:] = [
                d for d in dirnames if not self._is_excluded(here / d) and not self.rules.ignores_folder(d)
            ]
            for d in dirnames:
                if (here / d).is_symlink() and (here / d) not in self._linked_folders:
                    self._linked_folders.add(here / d)
                    log.warning(
                        "a linked folder in the inbox is not followed",
                        folder=str(here / d),
                        hint="copy the images themselves into the inbox",
                    )
            for name in filenames:
                self._add_candidate(here / name)

    def rescan(self) -> None:
        """Look at every file in the inbox (at start, then every ``rescan_interval`` seconds)."""
        self.inbox.mkdir(parents=True, exist_ok=True)
        self._taken = {p: v for p, v in self._taken.items() if p.exists()}
        self._walk(self.inbox)
        self._last_rescan = self._clock()

    def notify(self, path: Path, is_directory: bool = False, *, finished: bool = False) -> None:
        """A file-system event named ``path`` (thread-safe; called by the observer's thread).

        ``finished``: the writer closed the file after writing, or renamed it to this name.
        """
        self._events.put((Path(path), is_directory, finished))
        if finished:
            self._wakeup.set()

    def _drain_events(self) -> None:
        while True:
            try:
                path, is_dir, finished = self._events.get_nowait()
            except queue.Empty:
                return
            if is_dir:
                if path.is_dir() and not self._is_excluded(path):
                    self._walk(path)
            else:
                self._add_candidate(path)
                if finished and path in self._candidates and self.settings.ingest.trust_close_events:
                    self.tracker.writer_finished(path)

    # -- taking files ------------------------------------------------------------------------------

    def tick(self) -> None:
        """One round: events, periodic rescan, candidates, unsent tasks, periodic sweep."""
        self._drain_events()
        interval = self.settings.ingest.rescan_interval
        if interval > 0 and self._clock() - self._last_rescan >= interval:
            self._guarded("rescan", self.rescan)
        for path in sorted(self._candidates):
            try:
                self._consider(path)
            except Exception:  # one bad file (or a database hiccup) must not stop the watcher
                log.error("could not take file; will try again", exc_info=True, image=str(path))
                self.counts["errors"] += 1
        self._send_unsent()
        self._guarded("arrivals", self._publish_arrivals)
        if self._clock() - self._last_lease_check >= max(0.5, self.settings.queue.lease_seconds / 3):
            self._guarded("lease check", self.take_over_expired)
        if self._clock() - self._last_sweep >= self.settings.queue.sweep_interval:
            self._guarded("sweep", self.sweep)

    def waiting_files(self) -> list[Arrival]:
        """The files seen in the inbox and not taken yet, with why (see :mod:`labpipe.ingest.arrivals`)."""
        for gone in set(self._first_seen) - self._candidates:
            self._first_seen.pop(gone, None)
            self._wait_reasons.pop(gone, None)
        arrivals = []
        for path in sorted(self._candidates):
            try:
                size = path.stat().st_size
            except OSError:
                continue
            try:
                name = str(path.relative_to(self.inbox))
            except ValueError:
                name = path.name
            reason = self._wait_reasons.get(path, QUIET_REASON)
            arrivals.append(Arrival(name, size, self._first_seen.get(path, time.time()), reason))
        return arrivals

    def _publish_arrivals(self) -> None:
        self.arrivals.publish(self.waiting_files())

    def _guarded(self, what: str, step: Callable[[], object]) -> None:
        """Run a periodic step; an error (share or database away for a moment) is logged, not fatal."""
        try:
            step()
        except Exception:
            log.error(f"{what} failed; will try again", exc_info=True)
            self.counts["errors"] += 1
            if what == "sweep":
                self._last_sweep = self._clock()
            elif what == "lease check":
                self._last_lease_check = self._clock()
            elif what == "rescan":
                self._last_rescan = self._clock()

    def _consider(self, path: Path) -> None:
        if path.is_symlink() or (path.exists() and not inside_inbox(path, self.inbox)):
            self._take_link(path)
            return
        verdict = self.tracker.check(path)
        if verdict.state is Completeness.WAIT and verdict.reason:
            self._wait_reasons[path] = verdict.reason
            if self._waiting.get(path) != (verdict.size, verdict.mtime_ns):
                self._waiting[path] = (verdict.size, verdict.mtime_ns)
                log.info(
                    "waiting: stable but not a complete image yet", image=str(path), reason=verdict.reason
                )
            return
        self._waiting.pop(path, None)
        self._wait_reasons.pop(path, None)
        if verdict.state is Completeness.GONE:
            self._candidates.discard(path)
        elif verdict.state is Completeness.READY:
            self._take(path, verdict)
        elif verdict.state is Completeness.UNREADABLE:
            self._take_unreadable(path, verdict)

    def _done_with(self, path: Path, verdict: Verdict) -> None:
        self._candidates.discard(path)
        self.tracker.forget(path)
        if path.exists():
            self._taken[path] = (verdict.size, verdict.mtime_ns)

    def _hash_unchanged(self, path: Path, verdict: Verdict) -> str | None:
        """The file's sha256, or ``None`` when it changed while being hashed (look again later)."""
        content_hash = file_sha256(path)
        st = path.stat()
        if (st.st_size, st.st_mtime_ns) != (verdict.size, verdict.mtime_ns):
            return None
        return content_hash

    def _take(self, path: Path, verdict: Verdict) -> None:
        content_hash = self._hash_unchanged(path, verdict)
        if content_hash is None:
            return
        sample = self.rules.sample_for(path, self.inbox)
        bound = log.bind(image=str(path), sample=sample)
        with self.session_factory() as session:
            reg = register_file(session, path, content_hash, verdict.size, sample)
            bound = bound.bind(image_id=reg.image_id)
            self.counts[reg.outcome.value] += 1
            if reg.outcome in (Outcome.NEW, Outcome.RETRY):
                bound.info("registered", outcome=reg.outcome.value, note=reg.note or "")
                self._done_with(path, verdict)
                self._send(reg.image_id, content_hash=content_hash)
                return
            if reg.outcome is Outcome.DUPLICATE:
                self._archive_duplicate(path, content_hash, reg.note, bound)
            else:  # KNOWN: seen again after a restart; finish a move a crash interrupted
                image = session.get(Image, reg.image_id)
                if image is not None:
                    finish_move(session, image, self.storage)
        self._done_with(path, verdict)

    def _archive_duplicate(self, path: Path, content_hash: str, note: str | None, bound: BoundLogger) -> None:
        """Archive a second copy of known bytes without processing it; a symbolic link (or anything
        else not received in the inbox) is left where it is."""
        if not inside_inbox(path, self.inbox):
            bound.warning(
                "duplicate left where it is: a symbolic link, or not inside the inbox",
                note=note,
                hint="labpipe moves only files dropped into the inbox; remove the link yourself",
            )
            return
        target = move_original(path, self.inbox, self.storage.archive_dir, content_hash)
        bound.warning("duplicate file archived without processing", note=note, to=str(target))

    def _take_unreadable(self, path: Path, verdict: Verdict) -> None:
        content_hash = self._hash_unchanged(path, verdict)
        if content_hash is None:
            return
        sample = self.rules.sample_for(path, self.inbox)
        reason = verdict.reason or "not a readable image"
        bound = log.bind(image=str(path), sample=sample)
        with self.session_factory() as session:
            reg = register_unreadable(session, path, content_hash, verdict.size, sample, reason)
            self.counts[reg.outcome.value] += 1
            image = session.get(Image, reg.image_id)
            if reg.outcome is Outcome.DUPLICATE:
                self._archive_duplicate(path, content_hash, reg.note, bound)
            elif image is not None:
                bound.error("quarantined: not a complete, readable image", image_id=image.id, reason=reason)
                finish_move(session, image, self.storage, reason_code="ImageReadError")
        self._done_with(path, verdict)

    def _take_link(self, path: Path) -> None:
        """A symbolic link, or a file whose real path is outside the inbox: never read, recorded as
        quarantined with :data:`LINK_REASON`; a link whose entry is in the inbox is moved (as a link)
        to the quarantine, anything else stays where it is."""
        self._candidates.discard(path)
        self.tracker.forget(path)
        sample = self.rules.sample_for(path, self.inbox)
        bound = log.bind(image=str(path), sample=sample)
        with self.session_factory() as session:
            reg = register_unreadable(session, path, not_received_hash(path), 0, sample, LINK_REASON)
            self.counts["link"] += 1
            image = session.get(Image, reg.image_id)
            if image is not None and reg.outcome is not Outcome.KNOWN:
                bound.error(
                    "quarantined: not a file received in the inbox", image_id=image.id, reason=LINK_REASON
                )
            moved = quarantine_link(session, image, self.storage) if image is not None else None
        if moved is None and (path.exists() or path.is_symlink()):
            st = path.lstat()
            self._taken[path] = (st.st_size, st.st_mtime_ns)

    # -- sending tasks -----------------------------------------------------------------------------

    def _send(self, image_id: int, takeover: bool = False, content_hash: str | None = None) -> None:
        try:
            self.tasks.send(image_id, takeover=takeover, content_hash=content_hash)
        except Exception as exc:
            self._unsent[image_id] = (takeover or self._unsent.get(image_id, (False, None))[0], content_hash)
            log.warning("broker unavailable; will send again", image_id=image_id, error=str(exc))
        else:
            self._unsent.pop(image_id, None)
            self.counts["sent"] += 1

    def _send_unsent(self) -> None:
        for image_id, (takeover, content_hash) in list(self._unsent.items()):
            self._send(image_id, takeover, content_hash)
            if image_id in self._unsent:
                return  # still down: try the rest next round

    # -- the sweeper -------------------------------------------------------------------------------

    def take_over_expired(self) -> int:
        """Hand every processing image whose lease expired to another worker; returns how many."""
        self._last_lease_check = self._clock()
        with self.session_factory() as session:
            handed = sum(self._hand_over(session, i, "lease expired") for i in expired_leases(session))
        self.counts["taken_over"] += handed
        return handed

    def _hand_over(self, session: Session, image_id: int, why: str, *, expired_only: bool = True) -> bool:
        """Put an abandoned image back in the queue and send its task as a takeover."""
        previous = release_for_takeover(session, image_id, expired_only=expired_only)
        if previous is None:
            return False  # renewed or finished meanwhile
        image = session.get(Image, image_id)
        log.warning(
            f"{why}: handing the image to another worker",
            image_id=image_id,
            image=image.source_path if image is not None else None,
            previous_owner=previous or None,
        )
        self._send(image_id, takeover=True, content_hash=image.content_hash if image is not None else None)
        return True

    def sweep(self) -> dict[str, int]:
        """Re-send lost tasks, take over abandoned images, finish interrupted moves (module docstring)."""
        self._last_sweep = self._clock()
        q = self.settings.queue
        report = Counter[str]()
        with self.session_factory() as session:
            stale = stale_images(
                session,
                inbox=self.inbox,
                requeue_after=q.requeue_after,
                stuck_after=q.stuck_after,
            )
            for image_id in stale.expired:
                report["taken_over"] += self._hand_over(session, image_id, "lease expired")
            for image_id in stale.processing:
                if image_id not in stale.expired:
                    why = f"no progress for {q.stuck_after} s"
                    report["taken_over"] += self._hand_over(session, image_id, why, expired_only=False)
            if stale.queued:
                try:
                    depth = self.tasks.depth()
                except Exception:
                    depth = None
                if depth is None or depth < stale.queued_total:
                    for image_id in stale.queued:
                        touch_image(session, image_id)
                        self._send(image_id, content_hash=_hash_of(session, image_id))
                        report["resent"] += 1
                    log.warning(
                        "queued images without a task in the broker: sent again",
                        resent=len(stale.queued),
                        queued=stale.queued_total,
                        broker_depth=depth if depth is not None else "unknown",
                    )
            for image_id in stale.unmoved:
                image = session.get(Image, image_id)
                try:
                    if image is not None and finish_move(session, image, self.storage) is not None:
                        report["moved"] += 1
                except OSError as exc:
                    log.error("cannot move original", image_id=image_id, error=str(exc))
        try:
            self.tasks.housekeeping()
        except Exception as exc:
            log.warning("broker housekeeping failed", error=str(exc))
        report["stage_dirs_removed"] = self._remove_abandoned_stage_dirs()
        self.counts.update(report)
        return dict(report)

    def _remove_abandoned_stage_dirs(self) -> int:
        crops = self.storage.crops_dir
        if not crops.is_dir():
            return 0
        cutoff = time.time() - 2 * self.settings.queue.stuck_after
        removed = 0
        for directory in crops.glob(f"{STAGE_DIR_PREFIX}*"):
            try:
                if directory.stat().st_mtime < cutoff:
                    shutil.rmtree(directory, ignore_errors=True)
                    removed += 1
            except OSError:
                continue
        return removed

    # -- running -----------------------------------------------------------------------------------

    def _start_observer(self) -> object | None:
        mode = choose_observer(self.settings.ingest.observer, self.inbox)
        try:
            from watchdog.events import FileSystemEvent, FileSystemEventHandler
            from watchdog.observers import Observer
            from watchdog.observers.polling import PollingObserver
        except ImportError:  # pragma: no cover - watchdog is a dependency; rescans still work
            log.warning("watchdog is not installed: relying on rescans only")
            return None

        watcher = self

        class _Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                if event.event_type in ("opened", "closed_no_write", "deleted"):
                    return
                src, dest = event.src_path, getattr(event, "dest_path", "")
                for raw, finished in (
                    (src, event.event_type == "closed"),
                    (dest, event.event_type == "moved"),
                ):
                    if raw:
                        text = raw.decode() if isinstance(raw, bytes) else raw
                        watcher.notify(
                            Path(text), event.is_directory, finished=finished and not event.is_directory
                        )

        if mode == "poll":
            observer = PollingObserver(timeout=max(0.1, self.settings.ingest.poll_interval))
        else:
            observer = Observer()
        observer.schedule(_Handler(), str(self.inbox), recursive=True)
        observer.daemon = True
        observer.start()
        log.info("watching", inbox=str(self.inbox), observer=mode)
        return observer

    def _wait(self, stop: threading.Event) -> None:
        """Sleep ``poll_interval``, waking early for a writer-finished event or for ``stop``."""
        deadline = time.monotonic() + max(0.05, self.settings.ingest.poll_interval)
        while not stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0 or self._wakeup.wait(min(left, 0.25)):
                break
        self._wakeup.clear()

    def run(self, stop: threading.Event) -> None:
        """Watch until ``stop`` is set; a full rescan at start picks up files dropped while down."""
        self.inbox.mkdir(parents=True, exist_ok=True)
        self.rescan()
        observer = self._start_observer()
        try:
            self._guarded("sweep", self.sweep)
            while not stop.is_set():
                self.tick()
                self._wait(stop)
        finally:
            if observer is not None:
                observer.stop()  # type: ignore[attr-defined]
                observer.join(timeout=5)  # type: ignore[attr-defined]
            self.arrivals.close()
            log.info("watcher stopped", **dict(self.counts))

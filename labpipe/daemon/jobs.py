"""The work behind each worker task, free of Celery: detect an image, classify a batch, record.

A task carries ids, never data: ``detect(image_id)`` and ``classify(image_id, attempt, batch)``.
Every job is idempotent and safe to run twice:

- :func:`detect_job` *claims* the image under this process's lease (one conditional UPDATE; a
  second delivery of the same task finds it claimed and does nothing; the process's heartbeat,
  :class:`~labpipe.ingest.lifecycle.LeaseKeeper`, keeps the lease while it lives), removes the
  stage directories an interrupted attempt left, reads, detects and crops into a stage directory
  on shared storage, and asks for one classify task per batch of specimens. An image without
  specimens is recorded at once: done, with zero. A takeover resumes from an earlier attempt's
  complete detections when there are some.
- :func:`classify_job` classifies its batch (a batch already classified is not redone) and, when
  every batch of the attempt is classified, records the image in one transaction under the image's
  row lock, so of two workers finishing the same image only one records it.
- After the commit that says ``done``, the original moves to the archive. Bad input
  (:class:`~labpipe.errors.ImageReadError`) is quarantined with its reason and never retried; an
  internal error marks the image ``failed`` and quarantines the file with the reason. Transient
  errors (database locked or unreachable, broker down) propagate: the task layer retries them.
"""

from __future__ import annotations

import shutil
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session

from labpipe.config import Settings
from labpipe.db.models import Image, ImageStatus
from labpipe.errors import ImageReadError, LabpipeError
from labpipe.imaging.memory import machine_memory_bytes, worker_budget_bytes, worker_processes
from labpipe.ingest.lifecycle import (
    AttemptCounter,
    LeaseKeeper,
    claim_image,
    finish_move,
    lock_image,
    mark_failed,
    mark_quarantined,
    touch_image,
)
from labpipe.logs import BoundLogger, get_logger
from labpipe.pipeline import Pipeline, StagedImage, stage_directory
from labpipe.record import ensure_classifier_model

__all__ = [
    "DB_TRANSIENT_ERRORS",
    "Followups",
    "JobContext",
    "classify_job",
    "detect_job",
    "run_inline",
]

log = get_logger(__name__)

DB_TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    sa_exc.OperationalError,  # "database is locked", connection refused or dropped
    sa_exc.InterfaceError,
    sa_exc.TimeoutError,  # connection pool exhausted
)
"""Database errors that go away by themselves: the task is retried with backoff."""


def _warn_if_budget_exceeds_machine(settings: Settings) -> None:
    """Log a warning when this machine's workers together may need more memory than it has."""
    budget, workers, total = worker_budget_bytes(settings), worker_processes(settings), machine_memory_bytes()
    if budget * workers > total:
        log.warning(
            "the workers' memory budgets exceed this machine's memory",
            budget_mb=budget >> 20,
            workers=workers,
            machine_mb=total >> 20,
            hint="lower [imaging] memory_budget_mb or the number of workers, or set memory_budget_mb = 0",
        )


class Followups(Protocol):
    """How a job asks for the next tasks (Celery in :mod:`workers.tasks`)."""

    def classify(self, image_id: int, attempt: str, batch: int) -> None: ...

    def detect(
        self, image_id: int, *, takeover: bool, resumed: bool, content_hash: str | None = None
    ) -> None: ...


@dataclass
class JobContext:
    """What a worker process holds: settings, the loaded pipeline, the attempt counter."""

    settings: Settings
    pipeline: Pipeline
    attempts: AttemptCounter
    transient: tuple[type[BaseException], ...] = field(default=DB_TRANSIENT_ERRORS)
    """Exceptions the task layer retries (database errors, plus the broker's own)."""
    drop_human_work: bool = False
    """Drop reviewed specimens a re-run does not find again (only ``labpipe process --drop-reviewed``)."""
    actor: str = "labpipe daemon"
    """Who the audit trail names for re-runs."""
    lease: LeaseKeeper | None = None
    """This process's lease owner and heartbeat (made from the settings when not given)."""

    def __post_init__(self) -> None:
        if self.lease is None:
            self.lease = LeaseKeeper(self.pipeline.session_factory, self.settings.queue.lease_seconds)

    @property
    def owner(self) -> str:
        """The lease owner this process claims images as (``host:pid:token``)."""
        assert self.lease is not None
        return self.lease.owner

    def holds(self, session: Session, image_id: int) -> bool:
        """Whether this process still holds the image (nobody took it over meanwhile)."""
        session.rollback()
        image = session.get(Image, image_id, populate_existing=True)
        return (
            image is not None
            and image.status == ImageStatus.PROCESSING.value
            and image.lease_owner == self.owner
        )

    @classmethod
    def from_settings(cls, settings: Settings, transient: tuple[type[BaseException], ...] = ()) -> JobContext:
        if settings.classifier.threads > 0:
            # The worker's share of the cores (see labpipe.daemon.service.worker_threads), for the
            # learned detector and the image work too, not only the classifier.
            import torch

            torch.set_num_threads(settings.classifier.threads)
        _warn_if_budget_exceeds_machine(settings)
        pipeline = Pipeline.from_settings(settings)
        attempts = AttemptCounter(settings.storage.root / "state" / "attempts")
        ctx = cls(settings, pipeline, attempts, DB_TRANSIENT_ERRORS + tuple(transient))
        ctx.register_model()
        return ctx

    def register_model(self) -> None:
        """Create the classifier's registry row now, in its own transaction.

        Recording creates it on first use too, but two workers starting together would both insert
        it and one would fail on the unique version; here the loser simply finds the winner's row.
        """
        for _ in range(3):
            with self.session() as session:
                try:
                    ensure_classifier_model(session, self.pipeline.classifier)
                    session.commit()
                    return
                except sa_exc.IntegrityError:
                    session.rollback()

    def session(self) -> Session:
        return self.pipeline.session_factory()

    def is_transient(self, exc: BaseException) -> bool:
        if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
            return True
        return isinstance(exc, self.transient)


def _finish(
    ctx: JobContext, session: Session, image: Image, bound: BoundLogger, reason_code: str = ""
) -> None:
    """After the status commit: forget the attempts and move the original out of the inbox."""
    ctx.attempts.clear(image.id)
    try:
        finish_move(session, image, ctx.settings.storage, reason_code=reason_code)
    except OSError as exc:  # the sweeper finishes the move later
        bound.error("cannot move the original yet", error=str(exc))


def _quarantine(
    ctx: JobContext, session: Session, image: Image, error: LabpipeError, bound: BoundLogger
) -> str:
    session.rollback()
    mark_quarantined(session, image, error.message)
    bound.error("quarantined: bad input, not retried", reason=error.reason_code, error=error.message)
    _finish(ctx, session, image, bound, reason_code=error.reason_code)
    return "quarantined"


def _fail(ctx: JobContext, session: Session, image: Image, message: str, bound: BoundLogger) -> str:
    session.rollback()
    mark_failed(session, image, message)
    bound.error("failed", error=message)
    _finish(ctx, session, image, bound, reason_code="failed")
    return "failed"


def fail_image(ctx: JobContext, image_id: int, message: str) -> None:
    """Mark an image failed from outside a job (the task layer, after the last retry)."""
    bound = log.bind(image_id=image_id)
    with ctx.session() as session:
        image = session.get(Image, image_id)
        if image is None or image.status in (ImageStatus.DONE.value, ImageStatus.QUARANTINED.value):
            return
        _fail(ctx, session, image, message, bound)


def detect_job(
    ctx: JobContext,
    image_id: int,
    followups: Followups,
    *,
    takeover: bool = False,
    resumed: bool = False,
    content_hash: str | None = None,
) -> str:
    """Claim, read, detect and crop one image; then ask for its classify tasks. Returns an outcome word.

    ``takeover``: the image may be ``processing`` (its previous worker died, or this is a retry of
    our own attempt). ``resumed``: a retry of our own attempt, not counted as a new attempt.
    ``content_hash``: the image's hash as the sender knew it; a task whose image this database does
    not hold under that id was sent by another deployment sharing the broker, and is dropped.
    """
    settings = ctx.settings
    with ctx.session() as session:
        if content_hash is not None:
            mine = session.get(Image, image_id)
            if mine is None or mine.content_hash != content_hash:
                log.error(
                    "task for an image this database does not hold: is another deployment using the "
                    "same broker? Give each deployment its own [queue] broker_url (Redis database number)",
                    image_id=image_id,
                    content_hash=content_hash,
                )
                return "foreign"
            session.rollback()
        image = claim_image(
            session,
            image_id,
            owner=ctx.owner,
            lease_seconds=settings.queue.lease_seconds,
            stuck_after=settings.queue.stuck_after,
            force=resumed,
        )
        if image is None:
            log.info("not claimed: already done, or in progress elsewhere", image_id=image_id)
            return "skipped"
        assert ctx.lease is not None
        ctx.lease.start()
        bound = log.bind(image=image.source_path, image_id=image.id, sample=image.sample_id)
        attempt_no = ctx.attempts.get(image.id) if resumed else ctx.attempts.bump(image.id)
        if attempt_no > settings.queue.max_attempts:
            _remove_stale_stages(ctx, image.id, keep=None, bound=bound)
            return _fail(
                ctx,
                session,
                image,
                f"gave up after {attempt_no - 1} interrupted attempts (the worker died each time, "
                "for example out of memory); raise [queue] max_attempts or give workers more memory",
                bound,
            )
        staged = _latest_stage(ctx, image) if takeover and not resumed else None
        if not resumed:
            _remove_stale_stages(ctx, image.id, keep=staged, bound=bound)
        if staged is not None:  # a takeover, and the detections survived: resume from them
            missing = [b for b in range(staged.n_batches) if not staged.results_file(b).is_file()]
            bound = bound.bind(attempt=staged.attempt)
            if not missing:
                return _record(ctx, session, image.id, staged, staged.load_results() or [], followups, bound)
            touch_image(session, image.id)
            session.commit()
            for batch in missing:
                followups.classify(image_id, staged.attempt, batch)
            bound.info("resumed from the staged detections", batches=len(missing), attempt_no=attempt_no)
            return "resumed"
        ctx.pipeline.follow_defaults(session)  # a default changed meanwhile: this image uses the new one
        attempt = uuid.uuid4().hex[:12]
        bound = bound.bind(attempt=attempt)
        bound.info("detect started", attempt_no=attempt_no)
        try:
            staged = ctx.pipeline.stage_detections(image, attempt, settings.queue.classify_batch)
        except ImageReadError as exc:
            return _quarantine(ctx, session, image, exc, bound)
        except Exception as exc:
            if ctx.is_transient(exc):
                raise
            if not ctx.holds(session, image.id):
                bound.warning("detect interrupted: another worker took the image over", error=repr(exc))
                return "skipped"
            bound.error("detect failed", exc_info=True)
            return _fail(ctx, session, image, f"internal error while detecting: {exc!r}", bound)
        if not staged.specimens:
            return _record(ctx, session, image.id, staged, [], followups, bound)
        touch_image(session, image.id)
    for batch in range(staged.n_batches):
        followups.classify(image_id, attempt, batch)
    bound.info("detect done", specimens=len(staged.specimens), batches=staged.n_batches)
    return "detected"


def _stage_dirs(ctx: JobContext, image_id: int) -> list[Path]:
    """Every stage directory of the image, whatever its attempt."""
    prefix = stage_directory(ctx.pipeline.crops_dir, image_id, "").name
    return [d for d in ctx.pipeline.crops_dir.glob(f"{prefix}*") if d.is_dir()]


def _remove_stale_stages(
    ctx: JobContext, image_id: int, *, keep: StagedImage | None, bound: BoundLogger
) -> int:
    """At a claim: remove the stage directories earlier attempts left (all but ``keep``).

    The claim holds the image, so no other worker writes to them any more (a worker that lost its
    lease finds its directory gone and stops); the sweeper's age rule is only a net for leftovers.
    """
    removed = 0
    for directory in _stage_dirs(ctx, image_id):
        if keep is not None and directory == keep.directory:
            continue
        shutil.rmtree(directory, ignore_errors=True)
        removed += 1
    if removed:
        bound.info("removed stage directories of interrupted attempts", removed=removed)
    return removed


def _latest_stage(ctx: JobContext, image: Image) -> StagedImage | None:
    """The newest complete stage directory of ``image`` (its detections survived a lost task)."""

    def mtime(directory: Path) -> float:
        try:
            return directory.stat().st_mtime
        except OSError:  # removed meanwhile
            return 0.0

    for directory in sorted(_stage_dirs(ctx, image.id), key=mtime, reverse=True):
        staged = StagedImage.load(directory)
        if staged is not None and staged.content_hash == image.content_hash:
            return staged
    return None


def classify_job(ctx: JobContext, image_id: int, attempt: str, batch: int, followups: Followups) -> str:
    """Classify one batch of a staged image; the last batch records the image. Returns an outcome word."""
    staged = StagedImage.load(stage_directory(ctx.pipeline.crops_dir, image_id, attempt))
    bound = log.bind(image_id=image_id, attempt=attempt, batch=batch)
    if staged is None:
        bound.info("nothing to classify: the attempt was recorded or abandoned")
        return "skipped"
    bound = bound.bind(image=staged.path)
    with ctx.session() as session:
        image = session.get(Image, image_id)
        if image is None or image.status != ImageStatus.PROCESSING.value:
            bound.info("image no longer processing: dropping this attempt", status=image and image.status)
            shutil.rmtree(staged.directory, ignore_errors=True)
            return "skipped"
        touch_image(session, image_id)
        try:
            ctx.pipeline.classify_staged(staged, batch)
        except Exception as exc:
            if ctx.is_transient(exc):
                raise
            if not staged.directory.is_dir():
                bound.warning("attempt abandoned: another worker took the image over", error=repr(exc))
                return "skipped"
            bound.error("classify failed", exc_info=True)
            return _fail(ctx, session, image, f"internal error while classifying: {exc!r}", bound)
        results = staged.load_results()
        if results is None:
            return "classified"
        return _record(ctx, session, image_id, staged, results, followups, bound)


def _record(
    ctx: JobContext,
    session: Session,
    image_id: int,
    staged: StagedImage,
    results: list,
    followups: Followups,
    bound: BoundLogger,
) -> str:
    """Record a staged image under its row lock, unless another worker did so first."""
    session.rollback()
    image = lock_image(session, image_id)
    if image is None or image.status != ImageStatus.PROCESSING.value or not staged.directory.is_dir():
        session.rollback()
        bound.info("already recorded by another worker")
        return "skipped"
    try:
        record = ctx.pipeline.record_staged(
            session, image, staged, results, drop_human_work=ctx.drop_human_work, actor=ctx.actor
        )
    except Exception as exc:
        # The stage directory is consumed either way: start the image again from detection.
        if ctx.is_transient(exc):
            bound.warning("recording failed; detecting again", error=str(exc))
            followups.detect(image_id, takeover=True, resumed=True, content_hash=staged.content_hash)
            raise
        bound.error("recording failed", exc_info=True)
        return _fail(ctx, session, image, f"internal error while recording: {exc!r}", bound)
    bound.info(
        "processed",
        specimens=len(record.specimens),
        rejected=sum(1 for r in results if r.rejected),
        seconds=round(image.seconds or 0.0, 3),
    )
    _finish(ctx, session, image, bound)
    return "done"


class _InlineFollowups:
    """Followups that queue the next jobs in this process instead of the broker."""

    def __init__(self) -> None:
        self.pending: deque[tuple[str, tuple[Any, ...], dict[str, Any]]] = deque()

    def classify(self, image_id: int, attempt: str, batch: int) -> None:
        self.pending.append(("classify", (image_id, attempt, batch), {}))

    def detect(
        self, image_id: int, *, takeover: bool, resumed: bool, content_hash: str | None = None
    ) -> None:
        self.pending.append(
            ("detect", (image_id,), {"takeover": takeover, "resumed": resumed, "content_hash": content_hash})
        )


def run_inline(
    pipeline: Pipeline, image_id: int, *, drop_human_work: bool = False, actor: str = "labpipe process"
) -> str:
    """Run a queued image's detect job and every job it asks for, here and now (``labpipe process``).

    The very jobs the workers run, with the same claim, quarantine and recording; only the
    followups go to a local queue instead of the broker. Returns the last job's outcome word.
    """
    settings = pipeline.settings
    ctx = JobContext(
        settings,
        pipeline,
        AttemptCounter(settings.storage.root / "state" / "attempts"),
        drop_human_work=drop_human_work,
        actor=actor,
    )
    followups = _InlineFollowups()
    try:
        outcome = detect_job(ctx, image_id, followups)
        while followups.pending:
            kind, args, kwargs = followups.pending.popleft()
            if kind == "classify":
                outcome = classify_job(ctx, *args, followups)
            else:
                outcome = detect_job(ctx, *args, followups, **kwargs)
    finally:
        assert ctx.lease is not None
        ctx.lease.stop()
    return outcome

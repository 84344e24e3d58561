"""Record an :class:`~labpipe.analysis.ImageAnalysis` in the database: one transaction per image.

A plate may be recorded more than once (the same bytes re-run from the archive, another detector,
new settings). People's work hangs on its specimens, so the new detections are *reconciled* with
the stored specimens (:func:`labpipe.reconcile.reconcile`), never swapped for them:

- a specimen found again keeps its id, its number and everything attached to it (verifications,
  box edits, wells, barcode links, other models' classifications); it gets the new box and crop,
  unless a person set the box by hand, and this model's new classification;
- a specimen not found again is deleted only if nobody worked on it; otherwise it is kept and
  flagged ``not_redetected`` (``drop_human_work=True``, an explicit request, drops it instead: its
  barcode records are unlinked, not deleted, and the audit trail keeps a full copy);
- new boxes become new specimens with new ids (ids are never reused).

Order of work, so that a crash at any point leaves either the old result or the new one, never a
mixture:

1. inside the transaction, delete the unmatched specimens without human work, update the matched
   ones, insert the new ones and flush to get their ids;
2. move each staged crop to a new, id-derived path (nothing committed is overwritten) and insert
   the classifications;
3. set the image's status to ``done`` and commit;
4. only then delete the crop files that no row points at any more (only files inside the crops
   folder: a crop path that leads elsewhere is never followed for a deletion).

If anything fails before the commit, the transaction rolls back and the crops moved in step 2
are deleted again.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from labpipe.analysis import ImageAnalysis
from labpipe.audit import record_event, specimen_snapshot
from labpipe.classify.base import FamilyClassifier
from labpipe.crops import crop_relpath
from labpipe.db.models import (
    BarcodeLink,
    Classification,
    DetectionState,
    Image,
    ImageStatus,
    Model,
    ModelKind,
    Sample,
    Specimen,
    Verification,
)
from labpipe.detect.base import Detector
from labpipe.logs import get_logger
from labpipe.reconcile import Reconciliation, StoredBox, reconcile

__all__ = [
    "RecordResult",
    "classifier_rule",
    "ensure_classifier_model",
    "ensure_detector_model",
    "ensure_sample",
    "human_work",
    "record_analysis",
]

log = get_logger(__name__)


def ensure_sample(session: Session, sample_id: str | None) -> None:
    """Create a bare sample row for ``sample_id`` if it does not exist yet.

    Raises :class:`~labpipe.errors.ConfigError` for an id that breaks the sample id rule
    (:data:`labpipe.samples.SAMPLE_ID_PATTERN`) and is not already a sample of this lab.
    """
    from labpipe.errors import ConfigError
    from labpipe.samples import sample_id_problem

    if sample_id and session.get(Sample, sample_id) is None and (problem := sample_id_problem(sample_id)):
        raise ConfigError("sample", problem, "rename the sample (folder, --sample or sidecar) and try again")
    if sample_id and session.get(Sample, sample_id) is None:
        try:  # a concurrent worker may create the same sample: keep theirs
            with session.begin_nested():
                session.add(Sample(id=sample_id))
        except IntegrityError:
            pass


def ensure_classifier_model(session: Session, classifier: FamilyClassifier) -> Model:
    """The registry row for ``classifier``'s version, created on first use."""
    query = select(Model).where(Model.version == classifier.version)
    row = session.scalar(query)
    if row is None:
        # Another process may register the same version at the same moment: insert inside a
        # savepoint and, if the unique constraint refuses it, use the row the other one made.
        try:
            with session.begin_nested():
                session.add(_new_model_row(classifier))
        except IntegrityError:
            pass
        row = session.scalars(query).one()
    return row


def _new_model_row(classifier: FamilyClassifier) -> Model:
    return Model(
        name=classifier.name,
        kind=ModelKind.CLASSIFIER.value,
        version=classifier.version,
        weights_hash=classifier.weights_hash,
        labels_hash=classifier.labels_hash,
        path=getattr(classifier, "path", None),
        labels=list(classifier.families),
        is_default=False,
        settings=classifier_rule(classifier),
    )


def classifier_rule(classifier: FamilyClassifier) -> dict[str, Any]:
    """The decision rule of ``classifier`` as stored with each of its calls: its rejection
    threshold and, where it has one, its out-of-distribution test (``ood_rule``)."""
    rule: dict[str, Any] = {}
    threshold = getattr(classifier, "threshold", None)
    if isinstance(threshold, int | float):
        rule["threshold"] = float(threshold)
    ood = getattr(classifier, "ood_rule", None)
    if ood:
        rule["ood"] = ood
    return rule


def _settings_hash(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def ensure_detector_model(session: Session, detector: Detector) -> Model:
    """The registry row (kind ``detector``) for ``detector``'s version, created on first use.

    Its ``settings`` hold what shapes the detector's output; ``weights_hash`` is the hash of the
    weights for a learned detector and of the settings for the classical one.
    """
    query = select(Model).where(Model.version == detector.version)
    row = session.scalar(query)
    if row is None:
        settings = dict(getattr(detector, "settings", {}) or {})
        weights_hash = str(getattr(detector, "weights_hash", "") or _settings_hash(settings))
        try:
            with session.begin_nested():
                session.add(
                    Model(
                        name=detector.version.split("@", 1)[0],
                        kind=ModelKind.DETECTOR.value,
                        version=detector.version,
                        weights_hash=weights_hash[:64],
                        labels_hash=hashlib.sha256(b"specimen").hexdigest(),
                        path=str(settings["model_dir"]) if "model_dir" in settings else None,
                        labels=["specimen"],
                        is_default=False,
                        settings=settings,
                    )
                )
        except IntegrityError:
            pass
        row = session.scalars(query).one()
    return row


def human_work(session: Session, image_id: int) -> dict[int, tuple[str, ...]]:
    """What people attached to each specimen of an image: ``verification``, ``box_edit``, ``well``,
    ``barcode``, ``drawn`` (specimens without any are absent)."""
    work: dict[int, list[str]] = {}
    for (specimen_id,) in session.execute(
        select(Verification.specimen_id).join(Specimen).where(Specimen.image_id == image_id).distinct()
    ):
        work.setdefault(specimen_id, []).append("verification")
    for specimen_id, plate in session.execute(
        select(BarcodeLink.specimen_id, BarcodeLink.plate).join(Specimen).where(Specimen.image_id == image_id)
    ):
        kind = "well" if plate else "barcode"
        if kind not in work.setdefault(specimen_id, []):
            work[specimen_id].append(kind)
    for specimen_id, edited_by, state in session.execute(
        select(Specimen.id, Specimen.box_edited_by, Specimen.detection_state).where(
            Specimen.image_id == image_id
        )
    ):
        if edited_by:
            work.setdefault(specimen_id, []).append("box_edit")
        if state == DetectionState.DRAWN.value:
            work.setdefault(specimen_id, []).append("drawn")
    return {k: tuple(v) for k, v in work.items()}


@dataclass
class RecordResult:
    """What recording an image did to its specimens."""

    specimens: list[Specimen]
    """Every specimen of the image after the run, in plate order."""
    reconciliation: Reconciliation = field(default_factory=Reconciliation)
    human_work: dict[int, tuple[str, ...]] = field(default_factory=dict)
    """Stored specimen id -> the human work it held (for reports of kept or dropped specimens)."""

    def summary(self) -> dict[str, Any]:
        """JSON-ready: how many specimens were kept, added, deleted, flagged or dropped."""
        r = self.reconciliation
        return {
            "matched": len(r.matched),
            "new": len(r.new),
            "deleted": len(r.deleted),
            "not_redetected": [{"id": i, "work": list(self.human_work.get(i, ()))} for i in r.kept],
            "dropped": [{"id": i, "work": list(self.human_work.get(i, ()))} for i in r.dropped],
        }


def _own_crop(crops_dir: Path, crop_path: str) -> Path | None:
    """``crops_dir / crop_path`` when that is a file inside the crops folder (its real path), else
    ``None``: a relative path with ``..``, an absolute path or a link out of the folder is not ours."""
    if not crop_path:
        return None
    path = crops_dir / crop_path
    try:
        inside = path.resolve().is_relative_to(crops_dir.resolve()) and path.is_file()
    except (OSError, RuntimeError):
        return None
    return path if inside and not path.is_symlink() else None


def _free_crop_path(crops_dir: Path, image: Image, specimen_id: int, taken: set[str]) -> Path:
    """A crop path for ``specimen_id`` that no committed row uses and no file occupies."""
    revision = 0
    while True:
        rel = crop_relpath(image.sample_id, image.id, specimen_id, revision)
        if rel.as_posix() not in taken and not (crops_dir / rel).exists():
            return rel
        revision += 1


def record_analysis(
    session: Session,
    image: Image,
    analysis: ImageAnalysis,
    classifier: FamilyClassifier,
    crops_dir: Path,
    *,
    detector: Detector | None = None,
    drop_human_work: bool = False,
    actor: str = "labpipe",
) -> RecordResult:
    """Reconcile ``analysis`` with ``image``'s stored specimens and mark it done, in one commit.

    ``detector``: the detector that made ``analysis`` (its registry row is linked to every
    specimen). ``drop_human_work``: drop stored specimens with human work that were not found again
    (default: keep and flag them). ``actor``: who asked for the run (the audit trail's name).
    """
    moved: list[Path] = []
    old_crops = [p for s in image.specimens if (p := _own_crop(crops_dir, s.crop_path)) is not None]
    try:
        model = ensure_classifier_model(session, classifier)
        detector_row = ensure_detector_model(session, detector) if detector is not None else None
        rule = classifier_rule(classifier)
        work = human_work(session, image.id) if image.specimens else {}
        stored_rows = {s.id: s for s in image.specimens}
        matching = reconcile(
            [
                StoredBox(s.id, s.index_in_image, (s.x, s.y, s.w, s.h), work.get(s.id, ()))
                for s in image.specimens
            ],
            [found.bbox for found in analysis.specimens],
            drop_human_work=drop_human_work,
        )
        for specimen_id in matching.dropped:
            row = stored_rows[specimen_id]
            record_event(
                session,
                actor=actor,
                action="drop_reviewed",
                specimen_id=specimen_id,
                image_id=image.id,
                before=specimen_snapshot(session, row),
                note="not found again by the re-run; dropped on explicit request (--drop-reviewed)",
            )
            for link in list(row.barcode_links):  # barcode results are the lab's data: unlink, keep
                row.barcode_links.remove(link)
                link.specimen_id = None
        for specimen_id in [*matching.deleted, *matching.dropped]:
            session.delete(stored_rows[specimen_id])
        for specimen_id in matching.kept:
            row = stored_rows[specimen_id]
            if row.detection_state != DetectionState.DRAWN.value:
                row.detection_state = DetectionState.NOT_REDETECTED.value
        session.flush()

        next_index = max(
            (stored_rows[i].index_in_image for i in [*matching.matched.values(), *matching.kept]), default=0
        )
        rows: list[Specimen] = []
        for position, found in enumerate(analysis.specimens):
            x, y, w, h = found.bbox
            if position in matching.matched:
                row = stored_rows[matching.matched[position]]
                if row.detection_state == DetectionState.NOT_REDETECTED.value:
                    row.detection_state = DetectionState.DETECTED.value
                if not row.box_edited_by:  # a person's box wins over the detector's
                    row.x, row.y, row.w, row.h = x, y, w, h
                    row.crop_size = found.crop_size
                    row.length_mm, row.width_mm = found.length_mm, found.width_mm
            else:
                next_index += 1
                row = Specimen(
                    index_in_image=next_index, x=x, y=y, w=w, h=h, crop_path="", crop_size=found.crop_size
                )
                row.length_mm, row.width_mm = found.length_mm, found.width_mm
                image.specimens.append(row)
            row.score = found.score
            row.detector_version = analysis.detector_version
            row.detector_model_id = detector_row.id if detector_row is not None else None
            rows.append(row)
        session.flush()

        taken = {s.crop_path for s in image.specimens if s.crop_path}
        for found, row in zip(analysis.specimens, rows, strict=True):
            if row.box_edited_by and row.crop_path:
                found.staged_crop.unlink(missing_ok=True)  # the crop of the person's box stays
            else:
                rel = _free_crop_path(crops_dir, image, row.id, taken)
                final = crops_dir / rel
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(found.staged_crop, final)
                moved.append(final)
                row.crop_path = rel.as_posix()
                taken.add(row.crop_path)
            for old in [c for c in row.classifications if c.model_id == model.id]:
                row.classifications.remove(old)
            session.flush()
            result = found.classification
            row.classifications.append(
                Classification(
                    model_id=model.id,
                    family=result.family,
                    probability=result.probability,
                    rejected=result.rejected,
                    reason=result.reason,
                    top_k=[[family, prob] for family, prob in result.top],
                    threshold=rule.get("threshold"),
                    rule=rule or None,
                )
            )
        if stored_rows:
            record_event(
                session,
                actor=actor,
                action="reprocess",
                image_id=image.id,
                after={
                    "detector": analysis.detector_version,
                    "classifier": classifier.version,
                    "matched": len(matching.matched),
                    "new": len(matching.new),
                    "deleted": len(matching.deleted),
                    "not_redetected": matching.kept,
                    "dropped": matching.dropped,
                },
            )
        image.status = ImageStatus.DONE.value
        image.error = None
        image.width, image.height = analysis.width, analysis.height
        image.format = analysis.format
        image.source_channels, image.bit_depth = analysis.source_channels, analysis.bit_depth
        image.um_per_px = analysis.um_per_px
        image.detector_version = analysis.detector_version
        image.n_specimens = len(image.specimens)
        image.seconds = analysis.seconds
        image.processed_at = dt.datetime.now(dt.UTC)
        session.commit()
    except BaseException:
        session.rollback()
        for path in moved:
            path.unlink(missing_ok=True)
        raise
    finally:
        analysis.discard()
    still_used = {crops_dir / s.crop_path for s in image.specimens if s.crop_path}
    for path in old_crops:
        if path not in still_used:
            path.unlink(missing_ok=True)
    if matching.kept or matching.dropped:
        log.warning(
            "re-run did not find specimens that hold human work",
            image=image.source_path,
            image_id=image.id,
            kept_flagged=matching.kept,
            dropped=matching.dropped,
        )
    ordered = sorted(image.specimens, key=lambda s: s.index_in_image)
    return RecordResult(ordered, matching, work)

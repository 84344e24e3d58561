"""Record an :class:`~labpipe.analysis.ImageAnalysis` in the database: one transaction per image.

Order of work, so that a crash at any point leaves either the old result or the new one,
never a mixture:

1. inside the transaction, delete the image's earlier specimens (their classifications go
   with them), insert the new specimens and flush to get their ids;
2. move each staged crop to its final, id-derived path (new paths: nothing committed is
   overwritten) and insert the classifications;
3. set the image's status to ``done`` and commit;
4. only then delete the crop files of the replaced specimens (only files inside the crops
   folder: a crop path that leads elsewhere is never followed for a deletion).

If anything fails before the commit, the transaction rolls back and the crops moved in step 2
are deleted again.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from labpipe.analysis import ImageAnalysis
from labpipe.classify.base import FamilyClassifier
from labpipe.crops import crop_relpath
from labpipe.db.models import Classification, Image, ImageStatus, Model, ModelKind, Sample, Specimen

__all__ = ["ensure_classifier_model", "ensure_sample", "record_analysis"]


def ensure_sample(session: Session, sample_id: str | None) -> None:
    """Create a bare sample row for ``sample_id`` if it does not exist yet."""
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
    )


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


def record_analysis(
    session: Session,
    image: Image,
    analysis: ImageAnalysis,
    classifier: FamilyClassifier,
    crops_dir: Path,
) -> list[Specimen]:
    """Replace ``image``'s specimens with ``analysis``'s and mark it done, in one commit."""
    moved: list[Path] = []
    old_crops = [p for s in image.specimens if (p := _own_crop(crops_dir, s.crop_path)) is not None]
    try:
        model = ensure_classifier_model(session, classifier)
        image.specimens.clear()
        session.flush()
        specimens: list[Specimen] = []
        for found in analysis.specimens:
            x, y, w, h = found.bbox
            row = Specimen(
                index_in_image=found.index_in_image,
                x=x,
                y=y,
                w=w,
                h=h,
                score=found.score,
                detector_version=analysis.detector_version,
                crop_path="",
                crop_size=found.crop_size,
                length_mm=found.length_mm,
                width_mm=found.width_mm,
            )
            image.specimens.append(row)
            specimens.append(row)
        session.flush()
        for found, row in zip(analysis.specimens, specimens, strict=True):
            rel = crop_relpath(image.sample_id, image.id, row.id)
            final = crops_dir / rel
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(found.staged_crop, final)
            moved.append(final)
            row.crop_path = rel.as_posix()
            result = found.classification
            row.classifications.append(
                Classification(
                    model_id=model.id,
                    family=result.family,
                    probability=result.probability,
                    rejected=result.rejected,
                    reason=result.reason,
                    top_k=[[family, prob] for family, prob in result.top],
                )
            )
        image.status = ImageStatus.DONE.value
        image.error = None
        image.width, image.height = analysis.width, analysis.height
        image.format = analysis.format
        image.source_channels, image.bit_depth = analysis.source_channels, analysis.bit_depth
        image.um_per_px = analysis.um_per_px
        image.detector_version = analysis.detector_version
        image.n_specimens = len(specimens)
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
    for path in old_crops:
        if path not in moved:
            path.unlink(missing_ok=True)
    return specimens

"""Re-run classification over stored crops with another model, without re-detecting.

Every specimen keeps its earlier classifications: the new model's results are added as new rows
pointing at the new model's registry row (one row per specimen and model version, which the
schema enforces). Specimens that already have a classification by this model version are not
classified again; when the rejection threshold asked for differs from the one stored with their
call, the call is *re-decided* from its stored probabilities (no network run,
:func:`labpipe.classify.base.redecide`). Running it twice changes nothing. One transaction per
image: an interruption leaves every image either fully reclassified or untouched by this run.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from tqdm import tqdm

from labpipe.classify.base import FamilyClassifier, redecide
from labpipe.crops import read_crop
from labpipe.db.models import Classification, Image, Specimen, utcnow
from labpipe.logs import get_logger
from labpipe.record import classifier_rule, ensure_classifier_model

__all__ = ["ReclassifyResult", "reclassify_stored"]

log = get_logger(__name__)


@dataclass
class ReclassifyResult:
    model_version: str
    images: int = 0
    """Images with at least one specimen classified in this run."""
    classified: int = 0
    already_done: int = 0
    """Specimens in scope that already had a classification by this model version."""
    redecided: int = 0
    """Of those, calls decided again at the new threshold from their stored probabilities."""
    changed: int = 0
    """Of the re-decided calls, those whose accept/reject outcome changed."""
    missing_crops: list[str] = field(default_factory=list)
    """Crop paths (relative to the crops folder) that could not be read; those specimens were skipped."""
    counts: dict[str, int] = field(default_factory=dict)
    """Accepted families and ``rejected`` among the specimens classified in this run."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def reclassify_stored(
    session_factory: sessionmaker[Session],
    classifier: FamilyClassifier,
    crops_dir: Path,
    *,
    sample_id: str | None = None,
    batch_size: int = 16,
    progress: bool = True,
    redecide_stored: bool = False,
) -> ReclassifyResult:
    """Classify the stored crops of every specimen (of ``sample_id``) not yet classified by ``classifier``.

    Parameters
    ----------
    session_factory:
        The database.
    classifier:
        Any :class:`~labpipe.classify.base.FamilyClassifier`; its version gets a registry row if new.
    crops_dir:
        ``settings.storage.crops_dir``: ``Specimen.crop_path`` is relative to it.
    sample_id:
        Only this sample's specimens.
    batch_size:
        Crops per ``classify`` call.
    redecide_stored:
        Re-decide this model's stored calls at the classifier's threshold where they were decided
        at another one (``labpipe reclassify --threshold``).
    """
    result = ReclassifyResult(classifier.version)
    with session_factory() as session:
        model_id = ensure_classifier_model(session, classifier).id
        session.commit()
        done = select(Classification.specimen_id).where(Classification.model_id == model_id)
        scope = select(Specimen.id, Specimen.image_id, Specimen.crop_path).join(
            Image, Image.id == Specimen.image_id
        )
        if sample_id is not None:
            scope = scope.where(Image.sample_id == sample_id)
        result.already_done = session.scalar(
            select(func.count()).select_from(scope.where(Specimen.id.in_(done)).subquery())
        )
        rule = classifier_rule(classifier)
        if redecide_stored and "threshold" in rule:
            _redecide_stored(session, model_id, scope, rule, result)
        todo = session.execute(
            scope.where(Specimen.id.not_in(done)).order_by(Specimen.image_id, Specimen.index_in_image)
        ).all()
    by_image: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for specimen_id, image_id, crop_path in todo:
        by_image[image_id].append((specimen_id, crop_path))
    counts: dict[str, int] = defaultdict(int)
    with tqdm(total=len(todo), desc="reclassify", unit="crop", disable=not progress) as bar:
        for image_id, specimens in by_image.items():
            readable: list[tuple[int, Any]] = []
            for specimen_id, crop_path in specimens:
                try:
                    readable.append((specimen_id, read_crop(crops_dir / crop_path)))
                except (OSError, ValueError) as exc:
                    result.missing_crops.append(crop_path)
                    log.warning("crop unreadable", specimen=specimen_id, path=crop_path, error=str(exc))
            rows: list[Classification] = []
            for start in range(0, len(readable), max(1, batch_size)):
                chunk = readable[start : start + batch_size]
                for (specimen_id, _), res in zip(
                    chunk, classifier.classify([c for _, c in chunk]), strict=True
                ):
                    rows.append(
                        Classification(
                            specimen_id=specimen_id,
                            model_id=model_id,
                            family=res.family,
                            probability=res.probability,
                            rejected=res.rejected,
                            reason=res.reason,
                            top_k=[[f, p] for f, p in res.top],
                            threshold=rule.get("threshold"),
                            rule=rule or None,
                        )
                    )
            with session_factory() as session:
                session.add_all(rows)
                try:
                    session.commit()
                except IntegrityError:  # another run classified this image meanwhile
                    session.rollback()
                    result.already_done += len(rows)
                    rows = []
            if rows:
                result.images += 1
                result.classified += len(rows)
                for row in rows:
                    counts["rejected" if row.rejected or not row.family else str(row.family)] += 1
            bar.update(len(specimens))
            log.debug("reclassified image", image_id=image_id, specimens=len(rows))
    result.counts = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    return result


def _redecide_stored(
    session: Session, model_id: int, scope: Any, rule: dict[str, Any], result: ReclassifyResult
) -> None:
    """Re-decide, at ``rule["threshold"]``, this model's stored calls in ``scope`` that were decided
    at another threshold (or at an unknown one); committed."""
    threshold = float(rule["threshold"])
    in_scope = select(scope.subquery().c.id)
    rows = session.scalars(
        select(Classification).where(
            Classification.model_id == model_id,
            Classification.specimen_id.in_(in_scope),
            (Classification.threshold.is_(None)) | (Classification.threshold != threshold),
        )
    ).all()
    now = utcnow()
    for row in rows:
        family = row.family or (str(row.top_k[0][0]) if row.top_k else None)
        rejected, reason = redecide(family, float(row.probability), bool(row.rejected), row.reason, threshold)
        result.changed += rejected != bool(row.rejected)
        row.family, row.rejected, row.reason = family, rejected, reason
        row.threshold, row.rule, row.decided_at = threshold, {**(row.rule or {}), **rule}, now
    result.redecided = len(rows)
    session.commit()
    if rows:
        log.info("re-decided stored calls", model_id=model_id, threshold=threshold, calls=len(rows))

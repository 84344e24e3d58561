"""Process plate images end to end: analysis (science) + recording (database), for CLI and workers."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from labpipe.analysis import ImageAnalysis, analyse_image, file_sha256
from labpipe.classify.base import FamilyClassifier
from labpipe.config import Settings
from labpipe.db.models import Image, ImageStatus, Specimen
from labpipe.detect.base import Detector
from labpipe.errors import ConfigError, ImageReadError
from labpipe.logs import get_logger
from labpipe.record import ensure_sample, record_analysis

__all__ = ["Pipeline", "build_detector", "image_result"]

log = get_logger(__name__)


def build_detector(settings: Settings) -> Detector:
    """The detector named by ``[detector] kind``."""
    cfg = settings.detector
    if cfg.kind == "classical":
        from labpipe.detect.classical import ClassicalDetector

        return ClassicalDetector(
            min_size_um=cfg.min_size_um,
            min_size_px=cfg.min_size_px,
            score_threshold=cfg.score_threshold,
            split_touching=cfg.split_touching,
        )
    raise ConfigError(
        "[detector] kind",
        f"unknown detector {cfg.kind!r}",
        "use 'classical'; trained DETR model directories arrive with the models issue",
    )


def image_result(image: Image, analysis: ImageAnalysis | None, specimens: list[Specimen]) -> dict[str, Any]:
    """The JSON-ready record of one processed image (the shape of ``labpipe process --json``)."""
    rows = []
    counts: Counter[str] = Counter()
    for specimen in specimens:
        cls = specimen.classifications[-1] if specimen.classifications else None
        if cls is not None and not cls.rejected and cls.family:
            counts[cls.family] += 1
        else:
            counts["rejected"] += 1
        rows.append(
            {
                "id": specimen.id,
                "index": specimen.index_in_image,
                "bbox": [specimen.x, specimen.y, specimen.w, specimen.h],
                "score": round(specimen.score, 4),
                "crop_path": specimen.crop_path,
                "length_mm": specimen.length_mm,
                "family": cls.family if cls else None,
                "probability": round(cls.probability, 4) if cls else None,
                "rejected": cls.rejected if cls else True,
                "reason": cls.reason if cls else "not classified",
                "top3": [[f, round(p, 4)] for f, p in (cls.top_k[:3] if cls else [])],
                "model_version": cls.model.version if cls else None,
            }
        )
    counts.setdefault("rejected", 0)
    return {
        "image_id": image.id,
        "path": image.source_path,
        "sample": image.sample_id,
        "width": image.width,
        "height": image.height,
        "um_per_px": image.um_per_px,
        "seconds": round(image.seconds or 0.0, 3),
        "stage_seconds": {k: round(v, 3) for k, v in (analysis.stage_seconds if analysis else {}).items()},
        "detector_version": image.detector_version,
        "specimens": rows,
        "counts": dict(counts),
    }


class Pipeline:
    """Holds the loaded models and the database; processes one file at a time."""

    def __init__(
        self,
        settings: Settings,
        detector: Detector,
        classifier: FamilyClassifier,
        session_factory: sessionmaker[Session],
    ) -> None:
        self.settings = settings
        self.detector = detector
        self.classifier = classifier
        self.session_factory = session_factory
        self.crops_dir = settings.storage.crops_dir

    @classmethod
    def from_settings(cls, settings: Settings) -> Pipeline:
        from labpipe.classify.loader import load_classifier
        from labpipe.db.database import open_database

        cfg = settings.classifier
        classifier = load_classifier(
            cfg.model,
            threshold=cfg.threshold,
            batch_size=cfg.batch_size,
            threads=cfg.threads,
            top_k=cfg.top_k,
        )
        return cls(settings, build_detector(settings), classifier, open_database(settings.database_url))

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        bind = self.session_factory.kw.get("bind")
        if bind is not None:
            bind.dispose()

    def register(self, session: Session, path: Path, content_hash: str, sample_id: str | None) -> Image:
        """The image row for these bytes (one per content hash), marked ``processing``."""
        ensure_sample(session, sample_id)
        image = session.scalar(select(Image).where(Image.content_hash == content_hash))
        if image is None:
            image = Image(
                content_hash=content_hash,
                source_path=str(path),
                file_name=path.name,
                size_bytes=path.stat().st_size,
            )
            session.add(image)
        else:
            image.source_path = str(path)
        if sample_id:
            image.sample_id = sample_id
        image.status = ImageStatus.PROCESSING.value
        image.error = None
        session.commit()
        return image

    def process_file(self, path: Path, sample_id: str | None = None) -> dict[str, Any]:
        """Analyse ``path`` and record the result; returns the JSON-ready result.

        Unreadable input raises :class:`ImageReadError` after the image row (if one could be
        made) is marked ``failed`` with the reason.
        """
        path = Path(path)
        bound = log.bind(image=str(path), sample=sample_id)
        if not path.is_file():
            raise ImageReadError(path, "no such file", "check the path")
        started = time.perf_counter()
        content_hash = file_sha256(path)
        with self.session_factory() as session:
            image = self.register(session, path, content_hash, sample_id)
            bound = bound.bind(image_id=image.id)
            cfg = self.settings
            try:
                analysis = analyse_image(
                    path,
                    detector=self.detector,
                    classifier=self.classifier,
                    staging_root=self.crops_dir,
                    overview_max_side=cfg.imaging.overview_max_side,
                    margin=cfg.crops.margin,
                    batch_size=cfg.classifier.batch_size,
                    um_per_px_fallback=cfg.um_per_px_fallback,
                    max_pixels=cfg.imaging.max_pixels,
                    max_decoded_pixels=cfg.imaging.max_decoded_pixels,
                    content_hash=content_hash,
                )
            except ImageReadError as exc:
                image.status = ImageStatus.FAILED.value
                image.error = exc.message
                session.commit()
                bound.error("unreadable image", error=exc.message)
                raise
            except BaseException:
                session.rollback()
                image.status = ImageStatus.FAILED.value
                image.error = "processing interrupted by an internal error; see the logs"
                session.commit()
                raise
            specimens = record_analysis(session, image, analysis, self.classifier, self.crops_dir)
            image.seconds = time.perf_counter() - started
            session.commit()
            result = image_result(image, analysis, specimens)
        bound.info(
            "processed",
            specimens=len(result["specimens"]),
            rejected=result["counts"]["rejected"],
            seconds=result["seconds"],
        )
        return result

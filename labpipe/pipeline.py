"""Process plate images end to end: analysis (science) + recording (database), for CLI and workers."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from labpipe.analysis import (
    ImageAnalysis,
    SpecimenAnalysis,
    crop_file_name,
    cut_crops,
    file_sha256,
    timed_detection,
)
from labpipe.classify.base import Classification, FamilyClassifier
from labpipe.config import Settings
from labpipe.crops import CropWriter, read_crop
from labpipe.db.models import Image, ImageStatus, Specimen
from labpipe.detect.base import Detector
from labpipe.errors import ConfigError, ImageReadError
from labpipe.imaging import open_image
from labpipe.imaging.memory import MemoryBudget, worker_budget_bytes
from labpipe.logs import get_logger
from labpipe.queries.calls import load_calls
from labpipe.queries.rule import Outcome, SpecimenCall, resolve
from labpipe.record import RecordResult, ensure_sample, record_analysis

__all__ = [
    "Pipeline",
    "StagedImage",
    "StagedSpecimen",
    "active_detector_for",
    "build_detector",
    "image_result",
    "stage_directory",
]

log = get_logger(__name__)


def build_detector(settings: Settings, kind: str | None = None) -> Detector:
    """The detector named by ``kind`` (default ``[detector] kind``), with ``[detector]``'s settings:
    the one place a detector is built from configuration."""
    cfg = settings.detector
    kind = cfg.kind if kind is None else kind
    if kind == "classical":
        from labpipe.detect.classical import ClassicalDetector

        return ClassicalDetector.from_config(cfg)
    if Path(kind).expanduser().is_dir():
        from labpipe.detect.detr import DetrDetector

        return DetrDetector(
            Path(kind).expanduser(),
            score_threshold=cfg.score_threshold,
            tile_size=cfg.tile_size,
            tile_overlap=cfg.tile_overlap,
            batch_size=cfg.batch_size,
            device=cfg.device,
        )
    raise ConfigError(
        "[detector] kind",
        f"unknown detector {kind!r}: neither 'classical' nor a model directory",
        "use 'classical' or the path of a DETR model directory (see `labpipe train detector`)",
    )


def active_detector_for(settings: Settings, override: str | None = None) -> Detector:
    """The detector a command uses: ``override``, else the registry's default, else ``[detector] kind``
    (see :mod:`labpipe.active_models`)."""
    from labpipe.active_models import active_detector
    from labpipe.db.database import open_database

    if override:
        return build_detector(settings, override)
    factory = open_database(settings.database_url)
    try:
        with factory() as session:
            spec = active_detector(session, settings).spec
    finally:
        factory.kw["bind"].dispose()
    return build_detector(settings, spec)


def image_result(
    image: Image, analysis: ImageAnalysis | None, specimens: list[Specimen], calls: Mapping[int, SpecimenCall]
) -> dict[str, Any]:
    """The JSON-ready record of one processed image (the shape of ``labpipe process --json``).

    ``calls`` holds each specimen's current call (:func:`labpipe.queries.calls.load_calls`): the
    counts per family follow the rule the counts use (a person's verification wins).
    """
    rows = []
    counts: Counter[str] = Counter()
    for specimen in specimens:
        call = calls.get(specimen.id) or SpecimenCall(specimen.id, image.sample_id)
        outcome = resolve(call)
        if outcome.outcome is Outcome.ACCEPTED and outcome.family:
            counts[outcome.family] += 1
        elif outcome.outcome is not Outcome.EXCLUDED:
            counts["rejected"] += 1
        classified = call.classified
        rows.append(
            {
                "id": specimen.id,
                "index": specimen.index_in_image,
                "bbox": [specimen.x, specimen.y, specimen.w, specimen.h],
                "score": round(specimen.score, 4),
                "crop_path": specimen.crop_path,
                "length_mm": specimen.length_mm,
                "family": call.family,
                "probability": round(call.probability, 4) if call.probability is not None else None,
                "rejected": call.rejected,
                "reason": call.reason if classified else "not classified",
                "top3": [[f, round(p, 4)] for f, p in call.top_k[:3]],
                "model_version": call.model_version,
                "verification": call.verification,
                "detection_state": specimen.detection_state,
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


# --------------------------------------------------------------------------------------------------
# Task-sized stages for the daemon: detect (read, detect, crop) -> classify (in batches) -> record.
# Between stages the detections and crops wait on the shared storage, in a stage directory below the
# crops folder; only ids travel through the broker.

STAGE_DIR_PREFIX = ".stage-"
_MANIFEST = "manifest.json"


def stage_directory(crops_dir: Path, image_id: int, attempt: str) -> Path:
    """``<crops>/.stage-<image id>-<attempt>``: one attempt's detections, crops and batch results."""
    return crops_dir / f"{STAGE_DIR_PREFIX}{image_id:06d}-{attempt}"


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    tmp.write_text(json.dumps(data), encoding="utf-8")
    os.replace(tmp, path)


@dataclass
class StagedSpecimen:
    """One detection of a staged image; its square crop is ``<stage dir>/<index:06d>.png``."""

    index_in_image: int
    bbox: tuple[int, int, int, int]
    score: float
    crop_size: int
    length_mm: float | None
    width_mm: float | None


@dataclass
class StagedImage:
    """What the detect stage found in one image, kept on shared storage for the classify stage."""

    directory: Path
    image_id: int
    attempt: str
    path: str
    content_hash: str
    size_bytes: int
    format: str
    width: int
    height: int
    source_channels: int
    bit_depth: int
    um_per_px: float | None
    detector_version: str
    per_batch: int
    """Specimens per classification task, fixed at staging so every worker splits alike."""
    classifier_spec: str = ""
    """The classifier chosen when the image was detected: every batch of it uses that one."""
    specimens: list[StagedSpecimen] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=dict)

    def crop_file(self, index_in_image: int) -> Path:
        return self.directory / crop_file_name(index_in_image)

    def results_file(self, batch: int) -> Path:
        return self.directory / f"classified-{batch:05d}.json"

    @property
    def n_batches(self) -> int:
        return -(-len(self.specimens) // self.per_batch)

    def batch(self, batch: int) -> list[StagedSpecimen]:
        if not 0 <= batch < self.n_batches:
            raise ValueError(f"batch must be in [0, {self.n_batches}), given {batch}")
        return self.specimens[batch * self.per_batch : (batch + 1) * self.per_batch]

    def save(self) -> None:
        """Write the manifest (last, atomically: a stage directory without one is incomplete)."""
        data = asdict(self)
        data["directory"] = str(self.directory)
        _write_json_atomic(self.directory / _MANIFEST, data)

    @classmethod
    def load(cls, directory: Path) -> StagedImage | None:
        """The staged image in ``directory``; ``None`` when it is gone or was never completed."""
        try:
            data = json.loads((directory / _MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        data["directory"] = directory
        data["specimens"] = [
            StagedSpecimen(**{**s, "bbox": tuple(s["bbox"])}) for s in data.get("specimens", [])
        ]
        return cls(**data)

    def load_results(self) -> list[Classification] | None:
        """Every specimen's classification once all batches are done, else ``None``."""
        results: list[Classification] = []
        for batch in range(self.n_batches):
            try:
                rows = json.loads(self.results_file(batch).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return None
            results.extend(_classification_from_json(row) for row in rows)
        return results


def _classification_to_json(c: Classification) -> dict[str, Any]:
    return {
        "family": c.family,
        "probability": c.probability,
        "rejected": c.rejected,
        "reason": c.reason,
        "top": [[f, p] for f, p in c.top],
        "model_version": c.model_version,
    }


def _classification_from_json(d: dict[str, Any]) -> Classification:
    return Classification(
        family=d["family"],
        probability=float(d["probability"]),
        rejected=bool(d["rejected"]),
        reason=d["reason"],
        top=[(str(f), float(p)) for f, p in d["top"]],
        model_version=d.get("model_version", ""),
    )


class Pipeline:
    """Holds the loaded models and the database; processes one file at a time."""

    def __init__(
        self,
        settings: Settings,
        detector: Detector,
        classifier: FamilyClassifier,
        session_factory: sessionmaker[Session],
        *,
        classifier_spec: str = "",
        detector_spec: str = "",
        pinned: bool = True,
    ) -> None:
        self.settings = settings
        self.detector = detector
        self.classifier = classifier
        self.session_factory = session_factory
        self.crops_dir = settings.storage.crops_dir
        self.classifier_spec = classifier_spec
        """The spec ``classifier`` was loaded from (what a staged image asks the classify job for)."""
        self.detector_spec = detector_spec
        self.pinned = pinned
        """Models given explicitly (a command-line override): the registry default is not followed."""
        self._classifiers: dict[str, FamilyClassifier] = (
            {classifier_spec: classifier} if classifier_spec else {}
        )
        self.last_record: RecordResult | None = None
        """What the last :meth:`record_staged` did (for the inline runner's report)."""
        self.last_record_stages: dict[str, float] | None = None

    @classmethod
    def from_settings(
        cls, settings: Settings, *, classifier: str | None = None, detector: str | None = None
    ) -> Pipeline:
        """The pipeline with the active models (:mod:`labpipe.active_models`): the registry's
        defaults, else the configuration's. ``classifier``/``detector``: explicit overrides, which
        pin the pipeline to them (a running pipeline otherwise follows default changes)."""
        from labpipe.active_models import active_classifier, active_detector
        from labpipe.classify.loader import configured_classifier
        from labpipe.db.database import open_database

        factory = open_database(settings.database_url)
        with factory() as session:
            clf = active_classifier(session, settings, classifier)
            det = active_detector(session, settings, detector)
        for active, configured in ((clf, settings.classifier.model), (det, settings.detector.kind)):
            if active.source == "registry default" and active.spec != configured:
                log.info(
                    "using the registry's default model, not the configured one",
                    kind=active.kind,
                    version=active.version,
                    configured=configured,
                )
        return cls(
            settings,
            build_detector(settings, det.spec),
            configured_classifier(settings, model=clf.spec),
            factory,
            classifier_spec=clf.spec,
            detector_spec=det.spec,
            pinned=bool(classifier or detector),
        )

    def use_classifier(self, spec: str) -> FamilyClassifier:
        """Switch to the classifier ``spec`` (loaded once, then kept for later switches)."""
        if spec and spec != self.classifier_spec:
            from labpipe.classify.loader import configured_classifier

            if spec not in self._classifiers:
                self._classifiers[spec] = configured_classifier(self.settings, model=spec)
            self.classifier, self.classifier_spec = self._classifiers[spec], spec
            log.info("classifier switched", spec=spec, version=self.classifier.version)
        return self.classifier

    def follow_defaults(self, session: Session) -> None:
        """Load the registry's current default models if they changed (not when pinned)."""
        if self.pinned:
            return
        from labpipe.active_models import active_classifier, active_detector

        self.use_classifier(active_classifier(session, self.settings).spec)
        det = active_detector(session, self.settings)
        if det.spec != self.detector_spec:
            self.detector, self.detector_spec = build_detector(self.settings, det.spec), det.spec
            log.info("detector switched", spec=det.spec, version=self.detector.version)

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        bind = self.session_factory.kw.get("bind")
        if bind is not None:
            bind.dispose()

    def register(self, session: Session, path: Path, content_hash: str, sample_id: str | None) -> Image:
        """The image row for these bytes (one per content hash), marked ``queued`` for the detect job.

        An image already stored under these bytes keeps its row, its id and its specimens (the
        record step reconciles them with the new run); ``path`` becomes where it is read from."""
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
            image.source_path = str(path)  # where the bytes are read now; archived_path stays
        if sample_id:
            image.sample_id = sample_id
        image.status = ImageStatus.QUEUED.value
        image.error = None
        session.commit()
        return image

    # ----------------------------------------------------------------------------------------------
    # The same work as process_file, split into task-sized stages (used by the daemon's workers).

    def stage_detections(self, image: Image, attempt: str, per_batch: int) -> StagedImage:
        """Read, detect and crop ``image`` into its stage directory (crops as lossless PNG).

        The same steps and parameters as :func:`labpipe.analysis.analyse_image`, without the
        classification: the classify stage reads the crops back bit for bit. Raises
        :class:`ImageReadError` for unreadable input (the caller quarantines the file), an image this
        worker could not hold within ``[imaging] memory_budget_mb`` included (estimated from its
        header and this process's own resident memory, before anything is decoded).
        """
        cfg = self.settings
        path = Path(image.source_path)
        bound = log.bind(image=str(path), image_id=image.id)
        if not path.is_file():
            raise ImageReadError(path, "file not found", "it was moved or deleted before it was processed")
        size = path.stat().st_size
        if size != image.size_bytes:
            raise ImageReadError(
                path,
                f"the file changed after it was registered ({image.size_bytes} -> {size} bytes)",
                "never edit files in the inbox; drop the new version as a new file",
            )
        directory = stage_directory(self.crops_dir, image.id, attempt)
        directory.mkdir(parents=True, exist_ok=True)
        stages: dict[str, float] = {"hash": 0.0}
        t0 = time.perf_counter()
        try:
            with open_image(
                path,
                um_per_px_fallback=cfg.um_per_px_fallback,
                max_pixels=cfg.imaging.max_pixels,
                max_decoded_pixels=cfg.imaging.max_decoded_pixels,
                tile_cache_mb=cfg.imaging.tile_cache_mb,
                memory_budget=MemoryBudget.for_settings(cfg, this_process=True),
            ) as plate:
                stages["read"] = time.perf_counter() - t0
                if plate.memory_checked is not None:
                    bound.info(
                        "memory estimate within budget",
                        estimate_mb=round(plate.memory_checked.peak_bytes / 2**20),
                        budget_mb=round(worker_budget_bytes(cfg) / 2**20),
                    )
                boxes, _ = timed_detection(self.detector, plate, cfg.imaging.overview_max_side, stages)
                bound.info("detected", specimens=len(boxes), detector=self.detector.version)

                t0 = time.perf_counter()
                staged = StagedImage(
                    directory=directory,
                    image_id=image.id,
                    attempt=attempt,
                    path=str(path),
                    content_hash=image.content_hash,
                    size_bytes=size,
                    format=plate.format,
                    width=plate.width,
                    height=plate.height,
                    source_channels=plate.source_channels,
                    bit_depth=plate.bit_depth,
                    um_per_px=plate.um_per_px,
                    detector_version=self.detector.version,
                    per_batch=max(1, per_batch),
                    classifier_spec=self.classifier_spec,
                )
                with CropWriter() as writer:
                    for crop in cut_crops(plate, boxes, cfg.crops.margin, directory, writer):
                        staged.specimens.append(
                            StagedSpecimen(
                                index_in_image=crop.index_in_image,
                                bbox=crop.bbox,
                                score=crop.score,
                                crop_size=int(crop.square.shape[0]),
                                length_mm=crop.length_mm,
                                width_mm=crop.width_mm,
                            )
                        )
                stages["crop"] = time.perf_counter() - t0
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        staged.stage_seconds = stages
        staged.save()
        return staged

    def classify_staged(self, staged: StagedImage, batch: int) -> list[Classification]:
        """Classify one batch of a staged image's crops and store the results beside them.

        Idempotent: a batch whose results are already stored is not classified again. Crops are
        read ``classifier.batch_size`` at a time, so memory stays as in :meth:`process_file`.
        """
        self.use_classifier(staged.classifier_spec)
        target = staged.results_file(batch)
        if target.is_file():
            try:
                return [_classification_from_json(r) for r in json.loads(target.read_text(encoding="utf-8"))]
            except ValueError:
                pass
        t0 = time.perf_counter()
        results: list[Classification] = []
        members = staged.batch(batch)
        step = max(1, self.settings.classifier.batch_size)
        for start in range(0, len(members), step):
            crops = [read_crop(staged.crop_file(s.index_in_image)) for s in members[start : start + step]]
            results.extend(self.classifier.classify(crops))
        seconds = time.perf_counter() - t0
        _write_json_atomic(target, [_classification_to_json(r) for r in results])
        _write_json_atomic(staged.directory / f"seconds-{batch:05d}.json", seconds)
        return results

    def record_staged(
        self,
        session: Session,
        image: Image,
        staged: StagedImage,
        results: list[Classification],
        *,
        drop_human_work: bool = False,
        actor: str = "labpipe daemon",
    ) -> RecordResult:
        """Record a fully classified staged image in one transaction (see :func:`record_analysis`).

        Consumes the stage directory: its crops move to their final paths and the rest is removed,
        whether the commit succeeds or not.
        """
        if len(results) != len(staged.specimens):
            raise ValueError(f"{len(staged.specimens)} staged specimens but {len(results)} results")
        self.use_classifier(staged.classifier_spec)
        stray = {r.model_version for r in results} - {self.classifier.version, ""}
        if stray:
            raise ConfigError(
                "[classifier] model",
                f"image {image.id} was classified by {sorted(stray)}, this worker records "
                f"{self.classifier.version}",
                "give every worker the same classifier model",
            )
        stages = dict(staged.stage_seconds)
        stages["classify"] = 0.0
        for seconds_file in staged.directory.glob("seconds-*.json"):
            with contextlib.suppress(OSError, ValueError):
                stages["classify"] += float(json.loads(seconds_file.read_text()))
        analysis = ImageAnalysis(
            path=Path(staged.path),
            content_hash=staged.content_hash,
            size_bytes=staged.size_bytes,
            format=staged.format,
            width=staged.width,
            height=staged.height,
            source_channels=staged.source_channels,
            bit_depth=staged.bit_depth,
            um_per_px=staged.um_per_px,
            detector_version=staged.detector_version,
            classifier_version=self.classifier.version,
            specimens=[
                SpecimenAnalysis(
                    index_in_image=s.index_in_image,
                    bbox=s.bbox,
                    score=s.score,
                    crop_size=s.crop_size,
                    staged_crop=staged.crop_file(s.index_in_image),
                    classification=result,
                    length_mm=s.length_mm,
                    width_mm=s.width_mm,
                )
                for s, result in zip(staged.specimens, results, strict=True)
            ],
            staging_dir=staged.directory,
            stage_seconds=stages,
        )
        t0 = time.perf_counter()
        record = record_analysis(
            session,
            image,
            analysis,
            self.classifier,
            self.crops_dir,
            detector=self.detector,
            drop_human_work=drop_human_work,
            actor=actor,
        )
        stages["database"] = time.perf_counter() - t0
        self.last_record, self.last_record_stages = record, stages
        return record

    def process_file(
        self,
        path: Path,
        sample_id: str | None = None,
        *,
        drop_human_work: bool = False,
        actor: str = "labpipe process",
    ) -> dict[str, Any]:
        """Process ``path`` through the daemon's own staged jobs, inline; returns the JSON-ready result.

        The same detect, classify and record jobs as the workers (:mod:`labpipe.daemon.jobs`), with
        their claim, failure handling and quarantine: one code path. A file outside the inbox is
        never moved. Re-processing an image reconciles the new detections with its stored
        specimens (see :mod:`labpipe.record`); ``drop_human_work`` drops, and reports, reviewed
        specimens the run did not find again (default: keep and flag them).

        Unreadable input raises :class:`ImageReadError` after the image row (if one could be made)
        is marked ``quarantined`` with the reason.
        """
        from labpipe.daemon.jobs import run_inline

        path = Path(path)
        if not path.is_file():
            raise ImageReadError(path, "no such file", "check the path")
        started = time.perf_counter()
        content_hash = file_sha256(path)
        hash_seconds = time.perf_counter() - started
        with self.session_factory() as session:
            image_id = self.register(session, path, content_hash, sample_id).id
        outcome = run_inline(self, image_id, drop_human_work=drop_human_work, actor=actor)
        with self.session_factory() as session:
            image = session.get(Image, image_id)
            assert image is not None
            if image.status != ImageStatus.DONE.value:
                raise ImageReadError(
                    path,
                    image.error or f"processing ended as {outcome}",
                    "see `labpipe status` and the logs; fix the file and process it again",
                )
            specimens = sorted(image.specimens, key=lambda s: s.index_in_image)
            calls = {c.specimen_id: c for c in load_calls(session, specimen_ids=[s.id for s in specimens])}
            result = image_result(image, None, specimens, calls)
        stages = {"hash": hash_seconds, **(self.last_record_stages or {})}
        result["stage_seconds"] = {k: round(v, 3) for k, v in stages.items()}
        result["seconds"] = round(time.perf_counter() - started, 3)
        if self.last_record is not None:
            result["reconciliation"] = self.last_record.summary()
        log.bind(image=str(path), image_id=image_id, sample=sample_id).info(
            "processed",
            specimens=len(result["specimens"]),
            rejected=result["counts"]["rejected"],
            seconds=result["seconds"],
        )
        return result

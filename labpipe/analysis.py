"""Analyse one plate image: read, detect, crop, classify. No database: the caller records the result.

This is the science half of the flow in DESIGN.md; :mod:`labpipe.pipeline` adds the database
half. Crops are written to a *staging* folder here and only moved to their final names inside
the transaction that records them (see :mod:`labpipe.record`).
"""

from __future__ import annotations

import hashlib
import itertools
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from labpipe.classify.base import Classification, FamilyClassifier
from labpipe.crops import CropWriter, margin_box, pad_to_square
from labpipe.detect.base import Detection, Detector
from labpipe.imaging import PlateImage, open_image
from labpipe.imaging.memory import MemoryBudget
from labpipe.logs import get_logger

__all__ = [
    "CutCrop",
    "ImageAnalysis",
    "SpecimenAnalysis",
    "analyse_image",
    "boxes_to_full_resolution",
    "crop_file_name",
    "cut_crops",
    "cut_square",
    "detect_specimens",
    "file_sha256",
    "timed_detection",
]

log = get_logger(__name__)


@dataclass
class SpecimenAnalysis:
    """One detected specimen before it has a database id."""

    index_in_image: int
    """1-based, in reading order (top to bottom, then left to right)."""
    bbox: tuple[int, int, int, int]
    """x, y, w, h in full-resolution pixels."""
    score: float
    crop_size: int
    staged_crop: Path
    classification: Classification
    length_mm: float | None
    width_mm: float | None


@dataclass
class ImageAnalysis:
    path: Path
    content_hash: str
    size_bytes: int
    format: str
    width: int
    height: int
    source_channels: int
    bit_depth: int
    um_per_px: float | None
    detector_version: str
    classifier_version: str
    specimens: list[SpecimenAnalysis]
    staging_dir: Path
    stage_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return sum(self.stage_seconds.values())

    def discard(self) -> None:
        """Remove staged crops (after a failure, or once they have been moved)."""
        shutil.rmtree(self.staging_dir, ignore_errors=True)


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    """SHA-256 of a file's bytes, read in 4 MiB chunks (the image's identity)."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def boxes_to_full_resolution(
    detections: list[Detection], factor: float, width: int, height: int
) -> list[tuple[tuple[int, int, int, int], float]]:
    """Scale overview boxes by ``factor``, round outwards to whole pixels, clip to the image,
    and sort them in reading order (top to bottom, then left to right).

    >>> boxes_to_full_resolution([Detection(1.2, 1.0, 2.0, 2.5, 0.9)], 2.0, 5, 100)
    [((2, 2, 3, 5), 0.9)]
    """
    out: list[tuple[tuple[int, int, int, int], float]] = []
    for det in detections:
        x0 = max(0, int(np.floor(det.x * factor)))
        y0 = max(0, int(np.floor(det.y * factor)))
        x1 = min(width, int(np.ceil((det.x + det.w) * factor)))
        y1 = min(height, int(np.ceil((det.y + det.h) * factor)))
        if x1 > x0 and y1 > y0:
            out.append(((x0, y0, x1 - x0, y1 - y0), float(det.score)))
    out.sort(key=lambda item: (item[0][1], item[0][0]))
    return out


def detect_specimens(
    detector: Detector, plate: PlateImage, overview_max_side: int
) -> tuple[list[tuple[tuple[int, int, int, int], float]], float]:
    """Detect on ``plate``; full-resolution boxes in reading order, and the reduction factor used.

    A detector with a ``detect_plate(plate, overview_max_side)`` method (a tiled learned detector,
    which reads the plate at its own working scale) is given the plate and returns boxes in
    full-resolution pixels (factor 1). Any other detector is given the overview (longer side at
    most ``overview_max_side``) and its scale, and its boxes are scaled up by the overview's factor.
    """
    detect_plate = getattr(detector, "detect_plate", None)
    if callable(detect_plate):
        detections, factor = detect_plate(plate, overview_max_side), 1.0
    else:
        overview, factor = plate.overview(overview_max_side)
        overview_scale = plate.um_per_px * factor if plate.um_per_px else None
        detections = detector.detect(overview, overview_scale)
        del overview
    return boxes_to_full_resolution(detections, factor, plate.width, plate.height), factor


def timed_detection(
    detector: Detector, plate: PlateImage, overview_max_side: int, stages: dict[str, float]
) -> tuple[list[tuple[tuple[int, int, int, int], float]], float]:
    """:func:`detect_specimens`, with the time spent reading pixels (``overview``: the overview, or
    a learned detector's own reading at its working scale) apart from the detection itself."""
    t0 = time.perf_counter()
    before = plate.read_seconds["overview"] + plate.read_seconds["regions"]
    found = detect_specimens(detector, plate, overview_max_side)
    reading = plate.read_seconds["overview"] + plate.read_seconds["regions"] - before
    stages["overview"] = reading
    stages["detect"] = max(0.0, time.perf_counter() - t0 - reading)
    return found


def analyse_image(
    path: Path,
    *,
    detector: Detector,
    classifier: FamilyClassifier,
    staging_root: Path,
    overview_max_side: int = 4096,
    margin: float = 0.4,
    batch_size: int = 16,
    um_per_px_fallback: float | None = None,
    max_pixels: int = 4_000_000_000,
    max_decoded_pixels: int = 600_000_000,
    content_hash: str | None = None,
    tile_cache_mb: float = 0.0,
    memory_budget: MemoryBudget | None = None,
) -> ImageAnalysis:
    """Run read -> detect (on the overview, or the detector's own tiles) -> crop (full resolution,
    margin, pad) -> classify.

    Crops are saved losslessly under ``staging_root/<random>/``; the caller moves them to their
    final paths when it records the result, or calls :meth:`ImageAnalysis.discard`.
    Raises :class:`labpipe.errors.ImageReadError` for unreadable input, and
    :class:`labpipe.errors.ImageTooLargeError` for an image over ``memory_budget`` (none: no check).
    """
    stages: dict[str, float] = {}
    bound = log.bind(image=str(path))
    t0 = time.perf_counter()
    digest = content_hash or file_sha256(path)
    stages["hash"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    with open_image(
        path,
        um_per_px_fallback=um_per_px_fallback,
        max_pixels=max_pixels,
        max_decoded_pixels=max_decoded_pixels,
        tile_cache_mb=tile_cache_mb,
        memory_budget=memory_budget,
    ) as plate:
        stages["read"] = time.perf_counter() - t0
        boxes, factor = timed_detection(detector, plate, overview_max_side, stages)
        bound.info("detected", specimens=len(boxes), factor=round(factor, 3), detector=detector.version)

        staging_dir = staging_root / f".staging-{uuid.uuid4().hex}"
        staging_dir.mkdir(parents=True, exist_ok=False)
        try:
            specimens = _crop_and_classify(
                plate, boxes, classifier, staging_dir, margin, batch_size, stages, bound
            )
        except BaseException:
            shutil.rmtree(staging_dir, ignore_errors=True)
            raise
        analysis = ImageAnalysis(
            path=path,
            content_hash=digest,
            size_bytes=path.stat().st_size,
            format=plate.format,
            width=plate.width,
            height=plate.height,
            source_channels=plate.source_channels,
            bit_depth=plate.bit_depth,
            um_per_px=plate.um_per_px,
            detector_version=detector.version,
            classifier_version=classifier.version,
            specimens=specimens,
            staging_dir=staging_dir,
            stage_seconds=stages,
        )
    return analysis


def crop_file_name(index_in_image: int) -> str:
    """The staged crop file of the ``index_in_image``-th specimen (``000001.png``, ...)."""
    return f"{index_in_image:06d}.png"


@dataclass
class CutCrop:
    """A specimen's crop: cut from full resolution, padded to a square, queued to be written."""

    index_in_image: int
    bbox: tuple[int, int, int, int]
    score: float
    square: np.ndarray
    path: Path
    length_mm: float | None
    width_mm: float | None


def cut_square(plate: PlateImage, box: tuple[int, int, int, int], margin: float) -> np.ndarray:
    """One box (+ ``margin`` x its larger side, clipped) cut from full resolution and padded to a
    square: the crop of a specimen, as the pipeline cuts it and as a box edit cuts it again."""
    x, y, w, h = box
    x0, y0, x1, y1 = margin_box(x, y, w, h, margin, plate.width, plate.height)
    return pad_to_square(plate.read_region(x0, y0, x1 - x0, y1 - y0))


def cut_crops(
    plate: PlateImage,
    boxes: list[tuple[tuple[int, int, int, int], float]],
    margin: float,
    directory: Path,
    writer: CropWriter,
) -> Iterator[CutCrop]:
    """Cut each box (+ ``margin`` x its larger side, clipped) from full resolution, pad it to a square
    and queue it to be written as ``directory/<index>.png``; yields the crops in box order.

    The one crop path of both the synchronous pipeline and the daemon's workers. The caller waits
    for ``writer`` before it records anything.
    """
    scale_mm = plate.um_per_px / 1000.0 if plate.um_per_px else None
    for index, ((x, y, w, h), score) in enumerate(boxes, start=1):
        square = cut_square(plate, (x, y, w, h), margin)
        path = directory / crop_file_name(index)
        writer.submit(square, path)
        yield CutCrop(
            index_in_image=index,
            bbox=(x, y, w, h),
            score=score,
            square=square,
            path=path,
            length_mm=max(w, h) * scale_mm if scale_mm else None,
            width_mm=min(w, h) * scale_mm if scale_mm else None,
        )


def _crop_and_classify(
    plate: PlateImage,
    boxes: list[tuple[tuple[int, int, int, int], float]],
    classifier: FamilyClassifier,
    staging_dir: Path,
    margin: float,
    batch_size: int,
    stages: dict[str, float],
    bound,
) -> list[SpecimenAnalysis]:
    """Crop and classify in batches, so at most ``batch_size`` full-resolution crops (plus those the
    writer still holds) are in memory. Crops are written on background threads meanwhile."""
    stages.setdefault("crop", 0.0)
    stages.setdefault("classify", 0.0)
    specimens: list[SpecimenAnalysis] = []
    with CropWriter() as writer:
        crops = cut_crops(plate, boxes, margin, staging_dir, writer)
        while True:
            t0 = time.perf_counter()
            batch = list(itertools.islice(crops, max(1, batch_size)))
            stages["crop"] += time.perf_counter() - t0
            if not batch:
                break
            t0 = time.perf_counter()
            results = classifier.classify([c.square for c in batch])
            stages["classify"] += time.perf_counter() - t0
            for crop, result in zip(batch, results, strict=True):
                specimens.append(
                    SpecimenAnalysis(
                        index_in_image=crop.index_in_image,
                        bbox=crop.bbox,
                        score=crop.score,
                        crop_size=int(crop.square.shape[0]),
                        staged_crop=crop.path,
                        classification=result,
                        length_mm=crop.length_mm,
                        width_mm=crop.width_mm,
                    )
                )
                bound.debug(
                    "classified",
                    specimen=crop.index_in_image,
                    family=result.family,
                    probability=round(result.probability, 3),
                    rejected=result.rejected,
                )
        t0 = time.perf_counter()
        writer.wait()
        stages["crop"] += time.perf_counter() - t0
    return specimens

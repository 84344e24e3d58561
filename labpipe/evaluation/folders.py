"""Evaluate the detector and classifier on folders of real images with simple labels.

- Counting: every image in a folder holds a known number of specimens (a well with one insect,
  an empty well). Reports the share of images where the detector finds exactly that number.
- Family: every crop in a folder belongs to one family. Reports the share whose top family is
  right, and the share accepted as that family at the classifier's threshold.

The images go through the production path: the reader, the overview, the detector, and for
crops the same pad-to-square as in :mod:`labpipe.analysis`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from labpipe.classify.base import FamilyClassifier
from labpipe.crops import pad_to_square
from labpipe.detect.base import Detector
from labpipe.imaging import open_image

__all__ = ["CountReport", "FamilyReport", "evaluate_counts", "evaluate_family", "image_files"]

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff"}


def image_files(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a folder of images")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


@dataclass
class CountReport:
    folder: str
    expected: int
    counts: dict[str, int] = field(default_factory=dict)
    """file name -> number of detections."""

    @property
    def n_images(self) -> int:
        return len(self.counts)

    @property
    def share_exact(self) -> float:
        hits = sum(1 for n in self.counts.values() if n == self.expected)
        return hits / self.n_images if self.n_images else float("nan")

    @property
    def histogram(self) -> dict[int, int]:
        return dict(sorted(Counter(self.counts.values()).items()))

    @property
    def failures(self) -> dict[str, int]:
        return {name: n for name, n in self.counts.items() if n != self.expected}

    def as_dict(self) -> dict:
        return {
            "folder": self.folder,
            "expected": self.expected,
            "images": self.n_images,
            "share_exact": round(self.share_exact, 4),
            "histogram": self.histogram,
            "failures": self.failures,
        }


def evaluate_counts(
    folder: Path,
    expected: int,
    detector: Detector,
    overview_max_side: int = 4096,
    progress: bool = True,
    *,
    um_per_px_fallback: float | None = None,
) -> CountReport:
    """Detect on every image in ``folder``; images without a scale are read at ``um_per_px_fallback``."""
    from labpipe.analysis import detect_specimens

    report = CountReport(str(folder), expected)
    for path in tqdm(image_files(folder), desc=f"detect {folder.name}", disable=not progress, unit="img"):
        with open_image(path, um_per_px_fallback=um_per_px_fallback) as plate:
            boxes, _ = detect_specimens(detector, plate, overview_max_side)
            report.counts[path.name] = len(boxes)
    return report


@dataclass
class FamilyReport:
    folder: str
    family: str
    threshold: float
    top: dict[str, str | None] = field(default_factory=dict)
    """file name -> top family."""
    accepted: dict[str, bool] = field(default_factory=dict)
    """file name -> accepted (not rejected) as its top family."""
    reasons: Counter[str] = field(default_factory=Counter)

    @property
    def n_images(self) -> int:
        return len(self.top)

    @property
    def share_top(self) -> float:
        return sum(1 for f in self.top.values() if f == self.family) / self.n_images

    @property
    def share_accepted(self) -> float:
        hits = sum(1 for n, f in self.top.items() if f == self.family and self.accepted[n])
        return hits / self.n_images

    @property
    def share_rejected(self) -> float:
        return sum(1 for a in self.accepted.values() if not a) / self.n_images

    def as_dict(self) -> dict:
        return {
            "folder": self.folder,
            "family": self.family,
            "threshold": self.threshold,
            "images": self.n_images,
            "share_top_family": round(self.share_top, 4),
            "share_accepted_as_family": round(self.share_accepted, 4),
            "share_rejected": round(self.share_rejected, 4),
            "top_families": dict(Counter(str(f) for f in self.top.values()).most_common()),
            "reject_reasons": dict(self.reasons.most_common()),
        }


def _chunks(items: list[Path], size: int) -> Iterable[list[Path]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def evaluate_family(
    folder: Path, family: str, classifier: FamilyClassifier, threshold: float, progress: bool = True
) -> FamilyReport:
    """Classify every crop in ``folder`` (padded to a square first, as in production)."""
    report = FamilyReport(str(folder), family, threshold)
    files = image_files(folder)
    with tqdm(total=len(files), desc=f"classify {folder.name}", disable=not progress, unit="crop") as bar:
        for chunk in _chunks(files, 32):
            crops = []
            for path in chunk:
                with open_image(path) as image:
                    crops.append(pad_to_square(image.read_region(0, 0, image.width, image.height)))
            for path, result in zip(chunk, classifier.classify(crops), strict=True):
                report.top[path.name] = result.family
                report.accepted[path.name] = not result.rejected
                if result.rejected and result.reason:
                    report.reasons[result.reason.split(":")[0]] += 1
            bar.update(len(chunk))
    return report

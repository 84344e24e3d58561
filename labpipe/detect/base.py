"""What every detector returns, and the interface it implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    from labpipe.imaging import PlateImage

__all__ = ["Detection", "Detector", "PlateDetector"]


@dataclass(frozen=True)
class Detection:
    """An axis-aligned box ``[x, y, w, h]`` in the pixel frame of the array it was found in."""

    x: float
    y: float
    w: float
    h: float
    score: float

    def scaled(self, factor: float) -> Detection:
        """The same box in a frame ``factor`` times larger (overview -> full resolution)."""
        return Detection(self.x * factor, self.y * factor, self.w * factor, self.h * factor, self.score)

    def as_xywh(self) -> list[float]:
        return [self.x, self.y, self.w, self.h]


class Detector(Protocol):
    """Turns an RGB ``uint8`` array (H x W x 3) into boxes with scores."""

    version: str
    """Names the detector and its settings or weights, stored with every specimen."""

    def detect(self, rgb: np.ndarray, um_per_px: float | None) -> list[Detection]:
        """Find specimens. ``um_per_px`` is the scale *of this array* (None when unknown)."""
        ...


class PlateDetector(Detector, Protocol):
    """A detector that reads the plate itself (optional; see :func:`labpipe.analysis.detect_specimens`).

    Tiled learned detectors need pixels at their own working scale, which the fixed-size overview
    may not give; when a detector has this method it is called instead of :meth:`Detector.detect`.
    """

    def detect_plate(self, plate: PlateImage, overview_max_side: int) -> list[Detection]:
        """Find specimens on ``plate``; boxes in *full-resolution* pixels. ``overview_max_side`` is
        the configured overview size, for detectors that fall back to the overview (unknown scale)."""
        ...

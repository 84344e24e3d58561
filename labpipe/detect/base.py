"""What every detector returns, and the interface it implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

__all__ = ["Detection", "Detector"]


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

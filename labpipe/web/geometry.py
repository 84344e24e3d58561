"""Where the review pages draw on pictures: the specimen's box on its crop, and scale bars.

Pure functions (no database, no files). A crop is cut as :func:`labpipe.analysis.cut_crops` cuts it:
the box plus ``margin`` x its larger side on every edge, clipped to the plate
(:func:`labpipe.crops.margin_box`), then padded to a centred square
(:func:`labpipe.crops.pad_to_square`), at full resolution: one crop pixel is one plate pixel. So
the box's place on the crop follows from the box, the plate's size, the margin and the crop's side;
when the side computed does not match the crop's stored side (the margin was changed since, or the
box was edited by hand after the crop was cut) the place is unknown and nothing is drawn.

The crop file itself is never changed (it is the training data): the outline and the scale bar are
drawn by the page, over the picture, in percentages of its side, so they fit any thumbnail size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from labpipe.crops import margin_box

__all__ = ["NICE_MM", "CropOutline", "ScaleBar", "crop_outline", "length_text", "scale_bar"]

NICE_MM = (0.1, 0.2, 0.25, 0.5, 1.0, 2.0, 2.5, 5.0, 10.0, 20.0, 25.0, 50.0, 100.0, 200.0)
"""Lengths a scale bar may show (mm): round numbers a reader takes in at a glance."""


@dataclass(frozen=True)
class CropOutline:
    """The specimen's box on its square crop, in percent of the crop's side."""

    left: float
    top: float
    width: float
    height: float

    @property
    def style(self) -> str:
        """CSS placing the outline over the picture (the picture's box is the reference)."""
        return f"left:{self.left}%;top:{self.top}%;width:{self.width}%;height:{self.height}%"


@dataclass(frozen=True)
class ScaleBar:
    """A scale bar: ``mm`` millimetres are ``px`` picture pixels, ``percent`` of the span given."""

    mm: float
    px: float
    percent: float

    @property
    def label(self) -> str:
        """``1 mm``, ``0.5 mm``, ``2.5 mm``, ``1 cm`` (from 10 mm).

        >>> ScaleBar(0.5, 50, 10).label, ScaleBar(20, 500, 10).label
        ('0.5 mm', '2 cm')
        """
        if self.mm >= 10:
            return f"{self.mm / 10:g} cm"
        return f"{self.mm:g} mm"


def crop_outline(
    box: tuple[int, int, int, int],
    crop_side: int | None,
    image_size: tuple[int | None, int | None],
    margin: float,
) -> CropOutline | None:
    """Where ``box`` (plate pixels ``x, y, w, h``) lies on its crop, or ``None`` when that cannot be
    known (no plate size, or the crop was not cut with this box and margin).

    >>> crop_outline((100, 100, 50, 20), 90, (1000, 1000), 0.4)
    CropOutline(left=22.222, top=38.889, width=55.556, height=22.222)
    >>> crop_outline((100, 100, 50, 20), 48, (1000, 1000), 0.4) is None
    True
    """
    width, height = image_size
    x, y, w, h = box
    if not crop_side or not width or not height or w <= 0 or h <= 0:
        return None
    try:
        x0, y0, x1, y1 = margin_box(x, y, w, h, margin, width, height)
    except ValueError:
        return None
    side = max(x1 - x0, y1 - y0)
    if side != crop_side:
        return None
    left = (side - (x1 - x0)) // 2 + (x - x0)
    top = (side - (y1 - y0)) // 2 + (y - y0)

    def pct(v: float) -> float:
        return round(100.0 * v / side, 3)

    return CropOutline(pct(left), pct(top), pct(w), pct(h))


def scale_bar(um_per_px: float | None, span_px: float | None, fraction: float = 0.25) -> ScaleBar | None:
    """A scale bar for a picture ``span_px`` plate pixels wide at ``um_per_px``: the longest of
    :data:`NICE_MM` not longer than ``fraction`` of the span (the shortest when even that is
    longer); ``None`` when the scale is unknown.

    >>> scale_bar(10.0, 3000)  # 30 mm wide: a quarter is 7.5 mm, so 5 mm
    ScaleBar(mm=5.0, px=500.0, percent=16.667)
    >>> scale_bar(None, 3000) is None
    True
    """
    if not um_per_px or not span_px or um_per_px <= 0 or span_px <= 0 or not math.isfinite(um_per_px):
        return None
    px_per_mm = 1000.0 / um_per_px
    span_mm = span_px / px_per_mm
    fitting = [mm for mm in NICE_MM if mm <= span_mm * fraction]
    mm = fitting[-1] if fitting else NICE_MM[0]
    px = mm * px_per_mm
    return ScaleBar(mm=mm, px=round(px, 1), percent=round(100.0 * px / span_px, 3))


def length_text(length_mm: float | None) -> str:
    """A body length as people write it: two significant decimals below 1 mm, one above.

    >>> length_text(3.04), length_text(0.456), length_text(None)
    ('3.0 mm', '0.46 mm', '')
    """
    if length_mm is None or not math.isfinite(length_mm):
        return ""
    return f"{length_mm:.2f} mm" if length_mm < 1 else f"{length_mm:.1f} mm"

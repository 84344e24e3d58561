"""Crop geometry and pad-to-square: pure functions on boxes and arrays.

References
----------
- Margin of 0.4 x the larger box side: the BIOSCAN-5M cropping model, which cut specimens with a
  margin around the detected box before classification.
- Padding with the mean colour of the crop's outermost pixels, never stretching: the Cyprus
  leaf-litter beetle study, which padded crops to a square so the network sees true proportions
  on a background that matches the specimen's own surroundings.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["border_mean_colour", "margin_box", "pad_to_square"]


def margin_box(
    x: float, y: float, w: float, h: float, margin: float, width: int, height: int
) -> tuple[int, int, int, int]:
    """Extend a box by ``margin`` x its larger side on every edge and clip it to the image.

    Parameters
    ----------
    x, y, w, h : box in image pixels.
    margin : fraction of ``max(w, h)`` added on each side (0.4 in BIOSCAN).
    width, height : image size used for clipping.

    Returns
    -------
    (x0, y0, x1, y1) : integer half-open pixel bounds, ``0 <= x0 < x1 <= width``.

    Examples
    --------
    >>> margin_box(10, 10, 10, 5, 0.5, 100, 100)
    (5, 5, 25, 20)
    """
    if margin < 0:
        raise ValueError(f"margin must be >= 0, given {margin}")
    if w <= 0 or h <= 0:
        raise ValueError(f"box must have a positive size, given w={w} h={h}")
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, given {width}x{height}")
    pad = margin * max(w, h)
    x0 = max(0, math.floor(x - pad))
    y0 = max(0, math.floor(y - pad))
    x1 = min(width, math.ceil(x + w + pad))
    y1 = min(height, math.ceil(y + h + pad))
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"box ({x}, {y}, {w}, {h}) lies outside the {width}x{height} image")
    return x0, y0, x1, y1


def border_mean_colour(crop: np.ndarray) -> np.ndarray:
    """Mean colour of the outermost one-pixel ring of ``crop`` (H x W x C or H x W).

    Each border pixel counts once, corners included. Returns a float array of length C
    (or a 0-d array for a single-channel crop).
    """
    if crop.ndim not in (2, 3) or crop.shape[0] == 0 or crop.shape[1] == 0:
        raise ValueError(f"crop must be a non-empty H x W [x C] array, given shape {crop.shape}")
    h, w = crop.shape[:2]
    if h <= 2 or w <= 2:
        # Every pixel is on the border.
        return crop.reshape(h * w, -1).astype(np.float64).mean(axis=0).squeeze()
    ring = np.concatenate(
        [
            crop[0, :].reshape(w, -1),
            crop[-1, :].reshape(w, -1),
            crop[1:-1, 0].reshape(h - 2, -1),
            crop[1:-1, -1].reshape(h - 2, -1),
        ]
    )
    return ring.astype(np.float64).mean(axis=0).squeeze()


def pad_to_square(crop: np.ndarray, colour: np.ndarray | None = None) -> np.ndarray:
    """Pad ``crop`` to a square with ``colour`` (default: its border mean), keeping it centred.

    The crop's pixels are copied unchanged (never resized or stretched); the shorter side is
    padded evenly, the odd pixel going to the bottom/right.

    Examples
    --------
    >>> pad_to_square(np.zeros((2, 4, 3), np.uint8)).shape
    (4, 4, 3)
    """
    if crop.ndim not in (2, 3) or crop.shape[0] == 0 or crop.shape[1] == 0:
        raise ValueError(f"crop must be a non-empty H x W [x C] array, given shape {crop.shape}")
    h, w = crop.shape[:2]
    side = max(h, w)
    if colour is None:
        colour = border_mean_colour(crop)
    fill = np.asarray(colour, dtype=np.float64)
    if np.issubdtype(crop.dtype, np.integer):
        info = np.iinfo(crop.dtype)
        fill = np.clip(np.rint(fill), info.min, info.max)
    out = np.empty((side, side, *crop.shape[2:]), dtype=crop.dtype)
    out[...] = fill.astype(crop.dtype)
    top = (side - h) // 2
    left = (side - w) // 2
    out[top : top + h, left : left + w] = crop
    return out

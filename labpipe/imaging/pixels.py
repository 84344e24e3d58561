"""Pure pixel arithmetic for the reader: regions, tile grids, area averaging, intensity windows.

Every function takes numbers or arrays and returns numbers or arrays; none touches a file. They are
small enough to be checked on arrays whose right answer can be worked out by hand.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from scipy import sparse

__all__ = [
    "DEFAULT_PERCENTILES",
    "apply_orientation",
    "apply_window",
    "area_downsample",
    "area_weights",
    "clip_region",
    "overview_geometry",
    "percentile_window",
    "region_segments",
    "to_rgb8",
]

DEFAULT_PERCENTILES: tuple[float, float] = (0.1, 99.9)
"""Low and high percentiles that set the 16-to-8-bit window (robust to hot pixels and dust)."""


def clip_region(x: int, y: int, w: int, h: int, width: int, height: int) -> tuple[int, int, int, int]:
    """Clip the rectangle ``(x, y, w, h)`` to a ``width`` x ``height`` image.

    Returns the clipped ``(x, y, w, h)``. Raises ``ValueError`` naming every value when the size is
    not positive or the rectangle does not overlap the image.

    Examples
    --------
    >>> clip_region(-5, 8, 20, 10, 10, 12)
    (0, 8, 10, 4)
    """
    if w <= 0 or h <= 0:
        raise ValueError(f"region size must be positive, got w={w}, h={h} (x={x}, y={y})")
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + w, width), min(y + h, height)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(
            f"region x={x}, y={y}, w={w}, h={h} lies outside the {width} x {height} image (nothing to read)"
        )
    return x0, y0, x1 - x0, y1 - y0


def region_segments(
    x: int,
    y: int,
    w: int,
    h: int,
    *,
    segment_width: int,
    segment_height: int,
    image_width: int,
    image_height: int,
) -> list[int]:
    """Linear indices of the tiles (or strips) that intersect a region already clipped to the image.

    Tiles are numbered row by row, as TIFF 6.0 section 15 orders ``TileOffsets``; strips are tiles
    whose width is the image width. The region must lie inside the image (see :func:`clip_region`).

    Examples
    --------
    A 3 x 3 grid of 10-pixel tiles; a region straddling the centre tile's right and bottom edges:

    >>> region_segments(15, 15, 10, 10, segment_width=10, segment_height=10,
    ...                 image_width=30, image_height=30)
    [4, 5, 7, 8]
    """
    if segment_width <= 0 or segment_height <= 0:
        raise ValueError(f"segment size must be positive, got {segment_width} x {segment_height}")
    if x < 0 or y < 0 or w <= 0 or h <= 0 or x + w > image_width or y + h > image_height:
        raise ValueError(
            f"region x={x}, y={y}, w={w}, h={h} is not inside the {image_width} x {image_height} image"
        )
    across = math.ceil(image_width / segment_width)
    col0, col1 = x // segment_width, (x + w - 1) // segment_width
    row0, row1 = y // segment_height, (y + h - 1) // segment_height
    return [row * across + col for row in range(row0, row1 + 1) for col in range(col0, col1 + 1)]


def overview_geometry(width: int, height: int, max_side: int) -> tuple[int, int, float]:
    """Size of an overview whose longer side is at most ``max_side``, and its factor.

    Returns ``(out_width, out_height, factor)``: overview pixel ``(i, j)`` covers full-resolution
    pixels ``[j * factor, (j + 1) * factor)`` x ``[i * factor, (i + 1) * factor)``, the same factor on
    both axes, so a box maps back by one multiplication. The last row/column may cover less than a
    full ``factor`` (it is averaged over what exists). Images already small enough keep factor 1.

    Examples
    --------
    >>> overview_geometry(8000, 6000, 2000)
    (2000, 1500, 4.0)
    >>> overview_geometry(100, 50, 2000)
    (100, 50, 1.0)
    """
    if max_side < 1:
        raise ValueError(f"max_side must be at least 1, got {max_side}")
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width} x {height}")
    longer = max(width, height)
    if longer <= max_side:
        return width, height, 1.0
    factor = longer / max_side
    # The small epsilon keeps 8000 / (8000 / 2048) from rounding up to 2049.
    out_w = min(max_side, max(1, math.ceil(width / factor - 1e-9)))
    out_h = min(max_side, max(1, math.ceil(height / factor - 1e-9)))
    return out_w, out_h, factor


def area_weights(n_in: int, n_out: int, step: float) -> sparse.csr_matrix:
    """Sparse ``(n_out, n_in)`` matrix of area-averaging (box filter) weights along one axis.

    Output pixel ``j`` is the mean of the input over ``[j * step, (j + 1) * step)`` clipped to
    ``[0, n_in)``: input pixels only partly inside count by the fraction inside. This is the exact
    area-average that OpenCV calls ``INTER_AREA`` and Pillow calls ``BOX``, and it works for any
    real ``step`` (also below 1). Each row sums to 1; an output pixel that falls wholly past the end
    of the input repeats the last input pixel.

    Examples
    --------
    Three pixels into two: each output takes one whole pixel and half of the middle one.

    >>> (area_weights(3, 2, 1.5).toarray() * 3).round().tolist()  # in thirds
    [[2.0, 1.0, 0.0], [0.0, 1.0, 2.0]]
    """
    if n_in < 1 or n_out < 1:
        raise ValueError(f"sizes must be positive, got n_in={n_in}, n_out={n_out}")
    if not (math.isfinite(step) and step > 0):
        raise ValueError(f"step must be a positive number, got {step}")
    edges = np.arange(n_out + 1, dtype=np.float64) * step
    lo = np.minimum(edges[:-1], n_in)
    hi = np.minimum(edges[1:], n_in)
    empty = hi - lo <= 1e-12
    lo = np.where(empty, np.minimum(np.floor(lo), n_in - 1), lo)
    hi = np.where(empty, lo + 1.0, hi)
    first = np.floor(lo).astype(np.int64)
    stop = np.maximum(np.ceil(hi).astype(np.int64), first + 1)
    counts = stop - first
    rows = np.repeat(np.arange(n_out, dtype=np.int64), counts)
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    cols = np.arange(int(counts.sum()), dtype=np.int64) - starts + np.repeat(first, counts)
    overlap = np.minimum(hi[rows], cols + 1) - np.maximum(lo[rows], cols)
    weights = (np.clip(overlap, 0.0, None) / (hi - lo)[rows]).astype(np.float32)
    matrix = sparse.csr_matrix((weights, (rows, cols)), shape=(n_out, n_in))
    matrix.sort_indices()
    return matrix


def area_downsample(
    array: npt.NDArray[np.generic], out_height: int, out_width: int, factor: float
) -> npt.NDArray[np.float32]:
    """Area-average a whole ``(h, w)`` or ``(h, w, c)`` array to ``(out_height, out_width[, c])``.

    ``factor`` is input pixels per output pixel on both axes (see :func:`overview_geometry`). Returns
    float32 means; the caller rounds. For arrays too big to hold, the reader applies the same
    :func:`area_weights` band by band.

    Examples
    --------
    >>> area_downsample(np.array([[0, 2], [4, 6]]), 1, 1, 2.0)
    array([[3.]], dtype=float32)
    """
    if array.ndim not in (2, 3):
        raise ValueError(f"expected a 2-D or 3-D array, got shape {array.shape}")
    h, w = array.shape[:2]
    wy = area_weights(h, out_height, factor)
    wx = area_weights(w, out_width, factor)
    channels = 1 if array.ndim == 2 else array.shape[2]
    flat = np.asarray(array, dtype=np.float32).reshape(h, w * channels)
    tmp = (wy @ flat).reshape(out_height, w, channels).transpose(1, 0, 2).reshape(w, -1)
    out = (wx @ tmp).reshape(out_width, out_height, channels).transpose(1, 0, 2)
    out = np.ascontiguousarray(out, dtype=np.float32)
    return out[:, :, 0] if array.ndim == 2 else out


def percentile_window(
    values: npt.NDArray[np.generic], low: float = DEFAULT_PERCENTILES[0], high: float = DEFAULT_PERCENTILES[1]
) -> tuple[float, float]:
    """The ``(low, high)`` percentiles of ``values``: the input range of the 16-to-8-bit mapping.

    Computed over all channels together, so one linear mapping serves the whole image and colour
    balance is kept. When the percentiles coincide (a flat image) there is no contrast to stretch:
    the window falls back to the full 16-bit range ``(0, 65535)`` so the image keeps its brightness
    instead of becoming all black.

    Examples
    --------
    >>> percentile_window(np.arange(1001), 10, 90)
    (100.0, 900.0)
    >>> percentile_window(np.full(5, 7))
    (0.0, 65535.0)
    """
    if not 0 <= low < high <= 100:
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got low={low}, high={high}")
    if values.size == 0:
        raise ValueError("cannot compute a window of an empty array")
    lo, hi = np.percentile(values, [low, high])
    if not hi > lo:
        return 0.0, 65535.0
    return float(lo), float(hi)


def apply_window(values: npt.NDArray[np.generic], lo: float, hi: float) -> npt.NDArray[np.uint8]:
    """Map ``[lo, hi]`` linearly onto ``[0, 255]``, clip outside, round to uint8.

    Works in row chunks so a large overview needs only a small float temporary.

    Examples
    --------
    >>> apply_window(np.array([0, 100, 150, 200, 300]), 100.0, 200.0)
    array([  0,   0, 128, 255, 255], dtype=uint8)
    """
    if not hi > lo:
        raise ValueError(f"window must have hi > lo, got lo={lo}, hi={hi}")
    scale = np.float32(255.0 / (hi - lo))
    out = np.empty(values.shape, dtype=np.uint8)
    if values.ndim == 0 or values.size == 0:
        out[...] = np.clip(np.rint((np.float32(values) - np.float32(lo)) * scale), 0, 255)
        return out
    rows_per_chunk = max(1, (1 << 20) // max(1, values[0].size))
    for start in range(0, values.shape[0], rows_per_chunk):
        chunk = values[start : start + rows_per_chunk].astype(np.float32)
        chunk -= np.float32(lo)
        chunk *= scale
        np.rint(chunk, out=chunk)
        np.clip(chunk, 0, 255, out=chunk)
        out[start : start + rows_per_chunk] = chunk
    return out


def to_rgb8(raw: npt.NDArray[np.generic], window: tuple[float, float] | None) -> npt.NDArray[np.uint8]:
    """Turn raw ``(h, w, 1)`` or ``(h, w, 3)`` samples into uint8 RGB ``(h, w, 3)``.

    8-bit data is used as stored (no stretching: what the technician saw is what the detector
    sees). Other data needs ``window`` and goes through :func:`apply_window`. Grey is replicated to
    three channels.

    Examples
    --------
    >>> to_rgb8(np.array([[[1000]]], dtype=np.uint16), (0.0, 2000.0)).tolist()
    [[[128, 128, 128]]]
    """
    if raw.ndim != 3 or raw.shape[2] not in (1, 3):
        raise ValueError(f"expected an (h, w, 1) or (h, w, 3) array, got shape {raw.shape}")
    if raw.dtype == np.uint8:
        out = np.ascontiguousarray(raw)
    else:
        if window is None:
            raise ValueError(f"{raw.dtype} samples need an intensity window")
        out = apply_window(raw, *window)
    if out.shape[2] == 1:
        out = np.repeat(out, 3, axis=2)
    return out


def apply_orientation(array: npt.NDArray[np.generic], orientation: int) -> npt.NDArray[np.generic]:
    """Return a view of ``(h, w, ...)`` ``array`` as displayed under EXIF ``Orientation``.

    Same result as Pillow's ``ImageOps.exif_transpose`` (EXIF 2.3, tag 0x0112: 1 normal,
    2 mirrored, 3 rotated 180, 4 flipped, 5 transposed, 6 rotated 90 clockwise for display,
    7 transversed, 8 rotated 90 counter-clockwise). Unknown values are treated as 1.
    A view, not a copy, so orienting a decoded image costs no memory.

    Examples
    --------
    >>> apply_orientation(np.array([[1, 2], [3, 4]]), 6).tolist()
    [[3, 1], [4, 2]]
    """
    if orientation == 2:
        return array[:, ::-1]
    if orientation == 3:
        return array[::-1, ::-1]
    if orientation == 4:
        return array[::-1]
    if orientation == 5:
        return array.swapaxes(0, 1)
    if orientation == 6:
        return array[::-1].swapaxes(0, 1)
    if orientation == 7:
        return array[::-1, ::-1].swapaxes(0, 1)
    if orientation == 8:
        return array[:, ::-1].swapaxes(0, 1)
    return array

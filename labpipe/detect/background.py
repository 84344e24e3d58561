"""Background (paper colour under uneven lighting) estimated per pixel.

The image is cut into blocks; each block's per-channel median (over the dish pixels in it) is one
cell of a coarse grid. Cells covered by a specimen are found as outliers from the median of their
neighbourhood (darker or differently coloured) and replaced by the median of their inlier
neighbours; the grid is then interpolated bilinearly back to full size. The median grid is the
classic "rolling-ball / large-window median" flat-field estimate made robust and cheap: a median
window several times larger than the largest specimen ignores the specimens [1]_ [2]_, while the
block size keeps slow lighting gradients and vignetting [3]_.

References
----------
.. [1] S. R. Sternberg, "Biomedical image processing", IEEE Computer 16 (1983): background
   subtraction with a structuring element larger than the objects.
.. [2] J. C. Russ, *The Image Processing Handbook*, 6th ed. (2011), ch. 4, "Correcting nonuniform
   illumination": a median of a large neighbourhood as the background, then division.
.. [3] B. Likar, J. B. A. Maintz, M. A. Viergever, F. Pernus, "Retrospective shading correction
   based on entropy minimization", J. Microscopy 197 (2000): shading is smooth on the scale of the
   field of view.
"""

from __future__ import annotations

import warnings

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy import ndimage as ndi

__all__ = [
    "block_medians",
    "estimate_background",
    "fit_trend",
    "nan_median_filter",
    "radial_profile",
    "upsample_grid",
]


def nan_median_filter(grid: np.ndarray, size: int) -> np.ndarray:
    """Median over a ``size`` x ``size`` window of a ``(h, w, C)`` grid, ignoring NaN cells.

    Windows holding only NaN give NaN. ``size`` must be odd.

    Examples
    --------
    >>> g = np.array([[1.0, np.nan, 3.0]])[..., None]
    >>> nan_median_filter(g, 3)[..., 0].tolist()
    [[1.0, 2.0, 3.0]]
    """
    if size < 1 or size % 2 == 0:
        raise ValueError(f"size must be odd and positive; given {size}")
    g = np.asarray(grid, dtype=np.float64)
    if g.ndim != 3:
        raise ValueError(f"grid must be (h, w, C); given shape {g.shape}")
    r = size // 2
    padded = np.pad(g, ((r, r), (r, r), (0, 0)), constant_values=np.nan)
    windows = sliding_window_view(padded, (size, size), axis=(0, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN windows are expected
        return np.nanmedian(windows.reshape(*windows.shape[:3], -1), axis=-1)


def block_medians(
    image: np.ndarray,
    mask: np.ndarray,
    block: int,
    *,
    min_coverage: float = 0.5,
    max_samples: int = 16,
    quantile: float = 50.0,
) -> np.ndarray:
    """Per-block, per-channel median (or another ``quantile``, in percent) of the masked pixels of
    a ``(H, W, C)`` image.

    Blocks are ``block`` x ``block`` pixels from the top-left corner (the last row and column of
    blocks may be partial). A block where less than ``min_coverage`` of its pixels are in ``mask``
    is NaN. At most ``max_samples`` x ``max_samples`` evenly spaced pixels per block are used.

    Returns
    -------
    (ceil(H / block), ceil(W / block), C) float64 array
    """
    img = np.asarray(image)
    if img.ndim != 3:
        raise ValueError(f"image must be (H, W, C); given shape {img.shape}")
    if block < 1:
        raise ValueError(f"block must be >= 1; given {block}")
    m = np.asarray(mask, dtype=bool)
    if m.shape != img.shape[:2]:
        raise ValueError(f"mask shape {m.shape} does not match image shape {img.shape[:2]}")
    h, w, c = img.shape
    gh, gw = -(-h // block), -(-w // block)
    per = min(block, max_samples)
    offsets = (np.arange(per) * block) // per
    ys = (np.arange(gh)[:, None] * block + offsets[None, :]).ravel()
    xs = (np.arange(gw)[:, None] * block + offsets[None, :]).ravel()
    inside_y, inside_x = ys < h, xs < w
    sub = img[np.minimum(ys, h - 1)[:, None], np.minimum(xs, w - 1)[None, :]].astype(np.float64)
    valid = m[np.minimum(ys, h - 1)[:, None], np.minimum(xs, w - 1)[None, :]]
    valid &= inside_y[:, None] & inside_x[None, :]
    sub[~valid] = np.nan
    blocks = sub.reshape(gh, per, gw, per, c).transpose(0, 2, 4, 1, 3).reshape(gh, gw, c, per * per)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # blocks outside the mask are all NaN
        if quantile == 50.0:
            med = np.nanmedian(blocks, axis=-1)
        else:
            med = np.nanpercentile(blocks, quantile, axis=-1)
    real = (inside_y.reshape(gh, per).sum(1)[:, None] * inside_x.reshape(gw, per).sum(1)[None, :]).astype(
        np.float64
    )
    coverage = valid.reshape(gh, per, gw, per).sum(axis=(1, 3)) / np.maximum(real, 1)
    med[coverage < min_coverage] = np.nan
    return med


def upsample_grid(grid: np.ndarray, block: int, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear interpolation of a per-block grid (values at block centres) to ``shape``.

    Examples
    --------
    >>> g = np.array([[0.0, 2.0]])[..., None]
    >>> upsample_grid(g, 2, (1, 4))[0, :, 0].tolist()
    [0.0, 0.5, 1.5, 2.0]
    """
    g = np.asarray(grid, dtype=np.float64)
    if g.ndim != 3:
        raise ValueError(f"grid must be (h, w, C); given shape {g.shape}")
    h, w = shape

    def _axis(n: int, cells: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = np.clip((np.arange(n) + 0.5) / block - 0.5, 0, cells - 1)
        i0 = np.floor(pos).astype(np.intp)
        i1 = np.minimum(i0 + 1, cells - 1)
        return i0, i1, (pos - i0).astype(np.float32)

    y0, y1, wy = _axis(h, g.shape[0])
    x0, x1, wx = _axis(w, g.shape[1])
    gf = g.astype(np.float32)
    rows = gf[y0] * (1 - wy)[:, None, None] + gf[y1] * wy[:, None, None]  # (h, gw, C)
    return rows[:, x0] * (1 - wx)[None, :, None] + rows[:, x1] * wx[None, :, None]


def fit_trend(grid: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Least-squares quadratic surface per channel through the cells of a ``(h, w, C)`` grid.

    Only cells where ``weights`` is True are used; with fewer than 6 of them (too few for a
    quadratic) a plane, then a constant is fitted. Vignetting and a lighting gradient across a
    plate are smooth and low-order [3]_; the trend carries them, so that the local medians that
    follow only need to follow what is left (seams, rings, shadows).

    Examples
    --------
    >>> yy, xx = np.mgrid[:5, :6]
    >>> g = (1.0 + 0.1 * xx + 0.05 * yy)[..., None]
    >>> bool(np.allclose(fit_trend(g, np.ones((5, 6), bool)), g))
    True
    """
    g = np.asarray(grid, dtype=np.float64)
    wmask = np.asarray(weights, dtype=bool) & ~np.isnan(g).any(axis=-1)
    h, w, c = g.shape
    yy, xx = np.mgrid[:h, :w]
    y = (yy - (h - 1) / 2) / max(h - 1, 1)
    x = (xx - (w - 1) / 2) / max(w - 1, 1)
    n = int(wmask.sum())
    if n == 0:
        return np.full(g.shape, np.nan)
    if n >= 12:
        terms = [np.ones_like(x), x, y, x * x, y * y, x * y]
    elif n >= 6:
        terms = [np.ones_like(x), x, y]
    else:
        terms = [np.ones_like(x)]
    design = np.stack([t.ravel() for t in terms], axis=1)
    coef, *_ = np.linalg.lstsq(design[wmask.ravel()], g.reshape(-1, c)[wmask.ravel()], rcond=None)
    return (design @ coef).reshape(h, w, c)


def estimate_background(
    image: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    block: int = 32,
    window: int = 5,
    tolerance: float = 0.06,
    iterations: int = 3,
    quantile: float = 50.0,
    min_coverage: float = 0.5,
) -> np.ndarray:
    """Per-pixel background colour of a ``(H, W, C)`` image of specimens on a plain background.

    1. Block medians of the pixels in ``mask`` (:func:`block_medians`), or another ``quantile``
       of them: a high one (the 85th) keeps the paper's level in a block that dark specimens
       cover for the most part, on a crowded plate.
    2. Repeat ``iterations`` times: fit a smooth quadratic trend through the cells still taken as
       background (:func:`fit_trend`); divide it out; compare each cell with the median of its
       ``window`` x ``window`` neighbourhood; a cell more than ``tolerance`` darker, or whose
       channel ratios differ by more than ``tolerance``, or more than ``3 * tolerance`` darker
       than the trend itself, is covered by specimens and is dropped.
    3. Background = trend x the 3 x 3 median of the detrended background cells (cells without
       any use the ``window`` median, then the trend alone), interpolated bilinearly to full size.

    Parameters
    ----------
    image : (H, W, C) float array
        Linear-ish intensities (any scale; the result is in the same units).
    mask : (H, W) bool array, optional
        Pixels that may be background (the dish interior). Default: all.
    block : int
        Block size in pixels; about a quarter of the largest specimen, so that a specimen covers
        few blocks of a neighbourhood and the lighting detail is kept.
    window : int
        Odd size, in blocks, of the neighbourhood a block is compared with.
    tolerance : float
        Relative darkening or colour change above which a block is taken as covered by specimens.
    iterations : int
        Rounds of trend fitting and outlier rejection.
    quantile : float
        Per-block statistic, in percent (50: the median).
    min_coverage : float
        A block with a smaller share of its pixels in ``mask`` has no value of its own.

    Returns
    -------
    (H, W, C) float32 array

    Examples
    --------
    A dark square on a left-to-right gradient: the background follows the gradient, not the square.

    >>> img = np.tile(np.linspace(0.5, 1.0, 64)[None, :, None], (64, 1, 3))
    >>> img[24:40, 24:40] = 0.1
    >>> bg = estimate_background(img, block=8)
    >>> bool(abs(bg[32, 32, 0] - img[0, 32, 0]) < 0.03)
    True
    """
    img = np.asarray(image)
    if img.ndim != 3:
        raise ValueError(f"image must be (H, W, C); given shape {img.shape}")
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be odd and positive; given {window}")
    if not 0 < tolerance < 1:
        raise ValueError(f"tolerance must be in (0, 1); given {tolerance}")
    m = np.ones(img.shape[:2], dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    grid = block_medians(img, m, block, quantile=quantile, min_coverage=min_coverage)
    valid = ~np.isnan(grid).any(axis=-1)
    if not valid.any():
        # No background pixel at all (an empty mask): the image's own median is all we have.
        fill = np.nanmedian(img.reshape(-1, img.shape[2]), axis=0)
        return np.broadcast_to(fill.astype(np.float32), img.shape).copy()
    inlier = valid.copy()
    for _ in range(iterations):
        trend = np.maximum(fit_trend(grid, inlier), 1e-6)
        with np.errstate(invalid="ignore"):
            detr = grid / trend
        local = nan_median_filter(np.where(inlier[..., None], detr, np.nan), window)
        local = np.where(np.isnan(local), 1.0, local)
        with np.errstate(invalid="ignore", divide="ignore"):  # cells outside the dish are NaN
            ratio = detr / local
            lum = ratio.mean(axis=-1)
            chroma = np.sqrt(((ratio - lum[..., None]) ** 2).sum(axis=-1))
        # A specimen larger than the window is its own neighbourhood: far below the trend, too.
        trend_lum = detr.mean(axis=-1)
        with np.errstate(invalid="ignore"):
            new = valid & (lum > 1.0 - tolerance) & (chroma < tolerance) & (trend_lum > 1.0 - 3 * tolerance)
        if not new.any() or np.array_equal(new, inlier):
            inlier = new if new.any() else inlier
            break
        inlier = new
    trend = np.maximum(fit_trend(grid, inlier), 1e-6)
    detr = np.where(inlier[..., None], grid / trend, np.nan)
    fine = nan_median_filter(detr, 3)
    coarse = nan_median_filter(detr, window)
    fine = np.where(np.isnan(fine), coarse, fine)
    fine = np.where(np.isnan(fine), 1.0, fine)
    out = trend * fine
    # Outside the dish the quadratic is extrapolated; keep it within what the dish showed.
    lo = np.nanmin(np.where(valid[..., None], grid, np.nan), axis=(0, 1))
    hi = np.nanmax(np.where(valid[..., None], grid, np.nan), axis=(0, 1))
    out = np.clip(out, lo, hi)
    return upsample_grid(out, block, img.shape[:2])


def radial_profile(
    image: np.ndarray,
    mask: np.ndarray,
    center: tuple[float, float],
    *,
    ring: float,
    min_radius: float,
    min_pixels: int = 32,
) -> np.ndarray:
    """Per-pixel, per-channel median of ``image`` over the ring (annulus ``ring`` pixels wide,
    around ``center`` = (row, column)) that the pixel lies on: the rotationally symmetric shading
    of a round well or dish seen from above along its axis.

    A well's floor and wall, lit from above, show concentric bright and dark bands (the meniscus
    and the wall's reflections) narrower than a specimen: block medians cannot follow them without
    following the specimens too, but each band is one ring, and a specimen covers a small share of
    a ring's circumference (at radius ``r`` a body ``L`` long covers at most ``L / (2 pi r)`` of
    it), so the ring's median is the band's level. Inside ``min_radius`` (where a specimen could
    cover half a ring: ``L / pi``) and on rings with fewer than ``min_pixels`` pixels of ``mask``,
    the nearest reliable ring's value is used. The profile is smoothed over three rings.

    Parameters
    ----------
    image : (H, W, C) float array
    mask : (H, W) bool array: pixels that may be background.
    center : (row, column) of the rings' centre.
    ring : float
        Ring width in pixels (at most a third of the narrowest band to follow).
    min_radius : float
        Rings inside this radius are not trusted (a specimen may cover half of them).
    min_pixels : int
        Fewer pixels of ``mask`` on a ring: not trusted.

    Returns
    -------
    (H, W, C) float32 array (all NaN when no ring is trusted).

    Examples
    --------
    Bright and dark bands around the centre, and a dark specimen across two of them:

    >>> yy, xx = np.mgrid[:64, :64]
    >>> r = np.hypot(yy - 32, xx - 32)
    >>> img = np.where((r // 6) % 2 == 0, 0.9, 0.7)[..., None]
    >>> img[40:44, 10:20] = 0.1
    >>> prof = radial_profile(img, np.ones((64, 64), bool), (32, 32), ring=1.0, min_radius=4)
    >>> round(float(prof[42, 15, 0]), 2) == round(float(np.where((r[42, 15] // 6) % 2 == 0, 0.9, 0.7)), 2)
    True
    """
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 3:
        raise ValueError(f"image must be (H, W, C); given shape {img.shape}")
    m = np.asarray(mask, dtype=bool)
    if m.shape != img.shape[:2]:
        raise ValueError(f"mask shape {m.shape} does not match image shape {img.shape[:2]}")
    if not ring > 0 or min_radius < 0:
        raise ValueError(f"ring must be > 0 and min_radius >= 0; given {ring} and {min_radius}")
    h, w = m.shape
    yy, xx = np.mgrid[:h, :w]
    index = (np.hypot(yy - center[0], xx - center[1]) / ring).astype(np.int64)
    n = int(index.max()) + 1
    counts = np.bincount(index[m], minlength=n)
    trusted = (counts >= min_pixels) & (np.arange(n) * ring >= min_radius)
    if not trusted.any():
        return np.full(img.shape, np.nan, dtype=np.float32)
    labels = np.where(m, index + 1, 0)
    rings = np.arange(n)
    out = np.empty(img.shape, dtype=np.float32)
    for c in range(img.shape[2]):
        prof = np.full(n, np.nan)
        prof[trusted] = np.asarray(ndi.median(img[..., c], labels, rings[trusted] + 1), dtype=np.float64)
        smooth = np.array(
            [np.nanmedian(prof[max(0, i - 1) : i + 2]) if trusted[i] else np.nan for i in range(n)]
        )
        smooth = np.interp(rings, rings[trusted], smooth[trusted])
        out[..., c] = smooth[index]
    return out

"""Find the dish: the bright paper (or well floor) inside a darker surround and a rim.

Works on a heavily downsampled luminance image (a few hundred pixels on the longer side); the
caller maps the mask back to its own resolution with :func:`resize_mask`.

Three rules, tried in order:

1. **Bright disc in a dark surround** (a Petri dish on a dark stage): Otsu's threshold [1]_ on the
   smoothed luminance, the largest bright component, holes filled (specimens lie inside it), kept
   when it is large, convex, clearly brighter than what surrounds it and bounded by a circle
   (:func:`fit_circle`); searched up to its wall, whose width is measured around the dish
   (:func:`wall_limits`), at most the rim width.
2. **A large circle** (a microplate well seen from above, or a dish on a bright stage: the floor
   is no brighter than the surround, but the wall draws a circle): :func:`find_circle`, Canny
   edges [2]_ voting in a circular Hough transform [3]_, kept only when well supported; the disc
   inside it, eroded by the rim width, is searched.
3. **Fallback**: the whole image minus a small border (a close-up, a crop of the paper alone).
   Reported in :attr:`Dish.method` and logged at debug level by the detector.

References
----------
.. [1] N. Otsu, "A threshold selection method from gray-level histograms", IEEE Trans. SMC 9 (1979).
.. [2] J. Canny, "A computational approach to edge detection", IEEE PAMI 8 (1986).
.. [3] R. O. Duda and P. E. Hart, "Use of the Hough transformation to detect lines and curves in
   pictures", Comm. ACM 15 (1972).
.. [4] I. Kasa, "A circle fitting procedure and its error analysis", IEEE Trans. Instrum. Meas. 25
   (1976).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage.feature import canny
from skimage.filters import threshold_otsu
from skimage.morphology import convex_hull_image
from skimage.transform import hough_circle

_CIRCLE_SIDE = 256

__all__ = ["Dish", "find_circle", "find_dish", "fit_circle", "resize_mask", "wall_limits"]


@dataclass(frozen=True)
class Dish:
    """Where to look for specimens, in the frame of the luminance image it was found in."""

    mask: np.ndarray
    """Boolean mask of the searchable interior (rim and surround excluded)."""
    found: bool
    """True when a dish was found; False when the fallback (whole image minus a border) is used."""
    method: str
    """``"otsu-disc"``, ``"hough-circle"`` or ``"fallback-border"``."""
    center: tuple[float, float] | None = None
    """(row, column) of the dish centre, when found."""
    radius: float | None = None
    """Radius of the disc with the dish's area (before erosion), when found."""


def _border_mask(shape: tuple[int, int], border: int) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    h, w = shape
    b = min(border, (h - 1) // 2, (w - 1) // 2)
    mask[b : h - b, b : w - b] = True
    return mask


def find_dish(
    luminance: np.ndarray,
    *,
    rim_fraction: float = 0.04,
    min_area_fraction: float = 0.15,
    min_contrast: float = 0.25,
    min_solidity: float = 0.85,
    max_circle_residual: float = 0.05,
    border_fraction: float = 0.02,
    use_circle: bool = True,
    measure_wall: bool = True,
) -> Dish:
    """Find the searchable dish interior in a small luminance image (rules 1-3 of the module).

    Parameters
    ----------
    luminance : (H, W) float array
        Luminance in any units (only ratios matter), ideally 100-500 px on the longer side.
    rim_fraction : float
        Rim width as a fraction of the dish radius; the interior is eroded by this much. With
        ``measure_wall``, the most it is eroded by: in each direction the search reaches the wall
        where the floor visibly goes on (:func:`wall_limits`).
    min_area_fraction : float
        A bright component smaller than this share of the image is not a dish.
    min_contrast : float
        The surround's mean luminance must be at most ``1 - min_contrast`` of the interior's.
    min_solidity : float
        The filled component's area over its convex hull's area: a dish is round (or a round
        dish cut by the image edges, still convex).
    max_circle_residual : float
        RMS distance of the component's boundary from its best circle, over the radius.
    border_fraction : float
        Border dropped in the fallback, as a share of the shorter side.
    use_circle : bool
        Try rule 2 (the Hough circle) when rule 1 finds nothing.
    measure_wall : bool
        Measure where the wall's shading begins, direction by direction (:func:`wall_limits`),
        instead of eroding by ``rim_fraction`` all round.

    Returns
    -------
    Dish
        ``found`` is False when the fallback was used; ``mask`` is never empty.

    Examples
    --------
    >>> yy, xx = np.mgrid[:100, :100]
    >>> lum = np.where((yy - 50) ** 2 + (xx - 50) ** 2 < 40**2, 1.0, 0.1)
    >>> d = find_dish(lum)
    >>> d.found, bool(d.mask[50, 50]), bool(d.mask[50, 89]), bool(d.mask[2, 2])
    (True, True, False, False)
    """
    lum = np.asarray(luminance, dtype=np.float64)
    if lum.ndim != 2:
        raise ValueError(f"luminance must be a 2-D array; given shape {lum.shape}")
    if min(lum.shape) < 8:
        raise ValueError(f"luminance image too small to find a dish in: shape {lum.shape}")
    h, w = lum.shape
    border = max(1, round(border_fraction * min(h, w)))
    fallback = Dish(_border_mask((h, w), border), found=False, method="fallback-border")
    otsu = _otsu_disc(
        lum, rim_fraction, min_area_fraction, min_contrast, min_solidity, max_circle_residual, measure_wall
    )
    if otsu is not None:
        return otsu
    circle = find_circle(lum) if use_circle else None
    if circle is None:
        return fallback
    cy, cx, r = circle
    yy, xx = np.mgrid[:h, :w]
    interior = (yy - cy) ** 2 + (xx - cx) ** 2 < (r * (1.0 - rim_fraction)) ** 2
    interior &= fallback.mask
    if interior.sum() < min_area_fraction * h * w:
        return fallback
    return Dish(interior, found=True, method="hough-circle", center=(cy, cx), radius=r)


def fit_circle(rows: np.ndarray, cols: np.ndarray) -> tuple[float, float, float, float] | None:
    """Least-squares circle through points (the algebraic fit of Kasa [4]_).

    Returns
    -------
    (row, column, radius, rms residual) or None for fewer than 3 points or collinear points.

    Examples
    --------
    >>> t = np.linspace(0, 2 * np.pi, 50)
    >>> [round(v, 3) for v in fit_circle(5 + 3 * np.sin(t), 7 + 3 * np.cos(t))]
    [5.0, 7.0, 3.0, 0.0]
    """
    y = np.asarray(rows, dtype=np.float64).ravel()
    x = np.asarray(cols, dtype=np.float64).ravel()
    if y.size != x.size:
        raise ValueError(f"rows and cols must have the same length; given {y.size} and {x.size}")
    if y.size < 3:
        return None
    a = np.column_stack([x, y, np.ones_like(x)])
    b = x * x + y * y
    sol, *_ = np.linalg.lstsq(a, b, rcond=None)
    cx, cy = sol[0] / 2, sol[1] / 2
    r2 = sol[2] + cx * cx + cy * cy
    if not np.isfinite(r2) or r2 <= 0:
        return None
    r = float(np.sqrt(r2))
    resid = np.hypot(x - cx, y - cy) - r
    return float(cy), float(cx), r, float(np.sqrt(np.mean(resid**2)))


def _otsu_disc(
    lum: np.ndarray,
    rim_fraction: float,
    min_area_fraction: float,
    min_contrast: float,
    min_solidity: float,
    max_circle_residual: float,
    measure_wall: bool,
) -> Dish | None:
    """Rule 1: the largest bright Otsu component, if it is a large, convex, bright disc."""
    h, w = lum.shape
    smooth = ndi.gaussian_filter(lum, sigma=max(1.0, min(h, w) / 200))
    lo, hi = float(smooth.min()), float(smooth.max())
    # A single-valued image has no dish edge to find.
    if hi - lo <= 1e-9 * max(abs(hi), 1.0):
        return None
    bright = smooth > threshold_otsu(smooth)
    labels, n = ndi.label(bright)
    if n == 0:
        return None
    sizes = np.bincount(labels.ravel())[1:]
    comp = labels == (int(np.argmax(sizes)) + 1)
    filled = ndi.binary_fill_holes(comp)
    area = int(filled.sum())
    outside = ~filled
    if area < min_area_fraction * h * w or outside.sum() < 0.02 * h * w:
        return None
    inner_mean = float(lum[filled].mean())
    outer_mean = float(lum[outside].mean())
    if inner_mean <= 0 or outer_mean > (1.0 - min_contrast) * inner_mean:
        return None
    hull_area = int(convex_hull_image(filled).sum())
    if hull_area == 0 or area / hull_area < min_solidity:
        return None
    # Its boundary (where it is not the image edge) must lie on a circle: a Petri dish, not the
    # bright remainder of an image around a large dark object.
    edge = filled & ~ndi.binary_erosion(filled)
    edge[0, :] = edge[-1, :] = edge[:, 0] = edge[:, -1] = False
    fit = fit_circle(*np.nonzero(edge))
    if fit is None or fit[3] > max_circle_residual * fit[2]:
        return None
    radius = float(np.sqrt(area / np.pi))
    cy, cx = ndi.center_of_mass(filled)
    # Euclidean distance to the outside (image edges are not rim).
    dist = ndi.distance_transform_edt(np.pad(filled, 1, mode="edge"))[1:-1, 1:-1]
    if measure_wall:
        # the component's blurred boundary (a pixel) is never searched; beyond that, the wall's
        # shade is measured direction by direction
        yy, xx = np.mgrid[:h, :w]
        limit = wall_limits(lum, filled, (float(cy), float(cx)), max_rim=rim_fraction)
        interior = (dist > 1) & (np.hypot(yy - cy, xx - cx) < limit[_sector_of(yy - cy, xx - cx, len(limit))])
    else:
        interior = dist > max(1, round(rim_fraction * radius))
    if not interior.any():
        return None
    return Dish(interior, found=True, method="otsu-disc", center=(float(cy), float(cx)), radius=radius)


def _sector_of(dy: np.ndarray, dx: np.ndarray, sectors: int) -> np.ndarray:
    """Index 0..sectors-1 of the angular sector of offsets ``(dy, dx)`` from a centre."""
    angle = np.arctan2(dy, dx) + np.pi
    return np.minimum((angle * (sectors / (2 * np.pi))).astype(np.intp), sectors - 1)


def wall_limits(
    luminance: np.ndarray,
    region: np.ndarray,
    center: tuple[float, float],
    *,
    max_rim: float = 0.07,
    sectors: int = 32,
    tolerance: float = 0.05,
    floor_range: tuple[float, float] = (0.5, 0.85),
    run_fraction: float = 0.02,
) -> np.ndarray:
    """Per direction, how far from ``center`` the dish's floor is searched: up to its wall.

    A dish or well wall, seen from above, is a band of its own shading (glare on the glass, a
    dark inner shadow, refraction) between the floor and the surround. Eroding the dish by a
    fixed share of its radius (``max_rim``) must cover the widest wall drawn, and hides a strip of
    floor where the wall is narrower, and there specimens lie against it. So the wall is measured:

    1. In each of ``sectors`` directions, the floor's level is the median luminance of ``region``
       (the dish: the bright component, or the wall's circle) between ``floor_range`` of its
       extent in that direction. The wall is walked through from the outside in, one pixel ring
       at a time, up to the first ring whose median, and that of every ring for ``run_fraction``
       of the extent (at least 3) inside it, is within ``tolerance`` (relative) of the floor's
       level: a wall whose shading merely crosses the floor's level on its way from glare to
       shadow is not floor. The wall's width there is the extent less that ring (one pixel of
       blur included).
    2. A specimen lying against the wall, or a crowd of them, makes one direction's wall look
       wider: the dish's wall width is the median over the directions whose edge is the wall
       (not the image's border, where the floor goes on: those are searched to the edge).
    3. In every direction the search stops that far inside the dish's edge, and never deeper
       than ``max_rim`` of the extent: where the wall is wider than ``max_rim``, as much is
       searched as by the fixed erosion, and never less.

    Returns
    -------
    (sectors,) float array of limit radii (pixels from ``center``), starting at the angle -pi
    (:func:`_sector_of`); a pixel is searched when its distance is below its sector's limit.

    Examples
    --------
    A floor at 1.0 in a dark surround, with a wall band 1 px wide all round: the search goes
    to 53 px, where a fixed erosion of 7 % would stop at 51 px:

    >>> yy, xx = np.mgrid[:121, :121]
    >>> r = np.hypot(yy - 60, xx - 60)
    >>> lum = np.where(r < 55, 1.0, 0.1)
    >>> lum[(r >= 54) & (r < 55)] = 0.6
    >>> lim = wall_limits(lum, r < 55, (60.0, 60.0), max_rim=0.07, sectors=8)
    >>> sorted({round(v) for v in lim})
    [53]

    A wall 10 px wide is wider than ``max_rim``: the fixed erosion's limit is kept.

    >>> lum[(r >= 45) & (r < 55)] = 0.6
    >>> sorted({round(v) for v in wall_limits(lum, r < 55, (60.0, 60.0), max_rim=0.07, sectors=8)})
    [51]
    """
    lum = np.asarray(luminance, dtype=np.float64)
    reg = np.asarray(region, dtype=bool)
    if lum.shape != reg.shape or lum.ndim != 2:
        raise ValueError(f"luminance and region must be 2-D and of one shape; given {lum.shape}, {reg.shape}")
    if sectors < 1 or not 0 <= max_rim < 1 or not tolerance > 0:
        raise ValueError(
            f"need sectors >= 1, 0 <= max_rim < 1, tolerance > 0; given {sectors}, {max_rim}, {tolerance}"
        )
    ys, xs = np.nonzero(reg)
    if ys.size == 0:
        raise ValueError("region is empty")
    rho = np.hypot(ys - center[0], xs - center[1])
    sector = _sector_of(ys - center[0], xs - center[1], sectors)
    values = lum[ys, xs]
    # the region's edge away from the image's border: where the dish ends at its wall
    edge = reg & ~ndi.binary_erosion(reg, border_value=1)
    ey, ex = np.nonzero(edge)
    walled = np.bincount(_sector_of(ey - center[0], ex - center[1], sectors), minlength=sectors) > 0
    outer = np.zeros(sectors)  # 0 for a direction the region does not reach: nothing searched
    width = np.zeros(sectors)
    for k in range(sectors):
        mine = sector == k
        if not mine.any():
            continue
        r_k, v_k = rho[mine], values[mine]
        outer[k] = float(np.quantile(r_k, 0.99)) + 0.5
        width[k] = max_rim * outer[k]
        on_floor = (r_k >= floor_range[0] * outer[k]) & (r_k <= floor_range[1] * outer[k])
        level = float(np.median(v_k[on_floor])) if on_floor.any() else 0.0
        if level <= 0:
            continue
        ring = np.floor(r_k).astype(np.intp)
        top = int(np.floor(outer[k]))
        deepest = int(np.ceil((1.0 - max_rim) * outer[k]))
        run = max(3, round(run_fraction * outer[k]))
        floor_like = np.zeros(top + 1, dtype=bool)
        for i in range(max(0, deepest - run), top + 1):
            here = v_k[ring == i]
            floor_like[i] = here.size > 0 and abs(float(np.median(here)) / level - 1.0) <= tolerance
        for i in range(top, deepest - 1, -1):
            if floor_like[max(0, i - run + 1) : i + 1].all():
                width[k] = outer[k] - i  # rings up to ``i - 1`` are floor; ring ``i``: blur
                break
    rim = float(np.median(width[walled])) if walled.any() else 0.0
    limits = np.where(walled, outer - np.minimum(rim, max_rim * outer), outer - width)
    return np.where(outer > 0, limits, 0.0)


def _top_circles(
    acc: np.ndarray, radii: np.ndarray, n: int, gap: int
) -> tuple[list[float], list[int], list[int], list[int]]:
    """The ``n`` best Hough accumulator cells, each at least ``gap`` px (centre) or 2 radius steps
    from the ones already taken (a plain non-maximum suppression, much cheaper than per-radius
    peak finding)."""
    a = acc.copy()
    votes: list[float] = []
    cxs: list[int] = []
    cys: list[int] = []
    rrs: list[int] = []
    for _ in range(n):
        k, y, x = np.unravel_index(int(np.argmax(a)), a.shape)
        if a[k, y, x] <= 0:
            break
        votes.append(float(a[k, y, x]))
        cys.append(int(y))
        cxs.append(int(x))
        rrs.append(int(radii[k]))
        a[max(k - 2, 0) : k + 3, max(y - gap, 0) : y + gap + 1, max(x - gap, 0) : x + gap + 1] = 0
    return votes, cxs, cys, rrs


def find_circle(
    luminance: np.ndarray,
    *,
    radius_range: tuple[float, float] = (0.4, 0.75),
    min_votes: float = 0.13,
    min_coverage: float = 0.5,
    min_visible: float = 0.45,
) -> tuple[float, float, float] | None:
    """The dominant large circle (a well wall, a dish rim) in a small luminance image, or None.

    Canny edges [2]_ (the strongest 7 %, by quantile, so that the rule does not depend on exposure)
    vote in a circular Hough transform [3]_ over radii ``radius_range`` times the shorter side. Of
    the three best circles the one with the highest *radial coverage* is kept, and only if it is well
    supported: at least ``min_votes`` of its perimeter lies on edges (the normalised accumulator);
    in at least ``min_coverage`` of the 72 directions around it that fall inside the image, an edge
    pixel within 2 px of the circle has its gradient pointing along the radius (within about 30
    degrees: a real rim, not a crossing line); and at least ``min_visible`` of the circle lies
    inside the image.

    Returns
    -------
    (row, column, radius) or None

    Examples
    --------
    >>> yy, xx = np.mgrid[:120, :160]
    >>> lum = np.where((yy - 60) ** 2 + (xx - 80) ** 2 < 55**2, 0.9, 0.6)
    >>> [round(v) for v in find_circle(lum)]
    [60, 80, 55]
    """
    lum = np.asarray(luminance, dtype=np.float64)
    if lum.ndim != 2:
        raise ValueError(f"luminance must be a 2-D array; given shape {lum.shape}")
    lo_frac, hi_frac = radius_range
    if not 0 < lo_frac < hi_frac:
        raise ValueError(f"radius_range must be increasing and positive; given {radius_range}")
    # A flat image has no edges to vote with.
    if float(lum.max() - lum.min()) <= 1e-9:
        return None
    # Votes are cast at most 160 px across (a circle's position to within 1 % is plenty here).
    k = -(-max(lum.shape) // _CIRCLE_SIDE)
    if k > 1:
        hk, wk = lum.shape[0] // k, lum.shape[1] // k
        small = lum[: hk * k, : wk * k].reshape(hk, k, wk, k).mean(axis=(1, 3))
        found = find_circle(
            small,
            radius_range=radius_range,
            min_votes=min_votes,
            min_coverage=min_coverage,
            min_visible=min_visible,
        )
        if found is None:
            return None
        return (found[0] + 0.5) * k - 0.5, (found[1] + 0.5) * k - 0.5, found[2] * k
    s = min(lum.shape)
    edges = canny(lum, sigma=1.5, low_threshold=0.85, high_threshold=0.93, use_quantiles=True)
    if not edges.any():
        return None
    step = max(1, round(s / 100))
    radii = np.arange(max(3, round(lo_frac * s)), max(4, round(hi_frac * s)) + 1, step)
    acc = hough_circle(edges, radii, normalize=True)
    votes, cxs, cys, rrs = _top_circles(acc, radii, 3, max(2, round(s / 40)))
    smooth = ndi.gaussian_filter(lum, 1.5)
    gy, gx = ndi.sobel(smooth, 0), ndi.sobel(smooth, 1)
    gmag = np.hypot(gx, gy) + 1e-12
    best: tuple[float, float, float, float] | None = None
    theta = np.linspace(0.0, 2 * np.pi, 72, endpoint=False)
    for v, cx, cy, r in zip(votes, cxs, cys, rrs, strict=True):
        if v < min_votes:
            continue
        yy, xx = np.mgrid[: lum.shape[0], : lum.shape[1]]
        dy, dx = yy - float(cy), xx - float(cx)
        rho = np.hypot(dy, dx) + 1e-12
        radial = np.abs(gx * dx + gy * dy) / (gmag * rho)
        good = edges & (radial > 0.85)
        # For each direction, look along the radius r-2..r+2.
        offsets = np.arange(-2, 3)[:, None]
        py = np.round(cy + (r + offsets) * np.sin(theta)[None, :]).astype(np.intp)
        px = np.round(cx + (r + offsets) * np.cos(theta)[None, :]).astype(np.intp)
        inside = (py >= 0) & (py < lum.shape[0]) & (px >= 0) & (px < lum.shape[1])
        visible = inside.any(axis=0)
        if visible.mean() < min_visible:
            continue
        hit = np.zeros(inside.shape, dtype=bool)
        hit[inside] = good[py[inside], px[inside]]
        coverage = float(hit.any(axis=0)[visible].mean())
        if coverage >= min_coverage and (best is None or coverage > best[3]):
            best = (float(cy), float(cx), float(r), coverage)
    if best is None:
        return None
    return best[0], best[1], best[2]


def resize_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a boolean mask to ``shape`` (rows, columns).

    Examples
    --------
    >>> resize_mask(np.array([[True, False]]), (2, 4)).astype(int).tolist()
    [[1, 1, 0, 0], [1, 1, 0, 0]]
    """
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D; given shape {m.shape}")
    h, w = shape
    if h < 1 or w < 1:
        raise ValueError(f"shape must be positive; given {shape}")
    rows = np.minimum((np.arange(h) + 0.5) * m.shape[0] / h, m.shape[0] - 1).astype(np.intp)
    cols = np.minimum((np.arange(w) + 0.5) * m.shape[1] / w, m.shape[1] - 1).astype(np.intp)
    return m[rows[:, None], cols[None, :]]

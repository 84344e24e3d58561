"""A specimen's box at the resolution of the image given, legs and antennae included.

Bodies are found on a reduced *work* image (:mod:`labpipe.detect.classical`), where a leg or an
antenna one or two pixels wide is averaged away. A box drawn by a person runs to the tips of the
visible legs and antennae, so the box is set again on the pixels of the image given to the
detector (:func:`appendage_mask`, :func:`refine_box`):

* the body, mapped up from the work image, is the core;
* pixels around it whose strength exceeds ``max(k * noise, fraction * body peak)`` and that are
  connected to the core join it: legs and antennae are thin but, unlike the paper's texture,
  continuous with the body (hysteresis from the body [1]_);
* pixels of another candidate's region (and a pixel around it) may not join, so a neighbour's
  legs never widen the box;
* a leg too faint pixel by pixel (a midge's or a crane fly's, one or two pixels wide on a textured
  sheet) is found along its own line (:func:`line_strength`, :func:`grow_thin_appendages`): the mean
  of the strength along the best of eight directions stands above the paper's own line response,
  where single pixels do not, and the growth stops a few pixels off every neighbour and the dish
  rim, and within a body length or so of the animal.

References
----------
.. [1] J. Canny, "A computational approach to edge detection", IEEE PAMI 8 (1986).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

__all__ = ["appendage_mask", "enlarge", "grow_thin_appendages", "line_strength", "refine_box"]


def line_strength(
    strength: np.ndarray,
    length: int = 15,
    angles: int = 8,
    step: int = 2,
    valid: np.ndarray | None = None,
) -> np.ndarray:
    """Per pixel, how much darker a straight segment through it is than the segment across it:
    the mean of ``strength`` along the best of ``angles`` directions (``length`` pixels, sampled
    every ``step``) less the mean along the perpendicular one. The response of a leg or an antenna.

    A leg one or two pixels wide is barely above the paper's texture pixel by pixel, and broken
    where the texture is bright; along its own direction it is dark all the way, while texture
    averages out (the mean of ``length`` pixels of noise has about ``1 / sqrt(length)`` of its
    spread). A shadow or a stain is as dark across as along, and scores nothing. ``angles`` must be
    even (each direction has its perpendicular among them). Pixels beyond the image count as 0.

    ``valid`` (boolean, same shape): only these pixels enter the means, so a body left out of the
    filter neither halves the response of a leg leaving it nor makes the halo around it (a soft
    shadow, a blurred edge) look like a line along its outline.

    >>> s = np.zeros((21, 21)); s[10, 2:19] = 0.3  # a faint horizontal leg
    >>> line = line_strength(s, length=9)
    >>> round(float(line[10, 10]), 2), round(float(line[5, 10]), 2)
    (0.24, 0.0)
    >>> d = np.zeros((21, 21)); d[np.arange(3, 18), np.arange(3, 18)] = 0.3  # a diagonal one
    >>> round(float(line_strength(d, length=9)[10, 10]), 2)
    0.24
    >>> round(float(line_strength(np.full((21, 21), 0.3), length=9)[10, 10]), 2)  # a shadow
    0.0
    """
    s = np.asarray(strength, dtype=np.float32)
    if s.ndim != 2:
        raise ValueError(f"strength must be 2-D; given shape {s.shape}")
    if length < 3 or angles < 2 or angles % 2 or step < 1:
        raise ValueError(
            f"length must be >= 3, angles even and >= 2, step >= 1; given {length}, {angles}, {step}"
        )
    half = length // 2
    ok = np.ones(s.shape, dtype=np.float32) if valid is None else np.asarray(valid, dtype=np.float32)
    if ok.shape != s.shape:
        raise ValueError(f"valid must have the shape of strength {s.shape}; given {ok.shape}")
    padded = np.pad(s * ok, half)
    counted = np.pad(ok, half, constant_values=1.0)  # beyond the image: zeros that count
    h, w = s.shape
    steps = np.arange(-half, half + 1, step)
    steps = steps - (steps[0] + steps[-1]) // 2  # centred
    means = []
    for theta in np.linspace(0.0, np.pi, angles, endpoint=False):
        dy = np.rint(steps * np.sin(theta)).astype(int)
        dx = np.rint(steps * np.cos(theta)).astype(int)
        total = np.zeros_like(s)
        count = np.zeros_like(s)
        for oy, ox in zip(dy, dx, strict=True):
            total += padded[half + oy : half + oy + h, half + ox : half + ox + w]
            count += counted[half + oy : half + oy + h, half + ox : half + ox + w]
        means.append(total / np.maximum(count, np.float32(1.0)))
    best = np.zeros_like(s)
    quarter = angles // 2
    for k in range(angles):
        np.maximum(best, means[k] - means[(k + quarter) % angles], out=best)
    return best


def enlarge(image: np.ndarray, factor: int, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour enlargement of an image (labels, a mask, a map; any trailing channels)
    by an integer ``factor`` along its first two axes, cut to ``shape`` (rows, columns).

    >>> enlarge(np.array([[1, 2]]), 2, (2, 3)).tolist()
    [[1, 1, 2], [1, 1, 2]]
    """
    if factor < 1:
        raise ValueError(f"factor must be >= 1; given {factor}")
    a = np.asarray(image)
    if factor == 1:
        return a[: shape[0], : shape[1]]
    return np.repeat(np.repeat(a, factor, axis=0), factor, axis=1)[: shape[0], : shape[1]]


def appendage_mask(
    strength: np.ndarray,
    body: np.ndarray,
    cell: np.ndarray,
    threshold: np.ndarray | float,
) -> np.ndarray:
    """The body and every pixel of its cell above ``threshold`` connected to it (8-connected).

    Examples
    --------
    A body with a thin leg, a loose speck beside it, and a neighbour's leg outside its cell:

    >>> s = np.zeros((5, 12)); s[1:4, 1:4] = 0.9; s[2, 4:8] = 0.4; s[0, 9] = 0.5; s[4, 9:12] = 0.5
    >>> body = s > 0.8
    >>> cell = np.ones(s.shape, bool); cell[4, :] = False
    >>> m = appendage_mask(s, body, cell, 0.3)
    >>> bool(m[2, 7]), bool(m[0, 9]), bool(m[4, 10])
    (True, False, False)
    """
    s = np.asarray(strength)
    b = np.asarray(body, dtype=bool)
    c = np.asarray(cell, dtype=bool)
    if not (s.shape == b.shape == c.shape) or s.ndim != 2:
        raise ValueError(
            f"strength, body and cell must be 2-D and of one shape; given {s.shape}, {b.shape}, {c.shape}"
        )
    candidate = ((s > threshold) & c) | b
    comp, _ = ndi.label(candidate, structure=np.ones((3, 3), dtype=bool))
    keep = np.unique(comp[b])
    return np.isin(comp, keep[keep > 0])


def refine_box(mask: np.ndarray, offset: tuple[int, int]) -> tuple[float, float, float, float] | None:
    """``(x, y, w, h)`` of ``mask``'s pixels, shifted by ``offset`` (row, column); None when empty.

    >>> refine_box(np.pad(np.ones((2, 3), bool), 1), (10, 20))
    (21.0, 11.0, 3.0, 2.0)
    """
    ys, xs = np.nonzero(np.asarray(mask, dtype=bool))
    if ys.size == 0:
        return None
    y0, x0 = offset
    return (
        float(x0 + xs.min()),
        float(y0 + ys.min()),
        float(xs.max() - xs.min() + 1),
        float(ys.max() - ys.min() + 1),
    )


def grow_thin_appendages(
    strength: np.ndarray,
    found: np.ndarray,
    cell: np.ndarray,
    paper: np.ndarray,
    sigma: float,
    *,
    length: int,
    k_noise: float,
    floor: float,
    max_growth: float = 0.75,
    edge_margin: int = 4,
    min_samples: int = 200,
) -> np.ndarray:
    """``found`` (a body and the appendages found pixel by pixel) grown by the legs and antennae
    too faint for that: pixels of ``cell`` whose :func:`line_strength`
    exceeds both the paper's own line response (its median plus ``k_noise`` robust deviations:
    legs are a few percent of the window, so they move neither) and ``floor``, that are darker
    than the paper's noise ``sigma``, that come within ``length / 2`` of ``found``, and that lie within
    ``max_growth`` times ``found``'s larger side of its box (a leg is about as long as a body; a
    dish rim or a neighbour's legs, also lines, would run on).

    The animal already found is left out of the line filter (else its edge would smear a
    half-length halo around every body), so only what continues it in a line can join.
    """
    if not found.any():
        return found
    # only within reach of the animal: crop there (and half a segment around, for the filter)
    ys, xs = np.nonzero(found)
    reach = int(np.ceil(max_growth * max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1)))
    half = length // 2
    y0, x0 = max(0, ys.min() - reach - half), max(0, xs.min() - reach - half)
    y1, x1 = ys.max() + reach + half + 1, xs.max() + reach + half + 1
    crop = (slice(y0, y1), slice(x0, x1))
    s, f, c, p = strength[crop], found[crop], cell[crop], paper[crop]
    line = line_strength(s, length, valid=c & ~f)  # this animal and its neighbours left out
    sample = line[p & c & ~f]
    if sample.size < min_samples:
        return found
    sample = sample[:: max(1, sample.size // 4096)]  # the median of a few thousand is as good
    middle = float(np.median(sample))
    spread = 1.4826 * float(np.median(np.abs(sample - middle)))
    limit = max(middle + k_noise * spread, floor)
    # a few pixels off every other candidate and off the searched region's edge: their soft edges
    # are lines too, and would lead the growth round a neighbour or along the dish rim
    clear = ~ndi.maximum_filter(~c, size=2 * edge_margin + 1, mode="constant", cval=False)
    thin = (line > limit) & (s > sigma) & clear & ~f
    near = np.zeros_like(thin)
    r0, c0 = max(0, ys.min() - reach) - y0, max(0, xs.min() - reach) - x0
    near[r0 : ys.max() + reach + 1 - y0, c0 : xs.max() + reach + 1 - x0] = True
    thin &= near
    # the pixels next to the body are the least certain (half of their segments lie on it): a leg
    # joins when it comes within half the segment's length of it
    comps, n = ndi.label(thin, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return found
    touching = ndi.binary_dilation(f, iterations=max(1, half)) & thin
    keep = np.unique(comps[touching])
    grown = found.copy()
    grown[crop] |= np.isin(comps, keep[keep > 0])
    return grown

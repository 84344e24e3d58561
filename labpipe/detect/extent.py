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
  legs never widen the box.

References
----------
.. [1] J. Canny, "A computational approach to edge detection", IEEE PAMI 8 (1986).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

__all__ = ["appendage_mask", "enlarge", "refine_box"]


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

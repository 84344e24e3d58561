"""Overlapping tiles for learned detectors: the grid, boxes clipped to a tile, and merging across tiles.

A DETR-family detector answers with at most ``num_queries`` boxes per input, and works best on
objects of the size it was trained on. So a plate is cut into overlapping tiles at the model's
scale (:func:`tile_grid`), each tile is detected on its own, and the boxes are merged back
(:func:`merge_tile_detections`). With an overlap larger than the largest specimen, every specimen
lies whole inside at least one tile; a box touching an inner tile edge (:func:`cut_by_tile_edge`) is
a part of a specimen and gives way to the whole box found in the neighbouring tile.

Boxes are ``[x, y, w, h]`` (top-left corner, size) in pixels, as in :mod:`labpipe.detect.boxes`.

References
----------
.. [1] F. Ozge Unel, B. O. Ozkalayci and C. Cigla, "The Power of Tiling for Small Object Detection",
   CVPR Workshops 2019 (overlapping tiles, merging across tiles).
.. [2] A. Neubeck and L. Van Gool, "Efficient non-maximum suppression", ICPR 2006.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from labpipe.detect.boxes import as_boxes

__all__ = [
    "axis_starts",
    "clip_boxes_to_tile",
    "cut_by_tile_edge",
    "merge_tile_detections",
    "tile_grid",
]

Tile = tuple[int, int, int, int]


def axis_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``[0, length)`` with at least ``overlap`` shared.

    The first tile starts at 0 and the last ends at ``length``; the ones between are spread evenly,
    so neighbours share at least ``overlap`` pixels (more where the length does not divide evenly).
    A length no longer than one tile gives the single start 0 (the tile is then shorter).

    Examples
    --------
    >>> axis_starts(1000, 400, 100)
    [0, 300, 600]
    >>> axis_starts(300, 400, 100)
    [0]
    >>> axis_starts(401, 400, 100)
    [0, 1]
    """
    if length < 1:
        raise ValueError(f"length must be >= 1; given {length}")
    if tile < 1:
        raise ValueError(f"tile must be >= 1; given {tile}")
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile) = [0, {tile}); given {overlap}")
    if length <= tile:
        return [0]
    n = math.ceil((length - overlap) / (tile - overlap))
    n = max(n, 2)
    span = length - tile
    return [round(i * span / (n - 1)) for i in range(n)]


def tile_grid(width: int, height: int, tile: int, overlap: int) -> list[Tile]:
    """Tiles ``(x, y, w, h)`` covering a ``width`` x ``height`` image, row by row.

    Every pixel is in at least one tile; neighbours overlap by at least ``overlap`` pixels; all tiles
    are ``tile`` x ``tile`` except along an axis shorter than one tile.

    Examples
    --------
    >>> tile_grid(700, 300, 400, 100)
    [(0, 0, 400, 300), (300, 0, 400, 300)]
    """
    xs = axis_starts(width, tile, overlap)
    ys = axis_starts(height, tile, overlap)
    tw, th = min(tile, width), min(tile, height)
    return [(x, y, tw, th) for y in ys for x in xs]


def clip_boxes_to_tile(
    boxes: Sequence[Sequence[float]] | np.ndarray, tile: Tile, min_visible: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (image frame) clipped to ``tile`` and moved into the tile's frame.

    A box is kept when at least ``min_visible`` of its area lies inside the tile (boxes mostly
    outside are dropped: the model should not learn to box a sliver). Boxes with no area inside
    the tile are always dropped.

    Returns
    -------
    clipped : (K, 4) float array
        ``[x, y, w, h]`` relative to the tile's top-left corner.
    kept : (K,) int array
        Indices of the kept boxes in ``boxes``.

    Examples
    --------
    >>> clipped, kept = clip_boxes_to_tile([[90, 10, 20, 10], [0, 0, 5, 5]], (50, 0, 50, 50))
    >>> clipped.tolist(), kept.tolist()
    ([[40.0, 10.0, 10.0, 10.0]], [0])
    """
    if not 0.0 <= min_visible <= 1.0:
        raise ValueError(f"min_visible must be in [0, 1]; given {min_visible}")
    tx, ty, tw, th = tile
    if tw <= 0 or th <= 0:
        raise ValueError(f"tile must have a positive size; given {tile}")
    arr = as_boxes(boxes)
    x0 = np.clip(arr[:, 0], tx, tx + tw)
    y0 = np.clip(arr[:, 1], ty, ty + th)
    x1 = np.clip(arr[:, 0] + arr[:, 2], tx, tx + tw)
    y1 = np.clip(arr[:, 1] + arr[:, 3], ty, ty + th)
    inside = (x1 - x0) * (y1 - y0)
    area = arr[:, 2] * arr[:, 3]
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(area > 0, inside / np.where(area > 0, area, 1.0), 0.0)
    keep = (frac >= min_visible) & (inside > 0)
    kept = np.flatnonzero(keep)
    clipped = np.stack([x0 - tx, y0 - ty, x1 - x0, y1 - y0], axis=1)[kept]
    return clipped, kept.astype(np.int64)


def cut_by_tile_edge(
    boxes: Sequence[Sequence[float]] | np.ndarray,
    tile: Tile,
    image_width: int,
    image_height: int,
    margin: float = 2.0,
) -> np.ndarray:
    """Which boxes (tile frame) touch an edge of ``tile`` that lies inside the image.

    Such a box may be only the part of a specimen that falls into this tile; an edge that is also
    the image's own border cuts nothing (there is nothing beyond it).

    Examples
    --------
    >>> cut_by_tile_edge([[0, 10, 5, 5], [98, 10, 2, 5], [40, 40, 5, 5]], (0, 0, 100, 100), 200, 100).tolist()
    [False, True, False]
    """
    tx, ty, tw, th = tile
    arr = as_boxes(boxes)
    inner_left = tx > 0
    inner_top = ty > 0
    inner_right = tx + tw < image_width
    inner_bottom = ty + th < image_height
    cut = np.zeros(arr.shape[0], dtype=bool)
    if inner_left:
        cut |= arr[:, 0] <= margin
    if inner_top:
        cut |= arr[:, 1] <= margin
    if inner_right:
        cut |= arr[:, 0] + arr[:, 2] >= tw - margin
    if inner_bottom:
        cut |= arr[:, 1] + arr[:, 3] >= th - margin
    return cut


def merge_tile_detections(
    boxes: Sequence[Sequence[float]] | np.ndarray,
    scores: Sequence[float],
    cut: Sequence[bool] | None = None,
    iou_threshold: float = 0.5,
    containment: float = 0.7,
) -> tuple[list[int], list[float]]:
    """Merge boxes found in overlapping tiles (all in the image frame) into one box per specimen.

    Greedy non-maximum suppression [2]_ in order of preference: boxes not cut by a tile edge first,
    then by score. A box is absorbed by an already kept one when their IoU exceeds
    ``iou_threshold``, or, where either of the two is cut by a tile edge, when more than
    ``containment`` of the smaller box lies inside the other (a cut part inside the whole
    specimen). The kept box takes the highest score of the boxes it absorbed.

    Returns
    -------
    kept : list of int
        Indices of the kept boxes, in order of preference.
    scores : list of float
        The merged score of each kept box.

    Examples
    --------
    A specimen cut by the edge of the left tile, found whole in the right tile:

    >>> merge_tile_detections([[90, 10, 10, 20], [80, 10, 30, 20]], [0.9, 0.8], cut=[True, False])
    ([1], [0.9])
    """
    if not 0.0 <= iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in [0, 1]; given {iou_threshold}")
    if not 0.0 < containment <= 1.0:
        raise ValueError(f"containment must be in (0, 1]; given {containment}")
    arr = as_boxes(boxes)
    sc = np.asarray(scores, dtype=np.float64).reshape(-1)
    n = arr.shape[0]
    if sc.shape[0] != n:
        raise ValueError(f"need one score per box; given {sc.shape[0]} scores for {n} boxes")
    cuts = np.zeros(n, dtype=bool) if cut is None else np.asarray(cut, dtype=bool).reshape(-1)
    if cuts.shape[0] != n:
        raise ValueError(f"need one cut flag per box; given {cuts.shape[0]} for {n} boxes")
    if n == 0:
        return [], []
    x0, y0 = arr[:, 0], arr[:, 1]
    x1, y1 = x0 + arr[:, 2], y0 + arr[:, 3]
    area = arr[:, 2] * arr[:, 3]
    iw = np.clip(np.minimum(x1[:, None], x1[None, :]) - np.maximum(x0[:, None], x0[None, :]), 0, None)
    ih = np.clip(np.minimum(y1[:, None], y1[None, :]) - np.maximum(y0[:, None], y0[None, :]), 0, None)
    inter = iw * ih
    union = area[:, None] + area[None, :] - inter
    smaller = np.minimum(area[:, None], area[None, :])
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
        contained = np.where(smaller > 0, inter / np.where(smaller > 0, smaller, 1.0), 0.0)
    either_cut = cuts[:, None] | cuts[None, :]
    same = (iou > iou_threshold) | (either_cut & (contained > containment))
    order = sorted(range(n), key=lambda i: (bool(cuts[i]), -sc[i], i))
    taken = np.zeros(n, dtype=bool)
    kept: list[int] = []
    merged: list[float] = []
    for i in order:
        if taken[i]:
            continue
        group = same[i] & ~taken
        group[i] = True
        taken |= group
        kept.append(int(i))
        merged.append(float(sc[group].max()))
    return kept, merged

"""Axis-aligned boxes ``[x, y, w, h]``: overlap, suppression and matching.

Pure functions on plain sequences or ``(N, 4)`` arrays, in the ``[x, y, w, h]`` convention of
:class:`labpipe.detect.base.Detection` (``x``, ``y`` the top-left corner, in pixels).

References
----------
.. [1] M. Everingham et al., "The PASCAL Visual Object Classes (VOC) Challenge", IJCV 88 (2010):
   intersection over union and the 0.5 match threshold.
.. [2] A. Neubeck and L. Van Gool, "Efficient non-maximum suppression", ICPR 2006.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["as_boxes", "box_iou", "iou_matrix", "match_boxes", "nms"]


def as_boxes(boxes: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """``boxes`` as an ``(N, 4)`` float array of ``[x, y, w, h]``; a clear error for anything else."""
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 4), dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"boxes must have shape (N, 4) as [x, y, w, h]; given shape {arr.shape}")
    if np.any(arr[:, 2:] < 0):
        raise ValueError("box widths and heights must be >= 0")
    return arr


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``[x, y, w, h]`` boxes (0 when both are empty) [1]_.

    Examples
    --------
    >>> box_iou([0, 0, 2, 2], [1, 0, 2, 2])
    0.3333333333333333
    """
    return float(iou_matrix([a], [b])[0, 0])


def iou_matrix(
    a: Sequence[Sequence[float]] | np.ndarray, b: Sequence[Sequence[float]] | np.ndarray
) -> np.ndarray:
    """IoU of every box in ``a`` (N) with every box in ``b`` (M): an ``(N, M)`` array [1]_."""
    aa, bb = as_boxes(a), as_boxes(b)
    ax0, ay0 = aa[:, 0:1], aa[:, 1:2]
    ax1, ay1 = ax0 + aa[:, 2:3], ay0 + aa[:, 3:4]
    bx0, by0 = bb[:, 0][None, :], bb[:, 1][None, :]
    bx1, by1 = bx0 + bb[:, 2][None, :], by0 + bb[:, 3][None, :]
    iw = np.clip(np.minimum(ax1, bx1) - np.maximum(ax0, bx0), 0, None)
    ih = np.clip(np.minimum(ay1, by1) - np.maximum(ay0, by0), 0, None)
    inter = iw * ih
    union = (aa[:, 2:3] * aa[:, 3:4]) + (bb[:, 2] * bb[:, 3])[None, :] - inter
    # Two empty boxes have no area to compare: their IoU is 0, not NaN.
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def nms(
    boxes: Sequence[Sequence[float]] | np.ndarray, scores: Sequence[float], iou_threshold: float = 0.5
) -> list[int]:
    """Greedy non-maximum suppression [2]_: indices of the kept boxes, best score first.

    A box is dropped when it overlaps an already kept, higher-scoring box with IoU above
    ``iou_threshold``.

    Examples
    --------
    >>> nms([[0, 0, 10, 10], [1, 1, 10, 10], [50, 50, 5, 5]], [0.9, 0.8, 0.7])
    [0, 2]
    """
    if not 0.0 <= iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in [0, 1]; given {iou_threshold}")
    arr = as_boxes(boxes)
    sc = np.asarray(scores, dtype=np.float64)
    if sc.shape != (arr.shape[0],):
        raise ValueError(f"need one score per box; given {sc.shape[0]} scores for {arr.shape[0]} boxes")
    order = list(np.argsort(-sc, kind="stable"))
    ious = iou_matrix(arr, arr)
    keep: list[int] = []
    while order:
        i = int(order.pop(0))
        keep.append(i)
        order = [j for j in order if ious[i, j] <= iou_threshold]
    return keep


def match_boxes(
    predicted: Sequence[Sequence[float]] | np.ndarray,
    truth: Sequence[Sequence[float]] | np.ndarray,
    iou_threshold: float = 0.5,
) -> tuple[list[tuple[int, int]], list[int], list[int]]:
    """Greedy one-to-one matching by IoU, as in PASCAL VOC [1]_.

    Pairs are taken in order of decreasing IoU; each predicted and each true box is used at most
    once, and a pair counts only if its IoU is at least ``iou_threshold``.

    Returns
    -------
    matches : list of (predicted index, truth index)
    unmatched_predicted : false positives
    unmatched_truth : misses

    Examples
    --------
    >>> match_boxes([[0, 0, 10, 10], [100, 100, 5, 5]], [[1, 1, 10, 10]])
    ([(0, 0)], [1], [])
    """
    p, t = as_boxes(predicted), as_boxes(truth)
    ious = iou_matrix(p, t)
    pairs = [(ious[i, j], i, j) for i in range(p.shape[0]) for j in range(t.shape[0])]
    pairs = [x for x in pairs if x[0] >= iou_threshold and x[0] > 0]
    pairs.sort(key=lambda x: (-x[0], x[1], x[2]))
    used_p: set[int] = set()
    used_t: set[int] = set()
    matches: list[tuple[int, int]] = []
    for _, i, j in pairs:
        if i in used_p or j in used_t:
            continue
        used_p.add(i)
        used_t.add(j)
        matches.append((int(i), int(j)))
    unmatched_p = [i for i in range(p.shape[0]) if i not in used_p]
    unmatched_t = [j for j in range(t.shape[0]) if j not in used_t]
    return matches, unmatched_p, unmatched_t

"""Detection metrics: IoU, one-to-one matching at an IoU threshold, precision/recall/F1.

Boxes are ``[x, y, w, h]`` in pixels. Matching follows the PASCAL VOC / COCO convention:
detections are taken in descending score order and each is matched to the unmatched
ground-truth box with which it has the highest IoU, if that IoU is at least the threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "DetectionScores",
    "MatchResult",
    "ScoredMatch",
    "intersection_over_first",
    "iou_matrix",
    "match_detections",
    "match_with_ignore",
    "precision_recall_f1",
]

Box = Sequence[float]


def _intersections(a: Sequence[Box], b: Sequence[Box]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairwise intersection areas (N x M) of ``[x, y, w, h]`` boxes, and the areas of ``a`` (N x 1)
    and of ``b`` (M)."""
    aa = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    bb = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    if (aa[:, 2:] < 0).any() or (bb[:, 2:] < 0).any():
        raise ValueError("box widths and heights must be >= 0")
    ax0, ay0, ax1, ay1 = aa[:, 0:1], aa[:, 1:2], aa[:, 0:1] + aa[:, 2:3], aa[:, 1:2] + aa[:, 3:4]
    bx0, by0, bx1, by1 = bb[:, 0], bb[:, 1], bb[:, 0] + bb[:, 2], bb[:, 1] + bb[:, 3]
    iw = np.clip(np.minimum(ax1, bx1) - np.maximum(ax0, bx0), 0, None)
    ih = np.clip(np.minimum(ay1, by1) - np.maximum(ay0, by0), 0, None)
    return iw * ih, aa[:, 2:3] * aa[:, 3:4], bb[:, 2] * bb[:, 3]


def iou_matrix(a: Sequence[Box], b: Sequence[Box]) -> np.ndarray:
    """Pairwise intersection-over-union of ``a`` (N boxes) and ``b`` (M boxes): an N x M array.

    >>> iou_matrix([[0, 0, 2, 2]], [[1, 0, 2, 2]]).round(3).tolist()
    [[0.333]]
    """
    inter, area_a, area_b = _intersections(a, b)
    union = area_a + area_b - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def precision_recall_f1(true_positives: int, n_detections: int, n_truth: int) -> tuple[float, float, float]:
    """Precision (1.0 when nothing was detected: no false claims), recall (1.0 when there was
    nothing to find) and their harmonic mean F1 (0.0 when both are 0).

    >>> precision_recall_f1(3, 4, 6)
    (0.75, 0.5, 0.6)
    """
    precision = true_positives / n_detections if n_detections else 1.0
    recall = true_positives / n_truth if n_truth else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


class DetectionScores:
    """Precision, recall and F1 of anything that counts ``true_positives``, ``n_detections`` and
    ``n_truth`` (one image's match, or a pooled report)."""

    true_positives: int
    n_detections: int
    n_truth: int

    @property
    def precision(self) -> float:
        """TP / detections; 1.0 when nothing was detected (no false claims were made)."""
        return precision_recall_f1(self.true_positives, self.n_detections, self.n_truth)[0]

    @property
    def recall(self) -> float:
        """TP / truth; 1.0 when there was nothing to find."""
        return precision_recall_f1(self.true_positives, self.n_detections, self.n_truth)[1]

    @property
    def f1(self) -> float:
        return precision_recall_f1(self.true_positives, self.n_detections, self.n_truth)[2]


@dataclass(frozen=True)
class MatchResult(DetectionScores):
    """Outcome of matching detections to ground truth at one IoU threshold."""

    matches: list[tuple[int, int, float]]
    """(detection index, truth index, IoU) for every true positive."""
    n_detections: int
    n_truth: int

    @property
    def true_positives(self) -> int:
        return len(self.matches)

    @property
    def false_positives(self) -> int:
        return self.n_detections - self.true_positives

    @property
    def false_negatives(self) -> int:
        return self.n_truth - self.true_positives

    @property
    def matched_truth(self) -> set[int]:
        return {t for _, t, _ in self.matches}


def match_detections(
    detections: Sequence[Box],
    truth: Sequence[Box],
    scores: Sequence[float] | None = None,
    iou_threshold: float = 0.5,
) -> MatchResult:
    """Greedy one-to-one matching of detections to truth boxes, best score first.

    >>> r = match_detections([[0, 0, 10, 10], [50, 50, 5, 5]], [[1, 1, 10, 10]])
    >>> (r.true_positives, r.false_positives, r.false_negatives)
    (1, 1, 0)
    """
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in (0, 1], given {iou_threshold}")
    n_det, n_truth = len(detections), len(truth)
    if scores is not None and len(scores) != n_det:
        raise ValueError(f"{len(scores)} scores given for {n_det} detections")
    if n_det == 0 or n_truth == 0:
        return MatchResult([], n_det, n_truth)
    ious = iou_matrix(detections, truth)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable") if scores else range(n_det)
    taken = np.zeros(n_truth, dtype=bool)
    matches: list[tuple[int, int, float]] = []
    for d in order:
        row = np.where(taken, -1.0, ious[d])
        t = int(np.argmax(row))
        if row[t] >= iou_threshold:
            taken[t] = True
            matches.append((int(d), t, float(row[t])))
    return MatchResult(matches, n_det, n_truth)


def intersection_over_first(a: Sequence[Box], b: Sequence[Box]) -> np.ndarray:
    """Pairwise share of each box of ``a`` that lies inside each box of ``b``: an N x M array.

    COCO scores a detection against a crowd or ignore region by this ratio (intersection over the
    detection's own area) rather than by IoU, so that a small detection inside a large ignore
    region is ignored (``iscrowd`` in ``pycocotools/cocoeval.py``; T.-Y. Lin et al., ECCV 2014).

    >>> intersection_over_first([[0, 0, 2, 2]], [[1, 0, 10, 10]]).round(3).tolist()
    [[0.5]]
    """
    inter, area, _ = _intersections(a, b)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(area > 0, inter / area, 0.0)


DetectionStatus = str
"""``"tp"`` (matched to a specimen), ``"ignored"`` (on an ignore region), ``"debris"`` (a false
positive on a debris object) or ``"fp"`` (any other false positive)."""


@dataclass(frozen=True)
class ScoredMatch:
    """One image scored against specimens, ignore regions and debris (:func:`match_with_ignore`)."""

    status: list[DetectionStatus]
    """Per detection, in the order given."""
    matches: list[tuple[int, int, float]]
    """(detection index, specimen index, IoU) for every true positive."""
    n_truth: int
    """Specimens to find (ignore regions excluded)."""

    @property
    def true_positives(self) -> int:
        return len(self.matches)

    @property
    def false_positives(self) -> int:
        """Every counted detection that is not a true positive (debris false positives included)."""
        return sum(s in ("fp", "debris") for s in self.status)

    @property
    def debris_false_positives(self) -> int:
        return sum(s == "debris" for s in self.status)

    @property
    def ignored(self) -> int:
        return sum(s == "ignored" for s in self.status)

    @property
    def n_counted(self) -> int:
        """Detections that count (all but those on ignore regions)."""
        return len(self.status) - self.ignored

    @property
    def false_negatives(self) -> int:
        return self.n_truth - self.true_positives

    @property
    def missed(self) -> list[int]:
        """Indices of the specimens no detection matched."""
        found = {t for _, t, _ in self.matches}
        return [i for i in range(self.n_truth) if i not in found]


def match_with_ignore(
    detections: Sequence[Box],
    scores: Sequence[float],
    specimens: Sequence[Box],
    ignore: Sequence[Box] = (),
    debris: Sequence[Box] = (),
    iou_threshold: float = 0.5,
    *,
    region_overlap: float = 0.5,
) -> ScoredMatch:
    """Score one image's detections the COCO way, with ignore regions and debris.

    1. Detections, best score first, are matched one to one to specimens (:func:`match_detections`).
    2. An unmatched detection that overlaps an ignore region (IoU at least ``iou_threshold``, or at
       least ``region_overlap`` of the detection inside it) is *ignored*: neither a hit nor a false
       positive. Misses of ignore regions are not counted either (they are not in ``specimens``).
    3. Every other unmatched detection is a false positive; one that overlaps a debris object by
       the same rule is a *debris* false positive, reported apart but still a false positive.

    Examples
    --------
    One specimen found, one detection on an uncertain speck, one on a stain:

    >>> m = match_with_ignore([[0, 0, 10, 10], [50, 50, 4, 4], [80, 80, 9, 9]], [0.9, 0.5, 0.4],
    ...                       [[1, 1, 10, 10]], ignore=[[49, 49, 6, 6]], debris=[[80, 80, 10, 10]])
    >>> m.status, m.true_positives, m.false_positives, m.debris_false_positives
    (['tp', 'ignored', 'debris'], 1, 1, 1)
    """
    if len(scores) != len(detections):
        raise ValueError(f"{len(scores)} scores given for {len(detections)} detections")
    base = match_detections(detections, specimens, scores, iou_threshold)
    status: list[DetectionStatus] = ["fp"] * len(detections)
    for d, _, _ in base.matches:
        status[d] = "tp"
    rest = [i for i, s in enumerate(status) if s == "fp"]
    if rest:
        boxes = [detections[i] for i in rest]

        def overlapping(regions: Sequence[Box]) -> np.ndarray:
            if not len(regions):
                return np.zeros(len(rest), dtype=bool)
            hit = (iou_matrix(boxes, regions) >= iou_threshold) | (
                intersection_over_first(boxes, regions) >= region_overlap
            )
            return hit.any(axis=1)

        on_ignore, on_debris = overlapping(ignore), overlapping(debris)
        for k, i in enumerate(rest):
            if on_ignore[k]:
                status[i] = "ignored"
            elif on_debris[k]:
                status[i] = "debris"
    return ScoredMatch(status, base.matches, len(specimens))

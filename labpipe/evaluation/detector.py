"""Evaluate a detector against COCO ground truth: precision, recall, F1, AP50, AP50:95, count error.

- :func:`average_precision`: COCO-style AP at one IoU threshold (101-point interpolated), pooled
  over images, from scored detections and truth boxes. Pure; tested on tiny inputs.
- :func:`coco_ap`: AP at IoU 0.5 and the mean over IoU 0.50, 0.55, ..., 0.95.
- :func:`evaluate_detector`: runs a detector over the images of a COCO file through the production
  path (:func:`labpipe.analysis.detect_specimens`: the reader, the overview or the detector's own
  tiles) and reports the metrics.

Matching follows COCO: per image, detections in descending score order, each matched to the
unmatched truth box with which it has the highest IoU, if that IoU is at least the threshold.
Precision, recall and F1 are at IoU 0.5 and the detector's own score threshold; AP ranks the
detections the detector returned (so it is bounded by the recall at that threshold).

References
----------
.. [1] M. Everingham et al., "The PASCAL Visual Object Classes (VOC) Challenge", IJCV 88 (2010).
.. [2] T.-Y. Lin et al., "Microsoft COCO: Common Objects in Context", ECCV 2014; the evaluation code
   ``pycocotools/cocoeval.py`` (101 recall points, precision made monotone from the right).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from labpipe.metrics.detection import match_detections, precision_recall_f1

__all__ = [
    "COCO_IOU_THRESHOLDS",
    "DetectorReport",
    "ImageResult",
    "average_precision",
    "coco_ap",
    "evaluate_detector",
]

COCO_IOU_THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
"""0.50, 0.55, ..., 0.95 (AP50:95 is the mean AP over these)."""
_RECALL_POINTS = np.linspace(0.0, 1.0, 101)

Boxes = Sequence[Sequence[float]]


def average_precision(
    detections: Sequence[tuple[Boxes, Sequence[float]]],
    truth: Sequence[Boxes],
    iou_threshold: float = 0.5,
) -> float:
    """COCO-style average precision at one IoU threshold, over a set of images [2]_.

    Parameters
    ----------
    detections:
        Per image, ``(boxes, scores)``: ``[x, y, w, h]`` boxes and their scores.
    truth:
        Per image, the true ``[x, y, w, h]`` boxes.
    iou_threshold:
        A detection is a true positive when matched to a truth box with at least this IoU.

    Returns
    -------
    float
        The mean, over the 101 recall levels 0, 0.01, ..., 1, of the interpolated precision (the
        highest precision at that recall or beyond; 0 beyond the highest recall reached). NaN when
        there is no truth box at all (AP is undefined; COCO reports -1).

    Examples
    --------
    One image, two objects; the best detection is right, the second is a false positive, the third
    finds the other object:

    >>> round(average_precision([([[0, 0, 10, 10], [50, 50, 5, 5], [20, 20, 10, 10]], [0.9, 0.8, 0.7])],
    ...                         [[[0, 0, 10, 10], [20, 20, 10, 10]]]), 4)
    0.835
    """
    if len(detections) != len(truth):
        raise ValueError(f"{len(detections)} images of detections but {len(truth)} of truth")
    n_truth = sum(len(t) for t in truth)
    if n_truth == 0:
        return float("nan")
    all_scores: list[float] = []
    all_tp: list[bool] = []
    for (boxes, scores), gt in zip(detections, truth, strict=True):
        if len(boxes) != len(scores):
            raise ValueError(f"{len(boxes)} boxes but {len(scores)} scores")
        if len(boxes) == 0:
            continue
        result = match_detections(list(boxes), list(gt), list(scores), iou_threshold)
        matched = {d for d, _, _ in result.matches}
        all_scores.extend(float(s) for s in scores)
        all_tp.extend(i in matched for i in range(len(boxes)))
    if not all_scores:
        return 0.0
    order = np.argsort(-np.asarray(all_scores), kind="mergesort")
    tp = np.asarray(all_tp, dtype=np.float64)[order]
    tp_cum = np.cumsum(tp)
    fp_cum = np.cumsum(1.0 - tp)
    recall = tp_cum / n_truth
    precision = tp_cum / np.maximum(tp_cum + fp_cum, np.finfo(np.float64).eps)
    # Interpolate: precision at recall r is the best precision at any recall >= r.
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    idx = np.searchsorted(recall, _RECALL_POINTS, side="left")
    sampled = np.where(idx < len(precision), precision[np.minimum(idx, len(precision) - 1)], 0.0)
    return float(sampled.mean())


def coco_ap(
    detections: Sequence[tuple[Boxes, Sequence[float]]], truth: Sequence[Boxes]
) -> tuple[float, float]:
    """``(AP50, AP50:95)``: AP at IoU 0.5 and the mean over :data:`COCO_IOU_THRESHOLDS` [2]_.

    Examples
    --------
    >>> coco_ap([([[0, 0, 10, 10]], [0.9])], [[[0, 0, 10, 10]]])
    (1.0, 1.0)
    """
    ap50 = average_precision(detections, truth, 0.5)
    aps = [average_precision(detections, truth, t) for t in COCO_IOU_THRESHOLDS]
    return ap50, float(np.mean(aps))


@dataclass
class ImageResult:
    """One image: truth and detection counts, true positives at IoU 0.5, and the time taken."""

    file_name: str
    n_truth: int
    n_detections: int
    true_positives: int
    seconds: float

    @property
    def count_error(self) -> int:
        """Detections minus true specimens (negative: specimens missed)."""
        return self.n_detections - self.n_truth


@dataclass
class DetectorReport:
    """Metrics of one detector on one COCO set."""

    detector: str
    images: list[ImageResult] = field(default_factory=list)
    ap50: float = float("nan")
    ap50_95: float = float("nan")

    @property
    def n_truth(self) -> int:
        return sum(r.n_truth for r in self.images)

    @property
    def n_detections(self) -> int:
        return sum(r.n_detections for r in self.images)

    @property
    def true_positives(self) -> int:
        return sum(r.true_positives for r in self.images)

    @property
    def precision(self) -> float:
        return precision_recall_f1(self.true_positives, self.n_detections, self.n_truth)[0]

    @property
    def recall(self) -> float:
        return precision_recall_f1(self.true_positives, self.n_detections, self.n_truth)[1]

    @property
    def f1(self) -> float:
        return precision_recall_f1(self.true_positives, self.n_detections, self.n_truth)[2]

    @property
    def mean_abs_count_error(self) -> float:
        return float(np.mean([abs(r.count_error) for r in self.images])) if self.images else float("nan")

    @property
    def mean_count_error(self) -> float:
        return float(np.mean([r.count_error for r in self.images])) if self.images else float("nan")

    @property
    def seconds_per_image(self) -> float:
        return float(np.mean([r.seconds for r in self.images])) if self.images else float("nan")

    def as_dict(self) -> dict:
        def num(v: float) -> float | None:
            return None if v != v else round(v, 4)  # NaN -> null

        return {
            "detector": self.detector,
            "images": len(self.images),
            "truth": self.n_truth,
            "detections": self.n_detections,
            "true_positives": self.true_positives,
            "precision": num(self.precision),
            "recall": num(self.recall),
            "f1": num(self.f1),
            "ap50": num(self.ap50),
            "ap50_95": num(self.ap50_95),
            "mean_abs_count_error": num(self.mean_abs_count_error),
            "mean_count_error": num(self.mean_count_error),
            "seconds_per_image": num(self.seconds_per_image),
            "per_image": [
                {
                    "file_name": r.file_name,
                    "truth": r.n_truth,
                    "detections": r.n_detections,
                    "true_positives": r.true_positives,
                    "count_error": r.count_error,
                    "seconds": round(r.seconds, 3),
                }
                for r in self.images
            ],
        }


def evaluate_detector(
    coco_path: Path,
    images_dir: Path,
    detector: object,
    overview_max_side: int = 4096,
    *,
    um_per_px_fallback: float | None = None,
    progress: bool = True,
) -> DetectorReport:
    """Run ``detector`` on every image of the COCO file ``coco_path`` (files in ``images_dir``).

    Every annotation counts as a specimen (a one-class detector). Images go through the production
    path (:func:`labpipe.analysis.detect_specimens`), boxes in full-resolution pixels.
    """
    from labpipe.analysis import detect_specimens
    from labpipe.detect.detr_data import read_coco_set
    from labpipe.imaging import open_image

    entries = read_coco_set(Path(coco_path), category=None)
    report = DetectorReport(str(getattr(detector, "version", type(detector).__name__)))
    all_dets: list[tuple[list[list[float]], list[float]]] = []
    all_truth: list[list[tuple[float, float, float, float]]] = []
    for entry in tqdm(entries, desc="detect", disable=not progress, unit="img"):
        path = Path(images_dir) / entry.file_name
        t0 = time.perf_counter()
        with open_image(path, um_per_px_fallback=entry.um_per_px or um_per_px_fallback) as plate:
            found, _ = detect_specimens(detector, plate, overview_max_side)  # type: ignore[arg-type]
        seconds = time.perf_counter() - t0
        boxes = [list(map(float, b)) for b, _ in found]
        scores = [float(s) for _, s in found]
        result = match_detections(boxes, entry.boxes, scores, 0.5)
        report.images.append(
            ImageResult(entry.file_name, len(entry.boxes), len(boxes), result.true_positives, seconds)
        )
        all_dets.append((boxes, scores))
        all_truth.append(entry.boxes)
    report.ap50, report.ap50_95 = coco_ap(all_dets, all_truth)
    return report

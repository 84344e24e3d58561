"""Evaluate a detector against COCO ground truth: precision, recall, F1, AP50, AP50:95, count error.

- :func:`average_precision`: COCO-style AP at one IoU threshold (101-point interpolated), pooled
  over images, from scored detections and truth boxes. Pure; tested on tiny inputs.
- :func:`coco_ap`: AP at IoU 0.5 and the mean over IoU 0.50, 0.55, ..., 0.95.
- :func:`evaluate_images`: runs a detector over images with known truth
  (:mod:`labpipe.evaluation.truth`: COCO boxes with ignore regions and debris, Inselect boxes, or
  known counts) through the production path (:func:`labpipe.analysis.detect_specimens`: the
  reader with EXIF orientation, the overview or the detector's own tiles) and reports the metrics
  per image and pooled; :func:`evaluate_detector` does it for one COCO file.

Matching follows COCO (:func:`labpipe.metrics.detection.match_with_ignore`): per image,
detections in descending score order, each matched to the unmatched specimen with which it has
the highest IoU, if that IoU is at least the threshold; unmatched detections on ignore regions
are dropped, those on debris are false positives counted apart. Precision, recall and F1 are at
IoU 0.5 and the detector's own score threshold; AP ranks the detections the detector returned
(so it is bounded by the recall at that threshold).

References
----------
.. [1] M. Everingham et al., "The PASCAL Visual Object Classes (VOC) Challenge", IJCV 88 (2010).
.. [2] T.-Y. Lin et al., "Microsoft COCO: Common Objects in Context", ECCV 2014; the evaluation code
   ``pycocotools/cocoeval.py`` (101 recall points, precision made monotone from the right).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from labpipe.evaluation.truth import TruthImage, read_coco_truth, to_displayed_frame
from labpipe.metrics.detection import DetectionScores, match_with_ignore

__all__ = [
    "COCO_IOU_THRESHOLDS",
    "DetectorReport",
    "ImageResult",
    "average_precision",
    "coco_ap",
    "evaluate_detector",
    "evaluate_images",
    "evaluate_with_and_without_gate",
    "gate_keeps",
    "touching_pairs",
]

COCO_IOU_THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
"""0.50, 0.55, ..., 0.95 (AP50:95 is the mean AP over these)."""
_RECALL_POINTS = np.linspace(0.0, 1.0, 101)

Boxes = Sequence[Sequence[float]]


def average_precision(
    detections: Sequence[tuple[Boxes, Sequence[float]]],
    truth: Sequence[Boxes],
    iou_threshold: float = 0.5,
    ignore: Sequence[Boxes] | None = None,
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
    ignore:
        Per image, ignore regions: an unmatched detection on one is left out of the ranking.

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
    regions = ignore if ignore is not None else [[] for _ in truth]
    if len(regions) != len(truth):
        raise ValueError(f"{len(regions)} images of ignore regions but {len(truth)} of truth")
    for (boxes, scores), gt, ign in zip(detections, truth, regions, strict=True):
        if len(boxes) != len(scores):
            raise ValueError(f"{len(boxes)} boxes but {len(scores)} scores")
        if len(boxes) == 0:
            continue
        result = match_with_ignore(list(boxes), list(scores), list(gt), list(ign), (), iou_threshold)
        for score, status in zip(scores, result.status, strict=True):
            if status != "ignored":
                all_scores.append(float(score))
                all_tp.append(status == "tp")
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
    detections: Sequence[tuple[Boxes, Sequence[float]]],
    truth: Sequence[Boxes],
    ignore: Sequence[Boxes] | None = None,
) -> tuple[float, float]:
    """``(AP50, AP50:95)``: AP at IoU 0.5 and the mean over :data:`COCO_IOU_THRESHOLDS` [2]_.

    Examples
    --------
    >>> coco_ap([([[0, 0, 10, 10]], [0.9])], [[[0, 0, 10, 10]]])
    (1.0, 1.0)
    """
    ap50 = average_precision(detections, truth, 0.5, ignore)
    aps = [average_precision(detections, truth, t, ignore) for t in COCO_IOU_THRESHOLDS]
    return ap50, float(np.mean(aps))


@dataclass
class ImageResult:
    """One image: what was to be found, what the detector returned and how each detection scored."""

    file_name: str
    n_truth: int
    n_detections: int
    """Detections that count (those on ignore regions left out)."""
    true_positives: int
    seconds: float
    false_positives: int = 0
    debris_false_positives: int = 0
    ignored: int = 0
    expected_count: int | None = None
    """For images known only by their count (``n_truth`` is then that count)."""
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    status: list[str] = field(default_factory=list)
    """Per detection: ``tp``, ``fp``, ``debris`` or ``ignored`` (empty for counted images)."""
    truth: TruthImage | None = None
    """The truth in the displayed frame of the image (for overlays)."""
    found: list[bool] = field(default_factory=list)
    """Per specimen of the truth: matched by a detection."""
    gate_rejected: int = 0
    """Detections a specimen-or-not gate rejected (not counted, not in ``boxes``)."""

    @property
    def count_error(self) -> int:
        """Detections minus true specimens (negative: specimens missed)."""
        return self.n_detections - self.n_truth

    @property
    def right_count(self) -> bool:
        """The detector found exactly as many objects as there are specimens."""
        return self.n_detections == self.n_truth


@dataclass
class DetectorReport(DetectionScores):
    """Metrics of one detector on one set of images (pooled over them, and per image)."""

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
    def debris_false_positives(self) -> int:
        return sum(r.debris_false_positives for r in self.images)

    @property
    def ignored(self) -> int:
        return sum(r.ignored for r in self.images)

    @property
    def gate_rejected(self) -> int:
        return sum(r.gate_rejected for r in self.images)

    @property
    def right_count_share(self) -> float:
        """Share of images where the number of detections equals the number of specimens."""
        return float(np.mean([r.right_count for r in self.images])) if self.images else float("nan")

    @property
    def mean_abs_count_error(self) -> float:
        return float(np.mean([abs(r.count_error) for r in self.images])) if self.images else float("nan")

    @property
    def mean_count_error(self) -> float:
        return float(np.mean([r.count_error for r in self.images])) if self.images else float("nan")

    @property
    def seconds_per_image(self) -> float:
        return float(np.mean([r.seconds for r in self.images])) if self.images else float("nan")

    def recall_by(self, attribute: str) -> dict[str, tuple[int, int]]:
        """``{value: (found, total)}`` over specimens grouped by one truth attribute (``taxon``)."""
        out: dict[str, list[int]] = {}
        for r in self.images:
            if r.truth is None:
                continue
            for attrs, hit in zip(r.truth.attributes, r.found, strict=True):
                key = str(attrs.get(attribute, "unknown"))
                cell = out.setdefault(key, [0, 0])
                cell[0] += int(hit)
                cell[1] += 1
        return {k: (v[0], v[1]) for k, v in sorted(out.items())}

    def touching_split(self) -> tuple[int, int]:
        """``(pairs with both members found, touching pairs)`` over specimens marked ``touching``."""
        both = total = 0
        for r in self.images:
            if r.truth is None:
                continue
            for a, b in touching_pairs(r.truth):
                total += 1
                both += int(r.found[a] and r.found[b])
        return both, total

    def as_dict(self) -> dict:
        def num(v: float) -> float | None:
            return None if v != v else round(v, 4)  # NaN -> null

        split, pairs = self.touching_split()
        return {
            "detector": self.detector,
            "images": len(self.images),
            "truth": self.n_truth,
            "detections": self.n_detections,
            "true_positives": self.true_positives,
            "debris_false_positives": self.debris_false_positives,
            "ignored": self.ignored,
            "gate_rejected": self.gate_rejected,
            "precision": num(self.precision),
            "recall": num(self.recall),
            "f1": num(self.f1),
            "ap50": num(self.ap50),
            "ap50_95": num(self.ap50_95),
            "right_count_share": num(self.right_count_share),
            "mean_abs_count_error": num(self.mean_abs_count_error),
            "mean_count_error": num(self.mean_count_error),
            "seconds_per_image": num(self.seconds_per_image),
            "recall_by_taxon": {k: {"found": f, "total": t} for k, (f, t) in self.recall_by("taxon").items()},
            "touching_pairs": {"split": split, "total": pairs},
            "per_image": [
                {
                    "file_name": r.file_name,
                    "truth": r.n_truth,
                    "detections": r.n_detections,
                    "true_positives": r.true_positives,
                    "false_positives": r.false_positives,
                    "debris_false_positives": r.debris_false_positives,
                    "ignored": r.ignored,
                    "gate_rejected": r.gate_rejected,
                    "count_error": r.count_error,
                    "seconds": round(r.seconds, 3),
                }
                for r in self.images
            ],
        }


def touching_pairs(truth: TruthImage) -> list[tuple[int, int]]:
    """Pairs of specimens marked ``touching``: each with the touching specimen nearest to it.

    A synthetic plate marks both members of a touching pair; the partner is the nearest other
    touching specimen (box centres), taken greedily, closest pairs first.

    >>> t = TruthImage(path=Path("p"), specimens=[(0, 0, 10, 10), (10, 0, 10, 10), (90, 90, 5, 5)],
    ...                attributes=[{"touching": True}, {"touching": True}, {}])
    >>> touching_pairs(t)
    [(0, 1)]
    """
    members = [i for i, a in enumerate(truth.attributes) if a.get("touching")]
    if len(members) < 2:
        return []
    centres = np.array([[x + w / 2, y + h / 2] for x, y, w, h in (truth.specimens[i] for i in members)])
    dist = np.hypot(*(centres[:, None, :] - centres[None, :, :]).transpose(2, 0, 1))
    np.fill_diagonal(dist, np.inf)
    pairs: list[tuple[int, int]] = []
    used: set[int] = set()
    for flat in np.argsort(dist, axis=None):
        a, b = divmod(int(flat), len(members))
        if a < b and a not in used and b not in used and np.isfinite(dist[a, b]):
            pairs.append((members[a], members[b]))
            used.update((a, b))
    return sorted(pairs)


def gate_keeps(gate: object, plate: object, boxes: Sequence[Sequence[int]], margin: float) -> np.ndarray:
    """``(n,)`` booleans: the specimen-or-not ``gate`` keeps the crop of each full-resolution box of
    ``plate``, cut as the pipeline cuts it (:func:`labpipe.analysis.cut_square`)."""
    from labpipe.analysis import cut_square

    crops = [cut_square(plate, tuple(int(v) for v in b), margin) for b in boxes]  # type: ignore[arg-type]
    features = gate.features(crops)  # type: ignore[attr-defined]
    return ~np.asarray(gate.rejects(features), dtype=bool)  # type: ignore[attr-defined]


def _detections(
    truths: Sequence[TruthImage],
    detector: object,
    overview_max_side: int,
    um_per_px_fallback: float | None,
    progress: bool,
    description: str,
    gate: object | None,
    margin: float,
) -> Iterator[tuple[TruthImage, list, np.ndarray, float]]:
    """Per image of ``truths``: its truth in the displayed frame, the detections (production path),
    which of them ``gate`` keeps (all without one) and the seconds taken."""
    from labpipe.analysis import detect_specimens
    from labpipe.imaging import open_image

    for entry in tqdm(truths, desc=description, disable=not progress, unit="img"):
        t0 = time.perf_counter()
        with open_image(entry.path, um_per_px_fallback=entry.um_per_px or um_per_px_fallback) as plate:
            found, _ = detect_specimens(detector, plate, overview_max_side)  # type: ignore[arg-type]
            truth = to_displayed_frame(entry, plate.stored_size, plate.orientation)
            kept = np.ones(len(found), dtype=bool)
            if gate is not None and found:
                kept = gate_keeps(gate, plate, [b for b, _ in found], margin)
        yield truth, found, kept, time.perf_counter() - t0


def _scored_image(truth: TruthImage, found: list, seconds: float, gate_rejected: int) -> ImageResult:
    """One image's detections scored against its truth (by IoU, or by its count)."""
    boxes = [tuple(float(v) for v in b) for b, _ in found]
    scores = [float(s) for _, s in found]
    if not truth.has_boxes:
        assert truth.expected_count is not None
        return ImageResult(
            truth.file_name,
            truth.expected_count,
            len(boxes),
            min(len(boxes), truth.expected_count),
            seconds,
            false_positives=max(0, len(boxes) - truth.expected_count),
            expected_count=truth.expected_count,
            boxes=boxes,  # type: ignore[arg-type]
            scores=scores,
            truth=truth,
            gate_rejected=gate_rejected,
        )
    m = match_with_ignore(boxes, scores, truth.specimens, truth.ignore, truth.debris, 0.5)
    matched = {t for _, t, _ in m.matches}
    return ImageResult(
        truth.file_name,
        m.n_truth,
        m.n_counted,
        m.true_positives,
        seconds,
        false_positives=m.false_positives,
        debris_false_positives=m.debris_false_positives,
        ignored=m.ignored,
        boxes=boxes,  # type: ignore[arg-type]
        scores=scores,
        status=m.status,
        truth=truth,
        found=[i in matched for i in range(m.n_truth)],
        gate_rejected=gate_rejected,
    )


def _report(detector: object, images: list[ImageResult]) -> DetectorReport:
    """The pooled report of scored images; AP over the images with boxes."""
    report = DetectorReport(str(getattr(detector, "version", type(detector).__name__)), images=images)
    boxed = [r for r in images if r.truth is not None and r.truth.has_boxes]
    if boxed:
        report.ap50, report.ap50_95 = coco_ap(
            [([list(b) for b in r.boxes], r.scores) for r in boxed],
            [r.truth.specimens for r in boxed],  # type: ignore[union-attr]
            [r.truth.ignore for r in boxed],  # type: ignore[union-attr]
        )
    return report


def evaluate_images(
    truths: Sequence[TruthImage],
    detector: object,
    overview_max_side: int = 4096,
    *,
    um_per_px_fallback: float | None = None,
    progress: bool = True,
    description: str = "detect",
    gate: object | None = None,
    margin: float = 0.4,
) -> DetectorReport:
    """Run ``detector`` on every image of ``truths`` and score it (see the module docstring).

    Images go through the production path (:func:`labpipe.analysis.detect_specimens`), boxes in
    full-resolution pixels of the displayed frame; the truth is turned into that frame first
    (:func:`~labpipe.evaluation.truth.to_displayed_frame`). Images known only by their count are
    scored by their count; AP and IoU matching use the images with boxes.

    With ``gate`` (a :class:`~labpipe.classify.gate.SpecimenGate`), each detection's crop is cut as
    the pipeline cuts it (``margin``) and a detection the gate rejects is not counted: the scores
    are those of what the lab's counts hold.
    """
    images = [
        _scored_image(truth, [f for f, k in zip(found, kept, strict=True) if k], seconds, int((~kept).sum()))
        for truth, found, kept, seconds in _detections(
            truths, detector, overview_max_side, um_per_px_fallback, progress, description, gate, margin
        )
    ]
    return _report(detector, images)


def evaluate_with_and_without_gate(
    truths: Sequence[TruthImage],
    detector: object,
    gate: object,
    overview_max_side: int = 4096,
    *,
    um_per_px_fallback: float | None = None,
    progress: bool = True,
    description: str = "detect",
    margin: float = 0.4,
) -> tuple[DetectorReport, DetectorReport]:
    """``(detector alone, detector behind gate)``: :func:`evaluate_images` both ways from one
    detection pass per image (the seconds, gate included, are those of the pass)."""
    alone: list[ImageResult] = []
    gated: list[ImageResult] = []
    for truth, found, kept, seconds in _detections(
        truths, detector, overview_max_side, um_per_px_fallback, progress, description, gate, margin
    ):
        alone.append(_scored_image(truth, found, seconds, 0))
        gated.append(
            _scored_image(
                truth, [f for f, k in zip(found, kept, strict=True) if k], seconds, int((~kept).sum())
            )
        )
    return _report(detector, alone), _report(detector, gated)


def evaluate_detector(
    coco_path: Path,
    images_dir: Path,
    detector: object,
    overview_max_side: int = 4096,
    *,
    um_per_px_fallback: float | None = None,
    progress: bool = True,
) -> DetectorReport:
    """:func:`evaluate_images` on every image of the COCO file ``coco_path`` (files in ``images_dir``).

    A category named ``debris`` is debris, ``iscrowd`` or ``attributes.uncertain`` marks ignore
    regions, every other annotation is a specimen (:func:`~labpipe.evaluation.truth.read_coco_truth`).
    """
    truths = read_coco_truth(Path(coco_path), Path(images_dir))
    return evaluate_images(
        truths, detector, overview_max_side, um_per_px_fallback=um_per_px_fallback, progress=progress
    )

"""Fine-tune the lab's detector on its own reviewed plates, and say what it changed.

``labpipe train detector --from-reviews`` (or ``--coco EXPORT --holdout N``) runs
:func:`finetune_on_plates`:

1. the reviewed plates (``labpipe export coco``: ``specimen`` boxes, ``debris`` negatives, ignore
   regions) are split into plates to train on and plates held out for scoring
   (:func:`default_holdout`, :func:`split_plates`, :func:`split_document`: seeded, so the same
   plates are held out every time for the same seed);
2. the starting detector (the lab's current DETR, or a new RT-DETR whose backbone starts from the
   offline ImageNet weights) is fine-tuned on the training plates
   (:func:`labpipe.detect.detr_train.train_detector`: specimen boxes only, at the plates' own scale
   mapped to the model's working scale, random tiles as cut at inference). The checkpoint is
   chosen on (up to :data:`VALIDATION_PLATES` of) the training plates themselves: the held-out
   plates are only ever scored;
3. the classical detector, the starting DETR and the fine-tuned one are scored on the held-out
   plates (precision, recall, count error at IoU 0.5 with debris and ignore regions,
   :func:`labpipe.evaluation.detector.evaluate_images`), and the DETRs also on a few synthetic
   plates with exact boxes, to show what the fine-tune forgot (:func:`before_after_rows`).

The command then registers the fine-tuned model as a detector row, so ``labpipe models
set-default VERSION`` makes it the daemon's detector.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "VALIDATION_PLATES",
    "BeforeAfterRow",
    "FinetuneResult",
    "before_after_rows",
    "default_holdout",
    "finetune_on_plates",
    "format_before_after",
    "split_document",
    "split_plates",
    "synthetic_check_set",
    "training_minutes",
]


VALIDATION_PLATES = 4
"""Training plates the checkpoint is chosen on (the first ones of the split)."""


def default_holdout(n_plates: int, fraction: float = 0.2) -> int:
    """How many of ``n_plates`` reviewed plates to hold out for scoring: ``fraction`` of them,
    rounded, at least one when there are two or more (one plate is all training), and never all.

    >>> [default_holdout(n) for n in (0, 1, 2, 4, 5, 10, 20, 23)]
    [0, 0, 1, 1, 1, 2, 4, 5]
    """
    if n_plates < 2:
        return 0
    return min(n_plates - 1, max(1, round(n_plates * fraction)))


def training_minutes(max_minutes: float, spent_seconds: float, reserve_seconds: float) -> float:
    """What is left of a whole-command budget of ``max_minutes`` for training, after
    ``spent_seconds`` already spent (reading, splitting, scoring before) and ``reserve_seconds``
    kept for the scoring after; at least 6 seconds, so a spent budget still makes one step.
    ``max_minutes`` 0 means no budget (0 is returned).

    >>> training_minutes(15, 60, 120), training_minutes(1, 50, 30), training_minutes(0, 999, 999)
    (12.0, 0.1, 0.0)
    """
    if max_minutes <= 0:
        return 0.0
    return round(max(0.1, max_minutes - (spent_seconds + reserve_seconds) / 60.0), 3)


def split_plates(keys: Sequence[Any], holdout: int, seed: int = 0) -> tuple[list[Any], list[Any]]:
    """``(train, held_out)``: ``holdout`` of ``keys`` drawn with ``seed``, each list in input order.

    Deterministic for a seed, whatever order ``keys`` come in (they are sorted first).

    >>> set(split_plates([5, 1, 3, 2, 4], 2)[1]) == set(split_plates([1, 2, 3, 4, 5], 2)[1])
    True
    >>> train, held = split_plates(["a", "b", "c"], 1)
    >>> sorted(train + held), len(held)
    (['a', 'b', 'c'], 1)
    """
    ordered = sorted(keys)
    if holdout < 0 or (ordered and holdout >= len(ordered)):
        raise ValueError(
            f"cannot hold out {holdout} of {len(ordered)} plates: at least one must be left to train on"
        )
    order = np.random.default_rng(seed).permutation(len(ordered))
    held = {ordered[i] for i in order[:holdout]}
    return [k for k in keys if k not in held], [k for k in keys if k in held]


def split_document(doc: dict[str, Any], held_ids: set[int]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A COCO document cut in two by image id: ``(the others, those in held_ids)``; categories and
    info are kept in both.

    >>> doc = {"images": [{"id": 1}, {"id": 2}], "annotations": [{"id": 1, "image_id": 2}],
    ...        "categories": [{"id": 1, "name": "specimen"}]}
    >>> a, b = split_document(doc, {2})
    >>> [i["id"] for i in a["images"]], a["annotations"], [x["image_id"] for x in b["annotations"]]
    ([1], [], [2])
    """

    def part(keep: bool) -> dict[str, Any]:
        images = [i for i in doc.get("images", []) if (i["id"] in held_ids) == keep]
        ids = {i["id"] for i in images}
        annotations = [a for a in doc.get("annotations", []) if a.get("image_id") in ids]
        return {**doc, "images": images, "annotations": annotations}

    return part(False), part(True)


@dataclass(frozen=True)
class BeforeAfterRow:
    """One detector scored on one set of plates."""

    data: str
    """``held-out reviewed plates`` or ``synthetic plates``."""
    role: str
    """``classical``, ``before`` (the starting DETR) or ``after`` (the fine-tuned DETR)."""
    detector: str
    images: int
    truth: int
    detections: int
    precision: float | None
    recall: float | None
    mean_abs_count_error: float | None
    seconds_per_image: float | None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _num(v: float) -> float | None:
    return None if v != v else round(float(v), 4)


def before_after_rows(scored: Sequence[tuple[str, str, Any]]) -> list[BeforeAfterRow]:
    """Rows of the before/after table from ``(data, role, report)`` triples, where each report is a
    :class:`~labpipe.evaluation.detector.DetectorReport` (or has its ``detector``, ``images``,
    ``n_truth``, ``n_detections``, ``precision``, ``recall``, ``mean_abs_count_error`` and
    ``seconds_per_image``). NaN (no detections, no truth) becomes ``None``.

    >>> from types import SimpleNamespace as R
    >>> r = R(detector="classical-2", images=[1, 2], n_truth=10, n_detections=8, precision=1.0,
    ...       recall=0.8, mean_abs_count_error=1.0, seconds_per_image=0.5)
    >>> row, = before_after_rows([("held-out reviewed plates", "classical", r)])
    >>> row.recall, row.images, row.truth
    (0.8, 2, 10)
    """
    rows = []
    for data, role, report in scored:
        rows.append(
            BeforeAfterRow(
                data=data,
                role=role,
                detector=str(report.detector),
                images=len(report.images),
                truth=int(report.n_truth),
                detections=int(report.n_detections),
                precision=_num(report.precision),
                recall=_num(report.recall),
                mean_abs_count_error=_num(report.mean_abs_count_error),
                seconds_per_image=_num(report.seconds_per_image),
            )
        )
    return rows


_ROLE_NAMES = {"classical": "classical", "before": "DETR before", "after": "DETR after"}


def format_before_after(rows: Sequence[BeforeAfterRow]) -> str:
    """The rows as a plain-text table, one block per data set.

    >>> row = BeforeAfterRow("held-out reviewed plates", "after", "detr:m@1", 2, 10, 9, 1.0, 0.9, 0.5, 1.0)
    >>> print(format_before_after([row]))
    held-out reviewed plates
      detector       precision  recall  |count error|  images  truth  s/image
      DETR after         1.000   0.900           0.50       2     10     1.00
    """
    lines: list[str] = []
    for data in dict.fromkeys(r.data for r in rows):
        lines.append(data)
        lines.append("  detector       precision  recall  |count error|  images  truth  s/image")
        for r in (r for r in rows if r.data == data):

            def f(v: float | None, width: int, digits: int = 3) -> str:
                return f"{'-' if v is None else f'{v:.{digits}f}':>{width}}"

            lines.append(
                f"  {_ROLE_NAMES.get(r.role, r.role):<15}{f(r.precision, 9)}{f(r.recall, 8)}"
                f"{f(r.mean_abs_count_error, 15, 2)}{r.images:>8}{r.truth:>7}{f(r.seconds_per_image, 9, 2)}"
            )
    return "\n".join(lines)


def synthetic_check_set(work: Path, n_plates: int, cutouts: Path | None, *, progress: bool = True) -> Path:
    """The COCO file of ``n_plates`` small synthetic plates under ``work`` (rendered once, seed
    900 000: far from any training seed), to measure forgetting."""
    from labpipe.detect.detr_data import write_synthetic_set

    folder = Path(work) / f"synthetic-check-{n_plates}"
    coco = folder / "annotations.coco.json"
    if coco.is_file() and len(json.loads(coco.read_text()).get("images", [])) == n_plates:
        return coco
    return write_synthetic_set(folder, n_plates, 900_000, cutouts, progress=progress)


@dataclass
class FinetuneResult:
    """What :func:`finetune_on_plates` did."""

    model_dir: Path
    start: str
    """The starting model: a directory, or ``new RT-DETR (ImageNet backbone)``."""
    train_plates: list[str]
    held_out_plates: list[str]
    training: dict[str, Any]
    rows: list[BeforeAfterRow] = field(default_factory=list)
    seconds: float = 0.0
    files: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "model_dir": str(self.model_dir),
            "start": self.start,
            "train_plates": self.train_plates,
            "held_out_plates": self.held_out_plates,
            "training": self.training,
            "before_after": [r.as_dict() for r in self.rows],
            "seconds": round(self.seconds, 1),
            "files": self.files,
        }


def finetune_on_plates(
    settings: Any,
    doc: dict[str, Any],
    images_dir: Path,
    out_dir: Path,
    options: Any,
    *,
    holdout: int | None = None,
    synthetic_plates: int = 2,
    synthetic_work: Path | None = None,
    cutouts: Path | None = None,
    progress: bool = True,
) -> FinetuneResult:
    """Split ``doc`` (a COCO export of reviewed plates, files in ``images_dir``), fine-tune, and
    score before and after (see the module docstring). ``options`` is a
    :class:`~labpipe.detect.detr_train.DetrTrainOptions`; its ``init`` is the starting model
    (``None``: a new RT-DETR). The split and training files are written beside ``out_dir``
    (``<out>.train.coco.json``, ``<out>.holdout.coco.json``)."""
    from labpipe.detect.detr_data import write_coco_document
    from labpipe.detect.detr_train import result_summary, train_detector
    from labpipe.evaluation.detector import evaluate_images
    from labpipe.evaluation.truth import read_coco_truth
    from labpipe.pipeline import build_detector

    started = time.perf_counter()
    out_dir = Path(out_dir)
    ids = [int(i["id"]) for i in doc.get("images", [])]
    if not ids:
        raise ValueError("no reviewed plates to train on: mark plates 'boxes reviewed' first")
    n_held = default_holdout(len(ids)) if holdout is None else holdout
    train_ids, held_ids = split_plates(ids, n_held, seed=options.seed)
    train_doc, held_doc = split_document(doc, set(held_ids))
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    train_coco = out_dir.parent / f"{out_dir.name}.train.coco.json"
    held_coco = out_dir.parent / f"{out_dir.name}.holdout.coco.json"
    write_coco_document(train_doc, train_coco)
    write_coco_document(held_doc, held_coco)
    # the checkpoint is chosen on (at most VALIDATION_PLATES of) the training plates: validating
    # every epoch on twenty plates would cost more than the training on a CPU
    val_coco = out_dir.parent / f"{out_dir.name}.val.coco.json"
    val_ids = set(train_ids[:VALIDATION_PLATES])
    write_coco_document(split_document(train_doc, val_ids)[1], val_coco)
    names = {int(i["id"]): str(i["file_name"]) for i in doc["images"]}
    start = options.init or "new RT-DETR (EfficientNet-Lite0 backbone from the offline ImageNet weights)"

    max_side = settings.imaging.overview_max_side
    fallback = settings.um_per_px_fallback
    held_truth = read_coco_truth(held_coco, images_dir) if held_ids else []
    synth_truth = []
    if synthetic_plates > 0:
        synth_coco = synthetic_check_set(
            synthetic_work or out_dir.parent, synthetic_plates, cutouts, progress=progress
        )
        synth_truth = read_coco_truth(synth_coco, synth_coco.parent)

    def score(detector: Any, truths: list[Any], what: str) -> Any:
        return evaluate_images(
            truths, detector, max_side, um_per_px_fallback=fallback, progress=progress, description=what
        )

    scored: list[tuple[str, str, Any]] = []
    held_name = "held-out reviewed plates"
    synth_name = f"synthetic plates ({synthetic_plates}, forgetting)"
    if held_truth:
        scored.append(
            (held_name, "classical", score(build_detector(settings, "classical"), held_truth, "classical"))
        )
    t_scoring = time.perf_counter()
    if options.init:
        before = build_detector(settings, str(options.init))
        if held_truth:
            scored.append((held_name, "before", score(before, held_truth, "DETR before")))
        if synth_truth:
            scored.append((synth_name, "before", score(before, synth_truth, "DETR before, synthetic")))
    scoring_seconds = time.perf_counter() - t_scoring

    # --max-minutes bounds the whole command: training gets what the scoring before it left, less
    # the time the scoring after it will take (as long as the starting DETR's own scoring took; for
    # a new model, a fifth of the budget)
    budget = float(options.max_minutes or 0.0)
    reserve = scoring_seconds if options.init else 0.2 * budget * 60
    train_options = replace(
        options, max_minutes=training_minutes(budget, time.perf_counter() - started, reserve)
    )
    result = train_detector(
        train_coco,
        images_dir,
        out_dir,
        train_options,
        val_coco=val_coco,
        val_images_dir=images_dir,
        progress=progress,
        overwrite=True,
    )
    after = build_detector(settings, str(out_dir))
    if held_truth:
        scored.append((held_name, "after", score(after, held_truth, "DETR after")))
    if synth_truth:
        scored.append((synth_name, "after", score(after, synth_truth, "DETR after, synthetic")))
    return FinetuneResult(
        model_dir=out_dir,
        start=str(start),
        train_plates=[names[i] for i in train_ids],
        held_out_plates=[names[i] for i in held_ids],
        training=result_summary(result),
        rows=before_after_rows(scored),
        seconds=time.perf_counter() - started,
        files={"train": str(train_coco), "held_out": str(held_coco), "validation": str(val_coco)},
    )

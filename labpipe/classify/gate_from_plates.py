"""A specimen-or-not gate learnt from the lab's own reviewed plates.

On a plate marked "boxes reviewed" every specimen has a human-confirmed box and nothing else is a
specimen. So each box the lab's detector proposes there is labelled by the review itself:

* a proposal that matches a reviewed specimen box (IoU at least ``keep_iou``, the scoring rule of
  ``labpipe eval detector``) is a whole specimen;
* a proposal that overlaps no specimen box by more than ``reject_below`` IoU, lies mostly off
  every animal (under ``part_overlap`` of it on one, and holding no more than half of one), and
  not on an ignore region, is what the technician deleted or marked "not a specimen": the sheet's
  grommets, scale-card squares, labels, a wing or leg found apart from its body;
* a proposal in between (the right animal in a box too large or too small) teaches nothing clear
  and is left out.

The reviewed specimen boxes themselves (specimens the detector missed included) add whole
specimens, and the review's ``debris`` boxes add negatives. Every crop is cut from full resolution
the way the pipeline cuts it (:func:`labpipe.analysis.cut_square`), written as a PNG under
``OUT/crops/{specimen,not_specimen}/<plate>/`` for people to look through, and the gate is fitted
on those folders by :func:`labpipe.classify.gate.train_gate` (cross-fitted threshold, no held-out
plate used).

Set as ``[classifier] gate``, the gate rejects the kinds of false detection the lab has already
corrected: they stay on the plate for review with the reason ``not_a_specimen`` and are never
counted. Images known only by their count (``--counted FOLDER=N``: wells of one insect, empty or
fragment wells) are labelled by the count (:func:`label_by_count`). ``labpipe train gate
--from-reviews`` (or ``--coco EXPORT --images DIR``) runs :func:`train_gate_from_plates`;
``labpipe eval detector|table --gate DIR`` scores what is counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from labpipe.metrics.detection import Box, intersection_over_first, iou_matrix

__all__ = [
    "NOT_SPECIMEN",
    "SPECIMEN",
    "PlateCrops",
    "gate_crops_from_plates",
    "label_by_count",
    "label_proposals",
    "train_gate_from_plates",
]

SPECIMEN = "specimen"
NOT_SPECIMEN = "not_specimen"
MIN_CROPS = 5
"""Fewest crops of either kind a gate is learnt from (its threshold is cross-fitted in 5 folds)."""
CROPS_MARKER = ".labpipe-gate-crops"
"""Marks ``OUT/crops`` as written by this module: only such a folder is ever replaced."""


def label_proposals(
    proposals: Sequence[Box],
    specimens: Sequence[Box],
    ignore: Sequence[Box] = (),
    *,
    keep_iou: float = 0.5,
    reject_below: float = 0.25,
    region_overlap: float = 0.5,
    part_overlap: float = 0.3,
) -> list[str | None]:
    """What a reviewed plate says of each proposed ``[x, y, w, h]`` box: :data:`SPECIMEN`,
    :data:`NOT_SPECIMEN`, or ``None`` (no clear answer: a box around part of an animal or too
    large, or a box on an ignore region).

    >>> label_proposals(
    ...     [[0, 0, 10, 10], [1, 1, 16, 16], [50, 50, 4, 4], [90, 90, 5, 5]],
    ...     specimens=[[0, 0, 10, 10]],
    ...     ignore=[[88, 88, 10, 10]],
    ... )
    ['specimen', None, 'not_specimen', None]
    """
    if reject_below > keep_iou:
        raise ValueError(f"reject_below {reject_below} must not exceed keep_iou {keep_iou}")
    n = len(proposals)
    if n == 0:
        return []
    best = iou_matrix(proposals, specimens).max(axis=1) if len(specimens) else np.zeros(n)
    # A box mostly on a specimen (a wing or leg boxed apart, a box around a pair) shows animal: it is
    # a wrong box, not a wrong kind of object, and teaching the gate to reject it would teach it to
    # reject animals. Only boxes away from every specimen are negatives.
    # A box that holds most of a specimen (far too large, or around a pair) shows animal too.
    on_animal = (
        (intersection_over_first(proposals, specimens).max(axis=1) >= part_overlap)
        | (intersection_over_first(specimens, proposals).max(axis=0) >= 0.5)
        if len(specimens)
        else np.zeros(n, dtype=bool)
    )
    on_ignore = (
        intersection_over_first(proposals, ignore).max(axis=1) >= region_overlap
        if len(ignore)
        else np.zeros(n, dtype=bool)
    )
    labels: list[str | None] = []
    for k in range(n):
        if best[k] >= keep_iou:
            labels.append(SPECIMEN)
        elif best[k] < reject_below and not on_ignore[k] and not on_animal[k]:
            labels.append(NOT_SPECIMEN)
        else:
            labels.append(None)
    return labels


def label_by_count(n_proposals: int, expected: int) -> list[str | None]:
    """What an image known only by its count says of its ``n_proposals`` boxes: with no specimen
    in it (an empty well, a well of fragments) every box is :data:`NOT_SPECIMEN`; when the count
    is right every box is taken as a :data:`SPECIMEN` (a count-checked pseudo-label); otherwise
    nothing is known of any box (``None``).

    >>> label_by_count(2, 0), label_by_count(1, 1), label_by_count(2, 1), label_by_count(0, 1)
    (['not_specimen', 'not_specimen'], ['specimen'], [None, None], [])
    """
    if expected < 0 or n_proposals < 0:
        raise ValueError(f"counts must be >= 0; given {n_proposals} boxes, {expected} expected")
    if expected == 0:
        return [NOT_SPECIMEN] * n_proposals
    return [SPECIMEN if n_proposals == expected else None] * n_proposals


@dataclass
class PlateCrops:
    """The crop folders written from reviewed plates, and what went into them."""

    specimen_folders: list[Path] = field(default_factory=list)
    not_specimen_folders: list[Path] = field(default_factory=list)
    per_plate: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, int]:
        total = {SPECIMEN: 0, NOT_SPECIMEN: 0, "unclear": 0}
        for row in self.per_plate.values():
            for key in total:
                total[key] += row.get(key, 0)
        return total


def gate_crops_from_plates(
    truths: Sequence[Any],
    detector: Any,
    out_dir: Path,
    *,
    margin: float = 0.4,
    overview_max_side: int = 4096,
    max_side: int = 512,
    progress: bool = True,
) -> PlateCrops:
    """Run ``detector`` on each image of ``truths`` (:class:`~labpipe.evaluation.truth.TruthImage`),
    label its proposals and write the crops under ``out_dir/specimen/<group>/`` and
    ``out_dir/not_specimen/<group>/`` (PNG, longer side at most ``max_side``: the gate reads them
    at 224 px).

    A reviewed plate with boxes is labelled by the review (:func:`label_proposals`; its group is the
    plate), and its specimen boxes add whole specimens and its ``debris`` boxes negatives. An image
    known only by its count (a well of one insect, an empty well, a well of fragments) is labelled
    by the count (:func:`label_by_count`; its group is its folder).
    """
    from PIL import Image

    from labpipe.analysis import cut_square, detect_specimens
    from labpipe.crops.store import safe_component, save_crop
    from labpipe.evaluation.truth import to_displayed_frame
    from labpipe.imaging import open_image

    out_dir = Path(out_dir)
    result = PlateCrops()
    for truth in tqdm(truths, desc="gate crops", unit="plate", disable=not progress):
        # a plate with boxes gets folders of its own; images known by their count share their
        # folder's (hundreds of wells would otherwise make hundreds of folders)
        stem = safe_component(Path(truth.path).stem)
        group = stem if truth.has_boxes else safe_component(Path(truth.path).parent.name) + "-counted"
        with open_image(truth.path, um_per_px_fallback=truth.um_per_px) as plate:
            found, _ = detect_specimens(detector, plate, overview_max_side)
            proposals = [tuple(float(v) for v in b) for b, _ in found]
            extra: list[tuple[str, Box]] = []
            if truth.has_boxes:
                shown = to_displayed_frame(truth, plate.stored_size, plate.orientation)
                labels = label_proposals(proposals, shown.specimens, shown.ignore)
                extra = [(SPECIMEN, box) for box in shown.specimens] + [
                    (NOT_SPECIMEN, box) for box in shown.debris
                ]
            else:
                assert truth.expected_count is not None
                labels = label_by_count(len(proposals), truth.expected_count)
            chosen = [
                (lab, box) for lab, box in zip(labels, proposals, strict=True) if lab is not None
            ] + extra
            row = {SPECIMEN: 0, NOT_SPECIMEN: 0, "unclear": labels.count(None)}
            for k, (label, box) in enumerate(chosen):
                x, y, w, h = (round(v) for v in box)
                if w < 1 or h < 1:
                    continue
                image = Image.fromarray(np.ascontiguousarray(cut_square(plate, (x, y, w, h), margin)))
                if max(image.size) > max_side:
                    image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
                save_crop(np.asarray(image), out_dir / label / group / f"{stem}-{k:05d}.png")
                row[label] += 1
        result.per_plate[truth.file_name] = row
        for label, folders in (
            (SPECIMEN, result.specimen_folders),
            (NOT_SPECIMEN, result.not_specimen_folders),
        ):
            if row[label] and out_dir / label / group not in folders:
                folders.append(out_dir / label / group)
    return result


def _scores(report: Any) -> dict[str, Any]:
    d = report.as_dict()
    keys = ("images", "truth", "detections", "true_positives", "gate_rejected", "precision", "recall", "f1")
    return {**{k: d[k] for k in keys}, "mean_abs_count_error": d["mean_abs_count_error"]}


def train_gate_from_plates(
    doc: dict[str, Any],
    images_dir: Path,
    detector: Any,
    out_dir: Path,
    *,
    holdout: int = 0,
    seed: int = 0,
    specimens: Sequence[Path] = (),
    debris: Sequence[Path] = (),
    counted: Sequence[Any] = (),
    margin: float = 0.4,
    overview_max_side: int = 4096,
    keep: float = 0.98,
    cache_dir: Path | None = None,
    threads: int = 0,
    progress: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train a gate on the reviewed plates of the COCO document ``doc`` (``labpipe export coco``),
    plus any images known only by their count (``counted``: :class:`~labpipe.evaluation.truth.TruthImage`
    with ``expected_count``, labelled by :func:`label_by_count`) and any folders of whole
    ``specimens`` and ``debris`` crops; write ``out_dir``.

    ``holdout`` plates (seeded split) are kept out of training and scored twice, by ``detector``
    alone and behind the new gate, so the lab sees what the gate changes before it switches it on.
    Returns the written ``gate.json`` content with ``reviews`` (plates, crops per plate) and
    ``held_out`` (the two score rows) added.
    """
    import json
    import shutil

    from labpipe.classify.gate import GATE_CONFIG, load_gate, train_gate
    from labpipe.detect.detr_data import write_coco_document
    from labpipe.detect.finetune import split_document, split_plates
    from labpipe.errors import ConfigError
    from labpipe.evaluation.detector import evaluate_with_and_without_gate
    from labpipe.evaluation.truth import read_coco_truth

    out_dir = Path(out_dir)
    if (out_dir / GATE_CONFIG).exists() and not overwrite:
        raise ConfigError(out_dir, "already holds a gate", "choose another --out, or pass --overwrite")
    ids = sorted(int(i["id"]) for i in doc.get("images", []))
    if not ids and not counted:
        raise ConfigError(None, "no reviewed plates", "mark plates 'boxes reviewed' on the plate page first")
    if holdout and holdout >= len(ids):
        raise ConfigError(
            None,
            f"--holdout {holdout} leaves none of the {len(ids)} plates to learn from",
            "hold out fewer plates",
        )
    _, held = split_plates(ids, holdout, seed) if holdout else (ids, [])
    train_doc, held_doc = split_document(doc, set(held))
    crops_dir = out_dir / "crops"
    if crops_dir.exists():
        if not (crops_dir / CROPS_MARKER).is_file():
            raise ConfigError(
                crops_dir,
                "exists and was not written by `labpipe train gate`; it is left as it is",
                "choose another --out",
            )
        shutil.rmtree(crops_dir)  # an earlier run's crops (and --overwrite was given: checked above)
    crops_dir.mkdir(parents=True)
    (crops_dir / CROPS_MARKER).write_text("crops written by labpipe train gate; replaced by its next run\n")
    write_coco_document(train_doc, out_dir / "train.coco.json")
    train_truths = read_coco_truth(out_dir / "train.coco.json", images_dir)
    crops = gate_crops_from_plates(
        [*train_truths, *counted],
        detector,
        crops_dir,
        margin=margin,
        overview_max_side=overview_max_side,
        progress=progress,
    )
    counts = crops.counts
    if counts[SPECIMEN] < MIN_CROPS and not specimens:
        raise ConfigError(
            None,
            f"the reviewed plates give {counts[SPECIMEN]} specimen crops, fewer than {MIN_CROPS}",
            "review more plates, or add folders of whole-specimen crops with --specimens",
        )
    if counts[NOT_SPECIMEN] < MIN_CROPS and not debris:
        raise ConfigError(
            None,
            f"the reviewed plates give {counts[NOT_SPECIMEN]} crops of false detections, fewer than "
            f"{MIN_CROPS}: too few to learn what is not a specimen",
            "review more plates, or add folders of debris crops with --debris",
        )
    config = train_gate(
        list(specimens) + crops.specimen_folders,
        list(debris) + crops.not_specimen_folders,
        out_dir,
        keep=keep,
        cache_dir=cache_dir,
        threads=threads,
        progress=progress,
        overwrite=True,
    )
    config["reviews"] = {
        "detector": str(getattr(detector, "version", "")),
        "train_plates": [t.file_name for t in train_truths],
        "counted_images": len(counted),
        "crops": crops.counts,
        "per_plate": crops.per_plate,
        "labels": "proposals matching a reviewed box (IoU >= 0.5) and the reviewed boxes: specimen; "
        "proposals away from every specimen (IoU < 0.25, under 0.3 of the box on an animal, holding "
        "no more than half of one, not on an ignore region) and debris boxes: not_specimen; counted "
        "images: every box where the count is 0, the boxes where the count is right: specimen",
    }
    if held:
        write_coco_document(held_doc, out_dir / "held_out.coco.json")
        held_truths = read_coco_truth(out_dir / "held_out.coco.json", images_dir)
        alone, gated = evaluate_with_and_without_gate(
            held_truths,
            detector,
            load_gate(out_dir),
            overview_max_side,
            progress=progress,
            description="held out",
            margin=margin,
        )
        config["held_out"] = {
            "plates": [t.file_name for t in held_truths],
            "detector": _scores(alone),
            "detector_and_gate": _scores(gated),
        }
    (out_dir / GATE_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return config

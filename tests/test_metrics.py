"""Detection metrics on boxes whose answer is obvious."""

from __future__ import annotations

import pytest

from labpipe.metrics.detection import iou_matrix, match_detections


def test_iou_of_identical_disjoint_and_half_overlapping_boxes() -> None:
    ious = iou_matrix([[0, 0, 10, 10]], [[0, 0, 10, 10], [20, 20, 5, 5], [5, 0, 10, 10]])
    assert ious[0].tolist() == pytest.approx([1.0, 0.0, 50 / 150])


def test_one_detection_cannot_claim_two_truth_boxes() -> None:
    truth = [[0, 0, 10, 10], [1, 1, 10, 10]]
    result = match_detections([[0, 0, 10, 10]], truth)
    assert (result.true_positives, result.false_negatives) == (1, 1)
    assert result.recall == 0.5 and result.precision == 1.0


def test_higher_scoring_detection_is_matched_first() -> None:
    truth = [[0, 0, 10, 10]]
    dets = [[0, 0, 10, 9], [0, 0, 10, 10]]
    result = match_detections(dets, truth, scores=[0.2, 0.9])
    assert result.matches[0][0] == 1 and result.false_positives == 1


def test_boxes_below_the_iou_threshold_do_not_match() -> None:
    result = match_detections([[5, 0, 10, 10]], [[0, 0, 10, 10]], iou_threshold=0.5)
    assert result.true_positives == 0 and result.f1 == 0.0


def test_empty_image_with_no_detections_is_perfect() -> None:
    result = match_detections([], [])
    assert result.precision == 1.0 and result.recall == 1.0

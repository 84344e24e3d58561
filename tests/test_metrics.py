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


def test_detection_on_an_uncertain_speck_is_neither_hit_nor_false_positive() -> None:
    from labpipe.metrics.detection import match_with_ignore

    m = match_with_ignore(
        [[0, 0, 10, 10], [100, 100, 6, 6]], [0.9, 0.8], [[0, 0, 10, 10]], ignore=[[99, 99, 8, 8]]
    )
    assert m.status == ["tp", "ignored"]
    assert (m.true_positives, m.false_positives, m.n_counted) == (1, 0, 1)


def test_small_detection_inside_a_large_ignore_region_is_ignored() -> None:
    from labpipe.metrics.detection import match_with_ignore

    # a shadowed corner marked uncertain: anything found inside it does not count
    m = match_with_ignore([[520, 20, 30, 30]], [0.7], [], ignore=[[500, 0, 300, 400]])
    assert m.status == ["ignored"] and m.false_positives == 0


def test_a_specimen_inside_an_ignore_region_is_still_matched_first() -> None:
    from labpipe.metrics.detection import match_with_ignore

    m = match_with_ignore([[510, 10, 20, 20]], [0.7], [[510, 10, 20, 20]], ignore=[[500, 0, 300, 400]])
    assert m.status == ["tp"] and m.missed == []


def test_detection_on_debris_is_a_false_positive_counted_apart() -> None:
    from labpipe.metrics.detection import match_with_ignore

    m = match_with_ignore([[50, 50, 40, 40], [200, 0, 5, 5]], [0.9, 0.9], [], debris=[[48, 48, 44, 44]])
    assert m.status == ["debris", "fp"]
    assert (m.false_positives, m.debris_false_positives) == (2, 1)


def test_missed_specimens_are_listed_and_uncertain_ones_never_count_as_missed() -> None:
    from labpipe.metrics.detection import match_with_ignore

    m = match_with_ignore([], [], [[0, 0, 5, 5], [10, 10, 5, 5]], ignore=[[40, 40, 5, 5]])
    assert m.missed == [0, 1] and m.n_truth == 2


def test_average_precision_leaves_detections_on_ignore_regions_out_of_the_ranking() -> None:
    from labpipe.evaluation.detector import average_precision

    dets = [([[0, 0, 10, 10], [50, 50, 5, 5]], [0.5, 0.9])]
    truth = [[[0, 0, 10, 10]]]
    assert average_precision(dets, truth) < 1.0  # the stray box ranks above the hit
    assert average_precision(dets, truth, ignore=[[[49, 49, 7, 7]]]) == 1.0

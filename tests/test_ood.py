"""The out-of-distribution rule: shrunk covariance, Mahalanobis distance, threshold, and its file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from labpipe.classify.ood import (
    FeatureGaussians,
    fit_feature_gaussians,
    ledoit_wolf_covariance,
    load_feature_gaussians,
    mahalanobis_distance,
    save_feature_gaussians,
    select_distance_threshold,
)


def _ledoit_wolf_by_definition(x: np.ndarray) -> tuple[np.ndarray, float]:
    """Ledoit and Wolf (2004), Lemma 3.2-3.4, written out with explicit outer products."""
    n, d = x.shape
    s = x.T @ x / n
    mu = np.trace(s) / d
    norm2 = lambda a: float((a**2).sum()) / d  # noqa: E731 - the paper's scaled Frobenius norm
    d2 = norm2(s - mu * np.eye(d))
    b2_bar = sum(norm2(np.outer(row, row) - s) for row in x) / n**2
    b2 = min(b2_bar, d2)
    shrink = b2 / d2
    return shrink * mu * np.eye(d) + (1 - shrink) * s, shrink


def test_shrunk_covariance_matches_the_papers_formula() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(15, 6)) * np.array([3.0, 1.0, 1.0, 0.5, 0.2, 2.0])
    x -= x.mean(axis=0)
    cov, shrink = ledoit_wolf_covariance(x)
    expected, expected_shrink = _ledoit_wolf_by_definition(x)
    assert shrink == pytest.approx(expected_shrink)
    assert cov == pytest.approx(expected)
    assert 0.0 < shrink < 1.0


def test_fewer_samples_than_dimensions_still_give_an_invertible_covariance() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(20, 200))
    sample = x.T @ x / 20
    assert np.linalg.matrix_rank(sample) <= 20  # singular: could not be inverted
    cov, shrink = ledoit_wolf_covariance(x)
    assert shrink > 0.5 and np.linalg.eigvalsh(cov).min() > 0


def test_too_few_rows_are_refused_with_the_shape() -> None:
    with pytest.raises(ValueError, match=r"shape \(1, 3\)"):
        ledoit_wolf_covariance(np.zeros((1, 3)))


def test_distance_is_to_the_nearest_family_in_units_of_the_spread() -> None:
    rng = np.random.default_rng(2)
    # Two families 20 apart on the first axis; the second axis varies 10 times more than the first.
    a = rng.normal(size=(400, 2)) * [1.0, 10.0]
    b = rng.normal(size=(400, 2)) * [1.0, 10.0] + [20.0, 0.0]
    g = fit_feature_gaussians(np.vstack([a, b]), np.repeat([0, 1], 400), 2)
    assert g.means[:, 0] == pytest.approx([0.0, 20.0], abs=0.3)
    near_b, far_along_small, far_along_large = mahalanobis_distance([[19, 0], [10, 0], [0, 30]], g)
    assert near_b < 1.5
    assert far_along_small > 8  # 10 units where the spread is 1: far out
    assert far_along_large < 4  # 30 units where the spread is 10: about 3 sigma


def test_every_family_needs_features() -> None:
    with pytest.raises(ValueError, match=r"classes \[2\] have no feature rows"):
        fit_feature_gaussians(np.zeros((4, 3)), [0, 1, 0, 1], 3)


def test_threshold_keeps_the_asked_share_of_validation_images() -> None:
    distances = np.arange(1.0, 41.0)  # 40 validation images
    threshold = select_distance_threshold(distances, 0.975)
    assert threshold == 39.0 and (distances <= threshold).mean() == 0.975
    assert select_distance_threshold(distances, 1.0) == 40.0
    with pytest.raises(ValueError, match="keep must be in"):
        select_distance_threshold(distances, 0.0)


def test_the_rule_survives_a_round_trip_through_its_file(tmp_path: Path) -> None:
    g = FeatureGaussians(np.array([[1.0, 2.0]]), np.array([[2.0, 0.5], [0.5, 1.0]]), 0.25)
    save_feature_gaussians(g, tmp_path / "ood.safetensors")
    back = load_feature_gaussians(tmp_path / "ood.safetensors")
    assert back.means == pytest.approx(g.means) and back.precision == pytest.approx(g.precision)
    assert back.shrinkage == 0.25

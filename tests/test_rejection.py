"""Rejection that holds (issue 14): the out-of-distribution rules, their honest thresholds, the
specimen-or-not gate, cross-fitted calibration and corrected counts.

The science is checked on small arrays with obvious answers; tiny real sets from ../shared/data
(a few crops per folder, features cached per module) check that each rule and the gate give the
reason codes one would expect, and that no threshold depends on the out-of-distribution folders
an evaluation is shown.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from labpipe.classify.base import REJECT_NOT_A_SPECIMEN, REJECT_REASONS, reason_code
from labpipe.classify.count_correction import corrected_counts, outcome_counts, solve_counts
from labpipe.classify.dataset import load_square
from labpipe.classify.ood import energy_score, fit_outlier_logistic, knn_distance, l2_normalise
from labpipe.classify.rejection import (
    choose_knn_k,
    fit_rule,
    leave_one_family_out,
    out_of_fold_scores,
    stratified_folds,
)
from labpipe.cli.main import cli

# one xdist worker runs this file: its tiny real sets are scored once
pytestmark = pytest.mark.xdist_group("rejection")

THREADS_ENV = {"LABPIPE_CLASSIFIER_THREADS": "1"}


# ---------------------------------------------------------------------------------------------
# Rules on arrays


def _clusters(
    rng: np.random.Generator, centres: list[list[float]], n: int = 40
) -> tuple[np.ndarray, np.ndarray]:
    x = np.vstack([rng.normal(size=(n, len(c))) * 0.3 + c for c in centres])
    return x, np.repeat(np.arange(len(centres)), n)


def test_knn_distance_is_on_the_unit_sphere_and_k_counts_neighbours() -> None:
    bank = l2_normalise([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0]])
    # Scale does not matter (features are normalised); the 2nd neighbour of (5, 0) is (1, 0.1).
    assert knn_distance([[5.0, 0.0]], bank, 1)[0] == pytest.approx(0.0)
    assert knn_distance([[5.0, 0.0]], bank, 2)[0] == pytest.approx(np.linalg.norm([1, 0] - bank[1]))
    assert knn_distance([[5.0, 0.0]], bank, 99)[0] == pytest.approx(np.sqrt(2.0))  # k capped at the bank


def test_energy_is_low_for_confident_logits_and_high_for_flat_small_ones() -> None:
    confident, flat = energy_score([[10.0, 0.0, 0.0], [0.1, 0.0, 0.1]])
    assert confident < flat
    assert confident == pytest.approx(-10.0, abs=1e-3)


def test_outlier_exposure_separates_inliers_from_outliers() -> None:
    rng = np.random.default_rng(0)
    inliers = rng.normal(size=(60, 8)) + np.eye(8)[0] * 3
    outliers = rng.normal(size=(60, 8)) + np.eye(8)[1] * 3
    model = fit_outlier_logistic(inliers, outliers)
    assert (model.score(inliers) < 0).mean() > 0.9 and (model.score(outliers) > 0).mean() > 0.9


def test_folds_spread_every_class() -> None:
    folds = stratified_folds([0] * 10 + [1] * 5, 5, seed=3)
    for c, members in ((0, slice(0, 10)), (1, slice(10, 15))):
        assert np.bincount(folds[members], minlength=5).tolist() == ([2] * 5 if c == 0 else [1] * 5)


def test_out_of_fold_knn_scores_are_not_the_in_sample_zeros() -> None:
    rng = np.random.default_rng(1)
    x, y = _clusters(rng, [[3.0, 0.0, 0.0], [0.0, 3.0, 0.0]])
    fitted = fit_rule("knn", x, y, 2, k=1)
    assert np.allclose(fitted.score(x), 0.0, atol=1e-3)  # every training crop is its own nearest neighbour
    oof = out_of_fold_scores("knn", x, y, 2, k=1)
    assert (oof > 0).all()  # a threshold from these keeps what it says on new crops
    # leave-one-out: each crop is scored exactly as the rule fitted on all the others scores it
    views = np.stack([x, x + rng.normal(0, 0.05, x.shape)], axis=1)  # two views per crop
    loo = out_of_fold_scores("knn", views, y, 2, k=3)
    for i in (0, 7, len(y) - 1):
        others = np.delete(np.arange(len(y)), i)
        alone = fit_rule("knn", views[others], y[others], 2, k=3).score(views[i : i + 1, 0])
        assert loo[i] == pytest.approx(alone[0], rel=2e-3)  # the stored bank is float32


def test_leave_one_family_out_rejects_a_far_family_and_chooses_k_without_ood_data() -> None:
    rng = np.random.default_rng(2)
    x, y = _clusters(rng, [[4.0, 0.0, 0.0], [0.0, 4.0, 0.0], [0.0, 0.0, 4.0]])
    for rule in ("knn", "mahalanobis"):
        lofo = leave_one_family_out(rule, x, y, 3, [0.95], k=5)
        assert lofo["mean"][0.95] > 0.95, rule  # each family is far from the other two
        assert lofo["kept"][0.95] >= 0.94
    k, means = choose_knn_k(x, y, 3, 0.95, ks=(1, 5))
    assert k in (1, 5) and set(means) == {1, 5}


# ---------------------------------------------------------------------------------------------
# Corrected counts


def test_corrected_counts_invert_the_confusion_and_ood_acceptance() -> None:
    # Truth: 100 A, 50 B, 40 others. A: 90 % right, 5 % as B, 5 % rejected; B: 10 % as A, 80 %
    # right, 10 % rejected; others: 15 % as A, 5 % as B, 80 % rejected.
    conf = np.array([[9000, 500, 500], [1000, 8000, 1000]])
    ood = np.array([1500, 500, 8000])
    expected = 100 * conf[0] / 10000 + 50 * conf[1] / 10000 + 40 * ood / 10000  # 101, 47, 42
    rows = corrected_counts(["A", "B"], {"A": 101, "B": 47}, 42, conf, ood, draws=300)
    assert expected.tolist() == pytest.approx([101.0, 47.0, 42.0])
    assert rows["A"].raw == 101 and rows["A"].corrected == pytest.approx(100, abs=0.5)
    assert rows["B"].corrected == pytest.approx(50, abs=0.5) and rows["other"].corrected == pytest.approx(
        40, abs=0.5
    )
    for name, truth in (("A", 100), ("B", 50), ("other", 40)):
        assert rows[name].low <= truth <= rows[name].high


def test_a_small_validation_set_gives_a_wider_interval() -> None:
    args = (["A", "B"], {"A": 45, "B": 45}, 10)
    big = corrected_counts(*args, np.array([[900, 50, 50], [50, 900, 50]]), draws=400)
    small = corrected_counts(*args, np.array([[9, 0, 1], [1, 8, 1]]), draws=400)
    assert (small["A"].high - small["A"].low) > (big["A"].high - big["A"].low)


def test_outcome_counts_and_non_negative_solution() -> None:
    assert outcome_counts([1, 1, 0], [1, 0, 0], [False, False, True], 2).tolist() == [[0, 0, 1], [1, 1, 0]]
    assert (solve_counts([[0.5, 0.5], [0.5, 0.5 + 1e-9]], [0.0, 10.0]) >= 0).all()


def test_not_a_specimen_is_a_stable_reason_code() -> None:
    assert REJECT_NOT_A_SPECIMEN == "not_a_specimen" and REJECT_NOT_A_SPECIMEN in REJECT_REASONS


# ---------------------------------------------------------------------------------------------
# Tiny real sets: three families of 12 crops, each rule, the gate


def _link(folder: Path, files: list[Path]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for path in files:
        (folder / path.name).symlink_to(path)
    return folder


def _files(shared: Path, name: str) -> list[Path]:
    return sorted(p for p in (shared / name).iterdir() if p.suffix.lower() in {".jpg", ".png"})


@pytest.fixture(scope="module")
def tiny(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("rejection")
    data = root / "families"
    for family, folder in (
        ("Apidae", "ants-bees/bees"),
        ("Carabidae", "carabidae-crops"),
        ("Formicidae", "ants-bees/ants"),
    ):
        _link(data / family, _files(shared_data, folder)[:12])
    return {
        "root": root,
        "data": data,
        "cache": root / "cache",
        "wells": _link(root / "ood" / "wells", _files(shared_data, "bioscan-wells/single")[-4:]),
        "springtails": _link(root / "ood" / "springtails", _files(shared_data, "collembola/positive")[-4:]),
        "outliers": _link(root / "outliers", _files(shared_data, "bioscan-wells/single")[:8]),
        "beetles": [load_square(p) for p in _files(shared_data, "carabidae-crops")[-3:]],
    }


def _train(tiny: dict, rule: str) -> Path:
    out = tiny["root"] / "models" / rule
    if (out / "config.json").is_file():
        return out
    args = [
        "--data-dir",
        str(tiny["root"] / "store"),
        "train",
        "classifier",
        str(tiny["data"]),
        "--out",
        str(out),
    ]
    args += ["--views", "0", "--epochs", "6", "--ood-rule", rule, "--cache-dir", str(tiny["cache"]), "--json"]
    if rule == "outlier_exposure":
        args += ["--outliers", str(tiny["outliers"])]
    result = CliRunner().invoke(cli, args, env=THREADS_ENV)
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.parametrize("rule", ["knn", "mahalanobis", "energy", "outlier_exposure"])
def test_each_rule_records_itself_and_gives_the_expected_reason_codes(tiny: dict, rule: str) -> None:
    from labpipe.classify.loader import load_classifier
    from labpipe.record import classifier_rule

    out = _train(tiny, rule)
    config = json.loads((out / "config.json").read_text())
    assert config["ood"]["rule"] == rule and "leave_one_family_out" in config["ood"]  # 3 families
    assert "no out-of-distribution images" in config["ood"]["threshold_selection"]
    clf = load_classifier(str(out), threads=1)
    assert clf.ood_rule["rule"] == rule and clf.ood_rule["threshold"] == config["ood"]["threshold"]
    assert classifier_rule(clf) == {"threshold": clf.threshold, "ood": clf.ood_rule}  # stored with calls
    wells = [load_square(p) for p in sorted(tiny["wells"].iterdir())]
    results = clf.classify([*wells, *tiny["beetles"]])
    codes = [reason_code(r.reason) for r in results]
    assert all(r.family for r in results)  # the best family is still named, for review
    assert set(codes) <= {None, "low_confidence", "out_of_distribution"}
    if rule != "energy":  # the energy of a 6-epoch head on 8 crops per family is weak: no claim
        assert codes[:4].count("out_of_distribution") >= 3, codes  # flies and wasps in wells
    assert codes[4:].count("out_of_distribution") <= 1, codes  # unseen ground beetles are known


def test_cross_fitted_calibration_is_used_when_validation_has_few_errors(tiny: dict) -> None:
    config = json.loads((_train(tiny, "knn") / "config.json").read_text())
    fit = config["temperature_fit"]
    assert fit["val_n"] == 3 and fit["val_errors"] < 5 and fit["crossfit"]
    assert fit["n"] == 30  # 10 train + validation crops per family, scored out of fold
    if fit["errors"]:  # errors out of fold: the temperature is fitted, not left at 1
        assert config["temperature"] != 1.0
    assert config["count_correction"]["families"] == config["labels"]
    assert np.array(config["count_correction"]["confusion"]).sum() == 30
    assert sum(config["count_correction"]["ood"]) == 30  # every crop once as the unknown family


def test_no_threshold_depends_on_the_ood_folders_an_evaluation_is_shown(tiny: dict) -> None:
    out = _train(tiny, "knn")
    before = (out / "config.json").read_bytes()
    reports = []
    for folder in ("wells", "springtails"):
        args = ["eval", "classifier", str(tiny["data"]), "--model", str(out), "--ood", str(tiny[folder])]
        args += ["--out", str(tiny["root"] / f"eval-{folder}"), "--json"]
        result = CliRunner().invoke(cli, args, env=THREADS_ENV)
        assert result.exit_code == 0, result.output
        reports.append(json.loads(result.stdout))
    config = json.loads(before)
    for report in reports:
        assert report["at_threshold"]["distance_threshold"] == pytest.approx(
            config["ood"]["threshold"], abs=1e-4
        )
        assert report["model"]["threshold"] == config["threshold"]
        assert report["model"]["ood_rule"]["threshold"] == config["ood"]["threshold"]
    assert reports[0]["at_threshold"] == reports[1]["at_threshold"]  # in-distribution figures too
    assert (out / "config.json").read_bytes() == before  # evaluating never rewrites the model


def test_the_gate_rejects_debris_and_empty_wells_in_front_of_the_builtin_classifier(
    shared_data: Path, tmp_path: Path, tiny: dict
) -> None:
    from labpipe.classify.gate import GatedClassifier
    from labpipe.classify.loader import load_classifier
    from labpipe.record import classifier_rule

    specimens = [
        _link(tmp_path / "carabids", _files(shared_data, "carabidae-crops")[:10]),
        _link(tmp_path / "ants", _files(shared_data, "ants-bees/ants")[:10]),
        _link(tmp_path / "true", _files(shared_data, "collembola/candidate_true")[:10]),
    ]
    debris = [
        _link(tmp_path / "false", _files(shared_data, "collembola/candidate_false")[:12]),
        _link(tmp_path / "empty", _files(shared_data, "bioscan-wells/empty")[:10]),
    ]
    args = ["train", "gate", "--out", str(tmp_path / "gate"), "--cache-dir", str(tiny["cache"]), "--json"]
    for folder in specimens:
        args += ["--specimens", str(folder)]
    for folder in debris:
        args += ["--debris", str(folder)]
    result = CliRunner().invoke(cli, args, env=THREADS_ENV)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["format"] == "labpipe-gate-v1"
    clf = load_classifier("builtin:imagenet-efficientnet-lite0", threads=1, gate=str(tmp_path / "gate"))
    assert isinstance(clf, GatedClassifier)
    assert classifier_rule(clf)["ood"]["gate"]["gate"] == str((tmp_path / "gate").resolve())
    held_out = [  # never seen by the gate
        *(load_square(p) for p in _files(shared_data, "collembola/candidate_false")[-3:]),
        *(load_square(p) for p in _files(shared_data, "bioscan-wells/empty")[-3:]),
        *tiny["beetles"],
    ]
    codes = [reason_code(r.reason) for r in clf.classify(held_out)]
    assert codes[:6].count(REJECT_NOT_A_SPECIMEN) >= 5, codes
    assert REJECT_NOT_A_SPECIMEN not in codes[6:], codes
    # a family model trained at 320 px (the default) behind this 224 px gate: the gate computes its
    # own features instead of reading the model's, and judges every crop exactly as it does alone
    trained = load_classifier(str(_train(tiny, "knn")), threads=1, gate=str(tmp_path / "gate"))
    assert trained.inner.input_size == 320 and trained.gate.input_size == 224
    assert clf.gate.shares_features_with(clf.inner) and not trained.gate.shares_features_with(trained.inner)
    alone = trained.gate.rejects(trained.gate.features(held_out, threads=1))
    behind = [reason_code(r.reason) == REJECT_NOT_A_SPECIMEN for r in trained.classify(held_out)]
    assert behind == alone.tolist()

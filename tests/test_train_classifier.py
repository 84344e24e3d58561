"""Training, calibrating, evaluating, registering and re-running a family classifier.

The science (split, temperature, ECE, threshold, risk-coverage, top-k, P/R/F1, augmentation) is
checked on tiny arrays with obvious answers; one small real training run (12 ants and 12 ground
beetles from ../shared/data) checks that the model directory loads through the production loader,
that the eval command reports everything, and that the registry and reclassify keep every result.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image as PILImage
from sqlalchemy import func, select

from labpipe.classify.augment import AugmentSpec, augment_square, color_jitter, rotate_square, view_rng
from labpipe.classify.base import reason_code
from labpipe.classify.calibration import (
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    risk_coverage_curve,
    select_threshold,
    softmax,
)
from labpipe.classify.dataset import file_sha256, load_square, scan_family_folders, stratified_split
from labpipe.classify.loader import load_classifier
from labpipe.classify.metrics import confusion_matrix, per_class_prf, top_k_accuracy
from labpipe.classify.trained import TrainedFamilyClassifier, labels_sha256, model_identity
from labpipe.classify.training import balanced_sample, choose_calibration, class_weights
from labpipe.cli.main import cli
from labpipe.crops import pad_to_square, save_crop
from labpipe.db.database import open_database
from labpipe.db.models import Classification, Image, ImageStatus, Model, ModelKind, Sample, Specimen
from labpipe.errors import ConfigError
from labpipe.reports.counts import count_families

# one xdist worker runs this file: its model is trained once
pytestmark = pytest.mark.xdist_group("train_classifier")

THREADS_ENV = {"LABPIPE_CLASSIFIER_THREADS": "1"}


# ---------------------------------------------------------------------------------------------
# Split


def test_split_is_70_10_20_within_every_family_and_reproducible() -> None:
    labels = np.repeat([0, 1, 2], [100, 30, 10])
    split = stratified_split(labels, seed=3)
    for c, (train, val, test) in {0: (70, 10, 20), 1: (21, 3, 6), 2: (7, 1, 2)}.items():
        s = split[labels == c]
        assert [(s == k).sum() for k in ("train", "val", "test")] == [train, val, test]
    assert np.array_equal(split, stratified_split(labels, seed=3))
    assert not np.array_equal(split, stratified_split(labels, seed=4))


def test_adding_a_family_does_not_reshuffle_the_others_split() -> None:
    two = stratified_split(np.repeat([0, 1], 20), seed=0, names=["Apidae", "Formicidae"])
    three = stratified_split(np.repeat([0, 1, 2], 20), seed=0, names=["Apidae", "Carabidae", "Formicidae"])
    assert np.array_equal(two[20:40], three[40:60])  # Formicidae, index 1 then 2


def test_a_family_with_fewer_than_three_images_cannot_be_split() -> None:
    with pytest.raises(ValueError, match="class 1 has 2 items"):
        stratified_split(np.array([0, 0, 0, 1, 1]))


# ---------------------------------------------------------------------------------------------
# Calibration


def test_temperature_makes_an_overconfident_model_honest() -> None:
    # Confidence sigmoid(4) = 0.98 but 3 of 4 right: NLL is minimal where sigmoid(4 / T) = 0.75.
    z = np.array([[4.0, 0.0]] * 4)
    y = np.array([0, 0, 0, 1])
    t = fit_temperature(z, y)
    assert t == pytest.approx(4.0 / math.log(3.0), rel=1e-3)
    assert softmax(z, t)[0, 0] == pytest.approx(0.75, abs=1e-3)
    assert negative_log_likelihood(z, y, t) < negative_log_likelihood(z, y, 1.0)


def test_temperature_sharpens_an_underconfident_model() -> None:
    # Confidence sigmoid(0.5) = 0.62 but 9 of 10 right: T < 1.
    z = np.array([[0.5, 0.0]] * 10)
    y = np.array([0] * 9 + [1])
    assert fit_temperature(z, y) == pytest.approx(0.5 / math.log(9.0), rel=1e-3)


def test_perfectly_separated_validation_keeps_temperature_one() -> None:
    z = np.array([[2.0, 0.0], [0.0, 3.0]])
    assert fit_temperature(z, np.array([0, 1])) == 1.0  # NLL has no minimum: T -> 0
    assert fit_temperature(np.empty((0, 3)), np.empty(0, dtype=int)) == 1.0


def test_ece_is_the_gap_between_confidence_and_accuracy() -> None:
    p = np.array([[0.9, 0.1]] * 10)
    assert expected_calibration_error(p, np.array([0] * 9 + [1])) == pytest.approx(0.0)  # 90 % right
    assert expected_calibration_error(p, np.array([0] * 5 + [1] * 5)) == pytest.approx(0.4)
    # Two bins, weighted by their share: 0.5 * |1.0 - 0.6| + 0.5 * |0.0 - 0.95|.
    q = np.array([[0.6, 0.4], [0.6, 0.4], [0.95, 0.05], [0.95, 0.05]])
    assert expected_calibration_error(q, np.array([0, 0, 1, 1])) == pytest.approx(0.5 * 0.4 + 0.5 * 0.95)


def test_threshold_is_the_lowest_whose_accepted_predictions_meet_the_target() -> None:
    conf = [0.99, 0.95, 0.9, 0.8, 0.7, 0.6]
    correct = [True, True, True, False, True, False]
    choice = select_threshold(conf, correct, 0.75)  # accepting 5: 4/5 = 0.8 >= 0.75; all 6: 4/6
    assert (choice.threshold, choice.reachable, choice.coverage) == (0.7, True, 5 / 6)
    assert choice.accepted_accuracy == pytest.approx(0.8)
    assert select_threshold(conf, correct, 1.0).threshold == 0.9
    assert select_threshold(conf, [True] * 6, 0.95).threshold == 0.6  # never below the evidence


def test_unreachable_target_falls_back_to_the_most_accurate_threshold_and_says_so() -> None:
    choice = select_threshold([0.9, 0.8, 0.7], [False, True, False], 0.95)
    assert not choice.reachable
    assert (choice.threshold, choice.accepted_accuracy) == (0.8, 0.5)


def test_tied_confidences_are_accepted_or_rejected_together() -> None:
    choice = select_threshold([0.9, 0.8, 0.8, 0.7], [True, True, False, True], 0.9)
    assert choice.threshold == 0.9  # 0.8 would accept both ties: 2/3
    rc = risk_coverage_curve([0.9, 0.8, 0.8, 0.7], [True, True, False, True])
    assert rc.coverage.tolist() == [0.25, 0.75, 1.0]
    assert rc.risk.tolist() == pytest.approx([0.0, 1 / 3, 0.25])


# ---------------------------------------------------------------------------------------------
# Metrics


def test_a_validation_split_too_small_for_a_threshold_is_cross_fitted_and_warned_about() -> None:
    # The lab's run: 3 families, 6 validation images each, 6 of them wrong. On 18 images the 95 %
    # target sits above the most confident error (it gave 0.994, rejecting 92 of 116 crops).
    choice = choose_calibration("auto", 18, 6, True, pool_n=180)
    assert choice.crossfit and choice.reason == "cross-fitted: validation held 18 images (< 50)"
    assert choice.warning == (
        "the validation split holds 18 images, fewer than 50: too few to set a threshold for 0.95 "
        "accuracy of accepted predictions (one error there moves it to the most confident wrong "
        "prediction); temperature and threshold were chosen by 5-fold cross-fitting on the 180 "
        "train + validation images instead"
    )
    assert not choose_calibration("auto", 80, 9, True).crossfit  # large enough, errors enough
    assert choose_calibration("auto", 80, 9, True).warning is None
    forced = choose_calibration("validation", 18, 6, True)
    assert not forced.crossfit and "expect many correct crops rejected" in (forced.warning or "")
    finetuned = choose_calibration("auto", 18, 6, False)
    assert not finetuned.crossfit and "cross-fitting is not available" in (finetuned.warning or "")


def test_macro_accuracy_weighs_every_family_equally() -> None:
    scores = np.array([[0.9, 0.1, 0.0]] * 8 + [[0.6, 0.3, 0.1]] * 2)
    labels = np.array([0] * 8 + [1, 2])  # the big family is always right, the small ones never
    assert top_k_accuracy(scores, labels, 1) == pytest.approx((0.8, 1 / 3))
    assert top_k_accuracy(scores, labels, 2) == pytest.approx((0.9, 2 / 3))
    assert top_k_accuracy(scores, labels, 5) == (1.0, 1.0)


def test_confusion_matrix_and_precision_recall_f1() -> None:
    m = confusion_matrix([0, 0, 0, 1, 1, 2], [0, 0, 1, 1, 1, 0], 3)
    assert m.tolist() == [[2, 1, 0], [0, 2, 0], [1, 0, 0]]
    p, r, f, n = per_class_prf(m)
    assert p.tolist() == pytest.approx([2 / 3, 2 / 3, 0.0])
    assert r.tolist() == pytest.approx([2 / 3, 1.0, 0.0])
    assert f.tolist() == pytest.approx([2 / 3, 0.8, 0.0])
    assert n.tolist() == [3, 2, 1]


def test_class_weights_and_balanced_sampling_even_out_families() -> None:
    assert class_weights([0, 0, 0, 1], 3).tolist() == pytest.approx([2 / 3, 2.0, 0.0])
    labels = np.array([0] * 95 + [1] * 5)
    drawn = labels[balanced_sample(labels, 20_000, np.random.default_rng(0))]
    assert 0.47 < drawn.mean() < 0.53


# ---------------------------------------------------------------------------------------------
# Augmentation


def _marked_square() -> np.ndarray:
    a = np.full((40, 40, 3), 200, np.uint8)
    a[5:10, 5:10] = (255, 0, 0)  # a red mark top-left
    return a


def test_rotation_by_quarter_turns_is_exact_and_other_angles_fill_corners_with_the_border_colour() -> None:
    a = _marked_square()
    assert np.array_equal(rotate_square(a, 90), np.rot90(a))
    assert np.array_equal(rotate_square(a, -180), a[::-1, ::-1])
    b = rotate_square(a, 45)
    assert b.shape == a.shape and b.dtype == np.uint8
    assert b[0, 0].tolist() == [200, 200, 200]  # uncovered corner: the border mean


def test_colour_jitter_of_one_is_identity_and_views_are_reproducible() -> None:
    a = _marked_square()
    assert np.array_equal(color_jitter(a, 1.0, 1.0, 1.0), a)
    grey = color_jitter(a, 1.0, 1.0, 0.0)
    assert np.ptp(grey[7, 7]) <= 1  # saturation 0: grey
    v1 = augment_square(a, view_rng("x.png", 1))
    assert np.array_equal(v1, augment_square(a, view_rng("x.png", 1)))
    assert not np.array_equal(v1, augment_square(a, view_rng("x.png", 2)))
    flips_only = AugmentSpec(max_rotation=0, hflip=1.0, vflip=0.0, brightness=0, contrast=0, saturation=0)
    assert np.array_equal(augment_square(a, np.random.default_rng(0), flips_only), a[:, ::-1])


def test_label_hash_is_of_the_ordered_list() -> None:
    assert labels_sha256(["Apidae", "Carabidae"]) != labels_sha256(["Carabidae", "Apidae"])


# ---------------------------------------------------------------------------------------------
# A real training run (12 ants, 12 ground beetles)


@pytest.fixture(scope="module")
def small_data(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("families")
    for family, folder in (("Formicidae", "ants-bees/ants"), ("Carabidae", "carabidae-crops")):
        (root / family).mkdir()
        for path in sorted((shared_data / folder).iterdir())[:12]:
            (root / family / path.name).symlink_to(path)
    return root


@pytest.fixture(scope="module")
def trained(small_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Trained once through the CLI: 1 augmented view, 8 epochs."""
    base = tmp_path_factory.mktemp("store")
    out = base / "models" / "tiny"
    args = ["--data-dir", str(base), "train", "classifier", str(small_data), "--out", str(out)]
    args += ["--views", "1", "--epochs", "8", "--name", "tiny", "--json"]
    result = CliRunner().invoke(cli, args, env=THREADS_ENV)
    assert result.exit_code == 0, result.output
    return {
        "out": out,
        "base": base,
        "args": args,
        "summary": json.loads(result.stdout),
        "stderr": result.stderr,
    }


def test_training_writes_a_self_describing_model_directory(trained: dict) -> None:
    out: Path = trained["out"]
    for name in ("config.json", "model.safetensors", "metrics.json", "split.json", "confusion.csv"):
        assert (out / name).is_file(), name
    assert (out / "confusion.png").stat().st_size > 0 and (out / "risk_coverage.png").stat().st_size > 0
    config = json.loads((out / "config.json").read_text())
    assert config["format"] == "labpipe-classifier-v1" and config["architecture"] == "efficientnet_lite0"
    assert config["labels"] == ["Carabidae", "Formicidae"]
    assert config["input_size"] == 320 and config["mean"] == [0.5] * 3 and config["pad_rule"] == "border_mean"
    assert config["weights"]["contains"] == "head" and len(config["weights"]["backbone"]["sha256"]) == 64
    assert config["split"]["counts"] == {f: {"train": 9, "val": 1, "test": 2} for f in config["labels"]}
    assert config["temperature"] > 0 and 0 <= config["threshold"] <= 1 and config["threshold_target"] == 0.95
    assert set(config["training"]["seconds"]) >= {"features", "head", "total"}
    assert config["data"]["images"] == 24
    assert (out / "model.safetensors").stat().st_size < 2_000_000  # the head only
    split = json.loads((out / "split.json").read_text())
    assert sum(len(v) for v in split.values()) == 24
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["images"] == 4 and metrics["data"]["split"] == "test"
    assert trained["summary"]["version"] == model_identity(out).version


def test_model_directory_loads_through_the_production_loader_and_classifies(
    trained: dict, shared_data: Path
) -> None:
    out: Path = trained["out"]
    clf = load_classifier(str(out), threads=1, top_k=2)
    assert isinstance(clf, TrainedFamilyClassifier)
    identity = model_identity(out)
    assert (
        clf.version == identity.version == f"tiny@w{identity.weights_hash[:12]}-l{identity.labels_hash[:12]}"
    )
    assert clf.labels_hash == labels_sha256(["Carabidae", "Formicidae"])
    assert clf.threshold == json.loads((out / "config.json").read_text())["threshold"]  # the model's own
    assert load_classifier(str(out), threshold=0.5, threads=1).threshold == 0.5  # asked for: honoured
    beetle = load_square(sorted((shared_data / "carabidae-crops").iterdir())[-1])  # not in training
    tall = np.asarray(PILImage.open(sorted((shared_data / "carabidae-crops").iterdir())[-2]).convert("RGB"))
    results = clf.classify([beetle, tall])  # a non-square crop is padded with the same rule
    assert [r.family for r in results] == ["Carabidae", "Carabidae"]
    assert all(r.model_version == clf.version and len(r.top) == 2 for r in results)
    assert results[0].probability == pytest.approx(sum(p for _, p in results[0].top[:1]))
    probs = clf.probabilities([beetle])
    assert probs.sum() == pytest.approx(1.0)
    assert probs[0] == pytest.approx(softmax(clf.logits([beetle]), clf.temperature)[0])
    assert clf.logits([tall]) == pytest.approx(clf.logits([pad_to_square(tall)]))


def test_a_specimen_unlike_every_trained_family_is_rejected_as_out_of_distribution(
    trained: dict, shared_data: Path
) -> None:
    out: Path = trained["out"]
    config = json.loads((out / "config.json").read_text())
    assert config["ood"]["threshold"] > 0 and (out / config["ood"]["file"]).is_file()
    assert config["ood"]["rule"] == "knn" and config["ood"]["k"] == 10  # two families: no family to leave out
    assert config["ood"]["fitted_on"] == 20 * 2  # train + val, 2 views
    # the keep: the strictest candidate whose threshold keeps 95 % of the correct calls out of fold
    chosen = config["ood"]["keep_selection"]
    kept = {float(k): v for k, v in chosen["correct_kept"].items()}
    keep = config["ood"]["keep"]
    assert keep in kept and all(v < 0.95 for k, v in kept.items() if k < keep)
    assert kept[keep] >= 0.95 if chosen["reached"] else keep == max(kept)
    clf = load_classifier(str(out), threads=1)
    wells = [load_square(p) for p in sorted((shared_data / "bioscan-wells" / "single").iterdir())[:10]]
    beetles = [load_square(p) for p in sorted((shared_data / "carabidae-crops").iterdir())[-10:]]
    results = clf.classify([*wells, *beetles])
    codes = [reason_code(r.reason) for r in results]
    # Flies, wasps and bugs in wells: neither ants nor ground beetles, whatever the softmax says.
    assert codes[:10].count("out_of_distribution") >= 8
    far = results[codes.index("out_of_distribution")]
    assert far.rejected and "from every family" in (far.reason or "")
    assert codes[10:].count("out_of_distribution") <= 1  # unseen ground beetles are in distribution
    assert all(r.family for r in results)  # the best family is still named, for review


def test_tiny_training_warns_and_its_threshold_keeps_most_held_out_crops(
    trained: dict, shared_data: Path
) -> None:
    # 12 images per family: 1 validation image each. The command says so, and cross-fits.
    summary = trained["summary"]
    assert summary["temperature_fit"]["crossfit"]
    assert summary["warnings"] == [summary["temperature_fit"]["warning"]]
    assert summary["warnings"][0].startswith("the validation split holds 2 images, fewer than 50")
    assert "warning: the validation split holds 2 images" in trained["stderr"]
    # Crops of the same families the model never saw (the folders' last 20, training took the first 12)
    clf = load_classifier(str(trained["out"]), threads=1)
    held_out = [
        load_square(p)
        for folder in ("carabidae-crops", "ants-bees/ants")
        for p in sorted((shared_data / folder).iterdir())[-20:]
    ]
    results = clf.classify(held_out)
    below_threshold = sum(r.probability is not None and r.probability < clf.threshold for r in results)
    assert clf.threshold < 0.99
    assert below_threshold <= len(held_out) // 4, (clf.threshold, below_threshold)
    assert sum(r.rejected for r in results) < len(held_out) // 2  # not "92 of 116 rejected"


def test_a_second_training_run_reads_every_feature_from_the_cache(trained: dict) -> None:
    args = [a if a != str(trained["out"]) else str(trained["out"]) + "-again" for a in trained["args"]]
    result = CliRunner().invoke(cli, args, env=THREADS_ENV)
    assert result.exit_code == 0, result.output
    cache = json.loads(result.stdout)["feature_cache"]
    assert cache["misses"] == 0 and cache["hits"] == 18 * 2 + 2 * 2 + 4  # train and val in 2 views, test
    # Same data, seed and cache: the same weights, so the same version.
    assert json.loads(result.stdout)["version"] == trained["summary"]["version"]


def test_a_cached_feature_is_keyed_by_the_pictures_content_not_its_name_or_time(tmp_path: Path) -> None:
    from labpipe.classify.features import FeatureCache, FeatureRecipe

    recipe = FeatureRecipe(backbone_sha256="0" * 64)
    crop = tmp_path / "Formicidae" / "ant.png"
    crop.parent.mkdir()
    crop.write_bytes(b"picture one")
    stamp = crop.stat().st_mtime_ns
    first = FeatureCache.key(crop, 0, recipe)
    crop.write_bytes(b"picture two")  # another picture: same name, size and modification time
    os.utime(crop, ns=(stamp, stamp))
    assert FeatureCache.key(crop, 0, recipe) != first
    moved = tmp_path / "elsewhere.png"
    moved.write_bytes(b"picture one")
    assert FeatureCache.key(moved, 0, recipe) == first  # the same picture anywhere: the same feature


def test_finetuning_saves_the_whole_network_and_its_hash_names_the_version(
    small_data: Path, tmp_path: Path
) -> None:
    from labpipe.classify.training import TrainOptions, train_classifier

    options = TrainOptions(name="ft", views=0, epochs=3, finetune=True, finetune_epochs=1, threads=1)
    result = train_classifier(small_data, tmp_path / "ft", options, progress=False)
    config = result.config
    assert config["weights"]["contains"] == "full" and "backbone" not in config["weights"]
    assert set(config["training"]["seconds"]) >= {"features", "head", "finetune"}
    assert (tmp_path / "ft" / "model.safetensors").stat().st_size > 10_000_000  # backbone included
    assert (tmp_path / "ft" / "model.safetensors").stat().st_mode & 0o044  # readable by workers
    clf = load_classifier(str(tmp_path / "ft"), threshold=0.5, threads=1)
    identity = model_identity(tmp_path / "ft")
    assert clf.version == result.version == identity.version
    assert identity.weights_hash == file_sha256(tmp_path / "ft" / "model.safetensors")


def test_training_refuses_to_overwrite_a_model_unless_asked(trained: dict, small_data: Path) -> None:
    from labpipe.classify.training import train_classifier

    with pytest.raises(ConfigError, match="already holds a model"):
        train_classifier(small_data, trained["out"])


def test_eval_reports_accuracy_calibration_rejection_and_plots(
    trained: dict, small_data: Path, shared_data: Path, tmp_path: Path
) -> None:
    ood = tmp_path / "wells"
    ood.mkdir()
    for path in sorted((shared_data / "bioscan-wells" / "single").iterdir())[:3]:
        (ood / path.name).symlink_to(path)
    args = ["eval", "classifier", str(small_data), "--model", str(trained["out"]), "--ood", str(ood)]
    result = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "report"), "--json"], env=THREADS_ENV)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["data"]["excluded_seen_in_training"] == 20 and report["images"] == 4  # the test split
    assert set(report["accuracy"]) == {"top1", "top3", "top5"}
    assert set(report["accuracy"]["top1"]) == {"micro", "macro", "trivial"}
    assert set(report["per_family"]["Carabidae"]) == {"precision", "recall", "f1", "support"}
    assert report["confusion_matrix"]["counts"] and len(report["confusion_matrix"]["counts"]) == 2
    assert {"ece_before", "ece_after", "temperature"} <= set(report["calibration"])
    assert {"correct_kept", "wrong_rejected", "coverage", "accepted_accuracy"} <= set(report["at_threshold"])
    wells = report["out_of_distribution"][f"{tmp_path.name}/wells"]
    assert wells["images"] == 3
    assert wells["rejected"] >= max(wells["rejected_by_confidence"], wells["rejected_by_distance"])
    assert report["at_threshold"]["distance_threshold"] == pytest.approx(
        json.loads((trained["out"] / "config.json").read_text())["ood"]["threshold"], rel=1e-3
    )
    assert "confidence_only" in report["at_threshold"]
    for key in ("confusion_csv", "confusion_png", "risk_coverage_png"):
        assert Path(report["files"][key]).is_file()
    lines = (tmp_path / "report" / "confusion.csv").read_text().splitlines()
    assert lines[0] == "true \\ predicted,Carabidae,Formicidae"


# ---------------------------------------------------------------------------------------------
# Registry and reclassify


def _database_with_crops(base: Path, shared_data: Path) -> tuple[str, list[int]]:
    """A SQLite database with one done image of sample S1 holding 4 specimens with stored crops
    (2 ground beetles, 2 ants), each already classified by an older model."""
    url = f"sqlite:///{(base / 'labpipe.sqlite').as_posix()}"
    factory = open_database(url)
    crops = [sorted((shared_data / "carabidae-crops").iterdir())[-i] for i in (1, 2)]
    crops += [sorted((shared_data / "ants-bees" / "ants").iterdir())[-i] for i in (1, 2)]
    with factory() as session:
        session.add(Sample(id="S1"))
        image = Image(
            sample_id="S1",
            source_path="plate.tif",
            file_name="plate.tif",
            content_hash="0" * 64,
            size_bytes=1,
        )
        image.status = ImageStatus.DONE.value
        old = Model(
            name="old",
            kind=ModelKind.CLASSIFIER.value,
            version="old@w000000000000-l000000000000",
            weights_hash="0" * 64,
            labels_hash="0" * 64,
            labels=["Carabidae"],
        )
        session.add_all([image, old])
        session.flush()
        ids = []
        for i, source in enumerate(crops, start=1):
            rel = f"S1/{image.id:06d}/{i}.png"
            save_crop(load_square(source), base / "crops" / rel)
            specimen = Specimen(
                image_id=image.id, index_in_image=i, x=0, y=0, w=10, h=10, score=1.0,
                detector_version="hand", crop_path=rel, crop_size=10,
            )  # fmt: skip
            specimen.classifications.append(
                Classification(model_id=old.id, family="Carabidae", probability=0.9, rejected=False, top_k=[])
            )
            session.add(specimen)
            session.flush()
            ids.append(specimen.id)
        session.commit()
    factory.kw["bind"].dispose()
    return url, ids


def test_registry_and_reclassify_keep_earlier_results_and_count_per_model(
    trained: dict, shared_data: Path, tmp_path: Path
) -> None:
    url, _ = _database_with_crops(tmp_path, shared_data)
    base = ["--data-dir", str(tmp_path), "--db", url]
    run = CliRunner()
    env = THREADS_ENV

    added = run.invoke(cli, [*base, "models", "add", str(trained["out"]), "--json"], env=env)
    assert added.exit_code == 0, added.output
    version = json.loads(added.stdout)["version"]
    again = run.invoke(cli, [*base, "models", "add", str(trained["out"]), "--json"], env=env)
    assert json.loads(again.stdout)["created"] is False

    assert run.invoke(cli, [*base, "models", "set-default", version[:20]], env=env).exit_code == 0
    listed = json.loads(run.invoke(cli, [*base, "models", "list", "--json"], env=env).stdout)
    assert [(m["version"], m["default"]) for m in listed] == [
        ("old@w000000000000-l000000000000", False),
        (version, True),
    ]
    clf = load_classifier("registry:default", threshold=0.5, threads=1, database_url=url)
    assert clf.version == version

    out = run.invoke(cli, [*base, "reclassify", "--model", version, "--sample", "S1", "--json"], env=env)
    assert out.exit_code == 0, out.output
    first = json.loads(out.stdout)
    assert (first["classified"], first["already_done"], first["missing_crops"]) == (4, 0, [])
    second = json.loads(
        run.invoke(cli, [*base, "reclassify", "--model", "default", "--json"], env=env).stdout
    )
    assert (second["classified"], second["already_done"]) == (0, 4)  # idempotent

    factory = open_database(url)
    with factory() as session:
        assert session.scalar(select(func.count()).select_from(Classification)) == 8  # 4 old + 4 new
        old_counts = count_families(session, "S1", model_version="old@w000000000000-l000000000000")
        new_counts = count_families(session, "S1", model_version=version)
        latest = count_families(session, "S1")
    factory.kw["bind"].dispose()
    assert old_counts[0]["families"] == {"Carabidae": 4}
    assert new_counts[0]["specimens"] == 4
    assert sum(new_counts[0]["families"].values()) + new_counts[0]["rejected"] == 4
    assert set(new_counts[0]["families"]) <= {"Carabidae", "Formicidae"}
    assert latest == new_counts  # the newest classification per specimen is the new model's

    # --threshold re-decides this model's stored calls from their probabilities (no network run)
    strict = json.loads(
        run.invoke(cli, [*base, "reclassify", "--threshold", "0.999", "--json"], env=env).stdout
    )
    assert (strict["classified"], strict["redecided"]) == (0, 4)
    factory = open_database(url)
    with factory() as session:
        strict_counts = count_families(session, "S1", model_version=version)
        rows = session.scalars(select(Classification).where(Classification.threshold == 0.999)).all()
        assert len(rows) == 4 and all(r.decided_at is not None for r in rows)
        assert all(r.rejected == (r.probability < 0.999) for r in rows)
    factory.kw["bind"].dispose()
    assert strict_counts[0]["rejected"] == sum(r.probability < 0.999 for r in rows) >= 1
    assert strict["changed"] == strict_counts[0]["rejected"] - new_counts[0]["rejected"]
    lenient = json.loads(run.invoke(cli, [*base, "reclassify", "--threshold", "0", "--json"], env=env).stdout)
    assert lenient["redecided"] == 4
    factory = open_database(url)
    with factory() as session:
        lenient_counts = count_families(session, "S1", model_version=version)
    factory.kw["bind"].dispose()
    assert lenient_counts[0]["rejected"] <= new_counts[0]["rejected"]  # only out-of-distribution stay


def test_unknown_model_versions_are_refused_naming_the_registered_ones(tmp_path: Path) -> None:
    url = f"sqlite:///{(tmp_path / 'x.sqlite').as_posix()}"
    out = CliRunner().invoke(cli, ["--db", url, "reclassify", "--model", "nope@w1"], env=THREADS_ENV)
    assert out.exit_code == 2 and "no registered model has this version" in out.output
    out = CliRunner().invoke(cli, ["--db", url, "models", "set-default", "nope"], env=THREADS_ENV)
    assert out.exit_code == 2


def test_scan_refuses_a_folder_the_model_does_not_know(small_data: Path) -> None:
    with pytest.raises(ValueError, match="name no family of the model"):
        scan_family_folders(small_data, ["Carabidae", "Apidae"])


# ---------------------------------------------------------------------------------------------
# Test-time augmentation over orientations (--tta)


def test_dihedral_views_are_exact_quarter_turns_and_mirror_images() -> None:
    from labpipe.classify.features import FeatureRecipe, dihedral, view_image

    a = np.arange(6).reshape(2, 3)
    assert dihedral(a, 0).tolist() == a.tolist()
    assert dihedral(a, 4).tolist() == [[2, 1, 0], [5, 4, 3]]  # mirrored left-right
    assert dihedral(a, 1).tolist() == [[2, 5], [1, 4], [0, 3]]  # a quarter turn counter-clockwise
    assert len({dihedral(a, i).tobytes() + bytes(dihedral(a, i).shape) for i in range(8)}) == 8
    with pytest.raises(ValueError, match="0 to 7"):
        dihedral(a, 8)
    square = np.random.default_rng(0).integers(0, 255, (5, 5, 3), dtype=np.uint8)
    recipe = FeatureRecipe(backbone_sha256="0" * 64)
    assert np.array_equal(view_image(square, -4, "k", recipe), square[:, ::-1])  # no randomness


def test_a_tta_model_judges_the_mean_of_three_orientations_and_old_models_the_crop_alone(
    trained: dict, small_data: Path, shared_data: Path, tmp_path: Path
) -> None:
    import torch

    from labpipe.classify.features import dihedral
    from labpipe.classify.imagenet_family import to_model_input
    from labpipe.classify.training import TrainOptions, train_classifier

    options = TrainOptions(name="tta", views=1, epochs=8, tta=True, threads=1)
    result = train_classifier(small_data, tmp_path / "tta", options, progress=False)
    assert result.config["tta"]["views"] == [0, -4, -1]
    assert result.config["ood"]["fitted_on"] == 20  # one mean per train + validation crop
    beetle = load_square(sorted((shared_data / "carabidae-crops").iterdir())[-1])  # not in training

    def by_hand(clf: TrainedFamilyClassifier, views: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        squares = [beetle if v == 0 else dihedral(beetle, -v) for v in views]
        with torch.inference_mode():
            f = clf.net.backbone.forward_features(to_model_input(squares, clf.input_size)).double()
            return clf.net.head(f.mean(0, keepdim=True).float()).double().numpy(), f[0].numpy()

    new = load_classifier(str(tmp_path / "tta"), threads=1)
    assert isinstance(new, TrainedFamilyClassifier) and new.tta_views == (0, -4, -1)
    assert new.input_size == result.config["input_size"] == 320  # the backbone sees what training saw
    logits, _, pooled = new.scores_and_features([beetle])
    expected, own = by_hand(new, (0, -4, -1))
    assert logits == pytest.approx(expected, abs=1e-4)
    assert pooled[0] == pytest.approx(own, abs=1e-4)  # a gate still sees the crop's own features
    assert new.classify([beetle])[0].family == "Carabidae"
    old = load_classifier(str(trained["out"]), threads=1)  # trained before --tta: unchanged
    assert "tta" not in old.config and old.tta_views == (0,)
    assert old.logits([beetle]) == pytest.approx(by_hand(old, (0,))[0], abs=1e-4)


def test_a_model_whose_tta_block_names_no_orientation_is_refused(trained: dict, tmp_path: Path) -> None:
    import shutil

    from labpipe.errors import ModelLoadError

    copy = tmp_path / "bad"
    shutil.copytree(trained["out"], copy)
    config = json.loads((copy / "config.json").read_text())
    config["tta"] = {"views": [1, 2]}
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=r"tta\.views"):
        load_classifier(str(copy), threads=1)


@pytest.mark.parametrize(("given", "said"), [("1.5", "not a share in [0, 1]"), ("most", "neither 'auto'")])
def test_a_keep_that_is_no_share_is_refused_before_training(given: str, said: str, tmp_path: Path) -> None:
    (tmp_path / "A").mkdir()
    result = CliRunner().invoke(
        cli, ["train", "classifier", str(tmp_path), "--out", str(tmp_path / "m"), "--ood-keep", given]
    )
    assert result.exit_code == 2 and "--ood-keep" in result.output and said in result.output
    assert not (tmp_path / "m").exists()

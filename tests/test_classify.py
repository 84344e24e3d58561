"""Family classification: the ImageNet EfficientNet-Lite0 backbone, the family table, the decision rule."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from labpipe.classify import loader as loader_module
from labpipe.classify.base import (
    REJECT_FAMILY_UNRESOLVED,
    REJECT_LOW_CONFIDENCE,
    REJECT_NOT_ARTHROPOD,
    Classification,
    reason_code,
)
from labpipe.classify.efficientnet_lite import (
    NUM_PARAM_TENSORS,
    build_efficientnet_lite0,
    default_weights_path,
    load_lite0_state_dict,
)
from labpipe.classify.imagenet_family import (
    CLASSES_FILE,
    FAMILY_TABLE_FILE,
    ImageNetFamilyClassifier,
    LabelSpace,
    decide,
    family_probabilities,
    load_family_table,
    load_imagenet_classes,
    to_model_input,
)
from labpipe.classify.loader import builtin_specs, load_classifier
from labpipe.crops import pad_to_square
from labpipe.errors import ModelLoadError

BUILTIN = "builtin:imagenet-efficientnet-lite0"
# ImageNet-1k's arthropods: trilobite..centipede, Dungeness crab..isopod, tiger beetle..lycaenid.
ARTHROPOD_INDICES = [*range(69, 80), *range(118, 127), *range(300, 327)]


@pytest.fixture(scope="module")
def source_state() -> dict[str, torch.Tensor]:
    return torch.load(default_weights_path(), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def classifier() -> ImageNetFamilyClassifier:
    clf = load_classifier(BUILTIN, threshold=0.5, batch_size=16, threads=1, top_k=3)
    assert isinstance(clf, ImageNetFamilyClassifier)
    return clf


# ---------------------------------------------------------------------------------------------
# Weights


def test_packaged_weights_load_all_247_tensors_by_order_with_shapes_checked(
    source_state: dict[str, torch.Tensor],
) -> None:
    model = build_efficientnet_lite0()
    assert load_lite0_state_dict(model, default_weights_path()) == NUM_PARAM_TENSORS == 247
    state = model.state_dict()
    assert len([k for k in state if not k.endswith("num_batches_tracked")]) == 247
    # First, a middle and the last tensor landed where the order says.
    assert torch.equal(state["conv_stem.weight"], source_state["_conv_stem.weight"])
    assert torch.equal(state["blocks.3.2.bn2.running_var"], source_state["_blocks.7._bn1.running_var"])
    assert torch.equal(state["classifier.bias"], source_state["_fc.bias"])


def test_a_tensor_of_the_wrong_shape_fails_naming_that_tensor(source_state: dict[str, torch.Tensor]) -> None:
    broken = dict(source_state)
    broken["_blocks.5._bn1.weight"] = torch.zeros(7)
    with pytest.raises(ModelLoadError, match=r"_blocks\.5\._bn1\.weight"):
        load_lite0_state_dict(build_efficientnet_lite0(), broken)


def test_a_state_dict_with_a_missing_tensor_fails_with_the_count(
    source_state: dict[str, torch.Tensor],
) -> None:
    truncated = dict(list(source_state.items())[:-1])  # no _fc.bias
    with pytest.raises(ModelLoadError, match="246 tensors in the weights, the model has 247"):
        load_lite0_state_dict(build_efficientnet_lite0(), truncated)


def test_a_file_that_is_not_a_state_dict_fails_clearly(tmp_path: Path) -> None:
    junk = tmp_path / "weights.pth"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(ModelLoadError, match="cannot read weights"):
        load_lite0_state_dict(build_efficientnet_lite0(), junk)


def test_model_gives_1280_features_and_1000_logits() -> None:
    model = build_efficientnet_lite0()
    with torch.inference_mode():
        x = torch.zeros(2, 3, 64, 64)  # any size: global pooling
        assert model.forward_features(x).shape == (2, 1280)
        assert model(x).shape == (2, 1000)


# ---------------------------------------------------------------------------------------------
# Class names and family table


def test_class_list_has_1000_classes_in_imagenet_order_and_skips_its_header() -> None:
    assert CLASSES_FILE.read_text(encoding="utf-8").startswith("#")
    classes = load_imagenet_classes()
    assert len(classes) == 1000
    assert (classes[0].synset, classes[0].name) == ("n01440764", "tench")
    assert classes[302].name == "ground beetle"
    assert classes[999].synset == "n15075141"  # toilet tissue, the last ImageNet-1k class


def test_family_table_indices_match_the_class_name_file() -> None:
    classes = load_imagenet_classes()
    table = load_family_table(FAMILY_TABLE_FILE, classes)  # raises on any index/name mismatch
    for row in table:
        assert classes[row.imagenet_index].name == row.imagenet_name
    assert sorted(row.imagenet_index for row in table) == ARTHROPOD_INDICES
    assert all(row.arthropod and row.justification for row in table)


def test_family_table_maps_the_beetle_and_hymenoptera_classes_as_documented() -> None:
    by_name = {row.imagenet_name: row.family for row in load_family_table()}
    expected = {
        "ground beetle": "Carabidae",
        "tiger beetle": "Carabidae",
        "ladybug": "Coccinellidae",
        "leaf beetle": "Chrysomelidae",
        "long-horned beetle": "Cerambycidae",
        "weevil": "Curculionidae",
        "dung beetle": "Scarabaeidae",
        "rhinoceros beetle": "Scarabaeidae",
        "ant": "Formicidae",
        "bee": "Apidae",
    }
    assert {name: by_name[name] for name in expected} == expected
    for unresolved in ("fly", "dragonfly", "damselfly", "walking stick", "harvestman", "isopod", "crayfish"):
        assert by_name[unresolved] is None


def test_a_shifted_index_in_the_family_table_is_refused(tmp_path: Path) -> None:
    text = FAMILY_TABLE_FILE.read_text(encoding="utf-8").replace("302,ground beetle", "303,ground beetle")
    text = text.replace("303,long-horned beetle", "302,long-horned beetle")
    bad = tmp_path / "families.csv"
    bad.write_text(text, encoding="utf-8")
    with pytest.raises(ModelLoadError, match="index 303 is 'long-horned beetle'"):
        load_family_table(bad, load_imagenet_classes())


# ---------------------------------------------------------------------------------------------
# Aggregation and preprocessing


def test_family_probability_is_the_sum_of_its_imagenet_classes() -> None:
    labels = LabelSpace.load()
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 1000))
    logits[0, 302] += 8.0  # ground beetle
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    fam = family_probabilities(probs, labels.class_family, len(labels.families))
    carabidae = labels.families.index("Carabidae")
    araneidae = labels.families.index("Araneidae")
    np.testing.assert_allclose(fam[:, carabidae], probs[:, 300] + probs[:, 302])
    np.testing.assert_allclose(fam[:, araneidae], probs[:, 72] + probs[:, 73] + probs[:, 74])
    unmapped = [c for c, f in enumerate(labels.class_family) if f < 0]
    np.testing.assert_allclose(fam.sum(axis=1) + probs[:, unmapped].sum(axis=1), 1.0)
    assert fam[0].argmax() == carabidae


def test_family_probabilities_on_a_tiny_label_space() -> None:
    probs = np.array([[0.5, 0.2, 0.2, 0.1], [0.0, 0.0, 0.0, 1.0]])
    out = family_probabilities(probs, [0, 0, 1, -1], 2)
    np.testing.assert_allclose(out, [[0.7, 0.2], [0.0, 0.0]])
    with pytest.raises(ValueError, match="class_probs must be"):
        family_probabilities(probs[:, :3], [0, 0, 1, -1], 2)


def test_model_input_is_square_normalised_to_minus_one_one() -> None:
    white = np.full((300, 300, 3), 255, np.uint8)
    black = np.zeros((50, 50, 3), np.uint8)
    grey = np.full((224, 224), 128, np.uint8)
    x = to_model_input([white, black, grey])
    assert x.shape == (3, 3, 224, 224) and x.dtype == torch.float32
    assert torch.allclose(x[0], torch.ones(1)) and torch.allclose(x[1], -torch.ones(1))
    assert torch.allclose(x[2], torch.full((1,), 128 / 255 * 2 - 1), atol=1e-6)
    assert to_model_input([]).shape == (0, 3, 224, 224)


@pytest.mark.parametrize(
    ("crop", "message"),
    [
        (np.zeros((10, 12, 3), np.uint8), "not square"),
        (np.zeros((10, 10, 3), np.float32), "expected uint8"),
        (np.zeros((10, 10, 2), np.uint8), "expected an"),
    ],
)
def test_model_input_refuses_what_it_would_distort(crop: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        to_model_input([crop])


# ---------------------------------------------------------------------------------------------
# decide(): every branch, on hand-made inputs


def test_confident_family_is_accepted() -> None:
    d = decide({"Carabidae": 0.9, "Formicidae": 0.05}, True, True, 0.5, top_class_probability=0.8)
    assert d == ("Carabidae", 0.9, False, None)


def test_family_exactly_at_the_threshold_is_accepted() -> None:
    assert not decide({"Apidae": 0.5}, True, True, 0.5).rejected


def test_uncertain_family_is_rejected_as_low_confidence_but_kept_for_review() -> None:
    d = decide({"Carabidae": 0.42, "Cerambycidae": 0.3}, True, True, 0.5, top_class_name="ground beetle")
    assert d.rejected and d.family == "Carabidae" and d.probability == 0.42
    assert reason_code(d.reason) == REJECT_LOW_CONFIDENCE
    assert d.reason == "low_confidence: Carabidae 0.42 < threshold 0.50"


def test_top_class_that_is_not_an_arthropod_is_rejected_as_such() -> None:
    d = decide({"Carabidae": 0.2}, False, False, 0.5, top_class_name="dishrag", top_class_probability=0.41)
    assert d.rejected and d.family == "Carabidae"
    assert reason_code(d.reason) == REJECT_NOT_ARTHROPOD
    assert d.reason.startswith("not_arthropod: top class 'dishrag' 0.41")


def test_top_class_that_is_an_arthropod_without_a_family_is_rejected_as_unresolved() -> None:
    d = decide({"Apidae": 0.1}, True, False, 0.5, top_class_name="fly", top_class_probability=0.7)
    assert d.rejected and reason_code(d.reason) == REJECT_FAMILY_UNRESOLVED
    assert "'fly' 0.70" in d.reason


def test_family_split_over_classes_beats_a_single_unmapped_top_class() -> None:
    # ground beetle 0.30 + tiger beetle 0.30 against fly 0.35: Carabidae 0.60 wins.
    d = decide({"Carabidae": 0.6}, True, False, 0.5, top_class_name="fly", top_class_probability=0.35)
    assert d == ("Carabidae", 0.6, False, None)


def test_unmapped_top_class_beating_the_best_family_wins_even_above_threshold() -> None:
    d = decide({"Formicidae": 0.31}, False, False, 0.3, top_class_name="daisy", top_class_probability=0.5)
    assert d.rejected and reason_code(d.reason) == REJECT_NOT_ARTHROPOD


def test_without_top_class_probability_an_unmapped_top_class_always_rejects() -> None:
    assert decide({"Carabidae": 0.9}, False, False, 0.5).rejected


def test_no_families_at_all_is_low_confidence_with_no_family() -> None:
    d = decide({}, True, True, 0.5)
    assert d == (None, 0.0, True, "low_confidence: no family < threshold 0.50")


def test_decide_refuses_impossible_inputs() -> None:
    with pytest.raises(ValueError, match="threshold"):
        decide({"Carabidae": 0.9}, True, True, 1.5)
    with pytest.raises(ValueError, match="requires top_class_is_arthropod"):
        decide({"Carabidae": 0.9}, False, True, 0.5)


def test_ties_are_broken_by_family_name() -> None:
    assert decide({"Pieridae": 0.5, "Apidae": 0.5}, True, True, 0.5).family == "Apidae"


# ---------------------------------------------------------------------------------------------
# Classifier and loader


def test_builtin_classifier_reports_its_version_and_families(classifier: ImageNetFamilyClassifier) -> None:
    name, _, hashes = classifier.version.partition("@")
    assert name == classifier.name == "imagenet-efficientnet-lite0"
    weights_hash, labels_hash = hashes.split("-l")
    assert weights_hash.startswith("w") and len(weights_hash) == 13 and len(labels_hash) == 12
    assert len(classifier.weights_hash) == len(classifier.labels_hash) == 64
    assert weights_hash == "w" + classifier.weights_hash[:12] and labels_hash == classifier.labels_hash[:12]
    assert "Carabidae" in classifier.families and "Formicidae" in classifier.families


def test_classify_returns_one_result_per_crop_with_top_k(classifier: ImageNetFamilyClassifier) -> None:
    crops = [np.full((64, 64, 3), 200, np.uint8) for _ in range(20)]  # more than one batch
    results = classifier.classify(crops)
    assert len(results) == 20 and all(isinstance(r, Classification) for r in results)
    assert all(len(r.top) == 3 and r.model_version == classifier.version for r in results)
    assert all(r.top[0][1] >= r.top[1][1] >= r.top[2][1] for r in results)
    assert all(r.rejected for r in results)  # a blank grey square is no specimen
    assert classifier.classify([]) == []


def test_unknown_builtin_names_the_spec_and_lists_the_valid_ones() -> None:
    with pytest.raises(ModelLoadError) as info:
        load_classifier("builtin:resnet-9000", threshold=0.5)
    assert "builtin:resnet-9000" in str(info.value) and BUILTIN in str(info.value)
    assert builtin_specs() == [BUILTIN]


def test_missing_model_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="neither a built-in"):
        load_classifier(str(tmp_path / "nope"), threshold=0.5)


def test_model_directory_without_recognised_config_is_refused_naming_known_formats(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"no config\.json with a known format .*labpipe-classifier-v1"):
        load_classifier(str(tmp_path), threshold=0.5)
    (tmp_path / "config.json").write_text(json.dumps({"format": "something-else"}), encoding="utf-8")
    with pytest.raises(ModelLoadError, match=r"no config\.json with a known format"):
        load_classifier(str(tmp_path), threshold=0.5)


def test_model_directory_with_a_registered_format_goes_through_the_same_entry_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loader_module, "_DIRECTORY_FORMATS", {})
    seen: dict[str, object] = {}

    def fake_loader(directory: Path, config: dict[str, object], **options: object) -> str:
        seen.update(directory=directory, config=config, **options)
        return "a classifier"

    loader_module.register_directory_format("test-format", fake_loader)
    (tmp_path / "config.json").write_text(json.dumps({"format": "test-format"}), encoding="utf-8")
    assert load_classifier(str(tmp_path), threshold=0.7, top_k=2) == "a classifier"  # type: ignore[comparison-overlap]
    assert seen["directory"] == tmp_path and seen["threshold"] == 0.7 and seen["top_k"] == 2


# ---------------------------------------------------------------------------------------------
# Real images (../shared/data)


def _square_crops(folder: Path, pattern: str = "*") -> list[np.ndarray]:
    files = sorted(p for p in folder.glob(pattern) if p.suffix.lower() in {".png", ".jpg", ".jpeg"})
    assert files, f"no images in {folder}"
    return [pad_to_square(np.asarray(Image.open(p).convert("RGB"))) for p in files]


def _top_families(classifier: ImageNetFamilyClassifier, crops: list[np.ndarray]) -> Counter[str]:
    return Counter(r.top[0][0] for r in classifier.classify(crops))


@pytest.mark.shared
@pytest.mark.slow
def test_pinned_ground_beetles_are_classified_carabidae(
    shared_data: Path, classifier: ImageNetFamilyClassifier
) -> None:
    crops = _square_crops(shared_data / "carabidae-crops")
    assert len(crops) == 170
    results = classifier.classify(crops)
    top = Counter(r.top[0][0] for r in results)
    assert top["Carabidae"] / len(crops) >= 0.9, top.most_common(5)
    accepted = [r for r in results if not r.rejected]
    assert len(accepted) / len(crops) >= 0.85  # measured 0.94 at threshold 0.5
    assert all(r.family == "Carabidae" for r in accepted)


@pytest.mark.shared
@pytest.mark.slow
def test_ants_mostly_get_formicidae_as_top_family(
    shared_data: Path, classifier: ImageNetFamilyClassifier
) -> None:
    crops = _square_crops(shared_data / "ants-bees" / "ants")
    top = _top_families(classifier, crops)
    assert top["Formicidae"] / len(crops) >= 0.75, top.most_common(5)  # measured 0.84


@pytest.mark.shared
@pytest.mark.slow
def test_empty_wells_are_never_given_a_family(
    shared_data: Path, classifier: ImageNetFamilyClassifier
) -> None:
    results = classifier.classify(_square_crops(shared_data / "bioscan-wells" / "empty"))
    assert all(r.rejected for r in results)

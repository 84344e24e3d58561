"""The DETR detector: tiling, merging and AP on tiny inputs with known answers; a tiny model saved,
reloaded through transformers and run on a plate; a one-step training run; `labpipe eval detector`."""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from labpipe.detect.detr_data import (
    CocoImage,
    coco_document,
    random_tile,
    read_coco_set,
    write_coco_document,
)
from labpipe.detect.tiling import (
    axis_starts,
    clip_boxes_to_tile,
    cut_by_tile_edge,
    merge_tile_detections,
    tile_grid,
)
from labpipe.evaluation.detector import average_precision, coco_ap

# one xdist worker runs this file: its tiny DETR model is built once
pytestmark = pytest.mark.xdist_group("detect_detr")

torch.set_num_threads(1)


# ---------------------------------------------------------------------------------------------
# tiles


@pytest.mark.parametrize(("length", "tile", "overlap"), [(1000, 400, 100), (1234, 384, 128), (385, 384, 0)])
def test_tiles_cover_every_pixel_and_neighbours_share_at_least_the_overlap(
    length: int, tile: int, overlap: int
) -> None:
    starts = axis_starts(length, tile, overlap)
    covered = np.zeros(length, bool)
    for s in starts:
        assert s >= 0 and s + tile <= length
        covered[s : s + tile] = True
    assert covered.all()
    assert all(a + tile - b >= overlap for a, b in itertools.pairwise(starts))


def test_image_smaller_than_a_tile_is_one_tile_of_its_own_size() -> None:
    assert tile_grid(300, 200, 384, 128) == [(0, 0, 300, 200)]


def test_grid_is_row_by_row() -> None:
    grid = tile_grid(700, 700, 400, 100)
    assert grid == [(0, 0, 400, 400), (300, 0, 400, 400), (0, 300, 400, 400), (300, 300, 400, 400)]


def test_bad_overlap_is_refused_with_its_value() -> None:
    with pytest.raises(ValueError, match="400"):
        axis_starts(1000, 400, 400)


def test_boxes_mostly_outside_a_tile_are_dropped_and_the_rest_clipped() -> None:
    boxes = [[90, 10, 20, 10], [95, 30, 20, 10], [10, 10, 5, 5]]  # half in, a quarter in, outside
    clipped, kept = clip_boxes_to_tile(boxes, (50, 0, 50, 50), min_visible=0.5)
    assert kept.tolist() == [0]
    assert clipped.tolist() == [[40.0, 10.0, 10.0, 10.0]]


def test_only_edges_inside_the_image_cut_a_box() -> None:
    tile = (100, 0, 100, 100)  # top edge is the image border, left and right are inner edges
    boxes = [[0, 50, 10, 10], [50, 0, 10, 10], [95, 50, 5, 5], [40, 40, 10, 10]]
    assert cut_by_tile_edge(boxes, tile, 300, 200).tolist() == [True, False, True, False]
    assert cut_by_tile_edge(boxes, (200, 0, 100, 100), 300, 100).tolist() == [True, False, False, False]


def test_a_specimen_cut_by_one_tile_and_whole_in_the_next_is_counted_once_with_the_whole_box() -> None:
    # Left tile sees the left half of the beetle (cut at its right edge, higher score by chance);
    # the right tile sees it whole.
    kept, scores = merge_tile_detections([[80, 10, 20, 20], [80, 10, 40, 20]], [0.95, 0.8], cut=[True, False])
    assert kept == [1]
    assert scores == [0.95]


def test_two_touching_specimens_are_not_merged() -> None:
    kept, _ = merge_tile_detections([[0, 0, 20, 10], [20, 0, 20, 10]], [0.9, 0.8], cut=[False, False])
    assert sorted(kept) == [0, 1]


def test_the_same_box_from_two_tiles_is_merged() -> None:
    kept, scores = merge_tile_detections([[10, 10, 30, 30], [11, 10, 30, 30]], [0.6, 0.7])
    assert kept == [1] and scores == [0.7]


# ---------------------------------------------------------------------------------------------
# average precision


def test_perfect_detections_have_ap_one() -> None:
    truth = [[[0, 0, 10, 10], [20, 20, 10, 10]], [[5, 5, 8, 8]]]
    dets = [([[0, 0, 10, 10], [20, 20, 10, 10]], [0.9, 0.8]), ([[5, 5, 8, 8]], [0.7])]
    assert coco_ap(dets, truth) == (1.0, 1.0)


def test_a_false_positive_ranked_between_two_hits_gives_the_known_ap() -> None:
    # precision 1 up to recall 0.5 (51 of 101 recall points), then 2/3 (the other 50)
    dets = [([[0, 0, 10, 10], [50, 50, 5, 5], [20, 20, 10, 10]], [0.9, 0.8, 0.7])]
    ap = average_precision(dets, [[[0, 0, 10, 10], [20, 20, 10, 10]]], 0.5)
    assert ap == pytest.approx((51 + 50 * 2 / 3) / 101)


def test_a_false_positive_ranked_last_costs_nothing() -> None:
    dets = [([[0, 0, 10, 10], [50, 50, 5, 5]], [0.9, 0.1])]
    assert average_precision(dets, [[[0, 0, 10, 10]]], 0.5) == 1.0


def test_half_the_specimens_missed_gives_ap_about_one_half() -> None:
    dets = [([[0, 0, 10, 10]], [0.9])]
    assert average_precision(dets, [[[0, 0, 10, 10], [30, 30, 10, 10]]]) == pytest.approx(51 / 101)


def test_a_loose_box_counts_at_iou_half_but_not_at_strict_thresholds() -> None:
    # IoU of [0,0,10,10] and [0,0,10,14] is 100/140 = 0.714: a hit at 0.50..0.70 (5 of 10 thresholds)
    ap50, ap = coco_ap([([[0, 0, 10, 14]], [0.9])], [[[0, 0, 10, 10]]])
    assert ap50 == 1.0
    assert ap == pytest.approx(0.5)


def test_no_detections_is_ap_zero_and_no_truth_is_undefined() -> None:
    assert average_precision([([], [])], [[[0, 0, 1, 1]]]) == 0.0
    assert np.isnan(average_precision([([[0, 0, 1, 1]], [0.5])], [[]]))


# ---------------------------------------------------------------------------------------------
# training tiles


def test_random_tile_keeps_boxes_on_their_objects_through_rescale_and_flips() -> None:
    image = np.full((300, 400, 3), 200, np.uint8)
    image[100:140, 250:330] = 0  # one dark object
    rng = np.random.default_rng(3)
    for _ in range(10):
        t = random_tile(image, np.array([[250.0, 100.0, 80.0, 40.0]]), 256, rng, min_visible=0.0)
        dark = t.image.mean(axis=2) < 100
        if len(t.boxes) == 0:
            assert not dark.any()
            continue
        x, y, w, h = t.boxes[0]
        ys, xs = np.nonzero(dark)
        assert xs.min() >= x - 2 and xs.max() <= x + w + 2
        assert ys.min() >= y - 2 and ys.max() <= y + h + 2


def test_quarter_turns_move_boxes_with_the_pixels() -> None:
    from labpipe.detect.detr_train import _rot90

    tile = np.zeros((64, 64, 3), np.uint8)
    tile[5:15, 40:60] = 255
    for k in range(4):
        turned, boxes = _rot90(tile, np.array([[40.0, 5.0, 20.0, 10.0]]), k)
        ys, xs = np.nonzero(turned[..., 0])
        assert boxes[0].tolist() == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]


def test_coco_sets_round_trip_with_scale(tmp_path: Path) -> None:
    images = [CocoImage("a.tif", 100, 80, 12.5, [(1.0, 2.0, 3.0, 4.0)]), CocoImage("b.png", 10, 10, None)]
    write_coco_document(coco_document(images), tmp_path / "set.json")
    back = read_coco_set(tmp_path / "set.json")
    assert back == images


# ---------------------------------------------------------------------------------------------
# a tiny model through transformers and the Detector interface


def _tiny_model_dir(path: Path, num_queries: int = 8) -> Path:
    from labpipe.detect.detr import DetrModelInfo, Preprocessing, build_detr, save_detr_model

    model = build_detr(
        num_queries=num_queries,
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        ffn_dim=64,
        attention_heads=2,
        imagenet_backbone=False,
    )
    save_detr_model(
        model, path, DetrModelInfo(tile_size=128, tile_overlap=32, um_per_px=40.0), Preprocessing()
    )
    return path


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny_model_dir(tmp_path_factory.mktemp("detr") / "tiny")


@pytest.fixture(scope="module")
def small_plate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from labpipe.synth import PlateSpec, write_coco, write_plate

    folder = tmp_path_factory.mktemp("plate")
    spec = PlateSpec(
        width=1200, height=1200, n_specimens=6, n_touching_pairs=0, n_debris=4, um_per_px=20.0, seed=5
    )
    truth = write_plate(spec, folder / "plate.tif")
    write_coco(truth, "plate.tif", folder / "plate.coco.json")
    return folder / "plate.tif", folder / "plate.coco.json"


def test_a_new_detector_starts_with_its_queries_spread_over_the_image() -> None:
    """transformers' N(0, 0.02) initialisation puts every query's reference point on one spot, and
    every query then gives the same box and score; build_detr re-initialises as DETR does."""
    from labpipe.detect.detr import build_detr

    model = build_detr(
        num_queries=50, d_model=32, encoder_layers=1, decoder_layers=1, imagenet_backbone=False
    )
    decoder = model.model.decoder
    with torch.no_grad():
        points = decoder.ref_point_head(model.model.query_position_embeddings.weight).sigmoid()
    assert (points.std(dim=0) > 0.05).all()
    assert model.class_labels_classifier.bias.item() == pytest.approx(-np.log(99), rel=1e-4)


def test_model_directory_reloads_through_auto_model_for_object_detection(tiny_model: Path) -> None:
    from transformers import AutoModelForObjectDetection

    import labpipe.detect.detr_backbone  # noqa: F401  (registers the backbone)

    assert {p.name for p in tiny_model.iterdir()} >= {
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "labpipe_detector.json",
    }
    model = AutoModelForObjectDetection.from_pretrained(str(tiny_model), local_files_only=True).eval()
    with torch.no_grad():
        out = model(pixel_values=torch.zeros(2, 3, 128, 96))
    assert out.logits.shape == (2, 8, 1)
    assert out.pred_boxes.shape == (2, 8, 4)


def test_preprocessor_config_is_a_transformers_image_processor_matching_ours(tiny_model: Path) -> None:
    from transformers import AutoImageProcessor

    from labpipe.detect.detr import Preprocessing

    rgb = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    processor = AutoImageProcessor.from_pretrained(str(tiny_model), local_files_only=True)
    theirs = processor(images=[rgb], return_tensors="pt")["pixel_values"]
    ours = Preprocessing.from_dir(tiny_model).to_tensor(rgb[None])
    assert theirs.shape == ours.shape == (1, 3, 20, 30)
    assert torch.allclose(theirs, ours, atol=1e-5)


def test_detector_returns_boxes_inside_the_image_with_scores(tiny_model: Path) -> None:
    from labpipe.detect.base import Detection
    from labpipe.detect.detr import DetrDetector

    detector = DetrDetector(tiny_model, score_threshold=0.0, batch_size=3, device="cpu")
    rgb = np.full((300, 260, 3), 200, np.uint8)
    dets = detector.detect(rgb, None)
    assert dets and all(isinstance(d, Detection) for d in dets)
    for d in dets:
        assert d.x >= 0 and d.y >= 0 and d.x + d.w <= 260 + 1e-6 and d.y + d.h <= 300 + 1e-6
        assert 0.0 <= d.score <= 1.0
    assert len(detector.last_tile_counts) == len(tile_grid(260, 300, 128, 32))
    assert detector.version.startswith("detr:tiny@")


def test_known_scale_is_read_at_the_models_working_scale(tiny_model: Path) -> None:
    from labpipe.detect.detr import DetrDetector

    detector = DetrDetector(tiny_model, score_threshold=0.0, device="cpu")
    rgb = np.full((400, 400, 3), 200, np.uint8)
    detector.detect(rgb, 20.0)  # 20 um/px -> 200 px at the model's 40 um/px: 4 tiles of 128
    assert len(detector.last_tile_counts) == len(tile_grid(200, 200, 128, 32))
    for d in detector.detect(rgb, 20.0):
        assert d.x + d.w <= 400 + 1e-6 and d.y + d.h <= 400 + 1e-6


def _family_model(kind: str):
    import transformers as tf

    from labpipe.detect.detr_backbone import EfficientNetLiteBackboneConfig

    small = dict(
        num_queries=6, d_model=32, encoder_layers=1, decoder_layers=2, encoder_ffn_dim=64,
        decoder_ffn_dim=64, encoder_attention_heads=2, decoder_attention_heads=2, num_labels=1,
    )  # fmt: skip
    if kind == "detr":
        config = tf.DetrConfig(
            backbone_config=EfficientNetLiteBackboneConfig(), use_timm_backbone=False, **small
        )
        return tf.DetrForObjectDetection(config)
    if kind == "deformable_detr":
        config = tf.DeformableDetrConfig(
            backbone_config=EfficientNetLiteBackboneConfig(out_features=["stage2", "stage3", "stage5"]),
            use_timm_backbone=False, num_feature_levels=3, encoder_n_points=2, decoder_n_points=2, **small,
        )  # fmt: skip
        return tf.DeformableDetrForObjectDetection(config)
    backbone = tf.RTDetrResNetConfig(
        embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], layer_type="basic",
        out_features=["stage2", "stage3", "stage4"],
    )  # fmt: skip
    config = tf.RTDetrConfig(
        backbone_config=backbone, num_queries=6, d_model=32, encoder_hidden_dim=32,
        encoder_in_channels=[32, 64, 128], decoder_in_channels=[32, 32, 32], encoder_ffn_dim=64,
        decoder_ffn_dim=64, encoder_attention_heads=2, decoder_attention_heads=2, decoder_layers=1,
        num_labels=1, num_denoising=0,
    )  # fmt: skip
    return tf.RTDetrForObjectDetection(config)


@pytest.mark.parametrize("kind", ["detr", "deformable_detr", "rt_detr"])
def test_any_detr_family_checkpoint_runs_on_tiles(kind: str, tmp_path: Path) -> None:
    """Vanilla DETR (softmax + no-object), Deformable DETR and RT-DETR (sigmoid), on a 300 px image
    (not a multiple of RT-DETR's stride 32: tiles are padded)."""
    from labpipe.detect.detr import DetrDetector, Preprocessing

    torch.manual_seed(0)
    _family_model(kind).save_pretrained(str(tmp_path))
    Preprocessing().save(tmp_path)
    detector = DetrDetector(tmp_path, score_threshold=0.0, device="cpu")
    assert detector.model.config.model_type == kind
    dets = detector.detect(np.full((300, 300, 3), 128, np.uint8), None)
    assert dets
    for d in dets:
        assert 0 <= d.x <= d.x + d.w <= 300 + 1e-6 and 0 <= d.y <= d.y + d.h <= 300 + 1e-6
        assert 0.0 <= d.score <= 1.0


def test_a_tile_crowded_to_the_query_count_logs_a_warning(
    tiny_model: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from labpipe.detect.detr import DetrDetector

    detector = DetrDetector(tiny_model, score_threshold=0.0, device="cpu")  # every query "detects"
    with caplog.at_level(logging.WARNING, logger="labpipe.detect.detr"):
        detector.detect(np.full((128, 128, 3), 128, np.uint8), None)
    assert any("queries" in r.getMessage() for r in caplog.records)
    quiet = DetrDetector(tiny_model, score_threshold=1.0, device="cpu")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="labpipe.detect.detr"):
        assert quiet.detect(np.full((128, 128, 3), 128, np.uint8), None) == []
    assert not caplog.records


def test_pipeline_builds_the_detr_detector_from_a_directory_and_reads_the_plate_itself(
    tiny_model: Path, small_plate: tuple[Path, Path]
) -> None:
    from labpipe.analysis import detect_specimens
    from labpipe.config import load_settings
    from labpipe.detect.detr import DetrDetector
    from labpipe.imaging import open_image
    from labpipe.pipeline import build_detector

    settings = load_settings(None, {"detector.kind": str(tiny_model), "detector.score_threshold": 0.0}, {})
    detector = build_detector(settings)
    assert isinstance(detector, DetrDetector)
    with open_image(small_plate[0]) as plate:
        boxes, factor = detect_specimens(detector, plate, 4096)
    assert factor == 1.0
    # 1200 px at 20 um/px is 600 px at the model's 40 um/px: a 6 x 6 grid of 128 px tiles
    assert len(detector.last_tile_counts) == len(tile_grid(600, 600, 128, 32))
    assert boxes and all(x + w <= 1200 and y + h <= 1200 for (x, y, w, h), _ in boxes)


def test_a_plate_too_large_for_one_overview_is_read_tile_by_tile_with_the_same_result(
    tiny_model: Path, small_plate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import labpipe.detect.detr as detr
    from labpipe.imaging import open_image

    detector = detr.DetrDetector(tiny_model, score_threshold=0.0, device="cpu")
    with open_image(small_plate[0]) as plate:
        whole = detector.detect_plate(plate, 4096)
        monkeypatch.setattr(detr, "MAX_WORK_SIDE", 100)
        by_regions = detector.detect_plate(plate, 4096)
    # The two reads differ by rounding only (area means of the same 2 x 2 blocks), so the boxes
    # agree; a few merges of near-equal boxes may tip the other way.
    assert len(whole) > 0
    assert abs(len(by_regions) - len(whole)) <= 0.05 * len(whole)
    a = np.array([d.as_xywh() for d in whole])
    b = np.array([d.as_xywh() for d in by_regions])
    nearest = np.abs(a[:, None, :] - b[None, :, :]).max(axis=2).min(axis=1)
    assert np.mean(nearest < 4.0) >= 0.95  # full-resolution pixels (2 at the working scale)


# ---------------------------------------------------------------------------------------------
# training and evaluation


@pytest.mark.parametrize("architecture", ["conditional-detr", "rt-detr"])
def test_one_training_step_writes_a_complete_model_directory(
    tmp_path: Path, small_plate: tuple[Path, Path], architecture: str
) -> None:
    from labpipe.detect.detr import DetrDetector
    from labpipe.detect.detr_train import DetrTrainOptions, train_detector

    plate, coco = small_plate
    options = DetrTrainOptions(
        architecture=architecture,
        epochs=1,
        batch_size=1,
        tiles_per_image=1,
        tile_size=128,
        tile_overlap=32,
        num_queries=8,
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        ffn_dim=64,
        threads=1,
        device="cpu",
    )
    result = train_detector(coco, plate.parent, tmp_path / "model", options, val_coco=coco, progress=False)
    model_dir = tmp_path / "model"
    names = {p.name for p in model_dir.iterdir()}
    assert names >= {"config.json", "model.safetensors", "preprocessor_config.json", "labpipe_detector.json"}
    assert "README.md" in names
    card = (model_dir / "README.md").read_text()
    for words in ("## Data", "## Settings", "## Metrics", "lr: 0.0001", "batch_size: 1", "ap50"):
        assert words in card
    info = json.loads((model_dir / "labpipe_detector.json").read_text())
    assert info["um_per_px"] == 40.0 and info["tile_size"] == 128
    assert info["training"]["data"]["train_boxes"] == 6
    assert result.best_epoch == 1 and "ap50" in result.best
    assert info["training"]["settings"]["architecture"] == architecture
    detector = DetrDetector(model_dir, device="cpu")
    assert detector.num_queries == 8
    expected = {"conditional-detr": "conditional_detr", "rt-detr": "rt_detr"}[architecture]
    assert detector.model.config.model_type == expected


def test_eval_detector_classical_json_reports_every_metric(small_plate: tuple[Path, Path]) -> None:
    from labpipe.cli.main import cli

    plate, coco = small_plate
    result = CliRunner().invoke(
        cli,
        [
            "eval",
            "detector",
            "--coco",
            str(coco),
            "--images",
            str(plate.parent),
            "--detector",
            "classical",
            "--json",
        ],
        env={"LABPIPE_CONFIG": ""},
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    for key in ("precision", "recall", "f1", "ap50", "ap50_95", "mean_abs_count_error", "per_image"):
        assert key in report
    assert report["truth"] == 6
    assert report["recall"] >= 0.9
    assert report["per_image"][0]["count_error"] == report["detections"] - 6


def test_pseudo_labels_are_the_classical_detectors_boxes_as_coco(
    tmp_path: Path, small_plate: tuple[Path, Path]
) -> None:
    from labpipe.detect.classical import ClassicalDetector
    from labpipe.detect.detr_train import pseudo_label
    from labpipe.metrics.detection import match_detections

    plate, coco = small_plate
    out = pseudo_label([plate], ClassicalDetector(), tmp_path / "pseudo.json", progress=False)
    (entry,) = read_coco_set(out)
    assert (entry.file_name, entry.width, entry.height, entry.um_per_px) == ("plate.tif", 1200, 1200, 20.0)
    truth = read_coco_set(coco)[0].boxes
    assert match_detections(entry.boxes, truth).recall >= 0.8
    assert "classical" in json.loads(out.read_text())["info"]["description"]


def test_pseudo_labels_keep_only_images_whose_count_is_trusted_and_carry_the_fallback_scale(
    tmp_path: Path, shared_data: Path
) -> None:
    from labpipe.detect.classical import ClassicalDetector
    from labpipe.detect.detr_train import pseudo_label
    from labpipe.evaluation.folders import image_files

    wells = image_files(shared_data / "bioscan-wells" / "single")[:6]
    counts: dict[str, int] = {}

    def one_insect(path: Path, n: int) -> bool:
        counts[path.name] = n
        return n == 1

    out = pseudo_label(
        wells,
        ClassicalDetector(),
        tmp_path / "p.json",
        um_per_px_fallback=8.0,
        keep=one_insect,
        progress=False,
    )
    entries = read_coco_set(out)
    assert len(counts) == 6 and {e.file_name for e in entries} == {k for k, n in counts.items() if n == 1}
    assert 0 < len(entries) < 6  # some wells pass the check, some do not (loose legs get boxes)
    assert all(len(e.boxes) == 1 and e.um_per_px == 8.0 for e in entries)


def test_an_image_smaller_than_a_tile_is_padded_to_the_tile_with_its_border_colour() -> None:
    from labpipe.detect.detr import pad_tiles

    well = np.full((1, 150, 200, 3), 90, np.uint8)
    well[0, 0, :] = 200  # the border: top row 200, everything else 90
    well[0, 60:90, 80:120] = 10  # an insect in the middle does not change the fill
    padded = pad_tiles(well, 384)
    assert padded.shape == (1, 384, 384, 3)
    assert np.array_equal(padded[0, :150, :200], well[0])  # the image itself, at the top left
    border = np.concatenate([well[0, 0], well[0, -1], well[0, :, 0], well[0, :, -1]]).mean(axis=0)
    assert np.array_equal(padded[0, 300, 300], border.astype(np.uint8))
    # ... the colour training pads the same image with
    trained = random_tile(well[0], np.empty((0, 4)), 384, np.random.default_rng(0), scale_range=(1.0, 1.0))
    assert np.array_equal(padded[0, 300, 300], trained.image[200, 200])  # row 200: padding, flipped or not
    assert pad_tiles(np.zeros((2, 384, 384, 3), np.uint8), 384).shape == (2, 384, 384, 3)  # as it is

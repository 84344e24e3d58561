"""Fine-tuning the detector from the lab's reviewed plates (issue 15, item 3).

A tiny lab processes small synthetic plates with the classical detector, a person marks them
boxes reviewed (one box judged not a specimen), and ``labpipe train detector --from-reviews``
fine-tunes a DETR on them: held-out plates are scored before and after, the model is registered,
``labpipe models set-default`` makes it the detector, and ``labpipe process`` then uses it. The same
from a plain ``labpipe export coco`` file. Training runs one step of one tiny tile: seconds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from reviewed_lab import reviewed_lab
from sqlalchemy import select

from labpipe.cli.main import cli
from labpipe.db.database import open_database
from labpipe.db.models import Model
from labpipe.detect.detr_data import CocoImage, coco_document, read_coco_set, write_coco_document
from labpipe.detect.detr_train import _load_set
from labpipe.detect.finetune import before_after_rows, default_holdout, split_document, split_plates

FAST = ["--epochs", "1", "--batch-size", "1", "--tiles-per-image", "1", "--threads", "1", "--device", "cpu"]


def _tiny_model_dir(path: Path) -> Path:
    from labpipe.detect.detr import DetrModelInfo, Preprocessing, build_detr, save_detr_model

    model = build_detr(
        num_queries=8,
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        ffn_dim=64,
        attention_heads=2,
        imagenet_backbone=False,
    )
    info = DetrModelInfo(tile_size=128, tile_overlap=32, um_per_px=40.0)
    save_detr_model(model, path, info, Preprocessing())
    return path


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Three reviewed plates (a box on the first judged not a specimen), one more to process, and a
    tiny DETR, in a lab under a fresh data folder."""
    root = tmp_path_factory.mktemp("finetune")
    made = reviewed_lab(
        root,
        n_plates=4,
        n_processed=3,
        size=800,
        n_specimens=4,
        n_debris=2,
        judged_per_plate=[1],
        sample="FT-1",
    )
    return {
        "base": made["base"],
        "settings": made["settings"],
        "plates": made["plates"],
        "debris_box": made["judged_boxes"][0],
        "tiny": _tiny_model_dir(root / "tiny-detr"),
        "root": root,
    }


def test_from_reviews_trains_registers_and_the_default_is_what_process_uses(lab: dict[str, Any]) -> None:
    base, settings = lab["base"], lab["settings"]
    tiny_new = ["--tile-size", "128", "--tile-overlap", "32", "--queries", "8", "--synthetic-plates", "0"]
    # a lab whose detector is the classical one starts a new RT-DETR, and says so
    fresh = lab["root"] / "models" / "fresh"
    args = [*base, "train", "detector", "--from-reviews", "--out", str(fresh), "--no-register"]
    run = CliRunner().invoke(cli, [*args, *tiny_new, *FAST, "--json"])
    assert run.exit_code == 0, run.output
    assert json.loads(run.stdout)["start"].startswith("new RT-DETR")
    out = lab["root"] / "models" / "lab-detr"
    args = [*base, "train", "detector", "--from-reviews", "--from", str(lab["tiny"]), "--out", str(out)]
    run = CliRunner().invoke(cli, [*args, "--synthetic-plates", "0", *FAST, "--json"])
    assert run.exit_code == 0, run.output
    summary = json.loads(run.stdout)
    # 3 reviewed plates: 20 % rounds to 1 held out, 2 trained on; the start is the given model
    assert len(summary["train_plates"]) == 2 and len(summary["held_out_plates"]) == 1
    assert summary["start"] == str(lab["tiny"])
    rows = {(r["data"], r["role"]): r for r in summary["before_after"]}
    assert set(rows) == {("held-out reviewed plates", role) for role in ("classical", "before", "after")}
    assert rows[("held-out reviewed plates", "classical")]["truth"] == 4  # the held-out plate's boxes
    assert rows[("held-out reviewed plates", "after")]["detector"].startswith("detr:lab-detr@")
    assert {"config.json", "model.safetensors", "labpipe_detector.json"} <= {p.name for p in out.iterdir()}
    # the training file holds the specimen boxes of the two training plates: never the debris box
    train = read_coco_set(Path(summary["files"]["train"]))
    assert [Path(e.file_name).name for e in train] == summary["train_plates"] or len(train) == 2
    assert all(tuple(int(v) for v in b) != lab["debris_box"] for e in train for b in e.boxes)
    held = json.loads(Path(summary["files"]["held_out"]).read_text())
    assert {Path(i["file_name"]).name for i in held["images"]} == {
        Path(n).name for n in summary["held_out_plates"]
    }
    # registered as a detector; set-default makes it the detector `process` uses
    version = summary["registered"]
    factory = open_database(settings.database_url)
    with factory() as session:
        row = session.scalar(select(Model).where(Model.version == version))
        assert row is not None and row.kind == "detector" and Path(row.path) == out
    factory.kw["bind"].dispose()
    made = CliRunner().invoke(cli, [*base, "models", "set-default", version])
    assert made.exit_code == 0 and f"default detector: {version}" in made.output
    processed = CliRunner().invoke(
        cli, [*base, "process", str(lab["plates"][3]), "--sample", "FT-2", "--json"]
    )
    assert processed.exit_code == 0, processed.output
    (record,) = json.loads(processed.stdout)
    assert record["detector_version"] == version
    # and the next fine-tune starts from the lab's detector
    again = lab["root"] / "models" / "lab-detr-2"
    args = [*base, "train", "detector", "--from-reviews", "--out", str(again), "--no-register"]
    run = CliRunner().invoke(cli, [*args, "--synthetic-plates", "0", *FAST])
    assert run.exit_code == 0, run.output
    assert f"3 reviewed plates; starting from {out}" in run.output


def test_a_plain_coco_export_with_a_holdout_reports_before_and_after(lab: dict[str, Any]) -> None:
    base = lab["base"]
    export = lab["root"] / "export.coco.json"
    root = str(lab["root"])
    done = CliRunner().invoke(cli, [*base, "export", "coco", "--reviewed-only", "--root", root, str(export)])
    assert done.exit_code == 0 and "3 plates" in done.output, done.output
    out = lab["root"] / "models" / "from-export"
    args = [*base, "train", "detector", "--coco", str(export), "--images", root, "--out", str(out)]
    run = CliRunner().invoke(
        cli, [*args, "--init", str(lab["tiny"]), "--holdout", "2", *FAST, "--synthetic-plates", "0"]
    )
    assert run.exit_code == 0, run.output
    assert "1 plates trained on, 2 held out" in run.output
    for words in ("held-out reviewed plates", "classical", "DETR before", "DETR after", "precision"):
        assert words in run.output
    assert "registered detector detr:from-export@" in run.output  # the reviewed-plates path registers
    info = json.loads((out / "labpipe_detector.json").read_text())
    assert info["um_per_px"] == 40.0 and info["tile_size"] == 128  # the starting model's own
    assert info["training"]["data"]["train_images"] == 1
    too_many = CliRunner().invoke(cli, [*args, "--holdout", "3", "--overwrite", *FAST])
    assert too_many.exit_code == 2 and "cannot hold out 3 of 3 plates" in too_many.output


# ---------------------------------------------------------------------------------------------
# the pure parts


def test_holdout_is_a_fifth_with_at_least_one_and_never_every_plate() -> None:
    assert [default_holdout(n) for n in (1, 2, 3, 10, 20)] == [0, 1, 1, 2, 4]
    train, held = split_plates(list(range(20)), 4, seed=3)
    assert len(held) == 4 and not set(train) & set(held) and sorted(train + held) == list(range(20))
    assert split_plates(list(range(20)), 4, seed=3) == (train, held)  # the same plates every time
    assert split_plates(list(range(20)), 4, seed=4)[1] != held  # another seed, another rotation
    with pytest.raises(ValueError, match="cannot hold out 2 of 2"):
        split_plates([1, 2], 2)


def test_split_document_keeps_each_plates_annotations_with_it() -> None:
    doc = coco_document(
        [CocoImage("a.tif", 10, 10, 5.0, [(1, 1, 2, 2)]), CocoImage("b.tif", 10, 10, 5.0, [(3, 3, 2, 2)] * 2)]
    )
    train, held = split_document(doc, {2})
    assert [i["file_name"] for i in train["images"]] == ["a.tif"] and len(train["annotations"]) == 1
    assert [i["file_name"] for i in held["images"]] == ["b.tif"] and len(held["annotations"]) == 2
    assert held["categories"] == doc["categories"]


def test_debris_is_not_a_specimen_and_ignore_regions_are_blanked_for_training(tmp_path: Path) -> None:
    from PIL import Image as PILImage

    rgb = np.full((40, 60, 3), 200, np.uint8)
    rgb[5:15, 5:15] = 20  # a specimen
    rgb[25:35, 40:50] = 30  # an uncertain speck
    PILImage.fromarray(rgb).save(tmp_path / "f.png")
    doc = {
        "images": [{"id": 1, "file_name": "f.png", "width": 60, "height": 40}],
        "categories": [{"id": 1, "name": "specimen"}, {"id": 2, "name": "debris"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 5, 10, 10]},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [20, 20, 5, 5]},
            {
                "id": 3,
                "image_id": 1,
                "category_id": 1,
                "bbox": [40, 25, 10, 10],
                "attributes": {"uncertain": True},
            },
        ],
    }
    write_coco_document(doc, tmp_path / "set.json")
    (entry,) = read_coco_set(tmp_path / "set.json")
    assert entry.boxes == [(5.0, 5.0, 10.0, 10.0)] and entry.ignore == [(40.0, 25.0, 10.0, 10.0)]
    (work,) = _load_set([entry], tmp_path, None, progress=False)
    assert work.image[30, 45].tolist() == [200, 200, 200]  # the speck is background colour now
    assert work.image[10, 10].tolist() == [20, 20, 20]  # the specimen is untouched


def test_before_after_rows_carry_the_reports_numbers() -> None:
    from labpipe.evaluation.detector import DetectorReport, ImageResult

    report = DetectorReport("classical-2")
    report.images = [ImageResult("a", 10, 12, 9, 0.5), ImageResult("b", 10, 8, 8, 1.5)]
    (row,) = before_after_rows([("held-out reviewed plates", "classical", report)])
    assert row.precision == round(17 / 20, 4) and row.recall == round(17 / 20, 4)
    assert row.mean_abs_count_error == 2.0 and row.seconds_per_image == 1.0 and row.truth == 20


def test_without_validation_images_the_last_checkpoint_is_kept(tmp_path: Path) -> None:
    from labpipe.detect.detr_train import DetrTrainOptions, train_detector
    from labpipe.synth import PlateSpec, write_coco, write_plate

    spec = PlateSpec(
        width=600, height=600, n_specimens=3, n_touching_pairs=0, n_debris=1, um_per_px=20.0, seed=9
    )
    entries = []
    for name, seed in (("p", 9), ("q", 10)):
        spec.seed = seed
        write_coco(write_plate(spec, tmp_path / f"{name}.tif"), f"{name}.tif", tmp_path / f"{name}.coco.json")
        entries += read_coco_set(tmp_path / f"{name}.coco.json")
    write_coco_document(coco_document(entries), tmp_path / "both.coco.json")
    options = DetrTrainOptions(
        epochs=2, batch_size=1, tiles_per_image=1, tile_size=128, tile_overlap=32, num_queries=8, d_model=32,
        encoder_layers=1, decoder_layers=1, ffn_dim=64, threads=1, device="cpu", val_fraction=0.0,
    )  # fmt: skip
    result = train_detector(tmp_path / "both.coco.json", tmp_path, tmp_path / "m", options, progress=False)
    assert (
        result.n_train_images == 2
        and result.n_val_images == 0
        and [h["epoch"] for h in result.history] == [1, 2]
    )
    assert result.best_epoch == 2 and "ap50" not in result.best

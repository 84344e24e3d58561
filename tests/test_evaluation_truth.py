"""Ground truth for detector evaluation: COCO with debris and ignore regions, Inselect, counted
folders, EXIF frames, overlays, and the real-image table on ../shared/data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from labpipe.detect.classical import ClassicalDetector
from labpipe.evaluation.detector import evaluate_images
from labpipe.evaluation.truth import (
    TruthImage,
    counted_folder,
    orient_box,
    read_coco_truth,
    read_inselect_truth,
    to_displayed_frame,
)


def _coco(path: Path, annotations: list[dict], categories: list[dict] | None = None) -> Path:
    doc = {
        "images": [{"id": 1, "file_name": "a.png", "width": 200, "height": 100}],
        "categories": categories or [{"id": 1, "name": "specimen"}, {"id": 2, "name": "debris"}],
        "annotations": annotations,
    }
    path.write_text(json.dumps(doc))
    return path


def test_coco_truth_splits_specimens_debris_and_uncertain_boxes(tmp_path: Path) -> None:
    coco = _coco(
        tmp_path / "t.json",
        [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 1,
                "bbox": [0, 0, 10, 10],
                "attributes": {"note": "moth"},
            },
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [20, 0, 10, 10]},
            {
                "id": 3,
                "image_id": 1,
                "category_id": 1,
                "bbox": [40, 0, 5, 5],
                "attributes": {"uncertain": True},
            },
            {
                "id": 4,
                "image_id": 1,
                "category_id": 2,
                "bbox": [60, 0, 5, 5],
                "attributes": {"uncertain": True},
            },
            {"id": 5, "image_id": 1, "category_id": 1, "bbox": [80, 0, 5, 5], "iscrowd": 1},
        ],
    )
    (truth,) = read_coco_truth(coco)
    assert truth.specimens == [(0, 0, 10, 10)]
    assert truth.debris == [(20, 0, 10, 10)]
    assert len(truth.ignore) == 3
    assert truth.attributes == [{"note": "moth"}]
    assert truth.path == tmp_path / "a.png"


def test_a_malformed_coco_box_is_named_in_the_error(tmp_path: Path) -> None:
    coco = _coco(tmp_path / "t.json", [{"id": 7, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10]}])
    with pytest.raises(ValueError, match="annotation 7"):
        read_coco_truth(coco)


def test_inselect_boxes_are_fractions_of_the_scan(tmp_path: Path) -> None:
    Image.new("RGB", (400, 200), "white").save(tmp_path / "drawer.jpg")
    (tmp_path / "drawer.inselect").write_text(
        json.dumps(
            {"inselect version": 1, "scanned extension": ".jpg", "items": [{"rect": [0.25, 0.5, 0.5, 0.25]}]}
        )
    )
    truth = read_inselect_truth(tmp_path / "drawer.inselect")
    assert truth.specimens == [(100.0, 100.0, 200.0, 50.0)]


def test_counted_folder_holds_every_image_with_its_count(tmp_path: Path) -> None:
    for name in ("b.jpg", "a.png", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    found = counted_folder(tmp_path, 1, um_per_px=8.0)
    assert [t.file_name for t in found] == ["a.png", "b.jpg"]
    assert all(t.expected_count == 1 and not t.has_boxes for t in found)


def test_boxes_drawn_on_a_stored_phone_photo_are_turned_into_the_displayed_frame() -> None:
    # stored 300 x 100 with EXIF orientation 6: shown 100 x 300
    truth = TruthImage(path=Path("p.jpg"), width=300, height=100, specimens=[(0, 0, 30, 10)])
    shown = to_displayed_frame(truth, (300, 100), 6)
    assert shown.specimens == [orient_box((0, 0, 30, 10), 6, (300, 100))]
    assert (shown.width, shown.height) == (100, 300)
    # drawn on the displayed photo already: left alone
    drawn_displayed = TruthImage(path=Path("p.jpg"), width=100, height=300, specimens=[(5, 5, 10, 30)])
    assert to_displayed_frame(drawn_displayed, (300, 100), 6).specimens == [(5, 5, 10, 30)]


def test_evaluation_reads_a_rotated_jpeg_in_its_displayed_frame(tmp_path: Path) -> None:
    """A dark beetle on white paper, photographed with the phone turned (EXIF orientation 6);
    its box was drawn on the stored array, and is still found at IoU 0.5."""
    stored = np.full((300, 600, 3), 225, np.uint8)
    yy, xx = np.mgrid[:300, :600]
    stored[((yy - 100) / 30.0) ** 2 + ((xx - 400) / 60.0) ** 2 < 1] = 50
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "phone.jpg", exif=exif, quality=95)
    truth = TruthImage(
        path=tmp_path / "phone.jpg",
        width=600,
        height=300,
        specimens=[(340.0, 70.0, 120.0, 60.0)],
        frame="auto",
    )
    report = evaluate_images([truth], ClassicalDetector(min_size_px=40), progress=False)
    assert report.true_positives == 1 and report.precision == 1.0
    # the same box read as if drawn on the displayed photo is not where the beetle is shown
    truth.frame = "displayed"
    assert evaluate_images([truth], ClassicalDetector(min_size_px=40), progress=False).true_positives == 0


def test_overlay_shows_the_image_with_boxes_drawn(tmp_path: Path) -> None:
    from labpipe.evaluation.overlay import COLOURS, write_overlays

    img = np.full((200, 300, 3), 225, np.uint8)
    img[80:120, 100:160] = 40
    Image.fromarray(img).save(tmp_path / "one.png")
    truth = TruthImage(path=tmp_path / "one.png", width=300, height=200, specimens=[(100, 80, 60, 40)])
    report = evaluate_images([truth], ClassicalDetector(min_size_px=20), progress=False)
    (written,) = write_overlays(report.images, tmp_path / "ov")
    picture = np.asarray(Image.open(written).convert("RGB"))
    assert picture.shape[:2] == (200, 300)
    # the true positive's blue box is drawn around the beetle
    blue = np.all(picture == COLOURS["tp"], axis=-1)
    assert blue[60:140, 80:180].sum() > 50


@pytest.mark.shared
def test_light_trap_frames_have_specimens_debris_and_ignore_regions(shared_data: Path) -> None:
    folder = shared_data / "scenes" / "moth-screens"
    truths = read_coco_truth(folder / "boxes.coco.json")
    light_trap = [t for t in truths if not t.file_name.startswith("DSC_")]
    assert len(light_trap) == 4
    assert sum(len(t.specimens) for t in light_trap) == 106  # the sure specimens the issue counts
    assert all(t.path.is_file() for t in truths)

"""Synthetic plates: exact ground truth, deterministic layout, tile-wise TIFF equal to the whole."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi

from labpipe.synth import (
    DEBRIS_MAX_UM,
    PlateSpec,
    PlateTruth,
    layout_plate,
    load_coco,
    load_cutout,
    object_masks,
    render_plate,
    render_region,
    write_coco,
    write_plate,
)

SMALL = PlateSpec(
    width=1400, height=1200, n_specimens=6, n_touching_pairs=2, n_debris=12, um_per_px=25.0, seed=7
)


@pytest.fixture(scope="module")
def small_plate() -> tuple[np.ndarray, PlateTruth]:
    return render_plate(SMALL)


def _plate_masks(truth: PlateTruth) -> list[np.ndarray]:
    """Each object's mask as a full-plate boolean image."""
    out = []
    for _, mask, (x, y) in object_masks(truth):
        full = np.zeros((truth.height, truth.width), bool)
        h, w = mask.shape
        full[y : y + h, x : x + w] = mask
        out.append(full)
    return out


def test_same_seed_gives_the_same_plate_and_another_seed_another(small_plate):
    image, truth = small_plate
    again = layout_plate(SMALL)
    assert again == truth
    image2, _ = render_plate(SMALL)
    assert np.array_equal(image, image2)
    other = layout_plate(PlateSpec(**{**SMALL.__dict__, "seed": 8}))
    assert [o.bbox for o in other.objects] != [o.bbox for o in truth.objects]


def test_plate_holds_what_the_spec_asked_for(small_plate):
    image, truth = small_plate
    assert image.shape == (SMALL.height, SMALL.width, 3) and image.dtype == np.uint8
    assert len(truth.specimens) == SMALL.n_specimens + 2 * SMALL.n_touching_pairs
    assert len(truth.debris) == SMALL.n_debris
    assert sum(o.touching for o in truth.specimens) == 2 * SMALL.n_touching_pairs
    assert all(o.source == "procedural" for o in truth.objects)
    assert truth.dish_radius == pytest.approx(0.46 * min(SMALL.width, SMALL.height))


def test_truth_boxes_equal_the_pasted_masks(small_plate):
    _, truth = small_plate
    for obj, mask, (x, y) in object_masks(truth):
        ys, xs = np.nonzero(mask)
        assert obj.bbox == (x + xs.min(), y + ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)


def test_objects_show_in_the_image_exactly_where_the_truth_says(small_plate):
    image, truth = small_plate
    empty = render_region(truth, 0, 0, truth.width, truth.height, objects=False)
    changed = np.any(image != empty, axis=2)
    frames = np.zeros_like(changed)
    for _, mask, (x, y) in object_masks(truth):
        frames[y : y + mask.shape[0], x : x + mask.shape[1]] = True
    assert not (changed & ~frames).any(), "pixels changed outside every object's sprite"
    masks = _plate_masks(truth)
    for k, mask in enumerate(masks):
        visible = mask & ~np.any(masks[k + 1 :], axis=0) if k + 1 < len(masks) else mask
        darker = image[visible].mean(axis=1) < empty[visible].mean(axis=1) - 10
        assert darker.mean() > 0.9, f"object {k} is not painted where its mask is"


def test_objects_lie_on_the_paper_inside_the_dish(small_plate):
    _, truth = small_plate
    cx, cy = truth.dish_center
    yy, xx = np.mgrid[0 : truth.height, 0 : truth.width]
    inside = (xx - cx) ** 2 + (yy - cy) ** 2 < truth.paper_radius**2
    for obj, mask in zip(truth.objects, _plate_masks(truth), strict=True):
        assert not (mask & ~inside).any(), f"{obj} crosses the rim"
        x, y, w, h = obj.bbox
        assert x >= 0 and y >= 0 and x + w <= truth.width and y + h <= truth.height
        assert (x + w / 2 - cx) ** 2 + (y + h / 2 - cy) ** 2 < truth.dish_radius**2


def test_specimens_never_overlap_except_touching_pairs(small_plate):
    _, truth = small_plate
    masks = _plate_masks(truth)
    gap_px = 40.0 / SMALL.um_per_px  # separated specimens keep at least ~40 um apart
    pairs = {(i, i + 1) for i in range(0, 2 * SMALL.n_touching_pairs, 2)}
    for i, a in enumerate(masks):
        grown = ndi.distance_transform_edt(~a) <= gap_px
        for j in range(i + 1, len(masks)):
            if (i, j) in pairs:
                continue
            assert not (grown & masks[j]).any(), f"objects {i} and {j} overlap or nearly touch"


def test_touching_pairs_really_touch(small_plate):
    _, truth = small_plate
    masks = _plate_masks(truth)
    placed = list(object_masks(truth))
    for i in range(0, 2 * SMALL.n_touching_pairs, 2):
        a, b = truth.objects[i], truth.objects[i + 1]
        assert a.touching and b.touching
        assert (ndi.binary_dilation(masks[i]) & masks[i + 1]).any(), f"pair {i // 2} does not touch"
        ax, ay, aw, ah = a.bbox
        bx, by, bw, bh = b.bbox
        assert ax <= bx + bw and bx <= ax + aw and ay <= by + bh and by <= ay + ah, (
            "boxes neither overlap nor abut"
        )
        # the bodies themselves are in contact, not only a leg
        from labpipe.synth.specimens import build_sprite

        bodies = []
        for k in (i, i + 1):
            _, mask, (x, y) = placed[k]
            body = build_sprite(truth._placements[k].recipe, full=False).body
            full = np.zeros(masks[k].shape, bool)
            full[y : y + mask.shape[0], x : x + mask.shape[1]] = body
            bodies.append(full)
        assert (ndi.binary_dilation(bodies[0]) & bodies[1]).any(), f"pair {i // 2}: bodies apart"


def test_debris_is_smaller_than_300_um_and_never_on_a_specimen(small_plate):
    _, truth = small_plate
    masks = _plate_masks(truth)
    specimens = np.any([m for m, o in zip(masks, truth.objects, strict=True) if o.kind == "specimen"], axis=0)
    for obj, mask in zip(truth.objects, masks, strict=True):
        if obj.kind != "debris":
            continue
        assert max(obj.bbox[2:]) * SMALL.um_per_px < DEBRIS_MAX_UM
        assert not obj.touching and obj.source == "procedural"
        assert not (mask & specimens).any()


def test_tiled_bigtiff_equals_the_whole_rendered_plate(tmp_path, small_plate):
    image, truth = small_plate
    path = tmp_path / "plate.tif"
    written = write_plate(SMALL, path, tile=256)
    assert written == truth
    assert not (tmp_path / "plate.tif.part").exists()
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        assert tif.is_bigtiff and page.is_tiled and (page.tilewidth, page.tilelength) == (256, 256)
        assert page.photometric == tifffile.PHOTOMETRIC.RGB
        assert page.compression == tifffile.COMPRESSION.LZW
        assert np.array_equal(page.asarray(), image)


def test_any_region_renders_the_same_pixels_as_the_whole(small_plate):
    image, truth = small_plate
    for x, y, w, h in [(0, 0, 1, 1), (37, 91, 333, 517), (700, 600, 700, 600), (511, 511, 3, 300)]:
        assert np.array_equal(render_region(truth, x, y, w, h), image[y : y + h, x : x + w])


def test_resolution_tags_give_um_per_px_back(tmp_path):
    spec = PlateSpec(
        width=256, height=256, n_specimens=0, n_touching_pairs=0, n_debris=2, um_per_px=3.45, seed=1
    )
    path = tmp_path / "scale.tif"
    write_plate(spec, path, tile=128, compression="zlib")
    with tifffile.TiffFile(path) as tif:
        tags = tif.pages[0].tags
        num, den = tags["XResolution"].value
        assert tags["YResolution"].value == (num, den)
        assert tags["ResolutionUnit"].value == tifffile.RESUNIT.CENTIMETER
    assert 1e4 / (num / den) == pytest.approx(3.45, rel=1e-6)


def test_16_bit_plate_is_the_8_bit_plate_with_finer_levels(tmp_path):
    spec8 = PlateSpec(
        width=600, height=500, n_specimens=2, n_touching_pairs=1, n_debris=3, um_per_px=30.0, seed=3
    )
    spec16 = PlateSpec(**{**spec8.__dict__, "bit_depth": 16})
    image8, truth8 = render_plate(spec8)
    image16, truth16 = render_plate(spec16)
    assert image16.dtype == np.uint16 and truth16.objects == truth8.objects
    assert np.abs(image16.astype(np.int32) / 257.0 - image8.astype(np.int32)).max() <= 1.5
    assert np.unique(image16 % 257).size > 100  # the low bits carry information, not v * 257
    path = tmp_path / "plate16.tif"
    write_plate(spec16, path, tile=128)
    assert np.array_equal(tifffile.imread(path), image16)


def test_coco_round_trip_keeps_specimens_and_leaves_debris_out(tmp_path, small_plate):
    _, truth = small_plate
    path = tmp_path / "plate.json"
    write_coco(truth, "plate.tif", path)
    doc = json.loads(path.read_text())
    assert doc["categories"] == [{"id": 1, "name": "specimen", "supercategory": "arthropod"}]
    assert len(doc["annotations"]) == len(truth.specimens)
    for ann, obj in zip(doc["annotations"], truth.specimens, strict=True):
        assert ann["bbox"] == list(obj.bbox) and ann["area"] == obj.bbox[2] * obj.bbox[3]
        assert ann["iscrowd"] == 0 and ann["category_id"] == 1
        assert ann["attributes"] == {"touching": obj.touching, "source": obj.source}
    boxes = load_coco(path)
    assert list(boxes) == ["plate.tif"]
    assert boxes["plate.tif"] == [tuple(float(v) for v in o.bbox) for o in truth.specimens]


def test_a_dish_too_small_for_the_specimens_is_refused_with_a_clear_message():
    spec = PlateSpec(width=600, height=600, n_specimens=60, n_touching_pairs=0, n_debris=0, um_per_px=10.0)
    with pytest.raises(ValueError, match="dish is full"):
        layout_plate(spec)


@pytest.mark.parametrize(
    "change, message",
    [({"bit_depth": 12}, "bit_depth"), ({"um_per_px": 0.0}, "um_per_px"), ({"n_debris": -1}, "n_debris")],
)
def test_invalid_specs_name_the_bad_field(change, message):
    with pytest.raises(ValueError, match=message):
        layout_plate(PlateSpec(**{**SMALL.__dict__, **change}))


@pytest.mark.slow
def test_the_default_spec_lays_out():
    truth = layout_plate(PlateSpec())
    assert len(truth.specimens) == 48 and len(truth.debris) == 30


@pytest.mark.shared
def test_real_cutouts_are_dark_beetles_without_label_or_pin_head(shared_data: Path):
    folder = shared_data / "carabidae-crops"
    spec = PlateSpec(
        width=1600, height=1600, n_specimens=8, n_touching_pairs=1, n_debris=4, um_per_px=25.0,
        real_cutouts=folder, real_fraction=0.5, seed=5,
    )  # fmt: skip
    image, truth = render_plate(spec)
    real = [o for o in truth.specimens if o.source != "procedural"]
    assert len(real) == 5  # round(0.5 * 10)
    for obj in real:
        assert (folder / obj.source).is_file()
        cut = load_cutout(folder / obj.source)
        assert cut is not None
        mask = cut.alpha >= 128
        rgb = cut.rgb[mask] / 255.0
        value = rgb.max(axis=1)
        saturation = (value - rgb.min(axis=1)) / np.maximum(value, 1e-6)
        near_white = (value > 0.75) & (saturation < 0.15)
        assert near_white.mean() < 0.02, f"{obj.source}: label or pin head pasted"
        assert np.median(value) < 0.45, f"{obj.source}: the cut-out is not a dark beetle"
        # legs and antennae are thin: most of the mask is the body, not strokes of label text
        assert (cut.body & mask).sum() > 0.6 * mask.sum(), f"{obj.source}: too much beside the body"
    # and they are pasted as dark objects on the light paper
    paper = np.median(image[truth.height // 2 - 50 : truth.height // 2 + 50].reshape(-1, 3), axis=0).mean()
    for obj, mask, (x, y) in object_masks(truth):
        if obj.source != "procedural":
            pixels = image[y : y + mask.shape[0], x : x + mask.shape[1]][mask]
            assert np.median(pixels.mean(axis=1)) < 0.6 * paper, f"{obj.source} is not dark on the paper"

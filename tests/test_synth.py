"""Synthetic plates: exact ground truth, deterministic layout, tile-wise TIFF equal to the whole."""

from __future__ import annotations

import doctest
import hashlib
import importlib
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image, ImageDraw
from scipy import ndimage as ndi

from labpipe.synth import (
    DEBRIS_MAX_UM,
    WELL_DISC,
    CutoutSource,
    PlateSpec,
    PlateTruth,
    extract_plain_cutout,
    layout_plate,
    load_coco,
    load_cutout,
    object_masks,
    plain_cutout_reason,
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


def _assert_boxes_equal_masks(truth: PlateTruth) -> None:
    """Every truth box is the exact bounding box of the mask pasted for it."""
    for obj, mask, (x, y) in object_masks(truth):
        ys, xs = np.nonzero(mask)
        assert obj.bbox == (x + xs.min(), y + ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)


def _changed_only_inside_frames(image: np.ndarray, truth: PlateTruth) -> np.ndarray:
    """The empty plate; asserts that the image differs from it only inside the objects' frames."""
    empty = render_region(truth, 0, 0, truth.width, truth.height, objects=False)
    changed = np.any(image != empty, axis=2)
    frames = np.zeros_like(changed)
    for _, mask, (x, y) in object_masks(truth):
        frames[y : y + mask.shape[0], x : x + mask.shape[1]] = True
    assert not (changed & ~frames).any(), "pixels changed outside every object's sprite"
    return empty


def _visible_masks(truth: PlateTruth) -> list[np.ndarray]:
    """Each object's plate mask less what later objects cover."""
    masks = _plate_masks(truth)
    return [m & ~np.any(masks[k + 1 :], axis=0) if k + 1 < len(masks) else m for k, m in enumerate(masks)]


def test_truth_boxes_equal_the_pasted_masks(small_plate):
    _, truth = small_plate
    _assert_boxes_equal_masks(truth)


def test_objects_show_in_the_image_exactly_where_the_truth_says(small_plate):
    image, truth = small_plate
    empty = _changed_only_inside_frames(image, truth)
    for k, visible in enumerate(_visible_masks(truth)):
        darker = image[visible].mean(axis=1) < empty[visible].mean(axis=1) - 10
        assert darker.mean() > 0.9, f"object {k} is not painted where its mask is"


SMALL_MD5 = "a687060f93ca5545a9e50740388f4b05"


def test_an_old_spec_still_renders_the_same_bytes(small_plate):
    """Cut-out sources and the dark dish are opt-in: a spec written before them gives the same plate.

    The checksum was taken before they existed. It also pins numpy's, SciPy's and Pillow's output:
    after upgrading one of them, check the plates by eye and update it.
    """
    image, truth = small_plate
    assert SMALL.background == "paper" and SMALL.cutout_sources == ()
    assert hashlib.md5(image.tobytes()).hexdigest() == SMALL_MD5
    assert {o.taxon for o in truth.specimens} == {"procedural-beetle"}
    assert {o.taxon for o in truth.debris} == {"debris"}


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
        assert ann["attributes"] == {"touching": obj.touching, "source": obj.source, "taxon": obj.taxon}
    boxes = load_coco(path)
    assert list(boxes) == ["plate.tif"]
    assert boxes["plate.tif"] == [tuple(float(v) for v in o.bbox) for o in truth.specimens]


def test_a_dish_too_small_for_the_specimens_is_refused_with_a_clear_message():
    spec = PlateSpec(width=600, height=600, n_specimens=60, n_touching_pairs=0, n_debris=0, um_per_px=10.0)
    with pytest.raises(ValueError, match="dish is full"):
        layout_plate(spec)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"bit_depth": 12}, "bit_depth"),
        ({"um_per_px": 0.0}, "um_per_px"),
        ({"n_debris": -1}, "n_debris"),
        ({"background": "black"}, "background must be one of"),
    ],
)
def test_invalid_specs_name_the_bad_field(change, message):
    with pytest.raises(ValueError, match=message):
        layout_plate(PlateSpec(**{**SMALL.__dict__, **change}))


@pytest.mark.parametrize(
    "source, message",
    [
        (("springtail", "plain", 0.7, None), "add up to 1.4"),
        (("springtail", "magic", 0.2, None), "extractor must be one of"),
        (("springtail", "plain", 1.5, None), "fraction must be within"),
        (("springtail", "plain", 0.2, (900.0, 300.0)), "length_um must be"),
        (("", "plain", 0.2, None), "taxon '' is empty or reserved"),
        (("procedural-beetle", "plain", 0.2, None), "reserved"),
    ],
)
def test_invalid_cutout_sources_name_the_bad_field(tmp_path, source, message):
    taxon, extractor, fraction, length_um = source
    if message.startswith("add up"):  # two sources of 0.7 each
        sources = (CutoutSource(tmp_path, "springtail", "plain", 0.7),) * 2
    else:
        sources = (CutoutSource(tmp_path, taxon, extractor, fraction, length_um),)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=message):
        layout_plate(PlateSpec(**{**SMALL.__dict__, "cutout_sources": sources}))
    missing = (CutoutSource(tmp_path / "nowhere", "springtail", "plain", 0.2),)
    with pytest.raises(ValueError, match="nowhere is not a folder"):
        layout_plate(PlateSpec(**{**SMALL.__dict__, "cutout_sources": missing}))


@pytest.mark.parametrize(
    "module", ["labpipe.synth.cutouts", "labpipe.synth.specimens", "labpipe.synth.plate"]
)
def test_synth_docstring_examples_run(module):
    failed, attempted = doctest.testmod(
        importlib.import_module(module), extraglobs={"np": np}, optionflags=doctest.ELLIPSIS
    )
    assert attempted > 0 and failed == 0, module


# ------------------------------------------------------------------------------------------
# plain cut-outs (one animal on a plain background of either polarity)


def _ellipse_crop(fg: float, bg: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A 70 x 90 crop holding a filled ellipse (52 x 18 px, tilted) with mild noise; and its mask."""
    yy, xx = np.mgrid[0:70, 0:90]
    c, s = np.cos(0.4), np.sin(0.4)
    u, v = (xx - 45) * c + (yy - 35) * s, -(xx - 45) * s + (yy - 35) * c
    mask = (u / 26.0) ** 2 + (v / 9.0) ** 2 <= 1.0
    img = np.where(mask[..., None], fg, bg) + np.random.default_rng(seed).normal(0, 3.0, (70, 90, 3))
    return np.clip(img, 0, 255).astype(np.uint8), mask


def _best_iou(found: np.ndarray, truth: np.ndarray) -> float:
    """IoU of a cut-out's mask with the true mask, at the best placement of the cut-out's frame."""
    best = 0.0
    h, w = found.shape
    for y in range(truth.shape[0] - h + 1):
        for x in range(truth.shape[1] - w + 1):
            inter = (found & truth[y : y + h, x : x + w]).sum()
            best = max(best, inter / (found.sum() + truth.sum() - inter))
    return best


@pytest.mark.parametrize("fg, bg", [(215.0, 45.0), (50.0, 210.0)], ids=["pale-on-dark", "dark-on-light"])
def test_plain_cutout_finds_an_ellipse_of_either_polarity(fg, bg):
    img, truth = _ellipse_crop(fg, bg)
    cut = extract_plain_cutout(img, "ellipse")
    assert cut is not None, plain_cutout_reason(img)
    found = cut.alpha >= 128
    assert _best_iou(found, truth) > 0.85
    assert truth.sum() <= found.sum() <= 1.25 * truth.sum()  # at most about a pixel outside the edge
    assert abs(np.median(cut.rgb[found]) - fg) < 25, "the cut-out's colour is not the object's"
    assert cut.body_length == pytest.approx(52.0, rel=0.1) and cut.name == "ellipse"


def test_plain_cutout_refuses_an_object_filling_the_crop_to_its_edges():
    img, _ = _ellipse_crop(215.0, 45.0)
    img[22:48] = 215  # a band running across the whole crop
    assert extract_plain_cutout(img) is None
    assert plain_cutout_reason(img).startswith("object cut by the crop's border")


def test_plain_cutout_refuses_two_animals_in_one_crop_and_tiny_crops():
    img = np.full((70, 90, 3), 45, np.uint8)
    img[10:25, 10:40] = 215
    img[45:60, 50:80] = 215  # the same size again, apart: which is the specimen?
    assert extract_plain_cutout(img) is None
    assert plain_cutout_reason(img).startswith("mask fragmented")
    assert plain_cutout_reason(np.zeros((12, 40, 3))) == "crop smaller than 16 px (12 x 40)"


def test_plain_cutout_in_a_well_ignores_the_bright_rim_outside_the_central_disc():
    img, _ = _ellipse_crop(50.0, 200.0)
    yy, xx = np.mgrid[0:200, 0:200]
    r = np.hypot(yy - 99.5, xx - 99.5)
    rim = r > WELL_DISC * 100 + 2  # bright, structured rings outside the central disc (62 px)
    well = np.full((200, 200, 3), 200, np.uint8)
    well[rim] = (255 * (np.sin(r[rim]) > 0)).astype(np.uint8)[:, None]
    centred = well.copy()
    centred[65:135, 55:145] = img
    assert extract_plain_cutout(centred) is None  # the crop's border is no plain background
    cut = extract_plain_cutout(centred, disc=WELL_DISC)
    assert cut is not None and cut.body_length == pytest.approx(52.0, rel=0.1)
    off_centre = well.copy()
    off_centre[5:75, 55:145] = np.where(rim[5:75, 55:145, None], well[5:75, 55:145], img)
    assert plain_cutout_reason(off_centre, disc=WELL_DISC).startswith("object cut by the disc's rim")


@pytest.mark.shared
def test_springtail_crops_are_cut_out_as_pale_animals_on_dark(shared_data: Path):
    files = sorted((shared_data / "collembola" / "positive").glob("*.jpg"))
    assert len(files) == 300
    accepted, lifts = 0, []
    for path in files:
        rgb = np.asarray(Image.open(path).convert("RGB"))
        cut = extract_plain_cutout(rgb, path.name)
        if cut is None:
            continue
        accepted += 1
        mask = cut.alpha >= 128
        border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]]).mean(axis=1)
        lift = (np.median(cut.rgb[mask].mean(axis=1)) - np.median(border)) / 255.0
        assert lift > 0.08, f"{path.name}: the cut-out is not paler than the dark dish around it"
        assert mask.sum() < 0.7 * rgb.shape[0] * rgb.shape[1], f"{path.name}: the mask fills the crop"
        assert (cut.body & mask).sum() > 0.5 * mask.sum(), f"{path.name}: mostly legs, halo or debris"
        lifts.append(lift)
    # tight crops where the body runs into the edge, neighbours and bright rims are refused
    assert accepted >= 0.35 * len(files), f"only {accepted} of {len(files)} springtails accepted"
    assert np.median(lifts) > 0.18


# ------------------------------------------------------------------------------------------
# several cut-out sources, taxa, the dark dish


@pytest.fixture(scope="module")
def springtail_folder(tmp_path_factory) -> Path:
    """Six synthetic springtail crops: a pale body with legs and antennae on a dark background."""
    folder = tmp_path_factory.mktemp("springtails")
    rng = np.random.default_rng(11)
    for k in range(6):
        img = Image.new("RGB", (96, 72), (46, 56, 52))
        draw = ImageDraw.Draw(img)
        draw.ellipse([18, 28 - k % 3, 74, 44 + k % 3], fill=(190, 200, 198))
        for x in (30, 42, 54):
            draw.line([(x, 40), (x - 6, 54)], fill=(150, 160, 158), width=2)
        draw.line([(72, 34), (86, 24)], fill=(150, 160, 158), width=2)
        noisy = np.asarray(img, np.float32) + rng.normal(0, 3.0, (72, 96, 3))
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(folder / f"spring_{k}.png")
    return folder


def _mixed_spec(springtails: Path, background: str = "dark", **more: CutoutSource) -> PlateSpec:
    sources = (CutoutSource(springtails, "springtail", "plain", 0.5, (400.0, 1500.0)), *more.values())
    return PlateSpec(
        width=1200, height=1200, n_specimens=10, n_touching_pairs=2, n_debris=8, um_per_px=20.0,
        specimen_length_um=(1200.0, 3000.0), cutout_sources=sources, background=background, seed=3,
    )  # fmt: skip


def test_a_plate_with_springtail_cutouts_carries_taxa_and_exact_boxes(tmp_path, springtail_folder):
    spec = _mixed_spec(springtail_folder)
    image, truth = render_plate(spec)
    taxa = [o.taxon for o in truth.specimens]
    assert taxa.count("springtail") == 7 and taxa.count("procedural-beetle") == 7  # round(0.5 * 14)
    for obj in truth.specimens:
        expected = "procedural" if obj.taxon == "procedural-beetle" else obj.source
        assert obj.source == expected and (
            obj.source == "procedural" or (springtail_folder / obj.source).is_file()
        )
        if obj.taxon == "springtail":  # 400-1500 um long: a 20-75 px body, plus legs and antennae
            assert 12 <= max(obj.bbox[2:]) <= 110, obj
    _assert_boxes_equal_masks(truth)
    empty = _changed_only_inside_frames(image, truth)
    for obj, visible in zip(truth.objects, _visible_masks(truth), strict=True):
        if obj.taxon == "springtail":  # pale on the dark dish
            paler = image[visible].mean(axis=1) > empty[visible].mean(axis=1) + 40
            assert paler.mean() > 0.8, f"{obj} is not painted pale where its mask is"
    path = tmp_path / "mixed.json"
    write_coco(truth, "mixed.tif", path)
    anns = json.loads(path.read_text())["annotations"]
    assert [a["attributes"]["taxon"] for a in anns] == taxa
    assert [a["bbox"] for a in anns] == [list(o.bbox) for o in truth.specimens]


def test_the_dark_dish_renders_dark_with_the_same_lighting_and_pale_debris(springtail_folder):
    dark_spec = _mixed_spec(springtail_folder)
    paper_spec = _mixed_spec(springtail_folder, background="paper")
    dark, truth = render_plate(dark_spec)
    _, paper_truth = render_plate(paper_spec)
    assert paper_truth.objects == truth.objects  # the floor changes nothing of the layout
    empty = render_region(truth, 0, 0, truth.width, truth.height, objects=False).astype(float) / 255
    cx, cy = truth.dish_center
    yy, xx = np.mgrid[0 : truth.height, 0 : truth.width]
    r = np.hypot(xx - cx, yy - cy) / truth.paper_radius
    lum = empty.mean(axis=2)
    centre, edge = np.median(lum[r < 0.3]), np.median(lum[(r > 0.8) & (r < 0.95)])
    assert 0.15 <= centre <= 0.3, f"dark dish floor has luminance {centre:.2f}"
    assert edge < centre, "no vignetting towards the rim"
    paper_empty = render_region(paper_truth, 0, 0, 1200, 1200, objects=False).astype(float) / 255
    assert np.median(paper_empty.mean(axis=2)[r < 0.3]) > 0.75
    assert np.std(lum[r < 0.3]) < 0.03, "the dark floor's texture is not mild"
    for obj, visible in zip(truth.objects, _visible_masks(truth), strict=True):
        if obj.kind == "debris":  # dust and lint: pale on the dark dish
            assert dark[visible].mean() > 255 * centre + 40, f"{obj} does not show pale on the dark dish"


@pytest.mark.shared
def test_mixed_real_plate_of_carabids_and_springtails(shared_data: Path):
    springtails = shared_data / "collembola" / "positive"
    carabids = shared_data / "carabidae-crops"
    spec = _mixed_spec(springtails, carabid=CutoutSource(carabids, "carabid", "pinned", 0.25))
    image, truth = render_plate(spec)
    taxa = [o.taxon for o in truth.specimens]
    assert (taxa.count("springtail"), taxa.count("carabid"), taxa.count("procedural-beetle")) == (7, 3, 4)
    for obj in truth.specimens:
        folder = {"springtail": springtails, "carabid": carabids}.get(obj.taxon)
        assert folder is None or (folder / obj.source).is_file()
    _assert_boxes_equal_masks(truth)
    _changed_only_inside_frames(image, truth)


@pytest.mark.shared
def test_real_cutouts_is_the_same_as_one_carabid_source(shared_data: Path):
    folder = shared_data / "carabidae-crops"
    old = PlateSpec(
        width=900, height=900, n_specimens=4, n_touching_pairs=1, n_debris=3, um_per_px=30.0,
        real_cutouts=folder, real_fraction=0.5, seed=2,
    )  # fmt: skip
    new = PlateSpec(**{**old.__dict__, "real_cutouts": None, "cutout_sources": old.sources()})
    assert old.sources() == (CutoutSource(folder, "carabid", "pinned", 0.5),)
    image_old, truth_old = render_plate(old)
    image_new, truth_new = render_plate(new)
    assert truth_new.objects == truth_old.objects and np.array_equal(image_new, image_old)
    assert {o.taxon for o in truth_old.specimens} == {"carabid", "procedural-beetle"}


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

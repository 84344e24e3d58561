"""Crop geometry and padding: the answers a technician would check by eye."""

from __future__ import annotations

import numpy as np
import pytest

from labpipe.crops import (
    CropWriter,
    border_mean_colour,
    crop_relpath,
    margin_box,
    pad_to_square,
    read_crop,
    save_crop,
)


def _object_bbox(img: np.ndarray, colour: tuple[int, int, int]) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(np.all(img == colour, axis=-1))
    return int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)


def test_tall_crop_comes_out_square_with_aspect_kept_and_border_colour_padding() -> None:
    crop = np.full((40, 10, 3), (200, 180, 150), np.uint8)  # paper
    crop[5:35, 3:7] = (20, 10, 5)  # a 30 x 4 dark beetle
    out = pad_to_square(crop)
    assert out.shape == (40, 40, 3)
    assert _object_bbox(out, (20, 10, 5))[2:] == (4, 30)  # width 4, height 30: not stretched
    assert (out[:, :15] == (200, 180, 150)).all() and (out[:, 25:] == (200, 180, 150)).all()


def test_wide_crop_comes_out_square_with_aspect_kept() -> None:
    crop = np.full((10, 41, 3), (90, 90, 90), np.uint8)
    crop[4:6, 5:36] = (250, 0, 0)
    out = pad_to_square(crop)
    assert out.shape == (41, 41, 3)
    assert _object_bbox(out, (250, 0, 0))[2:] == (31, 2)
    assert (out[:15] == 90).all() and (out[-16:] == 90).all()


def test_padding_colour_is_the_mean_of_the_outermost_pixels_only() -> None:
    crop = np.zeros((4, 6, 3), np.uint8)
    crop[0, :] = 100
    crop[-1, :] = 100
    crop[:, 0] = 100
    crop[:, -1] = 100
    crop[1:3, 1:5] = 255  # interior is ignored
    assert np.allclose(border_mean_colour(crop), [100, 100, 100])
    crop[0, 0] = 0  # one of the 16 ring pixels darker
    assert np.allclose(border_mean_colour(crop), [100 * 15 / 16] * 3)


def test_square_crop_is_returned_unchanged() -> None:
    crop = np.random.default_rng(0).integers(0, 255, (7, 7, 3), dtype=np.uint8)
    assert np.array_equal(pad_to_square(crop), crop)


def test_margin_is_fraction_of_larger_side_and_clipped_at_image_edges() -> None:
    assert margin_box(100, 100, 50, 20, 0.4, 1000, 1000) == (80, 80, 170, 140)
    assert margin_box(5, 5, 50, 20, 0.4, 60, 1000) == (0, 0, 60, 45)


@pytest.mark.parametrize("bad", [(-0.1, 10, 10), (0.4, 0, 10)])
def test_margin_rejects_bad_input_with_the_value_in_the_message(bad: tuple[float, int, int]) -> None:
    margin, w, h = bad
    with pytest.raises(ValueError, match=str(margin) if margin < 0 else "w=0"):
        margin_box(1, 1, w, h, margin, 100, 100)


def test_crop_paths_derive_from_ids_and_are_safe(tmp_path) -> None:
    assert crop_relpath("LL 2024/03", 12, 7).as_posix() == "LL_2024_03/000012/000012-0000007.png"
    assert crop_relpath(None, 1, 1).parts[0] == "_unassigned"
    rgb = np.random.default_rng(1).integers(0, 255, (9, 9, 3), dtype=np.uint8)
    path = tmp_path / crop_relpath("S1", 3, 2)
    save_crop(rgb, path)
    assert np.array_equal(read_crop(path), rgb)  # lossless
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left behind


def test_crops_written_in_the_background_read_back_bit_for_bit(tmp_path) -> None:
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 256, (n, n, 3), dtype=np.uint8) for n in (17, 300, 64, 129)]
    with CropWriter(threads=2, max_pending=2) as writer:
        for i, crop in enumerate(crops):
            writer.submit(crop, tmp_path / "s" / f"{i}.png")
    assert writer.written == len(crops)
    for i, crop in enumerate(crops):
        assert np.array_equal(read_crop(tmp_path / "s" / f"{i}.png"), crop)  # lossless PNG
    assert not list((tmp_path / "s").glob(".tmp-*"))  # no temporary file left behind


def test_a_crop_that_cannot_be_written_fails_the_block_with_its_path(tmp_path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the crop folder should be")
    with pytest.raises(OSError, match="not-a-folder"), CropWriter(threads=1) as writer:
        writer.submit(np.zeros((8, 8, 3), np.uint8), blocker / "1.png")

"""Reading plate images: what a lab would check before trusting the reader with a day of plates."""

from __future__ import annotations

import doctest
import io
import struct
import tracemalloc
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image, ImageOps

from labpipe.errors import ImageReadError, ImageTooLargeError
from labpipe.imaging import PlateImage, headers, open_image, pixels, scale, verify_readable
from labpipe.imaging.headers import parse_jpeg_header, parse_png_header, sniff_format
from labpipe.imaging.pixels import (
    apply_orientation,
    apply_window,
    area_downsample,
    area_weights,
    clip_region,
    overview_geometry,
    percentile_window,
    region_segments,
    to_rgb8,
)
from labpipe.imaging.scale import resolve_um_per_px, um_per_px_from_ome, um_per_px_from_resolution

# --------------------------------------------------------------------------------------------------
# Synthetic plates


def _smooth_rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A plate-like image: smooth gradients plus mild noise (compresses like a real photo)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 200 / width, yy * 200 / height, (xx + yy) * 100 / (width + height)], axis=2)
    return np.clip(base + rng.normal(0, 6, base.shape) + 20, 0, 255).astype(np.uint8)


def _png_bytes(width: int, height: int, idat: bytes = b"", *, iend: bool = True) -> bytes:
    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + payload))
        return struct.pack(">I", len(payload)) + kind + payload + crc

    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    out += chunk(b"IDAT", idat or zlib.compress(b"\x00" * 16))
    return out + (chunk(b"IEND", b"") if iend else b"")


def _jpeg_bytes(array: np.ndarray, **save: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=95, **save)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    return _smooth_rgb(600, 900)


# --------------------------------------------------------------------------------------------------
# TIFF flavours: region reads equal the same slice of what was written


def test_bigtiff_tiled_lzw_rgb_region_is_exact(tmp_path: Path, rgb: np.ndarray) -> None:
    path = tmp_path / "plate.tif"
    tifffile.imwrite(path, rgb, bigtiff=True, tile=(128, 128), compression="lzw", photometric="rgb")
    with open_image(path) as image:
        assert (image.format, image.width, image.height) == ("tiff", 900, 600)
        assert (image.source_channels, image.bit_depth, image.levels) == (3, 8, 1)
        assert np.array_equal(image.read_region(130, 250, 300, 200), rgb[250:450, 130:430])
        region = image.read_region(0, 0, 900, 600)
        assert region.dtype == np.uint8 and region.flags.writeable
        assert np.array_equal(region, rgb)


def test_overlapping_crops_read_through_the_tile_cache_are_exact_and_decode_tiles_once(
    tmp_path: Path, rgb: np.ndarray
) -> None:
    path = tmp_path / "plate.tif"
    tifffile.imwrite(path, rgb, bigtiff=True, tile=(64, 64), compression="lzw", photometric="rgb")
    boxes = [(100, 100, 200, 150), (180, 120, 200, 150), (260, 140, 200, 150), (500, 300, 300, 250)]
    with open_image(path, tile_cache_mb=16) as cached, open_image(path) as plain:
        for x, y, w, h in boxes * 2:
            region = cached.read_region(x, y, w, h)
            assert np.array_equal(region, rgb[y : y + h, x : x + w])
            assert np.array_equal(region, plain.read_region(x, y, w, h))
        cache = cached._tile_cache
        assert cache is not None and cache.hits > cache.misses  # overlaps and repeats come from the cache
        # every tile decoded once: one miss per distinct tile the boxes touch
        tiles = {(tx, ty) for x, y, w, h in boxes for tx in range(x // 64, (x + w - 1) // 64 + 1)
                 for ty in range(y // 64, (y + h - 1) // 64 + 1)}  # fmt: skip
        assert cache.misses == len(tiles)


def test_the_tile_cache_never_holds_more_than_its_budget() -> None:
    from labpipe.imaging.tilecache import TileCache

    cache = TileCache(max_bytes=1000)
    for i in range(50):
        cache.put(i, np.zeros(300, np.uint8))
        assert cache.nbytes <= 1000
    assert sorted(cache.keys()) == [47, 48, 49]  # the most recent ones
    cache.put("huge", np.zeros(2000, np.uint8))
    assert cache.get("huge") is None and cache.nbytes == 900


def test_region_is_clipped_to_the_image_and_empty_regions_name_their_values(
    tmp_path: Path, rgb: np.ndarray
) -> None:
    path = tmp_path / "plate.tif"
    tifffile.imwrite(path, rgb, tile=(64, 64), compression="zlib", photometric="rgb")
    with open_image(path) as image:
        clipped = image.read_region(850, -20, 100, 70)
        assert np.array_equal(clipped, rgb[0:50, 850:900])
        with pytest.raises(ValueError, match=r"x=950, y=10, w=10, h=10"):
            image.read_region(950, 10, 10, 10)
        with pytest.raises(ValueError, match=r"w=0"):
            image.read_region(0, 0, 0, 5)


def test_striped_deflate_grey_16bit_uses_one_percentile_window(tmp_path: Path) -> None:
    grey = np.random.default_rng(1).integers(1000, 5000, (300, 200), dtype=np.uint16)
    grey[0, 0] = 65535  # a hot pixel must not set the window
    path = tmp_path / "grey16.tif"
    tifffile.imwrite(path, grey, compression="zlib", rowsperstrip=16)
    with open_image(path) as image:
        assert (image.source_channels, image.bit_depth) == (1, 16)
        region = image.read_region(0, 0, 200, 300)
        lo, hi = percentile_window(grey)  # the image is below 1024 px: its overview is itself
        assert hi < 65535
        assert np.array_equal(region, to_rgb8(grey[..., None], (lo, hi)))
        assert np.array_equal(region[..., 0], region[..., 2])  # grey replicated
        overview, factor = image.overview(1000)
        assert factor == 1.0 and np.array_equal(overview, region)


def test_16bit_crops_and_overview_agree_whatever_is_read_first(tmp_path: Path) -> None:
    yy, xx = np.mgrid[0:1300, 0:1100]
    data = (2000 + xx * 3 + yy * 2).astype(np.uint16)
    path = tmp_path / "rgb16.tif"
    tifffile.imwrite(path, np.stack([data, data // 2, data // 3], axis=2), tile=(256, 256), photometric="rgb")
    with open_image(path) as first:
        crop_a = first.read_region(500, 600, 64, 64)
        overview_a, _ = first.overview(300)
    with open_image(path) as second:
        overview_b, _ = second.overview(300)
        crop_b = second.read_region(500, 600, 64, 64)
    assert np.array_equal(crop_a, crop_b) and np.array_equal(overview_a, overview_b)
    assert crop_a.dtype == np.uint8 and 0 < crop_a.mean() < 255


def test_jpeg_compressed_tiled_tiff_matches_tifffile(tmp_path: Path, rgb: np.ndarray) -> None:
    path = tmp_path / "jpeg.tif"
    tifffile.imwrite(
        path, rgb, tile=(64, 64), compression="jpeg", compressionargs={"level": 95}, photometric="rgb"
    )
    with open_image(path) as image:
        region = image.read_region(100, 70, 300, 200)
    reference = tifffile.imread(path)[70:270, 100:400]
    assert np.array_equal(region, reference)  # same decoder, same pixels
    assert np.abs(region.astype(int) - rgb[70:270, 100:400]).mean() < 6  # and close to the original


def test_rgba_drops_alpha(tmp_path: Path, rgb: np.ndarray) -> None:
    alpha = np.full((*rgb.shape[:2], 1), 7, np.uint8)
    path = tmp_path / "rgba.tif"
    tifffile.imwrite(
        path,
        np.concatenate([rgb, alpha], axis=2),
        tile=(128, 128),
        photometric="rgb",
        extrasamples="unassalpha",
    )
    with open_image(path) as image:
        assert image.source_channels == 4
        assert np.array_equal(image.read_region(10, 20, 200, 100), rgb[20:120, 10:210])


def test_planar_separate_rgb_and_miniswhite_grey(tmp_path: Path, rgb: np.ndarray) -> None:
    planar = tmp_path / "planar.tif"
    tifffile.imwrite(
        planar, np.moveaxis(rgb, 2, 0), photometric="rgb", planarconfig="separate", tile=(128, 128)
    )
    with open_image(planar) as image:
        assert np.array_equal(image.read_region(300, 100, 250, 300), rgb[100:400, 300:550])
    white = tmp_path / "white.tif"
    tifffile.imwrite(white, rgb[..., 0], photometric="miniswhite", rowsperstrip=32)
    with open_image(white) as image:
        assert np.array_equal(image.read_region(5, 5, 40, 30)[..., 1], 255 - rgb[5:35, 5:45, 0])


def test_three_page_cyx_ome_series_reads_as_rgb(tmp_path: Path, rgb: np.ndarray) -> None:
    path = tmp_path / "channels.ome.tif"
    tifffile.imwrite(path, np.moveaxis(rgb, 2, 0), photometric="minisblack", metadata={"axes": "CYX"})
    with open_image(path) as image:
        assert image.source_channels == 3
        assert np.array_equal(image.read_region(0, 0, 900, 600), rgb)


def _write_pyramid(path: Path, levels: list[np.ndarray], **kwargs: object) -> None:
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        tif.write(levels[0], subifds=len(levels) - 1, tile=(128, 128), compression="lzw", **kwargs)
        for level in levels[1:]:
            tif.write(level, subfiletype=1, tile=(128, 128), compression="lzw", photometric="rgb")


def test_pyramidal_tiff_overview_comes_from_the_smallest_big_enough_level(tmp_path: Path) -> None:
    full = _smooth_rgb(1024, 1536)
    half = np.full((512, 768, 3), 200, np.uint8)  # distinct content proves which level was read
    quarter = np.full((256, 384, 3), 50, np.uint8)
    path = tmp_path / "pyramid.tif"
    _write_pyramid(path, [full, half, quarter], photometric="rgb")
    with open_image(path) as image:
        assert image.levels == 3 and (image.width, image.height) == (1536, 1024)
        overview, factor = image.overview(400)  # quarter (384) is too small: half is used
        assert overview.shape == (267, 400, 3) and factor == pytest.approx(3.84)
        assert np.all(overview == 200)
        small, _ = image.overview(300)
        assert np.all(small == 50)
        assert np.array_equal(image.read_region(0, 0, 64, 64), full[:64, :64])  # crops: full resolution


def test_pyramid_overview_matches_a_reference_downsample(tmp_path: Path) -> None:
    full = _smooth_rgb(1024, 1536, seed=3)
    reduced = [area_downsample(full, 1024 >> k, 1536 >> k, 2**k).round().astype(np.uint8) for k in (1, 2)]
    levels = [full, *reduced]
    path = tmp_path / "pyramid.ome.tif"
    _write_pyramid(path, levels, photometric="rgb", metadata={"axes": "YXS", "PhysicalSizeX": 2.5})
    with open_image(path) as image:
        assert image.levels == 3 and image.um_per_px == 2.5
        overview, factor = image.overview(500)
    reference = area_downsample(full, overview.shape[0], overview.shape[1], factor)
    assert np.abs(overview - reference).mean() < 1.0


def test_overview_without_pyramid_is_an_area_average(tmp_path: Path, rgb: np.ndarray) -> None:
    path = tmp_path / "plate.tif"
    tifffile.imwrite(path, rgb, tile=(64, 64), compression="lzw", photometric="rgb")
    with open_image(path) as image:
        overview, factor = image.overview(300)  # integer factor 3: compare with a plain block mean
        assert overview.shape == (200, 300, 3) and factor == 3.0
        block_mean = rgb.reshape(200, 3, 300, 3, 3).mean(axis=(1, 3))
        assert np.abs(overview - block_mean).max() <= 0.5 + 1e-3
        odd, odd_factor = image.overview(257)  # fractional factor: roughly Pillow's box filter
        assert max(odd.shape[:2]) == 257 and odd_factor == pytest.approx(900 / 257)
        box = np.asarray(Image.fromarray(rgb).resize((257, 172), Image.Resampling.BOX))
        assert odd.shape == box.shape and np.abs(odd.astype(int) - box).mean() < 1.5


# --------------------------------------------------------------------------------------------------
# JPEG and PNG


def test_png_reads_exactly_and_caches_one_copy(tmp_path: Path, rgb: np.ndarray) -> None:
    path = tmp_path / "plate.png"
    Image.fromarray(rgb).save(path)
    with open_image(path) as image:
        assert (image.format, image.width, image.height, image.levels) == ("png", 900, 600, 1)
        assert np.array_equal(image.read_region(30, 40, 100, 50), rgb[40:90, 30:130])
        overview, factor = image.overview(300)
        assert overview.shape == (200, 300, 3) and factor == 3.0
        assert image._source._full is not None  # the decoded copy is reused, not decoded twice


def test_jpeg_with_exif_orientation_6_is_read_upright(tmp_path: Path) -> None:
    stored = _smooth_rgb(200, 320)  # stored landscape; EXIF says "rotate 90 degrees clockwise"
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "phone.jpg"
    path.write_bytes(_jpeg_bytes(stored, exif=exif))
    upright = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
    assert upright.shape == (320, 200, 3)
    with open_image(path) as image:
        assert (image.format, image.width, image.height) == ("jpeg", 200, 320)
        overview, factor = image.overview(80)  # decoded at 1/4 scale by libjpeg
        assert overview.shape == (80, 50, 3) and factor == 4.0
        assert np.abs(overview - area_downsample(upright, 80, 50, 4.0)).mean() < 3
        assert np.array_equal(image.read_region(10, 250, 150, 60), upright[250:310, 10:160])


def test_orientation_helper_agrees_with_pillow_for_all_eight_values() -> None:
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    for orientation in range(1, 9):
        image = Image.fromarray(array)
        image.getexif()[0x0112] = orientation
        expected = np.asarray(ImageOps.exif_transpose(image))
        assert np.array_equal(apply_orientation(array, orientation), expected), orientation


def test_pillow_bomb_limit_is_not_what_the_user_sees(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "plate.png"
    Image.fromarray(_smooth_rgb(30, 40)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow would refuse 1200 pixels
    with open_image(path) as image:
        assert image.read_region(0, 0, 40, 30).shape == (30, 40, 3)
    assert Image.MAX_IMAGE_PIXELS == 100  # and its limit is left as it was


# --------------------------------------------------------------------------------------------------
# Files the watcher must not pass on


def test_png_header_claiming_100000_square_is_refused_from_its_header(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_bytes(100_000, 100_000))
    tracemalloc.start()
    with pytest.raises(ImageTooLargeError, match=r"100000 x 100000") as info:
        open_image(path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 5_000_000  # refused from the header: a decode would need 30 GB
    assert str(path) in str(info.value) and "imaging.max_pixels" in str(info.value)
    with pytest.raises(ImageTooLargeError, match=r"max_decoded_pixels"):
        open_image(path, max_pixels=10**11)
    with pytest.raises(ImageTooLargeError):
        verify_readable(path)


def test_jpeg_whose_frame_header_claims_65000_square_is_refused(tmp_path: Path) -> None:
    data = bytearray(_jpeg_bytes(_smooth_rgb(16, 16)))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 65000, 65000)
    path = tmp_path / "bomb.jpg"
    path.write_bytes(bytes(data))
    with pytest.raises(ImageTooLargeError, match=r"65000 x 65000"):
        open_image(path)
    data[sof + 5 : sof + 9] = struct.pack(">HH", 30000, 30000)  # under max_pixels, over max_decoded
    path.write_bytes(bytes(data))
    with pytest.raises(ImageTooLargeError, match=r"max_decoded_pixels"):
        open_image(path)


def test_half_written_tiff_is_reported_as_still_copying(tmp_path: Path, rgb: np.ndarray) -> None:
    path = tmp_path / "copying.tif"  # tifffile writes the directory first, then the tiles
    tifffile.imwrite(path, rgb, bigtiff=True, tile=(64, 64), compression="lzw", photometric="rgb")
    cut = int(path.stat().st_size * 0.6)
    path.write_bytes(path.read_bytes()[:cut])
    with pytest.raises(ImageReadError) as info:
        verify_readable(path)
    message = str(info.value)
    assert message.startswith(f"{path}: truncated: tile ")
    assert f"but the file has {cut} bytes" in message and "may still be copying" in message
    with pytest.raises(ImageReadError, match=r"truncated: tile \d+ ends at byte \d+"):
        open_image(path)


def test_half_written_tiff_with_its_directory_at_the_end_is_still_copying(
    tmp_path: Path, rgb: np.ndarray
) -> None:
    path = tmp_path / "libtiff.tif"  # libtiff (used by Pillow here) writes the directory last
    Image.fromarray(rgb).save(path, compression="tiff_lzw")
    with open_image(path) as image:
        assert np.array_equal(image.read_region(0, 0, 900, 600), rgb)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match=r"truncated: the first image directory \(IFD\) starts at byte"):
        verify_readable(path)


def test_half_written_jpeg_and_png_are_reported_as_still_copying(tmp_path: Path, rgb: np.ndarray) -> None:
    jpeg = tmp_path / "copying.jpg"
    full = _jpeg_bytes(rgb)
    jpeg.write_bytes(full[: len(full) // 2])
    with pytest.raises(ImageReadError, match=r"end-of-image marker.*may still be copying"):
        verify_readable(jpeg)
    png = tmp_path / "copying.png"
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    png.write_bytes(buffer.getvalue()[:-200])
    with pytest.raises(ImageReadError, match=r"IEND.*may still be copying"):
        verify_readable(png)


def test_text_file_named_tif_is_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "notes.tif"
    path.write_text("sample 17, plate 3: beetles from leaf litter\n")
    with pytest.raises(ImageReadError, match="not a TIFF, JPEG or PNG image") as info:
        verify_readable(path)
    assert str(path) in str(info.value)
    assert "sample 17" not in str(info.value)  # a reason never quotes the file's content


def test_a_reason_never_quotes_a_files_bytes(tmp_path: Path) -> None:
    """``passwd.tif -> /etc/passwd``-like content must not leak through a quarantine reason."""
    secret = b"root:x:0:0:Zq7Secret:/root:/bin/bash\n"
    for name, data in (
        ("passwd.tif", secret),
        ("fake.tif", b"II*\x00" + secret),
        ("fake.png", b"\x89PNG\r\n\x1a\n" + secret),
    ):
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(ImageReadError) as info:
            verify_readable(path)
        assert "Zq7Secret" not in str(info.value) and "root:x" not in str(info.value), str(info.value)


def test_empty_missing_and_folder_paths_fail_with_the_file_named(tmp_path: Path) -> None:
    empty = tmp_path / "empty.tif"
    empty.write_bytes(b"")
    with pytest.raises(ImageReadError, match=r"empty.tif: file is empty \(0 bytes\).*may still be copying"):
        open_image(empty)
    with pytest.raises(ImageReadError, match=r"gone.tif: file not found"):
        open_image(tmp_path / "gone.tif")
    with pytest.raises(ImageReadError, match="folder"):
        open_image(tmp_path)


def test_content_decides_the_format_not_the_name(tmp_path: Path, rgb: np.ndarray) -> None:
    path = tmp_path / "really_a_jpeg.tif"
    path.write_bytes(_jpeg_bytes(rgb))
    with open_image(path) as image:
        assert image.format == "jpeg"


def test_unsupported_tiffs_say_what_to_export_instead(tmp_path: Path) -> None:
    path = tmp_path / "float.tif"
    tifffile.imwrite(path, np.zeros((20, 20), np.float32))
    with pytest.raises(ImageReadError, match=r"unsupported pixel type.*8- or 16-bit"):
        open_image(path)


def test_single_strip_bigger_than_max_decoded_pixels_is_too_large(tmp_path: Path, rgb: np.ndarray) -> None:
    path = tmp_path / "one_strip.tif"
    tifffile.imwrite(path, rgb, photometric="rgb", rowsperstrip=600)
    with pytest.raises(ImageTooLargeError, match="must be decoded whole"):
        open_image(path, max_decoded_pixels=100_000)
    with pytest.raises(ImageTooLargeError, match=r"imaging.max_pixels"):
        open_image(path, max_pixels=1000)


def test_good_files_of_every_format_pass_verification(tmp_path: Path, rgb: np.ndarray) -> None:
    tifffile.imwrite(tmp_path / "a.tif", rgb, tile=(64, 64), compression="lzw", photometric="rgb")
    Image.fromarray(rgb).save(tmp_path / "a.png")
    (tmp_path / "a.jpg").write_bytes(_jpeg_bytes(rgb))
    for name in ("a.tif", "a.png", "a.jpg"):
        verify_readable(tmp_path / name)


# --------------------------------------------------------------------------------------------------
# Physical scale


def test_resolution_tags_give_micrometres_per_pixel(tmp_path: Path, rgb: np.ndarray) -> None:
    path = tmp_path / "scaled.tif"
    tifffile.imwrite(path, rgb, photometric="rgb", resolution=(10000, 10000), resolutionunit="CENTIMETER")
    with open_image(path, um_per_px_fallback=3.0) as image:
        assert image.um_per_px == pytest.approx(1.0)
    default_dpi = tmp_path / "photoshop.tif"
    tifffile.imwrite(default_dpi, rgb, photometric="rgb", resolution=(72, 72), resolutionunit="INCH")
    with open_image(default_dpi, um_per_px_fallback=3.0) as image:
        assert image.um_per_px == 3.0
    with open_image(default_dpi) as image:
        assert image.um_per_px is None


def test_scale_rules_on_their_own() -> None:
    assert um_per_px_from_resolution((10000, 1), 3) == pytest.approx(1.0)
    assert um_per_px_from_resolution(25400.0, 2) == pytest.approx(1.0)
    assert um_per_px_from_resolution(25400.0, None) == pytest.approx(1.0)  # TIFF default unit: inch
    assert um_per_px_from_resolution((72, 1), 2) is None
    assert um_per_px_from_resolution(96.0, 2) is None
    assert um_per_px_from_resolution(72.009, 2) is None  # 2835 px/m written by PNG-minded tools
    assert um_per_px_from_resolution(10.0, 2) is None  # 2540 um/px: implausible
    assert um_per_px_from_resolution(1.0, 1) is None  # no unit
    assert um_per_px_from_resolution((1, 0), 3) is None
    assert um_per_px_from_resolution(2.0, 1, imagej_unit="micron") == pytest.approx(0.5)
    ome = '<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06"><Image><Pixels {}/></Image></OME>'
    assert um_per_px_from_ome(ome.format('PhysicalSizeX="0.65"')) == pytest.approx(0.65)
    assert um_per_px_from_ome(ome.format('PhysicalSizeX="2e-3" PhysicalSizeXUnit="mm"')) == pytest.approx(2.0)
    assert um_per_px_from_ome(ome.format('PhysicalSizeX="650" PhysicalSizeXUnit="nm"')) == pytest.approx(0.65)
    assert um_per_px_from_ome(ome.format('PhysicalSizeX="1" PhysicalSizeXUnit="pixel"')) is None
    assert um_per_px_from_ome(ome.format("")) is None
    assert um_per_px_from_ome("<not xml") is None
    assert resolve_um_per_px([None, 4.0], 1.0) == 4.0
    assert resolve_um_per_px([None], 1.5) == 1.5
    assert resolve_um_per_px([None], 0.0) is None


# --------------------------------------------------------------------------------------------------
# Pure helpers on arrays whose answer is obvious


def test_area_helpers_on_tiny_arrays() -> None:
    weights = area_weights(4, 2, 2.0).toarray()
    assert np.allclose(weights, [[0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5]])
    assert np.allclose(area_weights(3, 2, 1.5).toarray(), [[2 / 3, 1 / 3, 0], [0, 1 / 3, 2 / 3]])
    assert np.allclose(area_weights(5, 3, 2.0).toarray().sum(axis=1), 1)  # last pixel: what exists
    assert np.allclose(area_weights(5, 3, 2.0).toarray()[2], [0, 0, 0, 0, 1])
    assert area_downsample(np.array([[0, 2], [4, 6]]), 1, 1, 2.0).tolist() == [[3.0]]
    assert area_downsample(np.array([[0.0, 3.0, 6.0]]), 1, 2, 1.5).tolist() == [[1.0, 5.0]]
    assert overview_geometry(8000, 8000, 2048) == (2048, 2048, 8000 / 2048)
    assert overview_geometry(1000, 10, 100) == (100, 1, 10.0)


def test_window_helpers_on_tiny_arrays() -> None:
    assert percentile_window(np.arange(1001), 10, 90) == (100.0, 900.0)
    assert percentile_window(np.full(9, 123)) == (0.0, 65535.0)  # flat image: nothing to stretch
    assert apply_window(np.array([0, 100, 150, 200, 300]), 100.0, 200.0).tolist() == [0, 0, 128, 255, 255]
    assert to_rgb8(np.array([[[9]]], np.uint8), None).tolist() == [[[9, 9, 9]]]
    with pytest.raises(ValueError, match="hi > lo"):
        apply_window(np.zeros(3), 5.0, 5.0)


def test_region_and_tile_arithmetic() -> None:
    assert clip_region(-5, 8, 20, 10, 10, 12) == (0, 8, 10, 4)
    with pytest.raises(ValueError, match=r"x=20, y=0, w=5, h=5 lies outside the 10 x 10 image"):
        clip_region(20, 0, 5, 5, 10, 10)
    grid = {"segment_width": 10, "segment_height": 10, "image_width": 30, "image_height": 30}
    assert region_segments(15, 15, 10, 10, **grid) == [4, 5, 7, 8]
    assert region_segments(0, 0, 10, 10, **grid) == [0]
    assert region_segments(0, 0, 30, 30, **grid) == list(range(9))
    strips = {"segment_width": 30, "segment_height": 4, "image_width": 30, "image_height": 30}
    assert region_segments(3, 9, 2, 4, **strips) == [2, 3]  # rows 9..12 live in strips 2 and 3


def test_docstring_examples_run() -> None:
    for module in (pixels, scale, headers):
        failed, attempted = doctest.testmod(module, extraglobs={"np": np})
        assert attempted > 0 and failed == 0, module.__name__


def test_header_parsers_on_bytes(rgb: np.ndarray) -> None:
    assert sniff_format(b"II*\x00\x08\x00\x00\x00") == "tiff"
    assert sniff_format(b"MM\x00+\x00\x08\x00\x00") == "tiff"
    assert sniff_format(b"\x89PNG\r\n\x1a\n....") == "png"
    assert sniff_format(b"%PDF-1.7") is None
    assert (parse_png_header(_png_bytes(640, 480)).width, parse_png_header(_png_bytes(640, 480)).height) == (
        640,
        480,
    )
    header = parse_jpeg_header(_jpeg_bytes(rgb[:50, :70]))
    assert (header.width, header.height, header.channels, header.bit_depth) == (70, 50, 3, 8)


# --------------------------------------------------------------------------------------------------
# Laziness and memory


def _counting_decodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the index of every tile or strip tifffile decodes."""
    calls: list[int] = []
    original = tifffile.TiffPage.__dict__["decode"]  # a functools.cached_property
    build = original.func if hasattr(original, "func") else original.fget

    def counting(page: tifffile.TiffPage):  # type: ignore[no-untyped-def]
        decode = build(page)

        def wrapped(data, index, **kwargs):  # type: ignore[no-untyped-def]
            calls.append(index)
            return decode(data, index, **kwargs)

        return wrapped

    monkeypatch.setattr(tifffile.TiffPage, "decode", property(counting))
    return calls


def test_region_read_decodes_only_the_tiles_it_touches(
    tmp_path: Path, rgb: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "tiled.tif"
    tifffile.imwrite(path, rgb, tile=(128, 128), compression="lzw", photometric="rgb")  # 8 x 5 tiles
    striped = tmp_path / "striped.tif"
    tifffile.imwrite(striped, rgb, compression="lzw", photometric="rgb", rowsperstrip=50)  # 12 strips
    with open_image(path) as image, open_image(striped) as strips:
        calls = _counting_decodes(monkeypatch)
        assert np.array_equal(image.read_region(300, 140, 20, 20), rgb[140:160, 300:320])
        assert calls == [10]  # row 1, column 2 of an 8-tile-wide grid
        calls.clear()
        image.read_region(250, 100, 20, 50)  # crosses one tile corner: four tiles
        assert sorted(calls) == [1, 2, 9, 10]
        calls.clear()
        assert np.array_equal(strips.read_region(10, 120, 5, 40), rgb[120:160, 10:15])
        assert sorted(calls) == [2, 3]


def _tiles(height: int, width: int, tile: int) -> Iterator[np.ndarray]:
    """Tiles of a big synthetic plate, one at a time: the test never holds the image."""
    texture = (np.indices((tile, tile)).sum(axis=0) % 2 * 16).astype(np.uint8)[..., None]
    for row in range(-(-height // tile)):
        for col in range(-(-width // tile)):
            colour = np.array([(row * 7) % 200, (col * 5) % 200, (row + col) % 200], np.uint8)
            yield colour + texture


@pytest.mark.slow
def test_overview_of_8000_square_bigtiff_stays_far_below_full_resolution_memory(tmp_path: Path) -> None:
    size, tile = 8000, 256
    path = tmp_path / "big.tif"
    tifffile.imwrite(
        path,
        _tiles(size, size, tile),
        shape=(size, size, 3),
        dtype=np.uint8,
        tile=(tile, tile),
        compression="lzw",
        photometric="rgb",
        bigtiff=True,
    )
    with open_image(path) as image:
        tracemalloc.start()
        overview, factor = image.overview(2048)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    full_resolution = size * size * 3  # 192 MB
    assert overview.shape == (2048, 2048, 3) and factor == pytest.approx(size / 2048)
    assert peak < full_resolution / 4, f"peak {peak / 1e6:.0f} MB"
    for row, col in ((0, 0), (10, 20), (30, 30)):  # centre of a tile: its colour plus half the texture
        y, x = int((row * tile + tile / 2) / factor), int((col * tile + tile / 2) / factor)
        expected = np.array([(row * 7) % 200, (col * 5) % 200, (row + col) % 200]) + 8
        assert np.abs(overview[y, x].astype(int) - expected).max() <= 1


def test_plate_image_is_a_context_manager_that_closes(tmp_path: Path, rgb: np.ndarray) -> None:
    path = tmp_path / "plate.tif"
    tifffile.imwrite(path, rgb, tile=(64, 64), photometric="rgb")
    with open_image(str(path)) as image:
        assert isinstance(image, PlateImage) and image.path == path
    image.close()  # twice is fine
    with pytest.raises(ValueError, match="closed"):
        image.read_region(0, 0, 5, 5)

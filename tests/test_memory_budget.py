"""Issue 13, memory items 5 and 6.

5. An image a worker cannot hold is refused from its header, before anything is decoded, against
   ``[imaging] memory_budget_mb``; what is accepted stays within the budget in measured resident
   memory (real worker processes, a real 24000 x 24000 PNG of 1.7 MB); JPEG and PNG are decoded
   into one array, and opening a PNG decodes nothing.
6. A TIFF holding several images (pages, planes) is quarantined with a reason that says how many,
   never read as its first page; pyramids, thumbnails and three colour pages are still one image.
"""

from __future__ import annotations

import io
import json
import math
import re
import shutil
import struct
import sys
import tracemalloc
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import tifffile
from brokers import RecordingBroker
from PIL import Image, ImageFile
from sqlalchemy import select
from test_daemon import distributed, drop  # noqa: F401 (the fixture is used by name)

from labpipe.bench.peak import child_environment, run_measured
from labpipe.config import Settings, load_settings
from labpipe.db.database import open_database
from labpipe.db.models import Image as ImageRow
from labpipe.db.models import ImageStatus
from labpipe.errors import ImageReadError, ImageTooLargeError
from labpipe.imaging import memory, open_image, verify_readable
from labpipe.imaging.reader import _pil_to_array
from labpipe.ingest.watcher import Watcher

MB = 2**20


# --------------------------------------------------------------------------------------------------
# Files


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def write_zeros_png(path: Path, width: int, height: int, piece: int = 8 * MB) -> Path:
    """An 8-bit RGB PNG of zeros, written in well under a second at any size.

    Compressing 1.7 GB of zeros takes zlib 20 s; the deflate stream of zeros after zeros is the
    same piece over and over, so one piece (ending in a sync flush, byte-aligned) is compressed
    and repeated. The zlib trailer's Adler-32 of n zero bytes is ``(n mod 65521) << 16 | 1``.
    """
    total = height * (1 + 3 * width)  # each row: filter byte 0, then the samples
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = min(total, piece)
    head = deflate.compress(bytes(first)) + deflate.flush(zlib.Z_SYNC_FLUSH)
    left = total - first
    repeats, repeated = 0, b""
    if left >= piece:
        repeated = deflate.compress(bytes(piece)) + deflate.flush(zlib.Z_SYNC_FLUSH)
        repeats, left = divmod(left, piece)
    tail = deflate.compress(bytes(left)) + deflate.flush(zlib.Z_FINISH)
    adler = ((total % 65521) << 16) | 1
    with path.open("wb") as fh:
        fh.write(
            b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        )
        fh.write(_chunk(b"IDAT", b"\x78\xda" + head))
        for _ in range(repeats):
            fh.write(_chunk(b"IDAT", repeated))
        fh.write(_chunk(b"IDAT", tail + struct.pack(">I", adler)))
        fh.write(_chunk(b"IEND", b""))
    return path


def plate_array(side: int, specimens: int = 12, seed: int = 3) -> np.ndarray:
    """Light paper with dark elliptical specimens (a fortieth of the side long, at least 80 px):
    something to detect and crop, also on an overview reduced ten times."""
    rng = np.random.default_rng(seed)
    plate = np.full((side, side, 3), 225, np.uint8)
    a = max(40, side // 80)
    yy, xx = np.mgrid[-a : a + 1, -a : a + 1]
    blob = ((xx / a) ** 2 + (yy / (0.375 * a)) ** 2) <= 1
    for _ in range(specimens):
        y, x = (int(v) for v in rng.integers(a + 10, side - a - 10, 2))
        plate[y - a : y + a + 1, x - a : x + a + 1][blob] = (60, 40, 30)
    return plate


@pytest.fixture(scope="module")
def issue_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The issue's file: 24000 x 24000 RGB zeros, 576 MP (under max_decoded_pixels), 1.68 MB."""
    return write_zeros_png(tmp_path_factory.mktemp("issue") / "zeros-24000.png", 24000, 24000)


def test_the_zeros_png_writer_writes_a_valid_png(tmp_path: Path, issue_png: Path) -> None:
    for width, height, piece in ((300, 200, 4096), (7, 3, MB), (1000, 900, 100_000)):
        path = write_zeros_png(tmp_path / f"z{width}.png", width, height, piece)
        decoded = np.asarray(Image.open(path))
        assert decoded.shape == (height, width, 3) and not decoded.any()
        data = path.read_bytes()
        idat, at = b"", 8
        while at < len(data):
            (length,) = struct.unpack(">I", data[at : at + 4])
            if data[at + 4 : at + 8] == b"IDAT":
                idat += data[at + 8 : at + 8 + length]
            at += 12 + length
        assert zlib.decompress(idat) == bytes(height * (1 + 3 * width))  # checks the Adler-32 too
    assert 1_600_000 < issue_png.stat().st_size < 1_800_000  # "a 1.68 MB PNG"


# --------------------------------------------------------------------------------------------------
# Decoding: one array, the same values as Pillow, nothing decoded at open


@pytest.mark.parametrize(
    ("mode", "save"),
    [
        ("RGB", {}),
        ("RGBA", {}),
        ("L", {}),
        ("LA", {}),
        ("P", {}),
        ("P", {"transparency": 3}),
        ("L", {"transparency": 5}),
        ("1", {}),
        ("L", {"bits": 4}),
    ],
)
def test_png_decodes_to_the_values_pillow_gives(tmp_path: Path, mode: str, save: dict[str, object]) -> None:
    rng = np.random.default_rng(1)
    path = tmp_path / "plate.png"
    Image.fromarray(rng.integers(0, 256, (40, 70, 3), dtype=np.uint8)).convert(mode).save(path, **save)
    with open_image(path) as image:
        raw = image._source.full_level().array
    assert np.array_equal(raw, _pil_to_array(Image.open(path)))


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_sixteen_bit_png_keeps_pillows_rules(tmp_path: Path, channels: int) -> None:
    """Plain 16-bit grey keeps 16 bits (the intensity window maps it); colour keeps the high byte."""
    rng = np.random.default_rng(channels)
    data = rng.integers(0, 65536, (30, 50, channels) if channels > 1 else (30, 50), dtype=np.uint16)
    path = tmp_path / "deep.png"
    path.write_bytes(imagecodecs.png_encode(data))
    with open_image(path) as image:
        raw = image._source.full_level().array
        region = image.read_region(0, 0, 50, 30)
    expected = _pil_to_array(Image.open(path))
    if channels == 1:
        assert raw.dtype == np.uint16 and np.array_equal(raw, expected)
    else:
        high = (data >> 8).astype(np.uint8)
        assert raw.dtype == np.uint8 and np.array_equal(raw[..., 0], high[..., 0])
        assert np.array_equal(region, np.asarray(Image.open(path).convert("RGB")))


@pytest.mark.parametrize("grey", [False, True])
def test_jpeg_decodes_to_the_values_pillow_gives(tmp_path: Path, grey: bool) -> None:
    rng = np.random.default_rng(2)
    array = Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)).resize((240, 180))
    path = tmp_path / "plate.jpg"
    (array.convert("L") if grey else array).save(path, quality=90)
    with open_image(path) as image:
        region = image.read_region(0, 0, 240, 180)
    assert np.array_equal(region, np.asarray(Image.open(path).convert("RGB")))


def test_opening_and_verifying_a_png_decodes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, issue_png: Path
) -> None:
    """Pillow's getexif() decodes a whole PNG to look for EXIF after the image data; the watcher
    verified every PNG that way (4 bytes a pixel in the watcher process)."""

    decoded = _count_decodes(monkeypatch)
    small = tmp_path / "small.png"
    Image.fromarray(plate_array(400)).save(small)
    for path in (small, issue_png):
        verify_readable(path, max_decoded_pixels=10**9)
        with open_image(path, max_decoded_pixels=10**9) as image:
            assert image.width == image.height
    assert decoded == []


def _count_decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Pillow decodes in ``ImageFile.load``: record each call (and still decode)."""
    calls: list[str] = []
    original = ImageFile.ImageFile.load

    def load(self: ImageFile.ImageFile) -> object:
        calls.append(str(self.filename))
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    return calls


def test_png_orientation_stored_after_the_image_data_is_read_without_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90 degrees clockwise
    buffer = io.BytesIO()
    Image.fromarray(plate_array(300)[:200]).save(buffer, format="PNG", exif=exif)
    data = buffer.getvalue()
    start = data.index(b"eXIf") - 4
    length = struct.unpack(">I", data[start : start + 4])[0]
    exif_chunk = data[start : start + 12 + length]
    moved = data.replace(exif_chunk, b"")  # PNG 1.5 allows eXIf after IDAT: put it before IEND
    iend = moved.index(b"IEND") - 4
    path = tmp_path / "late-exif.png"
    path.write_bytes(moved[:iend] + exif_chunk + moved[iend:])
    assert path.read_bytes().index(b"eXIf") > path.read_bytes().index(b"IDAT")
    decoded = _count_decodes(monkeypatch)
    with open_image(path) as image:
        assert (image.width, image.height, image.orientation) == (200, 300, 6)
    assert decoded == []


# --------------------------------------------------------------------------------------------------
# The estimate, the setting, the refusal


def _budget(limit_mb: int, **kw: int) -> memory.MemoryBudget:
    return memory.MemoryBudget(limit_bytes=limit_mb * MB, base_bytes=memory.WORKER_BASE_BYTES, **kw)


def test_the_issue_png_is_refused_from_its_header_with_a_reason(issue_png: Path) -> None:
    tracemalloc.start()
    with pytest.raises(ImageTooLargeError) as info:
        verify_readable(issue_png, memory_budget=_budget(2048))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 5 * MB  # from the header: nothing decoded (a decode would need about 2 GB)
    message = info.value.message
    assert str(issue_png) in message and "needs about 2." in message and "budget of 2.0 GB" in message
    assert "[imaging] memory_budget_mb" in message and "tiled TIFF" in message
    assert "24000 x 24000 x 3 channels" in message and re.search(r"the decoded image 1\.\d GB", message)
    assert "IDAT" not in message and "\\x" not in message  # never the file's bytes
    with open_image(issue_png, memory_budget=_budget(3072)) as image:  # fits a 3 GB worker now
        assert image.memory_estimate(_budget(3072)).peak_bytes < 3072 * MB


def test_estimates_follow_the_code_paths(tmp_path: Path) -> None:
    """Decoded whole: 3 bytes per pixel (plus the file). Streamed: one band, whatever the size."""
    budget = _budget(4096, tile_cache_bytes=192 * MB)
    array = plate_array(3000)
    png, tiled, one_strip = tmp_path / "p.png", tmp_path / "tiled.tif", tmp_path / "strip.tif"
    Image.fromarray(array).save(png, compress_level=1)
    tifffile.imwrite(tiled, array, photometric="rgb", tile=(256, 256), compression="zlib")
    tifffile.imwrite(one_strip, array, photometric="rgb", rowsperstrip=3000, compression="zlib")
    estimates = {}
    for path in (png, tiled, one_strip):
        with open_image(path) as image:
            estimates[path.name] = image.memory_estimate(budget)
    whole = estimates["p.png"]
    assert whole.held_bytes == pytest.approx(3000 * 3000 * 3 * memory.WHOLE_DECODE_FACTOR, rel=1e-6)
    assert whole.transient_bytes == png.stat().st_size
    streamed = estimates["tiled.tif"]
    assert streamed.held_bytes == 0 and streamed.transient_bytes < 3000 * 3000 * 3 + 16 * MB  # cache, band
    assert estimates["strip.tif"].transient_bytes > 2 * 3000 * 3000 * 3  # the one strip, decoded whole
    for found in estimates.values():
        assert found.detection_bytes == int(3000 * 3000 * memory.DETECT_BYTES_PER_OVERVIEW_PIXEL)
        assert found.base_bytes == memory.WORKER_BASE_BYTES


def test_the_budget_setting_has_an_environment_override_and_an_automatic_value() -> None:
    settings = load_settings(environ={"LABPIPE_IMAGING_MEMORY_BUDGET_MB": "1234"})
    assert settings.imaging.memory_budget_mb == 1234
    assert memory.worker_budget_bytes(settings) == 1234 * MB
    assert Settings().imaging.memory_budget_mb == 3072  # default: one worker fits a modest machine
    auto = load_settings(
        environ={
            "LABPIPE_IMAGING_MEMORY_BUDGET_MB": "0",
            "LABPIPE_QUEUE_SERVE_WORKERS": "2",
            "LABPIPE_QUEUE_WORKER_CONCURRENCY": "2",
        }
    )
    assert memory.worker_processes(auto) == 4
    assert memory.worker_budget_bytes(auto, total=16 * 2**30) == int(16 * 2**30 * 0.8 / 4)
    assert 0 < memory.worker_budget_bytes(auto) * 4 <= memory.machine_memory_bytes()


# --------------------------------------------------------------------------------------------------
# Real worker processes on real files


def _side_just_under(budget: memory.MemoryBudget, margin: float = 0.93) -> int:
    """The side of a square RGB PNG whose estimate is about ``margin`` of the budget (the file's
    own compressed bytes are small next to the overview's detection, which overlaps them)."""
    detection = budget.overview_max_side**2 * memory.DETECT_BYTES_PER_OVERVIEW_PIXEL
    room = budget.limit_bytes * margin - budget.base_bytes - detection
    return math.isqrt(int(room / (3 * memory.WHOLE_DECODE_FACTOR)))


@pytest.mark.slow
def test_two_workers_stay_within_their_budgets_on_the_largest_accepted_and_a_refused_png(
    tmp_path: Path, issue_png: Path
) -> None:
    """Worker processes (``labpipe process``: the workers' own jobs, models loaded) run at once:
    two on a plate just under a 900 MB budget, one on the issue's PNG. Each stays within its
    budget in measured peak memory, so N workers never need more than N x budget: the machine's
    memory with ``memory_budget_mb = 0``, and what the configured budget promises otherwise."""
    limit_mb = 900
    env = child_environment(
        {
            "LABPIPE_IMAGING_MEMORY_BUDGET_MB": str(limit_mb),
            "LABPIPE_IMAGING_OVERVIEW_MAX_SIDE": "1024",
            "LABPIPE_CLASSIFIER_THREADS": "1",
            "LABPIPE_CLASSIFIER_BATCH_SIZE": "8",
        }
    )
    settings = load_settings(environ=env)
    budget = memory.MemoryBudget.for_settings(settings)  # the watcher's view: a worker's base
    side = _side_just_under(budget)
    accepted = tmp_path / f"plate-{side}.png"
    Image.fromarray(plate_array(side)).save(accepted, compress_level=1)
    verify_readable(accepted, memory_budget=budget)  # the watcher takes it ...
    with open_image(accepted) as image:
        assert 0.85 * budget.limit_bytes < image.memory_estimate(budget).peak_bytes <= budget.limit_bytes
    bigger = write_zeros_png(tmp_path / "bigger.png", *[_side_just_under(budget, 1.1)] * 2)
    with pytest.raises(ImageTooLargeError):  # ... and one estimated 10 % over the budget it would not
        verify_readable(bigger, memory_budget=budget)
    warm_up = tmp_path / "warm-up.png"  # a worker has done work before: its models hold more
    Image.fromarray(plate_array(1200)).save(warm_up)

    def worker(name: str, *images: Path) -> tuple[int, float, list[dict[str, object]]]:
        data = tmp_path / name
        cmd = [sys.executable, "-m", "labpipe.cli.main", "--data-dir", str(data)]
        cmd += ["--db", f"sqlite:///{data / 'labpipe.sqlite'}", "process", *map(str, images), "--json"]
        run = run_measured(cmd, work=data, env=env, timeout=300)
        return run.exit_code, run.peak_mb, json.loads(run.stdout or b"[]")

    with ThreadPoolExecutor(3) as pool:
        jobs = [pool.submit(worker, f"w{i}", warm_up, accepted) for i in (1, 2)]
        jobs.append(pool.submit(worker, "w3", issue_png))
        (code_a, peak_a, out_a), (code_b, peak_b, out_b), (code_c, peak_c, out_c) = [j.result() for j in jobs]
    for code, peak, out in ((code_a, peak_a, out_a), (code_b, peak_b, out_b)):
        assert code == 0 and len(out[-1]["specimens"]) >= 10, out  # processed: detected, cut, classified
        assert peak <= limit_mb, f"accepted {side} x {side} PNG: peak {peak:.0f} MB over {limit_mb} MB"
    assert peak_a + peak_b <= 2 * limit_mb
    print(f"accepted {side} x {side}: peaks {peak_a:.0f} and {peak_b:.0f} MB; refused: {peak_c:.0f} MB")
    assert code_c == 1 and out_c[0]["reason"] in ("ImageReadError", "ImageTooLargeError"), out_c
    assert "budget of 900 MB" in str(out_c[0]["error"]) and "needs about 2." in str(out_c[0]["error"])
    assert peak_c <= limit_mb  # refused before decoding: the 6 GB of the issue never happen


# --------------------------------------------------------------------------------------------------
# Item 6: several images in one TIFF


def _stack(path: Path, pages: int) -> Path:
    tifffile.imwrite(path, np.zeros((pages, 32, 32), np.uint8))
    return path


def test_a_multi_page_tiff_is_refused_with_its_page_count(tmp_path: Path) -> None:
    stack = _stack(tmp_path / "stack.tif", 5000)
    with pytest.raises(ImageReadError, match=r"holds 5,000 images") as info:
        verify_readable(stack)
    assert "save each page as its own file" in info.value.message
    z_stack = tmp_path / "z.tif"
    tifffile.imwrite(z_stack, np.zeros((3, 64, 64), np.uint8), imagej=True, metadata={"axes": "ZYX"})
    mixed = tmp_path / "mixed.tif"
    with tifffile.TiffWriter(mixed) as tif:
        tif.write(np.zeros((64, 64, 3), np.uint8), photometric="rgb")
        tif.write(np.zeros((32, 40, 3), np.uint8), photometric="rgb")
    ome_z = tmp_path / "z.ome.tif"
    tifffile.imwrite(ome_z, np.zeros((4, 64, 64), np.uint8), ome=True, metadata={"axes": "ZYX"})
    for path, count in ((z_stack, 3), (mixed, 2), (ome_z, 4)):
        with pytest.raises(ImageReadError, match=rf"holds {count} images"):
            open_image(path)


def test_pyramids_thumbnails_and_colour_pages_are_still_one_image(tmp_path: Path) -> None:
    rgb = plate_array(512)
    single = tmp_path / "single.tif"
    tifffile.imwrite(single, rgb, photometric="rgb", tile=(128, 128))
    subifds = tmp_path / "subifds.tif"
    with tifffile.TiffWriter(subifds) as tif:
        tif.write(rgb, photometric="rgb", subifds=2, tile=(128, 128))
        tif.write(rgb[::2, ::2], photometric="rgb", subfiletype=1, tile=(128, 128))
        tif.write(rgb[::4, ::4], photometric="rgb", subfiletype=1, tile=(128, 128))
    ome = tmp_path / "pyramid.ome.tif"
    with tifffile.TiffWriter(ome, ome=True) as tif:
        tif.write(rgb, photometric="rgb", subifds=1, tile=(128, 128), metadata={"axes": "YXS"})
        tif.write(rgb[::2, ::2], photometric="rgb", subfiletype=1, tile=(128, 128))
    reduced_pages = tmp_path / "reduced-pages.tif"  # levels as pages flagged reduced-resolution
    with tifffile.TiffWriter(reduced_pages) as tif:
        tif.write(rgb, photometric="rgb", tile=(128, 128))
        tif.write(rgb[::2, ::2], photometric="rgb", subfiletype=1, tile=(128, 128))
    thumbnail = tmp_path / "thumbnail.tif"
    with tifffile.TiffWriter(thumbnail) as tif:
        tif.write(rgb, photometric="rgb")
        tif.write(rgb[::8, ::8], photometric="rgb", subfiletype=1)
    channels = tmp_path / "channels.tif"
    tifffile.imwrite(channels, np.moveaxis(rgb, 2, 0), photometric="minisblack", metadata={"axes": "CYX"})
    expected_levels = {single: 1, subifds: 3, ome: 2, reduced_pages: 2, thumbnail: 1, channels: 1}
    for path, levels in expected_levels.items():  # a 64-px thumbnail is too small to be a level
        verify_readable(path)
        with open_image(path) as image:
            assert (image.width, image.height, image.levels) == (512, 512, levels), path.name
            assert np.array_equal(image.read_region(0, 0, 512, 512), rgb), path.name


def test_the_watcher_quarantines_a_stack_and_an_image_over_budget_with_their_reasons(
    tmp_path: Path, issue_png: Path
) -> None:
    settings = load_settings(
        overrides={
            "storage.root": tmp_path / "data",
            "ingest.stable_seconds": 0.0,
            "ingest.unreadable_grace": 0.0,
            "imaging.memory_budget_mb": 2048,
        },
        environ={},
    )
    inbox = settings.storage.inbox_dir
    inbox.mkdir(parents=True)
    _stack(inbox / "stack.tif", 5000)
    shutil.copyfile(issue_png, inbox / "zeros.png")
    tifffile.imwrite(inbox / "plate.tif", plate_array(600), photometric="rgb", tile=(128, 128))

    factory = open_database(settings.database_url)
    broker = RecordingBroker()
    watcher = Watcher(settings, factory, broker)
    watcher.rescan()
    watcher.tick()
    watcher.tick()
    with factory() as session:
        rows = {row.file_name: row for row in session.scalars(select(ImageRow))}
    assert rows["plate.tif"].status == ImageStatus.QUEUED.value and broker.sent == [rows["plate.tif"].id]
    quarantine = settings.storage.quarantine_dir
    for name, words in (("stack.tif", "holds 5,000 images"), ("zeros.png", "budget of 2.0 GB")):
        assert rows[name].status == ImageStatus.QUARANTINED.value and words in rows[name].error
        assert words in (quarantine / f"{name}.reason.txt").read_text()
        assert (quarantine / name).is_file() and not (inbox / name).exists()
    factory.kw["bind"].dispose()


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.redis
def test_a_distributed_daemon_refuses_an_image_over_budget_and_processes_the_rest(
    request: pytest.FixtureRequest, tmp_path: Path, issue_png: Path
) -> None:
    """The same budget holds with ``labpipe watch`` + ``labpipe worker`` on PostgreSQL and Redis."""
    daemon = request.getfixturevalue("distributed")(
        **{"imaging.memory_budget_mb": 2048, "ingest.unreadable_grace": 1.0}
    )
    daemon.start("watch")
    daemon.start("worker")
    plate = tmp_path / "plate.tif"
    tifffile.imwrite(plate, plate_array(600), photometric="rgb", tile=(128, 128))
    drop(issue_png, daemon.inbox / "S1" / "zeros.png")
    drop(plate, daemon.inbox / "S1" / "plate.tif")
    daemon.wait_finished(2, timeout=120)
    rows = {row.file_name: row for row in daemon.images()}
    assert rows["plate.tif"].status == ImageStatus.DONE.value and rows["plate.tif"].n_specimens > 0
    refused = rows["zeros.png"]
    assert refused.status == ImageStatus.QUARANTINED.value and "budget of 2.0 GB" in (refused.error or "")
    assert (daemon.root / "quarantine" / "S1" / "zeros.png").is_file()

"""Open plate images lazily and read them region by region.

``open_image`` reads headers only; pixels are decoded when asked for:

- ``PlateImage.read_region`` decodes only the TIFF tiles or strips that intersect the region
  (their offsets come from the IFD, their bytes are read with one sorted pass, each is decoded by
  tifffile's own segment decoder, so every compression tifffile + imagecodecs know works).
- ``PlateImage.overview`` uses the smallest pyramid level that is still big enough, else streams
  the image band by band (one row of tiles, or a few strips, at a time), area-averages each band
  into the overview and throws the band away. The full-resolution image is never held whole.
- JPEG and PNG have no random access; they are decoded whole, at most once per ``PlateImage``,
  by imagecodecs straight into one numpy array (3 bytes per RGB pixel; Pillow would hold 4 and copy
  twice on the way to numpy). JPEG overviews use libjpeg's DCT scaling (through Pillow) instead and
  need no full-size decode at all. Opening decodes nothing (not even to find a PNG's EXIF).

Rules and where they come from:

- 16-bit data becomes 8-bit through one linear window per image, from the 0.1 and 99.9
  percentiles of a 1024-pixel overview's raw values (robust to hot pixels and dust, the usual
  "auto-contrast" of microscopy viewers). It is computed once, lazily, from a fixed-size overview so
  the mapping does not depend on which method is called first: crops and overviews always agree.
  8-bit data is used as stored.
- Grey is replicated to three channels. Alpha (RGBA, grey + alpha) is dropped: plate images are
  opaque, and an alpha channel there is a by-product of export software. MinIsWhite is inverted.
- JPEG and PNG are shown in their EXIF orientation (DESIGN.md, Images): width, height, regions and
  overviews are all in the displayed frame.
- Physical scale: see :mod:`labpipe.imaging.scale`.
- Sizes: any image above ``max_pixels`` is refused from its header; JPEG/PNG above
  ``max_decoded_pixels`` too, and so is a TIFF whose single strip or tile exceeds it, because those
  must be decoded whole (``ImagingConfig`` documents both limits). With a memory budget, so is an
  image whose reading a worker could not hold (:mod:`labpipe.imaging.memory`; each source says what
  its reading holds, :meth:`_Source.decode_cost`).
- One image per file: a TIFF whose series hold more than one full-resolution plane (pages of a
  stack, Z, T or channel planes) is refused with the count; pyramid levels, reduced-resolution
  pages (thumbnails) and masks belong to their image, and a three-page ``CYX`` series is read as
  RGB.

Limits: TIFF Orientation tags are ignored (microscopy writers do not set them). Palette, CMYK, Lab,
float and 32-bit TIFFs are refused with an error that says so. 16-bit colour and grey + alpha PNGs
are reduced to 8 bits by their high byte (as Pillow does), not by the window; plain 16-bit grey
keeps its 16 bits.
"""

from __future__ import annotations

import itertools
import math
import mmap
import operator
import os
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

import imagecodecs
import numpy as np
import numpy.typing as npt
import tifffile
from PIL import Image

from labpipe.errors import ImageReadError, ImageTooLargeError
from labpipe.imaging import headers, memory, pixels, scale
from labpipe.imaging.tilecache import TileCache

__all__ = ["PlateImage", "open_image", "verify_readable"]

COPYING_HINT = "the file may still be copying; wait until it is complete or re-export it"
DAMAGED_HINT = "the file is damaged; re-export it from the acquisition or stitching software"
FORMAT_HINT = "labpipe reads TIFF, JPEG and PNG; export the plate image in one of these formats"
WINDOW_SIDE = 1024
"""Longer side of the overview whose raw values set the 16-to-8-bit window."""

_BLOCK_PIXELS = 1 << 20  # pixels per block streamed into the overview (about 3 MB of RGB8)
_MIN_BAND_ROWS = 256
_DECODE_THREADS = max(1, min(4, os.cpu_count() or 1))
_PIL_LOCK = threading.Lock()
_EXECUTOR_LOCK = threading.Lock()
_EXECUTOR: tuple[int, ThreadPoolExecutor] | None = None

# TIFF tag values (TIFF 6.0): Photometric, PlanarConfiguration, Compression, SampleFormat.
_MINISWHITE, _MINISBLACK, _RGB, _YCBCR = 0, 1, 2, 6
_JPEG_COMPRESSIONS = frozenset({6, 7, 33007, 34892})

Array = npt.NDArray[Any]


# --------------------------------------------------------------------------------------------------
# Levels: anything that can hand out raw pixel blocks


class _Level(ABC):
    """One resolution of an image: raw samples ``(h, w, channels)`` (channels 1 or 3) of ``dtype``."""

    width: int
    height: int
    channels: int
    dtype: np.dtype[Any]
    band_rows: int
    """Rows per band when streaming (a multiple of the tile or strip height)."""
    chunk_cols: int
    """Columns per block within a band (a multiple of the tile width)."""
    full_width_bands: bool
    """Whether a band must be read whole (strips, in-memory arrays) rather than block by block."""

    @abstractmethod
    def read_raw(self, x: int, y: int, w: int, h: int, cache: TileCache | None = None) -> Array:
        """Raw samples of a region inside the level, shape ``(h, w, channels)``; decoded tiles are
        taken from and kept in ``cache`` where the level has tiles."""


class _ArrayLevel(_Level):
    """A decoded image held in memory (JPEG, PNG, or a JPEG decoded at reduced scale)."""

    def __init__(self, array: Array) -> None:
        self.array = array
        self.height, self.width, self.channels = array.shape
        self.dtype = array.dtype
        self.band_rows = max(1, _BLOCK_PIXELS // self.width)
        self.chunk_cols = self.width
        self.full_width_bands = True

    def read_raw(self, x: int, y: int, w: int, h: int, cache: TileCache | None = None) -> Array:
        return np.array(self.array[y : y + h, x : x + w], dtype=self.array.dtype, order="C")


class _TiffPageReader:
    """Decodes the tiles or strips of one TIFF page (IFD) that a region needs, and no others."""

    def __init__(self, owner: _TiffSource, page: Any, keep: int, level_name: str) -> None:
        key = page.keyframe
        self.owner = owner
        self.page = page
        self.key = key
        self.level_name = level_name
        self.width = int(key.imagewidth)
        self.height = int(key.imagelength)
        self.tiled = bool(key.is_tiled)
        self.kind = "tile" if self.tiled else "strip"
        if self.tiled:
            self.seg_w, self.seg_h = int(key.tilewidth), int(key.tilelength)
        else:
            self.seg_w, self.seg_h = self.width, min(int(key.rowsperstrip or self.height), self.height)
        self.samples = int(key.samplesperpixel)
        self.separate = key.planarconfig == 2 and self.samples > 1
        self.keep = keep
        self.per_plane = math.ceil(self.width / self.seg_w) * math.ceil(self.height / self.seg_h)
        self.offsets = np.asarray(page.dataoffsets, dtype=np.int64)
        self.bytecounts = np.asarray(page.databytecounts, dtype=np.int64)
        self.decode_args: dict[str, Any] = {}
        if key.compression in _JPEG_COMPRESSIONS:
            tables = getattr(page, "jpegtables", None) or key.jpegtables
            self.decode_args = {"jpegtables": tables, "jpegheader": key.jpegheader}

    def check_structure(self, file_size: int) -> None:
        """Every segment the reader could need must be listed and lie inside the file."""
        path = self.owner.path
        needed = self.per_plane * (self.samples if self.separate else 1)
        if len(self.offsets) < needed or len(self.bytecounts) < needed:
            raise ImageReadError(
                path,
                f"damaged{self.level_name}: the IFD lists {len(self.offsets)} {self.kind} offsets and "
                f"{len(self.bytecounts)} byte counts for {needed} {self.kind}s",
                DAMAGED_HINT,
            )
        ends = self.offsets[:needed] + self.bytecounts[:needed]
        present = (self.offsets[:needed] > 0) & (self.bytecounts[:needed] > 0)
        beyond = np.flatnonzero(present & (ends > file_size))
        if beyond.size:
            index = int(beyond[0])
            raise ImageReadError(
                path,
                f"truncated{self.level_name}: {self.kind} {index} ends at byte {int(ends[index])} but the "
                f"file has {file_size} bytes ({beyond.size} of {needed} {self.kind}s lie past the end)",
                COPYING_HINT,
            )

    def read(self, x: int, y: int, w: int, h: int, cache: TileCache | None = None) -> Array:
        """Samples ``(h, w, keep)`` of a region inside the page, in the page's native dtype.

        With ``cache``, decoded tiles are looked up there first and the ones decoded here are kept.
        """
        indices = pixels.region_segments(
            x, y, w, h, segment_width=self.seg_w, segment_height=self.seg_h,
            image_width=self.width, image_height=self.height,
        )  # fmt: skip
        planes = range(self.keep) if self.separate else range(1)
        wanted = [plane * self.per_plane + index for plane in planes for index in indices]
        out = np.zeros((h, w, self.keep), dtype=self.owner.dtype)
        cached: list[tuple[int, Any]] = []
        if cache is not None and self.tiled:
            missing = []
            for index in wanted:
                hit = cache.get((id(self), index))
                if hit is None:
                    missing.append(index)
                else:
                    cached.append((index, hit))
            wanted = missing
        fh = self.page.parent.filehandle
        decode = self.key.decode
        args = self.decode_args
        try:
            segments = list(
                fh.read_segments(
                    self.offsets[wanted].tolist(), self.bytecounts[wanted].tolist(),
                    indices=wanted, sort=True, lock=fh.lock, flat=True,
                )
            ) if wanted else []  # fmt: skip
        except OSError as exc:
            raise ImageReadError(self.owner.path, f"cannot read {self.kind}s: {exc}", COPYING_HINT) from exc

        def one(segment: tuple[bytes | None, int]) -> tuple[int, Any]:
            data, index = segment
            if data is not None and len(data) < int(self.bytecounts[index]):
                raise ImageReadError(
                    self.owner.path,
                    f"truncated{self.level_name}: {self.kind} {index} should have "
                    f"{int(self.bytecounts[index])} bytes at byte {int(self.offsets[index])} but only "
                    f"{len(data)} could be read",
                    COPYING_HINT,
                )
            try:
                return index, decode(data, index, **args)
            except ImageReadError:
                raise
            except MemoryError:
                raise
            except Exception as exc:  # tifffile, imagecodecs and numpy raise many kinds
                raise ImageReadError(
                    self.owner.path,
                    f"cannot decode {self.kind} {index}{self.level_name} "
                    f"(compression {int(self.key.compression)}): {exc}",
                    DAMAGED_HINT,
                ) from exc

        results: Iterator[tuple[int, Any]]
        if len(segments) >= 4 and _DECODE_THREADS > 1:
            results = _decode_executor().map(one, segments)
        else:
            results = map(one, segments)
        if cache is not None and self.tiled:
            results = _kept(results, cache, id(self))
        for _index, (tile, where, _shape) in itertools.chain(cached, results):
            if tile is None:  # sparse file: an unwritten tile reads as zeros
                continue
            plane, _depth, ty, tx = where[0], where[1], where[2], where[3]
            th, tw = tile.shape[1], tile.shape[2]
            y0, y1 = max(y, ty), min(y + h, ty + th, self.height)
            x0, x1 = max(x, tx), min(x + w, tx + tw, self.width)
            if y1 <= y0 or x1 <= x0:
                continue
            patch = tile[0, y0 - ty : y1 - ty, x0 - tx : x1 - tx]
            if self.separate:
                out[y0 - y : y1 - y, x0 - x : x1 - x, plane] = patch[..., 0]
            else:
                out[y0 - y : y1 - y, x0 - x : x1 - x, :] = patch[..., : self.keep]
        return out


def _kept(results: Iterator[tuple[int, Any]], cache: TileCache, owner: int) -> Iterator[tuple[int, Any]]:
    """Pass decoded tiles through, keeping each in ``cache``."""
    for index, value in results:
        tile = value[0]
        cache.put((owner, index), value, tile.nbytes if tile is not None else 0)
        yield index, value


class _TiffLevel(_Level):
    """One pyramid level of a TIFF: one page (grey or RGB) or three grey pages (a CYX series)."""

    def __init__(self, readers: list[_TiffPageReader], invert: bool) -> None:
        first = readers[0]
        self.readers = readers
        self.invert = invert
        self.width, self.height = first.width, first.height
        self.channels = sum(r.keep for r in readers)
        self.dtype = first.owner.dtype
        self.full_width_bands = not first.tiled
        self.band_rows = first.seg_h * max(1, math.ceil(_MIN_BAND_ROWS / first.seg_h))
        if first.tiled:
            self.chunk_cols = first.seg_w * max(1, _BLOCK_PIXELS // (self.band_rows * first.seg_w))
        else:
            rows = first.seg_h * max(1, _BLOCK_PIXELS // (first.seg_h * self.width))
            self.band_rows = min(max(rows, first.seg_h), max(self.height, 1))
            self.chunk_cols = max(1, _BLOCK_PIXELS // self.band_rows)

    def read_raw(self, x: int, y: int, w: int, h: int, cache: TileCache | None = None) -> Array:
        parts = [reader.read(x, y, w, h, cache) for reader in self.readers]
        out = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=2)
        if self.invert:
            np.subtract(np.iinfo(out.dtype).max, out, out=out)
        return out


# --------------------------------------------------------------------------------------------------
# Sources: one per file format


class _Source(ABC):
    path: Path
    format: str
    width: int
    height: int
    source_channels: int
    bit_depth: int
    levels: int
    file_um_per_px: float | None

    @abstractmethod
    def full_level(self) -> _Level:
        """The full-resolution level."""

    @abstractmethod
    def overview_level(self, target_long: int) -> _Level:
        """The level to build an overview with a longer side of ``target_long`` from."""

    def check_structure(self) -> None:  # noqa: B027 - optional hook, nothing to do by default
        """Extra structural checks for ``verify_readable`` (everything cheap already ran at open)."""

    @abstractmethod
    def decode_cost(self, tile_cache_bytes: int, overview_side: int) -> memory.DecodeCost:
        """What reading this image holds in memory (:mod:`labpipe.imaging.memory`), with a tile
        cache of ``tile_cache_bytes`` and an overview of ``overview_side`` pixels."""

    @abstractmethod
    def close(self) -> None:
        """Release the file and caches."""


class _TiffSource(_Source):
    def __init__(
        self, path: Path, file_size: int, head: bytes, max_pixels: int, max_decoded_pixels: int
    ) -> None:
        self.path = path
        self.format = "tiff"
        self.file_size = file_size
        self._check_first_ifd(head)
        try:
            self.tif = tifffile.TiffFile(path)
        except MemoryError:
            raise
        except Exception as exc:
            raise ImageReadError(
                path,
                f"cannot be read as TIFF: {_describe(exc)}",
                COPYING_HINT + "; if it persists, " + DAMAGED_HINT,
            ) from exc
        try:
            self._inspect(max_pixels, max_decoded_pixels)
        except BaseException:
            self.tif.close()
            raise

    def _check_first_ifd(self, head: bytes) -> None:
        try:
            offset = headers.tiff_first_ifd_offset(head)
        except headers.HeaderError as exc:
            raise ImageReadError(self.path, f"damaged TIFF header: {exc}", COPYING_HINT) from exc
        if offset == 0:
            raise ImageReadError(self.path, "the TIFF header points to no image directory", COPYING_HINT)
        if offset >= self.file_size:
            raise ImageReadError(
                self.path,
                f"truncated: the first image directory (IFD) starts at byte {offset} but the file has "
                f"{self.file_size} bytes",
                COPYING_HINT,
            )

    def _inspect(self, max_pixels: int, max_decoded_pixels: int) -> None:
        path = self.path
        try:
            series_list = self.tif.series
            if not series_list:
                raise ImageReadError(path, "the TIFF holds no readable image directory", COPYING_HINT)
            series = series_list[0]
            level_series = list(series.levels) or [series]
            images = self._count_images(series_list)
        except ImageReadError:
            raise
        except MemoryError:
            raise
        except Exception as exc:
            raise ImageReadError(
                path, f"the TIFF structure is damaged: {_describe(exc)}", COPYING_HINT
            ) from exc
        if images > 1:
            raise ImageReadError(
                path,
                f"the TIFF holds {images:,} images (pages or planes), not one plate: labpipe reads one "
                "image per file and would ignore all but the first",
                "save each page as its own file (for example Fiji's Image > Stacks > Stack to Images, "
                "or `tiffsplit`) and drop those into the inbox",
            )
        first_page = series.pages[0] if len(series.pages) else None
        if first_page is None:
            raise ImageReadError(path, "the TIFF's first image has no pixel data", DAMAGED_HINT)
        key = first_page.keyframe
        self.width, self.height = int(key.imagewidth), int(key.imagelength)
        _check_pixels(path, self.width, self.height, max_pixels, "imaging.max_pixels")
        self.bit_depth = int(key.bitspersample) if isinstance(key.bitspersample, int) else 0
        self._check_sample_type(key)
        self.dtype = np.dtype(np.uint8 if self.bit_depth == 8 else np.uint16)
        per_channel_pages = self._is_cyx_rgb(series)
        self.source_channels = 3 if per_channel_pages else int(key.samplesperpixel)
        photometric = int(key.photometric)
        invert = photometric == _MINISWHITE
        keep = 3 if photometric in (_RGB, _YCBCR) and not per_channel_pages else 1

        self._levels: list[_TiffLevel] = []
        for number, lvl in enumerate(level_series):
            name = f" (pyramid level {number})" if number else ""
            pages = list(lvl.pages[:3]) if per_channel_pages else [lvl.pages[0]]
            if any(p is None for p in pages):
                if number == 0:
                    raise ImageReadError(path, "the TIFF's first image has no pixel data", DAMAGED_HINT)
                break
            try:
                readers = [_TiffPageReader(self, p, keep, name) for p in pages]
            except MemoryError:
                raise
            except Exception as exc:
                raise ImageReadError(path, f"damaged{name}: {_describe(exc)}", DAMAGED_HINT) from exc
            if number and not self._same_layout(readers[0], pages[0].keyframe, key):
                break  # a "level" that is not a reduced copy of the image: stop using the pyramid
            for reader in readers:
                reader.check_structure(self.file_size)
                seg_pixels = reader.seg_w * reader.seg_h
                if seg_pixels > max_decoded_pixels:
                    raise ImageTooLargeError(
                        path,
                        f"one {reader.kind}{name} holds {reader.seg_w} x {reader.seg_h} = {seg_pixels:,} "
                        f"pixels and must be decoded whole, more than imaging.max_decoded_pixels = "
                        f"{max_decoded_pixels:,}",
                        "re-save it as a tiled TIFF (for example `vips tiffsave in.tif out.tif --tile "
                        "--bigtiff --compression lzw`) or raise imaging.max_decoded_pixels",
                    )
            self._levels.append(_TiffLevel(readers, invert))
        self.levels = len(self._levels)
        self.file_um_per_px = self._scale(first_page)

    def _check_sample_type(self, key: Any) -> None:
        photometric = int(key.photometric)
        if self.bit_depth not in (8, 16) or int(key.sampleformat) != 1:
            raise ImageReadError(
                self.path,
                f"unsupported pixel type: {key.bitspersample}-bit samples of SampleFormat "
                f"{int(key.sampleformat)} (labpipe reads 8- and 16-bit unsigned integers)",
                "export the image as an 8- or 16-bit TIFF",
            )
        if photometric not in (_MINISWHITE, _MINISBLACK, _RGB, _YCBCR):
            name = getattr(key.photometric, "name", str(photometric))
            raise ImageReadError(
                self.path,
                f"unsupported colour model {name} (labpipe reads grey and RGB TIFFs)",
                "export the image as RGB or greyscale",
            )
        if photometric == _YCBCR and int(key.compression) not in _JPEG_COMPRESSIONS:
            raise ImageReadError(
                self.path,
                "unsupported colour model: YCbCr samples without JPEG compression",
                "export the image as RGB",
            )
        if photometric in (_RGB, _YCBCR) and int(key.samplesperpixel) < 3:
            raise ImageReadError(
                self.path, f"RGB image with only {key.samplesperpixel} samples per pixel", DAMAGED_HINT
            )
        if int(key.imagedepth) != 1:
            raise ImageReadError(
                self.path, "volumetric (ImageDepth > 1) TIFFs are not plate images", FORMAT_HINT
            )
        compression = int(key.compression)
        if compression != 1 and compression not in tifffile.TIFF.DECOMPRESSORS:
            raise ImageReadError(
                self.path,
                f"unsupported compression {getattr(key.compression, 'name', compression)} "
                "(no decoder in tifffile/imagecodecs)",
                "re-export with LZW, Deflate, JPEG or no compression",
            )

    @classmethod
    def _count_images(cls, series_list: Any) -> int:
        """Full-resolution images in the file: the planes (Z, T, C, pages...) of every series.

        One image however it is stored: its pyramid levels (SubIFDs, OME or reduced-resolution
        pages, which tifffile gives as the series' levels), reduced-resolution copies and masks in a
        series of their own (NewSubfileType bits 0 and 2: thumbnails, slide labels), and three grey
        pages that are the colour channels of one RGB image (:meth:`_is_cyx_rgb`).
        """
        count = 0
        for series in series_list:
            if int(series.keyframe.subfiletype) & 0b101:
                continue
            if cls._is_cyx_rgb(series):
                count += 1
                continue
            planes = (n for n, axis in zip(series.shape, series.axes, strict=True) if axis not in "YXS")
            count += math.prod(planes)
        return count

    @staticmethod
    def _is_cyx_rgb(series: Any) -> bool:
        """A series stored as three grey pages, one per colour (Bio-Formats writes these)."""
        axes = series.get_axes(squeeze=True) if hasattr(series, "get_axes") else series.axes
        shape = series.get_shape(squeeze=True) if hasattr(series, "get_shape") else series.shape
        if axes not in ("CYX", "SYX") or shape[0] != 3 or len(series.pages) < 3:
            return False
        return all(p is not None and int(p.keyframe.samplesperpixel) == 1 for p in series.pages[:3])

    @staticmethod
    def _same_layout(reader: _TiffPageReader, key: Any, full: Any) -> bool:
        return (
            int(key.samplesperpixel) == int(full.samplesperpixel)
            and key.bitspersample == full.bitspersample
            and int(key.photometric) == int(full.photometric)
            and reader.width <= int(full.imagewidth)
            and reader.height <= int(full.imagelength)
        )

    def _scale(self, page: Any) -> float | None:
        ome = scale.um_per_px_from_ome(self.tif.ome_metadata) if self.tif.is_ome else None
        tags = page.keyframe.tags
        x_res = tags.get("XResolution")
        unit = tags.get("ResolutionUnit")
        imagej_unit = None
        if self.tif.is_imagej and self.tif.imagej_metadata:
            imagej_unit = self.tif.imagej_metadata.get("unit")
        from_tags = scale.um_per_px_from_resolution(
            x_res.value if x_res is not None else None,
            int(unit.value) if unit is not None else None,
            imagej_unit=str(imagej_unit) if imagej_unit else None,
        )
        return scale.resolve_um_per_px([ome, from_tags])

    def full_level(self) -> _Level:
        return self._levels[0]

    def decode_cost(self, tile_cache_bytes: int, overview_side: int) -> memory.DecodeCost:
        """The largest band (or single strip or tile) any level is read in, with its compressed
        bytes, and the tile cache (never more than the whole image decoded).

        The overview streams its level band by band, crops decode the segments they touch; a TIFF
        stored as one strip is decoded whole either way.
        """
        worst = (0, 0, self._levels[0])
        for level in self._levels:
            first = level.readers[0]
            segment = first.seg_w * first.seg_h
            band = level.band_rows * (level.width if level.full_width_bands else level.chunk_cols)
            held = max(band, segment)
            if held > worst[0]:
                per_band = max(1, math.ceil(held / segment))
                largest = int(first.bytecounts.max()) if first.bytecounts.size else 0
                worst = (held, per_band * largest * len(level.readers), level)
        held, compressed, level = worst
        first = level.readers[0]
        samples = first.samples * len(level.readers)
        kind = "one strip" if not first.tiled and first.seg_h >= first.height else f"{first.kind}s"
        full = self._levels[0]
        image_bytes = full.width * full.height * samples * self.dtype.itemsize
        return memory.DecodeCost(
            kind="streamed",
            held_bytes=0,
            transient_bytes=int(held * samples * self.dtype.itemsize * memory.STREAM_DECODE_FACTOR)
            + compressed
            + (min(tile_cache_bytes, image_bytes) if first.tiled else 0),
            description=(
                f"a {level.width} x {level.height} TIFF in {kind} of {first.seg_w} x {first.seg_h} "
                f"pixels, read {held:,} pixels at a time,"
            ),
        )

    def overview_level(self, target_long: int) -> _Level:
        chosen = self._levels[0]
        for level in self._levels[1:]:
            if max(level.width, level.height) >= target_long:
                chosen = level
        return chosen

    def check_structure(self) -> None:
        """Offsets and byte counts of every page of every series and level lie inside the file."""
        for s_number, series in enumerate(self.tif.series):
            for l_number, lvl in enumerate(series.levels or [series]):
                for p_number, page in enumerate(lvl.pages):
                    if page is None:
                        continue
                    _check_segments_inside(
                        self.path,
                        page,
                        self.file_size,
                        f" (series {s_number}, level {l_number}, page {p_number})",
                    )

    def close(self) -> None:
        self.tif.close()


class _PillowSource(_Source):
    """JPEG and PNG, after our own header checks: Pillow reads the metadata (size, EXIF orientation)
    and JPEG overviews at reduced scale; imagecodecs decodes the full image straight into one numpy
    array (Pillow would hold it at 4 bytes per pixel and copy it twice on the way to numpy)."""

    def __init__(self, path: Path, fmt: str, header: headers.RasterHeader, file_size: int) -> None:
        self.path = path
        self.format = fmt
        self.header = header
        self.file_size = file_size
        self.source_channels = header.channels
        self.bit_depth = 16 if header.bit_depth > 8 else 8
        self.levels = 1
        self.file_um_per_px = None
        self._full: _ArrayLevel | None = None
        self._lock = threading.Lock()
        self.decoded_channels = self._decoded_channels()
        with self._open() as im:
            if im.size != (header.width, header.height):
                raise ImageReadError(
                    path,
                    f"header says {header.width} x {header.height} but the decoder found "
                    f"{im.size[0]} x {im.size[1]}",
                    DAMAGED_HINT,
                )
            self.mode = im.mode
            if fmt == "png" and "exif" not in im.info:
                # Pillow's getexif() decodes the whole PNG to look for EXIF after the image data;
                # look at the file's last bytes instead (b"": none, and nothing to decode for).
                im.info["exif"] = self._png_exif_after_data() or b""
            try:
                self.orientation = int(im.getexif().get(0x0112, 1) or 1)
            except Exception:  # unreadable EXIF never stops a plate: show it as stored
                self.orientation = 1
        if self.orientation not in range(1, 9):
            self.orientation = 1
        swap = self.orientation >= 5
        self.width, self.height = (header.height, header.width) if swap else (header.width, header.height)

    @property
    def whole_with_imagecodecs(self) -> bool:
        """Whether the full image is decoded by imagecodecs (every PNG; JPEG in grey or YCbCr/RGB);
        CMYK and YCCK JPEGs go through Pillow, which converts them to RGB."""
        return self.format == "png" or self.header.channels in (1, 3)

    def _decoded_channels(self) -> int:
        """Channels the full decode produces (PNG palettes expanded, tRNS as alpha)."""
        if self.format != "png":
            return self.header.channels
        try:
            with self.path.open("rb") as fh:
                return headers.png_decoded_channels(fh)
        except headers.HeaderError as exc:
            raise ImageReadError(self.path, f"damaged PNG: {exc}", COPYING_HINT) from exc
        except OSError as exc:
            problem = f"cannot read the file: {exc.strerror or exc}"
            raise ImageReadError(self.path, problem, COPYING_HINT) from exc

    def _png_exif_after_data(self) -> bytes | None:
        try:
            with self.path.open("rb") as fh:
                fh.seek(max(0, self.file_size - 65536))
                return headers.png_exif_after_data(fh.read())
        except OSError:
            return None

    def decode_cost(self, tile_cache_bytes: int, overview_side: int) -> memory.DecodeCost:
        """The decoded image (plus the 8-bit copy of 16-bit colour) and the compressed file; held
        while the detector works unless the overview comes from a JPEG decoded at 1/2 to 1/8 scale
        (then the full image is decoded only for the crops, after detection)."""
        pixels_count = self.header.pixels
        if not self.whole_with_imagecodecs:  # Pillow: its CMYK image and our RGB array
            decoded = pixels_count * (4 + 3)
            what = f"{self.format.upper()} decoded whole by Pillow"
        else:
            sample_bytes = 2 if self.header.bit_depth > 8 else 1
            decoded = pixels_count * self.decoded_channels * sample_bytes
            if sample_bytes == 2 and self.decoded_channels > 1:
                decoded += pixels_count * (1 if self.decoded_channels == 2 else 3)
            what = f"{self.format.upper()} decoded whole"
        description = (
            f"{what}, {self.header.width} x {self.header.height} x {self.decoded_channels} "
            f"channels of {self.header.bit_depth} bits,"
        )
        decoded = int(decoded * memory.WHOLE_DECODE_FACTOR)
        scale = self.draft_scale(overview_side)
        if scale == 1:
            return memory.DecodeCost("whole", decoded, self.file_size, description)
        draft = math.ceil(self.header.width / scale) * math.ceil(self.header.height / scale)
        transient = max(decoded + self.file_size, draft * (4 + 3))  # Pillow's draft image and ours
        return memory.DecodeCost("whole", 0, transient, description)

    @contextmanager
    def _open(self) -> Iterator[Image.Image]:
        """``Image.open`` with Pillow's own bomb limit lifted to ours, which has already been checked.

        Pillow's ``MAX_IMAGE_PIXELS`` is process-wide; it is raised (never lowered) under a lock for
        the instant of opening and restored right after, so other users of Pillow keep their limit.
        """
        try:
            with _PIL_LOCK:
                previous = Image.MAX_IMAGE_PIXELS
                if previous is not None and previous < self.header.pixels:
                    Image.MAX_IMAGE_PIXELS = self.header.pixels
                try:
                    im = Image.open(self.path)
                finally:
                    Image.MAX_IMAGE_PIXELS = previous
        except MemoryError:
            raise
        except Image.DecompressionBombError as exc:
            raise ImageTooLargeError(
                self.path,
                f"image is too large to decode: {exc}",
                "convert it to a tiled TIFF or raise imaging.max_decoded_pixels",
            ) from exc
        except Exception as exc:
            raise ImageReadError(
                self.path, f"cannot be read as {self.format.upper()}: {_describe(exc)}", DAMAGED_HINT
            ) from exc
        try:
            yield im
        finally:
            im.close()

    def _decode(self, draft_size: tuple[int, int] | None = None) -> Array:
        """Decode to raw ``(h, w, 1 or 3)`` in displayed orientation; JPEG may decode at 1/2..1/8."""
        if draft_size is None and self.whole_with_imagecodecs:
            return pixels.apply_orientation(self._decode_whole(), self.orientation)
        with self._open() as im:
            try:
                if draft_size is not None:
                    im.draft(None, draft_size)
                im.load()
                array = _pil_to_array(im)
            except MemoryError:
                raise
            except ImageReadError:
                raise
            except Exception as exc:
                truncated = "truncated" in str(exc).lower() or isinstance(exc, EOFError)
                raise ImageReadError(
                    self.path,
                    f"cannot decode the {self.format.upper()} data: {_describe(exc)}",
                    COPYING_HINT if truncated else DAMAGED_HINT,
                ) from exc
        return pixels.apply_orientation(array, self.orientation)

    def _decode_whole(self) -> Array:
        """The full image as stored, raw ``(h, w, 1 or 3)``, through imagecodecs: one decoded array
        (plus the compressed file while it decodes), the same values as Pillow gives.

        As with Pillow: alpha is dropped, palettes are expanded, and of 16-bit data only plain grey
        keeps 16 bits (colour and grey + alpha keep the high byte).
        """
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            problem = f"cannot read the file: {exc.strerror or exc}"
            raise ImageReadError(self.path, problem, COPYING_HINT) from exc
        try:
            decoded = imagecodecs.png_decode(data) if self.format == "png" else imagecodecs.jpeg8_decode(data)
        except MemoryError:
            raise
        except Exception as exc:  # imagecodecs raises its own error per codec
            truncated = any(word in str(exc).lower() for word in ("truncated", "premature", "end of"))
            raise ImageReadError(
                self.path,
                f"cannot decode the {self.format.upper()} data: {_describe(exc)}",
                COPYING_HINT if truncated else DAMAGED_HINT,
            ) from exc
        del data
        if decoded.ndim == 2:
            decoded = decoded[..., None]
        height, width, channels = decoded.shape
        if (width, height) != (self.header.width, self.header.height):
            raise ImageReadError(
                self.path,
                f"header says {self.header.width} x {self.header.height} but the data decode to "
                f"{width} x {height}",
                DAMAGED_HINT,
            )
        raw = decoded[..., : 1 if channels <= 2 else 3]  # a view: alpha is never copied
        if raw.dtype == np.uint16 and channels > 1:
            high = np.empty(raw.shape, np.uint8)
            rows = max(1, _BLOCK_PIXELS // width)
            for r0 in range(0, height, rows):
                high[r0 : r0 + rows] = raw[r0 : r0 + rows] >> 8
            raw = high
        elif raw.dtype not in (np.uint8, np.uint16):
            raise ImageReadError(
                self.path, f"unsupported sample type {raw.dtype}", "export 8- or 16-bit images"
            )
        return raw

    def full_level(self) -> _Level:
        with self._lock:
            if self._full is None:
                self._full = _ArrayLevel(self._decode())
            return self._full

    def draft_scale(self, target_long: int) -> int:
        """The JPEG DCT scaling (1, 2, 4 or 8) libjpeg decodes an overview of ``target_long`` at:
        the largest that still gives at least that many pixels; 1 for PNG and when already decoded."""
        if self._full is not None or self.format != "jpeg":
            return 1
        factor = max(self.width, self.height) / max(1, target_long)
        return max(s for s in (1, 2, 4, 8) if s <= factor)

    def overview_level(self, target_long: int) -> _Level:
        if self.draft_scale(target_long) == 1:  # no reduction: decode it whole, once, for the crops too
            return self.full_level()
        factor = max(self.width, self.height) / target_long
        stored_w, stored_h = self.header.width, self.header.height
        request = (max(1, math.floor(stored_w / factor)), max(1, math.floor(stored_h / factor)))
        return _ArrayLevel(self._decode(draft_size=request))

    def close(self) -> None:
        self._full = None


# --------------------------------------------------------------------------------------------------
# The public object


class PlateImage:
    """A plate image opened lazily: metadata now, pixels on demand. Use as a context manager.

    Attributes
    ----------
    path : Path
    format : str
        ``"tiff"``, ``"jpeg"`` or ``"png"`` (from the file's content, not its name).
    width, height : int
        Full resolution, in the displayed orientation (EXIF applied for JPEG and PNG).
    source_channels : int
        Samples per pixel in the file (1 grey, 2 grey + alpha, 3 RGB, 4 RGBA).
    bit_depth : int
        8 or 16.
    um_per_px : float or None
        Micrometres per pixel from the file (OME ``PhysicalSizeX``, then resolution tags), else the
        fallback given to :func:`open_image`, else ``None``.
    levels : int
        Pyramid levels available, 1 when there is no pyramid.
    """

    path: Path
    format: str
    width: int
    height: int
    source_channels: int
    bit_depth: int
    um_per_px: float | None
    levels: int

    def __init__(
        self,
        source: _Source,
        um_per_px_fallback: float | None,
        max_decoded_pixels: int,
        tile_cache_mb: float = 0.0,
    ) -> None:
        self._source = source
        self._tile_cache = TileCache(int(tile_cache_mb * 1024 * 1024)) if tile_cache_mb > 0 else None
        self._max_region_pixels = max_decoded_pixels
        self._window: tuple[float, float] | None = None
        self._window_lock = threading.Lock()
        self.path = source.path
        self.format = source.format
        self.width = source.width
        self.height = source.height
        self.source_channels = source.source_channels
        self.bit_depth = source.bit_depth
        self.levels = source.levels
        self.um_per_px = scale.resolve_um_per_px([source.file_um_per_px], um_per_px_fallback)
        self.closed = False
        self.read_seconds: dict[str, float] = {"overview": 0.0, "regions": 0.0}
        """Seconds spent in :meth:`overview` and :meth:`read_region` so far (for stage timings)."""
        self.memory_checked: memory.MemoryEstimate | None = None
        """The estimate :func:`open_image` checked against its memory budget (``None``: no budget)."""

    def __repr__(self) -> str:
        return (
            f"PlateImage({str(self.path)!r}, format={self.format!r}, {self.width}x{self.height}, "
            f"channels={self.source_channels}, bit_depth={self.bit_depth}, um_per_px={self.um_per_px}, "
            f"levels={self.levels})"
        )

    def memory_estimate(self, budget: memory.MemoryBudget) -> memory.MemoryEstimate:
        """Estimated peak memory of a worker processing this image (:mod:`labpipe.imaging.memory`),
        from the headers alone; ``budget`` gives the worker's base, overview size and tile cache."""
        out_w, out_h, _ = pixels.overview_geometry(self.width, self.height, budget.overview_max_side)
        cost = self._source.decode_cost(budget.tile_cache_bytes, max(out_w, out_h))
        return memory.estimate(cost, width=self.width, height=self.height, budget=budget)

    @property
    def orientation(self) -> int:
        """EXIF orientation (1..8) under which a JPEG or PNG is shown; 1 for TIFF (not applied)."""
        return int(getattr(self._source, "orientation", 1))

    @property
    def stored_size(self) -> tuple[int, int]:
        """``(width, height)`` of the pixel array as stored in the file, before any EXIF turn."""
        return (self.height, self.width) if self.orientation >= 5 else (self.width, self.height)

    def __enter__(self) -> PlateImage:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the file and drop any decoded copy. Safe to call twice."""
        if not self.closed:
            self.closed = True
            self._source.close()
            if self._tile_cache is not None:
                self._tile_cache.clear()

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError(f"{self.path}: the image is closed; open it again with open_image()")

    def read_region(self, x: int, y: int, w: int, h: int) -> npt.NDArray[np.uint8]:
        """Full-resolution uint8 RGB ``(h', w', 3)`` of the region, clipped to the image.

        Only the tiles or strips that intersect the region are decoded. Raises ``ValueError`` with
        the values when the clipped region is empty or larger than ``max_decoded_pixels``, and
        :class:`~labpipe.errors.ImageReadError` when the file turns out to be damaged.
        """
        self._check_open()
        started = time.perf_counter()
        x, y, w, h = (operator.index(v) for v in (x, y, w, h))
        x, y, w, h = pixels.clip_region(x, y, w, h, self.width, self.height)
        if w * h > self._max_region_pixels:
            raise ValueError(
                f"region x={x}, y={y}, w={w}, h={h} holds {w * h:,} pixels, more than "
                f"max_decoded_pixels = {self._max_region_pixels:,}; read it in parts"
            )
        raw = self._source.full_level().read_raw(x, y, w, h, self._tile_cache)
        rgb = pixels.to_rgb8(raw, self._intensity_window() if raw.dtype != np.uint8 else None)
        self.read_seconds["regions"] += time.perf_counter() - started
        return rgb

    def overview(self, max_side: int) -> tuple[npt.NDArray[np.uint8], float]:
        """Downsampled uint8 RGB whose longer side is at most ``max_side``, and its factor.

        ``factor`` is full-resolution pixels per overview pixel on both axes (>= 1): overview pixel
        ``(i, j)`` covers ``[j * factor, (j + 1) * factor)`` horizontally and the same vertically. The
        smallest pyramid level whose longer side is still >= the overview's is area-averaged down;
        without a pyramid the image is streamed band by band, so memory stays near the overview's
        own size.
        """
        self._check_open()
        started = time.perf_counter()
        max_side = operator.index(max_side)
        out_w, out_h, factor = pixels.overview_geometry(self.width, self.height, max_side)
        level = self._source.overview_level(max(out_w, out_h))
        targets = [(out_w, out_h, factor)]
        window_target = None
        if self.bit_depth != 8 and level.dtype != np.uint8 and self._window is None:
            w_w, w_h, w_factor = pixels.overview_geometry(self.width, self.height, WINDOW_SIDE)
            if self._source.overview_level(max(w_w, w_h)) is level:
                window_target = (w_w, w_h, w_factor)  # share the pass: both from the same level
                targets.append(window_target)
        results = _reduce(level, self.width, self.height, targets)
        raw = results[0]
        if window_target is not None:
            with self._window_lock:
                if self._window is None:
                    self._window = pixels.percentile_window(results[1])
        del results
        window = self._intensity_window() if raw.dtype != np.uint8 else None
        rgb = pixels.to_rgb8(raw, window)
        self.read_seconds["overview"] += time.perf_counter() - started
        return rgb, factor

    def _intensity_window(self) -> tuple[float, float]:
        """The image's 16-to-8-bit window (see the module docstring), computed once."""
        with self._window_lock:
            if self._window is None:
                w_w, w_h, w_factor = pixels.overview_geometry(self.width, self.height, WINDOW_SIDE)
                level = self._source.overview_level(max(w_w, w_h))
                (raw,) = _reduce(level, self.width, self.height, [(w_w, w_h, w_factor)])
                self._window = pixels.percentile_window(raw)
            return self._window


# --------------------------------------------------------------------------------------------------
# Opening and verifying


def open_image(
    path: Path | str,
    *,
    um_per_px_fallback: float | None = None,
    max_pixels: int = 4_000_000_000,
    max_decoded_pixels: int = 600_000_000,
    tile_cache_mb: float = 0.0,
    memory_budget: memory.MemoryBudget | None = None,
) -> PlateImage:
    """Open a TIFF, JPEG or PNG plate image lazily: headers are read and checked, pixels are not.

    Checks made here, each failing with an :class:`~labpipe.errors.ImageReadError` that names the
    file, the problem and what to do: the file exists and is not empty; its first bytes are a TIFF,
    JPEG or PNG signature; the declared size is within ``max_pixels`` (and, for formats decoded
    whole, ``max_decoded_pixels``) - :class:`~labpipe.errors.ImageTooLargeError`; a TIFF holds one
    image (pyramid levels, thumbnails and three colour pages count as one; pages of a stack do
    not); every TIFF tile or strip that will be read lies inside the file; a JPEG has its
    end-of-image marker and a PNG its IEND chunk (a half-copied file fails here, not halfway
    through a worker's job); and, with ``memory_budget``, processing it is estimated to fit the
    budget (:mod:`labpipe.imaging.memory`) - :class:`~labpipe.errors.ImageTooLargeError` otherwise.

    ``um_per_px_fallback`` is used when the file carries no usable scale (configuration
    ``imaging.um_per_px``; 0 or ``None`` means unknown). ``tile_cache_mb`` > 0 keeps that many MB of
    decoded tiles for :meth:`PlateImage.read_region` (:mod:`labpipe.imaging.tilecache`): crops cut in
    reading order share tiles.
    """
    path = Path(path)
    size, head = _stat_and_head(path)
    fmt = headers.sniff_format(head)
    if fmt is None:
        raise ImageReadError(
            path,
            "not a TIFF, JPEG or PNG image: its first bytes match none of their signatures",
            FORMAT_HINT + "; a renamed text or partial file is not an image",
        )
    source: _Source
    if fmt == "tiff":
        source = _TiffSource(path, size, head, max_pixels, max_decoded_pixels)
    else:
        header = _check_raster(path, fmt, size, max_pixels, max_decoded_pixels)
        source = _PillowSource(path, fmt, header, size)
    image = PlateImage(source, um_per_px_fallback, max_decoded_pixels, tile_cache_mb)
    if memory_budget is not None:
        try:
            image.memory_checked = image.memory_estimate(memory_budget)
            memory.check_budget(path, image.memory_checked, memory_budget, whole=image.format != "tiff")
        except BaseException:
            image.close()
            raise
    return image


def verify_readable(
    path: Path | str,
    *,
    max_pixels: int = 4_000_000_000,
    max_decoded_pixels: int = 600_000_000,
    memory_budget: memory.MemoryBudget | None = None,
) -> None:
    """Cheap structural check for the folder watcher: is this file complete and readable?

    Runs everything :func:`open_image` checks (``memory_budget`` included: an image a worker could
    not hold is refused before any worker tries), and for TIFF also checks that the tiles/strips of
    every page of every series and pyramid level lie inside the file (a half-written TIFF usually
    has its directory but not yet all of its data). Nothing is decoded. Raises
    :class:`~labpipe.errors.ImageReadError` (or :class:`~labpipe.errors.ImageTooLargeError`).
    """
    image = open_image(
        path, max_pixels=max_pixels, max_decoded_pixels=max_decoded_pixels, memory_budget=memory_budget
    )
    try:
        image._source.check_structure()
    finally:
        image.close()


# --------------------------------------------------------------------------------------------------
# Helpers


def _stat_and_head(path: Path) -> tuple[int, bytes]:
    try:
        if not path.exists():
            raise ImageReadError(
                path, "file not found", "check the path; the file may have been moved or deleted"
            )
        if path.is_dir():
            raise ImageReadError(path, "is a folder, not an image file", "pass the image file itself")
        size = path.stat().st_size
        if size == 0:
            raise ImageReadError(path, "file is empty (0 bytes)", COPYING_HINT)
        with path.open("rb") as fh:
            head = fh.read(64)
    except PermissionError as exc:
        raise ImageReadError(path, f"permission denied: {exc.strerror}", "make the file readable") from exc
    except OSError as exc:
        raise ImageReadError(path, f"cannot read the file: {exc.strerror or exc}", COPYING_HINT) from exc
    if len(head) < 8:
        raise ImageReadError(path, f"file is only {size} bytes, too short for any image header", COPYING_HINT)
    return size, head


def _check_pixels(path: Path, width: int, height: int, limit: int, setting: str, why: str = "") -> None:
    count = width * height
    if count > limit:
        raise ImageTooLargeError(
            path,
            f"image is {width} x {height} = {count:,} pixels{why}, more than {setting} = {limit:,}",
            f"if the image is genuine, raise {setting}; otherwise the header is corrupt: re-export it"
            if setting == "imaging.max_pixels"
            else "convert it to a tiled TIFF (for example `vips tiffsave in.jpg out.tif --tile --bigtiff "
            f"--compression lzw`) or raise {setting} if the machine has the memory",
        )


def _check_raster(
    path: Path, fmt: str, size: int, max_pixels: int, max_decoded_pixels: int
) -> headers.RasterHeader:
    """Parse a JPEG/PNG header, apply both size limits, and check that the file ends properly."""
    try:
        with path.open("rb") as fh:
            if fmt == "png":
                header = headers.parse_png_header(fh.read(33))
            else:
                with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
                    header = headers.parse_jpeg_header(data)
                    _check_pixels(path, header.width, header.height, max_pixels, "imaging.max_pixels")
                    _check_pixels(
                        path, header.width, header.height, max_decoded_pixels, "imaging.max_decoded_pixels",
                        " (JPEG is decoded whole)",
                    )  # fmt: skip
                    eoi = headers.find_jpeg_eoi(data, header.data_offset)
                    if eoi < 0:
                        raise ImageReadError(
                            path,
                            f"truncated: no JPEG end-of-image marker (FFD9) after the image data that "
                            f"starts at byte {header.data_offset}; the file has {size} bytes",
                            COPYING_HINT,
                        )
                return header
            _check_pixels(path, header.width, header.height, max_pixels, "imaging.max_pixels")
            _check_pixels(
                path, header.width, header.height, max_decoded_pixels, "imaging.max_decoded_pixels",
                " (PNG is decoded whole)",
            )  # fmt: skip
            fh.seek(max(0, size - 4096))
            if not headers.png_has_iend(fh.read()):
                raise ImageReadError(
                    path, f"truncated: the PNG does not end with its IEND chunk ({size} bytes)", COPYING_HINT
                )
            return header
    except headers.HeaderError as exc:
        raise ImageReadError(path, f"damaged {fmt.upper()} header: {exc}", COPYING_HINT) from exc
    except OSError as exc:
        raise ImageReadError(path, f"cannot read the file: {exc.strerror or exc}", COPYING_HINT) from exc


def _check_segments_inside(path: Path, page: Any, file_size: int, where: str) -> None:
    offsets = np.asarray(page.dataoffsets, dtype=np.int64)
    counts = np.asarray(page.databytecounts, dtype=np.int64)
    n = min(len(offsets), len(counts))
    ends = offsets[:n] + counts[:n]
    beyond = np.flatnonzero((offsets[:n] > 0) & (counts[:n] > 0) & (ends > file_size))
    if beyond.size:
        index = int(beyond[0])
        kind = "tile" if page.keyframe.is_tiled else "strip"
        raise ImageReadError(
            path,
            f"truncated{where}: {kind} {index} ends at byte {int(ends[index])} but the file has "
            f"{file_size} bytes",
            COPYING_HINT,
        )


def _pil_to_array(im: Image.Image) -> Array:
    """Pillow image to raw ``(h, w, 1 or 3)`` uint8/uint16; alpha dropped, palettes expanded.

    Converted and copied band by band into one array: the peak is Pillow's own image (4 bytes per
    pixel) plus ours, where ``np.asarray`` of the whole image would add two more full copies (its
    ``tobytes``) and a mode conversion a third.
    """
    width, height = im.size
    rows = max(1, _BLOCK_PIXELS // max(1, width))
    out: Array | None = None
    for r0 in range(0, height, rows):
        r1 = min(height, r0 + rows)
        band = _pil_band_to_array(im.crop((0, r0, width, r1)) if (r0, r1) != (0, height) else im)
        if out is None:
            out = np.empty((height, width, band.shape[2]), band.dtype)
        out[r0:r1] = band
    if out is None:
        raise ValueError(f"empty image {width} x {height}")
    return out


def _pil_band_to_array(im: Image.Image) -> Array:
    """One band of :func:`_pil_to_array`."""
    mode = im.mode
    if mode in ("1", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "La", "RGBa", "RGBX"):
        im = im.convert("L" if mode == "1" else "RGB")
        mode = im.mode
    if mode in ("L", "LA"):
        return np.asarray(im)[..., None] if mode == "L" else np.asarray(im)[..., :1]
    if mode in ("RGB", "RGBA"):
        return np.asarray(im)[..., :3]
    if mode.startswith("I;16"):
        return np.asarray(im).astype(np.uint16, copy=False)[..., None]
    if mode == "I":
        return np.clip(np.asarray(im), 0, 65535).astype(np.uint16)[..., None]
    raise ValueError(f"unsupported Pillow mode {mode}")


def _decode_executor() -> ThreadPoolExecutor:
    """Threads shared by all images for decoding tiles (imagecodecs releases the GIL).

    One pool per process: recreated after a fork (Celery's prefork workers), whose child inherits
    the pool object but not its threads.
    """
    global _EXECUTOR
    with _EXECUTOR_LOCK:
        if _EXECUTOR is None or _EXECUTOR[0] != os.getpid():
            _EXECUTOR = (
                os.getpid(),
                ThreadPoolExecutor(_DECODE_THREADS, thread_name_prefix="labpipe-decode"),
            )
        return _EXECUTOR[1]


def _describe(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _reduce(
    level: _Level, full_width: int, full_height: int, targets: list[tuple[int, int, float]]
) -> list[Array]:
    """Area-average ``level`` into each ``(out_w, out_h, factor)`` target in one streaming pass.

    ``factor`` is in full-resolution pixels; a pyramid level's own scale is divided out. Returns raw
    arrays ``(out_h, out_w, channels)`` of the level's dtype (means rounded).
    """
    scale_x = full_width / level.width
    scale_y = full_height / level.height
    reducers = [
        _BandReducer(level, out_w, out_h, factor / scale_x, factor / scale_y)
        for out_w, out_h, factor in targets
    ]
    for r0 in range(0, level.height, level.band_rows):
        r1 = min(level.height, r0 + level.band_rows)
        band = level.read_raw(0, r0, level.width, r1 - r0) if level.full_width_bands else None
        for reducer in reducers:
            reducer.begin_band(r0, r1)
        for c0 in range(0, level.width, level.chunk_cols):
            c1 = min(level.width, c0 + level.chunk_cols)
            block = band[:, c0:c1] if band is not None else level.read_raw(c0, r0, c1 - c0, r1 - r0)
            as_float: Array | None = None
            for reducer in reducers:
                if reducer.identity:
                    reducer.out[r0:r1, c0:c1] = block
                    continue
                if as_float is None:
                    as_float = block.astype(np.float32)
                reducer.add(as_float, c0, c1)
        for reducer in reducers:
            reducer.end_band(r1)
        del band
    return [reducer.out for reducer in reducers]


class _BandReducer:
    """Accumulates area averages of consecutive bands; finishes output rows as soon as they are complete.

    Only the output rows a band touches are held as float32; a finished row is rounded into the
    output array right away. Weights come from :func:`labpipe.imaging.pixels.area_weights`.
    """

    def __init__(self, level: _Level, out_w: int, out_h: int, step_x: float, step_y: float) -> None:
        self.level = level
        self.channels = level.channels
        self.out: Array = np.empty((out_h, out_w, level.channels), dtype=level.dtype)
        self.identity = out_w == level.width and out_h == level.height and abs(step_x - 1) < 1e-9
        self.identity = self.identity and abs(step_y - 1) < 1e-9
        if self.identity:
            return
        self.wx = pixels.area_weights(level.width, out_w, step_x)
        self.wy = pixels.area_weights(level.height, out_h, step_y)
        self.x_first, self.x_last = _spans(self.wx)
        self.y_first, self.y_last = _spans(self.wy)
        self.acc_start = 0
        self.acc: Array = np.zeros((0, out_w, self.channels), dtype=np.float32)
        self.max_value = np.float32(np.iinfo(level.dtype).max)
        self._vx: dict[tuple[int, int], tuple[int, int, Any]] = {}
        self._band: tuple[int, int, Any] | None = None

    def begin_band(self, r0: int, r1: int) -> None:
        if self.identity:
            return
        j0 = int(np.searchsorted(self.y_last, r0, side="left"))
        j1 = int(np.searchsorted(self.y_first, r1, side="left"))
        if j1 > self.acc_start + len(self.acc):
            grow = np.zeros((j1 - self.acc_start - len(self.acc), *self.acc.shape[1:]), dtype=np.float32)
            self.acc = np.concatenate([self.acc, grow]) if len(self.acc) else grow
        self._band = (j0, j1, self.wy[j0:j1, r0:r1]) if j1 > j0 else None

    def add(self, block: Array, c0: int, c1: int) -> None:
        if self._band is None:
            return
        j0, j1, vy = self._band
        if (c0, c1) not in self._vx:
            i0 = int(np.searchsorted(self.x_last, c0, side="left"))
            i1 = int(np.searchsorted(self.x_first, c1, side="left"))
            self._vx[(c0, c1)] = (i0, i1, self.wx[i0:i1, c0:c1])
        i0, i1, vx = self._vx[(c0, c1)]
        if i1 <= i0:
            return
        bh, bw, ch = block.shape
        nj, ni = j1 - j0, i1 - i0
        rows = vy @ block.reshape(bh, bw * ch)  # (nj, bw * ch)
        rows = np.ascontiguousarray(rows.reshape(nj, bw, ch).transpose(1, 0, 2)).reshape(bw, nj * ch)
        both = (vx @ rows).reshape(ni, nj, ch).transpose(1, 0, 2)
        self.acc[j0 - self.acc_start : j1 - self.acc_start, i0:i1] += both

    def end_band(self, r1: int) -> None:
        if self.identity:
            return
        done = (
            len(self.out) if r1 >= self.level.height else int(np.searchsorted(self.y_last, r1, side="left"))
        )
        n = done - self.acc_start
        if n <= 0:
            return
        finished = self.acc[:n]
        np.rint(finished, out=finished)
        np.clip(finished, 0, self.max_value, out=finished)
        self.out[self.acc_start : done] = finished
        self.acc = self.acc[n:].copy()
        self.acc_start = done


def _spans(matrix: Any) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """First and last input index with a weight, per output row of a CSR weight matrix."""
    indptr, indices = matrix.indptr, matrix.indices
    return indices[indptr[:-1]].astype(np.int64), indices[indptr[1:] - 1].astype(np.int64)

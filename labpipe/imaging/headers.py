"""Byte-level header checks that run before any decoder sees a file.

Reading the image size from the header first lets labpipe refuse a decompression bomb (a PNG whose
IHDR claims 100000 x 100000) in microseconds, before Pillow allocates anything, and lets the
folder watcher tell a half-copied JPEG or PNG from a complete one without decoding it.

Sources: TIFF 6.0 section 2 (byte order and magic 42; BigTIFF uses 43), ITU-T T.81 annex B
(JPEG markers: SOI FFD8, SOFn, SOS FFDA, EOI FFD9, byte stuffing), PNG specification 1.2
(signature, IHDR first, IEND last).
"""

from __future__ import annotations

import mmap
import struct
import zlib
from dataclasses import dataclass
from typing import BinaryIO

__all__ = [
    "JPEG_SIGNATURE",
    "PNG_IEND",
    "PNG_SIGNATURE",
    "TIFF_SIGNATURES",
    "HeaderError",
    "RasterHeader",
    "find_jpeg_eoi",
    "parse_jpeg_header",
    "parse_png_header",
    "png_decoded_channels",
    "png_exif_after_data",
    "png_has_iend",
    "sniff_format",
    "tiff_first_ifd_offset",
]

TIFF_SIGNATURES: tuple[bytes, ...] = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
JPEG_SIGNATURE = b"\xff\xd8\xff"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"
"""The complete IEND chunk (length 0, type, CRC): the last 12 bytes of every complete PNG."""

# Start-of-frame markers carry the image size (T.81 table B.1); C4, C8 and CC are not frames.
_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
# Markers without a length field: TEM, RST0-7, SOI, EOI.
_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD8), 0xD8, 0xD9})
_PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}


class HeaderError(ValueError):
    """A header is malformed; the message says what was found where."""


@dataclass(frozen=True)
class RasterHeader:
    """What a JPEG or PNG header declares, read without decoding."""

    width: int
    height: int
    channels: int
    bit_depth: int
    data_offset: int = 0
    """JPEG: byte offset of the first SOS marker (entropy-coded data follows it)."""

    @property
    def pixels(self) -> int:
        return self.width * self.height


def sniff_format(head: bytes) -> str | None:
    """``"tiff"``, ``"jpeg"``, ``"png"`` or ``None`` from the first bytes of a file (at least 8).

    The content decides, never the file name: a JPEG renamed ``.tif`` is still read as JPEG.

    Examples
    --------
    >>> sniff_format(b"II*\\x00\\x08\\x00\\x00\\x00")
    'tiff'
    >>> sniff_format(b"hello world") is None
    True
    """
    if head[:4] in TIFF_SIGNATURES:
        return "tiff"
    if head.startswith(JPEG_SIGNATURE):
        return "jpeg"
    if head.startswith(PNG_SIGNATURE):
        return "png"
    return None


def tiff_first_ifd_offset(head: bytes) -> int:
    """Byte offset of the first image file directory (IFD) from a TIFF or BigTIFF header (16 bytes).

    Writers such as libtiff put the IFD after the pixel data, so in a half-copied file it lies past
    the end; comparing it with the file size names that problem exactly.

    Examples
    --------
    >>> tiff_first_ifd_offset(b"II*\\x00\\x08\\x00\\x00\\x00")
    8
    >>> tiff_first_ifd_offset(b"MM\\x00+\\x00\\x08\\x00\\x00" + (1000).to_bytes(8, "big"))
    1000
    """
    order = "<" if head[:2] == b"II" else ">"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        if len(head) < 8:
            raise HeaderError(f"TIFF header is incomplete: {len(head)} of 8 bytes")
        return int(struct.unpack(order + "I", head[4:8])[0])
    if head[:4] in (b"II+\x00", b"MM\x00+"):
        if len(head) < 16:
            raise HeaderError(f"BigTIFF header is incomplete: {len(head)} of 16 bytes")
        return int(struct.unpack(order + "Q", head[8:16])[0])
    raise HeaderError("not a TIFF header (neither II*, II+, MM* nor MM+)")


def parse_png_header(head: bytes) -> RasterHeader:
    """Width, height, channels and bit depth from the first 33 bytes of a PNG (signature + IHDR).

    Examples
    --------
    >>> import zlib
    >>> ihdr = b"IHDR" + struct.pack(">IIBBBBB", 640, 480, 8, 2, 0, 0, 0)
    >>> data = PNG_SIGNATURE + struct.pack(">I", 13) + ihdr + struct.pack(">I", zlib.crc32(ihdr))
    >>> h = parse_png_header(data)
    >>> (h.width, h.height, h.channels, h.bit_depth)
    (640, 480, 3, 8)
    """
    if len(head) < 33 or not head.startswith(PNG_SIGNATURE):
        raise HeaderError(f"PNG header is incomplete: {len(head)} of 33 bytes")
    length, chunk_type = struct.unpack(">I4s", head[8:16])
    if chunk_type != b"IHDR" or length != 13:
        raise HeaderError(f"PNG must start with a 13-byte IHDR chunk, found another chunk of {length} bytes")
    width, height, bit_depth, colour_type = struct.unpack(">IIBB", head[16:26])
    if width == 0 or height == 0:
        raise HeaderError(f"PNG IHDR declares an empty image ({width} x {height})")
    if colour_type not in _PNG_CHANNELS:
        raise HeaderError(f"PNG IHDR has an invalid colour type {colour_type}")
    return RasterHeader(width, height, _PNG_CHANNELS[colour_type], bit_depth)


def png_decoded_channels(fh: BinaryIO, max_chunks: int = 10_000) -> int:
    """Channels a PNG decodes to with palettes expanded and a ``tRNS`` chunk turned into alpha
    (libpng's ``png_set_expand``, as imagecodecs decodes): grey 1, grey + alpha 2, RGB and palette 3,
    RGBA 4, one more for grey, RGB or palette with ``tRNS``.

    Reads only the chunk headers before the first ``IDAT`` from the open binary file ``fh`` (the
    chunk bodies are skipped, except the IHDR's), so the memory a decode needs is known before it.

    Examples
    --------
    >>> import io, zlib
    >>> def chunk(kind, body):
    ...     return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    >>> ihdr = chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 4, 8, 3, 0, 0, 0))  # palette
    >>> plain = PNG_SIGNATURE + ihdr + chunk(b"PLTE", bytes(6)) + chunk(b"IDAT", b"")
    >>> png_decoded_channels(io.BytesIO(plain))
    3
    >>> png_decoded_channels(io.BytesIO(plain.replace(b"IDAT", b"tRNS", 1) + chunk(b"IDAT", b"")))
    4
    """
    fh.seek(len(PNG_SIGNATURE))
    colour_type: int | None = None
    transparency = False
    for _ in range(max_chunks):
        head = fh.read(8)
        if len(head) < 8:
            raise HeaderError("PNG ends before its first IDAT chunk")
        length, kind = struct.unpack(">I4s", head)
        if kind == b"IDAT":
            break
        if kind == b"IHDR":
            body = fh.read(13)
            if len(body) < 13:
                raise HeaderError("PNG IHDR chunk is incomplete")
            colour_type = body[9]
            fh.seek(length - 13 + 4, 1)
            continue
        transparency = transparency or kind == b"tRNS"
        fh.seek(length + 4, 1)  # the body and its CRC
    else:
        raise HeaderError(f"PNG has more than {max_chunks} chunks before its image data")
    if colour_type not in _PNG_CHANNELS:
        raise HeaderError(f"PNG IHDR has an invalid colour type {colour_type}")
    channels = _PNG_CHANNELS[colour_type]
    return channels + 1 if transparency and colour_type in (0, 2, 3) else channels


def png_exif_after_data(tail: bytes) -> bytes | None:
    """The body of an ``eXIf`` chunk among the last bytes of a PNG (after its image data), or ``None``.

    PNG 1.5 allows ``eXIf`` after the ``IDAT`` chunks; Pillow decodes the whole image to find it
    there. The chunk's CRC is checked, so compressed image data that happens to contain the letters
    is never taken for it.

    Examples
    --------
    >>> import zlib
    >>> body = b"MM" + bytes(6)
    >>> chunk = struct.pack(">I", len(body)) + b"eXIf" + body + struct.pack(">I", zlib.crc32(b"eXIf" + body))
    >>> png_exif_after_data(b"...eXIf..." + chunk + PNG_IEND) == body
    True
    >>> png_exif_after_data(b"eXIf" + PNG_IEND) is None
    True
    """
    at = tail.rfind(b"eXIf")
    while at >= 4:
        (length,) = struct.unpack(">I", tail[at - 4 : at])
        end = at + 4 + length
        if end + 4 <= len(tail):
            body = tail[at + 4 : end]
            (crc,) = struct.unpack(">I", tail[end : end + 4])
            if zlib.crc32(b"eXIf" + body) == crc:
                return body
        at = tail.rfind(b"eXIf", 0, at)
    return None


def png_has_iend(tail: bytes) -> bool:
    """Whether the last bytes of a PNG hold the IEND chunk (a complete file ends with it).

    A few kilobytes of trailing junk after IEND are tolerated: some tools pad files.
    """
    return PNG_IEND in tail


def parse_jpeg_header(data: bytes | mmap.mmap) -> RasterHeader:
    """Walk the JPEG marker segments up to the first SOS and return the frame header (SOFn).

    ``data`` is the file's bytes or a memory map of it. APPn segments (EXIF, ICC) are skipped by
    their length field, so an embedded thumbnail's markers are never mistaken for the main image's.

    Raises ``HeaderError`` when a marker is malformed, the file ends inside the header, or a scan
    starts before any frame header.
    """
    size = len(data)
    if size < 4 or data[:2] != b"\xff\xd8":
        raise HeaderError("JPEG does not start with the SOI marker FFD8")
    pos = 2
    frame: tuple[int, int, int, int] | None = None
    while True:
        if pos >= size:
            raise HeaderError(f"JPEG header ends at byte {size} before the first scan (SOS)")
        if data[pos] != 0xFF:
            raise HeaderError(f"expected a JPEG marker at byte {pos}, found 0x{data[pos]:02X}")
        while pos < size and data[pos] == 0xFF:  # fill bytes (T.81 B.1.1.2)
            pos += 1
        if pos >= size:
            raise HeaderError(f"JPEG header ends at byte {size} inside a marker")
        marker = data[pos]
        pos += 1
        if marker in _STANDALONE_MARKERS:
            if marker == 0xD9:
                raise HeaderError(f"JPEG ends (EOI at byte {pos - 2}) before any scan")
            continue
        if pos + 2 > size:
            raise HeaderError(f"JPEG header ends at byte {size} inside marker FF{marker:02X}")
        (length,) = struct.unpack(">H", data[pos : pos + 2])
        if length < 2 or pos + length > size:
            raise HeaderError(
                f"JPEG marker FF{marker:02X} at byte {pos - 2} claims {length} bytes; the file has {size}"
            )
        if marker in _SOF_MARKERS and frame is None:
            if length < 8:
                raise HeaderError(f"JPEG frame header at byte {pos - 2} is too short ({length} bytes)")
            precision, height, width, components = struct.unpack(">BHHB", data[pos + 2 : pos + 8])
            frame = (width, height, components, precision)
        if marker == 0xDA:
            if frame is None:
                raise HeaderError(f"JPEG scan at byte {pos - 2} comes before any frame header (SOF)")
            width, height, components, precision = frame
            if width == 0 or height == 0:
                raise HeaderError(f"JPEG frame header declares an empty image ({width} x {height})")
            return RasterHeader(width, height, components, precision, data_offset=pos - 2)
        pos += length


def find_jpeg_eoi(data: bytes | mmap.mmap, start: int) -> int:
    """Offset of the end-of-image marker FFD9 at or after ``start`` (the first SOS), or -1.

    Byte stuffing (T.81 F.1.2.3) guarantees FF is followed by 00 or a marker inside entropy-coded
    data, so the first FFD9 after the first scan is the image's EOI even for progressive files.
    """
    return data.find(b"\xff\xd9", start)

"""How much memory a worker needs for one image, estimated from its header before anything is decoded.

Issue 13: a 1.7 MB PNG of 24000 x 24000 zeros (576 MP, under ``max_decoded_pixels``) drove one
worker to 6 GB. Pillow decoded it once already when the file was opened (to look for EXIF after
the image data), then again at 4 bytes per pixel, and copying that into numpy added two more
3-byte copies. The reader now decodes JPEG and PNG straight into one numpy array (imagecodecs) and
reads PNG EXIF without decoding; what is left is refused *before* decoding when it would not fit.

A worker's peak resident memory for one image is modelled as

    peak = base + held + max(detection, transient)

base
    What the process holds anyway: the interpreter, numpy, torch, the detector and classifier, and
    what classifying earlier crops left allocated. A worker uses its own resident memory at the
    moment it opens the image (:func:`resident_bytes`); the folder watcher, which decides before
    any worker has the file, uses :data:`WORKER_BASE_BYTES`, measured for the default models.
held
    What stays decoded while the detector works: the whole image for JPEG and PNG (pixels x
    decoded channels x bytes per sample, plus the 8-bit copy of 16-bit colour, times
    :data:`WHOLE_DECODE_FACTOR`); nothing for TIFF, which is streamed.
detection
    The overview (longer side at most ``[imaging] overview_max_side``) and the classical
    detector's working arrays on it: :data:`DETECT_BYTES_PER_OVERVIEW_PIXEL` per overview pixel.
transient
    What decoding needs for a moment, before detection or while crops are cut: the compressed
    file for JPEG and PNG (read into memory for the decoder); for TIFF the largest band of strips
    or tiles (or single strip or tile) decoded at once times :data:`STREAM_DECODE_FACTOR`, with its
    compressed bytes and the decoded-tile cache (``[imaging] tile_cache_mb``, counted full).

Each :class:`DecodeCost` (from the reader's source for the file) gives the nominal sizes.

Every constant is a measurement, not a guess: ``benchmarks/memory_per_input.py`` runs
``labpipe process`` (the workers' code: read, detect, crop, classify) in a child on plates of
1000 to 12000 pixels a side in each format and reads the child's peak resident memory
(:mod:`labpipe.bench.peak`). README's reliability section has the table; the constants below
say which rows they come from.
"""

from __future__ import annotations

import os
import resource
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from labpipe.errors import ImageTooLargeError
from labpipe.imaging import pixels

if TYPE_CHECKING:
    from labpipe.config import Settings

__all__ = [
    "DETECT_BYTES_PER_OVERVIEW_PIXEL",
    "STREAM_DECODE_FACTOR",
    "WHOLE_DECODE_FACTOR",
    "WORKER_BASE_BYTES",
    "DecodeCost",
    "MemoryBudget",
    "MemoryEstimate",
    "check_budget",
    "estimate",
    "machine_memory_bytes",
    "resident_bytes",
    "worker_budget_bytes",
    "worker_processes",
]

MB = 2**20

WORKER_BASE_BYTES = 650 * MB
"""Resident memory of a worker that has loaded the default models (classical detector, built-in
classifier) and classified a batch of crops: measured 616-645 MB (the 1000-px plates of
``benchmarks/memory_per_input.py``, whose image parts are a few MB), rounded up."""

DETECT_BYTES_PER_OVERVIEW_PIXEL = 20.0
"""Classical detection on the overview, per overview pixel (the overview itself, its grey and
float copies, the background and noise maps). Measured: tiled TIFF plates (whose decoding holds a
few MB) need (peak - base) / overview pixels of about 17-19 bytes; rounded up."""

WHOLE_DECODE_FACTOR = 1.1
"""Measured peak of the whole-decode path over the nominal size of its decoded array (PNG and JPEG
plates of 8000 and 12000 px: (peak - base - detection - file size) / decoded bytes)."""

STREAM_DECODE_FACTOR = 2.2
"""Measured peak of the streamed TIFF path over the nominal size of its largest band: the decoded
strips or tiles and the band they are copied into are held together (a TIFF stored as one strip,
8000 and 12000 px)."""

AUTO_SHARE = 0.8
"""``[imaging] memory_budget_mb = 0``: the share of this machine's memory the workers may use
together (the rest is the operating system, the watcher, the database and the web server)."""


@dataclass(frozen=True)
class DecodeCost:
    """What one image's decoding holds, nominally (before the measured factors)."""

    kind: str
    """``"whole"`` (decoded whole and held: JPEG, PNG) or ``"streamed"`` (TIFF, band by band)."""
    decoded_bytes: int
    """Bytes of the largest decoded array the path holds: the whole image, or one band."""
    compressed_bytes: int
    """Compressed bytes held with it while it decodes (the file for JPEG and PNG)."""
    cache_bytes: int
    """Decoded tiles the path may keep (the tile cache, counted full)."""
    description: str
    """The path in words, for the refusal message (never any of the file's bytes)."""


@dataclass(frozen=True)
class MemoryEstimate:
    """Estimated peak resident memory of a worker for one image, in parts (module docstring)."""

    base_bytes: int
    held_bytes: int
    detection_bytes: int
    transient_bytes: int
    description: str

    @property
    def peak_bytes(self) -> int:
        return self.base_bytes + self.held_bytes + max(self.detection_bytes, self.transient_bytes)


@dataclass(frozen=True)
class MemoryBudget:
    """The most resident memory one worker may reach for an image, and what it holds already."""

    limit_bytes: int
    base_bytes: int
    """The process's memory besides the image: :func:`resident_bytes` in a worker, else
    :data:`WORKER_BASE_BYTES`."""
    overview_max_side: int = 4096
    tile_cache_bytes: int = 0
    setting: str = "[imaging] memory_budget_mb"

    @classmethod
    def for_settings(cls, settings: Settings, *, this_process: bool = False) -> MemoryBudget:
        """The budget of each worker under ``settings``. ``this_process``: the caller is the worker
        itself (its own resident memory is the base); otherwise a worker's is assumed
        (:data:`WORKER_BASE_BYTES`), as the folder watcher must."""
        imaging = settings.imaging
        base = resident_bytes() if this_process else WORKER_BASE_BYTES
        return cls(
            limit_bytes=worker_budget_bytes(settings),
            base_bytes=base,
            overview_max_side=imaging.overview_max_side,
            tile_cache_bytes=max(0, int(imaging.tile_cache_mb)) * MB,
        )


def estimate(cost: DecodeCost, *, width: int, height: int, budget: MemoryBudget) -> MemoryEstimate:
    """Peak memory of processing an image of ``width`` x ``height`` whose decoding is ``cost``."""
    out_w, out_h, _ = pixels.overview_geometry(width, height, budget.overview_max_side)
    detection = int(out_w * out_h * DETECT_BYTES_PER_OVERVIEW_PIXEL)
    if cost.kind == "whole":
        held = int(cost.decoded_bytes * WHOLE_DECODE_FACTOR)
        transient = cost.compressed_bytes
    else:
        held = 0
        transient = int(cost.decoded_bytes * STREAM_DECODE_FACTOR) + cost.compressed_bytes + cost.cache_bytes
    return MemoryEstimate(budget.base_bytes, held, detection, transient, cost.description)


def check_budget(path: Path, found: MemoryEstimate, budget: MemoryBudget, *, whole: bool) -> None:
    """Raise :class:`~labpipe.errors.ImageTooLargeError` when ``found`` exceeds ``budget``.

    The reason names the estimate, its parts and the budget; the hint says what to do (``whole``:
    the image is decoded whole, so a tiled TIFF of it would be streamed instead).
    """
    if found.peak_bytes <= budget.limit_bytes:
        return
    if whole:
        hint = (
            "save the image as a tiled TIFF, which is read tile by tile (for example `vips tiffsave "
            "in.png out.tif --tile --bigtiff --compression lzw`), or raise "
            f"{budget.setting} if every worker of this machine can have that much"
        )
    else:
        hint = (
            f"raise {budget.setting} if every worker of this machine can have that much, or lower "
            "[imaging] tile_cache_mb and overview_max_side"
        )
    if found.held_bytes:
        parts = f"the decoded image {_size(found.held_bytes)}"
    else:
        parts = f"decoding {_size(found.transient_bytes)} at a time"
    raise ImageTooLargeError(
        path,
        f"needs about {_size(found.peak_bytes)} of memory to process, over this worker's budget of "
        f"{_size(budget.limit_bytes)} ({budget.setting}): {found.description} {parts}, detection on "
        f"the overview {_size(found.detection_bytes)}, the worker itself {_size(found.base_bytes)}",
        hint,
    )


def worker_budget_bytes(settings: Settings, total: int | None = None) -> int:
    """``[imaging] memory_budget_mb`` in bytes; 0 means :data:`AUTO_SHARE` of this machine's memory
    (``total``, else :func:`machine_memory_bytes`) shared by :func:`worker_processes`.

    >>> from labpipe.config import Settings
    >>> s = Settings()
    >>> s.imaging.memory_budget_mb = 0
    >>> s.queue.serve_workers = 2
    >>> worker_budget_bytes(s, total=10 * 2**30) / 2**30
    4.0
    """
    if settings.imaging.memory_budget_mb > 0:
        return int(settings.imaging.memory_budget_mb) * MB
    total = machine_memory_bytes() if total is None else total
    return int(total * AUTO_SHARE / worker_processes(settings))


def worker_processes(settings: Settings) -> int:
    """Worker processes this machine runs under ``settings``: ``[queue] serve_workers`` x
    ``worker_concurrency`` (``labpipe serve`` starts the one, each ``labpipe worker`` the other)."""
    return max(1, settings.queue.serve_workers) * max(1, settings.queue.worker_concurrency)


def machine_memory_bytes() -> int:
    """Physical memory, or the container's memory limit (cgroup v2 or v1) when that is lower."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 0
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and (total == 0 or 0 < int(text) < total):
            total = int(text)
    return total or 8 * 2**30


def resident_bytes() -> int:
    """This process's resident memory now (Linux ``/proc/self/statm``); elsewhere its peak so far."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak) * (1 if sys.platform == "darwin" else 1024)


def _size(count: int) -> str:
    """``1.7 GB`` from 1.7 GiB, ``350 MB`` below one GiB (powers of two, as ``free`` shows them)."""
    if count >= 2**30:
        return f"{count / 2**30:.1f} GB"
    return f"{count / MB:.0f} MB"

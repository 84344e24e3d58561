"""How much memory a worker needs for one image, estimated from its header before anything is decoded.

Issue 13: a 1.7 MB PNG of 24000 x 24000 zeros (576 MP, under ``max_decoded_pixels``) drove one
worker to 6 GB. Pillow decoded it once already when the file was opened (to look for EXIF after
the image data), then again at 4 bytes per pixel, and copying that into numpy added two more
3-byte copies. The reader now decodes JPEG and PNG straight into one numpy array (imagecodecs) and
reads PNG EXIF without decoding; what is left is refused *before* decoding when it would not fit.

A worker's peak resident memory for one image is modelled as

    peak = max(WORKER_PEAK_BYTES, base + held + max(detection, transient))

base
    What the process holds anyway: the interpreter, numpy, torch, the detector and classifier, and
    what classifying earlier crops left allocated. A worker uses its own resident memory at the
    moment it opens the image (:func:`resident_bytes`); the folder watcher, which decides before
    any worker has the file, uses :data:`WORKER_BASE_BYTES`, measured for the default models.
held
    What stays decoded while the detector works: the whole image of a PNG, or of a JPEG too small
    for libjpeg's reduced-scale decoding (pixels x decoded channels x bytes per sample, plus the
    8-bit copy of 16-bit colour, times :data:`WHOLE_DECODE_FACTOR`); nothing for TIFF, which is
    streamed, or for a JPEG whose overview is decoded at 1/2 to 1/8 scale.
detection
    The overview (longer side at most ``[imaging] overview_max_side``) and the classical
    detector's working arrays on it: :data:`DETECT_BYTES_PER_OVERVIEW_PIXEL` per overview pixel.
transient
    What reading needs for a moment, before detection or while crops are cut: the compressed file
    (JPEG and PNG are read into memory for the decoder), and a JPEG's full decode after detection;
    for TIFF the largest band of strips or tiles (or single strip or tile) decoded at once times
    :data:`STREAM_DECODE_FACTOR`, with its compressed bytes and the decoded-tile cache
    (``[imaging] tile_cache_mb``, counted full, but never more than the image).
WORKER_PEAK_BYTES
    Classification, after the image is closed, needs this much whatever the image.

The reader's source for each file gives held and transient as a :class:`DecodeCost`.

Every constant is a measurement: ``benchmarks/memory_per_input.py`` runs ``labpipe process`` (the
workers' own jobs: read, detect, crop, classify, with the default models) in a child on plates of
1000 to 12000 pixels a side in each format and reads the child's peak resident memory
(:mod:`labpipe.bench.peak`); the stages were measured apart with ``/proc/self/statm`` between
them. README's "Memory per image" has the table. Measured on labpipe's 2-core development machine,
December 2026 (numpy 2, torch 2.13 CPU, Pillow 13, imagecodecs 2026.3). A detector or classifier
of another size changes the base: a worker measures its own.
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
    "WORKER_PEAK_BYTES",
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

WORKER_BASE_BYTES = 500 * MB
"""Resident memory of a worker when it opens an image, having loaded the default models and
classified earlier crops: measured 445-475 MB (329 MB before its first classification)."""

WORKER_PEAK_BYTES = 640 * MB
"""Peak of a worker whatever the image: classifying a batch of crops, after the image is closed.
Measured 613-625 MB on the 1000-px plates of every format."""

DETECT_BYTES_PER_OVERVIEW_PIXEL = 26.0
"""Classical detection on the overview, per overview pixel: the overview, its grey, float and
smoothed copies, the background and noise maps. Measured 24.6-25.9 bytes: (peak - 329 MB) / overview
pixels for 4096-px overviews of tiled and stripped TIFFs (whose decoding holds a few MB), and
21 bytes in a worker whose earlier tasks left memory to reuse."""

WHOLE_DECODE_FACTOR = 1.0
"""Resident growth of decoding a JPEG or PNG over its nominal decoded size: measured 1.00 (183.4 MB
for an 8000 x 8000 RGB PNG, 183.1 MB nominal; 412 MB for 12000 x 12000). Before this module the
same decode (Pillow, then ``np.asarray``) peaked at 9.5 bytes per pixel, 3.2 times nominal."""

STREAM_DECODE_FACTOR = 2.0
"""Resident growth of reading a TIFF band over the band's nominal decoded size: the decoded
strips or tiles and the band they are copied into are held together. Measured 2.0 on a 12000 x
12000 TIFF stored as one strip ((1155 - 329) MB over 412 MB nominal)."""

AUTO_SHARE = 0.8
"""``[imaging] memory_budget_mb = 0``: the share of this machine's memory the workers may use
together (the rest is the operating system, the watcher, the database and the web server)."""


@dataclass(frozen=True)
class DecodeCost:
    """What reading one image holds in memory, in bytes, for :func:`estimate` (module docstring)."""

    kind: str
    """``"whole"`` (JPEG, PNG: decoded whole) or ``"streamed"`` (TIFF, band by band)."""
    held_bytes: int
    """Decoded and kept while the detector works (the whole image of a PNG)."""
    transient_bytes: int
    """Needed for a moment, before detection or while crops are cut (the compressed file; a
    TIFF's largest band, its compressed bytes and the tile cache)."""
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
        image = self.base_bytes + self.held_bytes + max(self.detection_bytes, self.transient_bytes)
        return max(WORKER_PEAK_BYTES, image)


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
    """Peak memory of processing an image of ``width`` x ``height`` whose reading costs ``cost``."""
    out_w, out_h, _ = pixels.overview_geometry(width, height, budget.overview_max_side)
    detection = int(out_w * out_h * DETECT_BYTES_PER_OVERVIEW_PIXEL)
    return MemoryEstimate(
        budget.base_bytes, cost.held_bytes, detection, cost.transient_bytes, cost.description
    )


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

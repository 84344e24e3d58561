"""Pictures for the web UI: plate overviews and crop thumbnails, made once and cached.

Both are small JPEGs under ``<storage root>/cache/`` (safe to delete: they are made again):

- ``cache/overviews/<image id>.jpg``: the plate downsampled to :data:`OVERVIEW_SIDE` pixels on its
  longer side, read with :func:`labpipe.imaging.open_image` (band by band, never the whole plate
  at full resolution in memory);
- ``cache/thumbs/<size>/<shard>/<specimen id>.jpg``: the square crop at ``size`` pixels.

Only files inside the storage folders are ever read (:func:`inside`): a plate is read from the
archive, the inbox or the quarantine folder, a crop from the crops folder; any other path stored
in the database is refused.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path

from PIL import Image as PILImage

from labpipe.config import Settings
from labpipe.db.models import Image

__all__ = [
    "OVERVIEW_SIDE",
    "THUMB_SIZES",
    "cache_dir",
    "image_file",
    "inside",
    "overview_file",
    "thumbnail_file",
]

OVERVIEW_SIDE = 2048
"""Longer side of the cached plate overview, in pixels (enough to zoom in on a laptop screen)."""
THUMB_SIZES = (160, 320)
"""Thumbnail sides offered (gallery cards, review cards)."""

_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def _lock(key: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(key, threading.Lock())


def inside(path: str | Path | None, roots: Iterable[Path]) -> Path | None:
    """``path`` resolved, if it is an existing file inside one of ``roots`` (links followed), else
    ``None``.

    >>> inside("/etc/passwd", [Path("/tmp")]) is None
    True
    """
    if not path or "\x00" in str(path):
        return None
    try:
        resolved = Path(path).resolve()
    except (OSError, RuntimeError):
        return None
    for root in roots:
        try:
            base = root.resolve()
        except (OSError, RuntimeError):
            continue
        if resolved.is_relative_to(base) and resolved.is_file():
            return resolved
    return None


def image_file(image: Image, settings: Settings) -> Path | None:
    """Where the plate's file lies now, if inside the storage folders (archive, inbox, quarantine)."""
    storage = settings.storage
    roots = [storage.archive_dir, storage.inbox_dir, storage.quarantine_dir]
    for candidate in (image.archived_path, image.source_path):
        found = inside(candidate, roots)
        if found is not None:
            return found
    return None


def cache_dir(settings: Settings) -> Path:
    return settings.storage.root / "cache"


def _save_jpeg(picture: PILImage.Image, target: Path, quality: int) -> None:
    """Write atomically (a temporary file, then a rename): readers never see half a JPEG."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".jpg", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            picture.convert("RGB").save(fh, format="JPEG", quality=quality, optimize=True)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def overview_file(image: Image, settings: Settings) -> tuple[Path, float] | None:
    """The cached overview JPEG of ``image`` and its scale (overview pixels per full-res pixel).

    Made on first request (seconds for a big plate); ``None`` when the plate's file is not inside
    the storage folders any more, or is unreadable.
    """
    from labpipe.errors import ImageReadError
    from labpipe.imaging import open_image

    if not image.width or not image.height:
        return None
    scale = min(1.0, OVERVIEW_SIDE / max(image.width, image.height))
    target = cache_dir(settings) / "overviews" / f"{image.id:06d}.jpg"
    if target.is_file():
        return target, scale
    source = image_file(image, settings)
    if source is None:
        return None
    with _lock(f"overview-{image.id}"):
        if target.is_file():
            return target, scale
        try:
            with open_image(
                source,
                max_pixels=settings.imaging.max_pixels,
                max_decoded_pixels=settings.imaging.max_decoded_pixels,
            ) as plate:
                rgb, _factor = plate.overview(OVERVIEW_SIDE)
        except (ImageReadError, ValueError, OSError):
            return None
        _save_jpeg(PILImage.fromarray(rgb), target, quality=82)
    return target, scale


def thumbnail_file(specimen_id: int, crop_path: str, size: int, settings: Settings) -> Path | None:
    """The cached ``size`` x ``size`` JPEG of a crop; ``None`` when the crop file is missing or
    outside the crops folder, or ``size`` is not one of :data:`THUMB_SIZES`."""
    if size not in THUMB_SIZES:
        return None
    target = cache_dir(settings) / "thumbs" / str(size) / f"{specimen_id // 1000:05d}" / f"{specimen_id}.jpg"
    if target.is_file():
        return target
    crops = settings.storage.crops_dir
    source = inside(crops / crop_path, [crops]) if crop_path else None
    if source is None:
        return None
    try:
        with PILImage.open(source) as crop:
            crop.draft("RGB", (size, size))
            picture = crop.convert("RGB")
            picture.thumbnail((size, size), PILImage.Resampling.LANCZOS)
    except (OSError, ValueError):
        return None
    _save_jpeg(picture, target, quality=80)
    return target

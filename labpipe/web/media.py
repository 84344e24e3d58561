"""Pictures for the web UI: plate overviews and crop thumbnails, made once and cached.

Both are small JPEGs under ``<storage root>/cache/`` (safe to delete: they are made again), named
by the content they are made from, never by a database id (ids can come back after a plate is
processed again, and must never bring back another plate's or specimen's picture):

- ``cache/overviews/<hash[:2]>/<image content hash>.jpg``: the plate downsampled to
  :data:`OVERVIEW_SIDE` pixels on its longer side, read with :func:`labpipe.imaging.open_image`
  (band by band, never the whole plate at full resolution in memory);
- ``cache/thumbs/<size>/<digest[:2]>/<digest>.jpg``: the square crop at ``size`` pixels, where
  ``digest`` is the sha256 of the crop file's bytes (:func:`labpipe.crops.store.content_digest`).

Each comes with that digest (:class:`CachedFile`), which the routes send as the ETag.

Only files inside the storage folders are ever read (:func:`inside`): a plate is read from the
archive, the inbox or the quarantine folder, a crop from the crops folder; any other path stored
in the database is refused.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tempfile
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image as PILImage

from labpipe.config import Settings
from labpipe.crops.store import content_digest
from labpipe.db.models import Image
from labpipe.logs import get_logger

__all__ = [
    "OVERVIEW_SIDE",
    "THUMB_SIZES",
    "CachedFile",
    "cache_dir",
    "crop_file",
    "image_file",
    "inside",
    "overview_cache_path",
    "overview_digest",
    "overview_file",
    "thumbnail_file",
]

log = get_logger(__name__)

OVERVIEW_SIDE = 2048
"""Longer side of the cached plate overview, in pixels (enough to zoom in on a laptop screen)."""
THUMB_SIZES = (160, 320)
"""Thumbnail sides offered (gallery cards, review cards)."""


@dataclass(frozen=True)
class CachedFile:
    """A file to serve and the sha256 (hex) of the content it shows: its cache key and ETag."""

    path: Path
    digest: str


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


def overview_digest(image: Image) -> str:
    """The key of ``image``'s overview: its content hash (a sha256 in hex), never its id."""
    digest = image.content_hash or ""
    if re.fullmatch(r"[0-9a-f]{64}", digest):
        return digest
    return hashlib.sha256(digest.encode()).hexdigest()  # not a hash as labpipe writes it: still a name


def overview_cache_path(image: Image, settings: Settings) -> Path:
    """Where ``image``'s overview is cached: named by the plate's content hash, not its id."""
    digest = overview_digest(image)
    return cache_dir(settings) / "overviews" / digest[:2] / f"{digest}.jpg"


def overview_file(image: Image, settings: Settings) -> tuple[Path, float] | None:
    """The cached overview JPEG of ``image`` and its scale (overview pixels per full-res pixel).

    Cached under the plate's content hash (:func:`overview_cache_path`), which is also its ETag.

    Made on first request (seconds for a big plate); ``None`` when the plate's file is not inside
    the storage folders any more, or is unreadable.
    """
    from labpipe.errors import ImageReadError
    from labpipe.imaging import open_image

    if not image.width or not image.height or not image.content_hash:
        return None
    scale = min(1.0, OVERVIEW_SIDE / max(image.width, image.height))
    target = overview_cache_path(image, settings)
    if target.is_file():
        return target, scale
    source = image_file(image, settings)
    if source is None:
        return None
    with _lock(f"overview-{target.stem}"):
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


def crop_file(crop_path: str, settings: Settings) -> CachedFile | None:
    """A specimen's crop file with the sha256 of its bytes; ``None`` when it is missing, unreadable or
    outside the crops folder."""
    crops = settings.storage.crops_dir
    source = inside(crops / crop_path, [crops]) if crop_path else None
    if source is None:
        return None
    try:
        return CachedFile(source, content_digest(source))
    except OSError:
        return None


def _thumbnail(data: bytes, size: int) -> PILImage.Image:
    """The crop encoded in ``data``, shrunk to fit ``size`` x ``size`` (RGB)."""
    with PILImage.open(io.BytesIO(data)) as crop:
        crop.draft("RGB", (size, size))
        picture = crop.convert("RGB")
    picture.thumbnail((size, size), PILImage.Resampling.LANCZOS)
    return picture


def thumbnail_file(specimen_id: int, crop_path: str, size: int, settings: Settings) -> CachedFile | None:
    """The cached ``size`` x ``size`` JPEG of a crop, keyed by the sha256 of the crop's bytes (never
    by ``specimen_id``, which only names the specimen in logs); ``None`` when the crop file is
    missing, unreadable or outside the crops folder, or ``size`` is not one of :data:`THUMB_SIZES`."""
    if size not in THUMB_SIZES:
        return None
    crop = crop_file(crop_path, settings)
    if crop is None:
        return None
    folder = cache_dir(settings) / "thumbs" / str(size)
    target = folder / crop.digest[:2] / f"{crop.digest}.jpg"
    if target.is_file():
        return CachedFile(target, crop.digest)
    try:
        data = crop.path.read_bytes()
    except OSError:
        return None
    digest = hashlib.sha256(data).hexdigest()  # the bytes drawn, should the file change meanwhile
    target = folder / digest[:2] / f"{digest}.jpg"
    with _lock(f"thumb-{size}-{digest}"):
        if not target.is_file():
            try:
                picture = _thumbnail(data, size)
            except (OSError, ValueError) as exc:
                log.warning(
                    "cannot make a thumbnail: the crop is not a readable image",
                    specimen_id=specimen_id,
                    crop=str(crop.path),
                    error=str(exc),
                    hint="process the plate again to cut its crops anew",
                )
                return None
            _save_jpeg(picture, target, quality=80)
    return CachedFile(target, digest)

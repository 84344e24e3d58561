"""Where crops live on disk and how they are written (losslessly, atomically)."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["UNASSIGNED_SAMPLE", "crop_relpath", "image_crop_dir", "read_crop", "safe_component", "save_crop"]

UNASSIGNED_SAMPLE = "_unassigned"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_component(name: str) -> str:
    """A file-name-safe version of a sample id (letters, digits, ``._-``; others become ``_``)."""
    cleaned = _UNSAFE.sub("_", name).strip("._")
    return cleaned or "_"


def image_crop_dir(sample_id: str | None, image_id: int) -> Path:
    """``<sample>/<image id>``, relative to the crops folder: every crop of one image lives here."""
    sample = safe_component(sample_id) if sample_id else UNASSIGNED_SAMPLE
    return Path(sample) / f"{image_id:06d}"


def crop_relpath(sample_id: str | None, image_id: int, specimen_id: int) -> Path:
    """``<sample>/<image id>/<image id>-<specimen id>.png``, relative to the crops folder.

    Derived only from database ids. A re-run of a plate creates new specimen rows and so new
    paths: the crops of the previous, committed result are never overwritten before the new
    result is committed.
    """
    return image_crop_dir(sample_id, image_id) / f"{image_id:06d}-{specimen_id:07d}.png"


def save_crop(rgb: np.ndarray, path: Path) -> None:
    """Write ``rgb`` as PNG via a temporary file and an atomic rename: never half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".png", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            Image.fromarray(rgb).save(fh, format="PNG", compress_level=3)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_crop(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))

"""The specimen's Sample ID: one stable, unique identifier used on plates, in BOLD and for results.

BOLD calls the identifier of a physical specimen its *Sample ID*; labpipe derives it from the
database with a pattern (``[bold] sample_id_pattern``, default ``{sample}-{image:05d}-{index:03d}``):

- ``{sample}``: the bulk sample's id, made file-name and BOLD safe (letters, digits, ``._-``;
  ``NOSAMPLE`` for images of no sample);
- ``{image}``: the plate image's id;
- ``{index}``: the specimen's 1-based number on its image;
- ``{specimen}``: the specimen row's id.

``CY-2024-017-00042-007`` is specimen 7 of image 42 of sample CY-2024-017. The default uses image
id and index rather than the specimen row id so that the identifier reads as a position a technician
can find on the plate image. Re-processing an image with a different detector renumbers its
specimens: lay plates out only after an image's detections are final.

Matching (barcode import) never parses identifiers: it computes the identifier of every specimen
and looks the text up, so any pattern works as long as it is unique (it must contain ``{index}`` or
``{specimen}``).
"""

from __future__ import annotations

import string
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from labpipe.crops.store import safe_component
from labpipe.db.models import Image, Specimen
from labpipe.errors import ConfigError

__all__ = ["NO_SAMPLE", "check_pattern", "specimen_code", "specimen_codes"]

NO_SAMPLE = "NOSAMPLE"
_FIELDS = {"sample", "image", "index", "specimen"}


def check_pattern(pattern: str) -> str:
    """``pattern`` if it is a usable Sample ID pattern, else :class:`ConfigError` saying why.

    >>> check_pattern("{sample}-{image}-{index}")
    '{sample}-{image}-{index}'
    """
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(pattern) if name is not None}
    except ValueError as exc:
        raise ConfigError("[bold] sample_id_pattern", f"{pattern!r} is not a format string: {exc}") from exc
    unknown = names - _FIELDS
    if unknown:
        raise ConfigError(
            "[bold] sample_id_pattern",
            f"unknown field(s) {', '.join(sorted(unknown))} in {pattern!r}",
            "use {sample}, {image}, {index} and {specimen}",
        )
    if not names & {"index", "specimen"}:
        raise ConfigError(
            "[bold] sample_id_pattern",
            f"{pattern!r} is not unique per specimen",
            "include {index} (with {image}) or {specimen}",
        )
    if "index" in names and "image" not in names and "specimen" not in names:
        raise ConfigError(
            "[bold] sample_id_pattern",
            f"{pattern!r} repeats for the same index on two images",
            "include {image} beside {index}",
        )
    return pattern


def specimen_code(sample_id: str | None, image_id: int, index: int, specimen_id: int, pattern: str) -> str:
    """The Sample ID of one specimen.

    >>> specimen_code("CY 2024/17", 42, 7, 1234, "{sample}-{image:05d}-{index:03d}")
    'CY_2024_17-00042-007'
    """
    sample = safe_component(sample_id) if sample_id else NO_SAMPLE
    try:
        return pattern.format(sample=sample, image=image_id, index=index, specimen=specimen_id)
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(
            "[bold] sample_id_pattern", f"cannot format {pattern!r}: {exc}", "see config.toml"
        ) from exc


def specimen_codes(session: Session, pattern: str, **where: Any) -> dict[str, int]:
    """Sample ID -> specimen id for every specimen (optionally ``sample_id=...``).

    Raises :class:`ConfigError` when the pattern gives two specimens the same Sample ID.
    """
    check_pattern(pattern)
    query = select(Specimen.id, Specimen.index_in_image, Image.id, Image.sample_id).join(
        Image, Image.id == Specimen.image_id
    )
    if where.get("sample_id") is not None:
        query = query.where(Image.sample_id == where["sample_id"])
    codes: dict[str, int] = {}
    for specimen_id, index, image_id, sample_id in session.execute(query):
        code = specimen_code(sample_id, image_id, index, specimen_id, pattern)
        if code in codes:
            raise ConfigError(
                "[bold] sample_id_pattern",
                f"{pattern!r} gives specimens {codes[code]} and {specimen_id} the same Sample ID {code!r}",
                "make the pattern unique, e.g. include {specimen}",
            )
        codes[code] = specimen_id
    return codes

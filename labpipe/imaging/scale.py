"""Physical scale (micrometres per pixel) from TIFF resolution tags and OME-XML.

Pure functions: they take tag values or metadata text and return a number or ``None``; they never
open files. ``None`` means "the file does not say" and the caller falls back to configuration
(``imaging.um_per_px``), then to "unknown".

Rules and where they come from:

- TIFF 6.0, section 8 ("Baseline Fields"): ``XResolution`` is pixels per ``ResolutionUnit``;
  unit 1 is "no absolute unit", 2 is inch (the default when the tag is missing), 3 is centimetre.
- ImageJ/Fiji writes unit 1 with the real unit in its ImageDescription (``unit=micron``); that unit
  is honoured when the caller passes it.
- 72 and 96 dpi with unit inch are the defaults of screen-oriented writers (Photoshop, Windows,
  Pillow, GIMP), not measurements of a microscope, so they count as "not set".
- Values outside 0.01..500 µm/px are implausible for any plate image (a 0.01 µm pixel is below
  optical resolution, a 500 µm pixel cannot show an insect) and count as "not set".
- OME-XML (schema 2016-06): ``Pixels/@PhysicalSizeX`` with ``@PhysicalSizeXUnit`` whose default
  is µm.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Iterable

__all__ = [
    "JUNK_DPI",
    "PLAUSIBLE_UM_PER_PX",
    "resolve_um_per_px",
    "um_per_px_from_ome",
    "um_per_px_from_resolution",
]

PLAUSIBLE_UM_PER_PX: tuple[float, float] = (0.01, 500.0)
"""Closed range of micrometres per pixel accepted from a file; anything else is treated as unset."""

JUNK_DPI: tuple[float, ...] = (72.0, 96.0)
"""Dots per inch written by default by screen-oriented software; treated as unset."""

_DPI_TOLERANCE = 0.05  # PNG-style pixels-per-metre round trips give 72.009 dpi

_UNIT_INCH = 2
_UNIT_CM = 3
_UNIT_NONE = 1

# Micrometres in one unit. Keys are lower-case; OME UnitsLength symbols and ImageJ unit names.
_UM_PER_UNIT: dict[str, float] = {
    "m": 1e6,
    "dm": 1e5,
    "cm": 1e4,
    "mm": 1e3,
    "µm": 1.0,  # MICRO SIGN
    "μm": 1.0,  # GREEK SMALL LETTER MU
    "um": 1.0,
    "micron": 1.0,
    "microns": 1.0,
    "micrometer": 1.0,
    "micrometre": 1.0,
    "\\u00b5m": 1.0,  # ImageJ escapes the micro sign in its description
    "nm": 1e-3,
    "pm": 1e-6,
    "å": 1e-4,
    "in": 25400.0,
    "inch": 25400.0,
    "thou": 25.4,
    "mil": 25.4,
    "pt": 25400.0 / 72.0,
}


def _plausible(um_per_px: float) -> float | None:
    low, high = PLAUSIBLE_UM_PER_PX
    if math.isfinite(um_per_px) and low <= um_per_px <= high:
        return um_per_px
    return None


def _as_float(value: float | tuple[int, int] | None) -> float | None:
    """A TIFF RATIONAL arrives as ``(numerator, denominator)``; a zero denominator means unset."""
    if value is None:
        return None
    if isinstance(value, tuple):
        if len(value) != 2 or value[1] == 0:
            return None
        return value[0] / value[1]
    return float(value)


def um_per_px_from_resolution(
    resolution: float | tuple[int, int] | None,
    unit: int | None,
    *,
    imagej_unit: str | None = None,
) -> float | None:
    """Micrometres per pixel from a TIFF ``XResolution`` and ``ResolutionUnit``, or ``None``.

    Parameters
    ----------
    resolution
        ``XResolution``: pixels per unit, as a float or as the TIFF rational ``(num, den)``.
    unit
        ``ResolutionUnit``: 1 none, 2 inch, 3 centimetre. ``None`` (tag absent) means inch, the
        TIFF 6.0 default.
    imagej_unit
        The ``unit=`` entry of an ImageJ description. Used only with unit 1, which is how
        ImageJ/Fiji stores micrometre calibrations.

    Returns
    -------
    float or None
        ``None`` when the tags carry no usable scale: unit 1 without an ImageJ unit, a zero or
        negative resolution, exactly 72 or 96 dpi (software defaults, see the module docstring),
        or a result outside ``PLAUSIBLE_UM_PER_PX``.

    Examples
    --------
    >>> um_per_px_from_resolution((10000, 1), 3)  # 10000 px per cm
    1.0
    >>> um_per_px_from_resolution(72.0, 2) is None  # Photoshop's default
    True
    """
    pixels_per_unit = _as_float(resolution)
    if pixels_per_unit is None or not math.isfinite(pixels_per_unit) or pixels_per_unit <= 0:
        return None
    unit = _UNIT_INCH if unit is None else int(unit)
    if unit == _UNIT_INCH:
        if any(abs(pixels_per_unit - dpi) < _DPI_TOLERANCE for dpi in JUNK_DPI):
            return None
        return _plausible(25400.0 / pixels_per_unit)
    if unit == _UNIT_CM:
        return _plausible(10000.0 / pixels_per_unit)
    if unit == _UNIT_NONE and imagej_unit:
        um_per_unit = _UM_PER_UNIT.get(imagej_unit.strip().lower())
        if um_per_unit is None:
            return None
        return _plausible(um_per_unit / pixels_per_unit)
    return None


def um_per_px_from_ome(ome_xml: str | None, image_index: int = 0) -> float | None:
    """Micrometres per pixel from OME-XML ``Pixels/@PhysicalSizeX`` of one ``Image``, or ``None``.

    The unit is ``PhysicalSizeXUnit`` (default ``µm`` per the OME schema). Unknown units, a missing
    or non-positive size, malformed XML and implausible values (see ``PLAUSIBLE_UM_PER_PX``) all give
    ``None``: metadata that cannot be trusted is treated as absent, never as an error.

    Examples
    --------
    >>> xml = '<OME><Image><Pixels PhysicalSizeX="0.65" PhysicalSizeXUnit="µm"/></Image></OME>'
    >>> um_per_px_from_ome(xml)
    0.65
    """
    if not ome_xml:
        return None
    try:
        root = ET.fromstring(ome_xml)
    except ET.ParseError:
        return None
    pixels = [el for el in root.iter() if _local_name(el.tag) == "Pixels"]
    if not 0 <= image_index < len(pixels):
        return None
    element = pixels[image_index]
    size_text = element.get("PhysicalSizeX")
    if size_text is None:
        return None
    try:
        size = float(size_text)
    except ValueError:
        return None
    if not math.isfinite(size) or size <= 0:
        return None
    unit = element.get("PhysicalSizeXUnit", "µm").strip()
    um_per_unit = _UM_PER_UNIT.get(unit.lower()) if unit != "Å" else _UM_PER_UNIT["å"]
    if um_per_unit is None:
        return None
    return _plausible(size * um_per_unit)


def resolve_um_per_px(candidates: Iterable[float | None], fallback: float | None = None) -> float | None:
    """The first candidate that is not ``None``, else ``fallback``, else ``None``.

    Candidates come from the file, most explicit first (OME-XML, then resolution tags); the
    fallback is the configured ``imaging.um_per_px``. A fallback of 0 or less means "unknown"
    (the configuration's own convention), so it gives ``None``.

    Examples
    --------
    >>> resolve_um_per_px([None, 2.5], fallback=1.0)
    2.5
    >>> resolve_um_per_px([None], fallback=0.0) is None
    True
    """
    for value in candidates:
        if value is not None:
            return value
    if fallback is None or not math.isfinite(fallback) or fallback <= 0:
        return None
    return float(fallback)


def _local_name(tag: str) -> str:
    """Element name without its ``{namespace}``: OME files use several schema namespaces."""
    return tag.rsplit("}", 1)[-1]

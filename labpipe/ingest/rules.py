"""Which files in the inbox are taken, and which sample each belongs to. Pure functions of names.

The sample rule, as documented in ``config.toml`` and ``docs/deployment.md``: the rules named in
``[ingest] sample_from`` are tried in order and the first that gives a sample id wins.

``sidecar``
    A JSON file beside the image with the same stem (``plate01.json`` for ``plate01.tif``) holding
    ``{"sample": "LL-2024-017"}`` (``"sample_id"`` is accepted too).
``pattern``
    ``[ingest] sample_pattern``, a regular expression searched in the file name; its group named
    ``sample``, else its first group, else the whole match, is the sample id.
``subfolder``
    The first folder below the inbox: ``inbox/LL-2024-017/plate01.tif``.

When no rule gives one, the image has no sample (it can be assigned later).
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from labpipe.errors import ConfigError

__all__ = [
    "SAMPLE_RULES",
    "IngestRules",
    "is_ignored",
    "sample_from_pattern",
    "sample_from_sidecar",
    "sample_from_subfolder",
    "sidecar_path",
    "split_list",
]

SAMPLE_RULES = ("sidecar", "pattern", "subfolder")
_MAX_SAMPLE_ID = 64  # samples.id is a String(64)


def split_list(text: str) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``: the comma-separated lists of ``[ingest]``.

    >>> split_list(" *.part, ~$* ,")
    ['*.part', '~$*']
    """
    return [item.strip() for item in text.split(",") if item.strip()]


def is_ignored(name: str, patterns: Sequence[str]) -> bool:
    """Whether a file name matches one of the glob ``patterns`` (case-insensitive).

    >>> is_ignored(".DS_Store", [".*"]), is_ignored("plate.tif.part", ["*.part"])
    (True, True)
    >>> is_ignored("plate.tif", ["*.part", ".*"])
    False
    """
    lowered = name.lower()
    return any(fnmatch.fnmatchcase(lowered, pattern.lower()) for pattern in patterns)


def sidecar_path(image: Path) -> Path:
    """The sidecar of ``image``: same folder, same stem, ``.json``."""
    return image.with_suffix(".json")


def _clean_sample(value: object) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text[:_MAX_SAMPLE_ID] or None


def sample_from_sidecar(image: Path) -> str | None:
    """The ``sample`` (or ``sample_id``) of the image's JSON sidecar; ``None`` when there is none.

    A sidecar that is not valid JSON, or not an object, gives no sample (the image is still taken).
    """
    side = sidecar_path(image)
    try:
        data = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    return _clean_sample(data.get("sample", data.get("sample_id")))


def sample_from_pattern(name: str, pattern: re.Pattern[str] | None) -> str | None:
    """The sample id ``pattern`` finds in the file ``name``.

    >>> sample_from_pattern("LL-17_plate2.tif", re.compile(r"^(?P<sample>[A-Z]+-\\d+)_"))
    'LL-17'
    >>> sample_from_pattern("plate2.tif", re.compile(r"^(?P<sample>[A-Z]+-\\d+)_")) is None
    True
    """
    if pattern is None:
        return None
    match = pattern.search(name)
    if match is None:
        return None
    if "sample" in match.groupdict():
        return _clean_sample(match.group("sample"))
    return _clean_sample(match.group(1) if match.groups() else match.group(0))


def sample_from_subfolder(path: Path, inbox: Path) -> str | None:
    """The first folder below ``inbox`` on the way to ``path``; ``None`` for files directly in it.

    >>> sample_from_subfolder(Path("/in/LL-17/day2/p.tif"), Path("/in"))
    'LL-17'
    >>> sample_from_subfolder(Path("/in/p.tif"), Path("/in")) is None
    True
    """
    try:
        parts = path.relative_to(inbox).parts
    except ValueError:
        return None
    return _clean_sample(parts[0]) if len(parts) > 1 else None


@dataclass(frozen=True)
class IngestRules:
    """The ``[ingest]`` naming rules, parsed and checked once."""

    extensions: tuple[str, ...]
    ignore: tuple[str, ...]
    sample_from: tuple[str, ...]
    sample_pattern: re.Pattern[str] | None

    @classmethod
    def from_config(cls, extensions: str, ignore: str, sample_from: str, sample_pattern: str) -> IngestRules:
        """Parse the comma-separated settings; raises :class:`ConfigError` naming the bad value."""
        rules = tuple(r.lower() for r in split_list(sample_from))
        unknown = [r for r in rules if r not in SAMPLE_RULES]
        if unknown:
            raise ConfigError(
                "[ingest] sample_from",
                f"unknown sample rule(s) {', '.join(map(repr, unknown))}",
                f"use a comma-separated list of {', '.join(SAMPLE_RULES)}",
            )
        compiled = None
        if sample_pattern:
            try:
                compiled = re.compile(sample_pattern)
            except re.error as exc:
                raise ConfigError(
                    "[ingest] sample_pattern", f"invalid regular expression {sample_pattern!r}: {exc}"
                ) from exc
        exts = tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in split_list(extensions))
        if not exts:
            raise ConfigError("[ingest] extensions", "no file name endings given", "e.g. '.tif,.tiff'")
        return cls(exts, tuple(split_list(ignore)), rules, compiled)

    def wants(self, path: Path, inbox: Path) -> bool:
        """Whether ``path`` is a candidate image: a wanted ending and no ignored name on the way.

        Every component below ``inbox`` is checked, so files inside hidden or temporary folders
        are skipped too (the inbox's own path may contain anything).
        """
        if not path.name.lower().endswith(self.extensions):
            return False
        try:
            parts = path.relative_to(inbox).parts
        except ValueError:
            parts = (path.name,)
        return not any(is_ignored(part, self.ignore) for part in parts)

    def ignores_folder(self, name: str) -> bool:
        """Whether a folder of this name is skipped with everything in it (hidden, temporary)."""
        return is_ignored(name, self.ignore)

    def sample_for(self, path: Path, inbox: Path) -> str | None:
        """The sample id of ``path`` by the first rule that gives one (module docstring)."""
        for rule in self.sample_from:
            if rule == "sidecar":
                found = sample_from_sidecar(path)
            elif rule == "pattern":
                found = sample_from_pattern(path.name, self.sample_pattern)
            else:
                found = sample_from_subfolder(path, inbox)
            if found:
                return found
        return None

"""Configuration: defaults here, then ``config.toml``, then ``LABPIPE_*`` environment variables, then flags.

The dataclass defaults below are the single source of the default values; the repository's
``config.toml`` repeats them with comments, and a test keeps the two equal.

Environment variables are named ``LABPIPE_<SECTION>_<KEY>`` in upper case, for example
``LABPIPE_DATABASE_URL`` or ``LABPIPE_CLASSIFIER_THRESHOLD``. ``LABPIPE_CONFIG`` names the file.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labpipe.errors import ConfigError

__all__ = ["Settings", "load_settings"]

ENV_PREFIX = "LABPIPE_"


@dataclass
class StorageConfig:
    root: Path = Path("labpipe-data")
    """Folder holding everything labpipe writes; the paths below are relative to it unless absolute."""
    inbox: Path = Path("inbox")
    archive: Path = Path("archive")
    quarantine: Path = Path("quarantine")
    crops: Path = Path("crops")

    def resolve(self, sub: Path) -> Path:
        return sub if sub.is_absolute() else self.root / sub

    @property
    def crops_dir(self) -> Path:
        return self.resolve(self.crops)

    @property
    def inbox_dir(self) -> Path:
        return self.resolve(self.inbox)

    @property
    def archive_dir(self) -> Path:
        return self.resolve(self.archive)

    @property
    def quarantine_dir(self) -> Path:
        return self.resolve(self.quarantine)


@dataclass
class DatabaseConfig:
    url: str = ""
    """SQLAlchemy URL. Empty: SQLite file ``labpipe.sqlite`` in the storage root."""


@dataclass
class ImagingConfig:
    overview_max_side: int = 4096
    """Longest side, in pixels, of the reduced-resolution overview the classical detector works on."""
    um_per_px: float = 0.0
    """Micrometres per pixel when the file carries no usable resolution tags (0: unknown)."""
    max_pixels: int = 4_000_000_000
    """Largest image (width x height) accepted at all; tiled TIFFs are read region by region."""
    max_decoded_pixels: int = 600_000_000
    """Largest image accepted in formats that must be decoded whole (JPEG, PNG, untiled TIFF strips)."""


@dataclass
class DetectorConfig:
    kind: str = "classical"
    """``classical`` (segmentation, no weights) or the path of a DETR model directory."""
    min_size_um: float = 400.0
    """Objects whose longer side is shorter than this are debris (used when the scale is known)."""
    min_size_px: int = 24
    """Same rule in full-resolution pixels, used when the scale is unknown."""
    score_threshold: float = 0.5
    """Detections scoring below this are dropped."""
    split_touching: bool = True
    """Separate touching specimens (distance transform + watershed)."""


@dataclass
class CropConfig:
    margin: float = 0.4
    """Margin added around each box, as a fraction of its larger side (BIOSCAN used 0.4)."""


@dataclass
class ClassifierConfig:
    model: str = "builtin:imagenet-efficientnet-lite0"
    """``builtin:imagenet-efficientnet-lite0`` or the path of a trained model directory."""
    threshold: float = 0.5
    """A specimen whose best family probability is below this is rejected as uncertain."""
    batch_size: int = 16
    threads: int = 0
    """Torch CPU threads (0: all cores)."""
    top_k: int = 3


@dataclass
class LoggingConfig:
    level: str = "INFO"
    format: str = "text"
    """``text`` (key=value) or ``json`` (one object per line)."""


@dataclass
class Settings:
    storage: StorageConfig = field(default_factory=StorageConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    imaging: ImagingConfig = field(default_factory=ImagingConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    crops: CropConfig = field(default_factory=CropConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    source: str = "defaults"
    """Where the settings came from (for logs and error messages)."""

    @property
    def database_url(self) -> str:
        if self.database.url:
            return self.database.url
        return f"sqlite:///{(self.storage.root / 'labpipe.sqlite').as_posix()}"

    @property
    def um_per_px_fallback(self) -> float | None:
        return self.imaging.um_per_px or None

    def as_dict(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for section in _sections():
            values = dataclasses.asdict(getattr(self, section))
            out[section] = {k: str(v) if isinstance(v, Path) else v for k, v in values.items()}
        return out


def _sections() -> list[str]:
    return [f.name for f in dataclasses.fields(Settings) if f.name != "source"]


def _field_types(section: str) -> dict[str, Any]:
    cls = type(getattr(Settings(), section))
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(value: Any, target: Any, where: str) -> Any:
    origin = typing.get_origin(target)
    if origin in (typing.Union, types.UnionType):
        target = next(a for a in typing.get_args(target) if a is not type(None))
    try:
        if target is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in {"1", "true", "yes", "on"}:
                return True
            if text in {"0", "false", "no", "off"}:
                return False
            raise ValueError(f"not a boolean: {value!r}")
        if target is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(f"not an integer: {value!r}")
            return int(str(value).replace("_", "")) if isinstance(value, str) else int(value)
        if target is float:
            return float(value)
        if target is Path:
            return Path(str(value)).expanduser()
        return str(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(where, f"invalid value {value!r}: {exc}", f"expected {target.__name__}") from exc


def _apply(settings: Settings, section: str, key: str, value: Any, where: str) -> None:
    if section not in _sections():
        raise ConfigError(where, f"unknown section [{section}]", f"known sections: {', '.join(_sections())}")
    types_ = _field_types(section)
    if key not in types_:
        raise ConfigError(
            where, f"unknown key {section}.{key}", f"known keys in [{section}]: {', '.join(types_)}"
        )
    setattr(getattr(settings, section), key, _coerce(value, types_[key], where))


def _from_env(settings: Settings, environ: Mapping[str, str]) -> None:
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_PREFIX + "CONFIG":
            continue
        rest = name[len(ENV_PREFIX) :].lower()
        section, _, key = rest.partition("_")
        if section in _sections() and key in _field_types(section):
            _apply(settings, section, key, value, f"environment variable {name}")


def _find_config_file(explicit: Path | None, environ: Mapping[str, str]) -> Path | None:
    if explicit is not None:
        return explicit
    if environ.get(ENV_PREFIX + "CONFIG"):
        return Path(environ[ENV_PREFIX + "CONFIG"])
    local = Path("config.toml")
    return local if local.is_file() else None


def load_settings(
    config_file: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build settings from defaults, a TOML file, ``LABPIPE_*`` variables and ``overrides``.

    ``overrides`` maps ``"section.key"`` to a value (CLI flags); ``None`` values are ignored.
    """
    environ = os.environ if environ is None else environ
    settings = Settings()
    path = _find_config_file(config_file, environ)
    if path is not None:
        if not path.is_file():
            raise ConfigError(path, "configuration file not found", "pass an existing file with --config")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(path, f"not valid TOML: {exc}", "fix the syntax at the line given") from exc
        for section, values in data.items():
            if not isinstance(values, dict):
                raise ConfigError(path, f"top-level key {section!r} is not a [section]")
            for key, value in values.items():
                _apply(settings, section, key, value, str(path))
        settings.source = str(path)
    _from_env(settings, environ)
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        section, _, key = dotted.partition(".")
        _apply(settings, section, key, value, f"option {dotted}")
    return settings

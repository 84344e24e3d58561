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
    tile_cache_mb: int = 192
    """Decoded TIFF tiles kept while crops are cut (neighbouring crops share tiles; 0: none)."""
    memory_budget_mb: int = 3072
    """Most resident memory one worker process may need for an image, models included: an image
    estimated from its header to need more (:mod:`labpipe.imaging.memory`) is quarantined with the
    reason before it is decoded. 0: 80 % of the machine's memory shared by ``[queue] serve_workers``
    x ``worker_concurrency`` workers."""


@dataclass
class DetectorConfig:
    kind: str = "classical"
    """``classical`` (segmentation, no weights) or the path of a DETR model directory."""
    min_size_um: float = 300.0
    """Objects whose longer side is shorter than this are debris (used when the scale is known)."""
    min_size_px: int = 16
    """Same rule in pixels of the detection overview, used when the scale is unknown."""
    polarity: str = "auto"
    """Classical detector: ``auto``, ``dark`` (dark animals on light paper), ``light`` (pale animals on
    a dark bottom) or ``both``."""
    score_threshold: float = 0.5
    """Detections scoring below this are dropped."""
    split_touching: bool = True
    """Separate touching specimens (distance transform + watershed)."""
    tile_size: int = 0
    """DETR models: side of square tiles, in pixels at the model's working scale (0: the model's own)."""
    tile_overlap: int = 0
    """DETR models: pixels shared by neighbouring tiles, more than the largest specimen (0: the model's)."""
    batch_size: int = 8
    """DETR models: tiles per inference batch."""
    device: str = "auto"
    """DETR models: ``auto`` (the GPU when there is one, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``."""


@dataclass
class CropConfig:
    margin: float = 0.4
    """Margin added around each box, as a fraction of its larger side (BIOSCAN used 0.4)."""


@dataclass
class ClassifierConfig:
    model: str = "builtin:imagenet-efficientnet-lite0"
    """``builtin:imagenet-efficientnet-lite0`` or the path of a trained model directory."""
    threshold: float | None = None
    """A specimen whose best family probability is below this is rejected as uncertain. ``None``
    (the default): a trained model's own threshold, chosen on its validation split; 0.5 for the
    built-in classifier."""
    batch_size: int = 16
    threads: int = 0
    """Torch CPU threads (0: all cores)."""
    top_k: int = 3
    gate: str = ""
    """Directory of a specimen-or-not gate (``labpipe train gate``) put in front of the classifier,
    built-in or trained: crops it finds to be debris, fragments or background are rejected as
    ``not_a_specimen``. Empty: no gate."""


@dataclass
class QueueConfig:
    broker_url: str = ""
    """Celery broker. Empty: the embedded broker (SQLite file ``broker.sqlite`` in the storage root,
    no server); ``redis://host:6379/0`` for the distributed deployment."""
    visibility_timeout: int = 3600
    """Seconds an unacknowledged task may run before the broker hands it to another worker (Redis, and
    the embedded broker's sweeper). Must exceed the longest single task."""
    poll_interval: float = 0.1
    """Embedded broker: seconds between polls of an empty queue."""
    worker_concurrency: int = 1
    """Worker processes per ``labpipe worker`` (each loads the models once)."""
    max_tasks_per_child: int = 200
    """A worker process is replaced after this many tasks (0: never)."""
    max_memory_per_child_mb: int = 3072
    """A worker process is replaced after a task leaves it above this resident memory (0: never)."""
    max_retries: int = 8
    """Retries, with exponential backoff, of a task that hit a transient error (database locked or
    unreachable, broker unavailable). Bad input is never retried."""
    retry_backoff_max: int = 300
    """Longest wait between two retries, in seconds."""
    max_attempts: int = 3
    """An image whose worker died (killed, out of memory) this many times is marked failed."""
    classify_batch: int = 64
    """Specimens per classification task (a plate with more specimens is classified by several)."""
    requeue_after: int = 300
    """A ``queued`` image is sent again after this many seconds when the broker holds fewer tasks than
    there are queued images (a broker restart lost them)."""
    stuck_after: int = 1800
    """A ``processing`` image without progress for this many seconds is taken over by another worker,
    even while its worker still renews its lease (a hung worker, or its classify tasks were lost)."""
    lease_seconds: int = 30
    """A worker holds each image it works on for this many seconds, renewed by a heartbeat every third
    of it; an image whose lease has expired (its worker died) is handed to another worker at once."""
    sweep_interval: int = 30
    """Seconds between two sweeps (re-sending lost work, finishing interrupted moves)."""
    serve_workers: int = 1
    """``labpipe serve``: how many worker processes it starts."""
    shutdown_timeout: int = 600
    """Seconds a stopping worker may take to finish its current task before it is killed."""


@dataclass
class IngestConfig:
    observer: str = "auto"
    """``native`` (inotify and the like), ``poll`` (network shares, where native events do not
    arrive), or ``auto`` (poll when the inbox is on NFS/SMB/CIFS/SSHFS, else native)."""
    poll_interval: float = 2.0
    """Seconds between directory polls with the polling observer, and between checks of files waiting
    to be complete."""
    rescan_interval: int = 300
    """Seconds between full rescans of the inbox (a safety net for missed events; 0: only at start)."""
    stable_seconds: float = 5.0
    """A file is taken only after its size and modification time have not changed for this long ..."""
    trust_close_events: bool = True
    """... or at once when its writer closed it after writing (or renamed it into place) and it is a
    complete image (native observer only: such events do not arrive from network shares)."""
    unreadable_grace: float = 120.0
    """A stable file that is still not a complete, readable image after this many seconds is quarantined."""
    extensions: str = ".tif,.tiff,.btf,.tf8,.jpg,.jpeg,.png"
    """Comma-separated file name endings taken as images (case-insensitive); others are left alone."""
    ignore: str = (
        "*.part,*.partial,*.tmp,*.temp,*.crdownload,*.download,*.!ut,~$*,~*,.*,Thumbs.db,desktop.ini"
    )
    """Comma-separated glob patterns of names never taken (temporary, partial and hidden files)."""
    sample_from: str = "sidecar,pattern,subfolder"
    """Where an image's sample id comes from: the first of these rules that gives one wins.
    ``sidecar``: ``<stem>.json`` beside the image with ``{"sample": "..."}``; ``pattern``: the
    ``sample_pattern`` regular expression on the file name; ``subfolder``: ``inbox/<sample>/...``."""
    sample_pattern: str = ""
    """Regular expression searched in the file name; its group ``sample`` (or first group) is the
    sample id, e.g. ``^(?P<sample>[A-Z]+-\\d+)_``. Empty: the rule is skipped."""


@dataclass
class LoggingConfig:
    level: str = "INFO"
    format: str = "text"
    """``text`` (key=value) or ``json`` (one object per line)."""


@dataclass
class ApiConfig:
    host: str = "127.0.0.1"
    """Address ``labpipe api`` listens on; ``0.0.0.0`` serves the whole network."""
    port: int = 8000
    token: str = ""
    """Bearer token every write (POST) must carry. Empty: ``labpipe serve`` and ``labpipe api`` use the
    one kept in ``<storage root>/state/api-token``, generated on first start (:mod:`labpipe.api_token`);
    a web app built without them refuses all writes."""
    read_access: str = "localhost"
    """Who may read without the token: ``localhost`` (clients on this machine), ``anyone`` or ``token``."""
    max_page_size: int = 500
    """Largest ``limit`` a listing endpoint accepts."""
    allowed_hosts: str = "localhost,127.0.0.1,::1"
    """Host names requests may be addressed to, comma-separated (against DNS rebinding); add the
    server's public name when serving the network; ``*``: any (only behind a proxy that checks)."""
    auth_failures: int = 10
    """Failed logins or wrong tokens from one address within ``auth_window_s`` before it is refused."""
    auth_window_s: float = 300.0
    """The window of ``auth_failures``, in seconds (also how long a locked-out address waits)."""
    session_hours: float = 12.0
    """How long a web login lasts; ``labpipe sessions revoke`` ends every login at once."""


@dataclass
class PlatesConfig:
    order: str = "column"
    """Fill order of 96-well plates: ``column`` (A1, B1, ..., H1, A2) or ``row`` (A1, A2, ..., A12, B1)."""
    controls: str = "G12,H12"
    """Wells left empty for controls, comma-separated (empty: none)."""
    prefix: str = ""
    """Plate names are ``<prefix><nn>``; empty: ``<sample>-P`` (``S1-P01``, ``S1-P02``, ...)."""
    thumbnail_px: int = 160
    """Side of the crop thumbnails on the picking sheet, in pixels."""


@dataclass
class BoldConfig:
    sample_id_pattern: str = "{sample}-{image:05d}-{index:03d}"
    """The specimen's Sample ID (plates, BOLD sheets, barcode import): fields ``sample``, ``image``
    (image id), ``index`` (specimen number on its image) and ``specimen`` (specimen id)."""
    institution: str = ""
    """Institution Storing (the lab holding the vouchers)."""
    collection_code: str = ""
    identifier: str = ""
    """Identifier of the taxonomy (a person, or empty: ``labpipe``)."""
    identifier_email: str = ""
    identification_method: str = "Image-based family classifier (labpipe)"
    country: str = ""
    """Country/Ocean of the collection data (BOLD requires it)."""
    license_holder: str = ""
    license: str = "CreativeCommons - Attribution Non-Commercial"
    license_year: int = 0
    """0: the year of the export."""
    license_institution: str = ""
    license_contact: str = ""
    photographer: str = ""
    view_metadata: str = "dorsal"
    """View Metadata of every crop image."""


@dataclass
class DwcaConfig:
    title: str = "Family counts of bulk arthropod samples (labpipe)"
    """Dataset title in eml.xml."""
    publisher: str = ""
    """Organisation publishing the dataset (creator and publisher in eml.xml)."""
    contact_name: str = ""
    contact_email: str = ""
    license: str = "http://creativecommons.org/licenses/by/4.0/legalcode"
    """Licence URL of the dataset (GBIF accepts CC0, CC BY and CC BY-NC)."""
    rights_holder: str = ""
    """Who holds the rights to the data (eml.xml intellectualRights); ``labpipe export dwca`` warns
    while it, the licence or a contact is unset."""
    language: str = "en"
    country_code: str = ""
    """ISO 3166-1 alpha-2 country code of every event (empty: left out)."""
    basis_of_record: str = "MaterialSample"
    id_prefix: str = ""
    """Prefixed to eventID and occurrenceID (for example ``urn:lab:``) to make them globally unique."""


@dataclass
class ReviewConfig:
    families_file: Path = Path("families.csv")
    """The lab's own list of family names (CSV with a ``family`` column), relative to the storage root
    unless absolute. A family a person types must be in the shipped list, a registered model's labels
    or this file; a new name is added to it when the person confirms it."""


@dataclass
class Settings:
    storage: StorageConfig = field(default_factory=StorageConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    imaging: ImagingConfig = field(default_factory=ImagingConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    crops: CropConfig = field(default_factory=CropConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    plates: PlatesConfig = field(default_factory=PlatesConfig)
    bold: BoldConfig = field(default_factory=BoldConfig)
    dwca: DwcaConfig = field(default_factory=DwcaConfig)
    review: ReviewConfig = field(default_factory=ReviewConfig)
    source: str = "defaults"
    """Where the settings came from (for logs and error messages)."""

    @property
    def database_url(self) -> str:
        if self.database.url:
            return self.database.url
        return f"sqlite:///{(self.storage.root / 'labpipe.sqlite').as_posix()}"

    @property
    def families_path(self) -> Path:
        """The lab's list of family names (``[review] families_file`` under the storage root)."""
        return self.storage.resolve(self.review.families_file)

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

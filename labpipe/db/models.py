"""The labpipe schema as SQLAlchemy 2.0 typed ORM classes.

Provenance is schema: a specimen, each classification of it, the model version that made that
classification and a person's verification are separate rows that point at each other. A new model
adds rows; "which model said this" is a join.

Tables: ``samples``, ``images``, ``specimens``, ``models`` (the model registry), ``classifications``,
``verifications`` and ``barcode_links``. The schema only ever changes through the Alembic revisions
in the top-level ``migrations/`` folder; a test checks that these classes and the migrated schema
agree on SQLite and on PostgreSQL.

Conventions:

- constraint and index names come from :data:`NAMING_CONVENTION`, so they are the same on every
  backend and Alembic can address them;
- every timestamp is a timezone-aware UTC :class:`~datetime.datetime` (see :class:`UTCDateTime`),
  whatever the backend stores;
- enumerated columns are plain strings guarded by a CHECK constraint; the allowed values are the
  ``StrEnum`` classes below, whose members can be assigned directly.
"""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

__all__ = [
    "NAMING_CONVENTION",
    "Agreement",
    "AuditEvent",
    "BarcodeLink",
    "Base",
    "Classification",
    "DetectionState",
    "Image",
    "ImageStatus",
    "Model",
    "ModelKind",
    "Sample",
    "Specimen",
    "UTCDateTime",
    "Verification",
    "VerificationStatus",
    "utcnow",
]

NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
"""Names for constraints and indexes, identical on SQLite and PostgreSQL (and in migrations)."""

# Lengths of the bounded string columns, in one place.
_NAME = 255
_VERSION = 255  # "name@weights-hash-labels-hash" with full sha256 hex digests fits
_HASH = 64  # sha256 hex digest
_FAMILY = 128


def utcnow() -> dt.datetime:
    """The current time as a timezone-aware UTC datetime (the default of every timestamp column)."""
    return dt.datetime.now(dt.UTC)


class UTCDateTime(sa.types.TypeDecorator[dt.datetime]):
    """A timestamp that is always a timezone-aware UTC datetime in Python.

    Stored as ``TIMESTAMP WITH TIME ZONE`` on PostgreSQL and as naive UTC text on SQLite (which has
    no time zones). Naive datetimes given to it are taken to be UTC already; aware ones are converted.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        """Convert to UTC; drop the zone on backends that cannot store it."""
        if value is None:
            return None
        value = value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        """Return an aware UTC datetime."""
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


class ImageStatus(StrEnum):
    """Where an image is in the pipeline (``images.status``)."""

    QUEUED = "queued"
    PROCESSING = "processing"
    DONE = "done"
    FAILED = "failed"
    """Processing raised an error that may go away on retry; ``images.error`` says what."""
    QUARANTINED = "quarantined"
    """The file is bad input (unreadable, corrupt, too large) and is never retried."""


class ModelKind(StrEnum):
    """What a registered model does (``models.kind``)."""

    CLASSIFIER = "classifier"
    DETECTOR = "detector"


class DetectionState(StrEnum):
    """Whether the latest detection run found a specimen again (``specimens.detection_state``)."""

    DETECTED = "detected"
    """Found by the detection run that is stored for its image."""
    NOT_REDETECTED = "not_redetected"
    """Holds a person's work (a verification, a box edit, a well or a barcode link) but the latest
    detection run did not find it again: kept, flagged, never deleted by a re-run."""
    DRAWN = "drawn"
    """Added by a person (a box drawn by hand), not by a detector."""


class VerificationStatus(StrEnum):
    """A person's verdict on a specimen (``verifications.status``)."""

    CONFIRMED = "confirmed"
    """The classified family is right."""
    CORRECTED = "corrected"
    """The family is ``verifications.family`` instead."""
    NOT_SPECIMEN = "not_specimen"
    """The box holds debris, a shadow or a label, not an arthropod."""
    MULTIPLE = "multiple"
    """The box holds more than one specimen."""


def _in(column: str, values: type[StrEnum]) -> str:
    """SQL for ``column IN (...)`` over an enum's values, for a CHECK constraint."""
    return f"{column} IN ({', '.join(repr(v.value) for v in values)})"


class Base(DeclarativeBase):
    """Declarative base of every labpipe table; ``Base.metadata`` is what Alembic compares against."""

    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dt.datetime: UTCDateTime()}  # noqa: RUF012 (SQLAlchemy reads a class attribute)


class Sample(Base):
    """A bulk sample as the lab knows it (one or more plate images show its specimens)."""

    __tablename__ = "samples"

    id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    """The lab's sample code."""
    site: Mapped[str | None] = mapped_column(sa.String(_NAME))
    habitat: Mapped[str | None] = mapped_column(sa.String(_NAME))
    latitude: Mapped[float | None] = mapped_column(sa.Float)
    """Decimal degrees, WGS84."""
    longitude: Mapped[float | None] = mapped_column(sa.Float)
    collection_date: Mapped[dt.date | None] = mapped_column(sa.Date)
    collector: Mapped[str | None] = mapped_column(sa.String(_NAME))
    method: Mapped[str | None] = mapped_column(sa.String(_NAME))
    """Collecting method (pitfall trap, Berlese funnel, sifting, ...)."""
    fraction: Mapped[str | None] = mapped_column(sa.String(_NAME))
    """Sub-sample or size fraction, when a sample is split across plates."""
    notes: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    images: Mapped[list[Image]] = relationship(back_populates="sample", passive_deletes=True)

    def __repr__(self) -> str:
        return f"Sample(id={self.id!r}, site={self.site!r})"


class Image(Base):
    """A plate image: one file, identified by the sha256 of its content."""

    __tablename__ = "images"
    __table_args__ = (
        sa.CheckConstraint(_in("status", ImageStatus), name="status"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    sample_id: Mapped[str | None] = mapped_column(
        sa.ForeignKey("samples.id", ondelete="SET NULL"), index=True
    )
    source_path: Mapped[str] = mapped_column(sa.Text)
    """Where the file was read (the inbox path at ingest)."""
    archived_path: Mapped[str | None] = mapped_column(sa.Text)
    """Where the file lies now, once moved to the archive (or quarantine)."""
    file_name: Mapped[str] = mapped_column(sa.String(_NAME))
    content_hash: Mapped[str] = mapped_column(sa.String(_HASH), unique=True)
    """sha256 of the file's bytes, lower-case hex: the image's identity (duplicates are refused)."""
    size_bytes: Mapped[int] = mapped_column(sa.BigInteger)
    format: Mapped[str | None] = mapped_column(sa.String(16))
    """``tiff``, ``jpeg`` or ``png``; unknown for files quarantined before they could be read."""
    width: Mapped[int | None] = mapped_column(sa.Integer)
    """Full-resolution width in pixels, in the displayed orientation."""
    height: Mapped[int | None] = mapped_column(sa.Integer)
    source_channels: Mapped[int | None] = mapped_column(sa.Integer)
    bit_depth: Mapped[int | None] = mapped_column(sa.Integer)
    um_per_px: Mapped[float | None] = mapped_column(sa.Float)
    """Micrometres per pixel (TIFF resolution tags or config); unknown when ``None``."""
    status: Mapped[str] = mapped_column(sa.String(16), index=True, default=ImageStatus.QUEUED.value)
    """One of :class:`ImageStatus`."""
    error: Mapped[str | None] = mapped_column(sa.Text)
    """Why the image failed or was quarantined."""
    detector_version: Mapped[str | None] = mapped_column(sa.String(_VERSION))
    """The detector version whose specimens are stored for this image."""
    n_specimens: Mapped[int | None] = mapped_column(sa.Integer)
    """Number of specimens found; 0 is a result, ``None`` means not processed yet."""
    seconds: Mapped[float | None] = mapped_column(sa.Float)
    """Wall-clock processing time."""
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    processed_at: Mapped[dt.datetime | None] = mapped_column()
    lease_owner: Mapped[str | None] = mapped_column(sa.String(_NAME))
    """The worker process holding a ``processing`` image (``host:pid:token``); ``None`` otherwise."""
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column()
    """When that worker's claim lapses unless its heartbeat renews it; a processing image whose lease
    has expired is handed to another worker at once (see :mod:`labpipe.ingest.lifecycle`)."""
    boxes_reviewed_by: Mapped[str | None] = mapped_column(sa.String(_NAME))
    """Who marked the plate's boxes reviewed: every specimen on it checked, none missing (``None``:
    not marked). A marked plate is detector training data (:mod:`labpipe.reports.coco`)."""
    boxes_reviewed_at: Mapped[dt.datetime | None] = mapped_column()
    """When the plate was marked boxes reviewed."""

    sample: Mapped[Sample | None] = relationship(back_populates="images")
    specimens: Mapped[list[Specimen]] = relationship(
        back_populates="image",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="Specimen.index_in_image",
    )

    def __repr__(self) -> str:
        return f"Image(id={self.id!r}, file_name={self.file_name!r}, status={self.status!r})"


class Specimen(Base):
    """One detected object on a plate image: its box in full-resolution pixels and its crop."""

    __tablename__ = "specimens"
    __table_args__ = (
        sa.UniqueConstraint("image_id", "index_in_image"),
        sa.CheckConstraint(_in("detection_state", DetectionState), name="detection_state"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(sa.ForeignKey("images.id", ondelete="CASCADE"), index=True)
    index_in_image: Mapped[int] = mapped_column(sa.Integer)
    """1-based number of the specimen on its image."""
    x: Mapped[int] = mapped_column(sa.Integer)
    """Left edge of the box, full-resolution pixels, displayed orientation."""
    y: Mapped[int] = mapped_column(sa.Integer)
    """Top edge of the box."""
    w: Mapped[int] = mapped_column(sa.Integer)
    h: Mapped[int] = mapped_column(sa.Integer)
    score: Mapped[float] = mapped_column(sa.Float)
    """Detector score."""
    detector_version: Mapped[str] = mapped_column(sa.String(_VERSION))
    detector_model_id: Mapped[int | None] = mapped_column(sa.ForeignKey("models.id"), index=True)
    """The detector's registry row (kind ``detector``: version, weights hash, settings)."""
    detection_state: Mapped[str] = mapped_column(
        sa.String(16), default=DetectionState.DETECTED.value, server_default=DetectionState.DETECTED.value
    )
    """One of :class:`DetectionState`."""
    box_edited_by: Mapped[str | None] = mapped_column(sa.String(_NAME))
    """Who last set the box by hand (``None``: the detector's box); a re-run keeps a person's box."""
    box_edited_at: Mapped[dt.datetime | None] = mapped_column()
    crop_path: Mapped[str] = mapped_column(sa.Text)
    crop_size: Mapped[int] = mapped_column(sa.Integer)
    """Side, in pixels, of the square (padded) crop as stored."""
    length_mm: Mapped[float | None] = mapped_column(sa.Float)
    """Body length in millimetres, when the image scale is known."""
    width_mm: Mapped[float | None] = mapped_column(sa.Float)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    image: Mapped[Image] = relationship(back_populates="specimens")
    classifications: Mapped[list[Classification]] = relationship(
        back_populates="specimen",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="Classification.id",
    )
    verifications: Mapped[list[Verification]] = relationship(
        back_populates="specimen",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="Verification.verified_at",
    )
    barcode_links: Mapped[list[BarcodeLink]] = relationship(
        back_populates="specimen",
        cascade="save-update, merge, delete",
        passive_deletes=True,
        order_by="BarcodeLink.id",
    )

    def __repr__(self) -> str:
        return f"Specimen(id={self.id!r}, image_id={self.image_id!r}, index_in_image={self.index_in_image!r})"


class Model(Base):
    """A registered model version (classifier or detector): the provenance of every classification."""

    __tablename__ = "models"
    __table_args__ = (sa.CheckConstraint(_in("kind", ModelKind), name="kind"), {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(_NAME))
    kind: Mapped[str] = mapped_column(sa.String(16))
    """One of :class:`ModelKind`."""
    version: Mapped[str] = mapped_column(sa.String(_VERSION), unique=True)
    """``name@weights-hash-labels-hash``: the identity of the model."""
    weights_hash: Mapped[str] = mapped_column(sa.String(_HASH))
    labels_hash: Mapped[str] = mapped_column(sa.String(_HASH))
    path: Mapped[str | None] = mapped_column(sa.Text)
    """The model directory (``None`` for built-in models)."""
    labels: Mapped[list[str]] = mapped_column(sa.JSON)
    """The families the model can name, in output order."""
    is_default: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON)
    """Evaluation results recorded at training or registration."""
    settings: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON)
    """The settings that shape the model's output (a detector's thresholds and sizes, a
    classifier's rejection rule), recorded when the row is made."""
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    classifications: Mapped[list[Classification]] = relationship(
        back_populates="model", passive_deletes="all"
    )

    def __repr__(self) -> str:
        return f"Model(id={self.id!r}, version={self.version!r})"


class Classification(Base):
    """What one model version said about one specimen (at most one row per specimen and model)."""

    __tablename__ = "classifications"
    __table_args__ = (sa.UniqueConstraint("specimen_id", "model_id"), {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(primary_key=True)
    specimen_id: Mapped[int] = mapped_column(sa.ForeignKey("specimens.id", ondelete="CASCADE"), index=True)
    model_id: Mapped[int] = mapped_column(sa.ForeignKey("models.id"), index=True)
    family: Mapped[str | None] = mapped_column(sa.String(_FAMILY))
    """The best family, kept for review even when rejected; ``rejected`` says whether it counts
    (``None`` only when the model named no family)."""
    probability: Mapped[float] = mapped_column(sa.Float)
    """Calibrated probability of the best family (accepted or not)."""
    rejected: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    reason: Mapped[str | None] = mapped_column(sa.Text)
    """Why it was rejected (low confidence, out of distribution, not an arthropod)."""
    top_k: Mapped[list[list[Any]]] = mapped_column(sa.JSON)
    """``[[family, probability], ...]``, best first."""
    threshold: Mapped[float | None] = mapped_column(sa.Float)
    """The rejection threshold that decided this call (``None``: recorded before it was stored)."""
    rule: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON)
    """The rest of the decision rule (for example the out-of-distribution test and its cut-off), so
    that a stored call can be re-decided without running the network again."""
    decided_at: Mapped[dt.datetime | None] = mapped_column()
    """When the call was last re-decided from its stored probabilities (``None``: never)."""
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    specimen: Mapped[Specimen] = relationship(back_populates="classifications")
    model: Mapped[Model] = relationship(back_populates="classifications")

    def __repr__(self) -> str:
        return (
            f"Classification(id={self.id!r}, specimen_id={self.specimen_id!r}, "
            f"family={self.family!r}, rejected={self.rejected!r})"
        )


class Verification(Base):
    """A person's label for a specimen (the reference that classifications are checked against)."""

    __tablename__ = "verifications"
    __table_args__ = (
        sa.CheckConstraint(_in("status", VerificationStatus), name="status"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    specimen_id: Mapped[int] = mapped_column(sa.ForeignKey("specimens.id", ondelete="CASCADE"), index=True)
    family: Mapped[str | None] = mapped_column(sa.String(_FAMILY))
    status: Mapped[str] = mapped_column(sa.String(16))
    """One of :class:`VerificationStatus`."""
    verified_by: Mapped[str] = mapped_column(sa.String(_NAME))
    verified_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    note: Mapped[str | None] = mapped_column(sa.Text)
    retracted_at: Mapped[dt.datetime | None] = mapped_column()
    """When the verification was undone (it then no longer counts; the row stays as history)."""
    retracted_by: Mapped[str | None] = mapped_column(sa.String(_NAME))

    specimen: Mapped[Specimen] = relationship(back_populates="verifications")

    def __repr__(self) -> str:
        return f"Verification(id={self.id!r}, specimen_id={self.specimen_id!r}, status={self.status!r})"


class Agreement(StrEnum):
    """Image-based family against DNA-based family (``barcode_links.agreement``)."""

    AGREE = "agree"
    DISAGREE = "disagree"
    IMAGE_REJECTED = "image_rejected"
    """The DNA names a family; the image classifier rejected the specimen."""


class BarcodeLink(Base):
    """A DNA-barcoding record (96-well plate and well, BOLD sampleid/processid, BIN) for a specimen."""

    __tablename__ = "barcode_links"
    __table_args__ = (
        sa.UniqueConstraint("plate", "well"),
        sa.CheckConstraint(_in("agreement", Agreement), name="agreement"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    specimen_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("specimens.id", ondelete="CASCADE"), index=True
    )
    """``None`` while the record is not matched to a specimen."""
    plate: Mapped[str | None] = mapped_column(sa.String(64))
    """``None`` for results of specimens not laid out on a plate by labpipe."""
    well: Mapped[str | None] = mapped_column(sa.String(3))
    """``A01`` .. ``H12``; ``(plate, well)`` is unique."""
    sampleid: Mapped[str] = mapped_column(sa.String(_NAME), index=True)
    processid: Mapped[str | None] = mapped_column(sa.String(64))
    bin_uri: Mapped[str | None] = mapped_column(sa.String(64))
    """BOLD Barcode Index Number, e.g. ``BOLD:AAA1234``."""
    sequence: Mapped[str | None] = mapped_column(sa.Text)
    dna_family: Mapped[str | None] = mapped_column(sa.String(_FAMILY))
    """Family assigned from the sequence."""
    taxonomy: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON)
    """Full taxonomy as imported (rank -> name)."""
    agreement: Mapped[str | None] = mapped_column(sa.String(16))
    """One of :class:`Agreement`; ``None`` while not compared (or no DNA family)."""
    needs_review: Mapped[bool] = mapped_column(sa.Boolean, default=False, server_default=sa.false())
    """Image and DNA disagree and no person has verified the specimen yet."""
    imported_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    specimen: Mapped[Specimen | None] = relationship(back_populates="barcode_links")

    def __repr__(self) -> str:
        return f"BarcodeLink(id={self.id!r}, plate={self.plate!r}, well={self.well!r})"


class AuditEvent(Base):
    """One change a person (or a command on a person's behalf) made to the lab's records.

    Append-only: who, what, when, and the values before and after, so that any change can be
    traced and undone (:mod:`labpipe.audit`). ``specimen_id`` and ``image_id`` are plain numbers,
    not foreign keys: the trail outlives the rows it talks about.
    """

    __tablename__ = "audit_events"
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(sa.String(_NAME))
    """The person (or ``labpipe <command>`` for the program acting on an explicit request)."""
    action: Mapped[str] = mapped_column(sa.String(32), index=True)
    """``verify``, ``box_edit``, ``undo``, ``set_default``, ``reprocess``, ``drop_reviewed``, ..."""
    specimen_id: Mapped[int | None] = mapped_column(sa.Integer, index=True)
    image_id: Mapped[int | None] = mapped_column(sa.Integer, index=True)
    model_id: Mapped[int | None] = mapped_column(sa.Integer)
    before: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON)
    after: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON)
    note: Mapped[str | None] = mapped_column(sa.Text)
    undone_by: Mapped[int | None] = mapped_column(sa.Integer)
    """The id of the ``undo`` event that reverted this one."""

    def __repr__(self) -> str:
        return f"AuditEvent(id={self.id!r}, action={self.action!r}, specimen_id={self.specimen_id!r})"

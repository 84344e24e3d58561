"""Response and request bodies of the HTTP API (pydantic models: they are the OpenAPI schema)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from labpipe.review import MAX_BULK

__all__ = [
    "ActiveModelOut",
    "ActiveModelsOut",
    "AgreementOut",
    "AuditEventOut",
    "BarcodeImportOut",
    "BarcodeOut",
    "BarcodedSpecimenOut",
    "BoxEditIn",
    "BoxesReviewedIn",
    "ClassificationOut",
    "CountsOut",
    "DefaultModelIn",
    "ErrorOut",
    "ExpectedOut",
    "FamilyAgreementOut",
    "FamilyErrorOut",
    "HealthOut",
    "ImageOut",
    "LayoutOut",
    "LayoutRequest",
    "ModelOut",
    "Page",
    "PlateOut",
    "RowErrorOut",
    "SampleDetailOut",
    "SampleImportOut",
    "SampleOut",
    "SpecimenDetailOut",
    "SpecimenOut",
    "TopKOut",
    "UndoIn",
    "VerificationBatchOut",
    "VerificationIn",
    "VerificationOut",
    "VerificationRecordOut",
    "VerificationsIn",
    "WellOut",
]

T = TypeVar("T")


class ErrorOut(BaseModel):
    """Every error: what was wrong and what to do, in one sentence."""

    detail: str | list[dict[str, object]]


class HealthOut(BaseModel):
    status: Literal["ok"]
    version: str
    schema_revision: str | None


class Page(BaseModel, Generic[T]):
    """One page of a listing."""

    total: int = Field(description="Items matching the filters, over all pages.")
    limit: int
    offset: int
    items: list[T]


class SampleOut(BaseModel):
    sample_id: str
    site: str | None
    habitat: str | None
    latitude: float | None
    longitude: float | None
    collection_date: dt.date | None
    collector: str | None
    method: str | None
    fraction: str | None
    notes: str | None
    images: int = Field(description="Plate images of the sample, any status.")
    image_status: dict[str, int] = Field(description="Images per status (queued, processing, done, ...).")
    specimens: int


class ImageOut(BaseModel):
    image_id: int
    sample_id: str | None
    file_name: str
    source_path: str
    archived_path: str | None
    content_hash: str
    status: str = Field(description="queued, processing, done, failed or quarantined.")
    error: str | None
    width: int | None
    height: int | None
    um_per_px: float | None
    n_specimens: int | None = Field(description="Specimens found; null: not processed yet.")
    detector_version: str | None
    processed_at: dt.datetime | None


class ExpectedOut(BaseModel):
    mean: float = Field(description="Sum of calibrated probabilities.")
    low: int = Field(description="Lower end of the 95 % interval (Poisson-binomial).")
    high: int


class CorrectedRowOut(BaseModel):
    count: int = Field(description="The raw count (0 for other).")
    verified: int = Field(description="Specimens of it a person verified (added back as known).")
    corrected: float = Field(
        description="Estimated true count: the raw count corrected for the model's errors."
    )
    low: float = Field(description="Lower end of the interval of the corrected count.")
    high: float


class CorrectedOut(BaseModel):
    """Counts corrected for the model's validated errors (``labpipe counts --corrected``)."""

    available: bool = Field(description="False: no corrected counts; reason says why.")
    model_version: str | None
    reason: str | None
    level: float = Field(description="Coverage of the intervals.")
    families: dict[str, CorrectedRowOut]
    other: CorrectedRowOut | None = Field(
        description="Specimens of no family of the model (unknown families, debris)."
    )
    notes: list[str]


class CountsOut(BaseModel):
    """One sample's counts (see ``labpipe counts``)."""

    sample: str | None
    site: str | None
    collection_date: dt.date | None
    images: int
    specimens: int = Field(description="Counted specimens: sum(families) + rejected.")
    rejected: int
    excluded: int = Field(description="Verified as not a specimen.")
    unclassified: int
    multiple: int = Field(description="Boxes verified as holding several specimens (each counted once).")
    verified: int
    families: dict[str, int]
    expected: dict[str, ExpectedOut]
    expected_other: ExpectedOut
    model_versions: list[str]
    mixed_models: bool = Field(
        description="The sample's predicted counts come from more than one classifier version."
    )
    corrected: CorrectedOut | None = Field(
        default=None,
        exclude_if=lambda v: v is None,
        description="Corrected counts, when asked for (absent otherwise).",
    )


class SampleDetailOut(BaseModel):
    sample_id: str
    site: str | None
    habitat: str | None
    latitude: float | None
    longitude: float | None
    collection_date: dt.date | None
    collector: str | None
    method: str | None
    fraction: str | None
    notes: str | None
    images: list[ImageOut]
    counts: CountsOut | None


class RowErrorOut(BaseModel):
    row: int
    column: str | None
    problem: str
    hint: str


class SampleImportOut(BaseModel):
    source: str
    rows: int
    created: list[str]
    updated: list[str]
    unchanged: list[str]
    skipped: list[RowErrorOut]
    dry_run: bool


class TopKOut(BaseModel):
    family: str
    probability: float


class BarcodeOut(BaseModel):
    sampleid: str
    plate: str | None
    well: str | None
    processid: str | None
    bin_uri: str | None
    dna_family: str | None
    agreement: str | None
    needs_review: bool


class SpecimenOut(BaseModel):
    specimen_id: int
    sample: str | None
    image_id: int
    index_in_image: int
    code: str = Field(description="The specimen's Sample ID (plates, BOLD).")
    bbox: list[int] = Field(description="[x, y, w, h] in full-resolution pixels.")
    score: float
    length_mm: float | None
    width_mm: float | None
    status: Literal["accepted", "rejected", "excluded", "unclassified"]
    family: str | None = Field(description="The counted family (accepted only).")
    best_family: str | None = Field(description="The classifier's best family, even when rejected.")
    probability: float | None
    reason: str | None
    model_version: str | None
    top_k: list[TopKOut]
    verification: str | None
    verified_family: str | None
    crop_url: str


class ClassificationOut(BaseModel):
    model_version: str
    family: str | None
    probability: float
    rejected: bool
    reason: str | None
    top_k: list[TopKOut]
    created_at: dt.datetime


class VerificationOut(BaseModel):
    status: str
    family: str | None
    verified_by: str
    verified_at: dt.datetime
    note: str | None


class VerificationRecordOut(VerificationOut):
    """A recorded verification, with its id and specimen."""

    verification_id: int
    specimen_id: int
    retracted_at: dt.datetime | None = Field(
        default=None, description="When it was undone (it then no longer counts); null while it stands."
    )


_PERSON = Field(
    min_length=1, max_length=255, description="The person making the change (the audit trail's name)."
)


class BoxEditIn(BaseModel):
    """A box set by hand."""

    model_config = ConfigDict(extra="forbid")

    box: Annotated[list[Annotated[int, Field(ge=0, le=2**31 - 1)]], Field(min_length=4, max_length=4)] = (
        Field(description="[x, y, width, height] in full-resolution pixels of the displayed image.")
    )
    edited_by: str = _PERSON
    note: str | None = Field(default=None, max_length=2000)


class BoxesReviewedIn(BaseModel):
    """Who marks a plate's boxes reviewed (or takes the mark off)."""

    model_config = ConfigDict(extra="forbid")

    by: str = _PERSON
    note: str | None = Field(default=None, max_length=2000)


class UndoIn(BaseModel):
    """Who undoes an event."""

    model_config = ConfigDict(extra="forbid")

    undone_by: str = _PERSON


class DefaultModelIn(BaseModel):
    """The registered version (or a unique prefix of it) to make the default of its kind."""

    model_config = ConfigDict(extra="forbid")

    version: str = Field(min_length=1, max_length=255)
    changed_by: str = _PERSON


class AuditEventOut(BaseModel):
    """One change to the lab's records: who, what, when, before and after."""

    event_id: int
    at: dt.datetime
    actor: str
    action: str
    specimen_id: int | None
    image_id: int | None
    model_id: int | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    note: str | None
    undone_by: int | None = Field(description="The id of the undo event that reverted this one.")


class ModelOut(BaseModel):
    """A registered model (classifier or detector)."""

    id: int
    name: str
    kind: str
    version: str
    is_default: bool
    path: str | None
    labels: list[str]
    settings: dict[str, Any] | None
    created_at: dt.datetime


class ActiveModelOut(BaseModel):
    """The model a kind of work uses now and where that choice comes from."""

    kind: str
    spec: str
    version: str | None
    source: str = Field(description="registry default, configuration, or command-line override")


class ActiveModelsOut(BaseModel):
    classifier: ActiveModelOut
    detector: ActiveModelOut
    models: list[ModelOut]


class VerificationIn(BaseModel):
    """A person's verdict on a specimen (as the web UI's review form)."""

    model_config = ConfigDict(extra="forbid")

    status: Literal["confirmed", "corrected", "not_specimen", "multiple"] = Field(
        description="confirmed: the model's family is right; corrected: it is `family`; not_specimen: "
        "debris, excluded from the counts; multiple: the box holds several specimens."
    )
    family: str | None = Field(
        default=None,
        max_length=128,
        description="Required for corrected; optional for confirmed (default: the model's best family) "
        "and multiple; ignored for not_specimen. Must be a family name this lab knows (case and spacing "
        "ignored; stored in the listed spelling), else 422 with the closest names.",
    )
    note: str | None = Field(default=None, max_length=2000)
    verified_by: str = Field(
        min_length=1, max_length=255, description="The person who looked at the specimen (recorded as is)."
    )
    add_family: bool = Field(
        default=False,
        description="Confirm that `family` is a new name: it is recorded and added to the lab's list "
        "([review] families_file).",
    )


class VerificationsIn(VerificationIn):
    """One verdict for many specimens."""

    specimen_ids: list[Annotated[int, Field(ge=1, le=2**31 - 1)]] = Field(
        min_length=1, max_length=MAX_BULK, description="The specimens (duplicates are verified once)."
    )


class VerificationBatchOut(BaseModel):
    recorded: int = Field(description="Verifications recorded (one per specimen).")
    items: list[VerificationRecordOut]


class FamilyErrorOut(ErrorOut):
    """A family that is not a name this lab knows (422), or a request that is not valid."""

    family: str | None = Field(default=None, description="The family as given.")
    suggestions: list[str] = Field(default_factory=list, description="The closest known names.")


class SpecimenDetailOut(SpecimenOut):
    classifications: list[ClassificationOut]
    verifications: list[VerificationOut]
    barcodes: list[BarcodeOut]


class PlateOut(BaseModel):
    plate: str
    wells: int
    samples: list[str]
    processed: int = Field(description="Wells whose BOLD record has a processid.")
    dna_family: int = Field(description="Wells with a DNA-based family.")


class WellOut(BaseModel):
    plate: str
    well: str
    content: Literal["specimen", "control"]
    sample_id: str
    specimen_id: int | None
    sample: str | None
    image_id: int | None
    image_file: str
    index_in_image: int | None
    family: str | None
    status: str
    probability: float | None
    bbox: list[int] | None
    length_mm: float | None
    crop_path: str


class LayoutRequest(BaseModel):
    """What ``POST /api/plates/layout`` lays out (the options of ``labpipe plates layout``)."""

    model_config = ConfigDict(extra="forbid")

    sample: str = Field(min_length=1, max_length=64)
    family: str | None = Field(default=None, max_length=128)
    include_rejected: bool = Field(
        default=False,
        description="Also lay out specimens the classifier rejected; default: leave them out "
        "(the answer's rejected_left_out counts them).",
    )
    order: Literal["column", "row"] | None = None
    controls: str | None = Field(default=None, max_length=200, description="e.g. 'G12,H12'; '' for none.")
    prefix: str | None = Field(default=None, max_length=61)
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    dry_run: bool = False


class AlreadyPlacedOut(BaseModel):
    sample_id: str
    plate: str | None
    well: str | None


class LayoutOut(BaseModel):
    sample: str
    plates: list[str]
    placed: int
    wells: list[WellOut]
    already_on_plates: list[AlreadyPlacedOut]
    dry_run: bool
    include_rejected: bool
    rejected_included: int
    rejected_left_out: int
    """Rejected specimens of the sample not laid out (``include_rejected`` false) and on no plate."""


class UnknownOut(BaseModel):
    sampleid: str
    row: int


class DuplicateOut(BaseModel):
    sampleid: str
    rows: list[int]
    problem: str | None = None


class InvalidOut(BaseModel):
    sampleid: str
    row: int
    problem: str


class ConflictOut(BaseModel):
    sampleid: str
    row: int
    plate: str
    well: str
    holder: str


class BarcodeImportOut(BaseModel):
    source: str
    rows: int
    linked: int
    created: list[str]
    updated: list[str]
    unknown: list[UnknownOut]
    duplicates: list[DuplicateOut]
    missing_sampleid: list[int]
    other_marker: int
    invalid: list[InvalidOut]
    conflicts: list[ConflictOut]
    columns: dict[str, str]
    dry_run: bool


class FamilyAgreementOut(BaseModel):
    family: str
    n_dna: int
    n_image: int
    n_agree: int
    agreement: float | None
    precision: float | None


class OverallAgreementOut(BaseModel):
    compared: int
    agree: int
    disagree: int
    image_rejected: int
    no_dna_family: int
    agreement: float | None


class BarcodedSpecimenOut(BaseModel):
    sampleid: str
    specimen_id: int
    sample: str | None
    image_family: str | None
    image_source: str
    probability: float | None
    dna_family: str | None
    bin_uri: str | None
    processid: str | None
    agreement: str | None
    needs_review: bool


class AgreementOut(BaseModel):
    confusion: dict[str, dict[str, int]] = Field(description="DNA family -> image family -> specimens.")
    families: list[FamilyAgreementOut]
    overall: OverallAgreementOut
    disagreements: list[BarcodedSpecimenOut]
    needs_review: int

"""Bulk samples: import from CSV (every row validated), listing and inspection.

A sample is what the lab collected in the field (a litter sifting, a pitfall catch); its specimens
lie on one or more plate images. Images are linked to samples when they are registered (the ingest
rule: ``labpipe process --sample ID``, or the daemon's sidecar / file-name pattern / sub-folder rules
in :mod:`labpipe.ingest.rules`, set ``images.sample_id``, creating a bare sample row when the id is
new). Importing a samples CSV fills in or updates those
rows, so metadata may arrive before or after the images.

CSV columns (header names are matched case-insensitively; spaces, hyphens and underscores are the
same, and the usual variants are accepted: ``sample``/``sample_id``, ``lat``/``decimalLatitude``,
``date``/``eventDate``, ...):

=================  =========================================================================
``sample_id``      required; at most 64 characters (letters, digits, ``._-`` are safest)
``site``           free text
``habitat``        free text
``latitude``       decimal degrees, WGS84, -90..90 (a decimal point, not a comma)
``longitude``      decimal degrees, -180..180; latitude and longitude come together or not at all
``collection_date`` ``YYYY-MM-DD``, not in the future
``collector``      free text
``method``         collecting method (pitfall trap, Berlese funnel, sifting, ...)
``fraction``       sub-sample or size fraction
``notes``          free text
=================  =========================================================================

Delimiter: comma, semicolon or tab (detected from the header). Encoding: UTF-8 (with or without a
byte-order mark). Rows are numbered as a spreadsheet shows them: the header is row 1.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from labpipe.db.models import Image, Sample, Specimen
from labpipe.errors import LabpipeError

__all__ = [
    "SAMPLE_FIELDS",
    "ImportReport",
    "NotFoundError",
    "RowError",
    "SampleImportError",
    "image_dict",
    "import_samples",
    "list_samples",
    "parse_samples_csv",
    "read_samples_file",
    "sample_detail",
    "sample_dict",
    "validate_row",
]

SAMPLE_FIELDS: tuple[str, ...] = (
    "sample_id",
    "site",
    "habitat",
    "latitude",
    "longitude",
    "collection_date",
    "collector",
    "method",
    "fraction",
    "notes",
)
"""Canonical column names, in the order of the listing."""

_ALIASES: dict[str, str] = {
    "sample": "sample_id",
    "sampleid": "sample_id",
    "sample_code": "sample_id",
    "id": "sample_id",
    "eventid": "sample_id",
    "locality": "site",
    "site_name": "site",
    "lat": "latitude",
    "decimallatitude": "latitude",
    "lon": "longitude",
    "lng": "longitude",
    "long": "longitude",
    "decimallongitude": "longitude",
    "date": "collection_date",
    "collected": "collection_date",
    "collection_day": "collection_date",
    "eventdate": "collection_date",
    "collectors": "collector",
    "collected_by": "collector",
    "recordedby": "collector",
    "sampling_method": "method",
    "samplingprotocol": "method",
    "collection_method": "method",
    "note": "notes",
    "remarks": "notes",
    "comments": "notes",
}
SAMPLE_ID_PATTERN = r"^[^\W_][\w .()#+-]{0,63}$"
"""A sample id: 1 to 64 characters, letters (any script), digits, spaces and ``_ . ( ) # + -``,
starting with a letter or digit. A leading ``=``, ``+``, ``-`` or ``@`` would make a spreadsheet
run the id as a formula; slashes and control characters break folders and files."""
_SAMPLE_ID = re.compile(SAMPLE_ID_PATTERN)


def sample_id_problem(sample_id: str) -> str | None:
    """Why ``sample_id`` is not a valid sample id (``None`` when it is).

    >>> sample_id_problem("LL-17"), sample_id_problem("Troödos 3 (sift)")
    (None, None)
    >>> sample_id_problem("=SUM(A1)") is None, sample_id_problem("a/b") is None
    (False, False)
    """
    if _SAMPLE_ID.match(sample_id):
        return None
    return (
        f"{sample_id[:80]!r} is not a valid sample id: it must start with a letter or digit and hold only "
        "letters, digits, spaces and _ . ( ) # + - (at most 64 characters)"
    )


_MAX_TEXT = 255


class NotFoundError(LabpipeError):
    """A sample, image, specimen or plate asked for by id does not exist (HTTP 404)."""


class RowError(LabpipeError):
    """One bad cell (or row) of a samples file."""

    def __init__(self, source: str, row: int, column: str | None, problem: str, hint: str = "") -> None:
        self.row = row
        self.column = column
        where = f"{source}, row {row}" + (f", column {column}" if column else "")
        super().__init__(where, problem, hint)

    def as_dict(self) -> dict[str, Any]:
        return {"row": self.row, "column": self.column, "problem": self.problem, "hint": self.hint}


class SampleImportError(LabpipeError):
    """A samples file was refused: it cannot be read, or rows are wrong (listed in ``errors``)."""

    def __init__(
        self, source: str, problem: str, hint: str = "", errors: list[RowError] | None = None
    ) -> None:
        self.errors = errors or []
        super().__init__(source, problem, hint)

    @property
    def message(self) -> str:
        head = super().message
        if not self.errors:
            return head
        return "\n".join([head, *(f"  {e.message}" for e in self.errors)])


@dataclass
class ImportReport:
    """What :func:`import_samples` did."""

    source: str
    rows: int = 0
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    skipped: list[RowError] = field(default_factory=list)
    """Rows left out because they were wrong (``skip_bad``)."""
    dry_run: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "rows": self.rows,
            "created": self.created,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "skipped": [e.as_dict() for e in self.skipped],
            "dry_run": self.dry_run,
        }


def _normalise_header(name: str) -> str:
    key = re.sub(r"[\s\-]+", "_", name.strip().lower()).strip("_")
    if key in SAMPLE_FIELDS:
        return key
    return _ALIASES.get(key, _ALIASES.get(key.replace("_", ""), key))


def _float(text: str, source: str, row: int, column: str, low: float, high: float) -> float:
    if re.fullmatch(r"-?\d+,\d+", text):
        raise RowError(
            source, row, column, f"{text!r} uses a decimal comma", "write it with a point, e.g. 34.93"
        )
    try:
        value = float(text)
    except ValueError:
        raise RowError(
            source, row, column, f"{text!r} is not a number", "use decimal degrees, e.g. 34.93"
        ) from None
    if not math.isfinite(value) or not low <= value <= high:
        raise RowError(
            source, row, column, f"{text} is outside {low:g}..{high:g}", "use decimal degrees (WGS84)"
        )
    return value


def validate_row(
    values: dict[str, str], source: str, row: int, today: dt.date | None = None
) -> tuple[dict[str, Any], list[RowError]]:
    """Check one row (canonical column -> cell text) and convert it to :class:`Sample` fields.

    Returns the converted values and every problem found (all of them, not only the first).

    >>> validate_row({"sample_id": "S1", "latitude": "34.9", "longitude": "32.8"}, "f.csv", 2)[1]
    []
    """
    today = today or dt.date.today()
    out: dict[str, Any] = {}
    errors: list[RowError] = []
    for name in SAMPLE_FIELDS:
        text = (values.get(name) or "").strip()
        try:
            if "\x00" in text:
                raise RowError(source, row, name, "contains a NUL character", "save it as plain CSV text")
            if name == "sample_id":
                if not text:
                    raise RowError(source, row, name, "the sample id is empty", "every row needs a sample id")
                problem = sample_id_problem(text)
                if problem:
                    raise RowError(
                        source,
                        row,
                        name,
                        problem,
                        "letters, digits, '.', '_' and '-' are safest: BOLD takes them unchanged",
                    )
                out["id"] = text
            elif not text:
                out[name] = None
            elif name == "latitude":
                out[name] = _float(text, source, row, name, -90.0, 90.0)
            elif name == "longitude":
                out[name] = _float(text, source, row, name, -180.0, 180.0)
            elif name == "collection_date":
                try:
                    date = dt.date.fromisoformat(text)
                except ValueError:
                    raise RowError(
                        source,
                        row,
                        name,
                        f"{text!r} is not a date",
                        "write dates as YYYY-MM-DD, e.g. 2024-05-17",
                    ) from None
                if len(text) != 10:
                    raise RowError(source, row, name, f"{text!r} is not a plain date", "write YYYY-MM-DD")
                if date > today:
                    raise RowError(source, row, name, f"{text} is in the future", "check the year")
                out[name] = date
            else:
                if len(text) > _MAX_TEXT and name != "notes":
                    raise RowError(source, row, name, f"longer than {_MAX_TEXT} characters", "shorten it")
                out[name] = text
        except RowError as exc:
            errors.append(exc)
    lat_given, lon_given = (
        bool((values.get("latitude") or "").strip()),
        bool((values.get("longitude") or "").strip()),
    )
    if lat_given != lon_given:
        missing = "longitude" if lat_given else "latitude"
        errors.append(
            RowError(source, row, missing, f"{missing} is missing", "give both coordinates or neither")
        )
    return out, errors


def parse_samples_csv(
    text: str, source: str = "samples.csv", today: dt.date | None = None
) -> tuple[list[dict[str, Any]], list[RowError]]:
    """Parse and validate a samples CSV: (valid rows as :class:`Sample` fields, every error).

    A header problem (no sample id column, unknown or repeated columns) raises
    :class:`SampleImportError`: no row can be trusted then. A sample id given twice is an error on
    its second row.
    """
    text = text.lstrip("\ufeff")
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise SampleImportError(source, "the file is empty", "the first row must name the columns")
    try:  # only the delimiter is guessed (from the header); quoting follows the spreadsheet rules
        delimiter = csv.Sniffer().sniff(lines[0], delimiters=",;\t").delimiter
    except csv.Error:
        delimiter = ","
    reader = csv.reader(io.StringIO(text, newline=""), csv.excel, delimiter=delimiter)
    header = next(reader)
    columns = [_normalise_header(h) for h in header]
    unknown = [h for h, c in zip(header, columns, strict=True) if c not in SAMPLE_FIELDS and h.strip()]
    if unknown:
        raise SampleImportError(
            source,
            f"row 1: unknown column(s) {', '.join(repr(u) for u in unknown)}",
            f"rename or remove them; known columns: {', '.join(SAMPLE_FIELDS)}",
        )
    repeated = sorted({c for c in columns if c and columns.count(c) > 1})
    if repeated:
        raise SampleImportError(
            source, f"row 1: column(s) given twice: {', '.join(repeated)}", "keep one of each"
        )
    if "sample_id" not in columns:
        raise SampleImportError(source, "row 1: no sample id column", "name the first column 'sample_id'")
    rows: list[dict[str, Any]] = []
    errors: list[RowError] = []
    seen: dict[str, int] = {}
    for number, cells in enumerate(reader, start=2):
        if not any(c.strip() for c in cells):
            continue
        if len(cells) > len(columns) and any(c.strip() for c in cells[len(columns) :]):
            errors.append(
                RowError(
                    source,
                    number,
                    None,
                    f"{len(cells)} cells but the header has {len(columns)} columns",
                    "quote cells that contain the delimiter",
                )
            )
            continue
        values = {c: cell for c, cell in zip(columns, cells, strict=False) if c}
        out, problems = validate_row(values, source, number, today)
        sample_id = out.get("id")
        if sample_id and sample_id in seen:
            problems.append(
                RowError(
                    source,
                    number,
                    "sample_id",
                    f"{sample_id!r} is already on row {seen[sample_id]}",
                    "give each sample one row",
                )
            )
        if problems:
            errors.extend(problems)
            continue
        seen[sample_id] = number
        out["_row"] = number
        rows.append(out)
    return rows, errors


def read_samples_file(path: Path) -> str:
    """The text of a samples CSV, with errors that name the file."""
    try:
        return Path(path).read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise SampleImportError(str(path), "no such file", "check the path") from None
    except UnicodeDecodeError as exc:
        raise SampleImportError(
            str(path), f"not UTF-8 text (byte {exc.start})", "save the file as CSV UTF-8 from the spreadsheet"
        ) from None


def import_samples(
    session: Session,
    text: str,
    source: str = "samples.csv",
    *,
    skip_bad: bool = False,
    dry_run: bool = False,
    today: dt.date | None = None,
) -> ImportReport:
    """Validate every row, then create new samples and update existing ones, in one transaction.

    Nothing is written when any row is wrong (:class:`SampleImportError` lists every error), unless
    ``skip_bad``: then the good rows are imported and the bad ones reported in ``skipped``. Existing
    samples (for example the bare rows created when images arrived first) get every column of the
    file, empty cells included. The caller commits (or rolls back) the session.
    """
    rows, errors = parse_samples_csv(text, source, today)
    if errors and not skip_bad:
        raise SampleImportError(
            source,
            f"{len(errors)} problem(s) in {len({e.row for e in errors})} row(s); nothing was imported",
            "fix them, or import the good rows with --skip-bad",
            errors,
        )
    report = ImportReport(
        source, rows=len(rows) + len({e.row for e in errors}), skipped=errors, dry_run=dry_run
    )
    for values in rows:
        values = {k: v for k, v in values.items() if k != "_row"}
        existing = session.get(Sample, values["id"])
        if existing is None:
            report.created.append(values["id"])
            if not dry_run:
                session.add(Sample(**values))
            continue
        changed = {k: v for k, v in values.items() if getattr(existing, k) != v}
        if not changed:
            report.unchanged.append(values["id"])
            continue
        report.updated.append(values["id"])
        if not dry_run:
            for key, value in changed.items():
                setattr(existing, key, value)
    if not dry_run:
        session.flush()
    return report


def sample_dict(sample: Sample) -> dict[str, Any]:
    """A sample's own fields, JSON-ready."""
    return {
        "sample_id": sample.id,
        "site": sample.site,
        "habitat": sample.habitat,
        "latitude": sample.latitude,
        "longitude": sample.longitude,
        "collection_date": sample.collection_date.isoformat() if sample.collection_date else None,
        "collector": sample.collector,
        "method": sample.method,
        "fraction": sample.fraction,
        "notes": sample.notes,
    }


def list_samples(
    session: Session, site: str | None = None, limit: int | None = None, offset: int = 0
) -> list[dict[str, Any]]:
    """Every sample (or those of ``site``), with its number of images (per status) and specimens."""
    query = select(Sample).order_by(Sample.id)
    if site is not None:
        query = query.where(Sample.site == site)
    if limit is not None:
        query = query.limit(limit)
    samples = session.scalars(query.offset(offset)).all()
    ids = [s.id for s in samples]
    statuses: dict[str, dict[str, int]] = {i: {} for i in ids}
    for sample_id, status, n in session.execute(
        select(Image.sample_id, Image.status, func.count(Image.id))
        .where(Image.sample_id.in_(ids))
        .group_by(Image.sample_id, Image.status)
    ):
        statuses[sample_id][status] = n
    specimens: dict[str, int] = {
        sample_id: n
        for sample_id, n in session.execute(
            select(Image.sample_id, func.count(Specimen.id))
            .join(Specimen, Specimen.image_id == Image.id)
            .where(Image.sample_id.in_(ids))
            .group_by(Image.sample_id)
        )
    }
    return [
        {
            **sample_dict(s),
            "images": sum(statuses[s.id].values()),
            "image_status": dict(sorted(statuses[s.id].items())),
            "specimens": specimens.get(s.id, 0),
        }
        for s in samples
    ]


def image_dict(image: Image) -> dict[str, Any]:
    """An image's row, JSON-ready (without its specimens)."""
    return {
        "image_id": image.id,
        "sample_id": image.sample_id,
        "file_name": image.file_name,
        "source_path": image.source_path,
        "archived_path": image.archived_path,
        "content_hash": image.content_hash,
        "status": image.status,
        "error": image.error,
        "width": image.width,
        "height": image.height,
        "um_per_px": image.um_per_px,
        "n_specimens": image.n_specimens,
        "detector_version": image.detector_version,
        "processed_at": image.processed_at.isoformat() if image.processed_at else None,
    }


def sample_detail(session: Session, sample_id: str) -> dict[str, Any]:
    """A sample with its images (status, specimens) and its family counts.

    Raises :class:`LabpipeError` when no sample has this id.
    """
    from labpipe.reports.counts import count_families

    sample = session.get(Sample, sample_id)
    if sample is None:
        raise NotFoundError(sample_id, "no such sample", "list them with `labpipe samples list`")
    images = session.scalars(select(Image).where(Image.sample_id == sample_id).order_by(Image.id)).all()
    counts = count_families(session, sample_id)
    return {
        **sample_dict(sample),
        "images": [image_dict(i) for i in images],
        "counts": counts[0] if counts else None,
    }

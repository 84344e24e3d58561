"""Import BOLD result tables (TSV) and link each row to its specimen by Sample ID.

BOLD's downloads name their columns in several ways (``processid`` / ``Process ID``,
``sampleid`` / ``Sample ID``, ``bin_uri`` / ``BIN``, ``family_name`` / ``family`` / ``Family``,
``nucleotides`` / ``nuc`` / ``sequence``, ...); :func:`normalise_column` maps each to one canonical
name and every other column is ignored. Rows are matched to specimens **only** by exact Sample ID
(surrounding spaces removed): first against the wells recorded by ``labpipe plates layout``, then
against the Sample ID of every specimen (:mod:`labpipe.barcoding.ids`). Nothing is guessed:

- a Sample ID that matches no specimen is reported as *unknown*;
- a Sample ID on more than one row (after the marker filter) is reported as *duplicate*, and none
  of its rows is imported;
- a row without a Sample ID is reported by row number.

With a marker column (``markercode``/``marker_code``), only rows of ``marker`` (default ``COI-5P``,
the animal barcode) are read. Importing the same file again updates the same links (idempotent).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from labpipe.barcoding.ids import specimen_codes
from labpipe.barcoding.plates import parse_well, well_name
from labpipe.db.models import BarcodeLink
from labpipe.errors import LabpipeError

__all__ = [
    "CANONICAL_COLUMNS",
    "RANKS",
    "BarcodeImportError",
    "BarcodeImportReport",
    "BarcodeRow",
    "import_barcodes",
    "normalise_column",
    "parse_bold_table",
]

RANKS = ("phylum", "class", "order", "family", "subfamily", "tribe", "genus", "species")
CANONICAL_COLUMNS = ("processid", "sampleid", "bin_uri", *RANKS, "nucleotides", "marker", "plate", "well")

_ALIASES: dict[str, str] = {
    "processid": "processid",
    "process_id": "processid",
    "process": "processid",
    "sampleid": "sampleid",
    "sample_id": "sampleid",
    "bin_uri": "bin_uri",
    "binuri": "bin_uri",
    "bin": "bin_uri",
    "bin_id": "bin_uri",
    "bold_bin": "bin_uri",
    "bold_bin_uri": "bin_uri",
    "nucleotides": "nucleotides",
    "nuc": "nucleotides",
    "sequence": "nucleotides",
    "seq": "nucleotides",
    "dna_sequence": "nucleotides",
    "coi_5p_seq": "nucleotides",
    "coi_5p_sequence": "nucleotides",
    "markercode": "marker",
    "marker_code": "marker",
    "marker": "marker",
    "plate": "plate",
    "plate_id": "plate",
    "plateid": "plate",
    "plate_name": "plate",
    "well": "well",
    "well_position": "well",
    "plate_well": "well",
    **{rank: rank for rank in RANKS},
    "class_": "class",
    "order_": "order",
}
_EMPTY = {"", "na", "n/a", "none", "null", "nan"}


def normalise_column(name: str) -> str | None:
    """The canonical name of a BOLD column header, or ``None`` for columns labpipe does not read.

    >>> normalise_column("Process ID"), normalise_column("family_name"), normalise_column("BIN")
    ('processid', 'family', 'bin_uri')
    >>> normalise_column("phylum_taxID") is None
    True
    """
    key = re.sub(r"[^a-z0-9]+", "_", name.strip().lstrip("\ufeff").lower()).strip("_")
    if key.endswith("_name") and key[: -len("_name")] in RANKS:
        key = key[: -len("_name")]
    return _ALIASES.get(key)


class BarcodeImportError(LabpipeError):
    """A BOLD results file cannot be read at all (no Sample ID column, not a table)."""


@dataclass(frozen=True)
class BarcodeRow:
    """One row of a results table, with canonical fields (empty cells as ``None``)."""

    row: int
    sampleid: str | None
    processid: str | None = None
    bin_uri: str | None = None
    taxonomy: dict[str, str] = field(default_factory=dict)
    nucleotides: str | None = None
    marker: str | None = None
    plate: str | None = None
    well: str | None = None

    @property
    def family(self) -> str | None:
        return self.taxonomy.get("family")


def parse_bold_table(text: str, source: str = "results.tsv") -> tuple[list[BarcodeRow], dict[str, str]]:
    """Rows of a BOLD results table and the header mapping used (original -> canonical).

    Tab-separated (BOLD's format); a header without a tab is read as comma-separated. Raises
    :class:`BarcodeImportError` when no column holds Sample IDs.
    """
    text = text.lstrip("\ufeff")
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise BarcodeImportError(source, "the file is empty", "export the results table from BOLD as TSV")
    if "\t" in lines[0]:
        reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
    else:
        reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader)
    columns = [normalise_column(h) for h in header]
    mapping = {h: c for h, c in zip(header, columns, strict=True) if c}
    if "sampleid" not in columns:
        raise BarcodeImportError(
            source,
            "row 1: no Sample ID column",
            f"BOLD tables name it 'sampleid' or 'Sample ID'; columns found: {', '.join(header[:12])}",
        )
    seen: set[str] = set()
    index: dict[str, int] = {}
    for i, c in enumerate(columns):
        if c and c not in seen:  # the first of repeated columns wins
            index[c] = i
            seen.add(c)
    rows: list[BarcodeRow] = []
    for number, cells in enumerate(reader, start=2):
        if not any(c.strip() for c in cells):
            continue

        def get(name: str, cells: list[str] = cells) -> str | None:
            i = index.get(name)
            if i is None or i >= len(cells):
                return None
            value = cells[i].replace("\x00", "").strip()
            return None if value.lower() in _EMPTY else value

        taxonomy = {rank: v for rank in RANKS if (v := get(rank))}
        nucleotides = get("nucleotides")
        rows.append(
            BarcodeRow(
                row=number,
                sampleid=get("sampleid"),
                processid=get("processid"),
                bin_uri=get("bin_uri"),
                taxonomy=taxonomy,
                nucleotides=re.sub(r"\s+", "", nucleotides) if nucleotides else None,
                marker=get("marker"),
                plate=get("plate"),
                well=get("well"),
            )
        )
    return rows, mapping


@dataclass
class BarcodeImportReport:
    """What :func:`import_barcodes` did, row by row where something was not imported."""

    source: str
    rows: int = 0
    created: list[str] = field(default_factory=list)
    """Sample IDs linked to a specimen that had no barcode record yet."""
    updated: list[str] = field(default_factory=list)
    """Sample IDs whose existing record (a plate well) got the results."""
    unknown: list[dict[str, Any]] = field(default_factory=list)
    duplicates: list[dict[str, Any]] = field(default_factory=list)
    missing_sampleid: list[int] = field(default_factory=list)
    other_marker: int = 0
    invalid: list[dict[str, Any]] = field(default_factory=list)
    """Rows with a value too long for its column (not imported)."""
    conflicts: list[dict[str, Any]] = field(default_factory=list)
    """Rows whose plate/well is taken by another specimen (not imported)."""
    columns: dict[str, str] = field(default_factory=dict)
    dry_run: bool = False

    @property
    def linked(self) -> int:
        return len(self.created) + len(self.updated)

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "rows": self.rows,
            "linked": self.linked,
            "created": self.created,
            "updated": self.updated,
            "unknown": self.unknown,
            "duplicates": self.duplicates,
            "missing_sampleid": self.missing_sampleid,
            "other_marker": self.other_marker,
            "invalid": self.invalid,
            "conflicts": self.conflicts,
            "columns": self.columns,
            "dry_run": self.dry_run,
        }


_LIMITS = {"sampleid": 255, "processid": 64, "bin_uri": 64, "plate": 64}


def _too_long(row: BarcodeRow) -> str:
    """Why ``row`` cannot be stored ('' when it can)."""
    for name, limit in _LIMITS.items():
        value = getattr(row, name)
        if value is not None and len(value) > limit:
            return f"{name} is longer than {limit} characters"
    family = row.family
    if family is not None and len(family) > 128:
        return "family is longer than 128 characters"
    return ""


def _well(text: str | None) -> str | None:
    if not text:
        return None
    try:
        return well_name(*parse_well(text))
    except ValueError:
        return None


def import_barcodes(
    session: Session,
    text: str,
    source: str = "results.tsv",
    *,
    pattern: str,
    marker: str | None = "COI-5P",
    dry_run: bool = False,
) -> BarcodeImportReport:
    """Link the rows of a BOLD results table to specimens and store processid, BIN, taxonomy and
    sequence (see the module docstring for the matching rules). The caller commits.

    A link's earlier agreement mark is cleared (its DNA family may have changed): run
    :func:`labpipe.barcoding.agreement.barcode_agreement` again.
    """
    rows, mapping = parse_bold_table(text, source)
    report = BarcodeImportReport(source=source, rows=len(rows), columns=mapping, dry_run=dry_run)
    by_id: dict[str, list[BarcodeRow]] = defaultdict(list)
    for row in rows:
        if marker and row.marker and row.marker.strip().upper() != marker.strip().upper():
            report.other_marker += 1
            continue
        if not row.sampleid:
            report.missing_sampleid.append(row.row)
            continue
        too_long = _too_long(row)
        if too_long:
            report.invalid.append({"sampleid": row.sampleid, "row": row.row, "problem": too_long})
            continue
        by_id[row.sampleid].append(row)
    links: dict[str, list[BarcodeLink]] = defaultdict(list)
    if by_id:
        for link in session.scalars(select(BarcodeLink).where(BarcodeLink.sampleid.in_(list(by_id)))):
            links[link.sampleid].append(link)
    codes = specimen_codes(session, pattern)
    taken = {
        (p, w): s
        for p, w, s in session.execute(
            select(BarcodeLink.plate, BarcodeLink.well, BarcodeLink.sampleid).where(
                BarcodeLink.plate.is_not(None)
            )
        )
    }
    now = dt.datetime.now(dt.UTC)
    for sampleid, group in by_id.items():
        if len(group) > 1:
            report.duplicates.append({"sampleid": sampleid, "rows": [r.row for r in group]})
            continue
        (row,) = group
        existing = links.get(sampleid, [])
        if len(existing) > 1:
            report.duplicates.append(
                {"sampleid": sampleid, "rows": [row.row], "problem": "several records in the database"}
            )
            continue
        specimen_id = codes.get(sampleid)
        if not existing and specimen_id is None:
            report.unknown.append({"sampleid": sampleid, "row": row.row})
            continue
        if existing:
            link = existing[0]
            report.updated.append(sampleid)
        else:
            plate, well = row.plate, _well(row.well)
            if plate is None or well is None:
                plate = well = None
            elif (plate, well) in taken:
                report.conflicts.append(
                    {
                        "sampleid": sampleid,
                        "row": row.row,
                        "plate": plate,
                        "well": well,
                        "holder": taken[(plate, well)],
                    }
                )
                continue
            link = BarcodeLink(specimen_id=specimen_id, sampleid=sampleid, plate=plate, well=well)
            if plate is not None:
                taken[(plate, well)] = sampleid
            report.created.append(sampleid)
            if not dry_run:
                session.add(link)
        if dry_run:
            continue
        if link.specimen_id is None and specimen_id is not None:
            link.specimen_id = specimen_id
        link.processid = row.processid
        link.bin_uri = row.bin_uri
        link.sequence = row.nucleotides
        link.dna_family = row.family
        link.taxonomy = dict(row.taxonomy) or None
        link.agreement = None
        link.needs_review = False
        link.imported_at = now
    if not dry_run:
        session.flush()
    return report

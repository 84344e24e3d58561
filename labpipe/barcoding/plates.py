"""96-well plate layouts for DNA barcoding: assign specimens to wells, write a manifest and a picking sheet.

The assignment is a pure function (:func:`assign_wells`): wells ``A1``..``H12`` in column-major order
(``A1, B1, ..., H1, A2, ...``, the order of multichannel pipettes and of BOLD's plate records) or
row-major, skipping control wells (default ``G12`` and ``H12``, left empty for the lab's negative
and positive controls). Specimens are laid out in the order a technician meets them: image by
image, then by specimen number on the image.

:func:`layout_plates` records each assignment as a :class:`~labpipe.db.models.BarcodeLink` row
(plate, well, Sample ID, specimen), so the BOLD export and the import of BOLD's results find them
again; a specimen already on a plate is never laid out twice. Plate names are ``<prefix><nn>``
(default prefix ``<sample>-P``), numbered on from the highest plate of that prefix already in the
database. Wells are stored and written as ``A01``..``H12`` (BOLD's form); ``A1`` is read as ``A01``.

Rejected specimens (the classifier was unsure, or saw no family it knows) are left out of a layout
unless asked for (``include_rejected``); :class:`LayoutResult` says how many were included or left
out, and so does the picking sheet (:func:`rejected_notes`, from the database, so a sheet written
again later still says it).

The manifest (CSV) and the printable picking sheet are written from the database by
:func:`plate_manifest`, so they can be written again at any time. The sheet
(:func:`picking_sheet_html`) is one self-contained HTML file laid out for A4 landscape
(``@page``): per plate a header with the plate name as a Code 128 barcode
(:mod:`labpipe.barcoding.code128`), what is on the plate and what was left out; the 8 x 12 grid, each
well with its crop thumbnail and Sample ID; a dish map per plate image, each specimen drawn where it
lies on the dish and labelled with its well; then the pick list in fill order. Print it, or save it
as PDF from the browser.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from PIL import Image as PILImage
from sqlalchemy import select
from sqlalchemy.orm import Session

from labpipe.barcoding.code128 import code128_svg
from labpipe.barcoding.ids import specimen_code
from labpipe.db.models import BarcodeLink, Image, Specimen
from labpipe.errors import LabpipeError
from labpipe.queries.calls import CountFilter, load_calls
from labpipe.queries.records import plated_specimen_ids
from labpipe.queries.rule import Outcome, resolve
from labpipe.reports.cells import SafeDictWriter
from labpipe.samples import NotFoundError

__all__ = [
    "COLUMNS",
    "ROWS",
    "LayoutResult",
    "ManifestRow",
    "RejectedNote",
    "WellAssignment",
    "assign_wells",
    "layout_plates",
    "list_plates",
    "manifest_csv",
    "parse_controls",
    "parse_well",
    "picking_sheet_html",
    "plate_manifest",
    "plate_sheet",
    "plate_wells",
    "rejected_notes",
    "well_name",
]

_MAX_PLATE = 64  # barcode_links.plate is a String(64)
ROWS = "ABCDEFGH"
COLUMNS = 12
ORDERS = ("column", "row")
_WELL = re.compile(r"^\s*([A-Ha-h])\s*0*([1-9]|1[0-2])\s*$")

T = TypeVar("T")


def parse_well(text: str) -> tuple[int, int]:
    """(row, column), 0-based, of a well name such as ``A1``, ``a01`` or ``H12``.

    >>> parse_well("B03"), parse_well("h12")
    ((1, 2), (7, 11))
    """
    match = _WELL.match(str(text))
    if not match:
        raise ValueError(f"{text!r} is not a well of a 96-well plate (A1..H12)")
    return ROWS.index(match.group(1).upper()), int(match.group(2)) - 1


def well_name(row: int, column: int) -> str:
    """``A01``..``H12`` from a 0-based row and column.

    >>> well_name(0, 0), well_name(7, 11)
    ('A01', 'H12')
    """
    if not (0 <= row < len(ROWS) and 0 <= column < COLUMNS):
        raise ValueError(f"row {row} / column {column} is outside a 96-well plate")
    return f"{ROWS[row]}{column + 1:02d}"


def parse_controls(text: str | Iterable[str]) -> tuple[str, ...]:
    """Control wells from ``"G12,H12"`` (or a list), normalised to ``A01`` form, in the order given.

    >>> parse_controls("g12, H12"), parse_controls("")
    (('G12', 'H12'), ())
    """
    items = text.split(",") if isinstance(text, str) else list(text)
    out: list[str] = []
    for item in items:
        if not str(item).strip():
            continue
        name = well_name(*parse_well(item))
        if name not in out:
            out.append(name)
    return tuple(out)


def plate_wells(order: str = "column", controls: Iterable[str] = ("G12", "H12")) -> list[str]:
    """The wells specimens go into, in fill order, control wells left out.

    >>> plate_wells("column", ())[:3], plate_wells("row", ())[:3], len(plate_wells())
    (['A01', 'B01', 'C01'], ['A01', 'A02', 'A03'], 94)
    """
    if order not in ORDERS:
        raise ValueError(f"order must be 'column' or 'row', given order {order!r}")
    skip = set(parse_controls(controls))
    if order == "column":
        cells = [(r, c) for c in range(COLUMNS) for r in range(len(ROWS))]
    else:
        cells = [(r, c) for r in range(len(ROWS)) for c in range(COLUMNS)]
    wells = [well_name(r, c) for r, c in cells]
    usable = [w for w in wells if w not in skip]
    if not usable:
        raise ValueError("every well is a control: no room for specimens")
    return usable


@dataclass(frozen=True)
class WellAssignment(Generic[T]):
    """One item in one well."""

    plate: str
    well: str
    item: T


def assign_wells(
    items: Sequence[T],
    plate_names: Iterable[str],
    order: str = "column",
    controls: Iterable[str] = ("G12", "H12"),
) -> list[WellAssignment[T]]:
    """Put ``items`` into wells, in order, filling one plate before the next.

    Parameters
    ----------
    items:
        What goes into the wells (specimen ids, rows, ...), in picking order.
    plate_names:
        Names for as many plates as needed, in order (an iterator may be endless).
    order, controls:
        See :func:`plate_wells`.

    Example
    -------
    >>> [(a.plate, a.well, a.item) for a in assign_wells(["x", "y"], ["P1"], "row", ())]
    [('P1', 'A01', 'x'), ('P1', 'A02', 'y')]
    """
    wells = plate_wells(order, controls)
    names = iter(plate_names)
    out: list[WellAssignment[T]] = []
    plate = ""
    for i, item in enumerate(items):
        slot = i % len(wells)
        if slot == 0:
            try:
                plate = next(names)
            except StopIteration:
                raise ValueError(f"not enough plate names for {len(items)} items") from None
        out.append(WellAssignment(plate, wells[slot], item))
    return out


# --------------------------------------------------------------------------------------------------
# With the database


@dataclass(frozen=True)
class ManifestRow:
    """One well of a plate manifest (a specimen, or a control well left empty)."""

    plate: str
    well: str
    content: str
    """``specimen`` or ``control``."""
    sample_id: str = ""
    """The specimen's Sample ID (see :mod:`labpipe.barcoding.ids`)."""
    specimen_id: int | None = None
    sample: str | None = None
    image_id: int | None = None
    image_file: str = ""
    index_in_image: int | None = None
    family: str | None = None
    status: str = ""
    """``accepted``, ``rejected`` or ``verified``."""
    probability: float | None = None
    bbox: tuple[int, int, int, int] | None = None
    length_mm: float | None = None
    crop_path: str = ""
    image_size: tuple[int, int] | None = None
    """Width and height of the plate image in pixels (for the dish map; not a manifest column)."""

    def as_dict(self) -> dict[str, Any]:
        x, y, w, h = self.bbox if self.bbox else ("", "", "", "")
        return {
            "plate": self.plate,
            "well": self.well,
            "content": self.content,
            "sample_id": self.sample_id,
            "specimen_id": self.specimen_id if self.specimen_id is not None else "",
            "sample": self.sample or "",
            "image_id": self.image_id if self.image_id is not None else "",
            "image_file": self.image_file,
            "index_in_image": self.index_in_image if self.index_in_image is not None else "",
            "family": self.family or "",
            "status": self.status,
            "probability": round(self.probability, 4) if self.probability is not None else "",
            "x": x,
            "y": y,
            "w": w,
            "h": h,
            "length_mm": round(self.length_mm, 3) if self.length_mm is not None else "",
            "crop_path": self.crop_path,
        }


MANIFEST_COLUMNS = list(ManifestRow("", "", "").as_dict())


@dataclass
class LayoutResult:
    """What :func:`layout_plates` did."""

    sample: str
    plates: list[str] = field(default_factory=list)
    placed: list[ManifestRow] = field(default_factory=list)
    already_on_plates: list[dict[str, Any]] = field(default_factory=list)
    """Specimens left out because they already have a well: Sample ID, plate and well."""
    dry_run: bool = False
    include_rejected: bool = False
    """Whether rejected specimens were asked for."""
    rejected_left_out: int = 0
    """Rejected specimens of the sample not laid out (not asked for) and not on any plate before."""

    @property
    def rejected_included(self) -> int:
        """Rejected specimens among those placed."""
        return sum(1 for r in self.placed if r.status == "rejected")

    def rejected_text(self) -> str:
        """One line on the rejected specimens, for the command's report.

        >>> LayoutResult("S1", rejected_left_out=3).rejected_text()
        'rejected specimens: 3 left out (lay them out too with --include-rejected)'
        """
        if self.include_rejected:
            return f"rejected specimens: {self.rejected_included} included"
        if self.rejected_left_out:
            return (
                f"rejected specimens: {self.rejected_left_out} left out "
                "(lay them out too with --include-rejected)"
            )
        return "rejected specimens: none to leave out"

    def as_dict(self) -> dict[str, Any]:
        return {
            "sample": self.sample,
            "plates": self.plates,
            "placed": len(self.placed),
            "wells": [r.as_dict() for r in self.placed],
            "already_on_plates": self.already_on_plates,
            "dry_run": self.dry_run,
            "include_rejected": self.include_rejected,
            "rejected_included": self.rejected_included,
            "rejected_left_out": self.rejected_left_out,
        }


def _size(image: Image) -> tuple[int, int] | None:
    return (image.width, image.height) if image.width and image.height else None


def _next_plate_names(session: Session, prefix: str) -> Iterable[str]:
    used = session.scalars(select(BarcodeLink.plate).where(BarcodeLink.plate.is_not(None)).distinct()).all()
    numbers = [0]
    for name in used:
        if name and name.startswith(prefix) and name[len(prefix) :].isdigit():
            numbers.append(int(name[len(prefix) :]))
    n = max(numbers)
    while True:
        n += 1
        yield f"{prefix}{n:02d}"


def _chosen_specimens(
    session: Session, sample: str, family: str | None, include_rejected: bool, threshold: float | None
) -> tuple[list[tuple[int, str, str | None, float | None]], list[int]]:
    """(specimen id, status, family, probability) of the sample's specimens to lay out, and the ids of
    the rejected specimens left out."""
    out = []
    left_out: list[int] = []
    for call in load_calls(session, CountFilter(samples=(sample,))):
        res = resolve(call, threshold)
        if res.outcome is Outcome.EXCLUDED:
            continue  # a person said it is not a specimen
        if res.outcome is Outcome.ACCEPTED:
            if family is not None and (res.family or "").lower() != family.strip().lower():
                continue
            status = "verified" if res.verified else "accepted"
            out.append((call.specimen_id, status, res.family, call.probability))
        elif include_rejected:
            best = call.family or (call.top_k[0][0] if call.top_k else None)
            out.append((call.specimen_id, "rejected", best, call.probability))
        else:
            left_out.append(call.specimen_id)
    return out, left_out


def layout_plates(
    session: Session,
    sample: str,
    *,
    pattern: str,
    family: str | None = None,
    include_rejected: bool = False,
    order: str = "column",
    controls: Iterable[str] = ("G12", "H12"),
    prefix: str = "",
    threshold: float | None = None,
    dry_run: bool = False,
) -> LayoutResult:
    """Lay the specimens of ``sample`` out on new plates and record their wells.

    Parameters
    ----------
    sample:
        The sample whose specimens are laid out.
    pattern:
        The Sample ID pattern (``[bold] sample_id_pattern``).
    family:
        Only specimens counted as this family (verified or accepted).
    include_rejected:
        Also specimens the classifier rejected (with ``family``: all rejected ones, whatever their
        best guess). Specimens a person marked ``not_specimen`` are never laid out. Without it, the
        result counts the rejected specimens left out (``rejected_left_out``).
    order, controls:
        Fill order and control wells (``[plates]``).
    prefix:
        Plate name prefix; empty: ``<sample>-P``.
    threshold:
        Query-time acceptance threshold (see :mod:`labpipe.queries.rule`).
    dry_run:
        Compute the layout without recording it.

    The caller commits. Raises :class:`NotFoundError` when the sample has no specimens at all.
    """
    plate_wells(order, controls)  # validates order and controls before any query
    prefix = prefix or f"{sample}-P"
    if len(prefix) > _MAX_PLATE - 3:
        raise LabpipeError(
            prefix, f"plate name prefix is longer than {_MAX_PLATE - 3} characters", "give a shorter --prefix"
        )
    chosen, rejected_ids = _chosen_specimens(session, sample, family, include_rejected, threshold)
    if not chosen and not session.scalar(
        select(Specimen.id)
        .join(Image, Image.id == Specimen.image_id)
        .where(Image.sample_id == sample)
        .limit(1)
    ):
        raise NotFoundError(sample, "no specimens recorded for this sample", "process its images first")
    ids = [c[0] for c in chosen]
    linked = {
        link.specimen_id: link
        for link in session.scalars(
            select(BarcodeLink).where(BarcodeLink.specimen_id.in_(ids), BarcodeLink.plate.is_not(None))
        )
    }
    info = {c[0]: c for c in chosen}
    specimens = {
        s.id: s
        for s in session.scalars(
            select(Specimen).where(Specimen.id.in_(ids)).join(Image, Image.id == Specimen.image_id)
        )
    }
    todo = sorted(
        (i for i in ids if i not in linked),
        key=lambda i: (specimens[i].image_id, specimens[i].index_in_image),
    )
    result = LayoutResult(
        sample=sample,
        dry_run=dry_run,
        include_rejected=include_rejected,
        rejected_left_out=len(set(rejected_ids) - plated_specimen_ids(session, rejected_ids)),
    )
    for specimen_id in ids:
        if specimen_id in linked:
            link = linked[specimen_id]
            result.already_on_plates.append(
                {"sample_id": link.sampleid, "plate": link.plate, "well": link.well}
            )
    names = _next_plate_names(session, prefix)
    for a in assign_wells(todo, names, order, controls):
        spec = specimens[a.item]
        image = spec.image
        code = specimen_code(image.sample_id, image.id, spec.index_in_image, spec.id, pattern)
        _, status, fam, prob = info[a.item]
        if a.plate not in result.plates:
            result.plates.append(a.plate)
        result.placed.append(
            ManifestRow(
                plate=a.plate,
                well=a.well,
                content="specimen",
                sample_id=code,
                specimen_id=spec.id,
                sample=image.sample_id,
                image_id=image.id,
                image_file=image.file_name,
                index_in_image=spec.index_in_image,
                family=fam,
                status=status,
                probability=prob,
                bbox=(spec.x, spec.y, spec.w, spec.h),
                length_mm=spec.length_mm,
                crop_path=spec.crop_path,
                image_size=_size(image),
            )
        )
        if not dry_run:
            session.add(BarcodeLink(specimen_id=spec.id, plate=a.plate, well=a.well, sampleid=code))
    if not dry_run:
        session.flush()
    return result


def plate_manifest(
    session: Session,
    plates: Sequence[str],
    *,
    controls: Iterable[str] = ("G12", "H12"),
    order: str = "column",
    threshold: float | None = None,
) -> list[ManifestRow]:
    """Every well of ``plates`` from the database, in fill order, control wells included.

    Raises :class:`NotFoundError` naming a plate with no wells recorded.
    """
    rows: list[ManifestRow] = []
    fill = plate_wells(order, ())
    position = {w: i for i, w in enumerate(fill)}
    control_wells = parse_controls(controls)
    for plate in plates:
        links = session.scalars(select(BarcodeLink).where(BarcodeLink.plate == plate)).all()
        if not links:
            raise NotFoundError(plate, "no such plate", "list plates with `labpipe plates list`")
        ids = [link.specimen_id for link in links if link.specimen_id is not None]
        calls = {c.specimen_id: c for c in load_calls(session, specimen_ids=ids)} if ids else {}
        entries: list[ManifestRow] = []
        for link in links:
            spec = link.specimen
            well = link.well or ""
            if spec is None:
                entries.append(ManifestRow(plate, well, "specimen", sample_id=link.sampleid))
                continue
            call = calls.get(spec.id)
            status, fam, prob = "rejected", None, None
            if call is not None:
                res = resolve(call, threshold)
                prob = call.probability
                if res.outcome is Outcome.ACCEPTED:
                    status, fam = ("verified" if res.verified else "accepted"), res.family
                else:
                    status = "excluded" if res.outcome is Outcome.EXCLUDED else "rejected"
                    fam = call.family or (call.top_k[0][0] if call.top_k else None)
            entries.append(
                ManifestRow(
                    plate=plate,
                    well=well,
                    content="specimen",
                    sample_id=link.sampleid,
                    specimen_id=spec.id,
                    sample=spec.image.sample_id,
                    image_id=spec.image_id,
                    image_file=spec.image.file_name,
                    index_in_image=spec.index_in_image,
                    family=fam,
                    status=status,
                    probability=prob,
                    bbox=(spec.x, spec.y, spec.w, spec.h),
                    length_mm=spec.length_mm,
                    crop_path=spec.crop_path,
                    image_size=_size(spec.image),
                )
            )
        used = {e.well for e in entries}
        entries += [ManifestRow(plate, w, "control") for w in control_wells if w not in used]
        entries.sort(key=lambda e: position.get(e.well, len(position)))
        rows.extend(entries)
    return rows


def manifest_csv(rows: Sequence[ManifestRow]) -> str:
    """The plate manifest as CSV (one row per well: specimens and control wells)."""
    buffer = io.StringIO()
    writer = SafeDictWriter(buffer, fieldnames=MANIFEST_COLUMNS)
    writer.writeheader()
    for row in rows:
        writer.writerow(row.as_dict())
    return buffer.getvalue()


def _safe_crop(crops_dir: Path, rel: str) -> Path | None:
    """The crop file, if it exists and lies inside ``crops_dir``."""
    if not rel:
        return None
    root = crops_dir.resolve()
    path = (root / rel).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        return None
    return path


def _thumbnail(path: Path | None, size: int) -> str:
    """A ``data:`` URI of the crop, at most ``size`` pixels on a side; empty when unreadable."""
    if path is None:
        return ""
    try:
        with PILImage.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((size, size))
            buffer = io.BytesIO()
            im.save(buffer, format="PNG", optimize=True)
    except (OSError, ValueError):
        return ""
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


@dataclass(frozen=True)
class RejectedNote:
    """What happened to the rejected specimens of a plate's samples (for the picking sheet)."""

    plate: str
    samples: tuple[str, ...]
    on_plate: int
    """Rejected specimens in this plate's wells (laid out with ``include_rejected``)."""
    not_plated: int
    """Rejected specimens of these samples that are on no plate: left out of the layout."""

    def text(self) -> str:
        """The sheet's sentence.

        >>> RejectedNote("P1", ("S1",), 0, 4).text()
        'Rejected specimens: none on this plate; 4 of sample S1 left out (on no plate).'
        """
        where = f"sample{'s' if len(self.samples) > 1 else ''} {', '.join(self.samples) or '-'}"
        on = f"{self.on_plate} included on this plate" if self.on_plate else "none on this plate"
        if self.not_plated:
            out = f"{self.not_plated} of {where} left out (on no plate)"
        else:
            out = f"none of {where} left out"
        return f"Rejected specimens: {on}; {out}."


def rejected_notes(
    session: Session, rows: Sequence[ManifestRow], threshold: float | None = None
) -> dict[str, RejectedNote]:
    """Per plate of ``rows``: its rejected specimens, and those of its samples left off every plate
    (resolved now, with ``threshold`` as in :func:`plate_manifest`)."""
    by_plate: dict[str, list[ManifestRow]] = {}
    for row in rows:
        by_plate.setdefault(row.plate, []).append(row)
    rejected_by_sample: dict[str, list[int]] = {}
    for samples in {tuple(sorted({r.sample for r in rs if r.sample})) for rs in by_plate.values()}:
        for sample in samples:
            if sample in rejected_by_sample:
                continue
            ids = []
            for call in load_calls(session, CountFilter(samples=(sample,))):
                outcome = resolve(call, threshold).outcome
                if outcome is not Outcome.ACCEPTED and outcome is not Outcome.EXCLUDED:
                    ids.append(call.specimen_id)
            rejected_by_sample[sample] = ids
    plated = plated_specimen_ids(session, [i for ids in rejected_by_sample.values() for i in ids])
    out = {}
    for plate, plate_rows in by_plate.items():
        samples = tuple(sorted({r.sample for r in plate_rows if r.sample}))
        not_plated = sum(1 for s in samples for i in rejected_by_sample.get(s, []) if i not in plated)
        on_plate = sum(1 for r in plate_rows if r.status == "rejected")
        out[plate] = RejectedNote(plate, samples, on_plate, not_plated)
    return out


_CSS = """
@page { size: A4 landscape; margin: 10mm; }
* { box-sizing: border-box; }
body { font-family: Helvetica, Arial, sans-serif; font-size: 9pt; margin: 0; color: #000; }
@media screen { body { max-width: 277mm; margin: 8mm auto; } .page { border-bottom: 1px dashed #999; } }
.page { break-after: page; }
.page:last-child { break-after: auto; }
header.sheet { display: flex; justify-content: space-between; align-items: flex-start; gap: 6mm;
  margin-bottom: 2mm; }
header.sheet h1 { font-size: 15pt; margin: 0 0 1mm 0; }
header.sheet ul { list-style: none; margin: 0; padding: 0; font-size: 8.5pt; }
header.sheet li { margin: 0.4mm 0; }
header.sheet .barcode { flex: none; }
.rejected-note { font-weight: bold; }
h2 { font-size: 11pt; margin: 0 0 2mm 0; }
table.grid { border-collapse: collapse; table-layout: fixed; width: 100%; }
table.grid th { background: #eee; font-size: 9pt; width: auto; }
table.grid th.rowhead { width: 6mm; }
table.grid td { border: 1px solid #555; vertical-align: top; text-align: center; height: 17.5mm;
  overflow: hidden; padding: 0.5mm; }
td .well { font-weight: bold; font-size: 7.5pt; text-align: left; }
td img { max-width: 100%; max-height: 9mm; display: block; margin: 0 auto; }
td .sid { font-family: monospace; font-size: 6pt; word-break: break-all; }
td .fam { font-size: 6pt; color: #333; }
td.control { background: repeating-linear-gradient(45deg, #ddd, #ddd 4px, #fff 4px, #fff 8px); }
td.empty { background: #fafafa; }
td.rejected { background: #fff4f4; }
td.rejected .fam { color: #a00; font-weight: bold; }
.maps { display: flex; flex-wrap: wrap; gap: 4mm; }
.dish { margin: 0; }
.dish svg { display: block; border: 1px solid #999; background: #fff; }
.dish figcaption { font-size: 8pt; margin-top: 1mm; }
.dish .spec rect.b { fill: none; stroke: #0a4; }
.dish .spec.rejected rect.b { stroke: #c00; stroke-dasharray: 4 2; }
.dish .spec rect.tag { fill: #fff; stroke: #000; }
.dish .spec text { font-family: Helvetica, Arial, sans-serif; font-weight: bold; fill: #000; }
table.picks { border-collapse: collapse; width: 100%; }
table.picks thead { display: table-header-group; }
table.picks tr { break-inside: avoid; }
table.picks td, table.picks th { border: 1px solid #999; padding: 1mm 1.5mm; text-align: left; }
table.picks img { max-height: 12mm; }
.box { display: inline-block; width: 4mm; height: 4mm; border: 1px solid #000; }
"""

_MAP_MM = (180.0, 175.0)
"""Largest dish map on a page (width, height in mm); two or more share the page."""


def _overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Area shared by two (x, y, w, h) rectangles."""
    dx = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    dy = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    return dx * dy if dx > 0 and dy > 0 else 0.0


def _place_tag(
    box: tuple[int, int, int, int],
    tag_w: float,
    tag_h: float,
    size: tuple[int, int],
    taken: Sequence[tuple[float, float, float, float]],
) -> tuple[float, float, bool]:
    """Where a well label goes: beside its box (above, below, left, right), else stacked further
    above or below with a leader line; the first spot inside the image that covers no other label or
    box, or the least covered one. Returns x, y and whether a leader line is needed.

    >>> _place_tag((100, 100, 20, 20), 30, 10, (500, 500), [(100, 100, 20, 20)])
    (100, 90, False)
    """
    x, y, w, h = box
    candidates: list[tuple[float, float, bool]] = [
        (x, y - tag_h, False),
        (x, y + h, False),
        (x - tag_w, y, False),
        (x + w, y, False),
        (x + w - tag_w, y - tag_h, False),
        (x + w - tag_w, y + h, False),
    ]
    for k in range(2, 6):
        candidates += [(x, y - k * tag_h, True), (x, y + h + (k - 1) * tag_h, True)]
    best: tuple[float, float, float, bool] | None = None
    for cx, cy, lead in candidates:
        cx = min(max(cx, 0.0), size[0] - tag_w)
        cy = min(max(cy, 0.0), size[1] - tag_h)
        rect = (cx, cy, tag_w, tag_h)
        covered = sum(_overlap(rect, other) for other in taken if other != (x, y, w, h))
        covered += _overlap(rect, (x, y, w, h))
        if covered == 0:
            return cx, cy, lead
        if best is None or covered < best[2]:
            best = (cx, cy, covered, lead)
    assert best is not None
    return best[0], best[1], best[3]


def _dish_map(image_file: str, size: tuple[int, int], wells: Sequence[ManifestRow], n_maps: int) -> str:
    """An SVG of one plate image: each specimen's box where it lies, labelled with its well."""
    e = html.escape
    width, height = size
    box_w, box_h = (_MAP_MM[0], _MAP_MM[1]) if n_maps == 1 else (132.0, 82.0)
    mm_per_px = min(box_w / width, box_h / height)
    px_per_mm = 1.0 / mm_per_px
    font = 3.0 * px_per_mm  # 3 mm letters, whatever the image size
    pad = 0.6 * px_per_mm
    stroke = 0.35 * px_per_mm
    parts = [
        f'<figure class="dish"><svg viewBox="0 0 {width} {height}" width="{width * mm_per_px:.1f}mm" '
        f'height="{height * mm_per_px:.1f}mm" role="img" aria-label="Dish map of {e(image_file)}">'
    ]
    taken = [(float(a), float(b), float(c), float(d)) for a, b, c, d in (r.bbox for r in wells if r.bbox)]
    for row in wells:
        if not row.bbox:
            continue
        x, y, w, h = row.bbox
        tag_w = len(row.well) * font * 0.62 + 2 * pad
        tag_h = font + 2 * pad
        tx, ty, lead = _place_tag((x, y, w, h), tag_w, tag_h, (width, height), taken)
        taken.append((tx, ty, tag_w, tag_h))
        line = (
            f'<line x1="{tx + tag_w / 2:.0f}" y1="{ty + tag_h / 2:.0f}" x2="{x + w / 2:.0f}" '
            f'y2="{y + h / 2:.0f}" stroke="#555" stroke-width="{stroke / 2:.1f}"/>'
            if lead
            else ""
        )
        parts.append(
            f'<g class="spec {e(row.status)}" data-well="{row.well}"><title>{row.well}: {e(row.sample_id)}'
            f"</title>{line}"
            f'<rect class="b" x="{x}" y="{y}" width="{w}" height="{h}" stroke-width="{stroke:.1f}"/>'
            f'<rect class="tag" x="{tx:.0f}" y="{ty:.0f}" width="{tag_w:.0f}" height="{tag_h:.0f}" '
            f'stroke-width="{stroke / 2:.1f}"/>'
            f'<text x="{tx + pad:.0f}" y="{ty + pad + font * 0.85:.0f}" font-size="{font:.0f}">'
            f"{row.well}</text>"
            "</g>"
        )
    n_rejected = sum(1 for r in wells if r.status == "rejected")
    legend = f"; dashed red: {n_rejected} rejected" if n_rejected else ""
    parts.append(
        f"</svg><figcaption><b>{e(image_file)}</b> ({width} x {height} px): {len(wells)} specimen(s) "
        f"of this plate, each boxed where it lies and labelled with its well{legend}</figcaption></figure>"
    )
    return "".join(parts)


def picking_sheet_html(
    rows: Sequence[ManifestRow],
    crops_dir: Path,
    thumbnail_px: int = 160,
    notes: dict[str, RejectedNote] | None = None,
    *,
    order: str = "column",
    printed: str = "",
) -> str:
    """A printable, self-contained HTML picking sheet (A4 landscape), per plate:

    1. a header: the plate name in letters and as a Code 128 barcode, its samples, specimens and
       control wells, and the rejected specimens included or left out (``notes``, from
       :func:`rejected_notes`; without them the sheet counts only the rejected wells it shows);
    2. the 8 x 12 grid: each well with its crop thumbnail, Sample ID and family (rejected ones marked,
       control wells hatched);
    3. a dish map per plate image: every specimen of the plate drawn where it lies, labelled with its
       well, so the technician finds it on the dish without reading pixel boxes;
    4. the pick list in fill order, with a tick box per well.
    """
    plates: dict[str, list[ManifestRow]] = {}
    for row in rows:
        plates.setdefault(row.plate, []).append(row)
    e = html.escape
    names = ", ".join(plates) or "none"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Picking sheet: plate{'s' if len(plates) > 1 else ''} {e(names)}</title>"
        f"<style>{_CSS}</style></head><body>",
    ]
    thumbs: dict[str, str] = {}

    def thumb(row: ManifestRow) -> str:
        if row.crop_path not in thumbs:
            thumbs[row.crop_path] = _thumbnail(_safe_crop(crops_dir, row.crop_path), thumbnail_px)
        return thumbs[row.crop_path]

    for plate, wells in plates.items():
        by_well = {w.well: w for w in wells}
        specimens = [w for w in wells if w.content == "specimen"]
        controls = [w.well for w in wells if w.content == "control"]
        samples = sorted({w.sample for w in specimens if w.sample})
        note = (notes or {}).get(plate)
        rejected_line = (
            note.text()
            if note is not None
            else f"Rejected specimens: {sum(w.status == 'rejected' for w in specimens)} on this plate."
        )
        fill = "column by column (A1, B1, ..., H1, A2)" if order == "column" else "row by row (A1, A2, ...)"
        parts.append(f'<section class="page plate" data-plate="{e(plate)}">')
        parts.append(
            f'<header class="sheet"><div><h1>Picking sheet · plate {e(plate)}</h1><ul>'
            f"<li>Sample{'s' if len(samples) > 1 else ''} {e(', '.join(samples) or '-')}: "
            f"{len(specimens)} specimen{'s' if len(specimens) != 1 else ''} in "
            f"{len(specimens)} well{'s' if len(specimens) != 1 else ''}, filled {fill}</li>"
            f"<li>Control wells {e(', '.join(controls) or 'none')}: leave empty</li>"
            f'<li class="rejected-note">{e(rejected_line)}</li>'
            + (f"<li>Printed {e(printed)}</li>" if printed else "")
            + f"</ul></div>{code128_svg(plate, height_mm=12.0)}</header>"
        )
        parts.append('<table class="grid"><tr><th class="rowhead"></th>')
        parts += [f"<th>{c}</th>" for c in range(1, COLUMNS + 1)]
        parts.append("</tr>")
        for r, letter in enumerate(ROWS):
            parts.append(f'<tr><th class="rowhead">{letter}</th>')
            for c in range(COLUMNS):
                name = well_name(r, c)
                row = by_well.get(name)
                if row is None:
                    parts.append(f'<td class="empty"><div class="well">{name}</div></td>')
                elif row.content == "control":
                    parts.append(
                        f'<td class="control"><div class="well">{name}</div>CONTROL<br>leave empty</td>'
                    )
                else:
                    src = thumb(row)
                    img = f'<img src="{src}" alt="{e(row.sample_id)}">' if src else "<em>no crop</em>"
                    fam = e(row.family or "unidentified") + (
                        " (rejected)" if row.status == "rejected" else ""
                    )
                    parts.append(
                        f'<td class="{e(row.status)}"><div class="well">{name}</div>{img}'
                        f'<div class="sid">{e(row.sample_id)}</div><div class="fam">{fam}</div></td>'
                    )
            parts.append("</tr>")
        parts.append("</table></section>")
        by_image: dict[tuple[int | None, str], list[ManifestRow]] = {}
        for row in specimens:
            by_image.setdefault((row.image_id, row.image_file), []).append(row)
        mapped = [(key, rs) for key, rs in by_image.items() if rs[0].image_size]
        if mapped:
            parts.append(
                f'<section class="page maps-page"><h2>Plate {e(plate)} · dish map</h2><div class="maps">'
            )
            for (_, image_file), image_rows in mapped:
                size = image_rows[0].image_size
                assert size is not None
                parts.append(_dish_map(image_file, size, image_rows, len(mapped)))
            parts.append("</div></section>")
        parts.append(
            f'<section class="page picks-page"><h2>Plate {e(plate)} · pick list (fill order)</h2>'
            '<table class="picks"><thead><tr><th>done</th><th>well</th><th>Sample ID</th><th>crop</th>'
            "<th>image file</th><th>specimen no.</th><th>box x, y, w, h (px)</th><th>family</th>"
            "<th>length (mm)</th></tr></thead><tbody>"
        )
        for row in specimens:
            src = thumb(row)
            img = f'<img src="{src}" alt="">' if src else ""
            box = ", ".join(str(v) for v in row.bbox) if row.bbox else ""
            length = f"{row.length_mm:.2f}" if row.length_mm is not None else ""
            parts.append(
                f'<tr><td><span class="box"></span></td><td><b>{row.well}</b></td>'
                f"<td><code>{e(row.sample_id)}</code></td><td>{img}</td><td>{e(row.image_file)}</td>"
                f"<td>{row.index_in_image or ''}</td><td>{box}</td>"
                f"<td>{e(row.family or '')} {e('(' + row.status + ')')}</td><td>{length}</td></tr>"
            )
        parts.append("</tbody></table></section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def plate_sheet(
    session: Session,
    plates: Sequence[str],
    crops_dir: Path,
    *,
    controls: Iterable[str] = ("G12", "H12"),
    order: str = "column",
    thumbnail_px: int = 160,
    threshold: float | None = None,
) -> str:
    """The picking sheet of recorded ``plates`` from the database (what ``labpipe plates sheet``, the
    API and the web UI serve): :func:`plate_manifest`, :func:`rejected_notes`, today's date."""
    rows = plate_manifest(session, plates, controls=controls, order=order, threshold=threshold)
    notes = rejected_notes(session, rows, threshold)
    return picking_sheet_html(
        rows, crops_dir, thumbnail_px, notes, order=order, printed=dt.date.today().isoformat()
    )


def list_plates(session: Session, sample: str | None = None) -> list[dict[str, Any]]:
    """Every plate with recorded wells: name, number of wells, samples, barcode results so far."""
    query = (
        select(BarcodeLink.plate, BarcodeLink.processid, BarcodeLink.dna_family, Image.sample_id)
        .outerjoin(Specimen, Specimen.id == BarcodeLink.specimen_id)
        .outerjoin(Image, Image.id == Specimen.image_id)
        .where(BarcodeLink.plate.is_not(None))
    )
    plates: dict[str, dict[str, Any]] = {}
    for plate, processid, dna_family, sample_id in session.execute(query):
        entry = plates.setdefault(
            plate, {"plate": plate, "wells": 0, "samples": set(), "processed": 0, "dna_family": 0}
        )
        entry["wells"] += 1
        entry["processed"] += processid is not None
        entry["dna_family"] += dna_family is not None
        if sample_id:
            entry["samples"].add(sample_id)
    out = []
    for name in sorted(plates):
        entry = plates[name]
        if sample is not None and sample not in entry["samples"]:
            continue
        out.append({**entry, "samples": sorted(entry["samples"])})
    return out

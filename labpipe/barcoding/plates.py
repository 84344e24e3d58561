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

The manifest (CSV) and the printable picking sheet (self-contained HTML: each well with its crop
thumbnail and Sample ID, then a pick list in fill order; print it, or save it as PDF from the browser)
are written from the database by :func:`plate_manifest`, so they can be written again at any time.
"""

from __future__ import annotations

import base64
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

from labpipe.barcoding.ids import specimen_code
from labpipe.db.models import BarcodeLink, Image, Specimen
from labpipe.errors import LabpipeError
from labpipe.queries.calls import CountFilter, load_calls
from labpipe.queries.rule import Outcome, resolve
from labpipe.reports.cells import SafeDictWriter
from labpipe.samples import NotFoundError

__all__ = [
    "COLUMNS",
    "ROWS",
    "LayoutResult",
    "ManifestRow",
    "WellAssignment",
    "assign_wells",
    "layout_plates",
    "list_plates",
    "manifest_csv",
    "parse_controls",
    "parse_well",
    "picking_sheet_html",
    "plate_manifest",
    "plate_wells",
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

    def as_dict(self) -> dict[str, Any]:
        return {
            "sample": self.sample,
            "plates": self.plates,
            "placed": len(self.placed),
            "wells": [r.as_dict() for r in self.placed],
            "already_on_plates": self.already_on_plates,
            "dry_run": self.dry_run,
        }


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
) -> list[tuple[int, str, str | None, float | None]]:
    """(specimen id, status, family, probability) of the sample's specimens to lay out."""
    out = []
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
    return out


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
        best guess). Specimens a person marked ``not_specimen`` are never laid out.
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
    chosen = _chosen_specimens(session, sample, family, include_rejected, threshold)
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
    result = LayoutResult(sample=sample, dry_run=dry_run)
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


_CSS = """
@page { size: A4 landscape; margin: 8mm; }
body { font-family: Helvetica, Arial, sans-serif; font-size: 9pt; margin: 0; }
h1 { font-size: 14pt; margin: 0 0 2mm 0; }
.plate { page-break-after: always; }
.plate:last-child { page-break-after: auto; }
table.grid { border-collapse: collapse; table-layout: fixed; width: 100%; }
table.grid th { background: #eee; font-size: 9pt; }
table.grid td { border: 1px solid #555; vertical-align: top; text-align: center; height: 20mm;
  overflow: hidden; padding: 1px; }
td .well { font-weight: bold; font-size: 8pt; text-align: left; }
td img { max-width: 100%; max-height: 13mm; display: block; margin: 0 auto; }
td .sid { font-family: monospace; font-size: 6.5pt; word-break: break-all; }
td .fam { font-size: 6.5pt; color: #333; }
td.control { background: repeating-linear-gradient(45deg, #eee, #eee 4px, #fff 4px, #fff 8px); }
td.empty { background: #fafafa; }
td.rejected .fam { color: #a00; }
table.picks { border-collapse: collapse; margin-top: 4mm; page-break-before: always; }
table.picks td, table.picks th { border: 1px solid #999; padding: 2px 4px; text-align: left; }
table.picks img { max-height: 14mm; }
.box { display: inline-block; width: 4mm; height: 4mm; border: 1px solid #000; }
"""


def picking_sheet_html(
    rows: Sequence[ManifestRow], crops_dir: Path, thumbnail_px: int = 160, title: str = "Picking sheet"
) -> str:
    """A printable, self-contained HTML picking sheet: per plate, the 8 x 12 grid (each well with its
    crop thumbnail, Sample ID and family; control wells hatched), then the pick list in fill order
    with a tick box per well."""
    plates: dict[str, list[ManifestRow]] = {}
    for row in rows:
        plates.setdefault(row.plate, []).append(row)
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(title)}</title><style>{_CSS}</style></head><body>",
    ]
    thumbs: dict[str, str] = {}

    def thumb(row: ManifestRow) -> str:
        if row.crop_path not in thumbs:
            thumbs[row.crop_path] = _thumbnail(_safe_crop(crops_dir, row.crop_path), thumbnail_px)
        return thumbs[row.crop_path]

    for plate, wells in plates.items():
        by_well = {w.well: w for w in wells}
        n_specimens = sum(1 for w in wells if w.content == "specimen")
        parts.append('<section class="plate">')
        parts.append(f"<h1>{e(title)}: plate {e(plate)} ({n_specimens} specimens)</h1>")
        parts.append('<table class="grid"><tr><th></th>')
        parts += [f"<th>{c}</th>" for c in range(1, COLUMNS + 1)]
        parts.append("</tr>")
        for r, letter in enumerate(ROWS):
            parts.append(f"<tr><th>{letter}</th>")
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
        parts.append("</table>")
        parts.append(
            '<table class="picks"><tr><th>done</th><th>well</th><th>Sample ID</th><th>crop</th>'
            "<th>image file</th><th>specimen no.</th><th>box x, y, w, h (px)</th><th>family</th>"
            "<th>length (mm)</th></tr>"
        )
        for row in wells:
            if row.content != "specimen":
                continue
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
        parts.append("</table></section>")
    parts.append("</body></html>")
    return "\n".join(parts)


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

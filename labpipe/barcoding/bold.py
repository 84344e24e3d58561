"""BOLD Systems submission: the specimen data spreadsheet and the image spreadsheet, with the crops.

:func:`write_bold_submission` writes, into one folder::

    bold_specimens.xlsx   sheets Lab Sheet, Taxonomy, Specimen Details, Collection Data
    bold_images.xlsx      sheet Images (one row per crop)
    images/<Sample ID>.png  the square crop of each specimen, named as the image sheet says

Every specimen is identified by its Sample ID (:mod:`labpipe.barcoding.ids`), the same text as on
the plate manifest, so BOLD's results come back to the right specimen. The family is the counted
family (a person's verification wins over the classifier; rejected specimens have no family);
phylum, class and order come from :mod:`labpipe.reports.taxonomy`. Collection data come from the
specimen's sample; institution, licence, identifier and photographer fields from ``[bold]`` in the
configuration. Header names and their order follow BOLD's templates (first row of each sheet);
the column lists are module constants, so a template change is a one-line edit.

The mapping from one specimen to one row per sheet is the pure function :func:`bold_rows`.

Which specimens go into a submission, and when there is nothing to submit, is decided by one
function, :func:`bold_submission_items`, which ``labpipe export bold``, ``/api/exports/bold.zip`` and
the web UI's BOLD download all call: specimens on the named plates, or the sample's specimens that
are on a plate (with ``all_specimens``: every specimen of the sample). When that selection is empty
it refuses with :class:`NothingToSubmitError`, the same words everywhere.
"""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from labpipe.barcoding.ids import specimen_code
from labpipe.config import BoldConfig
from labpipe.crops.store import safe_component
from labpipe.db.models import BarcodeLink, Image, Sample, Specimen
from labpipe.errors import LabpipeError
from labpipe.queries.calls import CountFilter, latest_verifiers, load_calls
from labpipe.queries.rule import Outcome, SpecimenCall, resolve
from labpipe.reports.taxonomy import higher_taxonomy
from labpipe.samples import NotFoundError

__all__ = [
    "COLLECTION_DATA",
    "IMAGE_SHEET",
    "LAB_SHEET",
    "SPECIMEN_DETAILS",
    "TAXONOMY",
    "BoldSpecimen",
    "NothingToSubmitError",
    "bold_rows",
    "bold_submission_items",
    "load_bold_specimens",
    "write_bold_submission",
]

LAB_SHEET = ["Sample ID", "Field ID", "Museum ID", "Collection Code", "Institution Storing"]
TAXONOMY = [
    "Sample ID",
    "Phylum",
    "Class",
    "Order",
    "Family",
    "Subfamily",
    "Tribe",
    "Genus",
    "Species",
    "Subspecies",
    "Identifier",
    "Identifier Email",
    "Identification Method",
    "Taxonomy Notes",
]
SPECIMEN_DETAILS = [
    "Sample ID",
    "Sex",
    "Reproduction",
    "Life Stage",
    "Extra Info",
    "Notes",
    "Voucher Status",
    "Tissue Descriptor",
    "External URLs",
    "Associated Taxa",
    "Associated Specimens",
]
COLLECTION_DATA = [
    "Sample ID",
    "Collectors",
    "Collection Date",
    "Country/Ocean",
    "State/Province",
    "Region",
    "Sector",
    "Exact Site",
    "Lat",
    "Lon",
    "Elev",
    "Depth",
    "Elevation Precision",
    "Depth Precision",
    "GPS Source",
    "Coordinate Accuracy",
    "Event Time",
    "Collection Date Accuracy",
    "Habitat",
    "Sampling Protocol",
    "Collection Notes",
    "Site Code",
    "Collection Event ID",
]
IMAGE_SHEET = [
    "Image File",
    "Original Specimen",
    "View Metadata",
    "Caption",
    "Measurement",
    "Measurement Type",
    "Sample Id",
    "Process Id",
    "License Holder",
    "License",
    "License Year",
    "License Institution",
    "License Contact",
    "Photographer",
]
SPECIMEN_SHEETS: dict[str, list[str]] = {
    "Lab Sheet": LAB_SHEET,
    "Taxonomy": TAXONOMY,
    "Specimen Details": SPECIMEN_DETAILS,
    "Collection Data": COLLECTION_DATA,
}
IMAGE_SHEET_NAME = "Images"
SPECIMENS_FILE = "bold_specimens.xlsx"
IMAGES_FILE = "bold_images.xlsx"
IMAGES_DIR = "images"


@dataclass(frozen=True)
class BoldSpecimen:
    """What the BOLD sheets say about one specimen (loaded by :func:`load_bold_specimens`)."""

    sample_id: str
    """The specimen's Sample ID."""
    specimen_id: int
    family: str | None
    """Counted family; ``None`` when rejected."""
    verified_by: str | None
    """Who verified the family (``None``: the classifier decided)."""
    probability: float | None
    model_version: str | None
    sample: Sample | None
    image_file: str
    index_in_image: int
    bbox: tuple[int, int, int, int]
    length_mm: float | None
    crop_path: str
    plate: str | None = None
    well: str | None = None
    processid: str | None = None

    @property
    def image_name(self) -> str:
        """File name of its crop in the submission's ``images/`` folder."""
        return f"{safe_component(self.sample_id)}.png"


def _text(value: Any) -> Any:
    return "" if value is None else value


def bold_rows(item: BoldSpecimen, cfg: BoldConfig, today: dt.date | None = None) -> dict[str, dict[str, Any]]:
    """One row per sheet (sheet name -> column -> value) for ``item`` (pure).

    Example
    -------
    >>> from labpipe.config import BoldConfig
    >>> item = BoldSpecimen("S1-00001-001", 1, "Carabidae", None, 0.9, "m@w1", None, "p.tif", 1,
    ...                     (0, 0, 10, 10), 3.2, "S1/1.png")
    >>> rows = bold_rows(item, BoldConfig(institution="Lab"))
    >>> rows["Taxonomy"]["Order"], rows["Lab Sheet"]["Institution Storing"]
    ('Coleoptera', 'Lab')
    """
    today = today or dt.date.today()
    sample = item.sample
    taxonomy = higher_taxonomy(item.family) if item.family else None
    if item.verified_by:
        identifier = item.verified_by
        method = "Morphology (verified by a person from the specimen image)"
        notes = f"verified by {item.verified_by}; labpipe specimen {item.specimen_id}"
    else:
        identifier = cfg.identifier or "labpipe"
        method = cfg.identification_method
        prob = f"p = {item.probability:.3f}" if item.probability is not None else "no probability"
        if item.family:
            notes = f"classifier {item.model_version or 'unknown'}, {prob}"
        else:
            notes = f"rejected by classifier {item.model_version or 'unknown'} ({prob}): family not assigned"
    x, y, w, h = item.bbox
    extra = (
        f"bulk sample {sample.id if sample else 'none'}; image {item.image_file}, "
        f"specimen {item.index_in_image}, box x={x} y={y} w={w} h={h} px"
    )
    place = f"plate {item.plate} well {item.well}" if item.plate else ""
    length = f"body length {item.length_mm:.2f} mm" if item.length_mm is not None else ""
    rows: dict[str, dict[str, Any]] = {
        "Lab Sheet": {
            "Sample ID": item.sample_id,
            "Field ID": item.sample_id,
            "Museum ID": "",
            "Collection Code": cfg.collection_code,
            "Institution Storing": cfg.institution,
        },
        "Taxonomy": {
            "Sample ID": item.sample_id,
            "Phylum": taxonomy.phylum if taxonomy else "Arthropoda",
            "Class": _text(taxonomy.class_ if taxonomy else None),
            "Order": _text(taxonomy.order if taxonomy else None),
            "Family": _text(item.family),
            "Identifier": identifier if item.family else "",
            "Identifier Email": cfg.identifier_email if item.family and not item.verified_by else "",
            "Identification Method": method if item.family else "",
            "Taxonomy Notes": notes,
        },
        "Specimen Details": {
            "Sample ID": item.sample_id,
            "Extra Info": extra,
            "Notes": "; ".join(p for p in (place, length) if p),
            "Voucher Status": "",
            "Tissue Descriptor": "whole specimen",
        },
        "Collection Data": {
            "Sample ID": item.sample_id,
            "Collectors": _text(sample.collector if sample else None),
            "Collection Date": sample.collection_date.isoformat()
            if sample and sample.collection_date
            else "",
            "Country/Ocean": cfg.country,
            "Exact Site": _text(sample.site if sample else None),
            "Lat": _text(sample.latitude if sample else None),
            "Lon": _text(sample.longitude if sample else None),
            "Habitat": _text(sample.habitat if sample else None),
            "Sampling Protocol": _text(sample.method if sample else None),
            "Collection Notes": "; ".join(
                t
                for t in ((f"fraction {sample.fraction}" if sample.fraction else ""), sample.notes or "")
                if t
            )
            if sample
            else "",
            "Collection Event ID": _text(sample.id if sample else None),
        },
        IMAGE_SHEET_NAME: {
            "Image File": item.image_name,
            "Original Specimen": "Yes",
            "View Metadata": cfg.view_metadata,
            "Caption": f"{item.family or 'Arthropoda'}, {item.sample_id} (crop of {item.image_file})",
            "Measurement": round(item.length_mm, 2) if item.length_mm is not None else "",
            "Measurement Type": "body length (mm)" if item.length_mm is not None else "",
            "Sample Id": item.sample_id,
            "Process Id": _text(item.processid),
            "License Holder": cfg.license_holder,
            "License": cfg.license,
            "License Year": cfg.license_year or today.year,
            "License Institution": cfg.license_institution,
            "License Contact": cfg.license_contact,
            "Photographer": cfg.photographer,
        },
    }
    return rows


def load_bold_specimens(
    session: Session,
    *,
    pattern: str,
    plates: Sequence[str] = (),
    sample: str | None = None,
    all_specimens: bool = False,
    threshold: float | None = None,
) -> list[BoldSpecimen]:
    """The specimens to submit: those on ``plates``, or those of ``sample`` on any plate (with
    ``all_specimens``: every specimen of ``sample``, on a plate or not). Specimens a person marked
    ``not_specimen`` are left out. Sorted by plate and well, then Sample ID."""
    if not plates and sample is None:
        raise LabpipeError(None, "nothing to export", "name plates (--plate) or a sample (--sample)")
    query = select(Specimen, Image).join(Image, Image.id == Specimen.image_id)
    links: dict[int, BarcodeLink] = {}
    link_query = select(BarcodeLink).where(BarcodeLink.specimen_id.is_not(None))
    if plates:
        link_query = link_query.where(BarcodeLink.plate.in_(list(plates)))
    elif sample is not None:
        link_query = link_query.join(Specimen, Specimen.id == BarcodeLink.specimen_id).join(
            Image, Image.id == Specimen.image_id
        )
        link_query = link_query.where(Image.sample_id == sample)
    for link in session.scalars(link_query.order_by(BarcodeLink.id)):
        if link.specimen_id is not None:
            links.setdefault(link.specimen_id, link)
    if plates:
        known = set(session.scalars(select(BarcodeLink.plate).where(BarcodeLink.plate.in_(list(plates)))))
        missing = [p for p in plates if p not in known]
        if missing:
            raise NotFoundError(", ".join(missing), "no such plate", "list plates with `labpipe plates list`")
        query = query.where(Specimen.id.in_(list(links)))
    elif all_specimens:
        query = query.where(Image.sample_id == sample)
    else:
        query = query.where(Specimen.id.in_(list(links)))
    pairs = session.execute(query).all()
    ids = [s.id for s, _ in pairs]
    calls: dict[int, SpecimenCall] = {c.specimen_id: c for c in load_calls(session, CountFilter(), ids)}
    verifiers = latest_verifiers(session, ids)
    samples = {
        s.id: s for s in session.scalars(select(Sample).where(Sample.id.in_({i.sample_id for _, i in pairs})))
    }
    out = []
    for spec, image in pairs:
        call = calls.get(spec.id)
        res = resolve(call, threshold) if call is not None else None
        if res is not None and res.outcome is Outcome.EXCLUDED:
            continue
        family = res.family if res is not None and res.outcome is Outcome.ACCEPTED else None
        link = links.get(spec.id)
        code = (
            link.sampleid
            if link is not None
            else specimen_code(image.sample_id, image.id, spec.index_in_image, spec.id, pattern)
        )
        out.append(
            BoldSpecimen(
                sample_id=code,
                specimen_id=spec.id,
                family=family,
                verified_by=verifiers.get(spec.id) if res is not None and res.verified else None,
                probability=call.probability if call else None,
                model_version=call.model_version if call else None,
                sample=samples.get(image.sample_id) if image.sample_id else None,
                image_file=image.file_name,
                index_in_image=spec.index_in_image,
                bbox=(spec.x, spec.y, spec.w, spec.h),
                length_mm=spec.length_mm,
                crop_path=spec.crop_path,
                plate=link.plate if link else None,
                well=link.well if link else None,
                processid=link.processid if link else None,
            )
        )
    out.sort(key=lambda b: (b.plate or "\uffff", b.well or "", b.sample_id))
    return out


class NothingToSubmitError(LabpipeError):
    """A BOLD submission was asked for, but the selection holds no specimen (nothing is plated)."""


def bold_submission_items(
    session: Session,
    *,
    pattern: str,
    plates: Sequence[str] = (),
    sample: str | None = None,
    all_specimens: bool = False,
    threshold: float | None = None,
) -> list[BoldSpecimen]:
    """The specimens of a BOLD submission, or a refusal: the one rule every caller follows.

    Parameters are those of :func:`load_bold_specimens`. Raises :class:`NothingToSubmitError` when
    the selection is empty (a sample none of whose specimens is on a plate, without
    ``all_specimens``; a sample with no specimens at all), :class:`NotFoundError` for an unknown
    plate, and :class:`LabpipeError` when neither plates nor a sample is named.
    """
    items = load_bold_specimens(
        session,
        pattern=pattern,
        plates=plates,
        sample=sample,
        all_specimens=all_specimens,
        threshold=threshold,
    )
    if items:
        return items
    if plates:
        raise NothingToSubmitError(
            ", ".join(plates), "no specimen on these plates can be submitted", "they hold none left to submit"
        )
    if all_specimens or not load_bold_specimens(
        session, pattern=pattern, sample=sample, all_specimens=True, threshold=threshold
    ):
        raise NothingToSubmitError(
            f"sample {sample}",
            "has no specimens to submit to BOLD",
            "process its images first, or check the sample id",
        )
    raise NothingToSubmitError(
        f"sample {sample}",
        "none of its specimens is on a 96-well plate, so there is nothing to submit to BOLD",
        "lay them out first with labpipe plates layout or the sample page's 'Lay out on new plates', "
        "or ask for every specimen of the sample, plated or not: --all, or 'every specimen' on the "
        "sample page",
    )


def _write_sheet(ws: Any, columns: list[str], rows: list[dict[str, Any]]) -> None:
    from openpyxl.styles import Font

    ws.append(columns)
    for cell in ws[1]:
        cell.font = Font(bold=True)
    for row in rows:
        ws.append([row.get(c, "") for c in columns])
        for cell in ws[ws.max_row]:
            if isinstance(cell.value, str) and cell.value.startswith("="):
                cell.data_type = "s"  # text, never a formula (a sample folder named "=HYPERLINK(...)")
    ws.freeze_panes = "B2"
    for i, name in enumerate(columns, start=1):
        width = max([len(name), *(len(str(r.get(name, ""))) for r in rows[:200])]) + 2
        ws.column_dimensions[ws.cell(row=1, column=i).column_letter].width = min(width, 60)


def write_bold_submission(
    items: Sequence[BoldSpecimen],
    out_dir: Path,
    crops_dir: Path,
    cfg: BoldConfig,
    today: dt.date | None = None,
) -> dict[str, Any]:
    """Write the two spreadsheets and copy the crops into ``out_dir`` (created if needed).

    Returns the paths written and the Sample IDs whose crop file was missing (their image row is
    still written; add the file by hand or re-process the image).
    """
    from openpyxl import Workbook

    if not items:
        raise LabpipeError(
            out_dir, "no specimens to export", "lay specimens out on plates first, or use --all"
        )
    out_dir = Path(out_dir)
    (out_dir / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    rows = [bold_rows(item, cfg, today) for item in items]
    book = Workbook()
    first = True
    for sheet, columns in SPECIMEN_SHEETS.items():
        ws = book.active if first else book.create_sheet()
        first = False
        ws.title = sheet
        _write_sheet(ws, columns, [r[sheet] for r in rows])
    specimens_path = out_dir / SPECIMENS_FILE
    book.save(specimens_path)
    images = Workbook()
    ws = images.active
    ws.title = IMAGE_SHEET_NAME
    _write_sheet(ws, IMAGE_SHEET, [r[IMAGE_SHEET_NAME] for r in rows])
    images_path = out_dir / IMAGES_FILE
    images.save(images_path)
    missing = []
    root = crops_dir.resolve()
    for item in items:
        source = (root / item.crop_path).resolve() if item.crop_path else None
        if source is None or not source.is_relative_to(root) or not source.is_file():
            missing.append(item.sample_id)
            continue
        shutil.copyfile(source, out_dir / IMAGES_DIR / item.image_name)
    return {
        "specimens_xlsx": str(specimens_path),
        "images_xlsx": str(images_path),
        "images_dir": str(out_dir / IMAGES_DIR),
        "specimens": len(items),
        "missing_crops": missing,
    }

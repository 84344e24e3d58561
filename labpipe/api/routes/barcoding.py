"""``/api/plates`` and ``/api/barcodes``: plate layouts, manifests, picking sheets, BOLD results."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, HTTPException, Path, Query, Response, UploadFile, status

from labpipe.api.deps import SessionDep, SettingsDep, require_read, require_write
from labpipe.api.schemas import (
    AgreementOut,
    BarcodeImportOut,
    ErrorOut,
    LayoutOut,
    LayoutRequest,
    PlateOut,
    WellOut,
)
from labpipe.barcoding.agreement import barcode_agreement
from labpipe.barcoding.import_results import import_barcodes
from labpipe.barcoding.plates import (
    ManifestRow,
    layout_plates,
    list_plates,
    manifest_csv,
    plate_manifest,
    plate_sheet,
)

__all__ = ["router"]

router = APIRouter(tags=["barcoding"])
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut},
    401: {"model": ErrorOut},
    404: {"model": ErrorOut},
}
_WRITE_ERRORS: dict[int | str, dict[str, Any]] = {**_ERRORS, 403: {"model": ErrorOut}}
PlateName = Annotated[str, Path(min_length=1, max_length=64)]
Threshold = Annotated[float | None, Query(ge=0.0, le=1.0)]


def _well(row: ManifestRow) -> dict[str, Any]:
    out = dataclasses.asdict(row)
    out["bbox"] = list(row.bbox) if row.bbox else None
    return out


@router.get("/plates", response_model=list[PlateOut], dependencies=[Depends(require_read)], responses=_ERRORS)
def get_plates(
    session: SessionDep, sample: Annotated[str | None, Query(max_length=64)] = None
) -> list[dict[str, Any]]:
    """Plates with recorded wells."""
    return list_plates(session, sample)


@router.get(
    "/plates/{plate}", response_model=list[WellOut], dependencies=[Depends(require_read)], responses=_ERRORS
)
def get_plate(
    plate: PlateName, session: SessionDep, settings: SettingsDep, threshold: Threshold = None
) -> list[dict[str, Any]]:
    """Every well of a plate, in fill order (control wells included)."""
    cfg = settings.plates
    return [
        _well(r)
        for r in plate_manifest(session, [plate], controls=cfg.controls, order=cfg.order, threshold=threshold)
    ]


@router.get(
    "/plates/{plate}/manifest.csv",
    response_class=Response,
    dependencies=[Depends(require_read)],
    responses={**_ERRORS, 200: {"content": {"text/csv": {}}, "description": "The plate manifest."}},
)
def get_plate_manifest(plate: PlateName, session: SessionDep, settings: SettingsDep) -> Response:
    """The plate manifest as CSV."""
    cfg = settings.plates
    rows = plate_manifest(session, [plate], controls=cfg.controls, order=cfg.order)
    return Response(manifest_csv(rows), media_type="text/csv")


@router.get(
    "/plates/{plate}/sheet.html",
    response_class=Response,
    dependencies=[Depends(require_read)],
    responses={**_ERRORS, 200: {"content": {"text/html": {}}, "description": "Printable picking sheet."}},
)
def get_plate_sheet(plate: PlateName, session: SessionDep, settings: SettingsDep) -> Response:
    """The printable picking sheet (A4 landscape): the plate's barcode, each well with its crop
    thumbnail and Sample ID, a dish map of where each specimen lies, the pick list, and how many
    rejected specimens are on the plate or were left out."""
    cfg = settings.plates
    page = plate_sheet(
        session,
        [plate],
        settings.storage.crops_dir,
        controls=cfg.controls,
        order=cfg.order,
        thumbnail_px=cfg.thumbnail_px,
    )
    return Response(page, media_type="text/html")


@router.post(
    "/plates/layout", response_model=LayoutOut, dependencies=[Depends(require_write)], responses=_WRITE_ERRORS
)
def post_plates_layout(body: LayoutRequest, session: SessionDep, settings: SettingsDep) -> dict[str, Any]:
    """Lay a sample's specimens out on new 96-well plates and record the wells."""
    cfg = settings.plates
    try:
        result = layout_plates(
            session,
            body.sample,
            pattern=settings.bold.sample_id_pattern,
            family=body.family,
            include_rejected=body.include_rejected,
            order=body.order or cfg.order,
            controls=cfg.controls if body.controls is None else body.controls,
            prefix=cfg.prefix if body.prefix is None else body.prefix,
            threshold=body.threshold,
            dry_run=body.dry_run,
        )
    except ValueError as exc:  # bad control wells
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST, f"{exc} (controls are wells such as 'G12,H12')"
        ) from None
    if not body.dry_run:
        session.commit()
    out = result.as_dict()
    out["wells"] = [_well(r) for r in result.placed]
    return out


@router.post(
    "/barcodes/import",
    response_model=BarcodeImportOut,
    dependencies=[Depends(require_write)],
    responses=_WRITE_ERRORS,
)
def post_barcodes_import(
    session: SessionDep,
    settings: SettingsDep,
    file: Annotated[UploadFile, File(description="BOLD results table (TSV).")],
    marker: Annotated[str, Query(max_length=32)] = "COI-5P",
    dry_run: bool = False,
) -> dict[str, Any]:
    """Link the rows of a BOLD results table to specimens by Sample ID (unknown and duplicate ids
    are reported, not guessed)."""
    text = file.file.read().decode("utf-8-sig", errors="replace")
    report = import_barcodes(
        session,
        text,
        file.filename or "upload.tsv",
        pattern=settings.bold.sample_id_pattern,
        marker=marker or None,
        dry_run=dry_run,
    )
    if not dry_run:
        session.commit()
    return report.as_dict()


@router.get(
    "/barcodes/agreement",
    response_model=AgreementOut,
    dependencies=[Depends(require_read)],
    responses=_ERRORS,
)
def get_barcodes_agreement(
    session: SessionDep,
    sample: Annotated[str | None, Query(max_length=64)] = None,
    threshold: Threshold = None,
) -> dict[str, Any]:
    """Image-based against DNA-based family: confusion table, per-family agreement, disagreements."""
    report = barcode_agreement(session, sample, threshold, mark=False)
    return report.as_dict()


@router.post(
    "/barcodes/agreement",
    response_model=AgreementOut,
    dependencies=[Depends(require_write)],
    responses=_WRITE_ERRORS,
)
def post_barcodes_agreement(
    session: SessionDep,
    sample: Annotated[str | None, Query(max_length=64)] = None,
    threshold: Threshold = None,
) -> dict[str, Any]:
    """As the GET, and record each record's agreement, marking disagreements for review."""
    report = barcode_agreement(session, sample, threshold, mark=True)
    session.commit()
    return report.as_dict()

"""``/api/images`` and ``/api/specimens``: images with status, specimens with filters and paging, crops."""

from __future__ import annotations

from pathlib import Path as FilePath
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, status
from fastapi.responses import FileResponse, Response
from sqlalchemy.orm import Session

from labpipe.api.conditional import content_response
from labpipe.api.deps import SessionDep, SettingsDep, require_read
from labpipe.api.schemas import ErrorOut, ImageOut, Page, SpecimenDetailOut, SpecimenOut
from labpipe.barcoding.ids import specimen_code
from labpipe.crops.store import content_digest
from labpipe.db.models import Specimen
from labpipe.queries import records
from labpipe.queries.listings import (
    ImageFilter,
    SpecimenFilter,
    SpecimenRow,
    image_page,
    specimen_page,
    specimen_rows,
)
from labpipe.samples import image_dict

__all__ = ["router", "safe_path"]

router = APIRouter(tags=["images and specimens"], dependencies=[Depends(require_read)])
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut},
    401: {"model": ErrorOut},
    404: {"model": ErrorOut},
}
DbId = Annotated[int, Path(ge=1, le=2**31 - 1)]
Limit = Annotated[int, Query(ge=1, le=10_000)]
Offset = Annotated[int, Query(ge=0, le=2**31 - 1)]
StatusName = Literal["queued", "processing", "done", "failed", "quarantined"]
SpecimenStatus = Literal["accepted", "rejected", "excluded", "unclassified"]


def safe_path(root: FilePath, relative: str) -> FilePath | None:
    """``root / relative`` if that is an existing file inside ``root`` (links resolved), else ``None``.

    >>> safe_path(FilePath("/tmp"), "../etc/passwd") is None
    True
    """
    if not relative or "\x00" in relative:
        return None
    base = root.resolve()
    try:
        path = (base / relative).resolve()
    except (OSError, RuntimeError):
        return None
    if not path.is_relative_to(base) or not path.is_file():
        return None
    return path


@router.get("/images", response_model=Page[ImageOut], responses=_ERRORS)
def get_images(
    session: SessionDep,
    settings: SettingsDep,
    sample: Annotated[str | None, Query(max_length=64)] = None,
    image_status: Annotated[StatusName | None, Query(alias="status")] = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> dict[str, Any]:
    """Plate images with their processing status (newest first)."""
    limit = min(limit, settings.api.max_page_size)
    total, rows = image_page(
        session, ImageFilter(status=image_status, sample=sample), limit=limit, offset=offset
    )
    return {"total": total, "limit": limit, "offset": offset, "items": [image_dict(i) for i in rows]}


@router.get("/images/{image_id}", response_model=ImageOut, responses=_ERRORS)
def get_image(image_id: DbId, session: SessionDep) -> dict[str, Any]:
    """One plate image."""
    image = records.get_image(session, image_id)
    if image is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"image {image_id}: no such image")
    return image_dict(image)


def _specimen_out(row: SpecimenRow, pattern: str) -> dict[str, Any]:
    call, res = row.call, row.resolution
    return {
        "specimen_id": row.specimen_id,
        "sample": row.sample,
        "image_id": row.image_id,
        "index_in_image": row.index_in_image,
        "code": specimen_code(row.sample, row.image_id, row.index_in_image, row.specimen_id, pattern),
        "bbox": list(row.bbox),
        "score": row.score,
        "length_mm": row.length_mm,
        "width_mm": row.width_mm,
        "status": res.outcome.value,
        "family": res.family,
        "best_family": row.best_family,
        "probability": call.probability,
        "reason": call.reason,
        "model_version": call.model_version,
        "top_k": [{"family": f, "probability": p} for f, p in call.top_k],
        "verification": call.verification,
        "verified_family": call.verified_family,
        "crop_url": f"/api/specimens/{row.specimen_id}/crop",
    }


@router.get("/specimens", response_model=Page[SpecimenOut], responses=_ERRORS)
def get_specimens(
    session: SessionDep,
    settings: SettingsDep,
    sample: Annotated[str | None, Query(max_length=64)] = None,
    image_id: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
    family: Annotated[str | None, Query(max_length=128, description="Counted family (accepted).")] = None,
    specimen_status: Annotated[SpecimenStatus | None, Query(alias="status")] = None,
    min_probability: Annotated[float | None, Query(ge=0.0, le=1.0)] = None,
    threshold: Annotated[
        float | None, Query(ge=0.0, le=1.0, description="Query-time acceptance threshold.")
    ] = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> dict[str, Any]:
    """Specimens with their counted family and classification, filtered and paged (by specimen id)."""
    limit = min(limit, settings.api.max_page_size)
    flt = SpecimenFilter(
        sample=sample,
        image_id=image_id,
        counted_family=family,
        state=specimen_status,
        p_min=min_probability,
        threshold=threshold,
        sort="oldest",
    )
    total, rows = specimen_page(session, flt, limit=limit, offset=offset)
    items = [_specimen_out(r, settings.bold.sample_id_pattern) for r in rows]
    return {"total": total, "limit": limit, "offset": offset, "items": items}


def _get_specimen(session: Session, specimen_id: int) -> Specimen:
    spec = records.get_specimen(session, specimen_id)
    if spec is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"specimen {specimen_id}: no such specimen")
    return spec


@router.get("/specimens/{specimen_id}", response_model=SpecimenDetailOut, responses=_ERRORS)
def get_specimen(
    specimen_id: DbId,
    session: SessionDep,
    settings: SettingsDep,
    threshold: Annotated[float | None, Query(ge=0.0, le=1.0)] = None,
) -> dict[str, Any]:
    """One specimen with every classification, verification and barcode record."""
    spec = _get_specimen(session, specimen_id)
    (row,) = specimen_rows(session, [spec.id], threshold)
    out = _specimen_out(row, settings.bold.sample_id_pattern)
    out["classifications"] = [
        {
            "model_version": c.model.version,
            "family": c.family,
            "probability": c.probability,
            "rejected": c.rejected,
            "reason": c.reason,
            "top_k": [{"family": str(f), "probability": float(p)} for f, p in c.top_k],
            "created_at": c.created_at,
        }
        for c in spec.classifications
    ]
    out["verifications"] = [
        {
            "status": v.status,
            "family": v.family,
            "verified_by": v.verified_by,
            "verified_at": v.verified_at,
            "note": v.note,
        }
        for v in spec.verifications
    ]
    out["barcodes"] = [
        {
            "sampleid": b.sampleid,
            "plate": b.plate,
            "well": b.well,
            "processid": b.processid,
            "bin_uri": b.bin_uri,
            "dna_family": b.dna_family,
            "agreement": b.agreement,
            "needs_review": b.needs_review,
        }
        for b in spec.barcode_links
    ]
    return out


@router.get(
    "/specimens/{specimen_id}/crop",
    response_class=FileResponse,
    responses={**_ERRORS, 200: {"content": {"image/png": {}}, "description": "The square crop (PNG)."}},
)
def get_specimen_crop(
    request: Request, specimen_id: DbId, session: SessionDep, settings: SettingsDep
) -> Response:
    """The specimen's square crop. Only files inside the crops folder are ever served.

    Its ETag is the sha256 of the crop's bytes and it is revalidated on every use (``304`` when
    unchanged): a specimen id may name another crop after its plate is processed again.
    """
    spec = _get_specimen(session, specimen_id)
    path = safe_path(settings.storage.crops_dir, spec.crop_path)
    try:
        digest = content_digest(path) if path is not None else None
    except OSError:
        digest = None
    if path is None or digest is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"specimen {specimen_id}: crop file is missing")
    return content_response(request, path, digest, "image/png", filename=f"specimen-{specimen_id}.png")

"""``/api/samples``: list, inspect and import samples."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, HTTPException, Query, UploadFile, status

from labpipe.api.deps import SessionDep, SettingsDep, require_read, require_write
from labpipe.api.schemas import ErrorOut, Page, SampleDetailOut, SampleImportOut, SampleOut
from labpipe.queries.samples import count_samples
from labpipe.samples import SampleImportError, import_samples, list_samples, sample_detail

__all__ = ["router"]

router = APIRouter(prefix="/samples", tags=["samples"])
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut},
    401: {"model": ErrorOut},
    404: {"model": ErrorOut},
}


@router.get("", response_model=Page[SampleOut], dependencies=[Depends(require_read)], responses=_ERRORS)
def get_samples(
    session: SessionDep,
    settings: SettingsDep,
    site: Annotated[str | None, Query(max_length=255)] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
) -> dict[str, Any]:
    """Samples (of a site), with their number of images (per status) and specimens."""
    limit = min(limit, settings.api.max_page_size)
    total = count_samples(session, site)
    items = list_samples(session, site=site, limit=limit, offset=offset)
    return {"total": total, "limit": limit, "offset": offset, "items": items}


@router.get(
    "/{sample_id}", response_model=SampleDetailOut, dependencies=[Depends(require_read)], responses=_ERRORS
)
def get_sample(sample_id: str, session: SessionDep) -> dict[str, Any]:
    """One sample: its fields, its images (with status) and its family counts."""
    return sample_detail(session, sample_id)


@router.post(
    "/import",
    response_model=SampleImportOut,
    dependencies=[Depends(require_write)],
    responses={
        **_ERRORS,
        403: {"model": ErrorOut},
        400: {"model": ErrorOut},
        422: {"description": "Rows are wrong; nothing was imported. `errors` lists each row and column."},
    },
)
def post_samples_import(
    session: SessionDep,
    file: Annotated[UploadFile, File(description="Samples CSV (see `labpipe samples import --help`).")],
    skip_bad: bool = False,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Import samples from a CSV upload: every row validated; nothing imported when any row is
    wrong unless ``skip_bad``."""
    name = file.filename or "upload.csv"
    try:
        text = file.file.read().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST, f"{name}: not UTF-8 text (byte {exc.start}); save it as CSV UTF-8"
        ) from None
    try:
        report = import_samples(session, text, name, skip_bad=skip_bad, dry_run=dry_run)
    except SampleImportError as exc:
        session.rollback()
        if not exc.errors:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, exc.message) from None
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            [{"msg": exc.problem, **e.as_dict()} for e in exc.errors],
        ) from None
    if not dry_run:
        session.commit()
    return report.as_dict()

"""96-well plates for barcoding: lay a sample out on new plates (as ``labpipe plates layout``), and
a plate's manifest and picking sheet."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Form, HTTPException, Request, status
from fastapi.responses import HTMLResponse, Response

from labpipe.api.deps import SessionDep, SettingsDep
from labpipe.barcoding import plates as barcoding_plates
from labpipe.barcoding.plates import layout_plates, manifest_csv, plate_manifest
from labpipe.crops.store import safe_component
from labpipe.errors import LabpipeError
from labpipe.web.auth import check_write, get_viewer
from labpipe.web.routes.common import ViewerDep, download, redirect, with_flash

__all__ = ["router"]

router = APIRouter(include_in_schema=False)


@router.post("/plates/layout")
def plate_layout(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    sample: Annotated[str, Form(max_length=64)],
    csrf: Annotated[str, Form(max_length=128)] = "",
    family: Annotated[str, Form(max_length=128)] = "",
    include_rejected: Annotated[bool, Form()] = False,
) -> Response:
    """Lay the sample's specimens out on new 96-well plates (as ``labpipe plates layout``)."""
    check_write(request, get_viewer(request), csrf)
    cfg = settings.plates
    try:
        result = layout_plates(
            session,
            sample,
            pattern=settings.bold.sample_id_pattern,
            family=" ".join(family.split()) or None,
            include_rejected=include_rejected,
            order=cfg.order,
            controls=cfg.controls,
            prefix=cfg.prefix,
        )
    except (LabpipeError, ValueError) as exc:
        session.rollback()
        raise HTTPException(status.HTTP_400_BAD_REQUEST, getattr(exc, "message", str(exc))) from None
    session.commit()
    return redirect(with_flash(f"/samples/{quote(sample, safe='')}", "layout", n=len(result.placed)))


@router.get("/plates/{plate}/manifest.csv")
def plate_manifest_csv(plate: str, viewer: ViewerDep, session: SessionDep, settings: SettingsDep) -> Response:
    cfg = settings.plates
    rows = plate_manifest(session, [plate[:64]], controls=cfg.controls, order=cfg.order)
    return download(manifest_csv(rows), f"{safe_component(plate)}-manifest.csv", "text/csv")


@router.get("/plates/{plate}/sheet", response_class=HTMLResponse)
def plate_sheet(plate: str, viewer: ViewerDep, session: SessionDep, settings: SettingsDep) -> HTMLResponse:
    cfg = settings.plates
    return HTMLResponse(
        barcoding_plates.plate_sheet(
            session,
            [plate[:64]],
            settings.storage.crops_dir,
            controls=cfg.controls,
            order=cfg.order,
            thumbnail_px=cfg.thumbnail_px,
        )
    )

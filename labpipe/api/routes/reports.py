"""``/api/counts`` and ``/api/exports/...``: counts, CSV, community matrix, Darwin Core Archive, BOLD,
and the reviewed plates as COCO detection training data."""

from __future__ import annotations

import datetime as dt
import io
import tempfile
import zipfile
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Response
from sqlalchemy.orm import Session

from labpipe.api.deps import SessionDep, SettingsDep, require_read
from labpipe.api.schemas import CountsOut, ErrorOut
from labpipe.barcoding.bold import bold_submission_items, write_bold_submission
from labpipe.queries.calls import CountFilter
from labpipe.registry import find_model
from labpipe.reports.coco import coco_export
from labpipe.reports.counts import compute_counts, counts_to_csv, matrix_to_csv
from labpipe.reports.dwca import export_dwca

__all__ = ["CountQuery", "router"]

router = APIRouter(tags=["counts and exports"], dependencies=[Depends(require_read)])
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut},
    401: {"model": ErrorOut},
    404: {"model": ErrorOut},
}


class CountQuery:
    """The filters of every count and export (the options of ``labpipe counts``)."""

    def __init__(
        self,
        sample: Annotated[list[str] | None, Query(description="Sample ids (repeatable).")] = None,
        site: Annotated[str | None, Query(max_length=255)] = None,
        date_from: Annotated[dt.date | None, Query(description="Collected on or after.")] = None,
        date_to: Annotated[dt.date | None, Query(description="Collected on or before.")] = None,
        model: Annotated[
            str | None, Query(max_length=255, description="Classifier version or unique prefix.")
        ] = None,
        threshold: Annotated[
            float | None,
            Query(ge=0.0, le=1.0, description="Acceptance threshold (default: stored decisions)."),
        ] = None,
    ) -> None:
        self.samples = tuple(sample or ())
        self.site = site
        self.date_from = date_from
        self.date_to = date_to
        self.model = model
        self.threshold = threshold

    def filter(self, session: Session) -> CountFilter:
        version = find_model(session, self.model).version if self.model else None
        return CountFilter(self.samples, self.site, self.date_from, self.date_to, version)

    def table(self, session: Session) -> list[dict[str, Any]]:
        return [c.as_dict() for c in compute_counts(session, self.filter(session), threshold=self.threshold)]


Filters = Annotated[CountQuery, Depends()]


@router.get("/counts", response_model=list[CountsOut], responses=_ERRORS)
def get_counts(session: SessionDep, q: Filters) -> list[dict[str, Any]]:
    """Per sample: accepted counts per family at the threshold, rejected, verified, and expected
    counts (sum of calibrated probabilities) with 95 % intervals."""
    return q.table(session)


_CSV = {200: {"content": {"text/csv": {}}, "description": "CSV"}}


@router.get("/exports/counts.csv", response_class=Response, responses={**_ERRORS, **_CSV})
def get_counts_csv(session: SessionDep, q: Filters, expected: bool = False) -> Response:
    """Long CSV: sample, family, count (and expected, expected_low, expected_high with ``expected``)."""
    return Response(counts_to_csv(q.table(session), expected=expected), media_type="text/csv")


@router.get("/exports/matrix.csv", response_class=Response, responses={**_ERRORS, **_CSV})
def get_matrix_csv(session: SessionDep, q: Filters, expected: bool = False) -> Response:
    """Community matrix: samples as rows, families as columns (first column ``sample``)."""
    return Response(
        matrix_to_csv(q.table(session), "expected" if expected else "count"), media_type="text/csv"
    )


_ZIP = {200: {"content": {"application/zip": {}}, "description": "A zip archive."}}


@router.get("/exports/dwca.zip", response_class=Response, responses={**_ERRORS, **_ZIP})
def get_dwca(session: SessionDep, settings: SettingsDep, q: Filters) -> Response:
    """Darwin Core Archive for GBIF: sample events, family occurrences, meta.xml, eml.xml.

    Dataset metadata still unset in ``[dwca]`` (rights holder, licence, contact) is named in the
    ``X-Labpipe-Warning`` header, as ``labpipe export dwca`` warns."""
    with tempfile.TemporaryDirectory(prefix="labpipe-dwca-") as tmp:
        path = Path(tmp) / "dwca.zip"
        result = export_dwca(session, path, settings.dwca, q.filter(session), q.threshold)
        content = path.read_bytes()
    headers = {"Content-Disposition": 'attachment; filename="labpipe-dwca.zip"'}
    if result["warnings"]:
        headers["X-Labpipe-Warning"] = "; ".join(result["warnings"])
    return Response(content, media_type="application/zip", headers=headers)


@router.get(
    "/exports/bold.zip", response_class=Response, responses={**_ERRORS, 404: {"model": ErrorOut}, **_ZIP}
)
def get_bold(
    session: SessionDep,
    settings: SettingsDep,
    plate: Annotated[list[str] | None, Query(description="Plates (repeatable).")] = None,
    sample: Annotated[str | None, Query(max_length=64)] = None,
    all_specimens: Annotated[
        bool, Query(alias="all", description="With sample: also specimens not on plates.")
    ] = False,
    threshold: Annotated[float | None, Query(ge=0.0, le=1.0)] = None,
) -> Response:
    """BOLD submission: bold_specimens.xlsx, bold_images.xlsx and images/ (the crops), zipped.

    Refused (400) when nothing of the selection is on a plate (without ``all``), with the words of
    ``labpipe export bold``."""
    items = bold_submission_items(
        session,
        pattern=settings.bold.sample_id_pattern,
        plates=tuple(plate or ()),
        sample=sample,
        all_specimens=all_specimens,
        threshold=threshold,
    )
    buffer = io.BytesIO()
    with tempfile.TemporaryDirectory(prefix="labpipe-bold-") as tmp:
        root = Path(tmp)
        write_bold_submission(items, root, settings.storage.crops_dir, settings.bold)
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(root.rglob("*")):
                if path.is_file():
                    archive.write(path, path.relative_to(root).as_posix())
    return Response(
        buffer.getvalue(),
        media_type="application/zip",
        headers={"Content-Disposition": 'attachment; filename="labpipe-bold.zip"'},
    )


@router.get("/exports/coco.json", responses=_ERRORS)
def get_coco(
    session: SessionDep,
    settings: SettingsDep,
    sample: Annotated[str | None, Query(max_length=64, description="Only this sample's plates.")] = None,
    reviewed_only: Annotated[
        bool, Query(description="Only plates marked boxes reviewed (not those merely fully verified).")
    ] = False,
) -> dict[str, Any]:
    """COCO detection file of the reviewed plates, as ``labpipe export coco``: human-checked boxes
    (``specimen``, with the family as an attribute), "not a specimen" verdicts as ``debris``
    negatives, the scale per image; ``file_name`` relative to the archive folder."""
    return coco_export(session, settings.storage.archive_dir, sample=sample, reviewed_only=reviewed_only)

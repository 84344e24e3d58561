"""Downloads of counts and archives: ``counts.csv`` (long), ``matrix.csv`` (community matrix),
``dwca.zip`` (Darwin Core Archive), ``bold.zip`` (BOLD submission) and ``coco.json`` (the reviewed
plates as detector training data), as the API makes them."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status
from fastapi.responses import Response

from labpipe.api.deps import SessionDep, SettingsDep
from labpipe.api.routes import reports as api_reports
from labpipe.crops.store import safe_component
from labpipe.errors import LabpipeError
from labpipe.queries.calls import CountFilter
from labpipe.reports.counts import compute_counts, counts_to_csv, matrix_to_csv
from labpipe.samples import NotFoundError
from labpipe.web.routes.common import ViewerDep, download

__all__ = ["router"]

router = APIRouter(include_in_schema=False)


def _export_name(samples: list[str], what: str) -> str:
    """
    >>> _export_name(["S 1"], "counts.csv"), _export_name([], "matrix.csv")
    ('S_1-counts.csv', 'labpipe-matrix.csv')
    """
    stem = safe_component(samples[0]) if len(samples) == 1 else "labpipe"
    return f"{stem}-{what}"


@router.get("/exports/{kind}")
def export(
    kind: str,
    viewer: ViewerDep,
    session: SessionDep,
    settings: SettingsDep,
    sample: Annotated[list[str] | None, Query()] = None,
    threshold: Annotated[float | None, Query(ge=0.0, le=1.0)] = None,
    expected: bool = False,
    all_specimens: Annotated[bool, Query(alias="all")] = False,
    reviewed_only: bool = False,
) -> Response:
    """Downloads: ``counts.csv`` (long), ``matrix.csv`` (community matrix), ``dwca.zip`` (Darwin
    Core Archive), ``bold.zip`` (BOLD submission) for the given samples (all without).

    ``bold.zip`` follows ``labpipe export bold``: the sample's plated specimens, every specimen with
    ``all=true``, and the same refusal when none is plated (one rule:
    :func:`labpipe.barcoding.bold.bold_submission_items`)."""
    samples = [s[:64] for s in (sample or [])]
    flt = CountFilter(samples=tuple(samples))
    if kind == "counts.csv":
        table = [c.as_dict() for c in compute_counts(session, flt, threshold=threshold)]
        name = _export_name(samples, "counts-expected.csv" if expected else "counts.csv")
        return download(counts_to_csv(table, expected=expected), name, "text/csv")
    if kind == "matrix.csv":
        table = [c.as_dict() for c in compute_counts(session, flt, threshold=threshold)]
        text = matrix_to_csv(table, "expected" if expected else "count")
        return download(text, _export_name(samples, "matrix.csv"), "text/csv")
    if kind == "dwca.zip":
        q = api_reports.CountQuery(sample=samples or None, threshold=threshold)
        response = api_reports.get_dwca(session, settings, q)
        return download(response.body, _export_name(samples, "dwca.zip"), "application/zip")
    if kind == "coco.json":
        doc = api_reports.get_coco(session, settings, samples[0] if samples else None, reviewed_only)
        text = json.dumps(doc, indent=1)
        return download(text, _export_name(samples, "coco.json"), "application/json")
    if kind == "bold.zip":
        if len(samples) != 1:
            raise HTTPException(
                status.HTTP_400_BAD_REQUEST, "a BOLD export is made per sample: give ?sample="
            )
        try:
            response = api_reports.get_bold(
                session,
                settings,
                plate=None,
                sample=samples[0],
                all_specimens=all_specimens,
                threshold=threshold,
            )
        except LabpipeError as exc:  # an HTML page for the person who clicked, not JSON
            missing = isinstance(exc, NotFoundError)
            code = status.HTTP_404_NOT_FOUND if missing else status.HTTP_400_BAD_REQUEST
            raise HTTPException(code, exc.message) from None
        return download(response.body, _export_name(samples, "bold.zip"), "application/zip")
    raise HTTPException(
        status.HTTP_404_NOT_FOUND,
        f"{kind}: no such export (counts.csv, matrix.csv, dwca.zip, bold.zip, coco.json)",
    )

"""Samples: the list (by site), and one sample's page (its counts with the expected counts, the
counts corrected for the model's validated errors, their intervals, the bar chart, its images,
exports and plate layout)."""

from __future__ import annotations

from urllib.parse import quote

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import HTMLResponse

from labpipe.api.deps import SessionDep, SettingsDep
from labpipe.barcoding.plates import list_plates
from labpipe.queries import records
from labpipe.queries.calls import CountFilter
from labpipe.queries.samples import count_samples, sample_images, unassigned_specimens
from labpipe.reports.counts import OTHER, REJECTED, compute_counts
from labpipe.samples import list_samples
from labpipe.web.charts import count_chart
from labpipe.web.render import family_colours
from labpipe.web.routes.common import (
    LIST_PAGE,
    ViewerDep,
    int_param,
    page_offset,
    pager,
    probability_param,
    render_page,
)

__all__ = ["router"]

router = APIRouter(include_in_schema=False)


@router.get("/samples", response_class=HTMLResponse)
def samples_page(request: Request, viewer: ViewerDep, session: SessionDep) -> HTMLResponse:
    page = int_param(request, "page")
    site = (request.query_params.get("site") or "").strip()[:255] or None
    rows = list_samples(session, site=site, limit=LIST_PAGE, offset=page_offset(page, LIST_PAGE))
    context = {
        "page": "samples",
        "rows": rows,
        "pager": pager(count_samples(session, site), page, LIST_PAGE),
        "site": site,
        "unassigned": unassigned_specimens(session),
    }
    return render_page(request, "samples.html", viewer, context)


@router.get("/samples/{sample_id:path}", response_class=HTMLResponse)
def sample_page(
    request: Request, sample_id: str, viewer: ViewerDep, session: SessionDep, settings: SettingsDep
) -> HTMLResponse:
    """Metadata, family counts with a chart, expected counts with intervals, exports, plate layout.

    Families with no counted specimen (only an expected or corrected count) are left out unless
    ``?zeros=1``; the page says how many were left out."""
    sample = records.get_sample(session, sample_id)
    if sample is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"sample {sample_id}: no such sample")
    threshold = probability_param(request.query_params.get("threshold"))
    table = compute_counts(session, CountFilter(samples=(sample.id,)), threshold=threshold, corrected=True)
    counts = table[0].as_dict() if table else None
    n_images, images = sample_images(session, sample.id, limit=500)
    show_zeros = request.query_params.get("zeros") == "1"
    hidden_zeros = 0
    expected_rows = []
    colours: dict[str, str] = {}
    chart = None
    corrected = None
    if counts:
        exp = counts["expected"]
        corrected = counts.get("corrected")
        fixed = corrected["families"] if corrected and corrected["available"] else {}
        rest = sorted(set(exp) - set(counts["families"]), key=lambda f: (-exp[f]["mean"], f.lower()))
        rest += [f for f in fixed if f not in counts["families"] and f not in exp]
        for fam in list(counts["families"]) + rest:
            n = counts["families"].get(fam, 0)
            if n or show_zeros:
                expected_rows.append({"family": fam, "n": n, "e": exp.get(fam), "c": fixed.get(fam)})
            else:
                hidden_zeros += 1
        colours = family_colours(r["family"] for r in expected_rows)
        counted = {f: n for f, n in counts["families"].items() if n or show_zeros}
        drawn = exp if show_zeros else {f: e for f, e in exp.items() if f in counted}
        chart = count_chart(counted, drawn, counts[REJECTED], colours)
    context = {
        "page": "samples",
        "sample": sample,
        "counts": counts,
        "expected_rows": expected_rows,
        "show_zeros": show_zeros,
        "hidden_zeros": hidden_zeros,
        "corrected": corrected,
        "other": OTHER,
        "chart": chart,
        "colours": colours,
        "images": images,
        "n_images": n_images,
        "threshold": threshold,
        "plates": list_plates(session, sample.id),
        "sample_q": quote(sample.id, safe=""),
    }
    return render_page(request, "sample.html", viewer, context)

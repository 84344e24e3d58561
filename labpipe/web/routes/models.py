"""Model versions: the registry (the default marked, classifications per model), one model's
labels, configuration and evaluation reports, and the plots of its model directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import FileResponse, HTMLResponse, Response

from labpipe.api.deps import SessionDep
from labpipe.db.models import Model
from labpipe.queries import records
from labpipe.queries.models import model_usage, models_newest_first
from labpipe.web.media import inside
from labpipe.web.routes.common import ViewerDep, render_page

__all__ = ["router"]

router = APIRouter(include_in_schema=False)

_PLOTS = {
    "test-confusion": "confusion.png",
    "test-risk": "risk_coverage.png",
    "eval-confusion": "eval/confusion.png",
    "eval-risk": "eval/risk_coverage.png",
}
"""The only files of a model directory the pages serve."""
_REPORTS = {"test": "metrics.json", "eval": "eval/report.json"}


def _model_dir(model: Model) -> Path | None:
    if not model.path:
        return None
    path = Path(model.path)
    return path if path.is_dir() else None


def _read_json(directory: Path | None, relative: str) -> dict[str, Any] | None:
    if directory is None:
        return None
    path = inside(directory / relative, [directory])
    if path is None:
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@router.get("/models", response_class=HTMLResponse)
def models_page(request: Request, viewer: ViewerDep, session: SessionDep) -> HTMLResponse:
    context = {"page": "models", "rows": models_newest_first(session), "usage": model_usage(session)}
    return render_page(request, "models.html", viewer, context)


@router.get("/models/{model_id}", response_class=HTMLResponse)
def model_page(request: Request, model_id: int, viewer: ViewerDep, session: SessionDep) -> HTMLResponse:
    """A model version: labels, configuration, and its evaluation reports with plots."""
    model = records.get_model(session, model_id)
    if model is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"model {model_id}: no such model")
    directory = _model_dir(model)
    reports = {}
    for key, rel in _REPORTS.items():
        data = _read_json(directory, rel)
        if data is None and key == "test":
            data = model.metrics
        if data:
            reports[key] = data
    plots = {
        key: f"/models/{model.id}/plots/{key}.png"
        for key, rel in _PLOTS.items()
        if directory is not None and inside(directory / rel, [directory]) is not None
    }
    config = _read_json(directory, "config.json") or {}
    context = {
        "page": "models",
        "model": model,
        "reports": reports,
        "plots": plots,
        "config": {
            k: config.get(k)
            for k in ("threshold", "temperature", "input_size", "architecture")
            if k in config
        },
        "usage": model_usage(session).get(model.id, 0),
    }
    return render_page(request, "model.html", viewer, context)


@router.get("/models/{model_id}/plots/{key}.png")
def model_plot(model_id: int, key: str, viewer: ViewerDep, session: SessionDep) -> Response:
    """A plot of a registered model's evaluation: only the fixed file names of a model directory."""
    model = records.get_model(session, model_id)
    directory = _model_dir(model) if model is not None else None
    path = inside(directory / _PLOTS[key], [directory]) if directory is not None and key in _PLOTS else None
    if path is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"model {model_id}: no plot {key!r}")
    return FileResponse(path, media_type="image/png", headers={"Cache-Control": "private, max-age=600"})

"""The FastAPI application factory: :func:`create_app` (settings in, ASGI app out).

Everything lives under ``/api`` (:data:`API_PREFIX`): samples, images with status, specimens with
filters and paging, crop images, verifications (a person's verdicts, as in the web UI), counts,
exports, plate layouts, barcode import. The OpenAPI schema is at ``/api/openapi.json`` and
interactive docs at ``/api/docs``. The rest of the URL space is left free for the web UI, which a
later module adds to the same app (``extra_routers``, or ``app.mount("/", ...)`` on the returned
app).

Errors are JSON ``{"detail": "..."}`` naming the object, what was wrong and what to do: 400 for
bad input (labpipe errors, values the database refuses), 401/403 for access (see
:mod:`labpipe.api.deps`), 404 for unknown ids, 422 for request validation (a query parameter the
endpoint does not take included: :func:`~labpipe.api.deps.reject_unknown_query`) and for a family
name the lab does not know (then with ``family`` and ``suggestions``, the closest known names).
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request, status
from fastapi.responses import JSONResponse, Response
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from labpipe.api import routes
from labpipe.api.deps import READ_ACCESS, SessionDep, reject_unknown_query
from labpipe.api.guard import FailureLimiter, allowed_host_names, host_allowed
from labpipe.api.schemas import HealthOut
from labpipe.config import Settings
from labpipe.errors import ConfigError, LabpipeError
from labpipe.review import UnknownFamilyError
from labpipe.samples import NotFoundError

__all__ = ["API_PREFIX", "create_app"]

API_PREFIX = "/api"


def _version() -> str:
    try:
        return version("labpipe")
    except PackageNotFoundError:
        return "0+unknown"


def _labpipe_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, LabpipeError)
    if isinstance(exc, UnknownFamilyError):
        return JSONResponse(
            {"detail": exc.message, "family": exc.family, "suggestions": exc.suggestions},
            status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
        )
    code = status.HTTP_404_NOT_FOUND if isinstance(exc, NotFoundError) else status.HTTP_400_BAD_REQUEST
    return JSONResponse({"detail": exc.message}, status_code=code)


def _data_error(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(
        {"detail": "the database refused a value of this request (too long, out of range or not text)"},
        status_code=status.HTTP_400_BAD_REQUEST,
    )


def create_app(
    settings: Settings,
    *,
    session_factory: sessionmaker[Session] | None = None,
    extra_routers: Sequence[APIRouter] = (),
) -> FastAPI:
    """The labpipe HTTP API for ``settings``.

    Parameters
    ----------
    settings:
        Database, storage folders and ``[api]`` (token, read access, page size).
    session_factory:
        Sessions to use; default: :func:`labpipe.db.database.open_database` on the settings'
        database (the embedded SQLite is created and migrated; a server database must be at head).
    extra_routers:
        More routers to include at the root (the web UI), after the API's.
    """
    if settings.api.read_access not in READ_ACCESS:
        raise ConfigError(
            "[api] read_access",
            f"unknown value {settings.api.read_access!r}",
            f"use one of {', '.join(READ_ACCESS)}",
        )
    if session_factory is None:
        from labpipe.db.database import open_database

        session_factory = open_database(settings.database_url)
    app = FastAPI(
        title="labpipe",
        version=_version(),
        description=(
            "Samples, plate images, specimens with crops and family classifications, counts, "
            "exports (CSV, community matrix, Darwin Core Archive, BOLD) and DNA barcoding links. "
            "Reads are open on localhost by default; every write needs `Authorization: Bearer <token>`."
        ),
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url=f"{API_PREFIX}/docs",
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.session_factory = session_factory
    app.state.auth_limiter = FailureLimiter(settings.api.auth_failures, settings.api.auth_window_s)
    allowed_hosts = allowed_host_names(settings.api.allowed_hosts)

    @app.middleware("http")
    async def trusted_hosts(request: Request, call_next: Any) -> Response:
        """Refuse requests addressed to a host name this service does not answer to (DNS rebinding)."""
        if request.scope.get("type") == "http" and not host_allowed(
            request.headers.get("host"), allowed_hosts
        ):
            return JSONResponse(
                {"detail": "this host name is not served here: add it to [api] allowed_hosts"},
                status_code=status.HTTP_400_BAD_REQUEST,
            )
        return await call_next(request)  # type: ignore[no-any-return]

    app.add_exception_handler(LabpipeError, _labpipe_error)
    app.add_exception_handler(sa_exc.DataError, _data_error)

    strict = [Depends(reject_unknown_query)]
    unknown_query: dict[int | str, dict[str, Any]] = {
        422: {"description": "Validation error, or a query parameter the endpoint does not take."}
    }

    @app.get(
        f"{API_PREFIX}/health",
        response_model=HealthOut,
        tags=["service"],
        dependencies=strict,
        responses=unknown_query,
    )
    def health(session: SessionDep) -> dict[str, Any]:
        """Liveness: the API answers and the database is reachable (no token needed)."""
        revision = session.execute(text("SELECT version_num FROM alembic_version")).scalar()
        return {"status": "ok", "version": _version(), "schema_revision": revision}

    for module in (
        routes.samples,
        routes.images,
        routes.verifications,
        routes.edits,
        routes.reports,
        routes.barcoding,
    ):
        app.include_router(module.router, prefix=API_PREFIX, dependencies=strict, responses=unknown_query)
    for router in extra_routers:
        app.include_router(router)
    return app

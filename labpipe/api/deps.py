"""Request dependencies: the database session, the settings, and who may read and write.

Access rules (``[api]`` in the configuration):

- a query parameter the endpoint does not take is refused (422, :func:`reject_unknown_query`), so
  a misspelt filter (``/api/specimens?code=...``) never silently returns everything;
- every write (POST) needs ``Authorization: Bearer <[api] token>``; with no token configured the API
  refuses all writes (403);
- reads follow ``read_access``: ``localhost`` (default) lets clients on this machine read without
  the token and asks everyone else for it; ``anyone`` opens reads to all; ``token`` asks everyone.
  Behind a reverse proxy every client looks local: use ``token`` there.
"""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel
from sqlalchemy.orm import Session

from labpipe.config import Settings

__all__ = [
    "READ_ACCESS",
    "SessionDep",
    "SettingsDep",
    "bearer",
    "declared_query_names",
    "get_session",
    "get_settings",
    "is_local_client",
    "reject_unknown_query",
    "require_read",
    "require_write",
]

READ_ACCESS = ("localhost", "anyone", "token")

bearer = HTTPBearer(auto_error=False, description="The API token of `[api] token` in the configuration.")


def get_settings(request: Request) -> Settings:
    """The settings the app was created with."""
    return request.app.state.settings  # type: ignore[no-any-return]


def get_session(request: Request) -> Iterator[Session]:
    """One session per request, closed afterwards (routes that write commit themselves)."""
    with request.app.state.session_factory() as session:
        yield session


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]


def is_local_client(host: str | None) -> bool:
    """Whether ``host`` (the client address) is this machine.

    >>> is_local_client("127.0.0.1"), is_local_client("::1"), is_local_client("192.168.1.4")
    (True, True, False)
    """
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _token_matches(settings: Settings, credentials: HTTPAuthorizationCredentials | None) -> bool:
    token = settings.api.token
    if not token or credentials is None:
        return False
    return secrets.compare_digest(credentials.credentials.encode("utf-8"), token.encode("utf-8"))


def require_read(
    request: Request,
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> None:
    """Allow the read, or answer 401 (see the module docstring); 429 after too many wrong tokens."""
    mode = settings.api.read_access
    if credentials is not None and not _token_matches(settings, credentials):
        _failed(request)
    if mode == "anyone":
        return
    if mode == "localhost" and is_local_client(request.client.host if request.client else None):
        return
    if _token_matches(settings, credentials):
        return
    raise HTTPException(
        status.HTTP_401_UNAUTHORIZED,
        "reading needs the API token from this machine's [api] token (Authorization: Bearer <token>)",
        headers={"WWW-Authenticate": "Bearer"},
    )


def _failed(request: Request) -> None:
    """Count a wrong token of this client, and refuse it (429) once it has had too many."""
    from labpipe.api.guard import limiter_for

    limiter = limiter_for(request)
    limiter.check(request)
    limiter.record(request)


def require_write(
    request: Request,
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> None:
    """Allow the write only with the configured token: 403 when none is configured, 401 when wrong,
    429 once this client has sent too many wrong tokens."""
    from labpipe.api.guard import limiter_for

    limiter_for(request).check(request)
    if not settings.api.token:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            "writes are disabled: set [api] token in the configuration (or LABPIPE_API_TOKEN)",
        )
    if not _token_matches(settings, credentials):
        if credentials is not None:
            limiter_for(request).record(request)
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "this write needs the API token (Authorization: Bearer <token>)",
            headers={"WWW-Authenticate": "Bearer"},
        )


def declared_query_names(route: APIRoute) -> frozenset[str]:
    """The query parameter names ``route`` takes: its own and those of its dependencies (by alias;
    the fields of a parameter model count one by one)."""
    cached: frozenset[str] | None = getattr(route, "_labpipe_query_names", None)
    if cached is not None:
        return cached
    names: set[str] = set()
    todo = [route.dependant]
    while todo:
        dependant = todo.pop()
        for param in dependant.query_params:
            annotation: Any = param.field_info.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                names.update(f.alias or n for n, f in annotation.model_fields.items())
            else:
                names.add(param.alias)
        todo.extend(dependant.dependencies)
    found = frozenset(names)
    route._labpipe_query_names = found  # type: ignore[attr-defined]
    return found


def reject_unknown_query(request: Request) -> None:
    """Refuse (422, in FastAPI's validation error form) a query parameter the matched endpoint does
    not declare: FastAPI would ignore it, and a filter nobody applied reads as an empty result or as
    everything. Paging (``limit``, ``offset``) and format parameters are declared where they apply,
    so they pass."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    known = declared_query_names(route)
    unknown = sorted({k for k in request.query_params if k not in known})
    if not unknown:
        return
    takes = ", ".join(sorted(known)) or "no query parameters"
    raise RequestValidationError(
        [
            {
                "type": "extra_forbidden",
                "loc": ("query", name),
                "msg": f"unknown query parameter {name!r}: this endpoint takes {takes}",
                "input": request.query_params.get(name),
            }
            for name in unknown
        ]
    )

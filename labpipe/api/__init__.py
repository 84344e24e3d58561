"""labpipe's HTTP API (FastAPI): ``create_app(settings)`` returns the ASGI application.

Run it with ``labpipe api`` (uvicorn) or any ASGI server:
``uvicorn --factory 'labpipe.api:app_from_environment'``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from labpipe.api.app import API_PREFIX, create_app

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = ["API_PREFIX", "app_from_environment", "create_app"]


def app_from_environment() -> FastAPI:
    """The app for the settings of ``config.toml`` / ``LABPIPE_*`` (for ``uvicorn --factory``)."""
    from labpipe.config import load_settings

    return create_app(load_settings())

"""Shared fixtures: the real data folder, service URLs, and a scratch storage root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("LABPIPE_SHARED_DATA", PROJECT_ROOT.parent / "shared" / "data"))
POSTGRES_URL = os.environ.get(
    "LABPIPE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("LABPIPE_TEST_REDIS_URL", "redis://127.0.0.1:6379")


def _require_shared() -> bool:
    return os.environ.get("LABPIPE_REQUIRE_SHARED") == "1"


def _require_services() -> bool:
    return os.environ.get("CI", "").lower() == "true"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``: skipped with a message where absent, a failure when LABPIPE_REQUIRE_SHARED=1."""
    if not SHARED_DATA.is_dir():
        message = f"real data folder {SHARED_DATA} is missing (it sits beside the project root)"
        if _require_shared():
            pytest.fail(message + " and LABPIPE_REQUIRE_SHARED=1")
        pytest.skip(message)
    return SHARED_DATA


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The real PostgreSQL server; skipped where it is not running, a failure in CI (CI=true)."""
    import sqlalchemy as sa

    try:
        engine = sa.create_engine(POSTGRES_URL)
        with engine.connect() as conn:
            conn.execute(sa.text("select 1"))
        engine.dispose()
    except Exception as exc:  # any connection failure
        message = f"PostgreSQL at {POSTGRES_URL} is not reachable: {exc}"
        if _require_services():
            pytest.fail(message + " (CI=true: services are required)")
        pytest.skip(message)
    return POSTGRES_URL


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The real Redis server (no database number); skipped where it is not running, a failure in CI."""
    try:
        import redis

        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
        client.ping()
        client.close()
    except Exception as exc:  # not installed, refused, timed out
        message = f"Redis at {REDIS_URL} is not reachable: {exc}"
        if _require_services():
            pytest.fail(message + " (CI=true: services are required)")
        pytest.skip(message)
    return REDIS_URL

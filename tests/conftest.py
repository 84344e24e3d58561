"""Shared fixtures: the real data folder, service URLs, and a scratch storage root.

The suite runs in parallel under pytest-xdist (``make test``: ``-n 2 --dist loadgroup``). Each
PostgreSQL test makes its own database and each Redis test claims its own database number, so the
workers share nothing; the tests that use Redis run on one worker (the ``redis`` group), because
one of them restarts the Redis server. A file whose module fixtures are expensive (a trained model,
a running daemon, a browser) names its own ``xdist_group`` so they are built once.
"""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from services import redis_ping, start_redis

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


def _uses_redis(item: pytest.Item) -> bool:
    """The test needs the shared Redis: the ``redis_db`` fixture, the ``redis`` mark, or a
    ``kind`` parameter of ``distributed`` (a test that asks for the deployment by name)."""
    callspec = getattr(item, "callspec", None)
    return (
        "redis_db" in getattr(item, "fixturenames", ())
        or item.get_closest_marker("redis") is not None
        or (callspec is not None and callspec.params.get("kind") == "distributed")
    )


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which turns the marks into groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under xdist's ``loadgroup``, every Redis test runs on one worker (see the module docstring)."""
    for item in items:
        if _uses_redis(item):
            item.add_marker(pytest.mark.xdist_group("redis"))


def pytest_collection_finish(session: pytest.Session) -> None:
    """Refuse to run when xdist's groups are silently not in effect: then a test that restarts
    Redis would run beside the other Redis tests and lose their queued tasks (pytest 9.2 stopped
    xdist's grouping, pytest-dev/pytest-xdist#1386; pyproject pins pytest below it)."""
    if not (os.environ.get("PYTEST_XDIST_WORKER") and session.config.getvalue("loadgroup")):
        return
    lost = [i.nodeid for i in session.items if i.get_closest_marker("xdist_group") and "@" not in i.nodeid]
    if lost:
        raise pytest.UsageError(
            f"pytest-xdist's --dist loadgroup is not grouping tests (e.g. {lost[0]}): run the suite "
            "serially (make test PYTEST_WORKERS=0) or use a pytest that xdist supports (see pyproject)"
        )


REDIS_CLAIM_KEY = "labpipe-test-claim"
"""Set (NX) in the database number a test run takes, so that no other worker or run takes it too."""


@pytest.fixture
def redis_db(redis_url: str) -> Iterator[str]:
    """A Redis database number (1-15) that was empty and is now claimed by this test (an atomic
    SET NX of ``REDIS_CLAIM_KEY``, so two parallel workers never share one); our keys in it and
    the claim are removed afterwards."""
    import redis

    owner = f"{os.environ.get('PYTEST_XDIST_WORKER', 'main')}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    chosen = None
    for n in random.sample(range(1, 16), 15):
        client = redis.Redis.from_url(f"{redis_url}/{n}")
        try:
            if client.dbsize() == 0 and client.set(REDIS_CLAIM_KEY, owner, nx=True):
                chosen = n
                break
        finally:
            client.close()
    if chosen is None:
        pytest.skip("no empty Redis database number among 1-15")
    url = f"{redis_url}/{chosen}"
    yield url
    if not redis_ping(redis_url):  # a test that restarts Redis always leaves it running
        start_redis()
    client = redis.Redis.from_url(url)
    for pattern in ("labpipe.*", "unacked*", "_kombu.binding*"):
        for key in client.scan_iter(match=pattern):
            client.delete(key)
    if client.get(REDIS_CLAIM_KEY) == owner.encode():
        client.delete(REDIS_CLAIM_KEY)
    client.close()


@pytest.fixture
def pg_url(postgres_url: str) -> Iterator[str]:
    """A fresh PostgreSQL database, migrated, dropped afterwards."""
    from labpipe.db.migrate import upgrade

    name = f"labpipe_test_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.engine.make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    try:
        upgrade(url)
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

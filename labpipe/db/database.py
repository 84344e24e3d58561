"""Open a database ready for use: the embedded SQLite is migrated automatically, others are checked."""

from __future__ import annotations

from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from labpipe.db.migrate import current_revision, head_revision, upgrade
from labpipe.db.session import make_engine, make_session_factory
from labpipe.errors import ConfigError

__all__ = ["open_database"]


def open_database(url: str) -> sessionmaker[Session]:
    """Session factory for ``url``, with the schema at the newest revision.

    The embedded SQLite database is created and migrated on first use (nobody administers it);
    a server database (PostgreSQL) must be migrated explicitly with ``labpipe db upgrade``, so a
    deployment never changes a shared schema by surprise.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        upgrade(url)
    else:
        current, head = current_revision(url), head_revision()
        if current != head:
            raise ConfigError(
                parsed.render_as_string(hide_password=True),
                f"database schema is at revision {current or 'none'}, this labpipe needs {head}",
                "run `labpipe db upgrade` against this database first",
            )
    return make_session_factory(make_engine(url))

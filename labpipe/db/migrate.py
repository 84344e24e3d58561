"""Run the Alembic migrations programmatically (the only way labpipe's schema changes).

The Alembic environment lives in the repository's top-level ``migrations/`` folder; this module
finds it next to the ``labpipe`` package (an editable or source install). ``alembic upgrade head``
from the repository root does the same thing through ``alembic.ini``.

The URL is handed to ``migrations/env.py`` through ``Config.attributes["url"]``, so URLs holding
``%`` (escaped passwords) need no ini-file escaping.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import pool
from sqlalchemy.engine import URL

from labpipe.db.session import make_engine
from labpipe.errors import LabpipeError

__all__ = [
    "MIGRATIONS_DIR",
    "MigrationsNotFoundError",
    "alembic_config",
    "current_revision",
    "downgrade",
    "head_revision",
    "upgrade",
]

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"
"""The Alembic environment: ``<repository>/migrations`` (holds ``env.py`` and ``versions/``)."""


class MigrationsNotFoundError(LabpipeError):
    """The Alembic ``migrations/`` folder is not where labpipe expects it."""


def migrations_dir() -> Path:
    """The Alembic script folder, checked to exist.

    Raises
    ------
    MigrationsNotFoundError
        When ``migrations/env.py`` is missing, which happens when labpipe was installed from a wheel
        (non-editable) instead of from the repository.
    """
    if not (MIGRATIONS_DIR / "env.py").is_file():
        raise MigrationsNotFoundError(
            MIGRATIONS_DIR,
            "the Alembic migrations folder (with env.py) is missing",
            "install labpipe from its repository with `pip install -e .`, or run `alembic upgrade head` "
            "from the repository root",
        )
    return MIGRATIONS_DIR


def alembic_config(url: str | URL) -> Config:
    """An Alembic :class:`~alembic.config.Config` for ``url`` that needs no ``alembic.ini``."""
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.attributes["url"] = url if isinstance(url, str) else url.render_as_string(hide_password=False)
    return config


def upgrade(url: str | URL, revision: str = "head") -> None:
    """Migrate the database at ``url`` up to ``revision`` (default: the newest).

    Creates the SQLite file (and its folder) when it does not exist yet. Safe to run again: a
    database already at ``revision`` is left alone.
    """
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str | URL, revision: str = "base") -> None:
    """Migrate the database at ``url`` down to ``revision`` (default: ``base``, no labpipe tables)."""
    command.downgrade(alembic_config(url), revision)


def current_revision(url: str | URL) -> str | None:
    """The revision the database at ``url`` is at, or ``None`` when it was never migrated."""
    engine = make_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


def head_revision() -> str | None:
    """The newest revision in ``migrations/versions`` (what :func:`upgrade` goes to by default)."""
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    return ScriptDirectory.from_config(config).get_current_head()

"""Alembic environment for labpipe.

The database is chosen, first match wins, by:

1. ``config.attributes["connection"]``: an open SQLAlchemy connection (tests, embedding code);
2. ``config.attributes["url"]``: set by :mod:`labpipe.db.migrate`;
3. ``-x url=...`` on the ``alembic`` command line;
4. ``sqlalchemy.url`` in ``alembic.ini`` (left empty in the repository's file);
5. labpipe's settings: ``config.toml`` / ``LABPIPE_DATABASE_URL`` (``Settings.database_url``).

SQLite is migrated in batch mode (``render_as_batch``), with foreign keys switched off while tables
are rebuilt and checked afterwards, as SQLite's ALTER TABLE procedure requires.
"""

from __future__ import annotations

from logging.config import fileConfig
from typing import Any

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy import pool
from sqlalchemy.engine import Connection, make_url

from labpipe.db.models import Base, UTCDateTime
from labpipe.db.session import make_engine

config = context.config

# Configure logging only when run from the alembic command line with an ini file; when called from
# labpipe.db.migrate there is no file and the application's logging stays as it is.
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def _database_url() -> str:
    """The URL to migrate (see the module docstring for the order)."""
    url = config.attributes.get("url") or context.get_x_argument(as_dictionary=True).get("url")
    url = url or config.get_main_option("sqlalchemy.url")
    if not url:
        from labpipe.config import load_settings

        url = load_settings().database_url
    return str(url)


def _render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | bool:
    """Render labpipe's custom column types as plain SQLAlchemy types in generated revisions."""
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def _configure_options(dialect_name: str) -> dict[str, Any]:
    return {
        "target_metadata": target_metadata,
        "render_as_batch": dialect_name == "sqlite",
        "compare_type": True,
        "render_item": _render_item,
    }


def run_migrations_offline() -> None:
    """Emit the migration SQL to stdout (``alembic upgrade head --sql``) instead of running it."""
    url = _database_url()
    context.configure(
        url=url,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        **_configure_options(make_url(url).get_backend_name()),
    )
    with context.begin_transaction():
        context.run_migrations()


def _set_sqlite_foreign_keys(connection: Connection, on: bool) -> None:
    """Switch SQLite's foreign-key enforcement; ends the implicit transaction it may open."""
    was_in_transaction = connection.in_transaction()
    connection.exec_driver_sql(f"PRAGMA foreign_keys={'ON' if on else 'OFF'}")
    if not was_in_transaction:
        connection.commit()


def _run_on(connection: Connection) -> None:
    """Run the migrations on an open connection."""
    sqlite = connection.dialect.name == "sqlite"
    if sqlite:
        # Rebuilding a table (batch mode) drops and renames tables; with foreign keys on, that would
        # cascade or fail. The PRAGMA is a no-op inside a transaction, so it runs before one begins.
        _set_sqlite_foreign_keys(connection, on=False)
    try:
        context.configure(connection=connection, **_configure_options(connection.dialect.name))
        with context.begin_transaction():
            context.run_migrations()
            if sqlite:
                problems = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                if problems:
                    raise RuntimeError(f"migration left rows with broken foreign keys: {problems[:10]}")
    finally:
        if sqlite:
            _set_sqlite_foreign_keys(connection, on=True)


def run_migrations_online() -> None:
    """Run the migrations against the database (the usual case)."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_on(connection)
        return
    engine = make_engine(_database_url(), poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            _run_on(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()

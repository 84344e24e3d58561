"""labpipe's database: the schema (SQLAlchemy 2.0 ORM), engines and sessions, and migrations.

Typical use::

    from labpipe.db import make_engine, make_session_factory, session_scope, upgrade

    upgrade(settings.database_url)  # create or migrate the schema
    factory = make_session_factory(make_engine(settings.database_url))
    with session_scope(factory) as session:
        session.add(Sample(id="CY-2024-017", site="Troodos"))
"""

from labpipe.db.migrate import (
    MigrationsNotFoundError,
    current_revision,
    downgrade,
    head_revision,
    upgrade,
)
from labpipe.db.models import (
    NAMING_CONVENTION,
    BarcodeLink,
    Base,
    Classification,
    Image,
    ImageStatus,
    Model,
    ModelKind,
    Sample,
    Specimen,
    UTCDateTime,
    Verification,
    VerificationStatus,
    utcnow,
)
from labpipe.db.session import make_engine, make_session_factory, session_scope

__all__ = [
    "NAMING_CONVENTION",
    "BarcodeLink",
    "Base",
    "Classification",
    "Image",
    "ImageStatus",
    "MigrationsNotFoundError",
    "Model",
    "ModelKind",
    "Sample",
    "Specimen",
    "UTCDateTime",
    "Verification",
    "VerificationStatus",
    "current_revision",
    "downgrade",
    "head_revision",
    "make_engine",
    "make_session_factory",
    "session_scope",
    "upgrade",
    "utcnow",
]

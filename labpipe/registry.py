"""The model registry: classifier versions as rows of the ``models`` table.

A model version is ``name@w<weights sha256[:12]>-l<label-list sha256[:12]>``, computed from the
model itself (its weight files and labels), never typed by a person. Registering a model adds
a row; nothing is overwritten, and every classification row points at the row of the model that
made it, so "which model said this" is a join (the Antenna habit: provenance is schema).

``set_default`` marks one row of its kind as the default: that is the one setting every part of
labpipe follows (:mod:`labpipe.active_models`); ``[classifier] model`` is used only while no
default is registered. ``registry:<version>`` names one registered version anywhere a model spec is
taken; it is resolved by :func:`resolve_registry_spec`, which
:func:`labpipe.classify.loader.load_classifier` calls.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from labpipe.classify.loader import BUILTIN_PREFIX, REGISTRY_PREFIX
from labpipe.classify.trained import ModelIdentity, model_identity
from labpipe.db.models import Model, ModelKind
from labpipe.errors import ConfigError, ModelLoadError

__all__ = [
    "add_model",
    "default_model",
    "find_model",
    "identify",
    "list_models",
    "model_spec",
    "resolve_model_argument",
    "resolve_registry_spec",
    "set_default",
]


def identify(spec: str) -> ModelIdentity:
    """Name, version, hashes and labels of a model directory or ``builtin:<name>`` spec."""
    spec = spec.strip()
    if spec.startswith(BUILTIN_PREFIX):
        from labpipe.classify.loader import load_classifier

        clf = load_classifier(spec, threshold=0.5, threads=1)
        return ModelIdentity(
            name=clf.name,
            version=clf.version,
            weights_hash=clf.weights_hash,
            labels_hash=clf.labels_hash,
            labels=list(clf.families),
            path=None,
            metrics=None,
        )
    directory = Path(spec).expanduser()
    if not directory.is_dir():
        raise ModelLoadError(
            spec, "not a model directory or builtin:<name> spec", "give the path of a trained model"
        )
    return model_identity(directory)


def model_spec(row: Model) -> str:
    """What :func:`~labpipe.classify.loader.load_classifier` needs to load a registered model."""
    if row.path:
        return row.path
    return BUILTIN_PREFIX + row.version.split("@", 1)[0]


def add_model(
    session: Session, spec: str, *, name: str | None = None, default: bool = False
) -> tuple[Model, bool]:
    """Register the model at ``spec`` (directory or ``builtin:<name>``); returns ``(row, created)``.

    Idempotent: a version already registered is returned (its path updated when the directory
    moved, its display name when ``name`` is given). ``name`` is a display name for people; the
    version, and so the identity, always comes from the model itself.
    """
    identity = identify(spec)
    row = session.scalar(select(Model).where(Model.version == identity.version))
    created = row is None
    if row is None:
        row = Model(
            name=name or identity.name,
            kind=ModelKind.CLASSIFIER.value,
            version=identity.version,
            weights_hash=identity.weights_hash,
            labels_hash=identity.labels_hash,
            path=identity.path,
            labels=identity.labels,
            is_default=False,
            metrics=identity.metrics,
        )
        session.add(row)
    else:
        if identity.path:
            row.path = identity.path
        if name:
            row.name = name
        if identity.metrics is not None and row.metrics is None:
            row.metrics = identity.metrics
    session.flush()
    if default:
        set_default(session, row.version)
    return row, created


def list_models(session: Session, kind: ModelKind | None = ModelKind.CLASSIFIER) -> list[Model]:
    """Registered models (of ``kind``; ``None``: all), oldest first."""
    query = select(Model).order_by(Model.created_at, Model.id)
    if kind is not None:
        query = query.where(Model.kind == kind.value)
    return list(session.scalars(query))


def find_model(session: Session, version: str) -> Model:
    """The row whose version is ``version`` or starts with it (a unique prefix, e.g. ``families-v1@w3f2``).

    Raises :class:`ConfigError` when no row or several rows match, listing them.
    """
    version = version.strip()
    exact = session.scalar(select(Model).where(Model.version == version))
    if exact is not None:
        return exact
    matches = [m for m in list_models(session, None) if m.version.startswith(version)]
    if len(matches) == 1:
        return matches[0]
    known = ", ".join(m.version for m in list_models(session, None)) or "none registered"
    if not matches:
        raise ConfigError(version, "no registered model has this version", f"registered: {known}")
    raise ConfigError(version, f"{len(matches)} registered versions start with this", f"registered: {known}")


def set_default(session: Session, version: str, actor: str | None = None) -> Model:
    """Make ``version`` (or a unique prefix) the default of its kind; the previous default is unset
    and the change is recorded in the audit trail (see :mod:`labpipe.active_models`)."""
    from labpipe.active_models import change_default, local_actor

    return change_default(session, version, actor=actor or local_actor())


def default_model(session: Session) -> Model | None:
    """The default classifier row, if one is set."""
    from labpipe.active_models import default_row

    return default_row(session, ModelKind.CLASSIFIER)


def _lookup(session: Session, key: str, subject: str) -> str:
    if key in ("", "default"):
        row = default_model(session)
        if row is None:
            raise ConfigError(
                subject, "no default classifier is registered", "run `labpipe models set-default VERSION`"
            )
    else:
        row = find_model(session, key)
    return model_spec(row)


def resolve_registry_spec(spec: str, database_url: str | None = None) -> str:
    """Turn ``registry:default`` or ``registry:<version>`` into a directory path or built-in spec.

    ``database_url``: the registry's database; ``None`` uses the current settings
    (``config.toml``, ``LABPIPE_*`` variables).
    """
    from labpipe.db.database import open_database

    if not spec.startswith(REGISTRY_PREFIX):
        return spec
    if database_url is None:
        from labpipe.config import load_settings

        database_url = load_settings().database_url
    factory = open_database(database_url)
    try:
        with factory() as session:
            return _lookup(session, spec[len(REGISTRY_PREFIX) :].strip(), spec)
    finally:
        bind = factory.kw.get("bind")
        if bind is not None:
            bind.dispose()


def resolve_model_argument(value: str, session: Session) -> str:
    """A ``--model`` argument as a loadable spec: a directory, ``builtin:...``, ``registry:...``,
    ``default``, or a registered version (or unique prefix of one)."""
    value = value.strip()
    if value.startswith(BUILTIN_PREFIX):
        return value
    if value.startswith(REGISTRY_PREFIX):
        return _lookup(session, value[len(REGISTRY_PREFIX) :].strip(), value)
    if value == "default":
        return _lookup(session, "default", value)
    if Path(value).expanduser().exists():
        return str(Path(value).expanduser())
    return _lookup(session, value, value)

"""One answer to "which model": the detector and classifier every part of labpipe uses now.

The registry's default rows (``models.is_default``, one per kind, changed with
``labpipe models set-default``) are the setting. The daemon's workers, ``labpipe process``,
``labpipe reclassify``, the API and the web UI all read it through this module, so a change reaches
a running daemon with its next image. Where no default is registered yet, the configuration's
``[classifier] model`` and ``[detector] kind`` are used (a fresh install). A ``--classifier`` or
``--detector`` flag on a command is an explicit, one-off override of both.

Changing a default writes an ``set_default`` event to the audit trail (who, from which version to
which).
"""

from __future__ import annotations

import getpass
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from labpipe.audit import record_event
from labpipe.db.models import Model, ModelKind
from labpipe.logs import get_logger

__all__ = [
    "ActiveModel",
    "active_classifier",
    "active_detector",
    "change_default",
    "default_row",
    "local_actor",
]

log = get_logger(__name__)

REGISTRY = "registry default"
CONFIG = "configuration"
OVERRIDE = "command-line override"


@dataclass(frozen=True)
class ActiveModel:
    """The model a kind of work uses now, and where that choice comes from."""

    kind: str
    spec: str
    """What the loader needs: a model directory, ``builtin:<name>``, or ``classical``."""
    version: str | None
    """The registered version, when the choice comes from the registry."""
    source: str
    """``registry default``, ``configuration`` or ``command-line override``."""

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "spec": self.spec, "version": self.version, "source": self.source}


def default_row(session: Session, kind: ModelKind) -> Model | None:
    """The registry's default row of ``kind``, if one is set."""
    return session.scalar(
        select(Model).where(Model.kind == kind.value, Model.is_default.is_(True)).order_by(Model.id)
    )


def _classifier_spec(row: Model) -> str:
    from labpipe.registry import model_spec

    return model_spec(row)


def _detector_spec(row: Model) -> str:
    return row.path or "classical"


def active_classifier(session: Session | None, settings: Any, override: str | None = None) -> ActiveModel:
    """The classifier to use now: ``override``, else the registry default, else ``[classifier] model``."""
    if override:
        return ActiveModel(ModelKind.CLASSIFIER.value, override, None, OVERRIDE)
    row = default_row(session, ModelKind.CLASSIFIER) if session is not None else None
    if row is not None:
        return ActiveModel(ModelKind.CLASSIFIER.value, _classifier_spec(row), row.version, REGISTRY)
    return ActiveModel(ModelKind.CLASSIFIER.value, settings.classifier.model, None, CONFIG)


def active_detector(session: Session | None, settings: Any, override: str | None = None) -> ActiveModel:
    """The detector to use now: ``override``, else the registry default, else ``[detector] kind``."""
    if override:
        return ActiveModel(ModelKind.DETECTOR.value, override, None, OVERRIDE)
    row = default_row(session, ModelKind.DETECTOR) if session is not None else None
    if row is not None:
        return ActiveModel(ModelKind.DETECTOR.value, _detector_spec(row), row.version, REGISTRY)
    return ActiveModel(ModelKind.DETECTOR.value, settings.detector.kind, None, CONFIG)


def local_actor() -> str:
    """The person at this terminal, for the audit trail of CLI commands."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def change_default(session: Session, version: str, *, actor: str) -> Model:
    """Make ``version`` (or a unique prefix) the default of its kind and record who did it; flushed."""
    from labpipe.registry import find_model

    row = find_model(session, version)
    previous = default_row(session, ModelKind(row.kind))
    for other in session.scalars(select(Model).where(Model.kind == row.kind, Model.is_default.is_(True))):
        other.is_default = False
    row.is_default = True
    session.flush()
    if previous is None or previous.id != row.id:
        record_event(
            session,
            actor=actor,
            action="set_default",
            model_id=row.id,
            before={"kind": row.kind, "version": previous.version if previous else None},
            after={"kind": row.kind, "version": row.version},
        )
        log.info("default model changed", kind=row.kind, version=row.version, actor=actor)
    return row

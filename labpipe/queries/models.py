"""The model registry as pages list it: every model newest first, and how many classifications each made.

Finding a model by version, adding one and the default are :mod:`labpipe.registry` and
:mod:`labpipe.active_models`.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from labpipe.db.models import Classification, Model

__all__ = ["model_usage", "models_newest_first"]


def models_newest_first(session: Session) -> list[Model]:
    """Every registered model (any kind), the newest first."""
    return list(session.scalars(select(Model).order_by(Model.created_at.desc(), Model.id.desc())))


def model_usage(session: Session) -> dict[int, int]:
    """Classifications per model id (models that made none are left out)."""
    query = select(Classification.model_id, func.count(Classification.id)).group_by(Classification.model_id)
    return {mid: int(n) for mid, n in session.execute(query)}

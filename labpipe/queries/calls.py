"""A specimen's current call in SQL: which classification and which verification count.

The one place that says which rows count (:mod:`labpipe.queries.rule` says how they count):

- **the latest verification**: the newest that is not retracted (``retracted_at IS NULL``), by
  ``verified_at`` then id; an undone verification is history, not a verdict;
- **the chosen classification**: with a model version asked for, that version's newest; otherwise
  the registry's default classifier's (``models.is_default``, kind ``classifier``) where the
  specimen has one, else the newest (highest id). So after ``models set-default`` and
  ``reclassify`` a sample is counted by one model again.

Each comes in two shapes, ordered by the same expressions (:func:`_classification_rule`,
:func:`_verification_rule`), so they cannot drift apart:

- correlated scalar subqueries (:func:`chosen_classification_id`, :func:`latest_verification_id`):
  one index lookup per specimen, for pages, filters and a few ids;
- ranked subqueries (:func:`chosen_classifications`, :func:`latest_verifications`): one window
  function over the table, for whole-table reads such as the counts and the training export.

:func:`load_calls` returns one :class:`~labpipe.queries.rule.SpecimenCall` per specimen;
:func:`outcome_columns` is :func:`~labpipe.queries.rule.resolve` without a threshold, in SQL, for
the listings' filters.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, and_, case, func, select
from sqlalchemy.orm import Session, aliased

from labpipe.db.models import (
    Classification,
    Image,
    Model,
    ModelKind,
    Sample,
    Specimen,
    Verification,
    VerificationStatus,
)
from labpipe.queries.rule import SpecimenCall

__all__ = [
    "CountFilter",
    "best_families",
    "call_columns",
    "call_from_row",
    "chosen_classification_id",
    "chosen_classifications",
    "latest_verification_id",
    "latest_verifications",
    "latest_verifiers",
    "load_calls",
    "outcome_columns",
]

_FEW = 5000
"""Up to this many specimen ids, :func:`load_calls` looks each call up (correlated subqueries)
instead of ranking whole tables."""


@dataclass(frozen=True)
class CountFilter:
    """Which specimens to count: by sample ids, site, collection-date range and model version."""

    samples: tuple[str, ...] = ()
    site: str | None = None
    date_from: dt.date | None = None
    date_to: dt.date | None = None
    model_version: str | None = None
    """Only this classifier version's classifications (exact version string)."""

    def apply(self, query: Select[Any]) -> Select[Any]:
        """Restrict a query that selects from ``images`` (inner-joined to ``samples`` here when a
        site or date is asked for)."""
        if self.site is not None or self.date_from is not None or self.date_to is not None:
            query = query.join(Sample, Sample.id == Image.sample_id)
        if self.samples:
            query = query.where(Image.sample_id.in_(self.samples))
        if self.site is not None:
            query = query.where(Sample.site == self.site)
        if self.date_from is not None:
            query = query.where(Sample.collection_date >= self.date_from)
        if self.date_to is not None:
            query = query.where(Sample.collection_date <= self.date_to)
        return query


# --------------------------------------------------------------------------------------------------
# The rule's SQL: which row wins among one specimen's classifications and verifications


def _classification_rule(cls: Any, model_version: str | None) -> tuple[list[Any], tuple[Any, ...]]:
    """``(conditions, order)`` over one specimen's classifications ``cls``: the first in order wins."""
    if model_version is not None:
        of_version = select(Model.id).where(Model.version == model_version)
        return [cls.model_id.in_(of_version)], (cls.id.desc(),)
    defaults = select(Model.id).where(Model.is_default.is_(True), Model.kind == ModelKind.CLASSIFIER.value)
    return [], (case((cls.model_id.in_(defaults), 0), else_=1), cls.id.desc())


def _verification_rule(ver: Any) -> tuple[list[Any], tuple[Any, ...]]:
    """``(conditions, order)`` over one specimen's verifications ``ver``: the first in order wins."""
    return [ver.retracted_at.is_(None)], (ver.verified_at.desc(), ver.id.desc())


def chosen_classification_id(model_version: str | None = None) -> Any:
    """Correlated SQL for the id of the chosen classification of the outer query's specimen
    (``NULL`` when none qualifies)."""
    other = aliased(Classification)
    where, order = _classification_rule(other, model_version)
    return (
        select(other.id)
        .where(other.specimen_id == Specimen.id, *where)
        .order_by(*order)
        .limit(1)
        .correlate(Specimen)
        .scalar_subquery()
    )


def latest_verification_id() -> Any:
    """Correlated SQL for the id of the latest verification of the outer query's specimen."""
    other = aliased(Verification)
    where, order = _verification_rule(other)
    return (
        select(other.id)
        .where(other.specimen_id == Specimen.id, *where)
        .order_by(*order)
        .limit(1)
        .correlate(Specimen)
        .scalar_subquery()
    )


def chosen_classifications(model_version: str | None = None) -> Any:
    """A subquery: each specimen's chosen classification (``specimen_id``, ``classification_id``)."""
    where, order = _classification_rule(Classification, model_version)
    rank = func.row_number().over(partition_by=Classification.specimen_id, order_by=order).label("rank")
    ranked = (
        select(Classification.specimen_id, Classification.id.label("classification_id"), rank)
        .where(*where)
        .subquery("ranked_classification")
    )
    return (
        select(ranked.c.specimen_id, ranked.c.classification_id)
        .where(ranked.c.rank == 1)
        .subquery("chosen_classification")
    )


def latest_verifications() -> Any:
    """A subquery: each specimen's latest verification (``specimen_id``, ``verification_id``,
    ``status``, ``family``, ``verified_by``, ``verified_at``), the one that counts."""
    where, order = _verification_rule(Verification)
    rank = func.row_number().over(partition_by=Verification.specimen_id, order_by=order).label("rank")
    ranked = (
        select(
            Verification.specimen_id,
            Verification.id.label("verification_id"),
            Verification.status,
            Verification.family,
            Verification.verified_by,
            Verification.verified_at,
            rank,
        )
        .where(*where)
        .subquery("ranked_verification")
    )
    columns = [c for c in ranked.c if c.name != "rank"]
    return select(*columns).where(ranked.c.rank == 1).subquery("latest_verification")


def outcome_columns(cls: Any, status: Any, family: Any) -> tuple[Any, Any]:
    """SQL for (counted family or NULL, outcome) of the chosen classification ``cls`` and the latest
    verification's ``status`` and ``family``: :func:`~labpipe.queries.rule.resolve` without a
    query-time threshold (a confirmation without a family counts as the model's stored family)."""
    v = VerificationStatus
    counted = case(
        (status == v.NOT_SPECIMEN.value, None),
        (status == v.CORRECTED.value, family),
        (status == v.CONFIRMED.value, func.coalesce(family, cls.family)),
        (and_(status == v.MULTIPLE.value, family.is_not(None)), family),
        (cls.id.is_(None), None),
        (cls.rejected.is_(True), None),
        else_=cls.family,
    )
    outcome = case(
        (status == v.NOT_SPECIMEN.value, "excluded"),
        (counted.is_not(None), "accepted"),
        (and_(cls.id.is_(None), status.is_(None)), "unclassified"),
        else_="rejected",
    )
    return counted, outcome


# --------------------------------------------------------------------------------------------------
# Calls


def call_columns(status: Any, family: Any) -> tuple[Any, ...]:
    """The columns a call is made of (:func:`call_from_row`), for a query that selects from
    ``specimens`` joined to ``images``, the chosen ``Classification``, its ``Model``, and the latest
    verification (whose ``status`` and ``family`` columns are given)."""
    return (
        Specimen.id,
        Image.sample_id,
        Classification.family,
        Classification.probability,
        Classification.rejected,
        Classification.reason,
        Classification.top_k,
        Model.version,
        status,
        family,
    )


def call_from_row(row: Sequence[Any]) -> SpecimenCall:
    """The :class:`SpecimenCall` of a row that starts with :func:`call_columns`."""
    sid, sample, family, prob, rejected, reason, top_k, version, status, vfamily = row[:10]
    return SpecimenCall(
        specimen_id=sid,
        sample_id=sample,
        family=family,
        probability=prob,
        rejected=bool(rejected) if rejected is not None else True,
        reason=reason,
        top_k=tuple((str(f), float(p)) for f, p in (top_k or [])),
        model_version=version,
        verification=status,
        verified_family=vfamily,
    )


def _looked_up(model_version: str | None) -> Select[Any]:
    """Calls by correlated lookups (few specimens)."""
    ver = aliased(Verification, name="latest_verification")
    return (
        select(*call_columns(ver.status, ver.family))
        .select_from(Specimen)
        .join(Image, Image.id == Specimen.image_id)
        .outerjoin(Classification, Classification.id == chosen_classification_id(model_version))
        .outerjoin(Model, Model.id == Classification.model_id)
        .outerjoin(ver, ver.id == latest_verification_id())
    )


def _ranked(model_version: str | None) -> Select[Any]:
    """Calls by ranking whole tables (many specimens)."""
    chosen = chosen_classifications(model_version)
    ver = latest_verifications()
    return (
        select(*call_columns(ver.c.status, ver.c.family))
        .select_from(Specimen)
        .join(Image, Image.id == Specimen.image_id)
        .outerjoin(chosen, chosen.c.specimen_id == Specimen.id)
        .outerjoin(Classification, Classification.id == chosen.c.classification_id)
        .outerjoin(Model, Model.id == Classification.model_id)
        .outerjoin(ver, ver.c.specimen_id == Specimen.id)
    )


def load_calls(
    session: Session, flt: CountFilter | None = None, specimen_ids: Sequence[int] | None = None
) -> list[SpecimenCall]:
    """One :class:`SpecimenCall` per specimen matching ``flt`` (and among ``specimen_ids`` if given),
    by specimen id: its chosen classification and its latest verification."""
    flt = flt or CountFilter()
    few = specimen_ids is not None and len(specimen_ids) <= _FEW
    query = _looked_up(flt.model_version) if few else _ranked(flt.model_version)
    if specimen_ids is not None:
        query = query.where(Specimen.id.in_(list(specimen_ids)))
    return [call_from_row(r) for r in session.execute(flt.apply(query.order_by(Specimen.id)))]


def best_families(session: Session, ids: Iterable[int]) -> dict[int, str | None]:
    """Each existing specimen's classifier family by its chosen classification, even when rejected
    (what a confirmation that names no family confirms); ``None`` for one never classified. Ids that
    are no specimen are left out."""
    wanted = list(dict.fromkeys(int(i) for i in ids))
    if not wanted:
        return {}
    return {c.specimen_id: c.best_family for c in load_calls(session, specimen_ids=wanted)}


def latest_verifiers(session: Session, ids: Iterable[int]) -> dict[int, str]:
    """Who made each specimen's latest verification (specimens without one are left out)."""
    wanted = list(dict.fromkeys(int(i) for i in ids))
    if not wanted:
        return {}
    query = (
        select(Specimen.id, Verification.verified_by)
        .select_from(Specimen)
        .join(Verification, Verification.id == latest_verification_id())
        .where(Specimen.id.in_(wanted))
    )
    return {sid: who for sid, who in session.execute(query)}

"""How one specimen counts: the rule, as pure functions (no database).

A specimen's call (:class:`SpecimenCall`) is its chosen classification and its latest verification
(which rows those are is :mod:`labpipe.queries.calls`). What it counts as is decided at query time,
without reprocessing (:func:`resolve`):

1. **A person's verification wins.** The latest verification that is not retracted decides:
   ``confirmed`` counts it as the verified family (or, when the verification names none, the
   classified family); ``corrected`` as the verification's family; ``not_specimen`` excludes it
   from every count (it is debris, not a specimen: it is in neither ``specimens`` nor ``rejected``
   but in ``excluded``); ``multiple`` (the box holds more than one specimen) counts it **once**, as
   the verification's family or else the prediction, and adds it to ``multiple``, so a sample's
   counts are lower bounds where ``multiple`` is not zero. A verification without a family (other
   than ``not_specimen``) and without a usable prediction counts as rejected.
2. **Otherwise the chosen classification decides.** Specimens with none are ``unclassified`` (with
   a model version asked for, that is every specimen that model has not seen).
3. **Rejection at a query-time threshold.** Without a threshold the stored decision stands. With one,
   a specimen is accepted as its best family when that family's calibrated probability is at least
   the threshold, unless it was rejected for a reason no threshold changes: ``not_arthropod``,
   ``family_unresolved`` or any other reason code except ``low_confidence``
   (as :func:`labpipe.classify.base.redecide` decides a stored call again).

:func:`resolve` also gives each specimen's share of the expected counts: the calibrated top-k
probabilities (clipped, rescaled when they sum above 1), probability 1 for a family a person gave,
and nothing for a specimen rejected as ``out_of_distribution`` (its softmax says nothing about which
family it is).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from labpipe.classify.base import (
    REJECT_LOW_CONFIDENCE,
    REJECT_NOT_A_SPECIMEN,
    REJECT_OUT_OF_DISTRIBUTION,
    reason_code,
)
from labpipe.db.models import VerificationStatus

__all__ = ["Outcome", "Resolution", "SpecimenCall", "resolve"]


class Outcome(StrEnum):
    """How one specimen counts."""

    ACCEPTED = "accepted"
    REJECTED = "rejected"
    EXCLUDED = "excluded"
    """Verified as not a specimen."""
    UNCLASSIFIED = "unclassified"


@dataclass(frozen=True)
class SpecimenCall:
    """Everything the rule needs to know about one specimen (one row of
    :func:`labpipe.queries.calls.load_calls`)."""

    specimen_id: int
    sample_id: str | None
    family: str | None = None
    """The classification's best family (kept even when rejected); ``None`` when unclassified."""
    probability: float | None = None
    """Calibrated probability of ``family``; ``None`` when unclassified."""
    rejected: bool = True
    reason: str | None = None
    top_k: tuple[tuple[str, float], ...] = ()
    model_version: str | None = None
    verification: str | None = None
    """Status of the latest verification (:class:`VerificationStatus`), if any."""
    verified_family: str | None = None

    @property
    def classified(self) -> bool:
        return self.probability is not None

    @property
    def best_family(self) -> str | None:
        """What the classifier thought, even when rejected: its family, else its first top-k family.

        >>> SpecimenCall(1, "S1", None, 0.3, True, None, (("Apidae", 0.3),)).best_family
        'Apidae'
        """
        return self.family or (self.top_k[0][0] if self.top_k else None)


@dataclass(frozen=True)
class Resolution:
    """What :func:`resolve` decides for one specimen."""

    outcome: Outcome
    family: str | None = None
    """The family it counts as (accepted only)."""
    verified: bool = False
    """The family (or the exclusion) was decided by a person, not by the classifier."""
    multiple: bool = False
    distribution: tuple[tuple[str, float], ...] = ()
    """Family probabilities for the expected counts (sum <= 1)."""
    other: float = 0.0
    """Probability mass on no listed family."""


def _distribution(top_k: Sequence[tuple[str, float]]) -> tuple[tuple[tuple[str, float], ...], float]:
    """Clean top-k pairs (clipped to [0, 1], rescaled when they sum above 1) and the mass left over.

    >>> _distribution([("A", 0.5)]), _distribution([("A", 0.9), ("B", 0.9)])
    (((('A', 0.5),), 0.5), ((('A', 0.5), ('B', 0.5)), 0.0))
    """
    pairs = [(str(f), min(max(float(p), 0.0), 1.0)) for f, p in top_k if f and math.isfinite(float(p))]
    total = sum(p for _, p in pairs)
    if total > 1.0:
        pairs = [(f, p / total) for f, p in pairs]
        total = 1.0
    return tuple(pairs), max(0.0, 1.0 - total)


def _predicted(call: SpecimenCall, threshold: float | None) -> tuple[bool, str | None]:
    """(accepted, best family) of the classification at ``threshold`` (``None``: as stored)."""
    family = call.best_family
    if not call.classified or family is None:
        return False, None
    if threshold is None:
        return (not call.rejected), family
    code = reason_code(call.reason) if call.rejected else None
    if code is not None and code != REJECT_LOW_CONFIDENCE:
        return False, family  # not an arthropod, family unresolved, ...: no threshold changes that
    return float(call.probability or 0.0) >= threshold, family


def resolve(call: SpecimenCall, threshold: float | None = None) -> Resolution:
    """How ``call`` counts at ``threshold`` (the rules are in the module docstring).

    Parameters
    ----------
    call:
        One specimen's chosen classification and latest verification.
    threshold:
        Least calibrated probability accepted, in [0, 1]; ``None`` keeps the stored decision.

    Example
    -------
    >>> c = SpecimenCall(1, "S1", "Carabidae", 0.42, True, "low_confidence: ...", (("Carabidae", 0.42),))
    >>> resolve(c).outcome, resolve(c, threshold=0.4).family
    (<Outcome.REJECTED: 'rejected'>, 'Carabidae')
    >>> resolve(SpecimenCall(2, "S1", verification="corrected", verified_family="Apidae")).family
    'Apidae'
    """
    if threshold is not None and not (0.0 <= threshold <= 1.0):
        raise ValueError(f"threshold must be in [0, 1], given threshold {threshold}")
    status = call.verification
    if status == VerificationStatus.NOT_SPECIMEN:
        return Resolution(Outcome.EXCLUDED, verified=True)
    if status in (VerificationStatus.CONFIRMED, VerificationStatus.CORRECTED):
        family = call.verified_family
        if family is None and status == VerificationStatus.CONFIRMED:
            family = call.best_family
        if family is None:
            return Resolution(Outcome.REJECTED, verified=True, other=1.0)
        return Resolution(Outcome.ACCEPTED, family, verified=True, distribution=((family, 1.0),))
    multiple = status == VerificationStatus.MULTIPLE
    if multiple and call.verified_family:
        family = call.verified_family
        return Resolution(
            Outcome.ACCEPTED, family, verified=True, multiple=True, distribution=((family, 1.0),)
        )
    if not call.classified:
        if multiple:
            return Resolution(Outcome.REJECTED, multiple=True, other=1.0)
        return Resolution(Outcome.UNCLASSIFIED)
    distribution, other = _distribution(call.top_k)
    if call.rejected and reason_code(call.reason) in (REJECT_OUT_OF_DISTRIBUTION, REJECT_NOT_A_SPECIMEN):
        # Far from every family the model knows, or no specimen at all (the gate): its softmax says
        # nothing about which family.
        distribution, other = (), 1.0
    accepted, family = _predicted(call, threshold)
    outcome = Outcome.ACCEPTED if accepted else Outcome.REJECTED
    return Resolution(outcome, family if accepted else None, False, multiple, distribution, other)

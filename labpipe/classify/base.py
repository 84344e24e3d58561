"""What every family classifier returns, and the interface it implements."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

__all__ = [
    "REJECT_FAMILY_UNRESOLVED",
    "REJECT_LOW_CONFIDENCE",
    "REJECT_NOT_ARTHROPOD",
    "REJECT_NOT_A_SPECIMEN",
    "REJECT_OUT_OF_DISTRIBUTION",
    "REJECT_REASONS",
    "Classification",
    "FamilyClassifier",
    "reason_code",
    "redecide",
]

REJECT_LOW_CONFIDENCE = "low_confidence"
REJECT_NOT_ARTHROPOD = "not_arthropod"
REJECT_FAMILY_UNRESOLVED = "family_unresolved"
REJECT_OUT_OF_DISTRIBUTION = "out_of_distribution"
REJECT_NOT_A_SPECIMEN = "not_a_specimen"
"""The specimen-or-not gate (:mod:`labpipe.classify.gate`): debris, a fragment or empty background."""
REJECT_REASONS = (
    REJECT_LOW_CONFIDENCE,
    REJECT_NOT_ARTHROPOD,
    REJECT_FAMILY_UNRESOLVED,
    REJECT_OUT_OF_DISTRIBUTION,
    REJECT_NOT_A_SPECIMEN,
)
"""Stable codes. A ``Classification.reason`` starts with one of them, then ``": "`` and a
human-readable explanation, e.g. ``"not_arthropod: top class 'dishrag' 0.41"``."""


def reason_code(reason: str | None) -> str | None:
    """The stable code of a rejection reason (the part before the first ``":"``); ``None`` stays ``None``.

    >>> reason_code("low_confidence: Carabidae 0.42 < threshold 0.50")
    'low_confidence'
    """
    if reason is None:
        return None
    return reason.split(":", 1)[0].strip()


@dataclass(frozen=True)
class Classification:
    """One specimen's result. ``family`` is the best family even when rejected (for review);
    ``rejected`` says whether it counts."""

    family: str | None
    probability: float
    rejected: bool
    reason: str | None
    top: list[tuple[str, float]] = field(default_factory=list)
    """Top-k families with probabilities, best first."""
    model_version: str = ""


class FamilyClassifier(Protocol):
    version: str
    """name + weights hash + label-list hash."""
    name: str
    weights_hash: str
    labels_hash: str
    families: list[str]

    def classify(self, crops: Sequence[np.ndarray]) -> list[Classification]:
        """Classify square RGB ``uint8`` crops (any size; resized inside), batched internally."""
        ...


def redecide(
    family: str | None, probability: float, rejected: bool, reason: str | None, threshold: float
) -> tuple[bool, str | None]:
    """Decide a stored call again at ``threshold``, from its stored best family and probability.

    Only ``low_confidence`` depends on the threshold; a call rejected for any other reason (not an
    arthropod, not a specimen, out of distribution, family unresolved) stays rejected with its reason. Returns
    ``(rejected, reason)``.

    >>> redecide("Carabidae", 0.42, True, "low_confidence: Carabidae 0.42 < threshold 0.50", 0.4)
    (False, None)
    >>> redecide("Carabidae", 0.42, False, None, 0.6)
    (True, 'low_confidence: Carabidae 0.42 < threshold 0.60')
    >>> redecide("Carabidae", 0.9, True, "out_of_distribution: far from the training crops", 0.1)[0]
    True
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], given threshold {threshold}")
    code = reason_code(reason) if rejected else None
    if code is not None and code != REJECT_LOW_CONFIDENCE:
        return True, reason
    if family is None:
        return True, reason or f"{REJECT_FAMILY_UNRESOLVED}: no family"
    if probability >= threshold:
        return False, None
    return True, f"{REJECT_LOW_CONFIDENCE}: {family} {probability:.2f} < threshold {threshold:.2f}"

"""Counts that know their error: per-family counts corrected for misclassification and for
out-of-distribution specimens taken for a known family, with an interval.

Pure functions on arrays; nothing here reads the database or files.

The model
---------
A sample holds ``N_1 .. N_K`` specimens of the model's ``K`` families and ``N_o`` others (families
the model never learnt, and debris that passed the detector). Each specimen ends in one of ``K + 1``
outcomes: accepted as family ``j``, or rejected. A specimen of family ``i`` does so with
probabilities ``P[i, :]`` (one row of the validated confusion matrix *with rejection*, measured on
held-out crops), and an "other" with probabilities ``o`` (how held-out out-of-distribution crops
fell: mostly rejected, some accepted as a family). The expected outcome counts are then::

    E[n] = A^T N,    A = [P; o]  ((K + 1) x (K + 1)),   N = (N_1, .., N_K, N_o)

and the corrected counts solve it: ``N = (A^T)^-1 n`` where ``A`` is invertible and the solution
non-negative (the matrix-inversion estimator of Solow, Davis and Hu, "Estimating the taxonomic
composition of a sample when individuals are classified with error", Marine Ecology Progress
Series 216, 2001; "adjusted classify and count" in Forman, "Quantifying counts and costs via
classification", Data Mining and Knowledge Discovery 17, 2008), otherwise the non-negative least
squares solution (Lawson-Hanson), which is the same where the inverse is non-negative.

The interval
------------
Three things are uncertain, and each is redrawn in a parametric bootstrap (``draws`` times):

- every row of ``P`` and ``o``: a Dirichlet posterior on its validation counts with Jeffreys' prior
  (``Dirichlet(counts + 1/2)``): a confusion matrix validated on 20 crops per family gives wide
  rows, one validated on 2000 narrow ones;
- the sample's own outcome counts: ``Multinomial(n_total, n / n_total)`` (the sample is one draw of
  the process);
- then ``N`` is solved again.

The interval is the central ``level`` percentile range of the solved ``N_i``; the point estimate is
the solve on the observed counts and the posterior-mean rows. Without out-of-distribution
figures (``ood=None``) the "other" unknown is dropped and every specimen is assumed to belong to
one of the ``K`` families (rejections are then spread back over the families).

How a counts report calls it
----------------------------
``confusion`` is :func:`outcome_counts` of a model's held-out calls (``config.json`` of a trained
model records them under ``count_correction``), ``ood`` the outcome counts of out-of-distribution
crops (the same block, measured by leave-one-family-out: no evaluation set is needed); ``observed``
are a sample's accepted counts per family, ``rejected`` its rejected count::

    from labpipe.classify.count_correction import corrected_counts_from_record
    rows = corrected_counts_from_record(model_config["count_correction"], observed, rejected)
    # rows["Carabidae"].corrected, .low, .high beside the raw count; rows["other"] the rest
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.optimize import nnls

__all__ = [
    "OTHER",
    "CorrectedCount",
    "corrected_counts",
    "corrected_counts_from_record",
    "outcome_counts",
    "solve_counts",
]

OTHER = "other"
"""The row of specimens of no family of the model (unknown families and debris)."""


@dataclass(frozen=True)
class CorrectedCount:
    """One family's count: as counted, corrected, and the interval of the corrected count."""

    family: str
    raw: int
    """Specimens accepted as this family (0 for ``other``: they are the rejected ones)."""
    corrected: float
    low: float
    high: float
    level: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "raw": self.raw,
            "corrected": round(self.corrected, 2),
            "low": round(self.low, 2),
            "high": round(self.high, 2),
            "level": self.level,
        }


def outcome_counts(
    labels: npt.ArrayLike, predicted: npt.ArrayLike, rejected: npt.ArrayLike, n_families: int
) -> np.ndarray:
    """``(K, K + 1)`` counts: row = true family, column = accepted as family ``j`` or (last) rejected.

    >>> outcome_counts([0, 0, 1, 1], [0, 1, 1, 1], [False, False, False, True], 2).tolist()
    [[1, 1, 0], [0, 1, 1]]
    """
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(predicted, dtype=np.int64)
    r = np.asarray(rejected, dtype=bool)
    out = np.zeros((n_families, n_families + 1), dtype=np.int64)
    column = np.where(r, n_families, p)
    np.add.at(out, (y, column), 1)
    return out


def solve_counts(rates: npt.ArrayLike, outcomes: npt.ArrayLike) -> np.ndarray:
    """``N >= 0`` with ``rates^T N`` closest to ``outcomes`` (exact when it can be).

    ``rates``: ``(R, C)`` rows of outcome probabilities (each sums to 1); ``outcomes``: ``(C,)``.

    >>> solve_counts([[0.9, 0.1], [0.2, 0.8]], [29.0, 11.0]).round(6).tolist()
    [30.0, 10.0]
    """
    a = np.asarray(rates, dtype=np.float64)
    n = np.asarray(outcomes, dtype=np.float64)
    solution, _ = nnls(a.T, n)
    return solution


def _posterior_rows(counts: np.ndarray) -> np.ndarray:
    c = np.asarray(counts, dtype=np.float64) + 0.5
    return c / c.sum(axis=1, keepdims=True)


def corrected_counts(
    families: Sequence[str],
    observed: Mapping[str, int],
    rejected: int,
    confusion: npt.ArrayLike,
    ood: npt.ArrayLike | None = None,
    *,
    level: float = 0.95,
    draws: int = 2000,
    seed: int = 0,
) -> dict[str, CorrectedCount]:
    """Corrected count and interval per family (and ``other`` with ``ood``); see the module text.

    Parameters
    ----------
    families:
        The model's families, in the order of ``confusion``'s rows and columns.
    observed:
        Family -> specimens of the sample accepted as it (missing families: 0).
    rejected:
        Specimens of the sample rejected (any reason).
    confusion:
        ``(K, K + 1)`` held-out outcome counts (:func:`outcome_counts`).
    ood:
        ``(K + 1,)`` outcome counts of held-out out-of-distribution crops, or ``None``.
    level:
        Interval coverage (0.95: the 2.5 and 97.5 percentiles).
    draws:
        Bootstrap draws.

    Example
    -------
    A model that rejects 10 % of every family and takes 20 % of the unknown ones for family A:

    >>> conf = [[90, 0, 10], [0, 90, 10]]
    >>> rows = corrected_counts(["A", "B"], {"A": 46, "B": 36}, 48, conf, ood=[20, 0, 80], draws=200)
    >>> [round(rows[f].corrected) for f in ("A", "B", "other")]
    [40, 40, 50]
    """
    k = len(families)
    c = np.asarray(confusion, dtype=np.float64)
    if c.shape != (k, k + 1):
        raise ValueError(f"confusion must be (K, K + 1) = ({k}, {k + 1}); given {c.shape}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), given level {level}")
    unknown = set(observed) - set(families)
    if unknown:
        raise ValueError(f"observed names families the model does not have: {sorted(unknown)}")
    n = np.array([float(observed.get(f, 0)) for f in families] + [float(rejected)])
    counts = c if ood is None else np.vstack([c, np.asarray(ood, dtype=np.float64).reshape(1, k + 1)])
    point = solve_counts(_posterior_rows(counts), n)
    rng = np.random.default_rng(seed)
    total = int(n.sum())
    samples = np.empty((draws, len(counts)))
    share = n / total if total else np.full(k + 1, 1.0 / (k + 1))
    for b in range(draws):
        rows = np.vstack([rng.dirichlet(row + 0.5) for row in counts])
        n_star = rng.multinomial(total, share).astype(np.float64) if total else n
        samples[b] = solve_counts(rows, n_star)
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(samples, [tail, 100.0 - tail], axis=0)
    names = [*families, *([OTHER] if ood is not None else [])]
    raw = [int(observed.get(f, 0)) for f in families] + ([0] if ood is not None else [])
    return {
        name: CorrectedCount(name, raw[i], float(point[i]), float(low[i]), float(high[i]), level)
        for i, name in enumerate(names)
    }


def corrected_counts_from_record(
    record: Mapping[str, Any], observed: Mapping[str, int], rejected: int, **options: Any
) -> dict[str, CorrectedCount]:
    """:func:`corrected_counts` from a model's recorded ``count_correction`` block
    (``{"families": [...], "confusion": [[...]], "ood": [...] or null}``)."""
    ood = record.get("ood")
    return corrected_counts(
        list(record["families"]),
        observed,
        rejected,
        np.asarray(record["confusion"], dtype=np.float64),
        None if ood is None else np.asarray(ood, dtype=np.float64),
        **options,
    )

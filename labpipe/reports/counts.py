"""Per-sample x family counts: accepted, rejected, human-verified, and expected counts with intervals.

What each specimen counts as is decided at query time from the stored rows, without reprocessing:
which classification and which verification count is :mod:`labpipe.queries.calls` (the latest
verification that is not retracted; the chosen classification: the model version asked for, else
the default classifier's, else the newest), how they count is :func:`labpipe.queries.rule.resolve`
(a person's verification wins; otherwise the chosen classification's decision, re-decided at a
query-time threshold for ``low_confidence`` rejections only). Specimens without a classification
are ``unclassified`` and left out of ``specimens``; those verified as ``not_specimen`` are
``excluded``; ``multiple`` boxes count once, so counts are lower bounds where ``multiple`` is not
zero.

So ``specimens == sum(families.values()) + rejected`` for every sample.

**Expected counts** are the sum over specimens of the calibrated probability of each family
(``Classification.top_k``, ``[[family, p], ...]``), a verified specimen contributing probability 1
to its family. The mass a classification leaves outside its top-k (other families, non-arthropods,
debris) is not attributed to any family: it is summed as ``expected_other``, as is the whole mass
of a specimen rejected as ``out_of_distribution`` (its probabilities are not evidence of any family
the model knows). The 95 % interval of a
family's count is the equal-tailed interval of the Poisson-binomial distribution of the number of
successes among independent Bernoulli trials with those probabilities
(:func:`poisson_binomial_interval`: exact by dynamic programming, normal approximation beyond
20 000 uncertain specimens). Expected counts ignore the threshold: they are what the calibrated
probabilities say.

**Corrected counts** (asked for: ``compute_counts(..., corrected=True)``, ``labpipe counts
--corrected``, the sample page) estimate each family's true count from the predicted counts with
the model's validated confusion matrix and the share of unknown families it accepts, recorded by
training in the model directory's ``config.json`` (:mod:`labpipe.classify.count_correction`), with
an interval. Verified specimens are known and added back exactly; a sample whose model records no
matrix, that mixes models, or that is counted at another threshold than the model's gets none, and
a reason (:func:`correct_sample`).
"""

from __future__ import annotations

import datetime as dt
import io
import json
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from labpipe.classify.base import REJECT_NOT_A_SPECIMEN, reason_code
from labpipe.db.models import Model, Sample
from labpipe.queries.calls import CountFilter, load_calls
from labpipe.queries.rule import Outcome, SpecimenCall, resolve
from labpipe.queries.samples import done_images_per_sample, samples_by_id
from labpipe.reports.cells import SafeCsvWriter

__all__ = [
    "OTHER",
    "REJECTED",
    "UNASSIGNED",
    "Corrected",
    "CorrectedRow",
    "Expected",
    "ModelCorrection",
    "SampleCounts",
    "aggregate",
    "community_matrix",
    "compute_counts",
    "correct_sample",
    "correction_models",
    "count_families",
    "counts_to_csv",
    "counts_to_table",
    "matrix_to_csv",
    "poisson_binomial_interval",
    "poisson_binomial_pmf",
]

REJECTED = "rejected"
OTHER = "other"
UNASSIGNED = "_unassigned"
"""Row name of specimens whose image belongs to no sample (community matrix)."""

EXACT_LIMIT = 20_000
"""Above this many uncertain specimens, intervals use the normal approximation."""


# --------------------------------------------------------------------------------------------------
# Poisson-binomial intervals


def poisson_binomial_pmf(probabilities: Iterable[float]) -> np.ndarray:
    """Distribution of the number of successes of independent trials with ``probabilities``.

    Exact, by the recursion ``P_i(k) = P_{i-1}(k) (1 - p_i) + P_{i-1}(k - 1) p_i`` (O(n^2)).

    >>> poisson_binomial_pmf([0.5, 0.5]).tolist()
    [0.25, 0.5, 0.25]
    """
    ps = _check_probabilities(probabilities)
    pmf = np.zeros(ps.size + 1)
    pmf[0] = 1.0
    for i, p in enumerate(ps):
        moved = pmf[: i + 1] * p
        pmf[: i + 1] *= 1.0 - p
        pmf[1 : i + 2] += moved
    return pmf


def _check_probabilities(probabilities: Iterable[float]) -> np.ndarray:
    ps = np.asarray(list(probabilities), dtype=np.float64)
    if ps.ndim != 1:
        raise ValueError(f"probabilities must be a flat sequence, given shape {ps.shape}")
    bad = ~np.isfinite(ps) | (ps < 0.0) | (ps > 1.0)
    if bad.any():
        raise ValueError(f"probabilities must be in [0, 1], given {ps[bad][:5].tolist()}")
    return ps


def poisson_binomial_interval(
    probabilities: Iterable[float], level: float = 0.95, exact_limit: int = EXACT_LIMIT
) -> tuple[float, int, int]:
    """Mean and equal-tailed ``level`` interval of a Poisson-binomial count.

    Parameters
    ----------
    probabilities:
        Success probability of each independent trial (specimen), each in [0, 1].
    level:
        Coverage of the interval, in (0, 1).
    exact_limit:
        With more trials strictly between 0 and 1 than this, the normal approximation
        ``mean +- z sqrt(sum p (1 - p))`` (rounded outwards, clipped to the possible range) is used.

    Returns
    -------
    (mean, low, high)
        ``low`` is the smallest ``k`` with ``P(X <= k) >= (1 - level) / 2`` and ``high`` the smallest
        with ``P(X <= k) >= (1 + level) / 2``. Certain trials (p = 1) shift both; none gives (0, 0, 0).

    Example
    -------
    >>> poisson_binomial_interval([0.5, 0.5])
    (1.0, 0, 2)
    >>> poisson_binomial_interval([1.0, 1.0, 0.0])
    (2.0, 2, 2)
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), given level {level}")
    ps = _check_probabilities(probabilities)
    mean = float(ps.sum())
    certain = int(np.count_nonzero(ps == 1.0))
    uncertain = ps[(ps > 0.0) & (ps < 1.0)]
    if uncertain.size == 0:
        return mean, certain, certain
    tail = (1.0 - level) / 2.0
    if uncertain.size > exact_limit:
        sd = math.sqrt(float((uncertain * (1.0 - uncertain)).sum()))
        z = NormalDist().inv_cdf(1.0 - tail)
        m = float(uncertain.sum())
        low = max(0, math.floor(m - z * sd))
        high = min(uncertain.size, math.ceil(m + z * sd))
        return mean, certain + low, certain + high
    cdf = np.cumsum(poisson_binomial_pmf(uncertain))
    eps = 1e-12  # cumulative sums round; a quantile sitting exactly on a step must not move up
    low = int(np.searchsorted(cdf, tail - eps, side="left"))
    high = int(np.searchsorted(cdf, 1.0 - tail - eps, side="left"))
    return mean, certain + low, certain + min(high, uncertain.size)


# --------------------------------------------------------------------------------------------------
# Aggregation (pure)


@dataclass(frozen=True)
class Expected:
    """An expected count and its interval."""

    mean: float
    low: int
    high: int

    def as_dict(self) -> dict[str, float | int]:
        return {"mean": round(self.mean, 3), "low": self.low, "high": self.high}


@dataclass
class SampleCounts:
    """One sample's counts (one row of ``labpipe counts``)."""

    sample: str | None
    site: str | None = None
    collection_date: dt.date | None = None
    images: int = 0
    specimens: int = 0
    rejected: int = 0
    excluded: int = 0
    unclassified: int = 0
    multiple: int = 0
    verified: int = 0
    families: dict[str, int] = field(default_factory=dict)
    expected: dict[str, Expected] = field(default_factory=dict)
    expected_other: Expected = field(default_factory=lambda: Expected(0.0, 0, 0))
    model_versions: list[str] = field(default_factory=list)
    family_models: dict[str, list[str]] = field(default_factory=dict)
    """Model versions behind each accepted family's predicted specimens (for exports)."""
    family_verified: dict[str, int] = field(default_factory=dict)
    """How many of each family's specimens a person verified (for exports)."""
    rejected_verified: int = 0
    """Rejected specimens whose call is a person's (a verification naming no family)."""
    rejected_by_gate: int = 0
    """Predicted rejections for ``not_a_specimen`` (the specimen-or-not gate)."""
    corrected: Corrected | None = None
    """Counts corrected for the model's validated errors (:func:`correct_sample`), when asked for."""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: the fields of ``labpipe counts --json``."""
        return {
            "sample": self.sample,
            "site": self.site,
            "collection_date": self.collection_date.isoformat() if self.collection_date else None,
            "images": self.images,
            "specimens": self.specimens,
            REJECTED: self.rejected,
            "excluded": self.excluded,
            "unclassified": self.unclassified,
            "multiple": self.multiple,
            "verified": self.verified,
            "families": dict(self.families),
            "expected": {f: e.as_dict() for f, e in self.expected.items()},
            "expected_other": self.expected_other.as_dict(),
            "model_versions": list(self.model_versions),
            "mixed_models": self.mixed_models,
            **({"corrected": self.corrected.as_dict()} if self.corrected is not None else {}),
        }

    @property
    def mixed_models(self) -> bool:
        """The sample's predicted counts come from more than one classifier version: compare with
        care, or bring it to one model with ``labpipe reclassify``."""
        return len(self.model_versions) > 1


def aggregate(
    calls: Iterable[SpecimenCall],
    images: dict[str | None, int] | None = None,
    *,
    threshold: float | None = None,
    level: float = 0.95,
    samples: dict[str | None, Sample] | None = None,
) -> list[SampleCounts]:
    """Count ``calls`` per sample (pure: no database).

    Parameters
    ----------
    calls:
        One per specimen.
    images:
        Processed images per sample; samples listed here appear even with no specimens.
    threshold, level:
        See :func:`~labpipe.queries.rule.resolve` and :func:`poisson_binomial_interval`.
    samples:
        Sample rows, for the site and date columns.

    Returns
    -------
    list[SampleCounts]
        Sorted by sample id (unassigned last); families by count then name, expected by mean.
    """
    table: dict[str | None, SampleCounts] = {}
    probs: dict[str | None, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    other: dict[str | None, list[float]] = defaultdict(list)
    models: dict[str | None, set[str]] = defaultdict(set)
    family_models: dict[str | None, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))

    def entry(sample: str | None) -> SampleCounts:
        if sample not in table:
            row = (samples or {}).get(sample)
            table[sample] = SampleCounts(
                sample, site=row.site if row else None, collection_date=row.collection_date if row else None
            )
        return table[sample]

    for sample, n in (images or {}).items():
        entry(sample).images = n
    for call in calls:
        res = resolve(call, threshold)
        counts = entry(call.sample_id)
        if res.outcome is Outcome.EXCLUDED:
            counts.excluded += 1
            continue
        if res.outcome is Outcome.UNCLASSIFIED:
            counts.unclassified += 1
            continue
        counts.specimens += 1
        counts.verified += res.verified
        counts.multiple += res.multiple
        if call.model_version and not res.verified:
            models[call.sample_id].add(call.model_version)
        if res.outcome is Outcome.ACCEPTED and res.family:
            counts.families[res.family] = counts.families.get(res.family, 0) + 1
            if res.verified:
                counts.family_verified[res.family] = counts.family_verified.get(res.family, 0) + 1
            elif call.model_version:
                family_models[call.sample_id][res.family].add(call.model_version)
        else:
            counts.rejected += 1
            counts.rejected_verified += res.verified
            if not res.verified and call.rejected and reason_code(call.reason) == REJECT_NOT_A_SPECIMEN:
                counts.rejected_by_gate += 1
        for family, p in res.distribution:
            probs[call.sample_id][family].append(p)
        other[call.sample_id].append(res.other)
    out = []
    for sample in sorted(table, key=lambda s: (s is None, s or "")):
        counts = table[sample]
        counts.families = dict(sorted(counts.families.items(), key=lambda kv: (-kv[1], kv[0])))
        expected = {f: Expected(*poisson_binomial_interval(ps, level)) for f, ps in probs[sample].items()}
        counts.expected = dict(sorted(expected.items(), key=lambda kv: (-kv[1].mean, kv[0])))
        counts.expected_other = Expected(*poisson_binomial_interval(other[sample], level))
        counts.model_versions = sorted(models[sample])
        counts.family_models = {f: sorted(v) for f, v in family_models[sample].items()}
        out.append(counts)
    return out


# --------------------------------------------------------------------------------------------------
# Corrected counts (pure)


@dataclass(frozen=True)
class CorrectedRow:
    """One family's corrected count: the raw count, how many of it a person verified, and the
    corrected count with its interval (verified specimens included, as known)."""

    family: str
    count: int
    verified: int
    corrected: float
    low: float
    high: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "verified": self.verified,
            "corrected": round(self.corrected, 1),
            "low": round(self.low, 1),
            "high": round(self.high, 1),
        }


@dataclass
class Corrected:
    """A sample's corrected counts, or why there are none (``reason``)."""

    model_version: str | None
    reason: str | None = None
    """Why no corrected count is given (``None``: they are given)."""
    level: float = 0.95
    families: dict[str, CorrectedRow] = field(default_factory=dict)
    other: CorrectedRow | None = None
    """Specimens of no family of the model (unknown families, debris that passed the detector)."""
    notes: list[str] = field(default_factory=list)

    @property
    def available(self) -> bool:
        return self.reason is None

    def as_dict(self) -> dict[str, Any]:
        return {
            "available": self.available,
            "model_version": self.model_version,
            "reason": self.reason,
            "level": self.level,
            "families": {f: r.as_dict() for f, r in self.families.items()},
            OTHER: self.other.as_dict() if self.other is not None else None,
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class ModelCorrection:
    """What correcting a model's counts needs: its recorded ``count_correction`` block (``None``
    when it has none, with ``problem`` saying why) and the threshold its calls were decided at."""

    version: str
    record: Mapping[str, Any] | None
    threshold: float | None = None
    problem: str | None = None


def _exact(family: str, count: int, verified: int) -> CorrectedRow:
    return CorrectedRow(family, count, verified, float(verified), float(verified), float(verified))


def correct_sample(
    counts: SampleCounts,
    models: Mapping[str, ModelCorrection],
    *,
    threshold: float | None = None,
    level: float = 0.95,
    draws: int = 2000,
    seed: int = 0,
) -> Corrected:
    """A sample's counts corrected for its model's validated errors (pure: no database, no files).

    Only the **predicted** part is estimated. Specimens a person verified are known, not estimated:
    they are taken out of the observed counts before the correction (the validated confusion matrix
    describes the classifier's calls, not a person's), and added back, exactly, to their family
    afterwards (the interval is shifted by them, not widened); a verified specimen counted as
    rejected (a verification naming no family) is added to ``other``. So a fully verified sample
    gets its counts back with zero-width intervals, and a family a person named that the model does
    not know keeps its verified count.

    The predicted part (accepted per family, and rejected) is corrected by
    :func:`labpipe.classify.count_correction.corrected_counts_from_record`: the matrix-inversion
    estimator on the model's out-of-fold confusion matrix with rejection and its leave-one-family-out
    out-of-distribution outcomes (the ``other`` row), with a bootstrap interval.

    No corrected count is made up. ``reason`` says why there is none when: the sample has no counted
    specimens; its predicted calls come from more than one model (no single confusion matrix
    applies); the model records no ``count_correction`` (a built-in model, or a model directory
    that cannot be read); the counts were re-decided at a query-time ``threshold`` other than the
    model's own (the matrix was validated at the model's threshold); or a predicted family is not
    among the block's families.

    Example
    -------
    >>> c = SampleCounts("S1", specimens=100, rejected=20, families={"A": 50, "B": 30},
    ...                  family_verified={"A": 5}, model_versions=["m@1"])
    >>> block = {"families": ["A", "B"], "confusion": [[90, 0, 10], [0, 90, 10]], "ood": [20, 0, 80]}
    >>> r = correct_sample(c, {"m@1": ModelCorrection("m@1", block)}, draws=200)
    >>> r.available, r.families["A"].verified, round(r.families["A"].corrected)
    (True, 5, 52)
    >>> correct_sample(c, {"m@1": ModelCorrection("m@1", None)}).reason
    'no validated confusion matrix for model m@1'
    """
    from labpipe.classify.count_correction import OTHER as CORRECTION_OTHER
    from labpipe.classify.count_correction import corrected_counts_from_record

    versions = list(counts.model_versions)
    version = versions[0] if len(versions) == 1 else None
    if counts.specimens == 0:
        return Corrected(version, "no counted specimens", level)
    verified = {f: n for f, n in counts.family_verified.items() if n}
    predicted = {f: n - verified.get(f, 0) for f, n in counts.families.items() if n - verified.get(f, 0) > 0}
    predicted_rejected = counts.rejected - counts.rejected_verified
    notes = []
    if counts.multiple:
        notes.append(f"{counts.multiple} boxes hold several specimens, counted once: lower bounds")
    if not predicted and predicted_rejected == 0:
        rows = {f: _exact(f, n, verified.get(f, 0)) for f, n in counts.families.items()}
        other = _exact(OTHER, 0, counts.rejected_verified) if counts.rejected_verified else None
        notes.insert(0, "every counted specimen was verified by a person: the counts are exact")
        return Corrected(None, None, level, rows, other, notes)
    if len(versions) > 1:
        return Corrected(
            None,
            f"the sample mixes {len(versions)} models ({', '.join(versions)}): no single validated "
            f"confusion matrix applies; bring it to one with `labpipe reclassify --sample {counts.sample}`",
            level,
        )
    if version is None:
        return Corrected(None, "its predicted calls name no model version", level)
    model = models.get(version)
    if model is None or model.record is None:
        why = f" ({model.problem})" if model is not None and model.problem else ""
        return Corrected(version, f"no validated confusion matrix for model {version}{why}", level)
    if threshold is not None and (model.threshold is None or abs(threshold - model.threshold) > 1e-9):
        own = f"{model.threshold:g}" if model.threshold is not None else "unknown"
        return Corrected(
            version,
            f"counts re-decided at threshold {threshold:g}; model {version}'s confusion matrix was "
            f"validated at its own threshold ({own}): count without a threshold to correct",
            level,
        )
    families = [str(f) for f in model.record.get("families") or []]
    unknown = sorted(set(predicted) - set(families))
    if unknown:
        return Corrected(
            version,
            f"model {version}'s confusion matrix does not name {', '.join(unknown)}",
            level,
        )
    try:
        solved = corrected_counts_from_record(
            model.record, predicted, predicted_rejected, level=level, draws=draws, seed=seed
        )
    except (KeyError, TypeError, ValueError) as exc:
        return Corrected(version, f"model {version}'s count_correction block is unusable: {exc}", level)
    rows = {}
    for family in families:
        c, v = solved[family], verified.get(family, 0)
        rows[family] = CorrectedRow(
            family, counts.families.get(family, 0), v, c.corrected + v, c.low + v, c.high + v
        )
    for family, v in verified.items():
        if family not in rows:
            rows[family] = _exact(family, counts.families.get(family, 0), v)
    kept = {f: r for f, r in rows.items() if r.count > 0 or r.corrected >= 0.5}
    order = list(counts.families) + sorted(
        set(kept) - set(counts.families), key=lambda f: (-kept[f].corrected, f)
    )
    rv = counts.rejected_verified
    if CORRECTION_OTHER in solved:
        o = solved[CORRECTION_OTHER]
        other: CorrectedRow | None = CorrectedRow(OTHER, 0, rv, o.corrected + rv, o.low + rv, o.high + rv)
    else:
        other = _exact(OTHER, 0, rv) if rv else None
        notes.append(
            f"model {version} records no out-of-distribution outcomes: every predicted specimen is "
            "assumed to be of its families (rejected ones are spread back over them)"
        )
    if counts.rejected_by_gate:
        notes.append(
            f"{counts.rejected_by_gate} rejected by the specimen gate, which the validated matrix "
            "does not include: a whole specimen the gate rejected is counted as other"
        )
    if verified or rv:
        known = sum(verified.values()) + rv
        notes.append(f"{known} verified specimen{'s' if known != 1 else ''} added back as known")
    return Corrected(version, None, level, {f: kept[f] for f in order if f in kept}, other, notes)


# --------------------------------------------------------------------------------------------------
# From the database


def correction_models(session: Session, versions: Iterable[str]) -> dict[str, ModelCorrection]:
    """Each model version's ``count_correction`` block, read from ``config.json`` in its directory
    (``Model.path``), and the threshold its calls were decided at; ``problem`` says why a model has
    none (built-in, directory gone, no block)."""
    wanted = sorted(set(versions))
    if not wanted:
        return {}
    out: dict[str, ModelCorrection] = {}
    for row in session.scalars(select(Model).where(Model.version.in_(wanted))):
        threshold = (row.settings or {}).get("threshold")
        record: Mapping[str, Any] | None = None
        problem: str | None = None
        config: dict[str, Any] = {}
        if not row.path:
            problem = "a built-in model: it records none"
        else:
            path = Path(row.path) / "config.json"
            try:
                loaded = json.loads(path.read_text(encoding="utf-8"))
                config = loaded if isinstance(loaded, dict) else {}
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                problem = f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}"
            else:
                block = config.get("count_correction")
                if isinstance(block, dict) and block.get("confusion"):
                    record = block
                else:
                    problem = f"{path} has no count_correction block"
        if threshold is None and isinstance(config.get("threshold"), int | float):
            threshold = config["threshold"]
        out[row.version] = ModelCorrection(
            row.version, record, float(threshold) if threshold is not None else None, problem
        )
    return out


def compute_counts(
    session: Session,
    flt: CountFilter | None = None,
    *,
    threshold: float | None = None,
    level: float = 0.95,
    corrected: bool = False,
) -> list[SampleCounts]:
    """Counts per sample from the database (see the module docstring for the rules).

    With ``corrected``, each sample's :attr:`SampleCounts.corrected` is filled by
    :func:`correct_sample` from its model's recorded confusion matrix (:func:`correction_models`).
    """
    flt = flt or CountFilter()
    calls = load_calls(session, flt)
    images = done_images_per_sample(session, flt)
    samples = samples_by_id(session, {c.sample_id for c in calls} | set(images))
    table = aggregate(calls, images, threshold=threshold, level=level, samples=samples)
    if corrected:
        models = correction_models(
            session, {v for c in table if len(c.model_versions) == 1 for v in c.model_versions}
        )
        for counts in table:
            counts.corrected = correct_sample(counts, models, threshold=threshold, level=level)
    return table


def count_families(
    session: Session,
    sample_id: str | None = None,
    model_version: str | None = None,
    *,
    threshold: float | None = None,
    samples: Sequence[str] = (),
    site: str | None = None,
    date_from: dt.date | None = None,
    date_to: dt.date | None = None,
    level: float = 0.95,
) -> list[dict[str, Any]]:
    """Accepted specimens per sample x family, rejected ones counted apart, as JSON-ready dicts.

    With ``model_version`` only that model's classifications count; without it each specimen's
    chosen classification does (the default classifier's where it has one, else the newest).
    Returns one dict per sample, sorted by sample id::

        {"sample": "S1", "images": 2, "specimens": 57, "rejected": 6,
         "families": {"Carabidae": 41, "Curculionidae": 10}, "expected": {...}, ...}
    """
    ids = tuple(samples) + ((sample_id,) if sample_id is not None else ())
    flt = CountFilter(
        samples=ids, site=site, date_from=date_from, date_to=date_to, model_version=model_version
    )
    return [c.as_dict() for c in compute_counts(session, flt, threshold=threshold, level=level)]


# --------------------------------------------------------------------------------------------------
# Renderings


def _corrected_cells(corr: dict[str, Any] | None, family: str) -> list[Any]:
    """``corrected, corrected_low, corrected_high, corrected_note`` of one CSV row."""
    if not corr:
        return ["", "", "", "not computed"]
    if not corr.get("available"):
        return ["", "", "", corr.get("reason") or ""]
    row = corr.get(OTHER) if family == OTHER else corr.get("families", {}).get(family)
    if row is None:
        return ["", "", "", ""] if family == REJECTED else [0.0, 0.0, 0.0, ""]
    return [row["corrected"], row["low"], row["high"], ""]


def _csv_row(
    sample: str,
    family: str,
    count: Any,
    e: dict[str, Any] | None,
    *,
    corr: dict[str, Any] | None,
    expected: bool,
    corrected: bool,
    tail: list[str],
) -> list[Any]:
    row = [sample, family, count]
    if expected:
        row += [e["mean"], e["low"], e["high"]] if e is not None else ["", "", ""]
    if corrected:
        row += _corrected_cells(corr, family)
    return [*row, *tail]


def counts_to_csv(table: list[dict[str, Any]], expected: bool = False, corrected: bool = False) -> str:
    """Long format, one row per sample x family, with ``rejected`` as its own row.

    Header ``sample,family,count,model_versions,mixed_models``: the classifier versions behind the
    sample's predicted counts (``;``-separated) and whether there is more than one. With
    ``expected``, also ``expected,expected_low,expected_high`` for every family with a count or an
    expected count, and an ``other`` row (expected mass on no listed family). With ``corrected``
    (rows need :attr:`SampleCounts.corrected`), also ``corrected,corrected_low,corrected_high,
    corrected_note``: the count corrected for the model's validated errors and its interval, and
    an ``other`` row (specimens of no family of the model); where a sample has no corrected counts
    the cells are empty and ``corrected_note`` says why.
    """
    buffer = io.StringIO()
    writer = SafeCsvWriter(buffer)
    header = ["sample", "family", "count"]
    if expected:
        header += ["expected", "expected_low", "expected_high"]
    if corrected:
        header += ["corrected", "corrected_low", "corrected_high", "corrected_note"]
    writer.writerow([*header, "model_versions", "mixed_models"])
    for entry in table:
        sample = entry["sample"] or ""
        versions = entry.get("model_versions", [])
        tail = [";".join(versions), "yes" if len(versions) > 1 else "no"]
        exp = entry.get("expected", {}) if expected else {}
        corr = entry.get("corrected") if corrected else None
        families = list(entry["families"]) + sorted(set(exp) - set(entry["families"]))
        if corr and corr.get("available"):
            families += [f for f in corr["families"] if f not in families]

        cells = partial(_csv_row, sample, corr=corr, expected=expected, corrected=corrected, tail=tail)
        for family in families:
            e = exp.get(family, {"mean": 0.0, "low": 0, "high": 0}) if expected else None
            writer.writerow(cells(family, entry["families"].get(family, 0), e))
        writer.writerow(cells(REJECTED, entry[REJECTED], None))
        if expected or corrected:
            o = entry.get("expected_other", {"mean": 0.0, "low": 0, "high": 0}) if expected else None
            writer.writerow(cells(OTHER, "", o))
    return buffer.getvalue()


def _corrected_text(row: dict[str, Any] | None) -> str:
    if row is None:
        return ""
    return f"   corrected {row['corrected']:>7.1f}  [{row['low']:.1f}, {row['high']:.1f}]"


def counts_to_table(table: list[dict[str, Any]], expected: bool = True) -> str:
    """A plain-text table for people (expected counts and their 95 % intervals beside the counts;
    corrected counts and their intervals where the rows have them)."""
    if not table:
        return "no processed specimens yet"
    lines: list[str] = []
    for entry in table:
        extra = []
        for key in ("excluded", "multiple", "unclassified", "verified"):
            if entry.get(key):
                extra.append(f"{entry[key]} {key}")
        tail = f" ({', '.join(extra)})" if extra else ""
        lines.append(
            f"sample {entry['sample'] or '(none)'}: {entry['images']} images, "
            f"{entry['specimens']} specimens{tail}"
        )
        if len(entry.get("model_versions", [])) > 1:
            lines.append(
                f"  MIXED MODELS: {', '.join(entry['model_versions'])} "
                "(bring it to one with `labpipe reclassify --sample ...`)"
            )
        exp = entry.get("expected", {}) if expected else {}
        corr = entry.get("corrected")
        rows = corr["families"] if corr and corr.get("available") else {}
        families = list(entry["families"]) + sorted(set(exp) - set(entry["families"]))
        families += [f for f in rows if f not in families]
        width = 36 if exp else 0
        for family in families:
            line = f"  {family:<22}{entry['families'].get(family, 0):>6}"
            e_text = ""
            if family in exp:
                e = exp[family]
                e_text = f"   expected {e['mean']:>8.1f}  [{e['low']}, {e['high']}]"
            line += e_text.ljust(width) + _corrected_text(rows.get(family))
            lines.append(line.rstrip())
        lines.append(f"  {REJECTED:<22}{entry[REJECTED]:>6}")
        other = corr.get(OTHER) if corr and corr.get("available") else None
        if (expected and entry.get("expected_other")) or other:
            o_text = ""
            if expected and entry.get("expected_other"):
                o = entry["expected_other"]
                o_text = f"   expected {o['mean']:>8.1f}  [{o['low']}, {o['high']}]"
            lines.append((f"  {OTHER:<22}{'':>6}" + o_text.ljust(width) + _corrected_text(other)).rstrip())
        if corr:
            level = round(100 * float(corr.get("level", 0.95)))
            if corr.get("available"):
                by = f"model {corr['model_version']}'s" if corr.get("model_version") else "the"
                lines.append(
                    f"  corrected: with {by} validated confusion matrix and unknown-family "
                    f"acceptance ({level} % intervals)"
                )
            else:
                lines.append(f"  corrected: none: {corr.get('reason')}")
            lines.extend(f"  corrected: {note}" for note in corr.get("notes", []))
    return "\n".join(lines)


def community_matrix(
    table: list[dict[str, Any]], value: str = "count"
) -> tuple[list[str], list[str], list[list[float]]]:
    """Samples x families, zero-filled: the layout of R's vegan and of a pandas DataFrame.

    Parameters
    ----------
    table:
        Rows of :func:`count_families`.
    value:
        ``count`` (accepted counts) or ``expected`` (expected counts).

    Returns
    -------
    (samples, families, rows)
        Row names (``_unassigned`` for images of no sample), column names sorted alphabetically
        (every family with a non-zero value in some sample), and one row of values per sample.

    Example
    -------
    >>> community_matrix([{"sample": "S1", "families": {"B": 2}}, {"sample": "S2", "families": {"A": 1}}])
    (['S1', 'S2'], ['A', 'B'], [[0, 2], [1, 0]])
    """
    if value not in ("count", "expected"):
        raise ValueError(f"value must be 'count' or 'expected', given value {value!r}")

    def cells(entry: dict[str, Any]) -> dict[str, float]:
        if value == "count":
            return dict(entry["families"])
        return {f: e["mean"] for f, e in entry.get("expected", {}).items() if e["mean"] > 0}

    per_sample = [cells(entry) for entry in table]
    families = sorted({f for c in per_sample for f, v in c.items() if v})
    names = [entry["sample"] if entry["sample"] is not None else UNASSIGNED for entry in table]
    zero: float = 0 if value == "count" else 0.0
    rows = [[c.get(f, zero) for f in families] for c in per_sample]
    return names, families, rows


def matrix_to_csv(table: list[dict[str, Any]], value: str = "count") -> str:
    """The community matrix as CSV: first column ``sample`` (row names), then one column per family.

    Read it with ``read.csv(f, row.names = 1)`` in R or ``pandas.read_csv(f, index_col=0)``.
    """
    names, families, rows = community_matrix(table, value)
    buffer = io.StringIO()
    writer = SafeCsvWriter(buffer)
    writer.writerow(["sample", *families])
    for name, row in zip(names, rows, strict=True):
        writer.writerow([name, *row])
    return buffer.getvalue()

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
"""

from __future__ import annotations

import datetime as dt
import io
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from labpipe.db.models import Sample
from labpipe.queries.calls import CountFilter, load_calls
from labpipe.queries.rule import Outcome, SpecimenCall, resolve
from labpipe.queries.samples import done_images_per_sample, samples_by_id
from labpipe.reports.cells import SafeCsvWriter

__all__ = [
    "OTHER",
    "REJECTED",
    "UNASSIGNED",
    "Expected",
    "SampleCounts",
    "aggregate",
    "community_matrix",
    "compute_counts",
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
# From the database


def compute_counts(
    session: Session,
    flt: CountFilter | None = None,
    *,
    threshold: float | None = None,
    level: float = 0.95,
) -> list[SampleCounts]:
    """Counts per sample from the database (see the module docstring for the rules)."""
    flt = flt or CountFilter()
    calls = load_calls(session, flt)
    images = done_images_per_sample(session, flt)
    samples = samples_by_id(session, {c.sample_id for c in calls} | set(images))
    return aggregate(calls, images, threshold=threshold, level=level, samples=samples)


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


def counts_to_csv(table: list[dict[str, Any]], expected: bool = False) -> str:
    """Long format, one row per sample x family, with ``rejected`` as its own row.

    Header ``sample,family,count,model_versions,mixed_models``: the classifier versions behind the
    sample's predicted counts (``;``-separated) and whether there is more than one. With
    ``expected``, also ``expected,expected_low,expected_high`` for every family with a count or an
    expected count, and an ``other`` row (expected mass on no listed family).
    """
    buffer = io.StringIO()
    writer = SafeCsvWriter(buffer)
    header = ["sample", "family", "count"]
    provenance = ["model_versions", "mixed_models"]
    writer.writerow(
        [*header, "expected", "expected_low", "expected_high", *provenance]
        if expected
        else [*header, *provenance]
    )
    for entry in table:
        sample = entry["sample"] or ""
        versions = entry.get("model_versions", [])
        tail = [";".join(versions), "yes" if len(versions) > 1 else "no"]
        if not expected:
            for family, n in entry["families"].items():
                writer.writerow([sample, family, n, *tail])
            writer.writerow([sample, REJECTED, entry[REJECTED], *tail])
            continue
        exp = entry.get("expected", {})
        families = list(entry["families"]) + sorted(set(exp) - set(entry["families"]))
        for family in families:
            e = exp.get(family, {"mean": 0.0, "low": 0, "high": 0})
            writer.writerow(
                [sample, family, entry["families"].get(family, 0), e["mean"], e["low"], e["high"], *tail]
            )
        writer.writerow([sample, REJECTED, entry[REJECTED], "", "", "", *tail])
        o = entry.get("expected_other", {"mean": 0.0, "low": 0, "high": 0})
        writer.writerow([sample, OTHER, "", o["mean"], o["low"], o["high"], *tail])
    return buffer.getvalue()


def counts_to_table(table: list[dict[str, Any]], expected: bool = True) -> str:
    """A plain-text table for people (expected counts and their 95 % intervals beside the counts)."""
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
        families = list(entry["families"]) + sorted(set(exp) - set(entry["families"]))
        for family in families:
            line = f"  {family:<22}{entry['families'].get(family, 0):>6}"
            if family in exp:
                e = exp[family]
                line += f"   expected {e['mean']:>8.1f}  [{e['low']}, {e['high']}]"
            lines.append(line)
        lines.append(f"  {REJECTED:<22}{entry[REJECTED]:>6}")
        if expected and entry.get("expected_other"):
            o = entry["expected_other"]
            lines.append(f"  {OTHER:<22}{'':>6}   expected {o['mean']:>8.1f}  [{o['low']}, {o['high']}]")
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

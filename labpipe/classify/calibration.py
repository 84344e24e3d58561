"""Calibration and selective classification: pure functions on logits, probabilities and labels.

- :func:`fit_temperature`: temperature scaling, the one-parameter calibration of Guo et al.
  ("On Calibration of Modern Neural Networks", ICML 2017): divide the logits by ``T`` fitted to
  minimise the negative log-likelihood on a held-out (validation) split. Accuracy is unchanged
  (the argmax is the same for every ``T > 0``); confidences become honest.
- :func:`expected_calibration_error`: ECE over 15 equal-width confidence bins, as in Guo et al.
  (after Naeini, Cooper and Hauskrecht, "Obtaining Well Calibrated Probabilities Using Bayesian
  Binning", AAAI 2015).
- :func:`select_threshold`: Chow's reject option (Chow, IEEE Trans. Inf. Theory 16(1), 1970) with
  the threshold chosen on validation for a target accuracy of the accepted predictions (the
  selective-classification view of Geifman and El-Yaniv, "Selective Classification for Deep
  Neural Networks", NeurIPS 2017).
- :func:`risk_coverage_curve`: the risk (error rate among accepted predictions) against coverage
  (share accepted) as the threshold sweeps from high to low (El-Yaniv and Wiener, "On the
  Foundations of Noise-free Selective Classification", JMLR 11, 2010).

Every function takes arrays and returns arrays or numbers; nothing here touches files or torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

__all__ = [
    "ECE_BINS",
    "RiskCoverage",
    "ThresholdChoice",
    "expected_calibration_error",
    "fit_temperature",
    "negative_log_likelihood",
    "risk_coverage_curve",
    "select_threshold",
    "softmax",
]

ECE_BINS = 15
"""Equal-width confidence bins of the expected calibration error (Guo et al. 2017 use 15)."""

_T_MIN, _T_MAX = 0.05, 20.0


def _check_logits(
    logits: npt.ArrayLike, labels: npt.ArrayLike | None = None
) -> tuple[np.ndarray, np.ndarray]:
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2 or z.shape[1] < 1:
        raise ValueError(f"logits must be (N, C) with C >= 1, given shape {z.shape}")
    if labels is None:
        return z, np.empty(0, dtype=np.int64)
    y = np.asarray(labels)
    if y.shape != (z.shape[0],):
        raise ValueError(f"labels must have shape ({z.shape[0]},), given shape {y.shape}")
    if y.size and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= z.shape[1]):
        raise ValueError(f"labels must be integers in [0, {z.shape[1]}), given {np.unique(y)[:10]}")
    return z, y.astype(np.int64)


def softmax(logits: npt.ArrayLike, temperature: float = 1.0) -> np.ndarray:
    """Row-wise ``softmax(logits / temperature)`` in float64, computed stably.

    Example
    -------
    >>> softmax(np.array([[0.0, 0.0]])).tolist()
    [[0.5, 0.5]]
    """
    if not temperature > 0 or not math.isfinite(temperature):
        raise ValueError(f"temperature must be positive and finite, given temperature {temperature}")
    z, _ = _check_logits(logits)
    return np.exp(log_softmax(z / temperature, axis=1))


def negative_log_likelihood(logits: npt.ArrayLike, labels: npt.ArrayLike, temperature: float = 1.0) -> float:
    """Mean ``-log softmax(logits / T)[label]`` (nats). ``nan`` for zero rows.

    Example
    -------
    >>> round(negative_log_likelihood(np.array([[0.0, 0.0]]), np.array([0])), 4)
    0.6931
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, given temperature {temperature}")
    z, y = _check_logits(logits, labels)
    if len(y) == 0:
        return float("nan")
    logp = log_softmax(z / temperature, axis=1)
    return float(-logp[np.arange(len(y)), y].mean())


def fit_temperature(logits: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    """The temperature ``T`` minimising the validation NLL of ``softmax(logits / T)`` (Guo et al. 2017).

    The NLL is convex in ``1 / T`` (a log-sum-exp of linear functions minus a linear function), so
    it is unimodal in ``log T`` and a bounded scalar search finds the minimum. ``T`` is searched in
    ``[0.05, 20]``; a value at a bound means the data pushed it there (for example perfectly
    separated validation logits drive ``T`` to the lower bound: the model may be made as confident
    as we allow).

    Degenerate cases, in plain sight, return ``1.0`` (no evidence to rescale):

    - no rows, or a single class;
    - every row's true class has the largest logit (a perfectly separated validation split, common
      with small splits of easy families): each row's NLL then falls monotonically as ``T -> 0``,
      so the NLL has no minimum and the "fit" would only be the search's lower bound, saturating
      every probability at 1 and making any threshold meaningless.

    Parameters
    ----------
    logits:
        ``(N, C)`` uncalibrated logits of the validation split.
    labels:
        ``(N,)`` integer class indices.

    Returns
    -------
    float
        ``T > 0``; calibrated probabilities are ``softmax(logits / T)``.

    References
    ----------
    Guo, Pleiss, Sun and Weinberger, "On Calibration of Modern Neural Networks", ICML 2017, sec. 4.2.

    Example
    -------
    >>> z = np.array([[4.0, 0.0], [4.0, 0.0], [4.0, 0.0], [0.0, 4.0]])
    >>> y = np.array([0, 0, 1, 1])          # 3 of 4 right with confidence 0.98: over-confident
    >>> fit_temperature(z, y) > 1
    True
    """
    z, y = _check_logits(logits, labels)
    if len(y) == 0 or z.shape[1] < 2:
        return 1.0
    rows = np.arange(len(y))
    if np.all(z[rows, y] >= z.max(axis=1)):
        return 1.0

    def nll_of_log_t(log_t: float) -> float:
        logp = log_softmax(z / math.exp(log_t), axis=1)
        return float(-logp[rows, y].mean())

    result = minimize_scalar(
        nll_of_log_t, bounds=(math.log(_T_MIN), math.log(_T_MAX)), method="bounded", options={"xatol": 1e-5}
    )
    t = float(math.exp(result.x))
    # The bounded search may stop a hair inside a bound; keep T = 1 when it is no worse.
    return 1.0 if nll_of_log_t(0.0) <= nll_of_log_t(math.log(t)) else t


def _confidence_and_correct(probs: npt.ArrayLike, labels: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"probs must be (N, C), given shape {p.shape}")
    _, y = _check_logits(p, labels)
    return p.max(axis=1), p.argmax(axis=1) == y


def expected_calibration_error(probs: npt.ArrayLike, labels: npt.ArrayLike, n_bins: int = ECE_BINS) -> float:
    """ECE: the mean over equal-width confidence bins of ``|accuracy - mean confidence|``, weighted
    by the share of samples in the bin (Naeini et al. 2015; Guo et al. 2017, eq. 3).

    Confidence is the top probability; bins are ``(k/n, (k+1)/n]`` (the first includes 0).
    ``nan`` when there are no rows.

    Example
    -------
    >>> p = np.array([[0.9, 0.1], [0.9, 0.1]])
    >>> round(expected_calibration_error(p, np.array([0, 1])), 3)     # conf 0.9, accuracy 0.5
    0.4
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, given n_bins {n_bins}")
    conf, correct = _confidence_and_correct(probs, labels)
    if len(conf) == 0:
        return float("nan")
    # Bin k holds (k/n, (k+1)/n]; ceil(conf * n) - 1 does that, with 0 going to bin 0.
    bins = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    ece = 0.0
    for k in range(n_bins):
        mask = bins == k
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - conf[mask].mean())
    return float(ece)


@dataclass(frozen=True)
class ThresholdChoice:
    """What :func:`select_threshold` chose, with the validation evidence for it."""

    threshold: float
    """Accept a prediction when its calibrated top probability is ``>= threshold``."""
    target: float
    """The requested accuracy of accepted predictions."""
    reachable: bool
    """Whether some threshold reaches ``target`` on validation."""
    accepted_accuracy: float
    """Accuracy of the accepted validation predictions at ``threshold`` (``nan`` if none accepted)."""
    coverage: float
    """Share of validation predictions accepted at ``threshold``."""
    n: int
    """Validation predictions the choice was made on."""

    def as_dict(self) -> dict[str, float | bool | int]:
        return {
            "threshold": self.threshold,
            "target": self.target,
            "reachable": self.reachable,
            "val_accepted_accuracy": self.accepted_accuracy,
            "val_coverage": self.coverage,
            "val_n": self.n,
        }


def _accepted_accuracy_by_candidate(conf: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, ...]:
    """Candidate thresholds (the distinct confidences, descending) and, for each, the number
    accepted (``conf >= t``) and the number of correct ones among them."""
    order = np.argsort(-conf, kind="stable")
    c_sorted = conf[order]
    hits = np.cumsum(correct[order])
    # Last position of each distinct confidence: accepting t accepts every tie of t.
    last = np.flatnonzero(np.r_[c_sorted[1:] != c_sorted[:-1], True])
    accepted = last + 1
    return c_sorted[last], accepted, hits[last]


def select_threshold(confidence: npt.ArrayLike, correct: npt.ArrayLike, target: float) -> ThresholdChoice:
    """The lowest threshold whose accepted predictions are at least ``target`` accurate on validation.

    A prediction is accepted when its confidence is ``>= threshold``. Candidates are the distinct
    validation confidences; the chosen one is the lowest ``t`` with
    ``accuracy({i: conf_i >= t}) >= target``, i.e. the largest coverage that still meets the
    target (Chow's reject option, tuned as in Geifman and El-Yaniv 2017, without their
    confidence bound: the target holds on validation, not with a guarantee).

    Fallback when the target is unreachable (every candidate's accepted accuracy is below it): the
    threshold with the best accepted accuracy, ties broken towards more coverage, and
    ``reachable=False`` so callers can warn. With no validation rows the threshold is ``1.0``
    (accept only certainties) and ``reachable=False``.

    Parameters
    ----------
    confidence:
        ``(N,)`` calibrated top probabilities.
    correct:
        ``(N,)`` booleans: the top prediction is right.
    target:
        Required accuracy of accepted predictions, in (0, 1].

    Example
    -------
    >>> select_threshold([0.9, 0.8, 0.7, 0.6], [True, True, False, True], 0.95).threshold
    0.8
    """
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target must be in (0, 1], given target {target}")
    conf = np.asarray(confidence, dtype=np.float64)
    ok = np.asarray(correct, dtype=bool)
    if conf.ndim != 1 or ok.shape != conf.shape:
        raise ValueError(
            f"confidence and correct must be 1-D of equal length, given {conf.shape}, {ok.shape}"
        )
    if len(conf) == 0:
        return ThresholdChoice(1.0, target, False, float("nan"), 0.0, 0)
    thresholds, accepted, hits = _accepted_accuracy_by_candidate(conf, ok)
    accuracy = hits / accepted
    # Float tolerance: 19/20 must count as 0.95.
    meets = np.flatnonzero(accuracy >= target - 1e-12)
    if meets.size:
        i = int(meets[-1])  # thresholds descend, so the last one meeting the target is the lowest
        reachable = True
    else:
        best = accuracy.max()
        i = int(np.flatnonzero(accuracy >= best - 1e-12)[-1])
        reachable = False
    return ThresholdChoice(
        threshold=float(thresholds[i]),
        target=target,
        reachable=reachable,
        accepted_accuracy=float(accuracy[i]),
        coverage=float(accepted[i] / len(conf)),
        n=len(conf),
    )


@dataclass(frozen=True)
class RiskCoverage:
    """Points of a risk-coverage curve, from the most confident prediction to all of them."""

    thresholds: np.ndarray
    """Distinct confidences, descending: accepting ``conf >= thresholds[i]`` gives point ``i``."""
    coverage: np.ndarray
    """Share accepted at each threshold (increasing to 1)."""
    risk: np.ndarray
    """Error rate among the accepted at each threshold."""

    @property
    def aurc(self) -> float:
        """Area under the risk-coverage curve (step-wise, per accepted sample; lower is better)."""
        if len(self.coverage) == 0:
            return float("nan")
        widths = np.diff(np.r_[0.0, self.coverage])
        return float(np.sum(widths * self.risk))


def risk_coverage_curve(confidence: npt.ArrayLike, correct: npt.ArrayLike) -> RiskCoverage:
    """Risk (error rate of accepted predictions) and coverage for every threshold (El-Yaniv and
    Wiener 2010). Tied confidences are accepted together, so each point is reachable by a threshold.

    Example
    -------
    >>> rc = risk_coverage_curve([0.9, 0.8, 0.7, 0.6], [True, True, False, True])
    >>> rc.coverage.tolist(), rc.risk.tolist()
    ([0.25, 0.5, 0.75, 1.0], [0.0, 0.0, 0.3333333333333333, 0.25])
    """
    conf = np.asarray(confidence, dtype=np.float64)
    ok = np.asarray(correct, dtype=bool)
    if conf.ndim != 1 or ok.shape != conf.shape:
        raise ValueError(
            f"confidence and correct must be 1-D of equal length, given {conf.shape}, {ok.shape}"
        )
    if len(conf) == 0:
        empty = np.empty(0, dtype=np.float64)
        return RiskCoverage(empty, empty, empty)
    thresholds, accepted, hits = _accepted_accuracy_by_candidate(conf, ok)
    return RiskCoverage(thresholds, accepted / len(conf), (accepted - hits) / accepted)

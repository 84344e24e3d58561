"""Out-of-distribution rejection from backbone features: class-conditional Gaussians, Mahalanobis distance.

A softmax is confident about inputs unlike anything it was trained on (a classifier of ants, bees
and ground beetles will call a fly in a well "bee" with probability 0.9), so a confidence threshold
alone lets most out-of-distribution specimens through. Lee et al. [1]_ fit one Gaussian per class
to the network's penultimate features, with a covariance shared by all classes, and score an input
by its Mahalanobis distance to the nearest class mean: inputs far from every class are rejected
whatever the softmax says.

Here the features are the backbone's pooled 1280-d features (what the family head reads). With a
few hundred training crops the sample covariance of 1280 dimensions is singular, so it is shrunk
towards a scaled identity with the Ledoit-Wolf rule [2]_ before it is inverted. The rejection
distance is chosen on the validation split, in distribution only, as the distance that keeps a
stated share (``keep``, default 0.975) of validation images: no out-of-distribution data is needed
to choose it, so figures measured on out-of-distribution folders are honest.

References
----------
.. [1] K. Lee, K. Lee, H. Lee, J. Shin, "A Simple Unified Framework for Detecting Out-of-Distribution
   Samples and Adversarial Attacks", NeurIPS 2018.
.. [2] O. Ledoit, M. Wolf, "A well-conditioned estimator for large-dimensional covariance matrices",
   Journal of Multivariate Analysis 88(2), 2004.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

__all__ = [
    "OOD_FILE",
    "FeatureGaussians",
    "fit_feature_gaussians",
    "kth_nearest_distance",
    "ledoit_wolf_covariance",
    "load_feature_gaussians",
    "mahalanobis_distance",
    "save_feature_gaussians",
    "select_distance_threshold",
]

OOD_FILE = "ood.safetensors"


def ledoit_wolf_covariance(centred: npt.ArrayLike) -> tuple[np.ndarray, float]:
    """Ledoit-Wolf shrunk covariance of rows that are already centred, and the shrinkage used.

    ``(1 - s) S + s mu I`` where ``S = X^T X / n``, ``mu = trace(S) / d`` and ``s`` in [0, 1] is the
    estimate of [2]_ that minimises the expected squared error.

    Parameters
    ----------
    centred:
        ``(n, d)`` observations minus their (class) means, ``n >= 2``.

    Returns
    -------
    covariance, shrinkage:
        ``(d, d)`` float64 matrix (positive definite unless every row is zero) and ``s``.

    Examples
    --------
    >>> x = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    >>> cov, s = ledoit_wolf_covariance(x)
    >>> np.allclose(cov, 0.5 * np.eye(2)), s
    (True, 0.0)
    """
    x = np.asarray(centred, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need an (n, d) array with n >= 2 rows; given shape {x.shape}")
    n, d = x.shape
    sample = x.T @ x / n
    mu = float(np.trace(sample)) / d
    target_gap = sample.copy()
    target_gap.flat[:: d + 1] -= mu
    delta2 = float((target_gap**2).sum()) / d  # ||S - mu I||^2 / d
    if delta2 <= 0.0:  # S is already a multiple of the identity: nothing to shrink
        return sample, 0.0
    # beta2 = (1 / n^2) sum_k ||x_k x_k^T - S||^2 / d, without forming the n outer products.
    sq_norms = (x**2).sum(axis=1)
    beta2 = float((sq_norms**2).sum() / n - (sample**2).sum()) / (n * d)
    beta2 = min(max(beta2, 0.0), delta2)
    shrinkage = beta2 / delta2
    cov = (1.0 - shrinkage) * sample
    cov.flat[:: d + 1] += shrinkage * mu
    return cov, shrinkage


@dataclass(frozen=True)
class FeatureGaussians:
    """One mean per class and a shared precision matrix (inverse shrunk covariance).

    The rejection distance is not part of it: it is chosen afterwards, on validation
    (:func:`select_distance_threshold`), and recorded with the model's other decisions.
    """

    means: np.ndarray
    """``(K, d)`` class means."""
    precision: np.ndarray
    """``(d, d)``."""
    shrinkage: float


def fit_feature_gaussians(features: npt.ArrayLike, labels: npt.ArrayLike, n_classes: int) -> FeatureGaussians:
    """Class means and the shared Ledoit-Wolf covariance of ``features`` ``(n, d)`` with ``labels`` ``(n,)``.

    Every class in ``range(n_classes)`` needs at least one row.
    """
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"need features (n, d) and labels (n,); given {x.shape} and {y.shape}")
    missing = sorted(set(range(n_classes)) - set(y.tolist()))
    if missing:
        raise ValueError(f"classes {missing} have no feature rows; every class needs at least one")
    means = np.stack([x[y == k].mean(axis=0) for k in range(n_classes)])
    cov, shrinkage = ledoit_wolf_covariance(x - means[y])
    precision = np.linalg.inv(cov)
    precision = (precision + precision.T) / 2.0
    return FeatureGaussians(means, precision, shrinkage)


def mahalanobis_distance(features: npt.ArrayLike, gaussians: FeatureGaussians) -> np.ndarray:
    """``(n,)`` Mahalanobis distance of each row to the nearest class mean.

    >>> g = FeatureGaussians(np.array([[0.0, 0.0], [10.0, 0.0]]), np.eye(2), 0.0)
    >>> mahalanobis_distance([[3.0, 4.0], [9.0, 0.0]], g).tolist()
    [5.0, 1.0]
    """
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != gaussians.means.shape[1]:
        raise ValueError(f"features must be (n, {gaussians.means.shape[1]}); given shape {x.shape}")
    if len(x) == 0:
        return np.empty(0)
    p = gaussians.precision
    xp = x @ p
    mp = gaussians.means @ p
    # (x - m)^T P (x - m) = x P x - 2 x P m + m P m, for every pair (row, class) at once.
    d2 = (xp * x).sum(1)[:, None] - 2.0 * xp @ gaussians.means.T + (mp * gaussians.means).sum(1)[None, :]
    return np.sqrt(np.clip(d2.min(axis=1), 0.0, None))


def select_distance_threshold(distances: npt.ArrayLike, keep: float) -> float:
    """The smallest distance that keeps at least ``keep`` of ``distances`` (in-distribution validation).

    >>> select_distance_threshold([1.0, 2.0, 3.0, 4.0], 0.75)
    3.0
    >>> select_distance_threshold([1.0, 2.0, 3.0, 4.0], 1.0)
    4.0
    """
    d = np.sort(np.asarray(distances, dtype=np.float64).ravel())
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep must be in (0, 1]; given keep {keep}")
    if len(d) == 0:
        raise ValueError("no validation distances to choose a threshold from")
    index = min(len(d) - 1, max(0, int(np.ceil(keep * len(d))) - 1))
    return float(d[index])


def save_feature_gaussians(gaussians: FeatureGaussians, path: Path) -> None:
    """Write means and precision (float32) with the shrinkage as metadata."""
    import torch
    from safetensors.torch import save

    tensors = {
        "means": torch.from_numpy(np.ascontiguousarray(gaussians.means, dtype=np.float32)),
        "precision": torch.from_numpy(np.ascontiguousarray(gaussians.precision, dtype=np.float32)),
    }
    metadata = {"shrinkage": repr(float(gaussians.shrinkage))}
    Path(path).write_bytes(save(tensors, metadata=metadata))


def load_feature_gaussians(path: Path) -> FeatureGaussians:
    """Read what :func:`save_feature_gaussians` wrote."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
        means = fh.get_tensor("means").double().numpy()
        precision = fh.get_tensor("precision").double().numpy()
    return FeatureGaussians(means, precision, float(meta.get("shrinkage", "nan")))


# --------------------------------------------------------------------------------------------------
# Further rules: kNN distance on normalised features, energy, outlier exposure. Every score is
# "larger = farther from the training families"; a crop is rejected when its score exceeds the
# rule's threshold.

RULES = ("mahalanobis", "knn", "energy", "outlier_exposure")
"""Names of the out-of-distribution rules a trained model can record (``config.json`` ``ood.rule``)."""


def l2_normalise(features: npt.ArrayLike) -> np.ndarray:
    """Rows scaled to unit Euclidean length (float64); an all-zero row stays zero.

    >>> l2_normalise([[3.0, 4.0], [0.0, 0.0]]).tolist()
    [[0.6, 0.8], [0.0, 0.0]]
    """
    x = np.asarray(features, dtype=np.float64)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


def knn_distance(features: npt.ArrayLike, bank: npt.ArrayLike, k: int) -> np.ndarray:
    """``(n,)`` Euclidean distance of each L2-normalised row to its ``k``-th nearest row of ``bank``.

    Sun, Ming, Zhu and Li, "Out-of-Distribution Detection with Deep Nearest Neighbors", ICML 2022:
    no class-conditional Gaussian is assumed, so families whose features form several clusters
    (field photos and museum pins of the same family) are described as they are. ``bank`` holds the
    normalised training features (:func:`l2_normalise`); ``k`` is capped at ``len(bank)``.

    >>> bank = l2_normalise([[1.0, 0.0], [0.0, 1.0]])
    >>> knn_distance([[2.0, 0.0]], bank, 1).round(4).tolist()
    [0.0]
    >>> knn_distance([[2.0, 0.0]], bank, 2).round(4).tolist()
    [1.4142]
    """
    x = l2_normalise(features)
    b = np.asarray(bank, dtype=np.float64)
    if x.ndim != 2 or b.ndim != 2 or x.shape[1] != b.shape[1]:
        raise ValueError(f"features (n, d) and bank (m, d) must agree; given {x.shape} and {b.shape}")
    if len(b) == 0:
        raise ValueError("the kNN bank is empty")
    if len(x) == 0:
        return np.empty(0)
    k = max(1, min(int(k), len(b)))
    out = np.empty(len(x))
    for start in range(0, len(x), 512):  # bounded memory: 512 x m similarities at a time
        out[start : start + 512] = kth_nearest_distance(x[start : start + 512] @ b.T, k)
    return out


def kth_nearest_distance(similarity: np.ndarray, k: int) -> np.ndarray:
    """``(n,)`` Euclidean distance to the ``k``-th most similar column of each row of ``similarity``
    (cosine similarities of unit vectors: ``|a - b| = sqrt(2 - 2 a.b)``); columns set to ``-inf``
    are never neighbours.

    >>> kth_nearest_distance(np.array([[1.0, 0.0, -np.inf]]), 2).round(4).tolist()
    [1.4142]
    """
    kth = -np.partition(-np.asarray(similarity, dtype=np.float64), k - 1, axis=1)[:, k - 1]
    return np.sqrt(np.clip(2.0 - 2.0 * kth, 0.0, None))


def energy_score(logits: npt.ArrayLike, temperature: float = 1.0) -> np.ndarray:
    """``(n,)`` free energy ``-T log sum_k exp(z_k / T)`` of uncalibrated logits (Liu, Wang, Owens
    and Li, "Energy-based Out-of-distribution Detection", NeurIPS 2020): low for inputs the head
    has learnt, high for the rest. The paper uses ``T = 1``.

    >>> energy_score([[0.0, 0.0]]).round(4).tolist()
    [-0.6931]
    """
    from scipy.special import logsumexp

    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2:
        raise ValueError(f"logits must be (n, K), given shape {z.shape}")
    return -temperature * logsumexp(z / temperature, axis=1)


@dataclass(frozen=True)
class OutlierLogistic:
    """Outlier exposure as an explicit "other arthropod" class: a logistic model on normalised
    backbone features telling the model's families (0) from diverse real outliers (1).

    Hendrycks, Mazeika and Dietterich, "Deep Anomaly Detection with Outlier Exposure", ICLR 2019,
    train against an auxiliary outlier set; here the outlier class is a separate linear head, so
    the family head (and its macro-F1) is untouched. Its score is the logit of "outlier".
    """

    weight: np.ndarray
    """``(d,)``."""
    bias: float

    def score(self, features: npt.ArrayLike) -> np.ndarray:
        x = l2_normalise(features)
        if len(x) == 0:
            return np.empty(0)
        return x @ self.weight + self.bias


def fit_outlier_logistic(
    inliers: npt.ArrayLike,
    outliers: npt.ArrayLike,
    *,
    l2: float = 1e-3,
    max_iter: int = 500,
) -> OutlierLogistic:
    """Class-balanced, L2-penalised logistic regression (L-BFGS) of outlier vs inlier rows on
    :func:`l2_normalise`-d features; a few hundred rows per side are plenty."""
    from scipy.optimize import minimize
    from scipy.special import expit, log_expit

    a = l2_normalise(inliers)
    b = l2_normalise(outliers)
    if len(a) == 0 or len(b) == 0:
        raise ValueError("outlier exposure needs inlier and outlier features")
    x = np.vstack([a, b])
    y = np.r_[np.zeros(len(a)), np.ones(len(b))]
    sw = np.r_[np.full(len(a), 0.5 / len(a)), np.full(len(b), 0.5 / len(b))]
    d = x.shape[1]

    def loss_and_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, c = theta[:d], theta[d]
        z = x @ w + c
        loss = -(sw * (y * log_expit(z) + (1 - y) * log_expit(-z))).sum() + l2 * float(w @ w)
        r = sw * (expit(z) - y)
        return float(loss), np.r_[x.T @ r + 2 * l2 * w, r.sum()]

    result = minimize(
        loss_and_grad, np.zeros(d + 1), jac=True, method="L-BFGS-B", options={"maxiter": max_iter}
    )
    return OutlierLogistic(result.x[:d].copy(), float(result.x[d]))


def save_rule_arrays(path: Path, arrays: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    """Write a rule's arrays (float32) with string metadata to a safetensors file."""
    import torch
    from safetensors.torch import save

    tensors = {
        name: torch.from_numpy(np.ascontiguousarray(np.atleast_1d(value), dtype=np.float32))
        for name, value in arrays.items()
    }
    Path(path).write_bytes(save(tensors, metadata=metadata))


def load_rule_arrays(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read what :func:`save_rule_arrays` wrote (arrays as float64)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = dict(fh.metadata() or {})
        arrays = {name: fh.get_tensor(name).double().numpy() for name in fh.keys()}  # noqa: SIM118
    return arrays, meta

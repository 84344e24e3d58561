"""Classification metrics: pure functions on probabilities, labels and predictions.

Definitions follow scikit-learn's (``top_k_accuracy_score``, ``precision_recall_fscore_support``,
``confusion_matrix``) so numbers can be compared with published ones; scikit-learn itself is not
a dependency. "Micro" averages over images, "macro" over families (each family's recall counts
equally, whatever its size: Sokolova and Lapalme, "A systematic analysis of performance measures
for classification tasks", Information Processing & Management 45(4), 2009).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["confusion_matrix", "per_class_prf", "top_k_accuracy", "top_k_hits"]


def _labels(labels: npt.ArrayLike, n_classes: int, name: str = "labels") -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"{name} must be 1-D, given shape {y.shape}")
    if y.size and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"{name} must be integers in [0, {n_classes}), given {np.unique(y)[:10]}")
    return y.astype(np.int64)


def top_k_hits(scores: npt.ArrayLike, labels: npt.ArrayLike, k: int) -> np.ndarray:
    """``(N,)`` booleans: the true label is among the ``k`` highest scores of its row.

    Ties at the k-th place are broken by class index (lower first), as a stable sort does. ``k``
    larger than the number of classes counts every row as a hit.

    Example
    -------
    >>> top_k_hits(np.array([[0.5, 0.3, 0.2]]), np.array([1]), 2).tolist()
    [True]
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2:
        raise ValueError(f"scores must be (N, C), given shape {s.shape}")
    if k < 1:
        raise ValueError(f"k must be at least 1, given k {k}")
    y = _labels(labels, s.shape[1])
    if len(y) != s.shape[0]:
        raise ValueError(f"{len(y)} labels for {s.shape[0]} rows of scores")
    top = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return (top == y[:, None]).any(axis=1)


def top_k_accuracy(scores: npt.ArrayLike, labels: npt.ArrayLike, k: int = 1) -> tuple[float, float]:
    """Micro and macro top-``k`` accuracy.

    Micro: share of rows whose label is in the top ``k``. Macro: the mean over the classes present
    in ``labels`` of that share within the class (balanced accuracy for ``k = 1``). ``nan`` for no rows.

    Example
    -------
    >>> s = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.4, 0.6]])
    >>> top_k_accuracy(s, np.array([0, 0, 0, 1]), 1)        # all right
    (1.0, 1.0)
    >>> top_k_accuracy(s, np.array([0, 0, 0, 0]), 1)        # 3 of 4
    (0.75, 0.75)
    """
    hits = top_k_hits(scores, labels, k)
    y = np.asarray(labels)
    if len(hits) == 0:
        return float("nan"), float("nan")
    micro = float(hits.mean())
    macro = float(np.mean([hits[y == c].mean() for c in np.unique(y)]))
    return micro, macro


def confusion_matrix(y_true: npt.ArrayLike, y_pred: npt.ArrayLike, n_classes: int) -> np.ndarray:
    """``(n_classes, n_classes)`` counts: row = true class, column = predicted class.

    Example
    -------
    >>> confusion_matrix([0, 0, 1], [0, 1, 1], 2).tolist()
    [[1, 1], [0, 1]]
    """
    if n_classes < 1:
        raise ValueError(f"n_classes must be at least 1, given n_classes {n_classes}")
    t = _labels(y_true, n_classes, "y_true")
    p = _labels(y_pred, n_classes, "y_pred")
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in length: {t.shape} vs {p.shape}")
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (t, p), 1)
    return matrix


def per_class_prf(matrix: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-class precision, recall, F1 and support from a confusion matrix (rows true, columns predicted).

    A ratio with a zero denominator is 0 (scikit-learn's ``zero_division=0``): a class never
    predicted has precision 0, a class absent from the truth has recall 0 and support 0.

    Example
    -------
    >>> p, r, f, n = per_class_prf(np.array([[1, 1], [0, 2]]))
    >>> p.tolist(), r.tolist(), n.tolist()
    ([1.0, 0.6666666666666666], [0.5, 1.0], [2, 2])
    """
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"matrix must be square, given shape {m.shape}")
    tp = np.diag(m)
    predicted = m.sum(axis=0)
    support = m.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return precision, recall, f1, support.astype(np.int64)

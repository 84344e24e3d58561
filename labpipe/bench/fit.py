"""How run time grows: the slope of a straight line through log(time) against log(size).

A slope of 1 means time proportional to size (linear), below 1 sublinear (fixed costs dominate),
above 1 superlinear. Fitted by ordinary least squares on the logarithms.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Growth", "loglog_slope"]


@dataclass(frozen=True)
class Growth:
    slope: float
    """d log(time) / d log(size)."""
    r2: float
    """Share of the variance of log(time) the line explains (1 for two points)."""
    points: int

    def as_dict(self) -> dict[str, float | int]:
        return {"slope": round(self.slope, 3), "r2": round(self.r2, 3), "points": self.points}


def loglog_slope(sizes: Sequence[float], seconds: Sequence[float]) -> Growth:
    """Least-squares slope of ``log(seconds)`` on ``log(sizes)``.

    Parameters
    ----------
    sizes, seconds:
        Positive, the same length, at least two distinct sizes.

    Examples
    --------
    >>> loglog_slope([1e6, 4e6, 16e6], [2.0, 8.0, 32.0]).slope
    1.0
    >>> round(loglog_slope([1, 4, 16], [3.0, 6.0, 12.0]).slope, 6)
    0.5
    """
    x = np.asarray(sizes, dtype=np.float64)
    y = np.asarray(seconds, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"sizes and seconds must be 1-d and the same length; given {x.shape} and {y.shape}")
    if (x <= 0).any() or (y <= 0).any():
        raise ValueError(f"sizes and seconds must be positive; given {x.tolist()} and {y.tolist()}")
    if len(np.unique(x)) < 2:
        raise ValueError(f"need at least two distinct sizes; given {x.tolist()}")
    lx, ly = np.log(x), np.log(y)
    slope, intercept = np.polyfit(lx, ly, 1)
    residual = ly - (slope * lx + intercept)
    total = float(((ly - ly.mean()) ** 2).sum())
    r2 = 1.0 - float((residual**2).sum()) / total if total > 0 else 1.0
    return Growth(float(round(slope, 12)), r2 if math.isfinite(r2) else float("nan"), len(x))

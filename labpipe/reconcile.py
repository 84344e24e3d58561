"""Match a new detection run to the specimens already stored for an image (pure, no database).

A plate that is processed again (the same bytes from the archive, another detector, new settings)
must not lose what people did with its specimens: verifications, box edits, wells and barcode
links hang on specimen ids. So the new boxes are matched to the stored ones by overlap, one to one,
best overlap first (the assignment that maximises total IoU among pairs over ``min_iou``):

- a stored specimen that is found again keeps its id, its number on the plate and everything
  attached to it; its box and crop are the new run's unless a person set the box by hand;
- a stored specimen that is not found again is deleted only when nobody worked on it; one with
  human work is kept and flagged ``not_redetected`` (or, only on an explicit request, dropped and
  reported);
- a new box that matches nothing becomes a new specimen with a new id and the next free number.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from labpipe.detect.boxes import iou_matrix

__all__ = ["MIN_IOU", "Reconciliation", "StoredBox", "reconcile"]

MIN_IOU = 0.5
"""Overlap above which a new box is the same animal as a stored one (the detection-metric convention)."""

Box = tuple[int, int, int, int]
"""``(x, y, w, h)`` in full-resolution pixels."""


@dataclass(frozen=True)
class StoredBox:
    """What reconciliation needs to know of a stored specimen."""

    specimen_id: int
    index_in_image: int
    box: Box
    human_work: tuple[str, ...] = ()
    """What people attached to it: ``verification``, ``box_edit``, ``well``, ``barcode``, ``drawn``."""


@dataclass
class Reconciliation:
    """The outcome of matching ``new`` boxes to ``stored`` specimens."""

    matched: dict[int, int] = field(default_factory=dict)
    """New box position -> stored specimen id."""
    new: list[int] = field(default_factory=list)
    """Positions of new boxes that match nothing (new specimens)."""
    kept: list[int] = field(default_factory=list)
    """Stored specimens with human work that were not found again (kept, flagged)."""
    deleted: list[int] = field(default_factory=list)
    """Stored specimens without human work that were not found again."""
    dropped: list[int] = field(default_factory=list)
    """Stored specimens with human work not found again, dropped on explicit request."""


def reconcile(
    stored: Sequence[StoredBox],
    new_boxes: Sequence[Box],
    *,
    min_iou: float = MIN_IOU,
    drop_human_work: bool = False,
) -> Reconciliation:
    """Match ``new_boxes`` to ``stored`` one to one (maximum total IoU over pairs with IoU >= ``min_iou``).

    >>> stored = [StoredBox(7, 1, (0, 0, 10, 10), ("verification",)), StoredBox(8, 2, (50, 50, 10, 10))]
    >>> r = reconcile(stored, [(1, 1, 10, 10), (100, 100, 8, 8)])
    >>> r.matched, r.new, r.kept, r.deleted
    ({0: 7}, [1], [], [8])
    >>> reconcile(stored, []).kept, reconcile(stored, [], drop_human_work=True).dropped
    ([7], [7])
    """
    from scipy.optimize import linear_sum_assignment

    result = Reconciliation()
    iou = iou_matrix([s.box for s in stored], list(new_boxes))
    if iou.size:
        # Pairs under the cut-off must never be chosen: give them a weight no valid pair can lose to.
        weights = np.where(iou >= min_iou, iou, -1.0)
        rows, cols = linear_sum_assignment(weights, maximize=True)
        for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
            if iou[r, c] >= min_iou:
                result.matched[c] = stored[r].specimen_id
    found = set(result.matched.values())
    result.new = [i for i in range(len(new_boxes)) if i not in result.matched]
    for s in stored:
        if s.specimen_id in found:
            continue
        if not s.human_work:
            result.deleted.append(s.specimen_id)
        elif drop_human_work:
            result.dropped.append(s.specimen_id)
        else:
            result.kept.append(s.specimen_id)
    return result

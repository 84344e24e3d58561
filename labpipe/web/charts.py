"""Chart geometry for the pages' server-side SVG: pure functions from numbers to coordinates.

The templates only print what these return (no arithmetic in Jinja), so a chart can be checked
without rendering a page:

- :func:`count_chart`: a sample's horizontal bar chart, one bar per family (and one for the
  rejected), the expected count's 95 % interval as a whisker with a dot at the mean;
- :func:`ticks`: round axis values;
- :func:`share_width`: the width, in percent, of a probability bar (the specimen page's top-k);
- :func:`plate_extent`: the drawing area of a plate, from its size or else from its boxes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from labpipe.reports.counts import REJECTED
from labpipe.web.render import family_colour

__all__ = ["Bar", "BarChart", "Tick", "Whisker", "count_chart", "plate_extent", "share_width", "ticks"]

LABEL_WIDTH = 150
"""Room left of the bars for the family names (px)."""
BAR_HEIGHT = 22
BAR_GAP = 6
RIGHT_MARGIN = 60
"""Room right of the longest bar for its count (px)."""
AXIS_HEIGHT = 24
"""Room below the bars for the tick labels (px)."""
REJECTED_COLOUR = "#9a9a9a"


@dataclass(frozen=True)
class Whisker:
    """An expected count's interval and mean, in the bar's own coordinates (its top is y = 0)."""

    x_low: float
    x_high: float
    x_mean: float
    y_mid: float
    y_top: int
    y_bottom: int


@dataclass(frozen=True)
class Bar:
    """One bar: the group's offset ``y`` and everything drawn inside it."""

    label: str
    n: int
    colour: str
    y: int
    """Top of the bar's group in the chart."""
    bar_x: int
    bar_w: float
    bar_h: int
    label_x: int
    """Right end of the label (it is right-aligned)."""
    text_y: float
    """Baseline of the label and of the count."""
    count_x: float
    """Where the count is written: right of the bar or of its whisker, whichever is longer."""
    whisker: Whisker | None


@dataclass(frozen=True)
class Tick:
    """A vertical grid line from the top down to ``y2``, labelled ``value`` at ``label_y``."""

    x: float
    value: int
    y2: int
    label_y: int


@dataclass(frozen=True)
class BarChart:
    """A whole chart: its size, its bars and its axis."""

    width: int
    height: int
    bars: tuple[Bar, ...]
    ticks: tuple[Tick, ...]


def ticks(top: float) -> list[int]:
    """Round tick values from 0 to ``top`` (steps of 1, 2 or 5 times a power of ten, about six ticks).

    >>> ticks(7), ticks(230)
    ([0, 2, 4, 6], [0, 50, 100, 150, 200])
    >>> ticks(0)
    [0]
    """
    raw = max(1.0, top / 6)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    step = max(1, int(step))
    return list(range(0, int(top) + 1, step))


def _bar(label: str, n: int, y: int, scale: float, colour: str, expected: Mapping[str, Any] | None) -> Bar:
    """One bar at ``y``; ``expected`` (``mean``, ``low``, ``high`` in counts) adds the whisker."""
    w = n * scale
    whisker = None
    high = None
    if expected is not None:
        low, high, mean = expected["low"] * scale, expected["high"] * scale, expected["mean"] * scale
        whisker = Whisker(
            x_low=LABEL_WIDTH + low,
            x_high=LABEL_WIDTH + high,
            x_mean=LABEL_WIDTH + mean,
            y_mid=BAR_HEIGHT / 2,
            y_top=4,
            y_bottom=BAR_HEIGHT - 4,
        )
    return Bar(
        label=label,
        n=n,
        colour=colour,
        y=y,
        bar_x=LABEL_WIDTH,
        bar_w=max(w, 0),
        bar_h=BAR_HEIGHT,
        label_x=LABEL_WIDTH - 8,
        text_y=BAR_HEIGHT * 0.7,
        count_x=LABEL_WIDTH + max(w, high or 0) + 6,
        whisker=whisker,
    )


def count_chart(
    families: Mapping[str, int],
    expected: Mapping[str, Mapping[str, Any]],
    rejected: int,
    colours: Mapping[str, str],
    width: int = 640,
) -> BarChart:
    """A sample's bar chart: one bar per counted family (in the order given), then one per family
    with only an expected count of at least 0.5 (alphabetically), then the rejected bar.

    Parameters
    ----------
    families:
        Counted specimens per family (``SampleCounts.families``).
    expected:
        Expected count per family, ``{"mean": m, "low": a, "high": b}`` (drawn as a whisker).
    rejected:
        Specimens with no family at the threshold (a grey bar, no whisker).
    colours:
        Each family's colour (``labpipe.web.render.family_colours``).
    width:
        Width of the chart (px); the longest bar or whisker ends :data:`RIGHT_MARGIN` before it.

    Example
    -------
    >>> chart = count_chart({"Carabidae": 4}, {"Carabidae": {"mean": 4.2, "low": 3, "high": 6}}, 2,
    ...                     {"Carabidae": "#e6194b"}, width=510)
    >>> [(b.label, b.bar_w, b.whisker.x_high if b.whisker else None) for b in chart.bars]
    [('Carabidae', 200.0, 450.0), ('rejected', 100.0, None)]
    >>> [t.value for t in chart.ticks], chart.height
    ([0, 1, 2, 3, 4, 5, 6], 80)
    """
    rows = list(families.items())
    for family in sorted(set(expected) - set(families)):
        if expected[family]["mean"] >= 0.5:
            rows.append((family, 0))
    highs = [e["high"] for e in expected.values()]
    top = max([n for _, n in rows] + highs + [rejected, 1])
    scale = (width - LABEL_WIDTH - RIGHT_MARGIN) / top
    step = BAR_HEIGHT + BAR_GAP
    bars = [
        _bar(family, n, i * step, scale, colours.get(family) or family_colour(family), expected.get(family))
        for i, (family, n) in enumerate(rows)
    ]
    bars.append(_bar(REJECTED, rejected, len(bars) * step, scale, REJECTED_COLOUR, None))
    height = len(bars) * step + AXIS_HEIGHT
    axis = tuple(Tick(LABEL_WIDTH + t * scale, t, height - 20, height - 6) for t in ticks(top))
    return BarChart(width=width, height=height, bars=tuple(bars), ticks=axis)


def share_width(probability: float) -> float:
    """Width in percent of a bar showing ``probability``, to one decimal.

    >>> share_width(0.4567), share_width(1.0)
    (45.7, 100.0)
    """
    return round(probability * 100, 1)


def plate_extent(
    width: int | None, height: int | None, boxes: Iterable[tuple[int, int, int, int]], default: int = 1000
) -> tuple[int, int]:
    """The drawing area of a plate: its pixel size where known, else just enough for its boxes
    (``x, y, w, h``), else ``default`` square.

    >>> plate_extent(3000, 2000, []), plate_extent(None, None, [(10, 20, 30, 40)])
    ((3000, 2000), (40, 60))
    >>> plate_extent(None, None, [])
    (1000, 1000)
    """
    boxes = list(boxes)
    w = width or max([x + bw for x, _, bw, _ in boxes] or [default])
    h = height or max([y + bh for _, y, _, bh in boxes] or [default])
    return w, h

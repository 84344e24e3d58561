"""Template set-up and the small helpers the templates use (colours, numbers, ages, query strings)."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import Request
from fastapi.templating import Jinja2Templates

from labpipe.web.geometry import length_text
from labpipe.web.wording import reason_words

__all__ = [
    "PALETTE",
    "STATIC_DIR",
    "TEMPLATE_DIR",
    "family_colour",
    "family_colours",
    "templates",
    "utc_age",
    "with_query",
]

TEMPLATE_DIR = Path(__file__).parent / "templates"
STATIC_DIR = Path(__file__).parent / "static"

REJECTED_COLOUR = "#8a8a8a"
EXCLUDED_COLOUR = "#222222"


PALETTE = (
    "#e6194b",  # red
    "#3cb44b",  # green
    "#4363d8",  # blue
    "#f58231",  # orange
    "#911eb4",  # purple
    "#1fb5d6",  # cyan
    "#f032e6",  # magenta
    "#8fbf1f",  # lime
    "#469990",  # teal
    "#9a6324",  # brown
    "#800000",  # maroon
    "#808000",  # olive
    "#000075",  # navy
    "#c9a400",  # mustard
)
"""Strong, mutually distinct colours (after Trubetskoy's 20 distinct colours, without the pale
ones, which vanish on a light dish, and without grey, which marks rejected boxes)."""


def _slot(family: str) -> int:
    digest = hashlib.sha256(family.strip().lower().encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") % len(PALETTE)


def family_colour(family: str | None) -> str:
    """A family's own colour: the same on every page and every day (grey for no family).

    >>> family_colour("Carabidae") == family_colour("carabidae ") and family_colour(None)
    '#8a8a8a'
    """
    if not family:
        return REJECTED_COLOUR
    return PALETTE[_slot(family)]


def family_colours(families: Iterable[str]) -> dict[str, str]:
    """Colours for the families shown together (one plate, one sample), all different while there
    are no more families than colours: each keeps its own colour (:func:`family_colour`) unless a
    family listed before it took that colour already, then it takes the next free one. List the
    commonest first, so they keep theirs.

    >>> sorted(set(family_colours(["A", "B", "C", "D"]).values())).__len__()
    4
    """
    taken: set[int] = set()
    out: dict[str, str] = {}
    for family in families:
        if family in out or not family:
            continue
        slot = _slot(family)
        if len(taken) < len(PALETTE):
            while slot in taken:
                slot = (slot + 1) % len(PALETTE)
        taken.add(slot)
        out[family] = PALETTE[slot]
    return out


def with_query(request: Request, **changes: Any) -> str:
    """The current URL's path with its query string changed (``None`` removes a key).

    Keeps repeated keys; used for paging and sort links so filters are never lost.
    """
    items = [(k, v) for k, v in request.query_params.multi_items() if k not in changes]
    for key, value in changes.items():
        if value is None or value == "":
            continue
        items.append((key, str(value)))
    query = urlencode(items)
    return request.url.path + (f"?{query}" if query else "")


def utc_age(when: dt.datetime | None, now: dt.datetime) -> str:
    """``"12 s ago"``, ``"5 min ago"``, ``"3 h ago"``, or the date.

    >>> now = dt.datetime(2024, 1, 2, 12, 0, tzinfo=dt.UTC)
    >>> utc_age(now - dt.timedelta(seconds=30), now), utc_age(now - dt.timedelta(hours=2), now)
    ('30 s ago', '2 h ago')
    """
    if when is None:
        return "-"
    seconds = (now - when).total_seconds()
    if seconds < 90:
        return f"{max(0, round(seconds))} s ago"
    if seconds < 5400:
        return f"{round(seconds / 60)} min ago"
    if seconds < 48 * 3600:
        return f"{round(seconds / 3600)} h ago"
    return when.strftime("%Y-%m-%d")


def _pct(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value * 100:.{digits}f} %"


def _prob(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _when(value: dt.datetime | None) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC") if value else "-"


def _num(value: float | int | None, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return f"{value:,}".replace(",", "\u202f")
    return f"{value:,.{digits}f}".replace(",", "\u202f")


def _value(value: Any) -> Any:
    """A setting or figure as shown: a float rounded to two decimals (``0.9944020755300735`` is
    ``0.99``; a small one keeps two significant digits), anything else as it is.

    >>> _value(0.9944020755300735), _value(1.4), _value(0.000123), _value("x"), _value(True)
    ('0.99', '1.40', '0.00012', 'x', True)
    """
    if isinstance(value, float):
        if value != 0 and abs(value) < 0.01:
            return f"{value:.2g}"
        return f"{value:.2f}"
    return value


def _short_version(version: str | None) -> str:
    """``name@w1234567890ab-l...`` -> ``name@w1234567``."""
    if not version:
        return "-"
    name, _, rest = version.partition("@")
    return f"{name}@{rest[:8]}" if rest else name


templates = Jinja2Templates(directory=str(TEMPLATE_DIR))
templates.env.filters.update(
    colour=family_colour,
    pct=_pct,
    prob=_prob,
    when=_when,
    num=_num,
    short_version=_short_version,
    reason_words=reason_words,
    length_mm=length_text,
    value=_value,
)
templates.env.globals.update(with_query=with_query)
templates.env.trim_blocks = True
templates.env.lstrip_blocks = True

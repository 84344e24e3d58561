"""Plain words for what the classifier stored: the review pages show these, the raw text on hover.

A rejection reason is stored as ``"<code>: <detail>"`` (:data:`labpipe.classify.base.REJECT_REASONS`),
e.g. ``"not_arthropod: top class 'hair slide' 0.41; best family Carabidae 0.20"``: exact, but
jargon to a technician. :func:`reason_words` says the same in a sentence; the page keeps the stored
text in the ``title`` attribute for whoever wants the detail.
"""

from __future__ import annotations

import re

from labpipe.classify.base import (
    REJECT_FAMILY_UNRESOLVED,
    REJECT_LOW_CONFIDENCE,
    REJECT_NOT_A_SPECIMEN,
    REJECT_NOT_ARTHROPOD,
    REJECT_OUT_OF_DISTRIBUTION,
    reason_code,
)

__all__ = ["REASON_WORDS", "reason_words"]

REASON_WORDS: dict[str, str] = {
    REJECT_LOW_CONFIDENCE: "Not sure enough of the family",
    REJECT_NOT_ARTHROPOD: "Does not look like an insect or other arthropod",
    REJECT_FAMILY_UNRESOLVED: "Looks like an arthropod, but the family could not be told",
    REJECT_OUT_OF_DISTRIBUTION: "Unlike what the model was trained on (maybe a family it does not know)",
    REJECT_NOT_A_SPECIMEN: "Looks like debris, a fragment or empty background",
}
"""One sentence per stable reason code."""

_LOOKS_LIKE = re.compile(r"top class '([^']+)'")
_SURE = re.compile(r"(\d\.\d+) < threshold (\d\.\d+)")


def reason_words(reason: str | None) -> str:
    """The stored rejection reason in plain words (a reason of no known code is shown as stored).

    >>> reason_words("not_arthropod: top class 'hair slide' 0.41; best family Carabidae 0.20")
    'Does not look like an insect or other arthropod (it looks most like: hair slide)'
    >>> reason_words("low_confidence: Carabidae 0.45 < threshold 0.50")
    'Not sure enough of the family (0.45, needs 0.50)'
    >>> reason_words(None), reason_words("something new")
    ('', 'something new')
    """
    if not reason:
        return ""
    code = reason_code(reason)
    words = REASON_WORDS.get(code or "")
    if words is None:
        return reason
    detail = reason.split(":", 1)[1] if ":" in reason else ""
    if code in (REJECT_NOT_ARTHROPOD, REJECT_FAMILY_UNRESOLVED):
        found = _LOOKS_LIKE.search(detail)
        if found:
            return f"{words} (it looks most like: {found.group(1)})"
    if code == REJECT_LOW_CONFIDENCE:
        found = _SURE.search(detail)
        if found:
            return f"{words} ({float(found.group(1)):.2f}, needs {float(found.group(2)):.2f})"
    return words

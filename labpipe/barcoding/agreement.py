"""Image-based family against DNA-based family: confusion table, per-family agreement, review marks.

For every barcoded specimen (a barcode record with a DNA family, linked to a specimen) the image
family is the counted family (:func:`labpipe.queries.rule.resolve`: a person's verification wins,
else the classifier's accepted family at the threshold; ``None`` when rejected). Each record is
marked (``barcode_links.agreement``):

- ``agree``: same family (compared case-insensitively);
- ``disagree``: different families; ``needs_review`` is set unless a person has verified the
  specimen's family (then the disagreement has been looked at: it stays ``disagree``, unflagged);
- ``image_rejected``: the DNA names a family, the image classifier named none.

Records without a DNA family are not compared (``agreement`` stays empty).

The summary (:func:`agreement_summary`, pure) treats the DNA family as the reference: per family,
``agreement`` is the share of specimens of that DNA family that the images named the same (recall)
and ``precision`` the share of the images' calls of that family that DNA confirms.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from labpipe.db.models import Agreement, BarcodeLink, Image, Specimen
from labpipe.queries.calls import CountFilter, load_calls
from labpipe.queries.rule import Outcome, resolve

__all__ = [
    "REJECTED",
    "AgreementReport",
    "BarcodedSpecimen",
    "agreement_summary",
    "barcode_agreement",
    "compare_families",
    "confusion_to_text",
    "normalise_family",
]

REJECTED = "rejected"
"""Column of the confusion table for specimens the image classifier rejected."""


def normalise_family(name: str | None) -> str | None:
    """``Carabidae`` from ``' carabidae '``; empty -> ``None``.

    >>> normalise_family(" CARABIDAE "), normalise_family("")
    ('Carabidae', None)
    """
    if name is None:
        return None
    text = name.strip()
    return text[:1].upper() + text[1:].lower() if text else None


def compare_families(image_family: str | None, dna_family: str | None) -> Agreement | None:
    """How an image-based family compares with a DNA-based one (``None``: no DNA family).

    >>> compare_families("Carabidae", "carabidae"), compare_families(None, "Carabidae")
    (<Agreement.AGREE: 'agree'>, <Agreement.IMAGE_REJECTED: 'image_rejected'>)
    """
    dna, image = normalise_family(dna_family), normalise_family(image_family)
    if dna is None:
        return None
    if image is None:
        return Agreement.IMAGE_REJECTED
    return Agreement.AGREE if image == dna else Agreement.DISAGREE


def agreement_summary(pairs: Sequence[tuple[str | None, str | None]]) -> dict[str, Any]:
    """Confusion table and per-family agreement of ``(image family, DNA family)`` pairs.

    Returns
    -------
    dict
        ``confusion``: DNA family -> image family (or ``rejected``) -> count;
        ``families``: one dict per family (``family``, ``n_dna``, ``n_image``, ``n_agree``,
        ``agreement`` = n_agree / n_dna, ``precision`` = n_agree / n_image; ``None`` for 0/0);
        ``overall``: ``compared`` (pairs with a DNA family), ``agree``, ``disagree``,
        ``image_rejected``, ``no_dna_family``, and ``agreement`` = agree / (agree + disagree).

    Example
    -------
    >>> pairs = [("Carabidae", "Carabidae"), ("Carabidae", "Staphylinidae"), (None, "Carabidae")]
    >>> s = agreement_summary(pairs)
    >>> s["confusion"]["Carabidae"], s["overall"]["agreement"]
    ({'Carabidae': 1, 'rejected': 1}, 0.5)
    """
    confusion: dict[str, Counter[str]] = defaultdict(Counter)
    n_dna: Counter[str] = Counter()
    n_image: Counter[str] = Counter()
    n_agree: Counter[str] = Counter()
    overall = Counter({"compared": 0, "agree": 0, "disagree": 0, "image_rejected": 0, "no_dna_family": 0})
    for image_family, dna_family in pairs:
        dna, image = normalise_family(dna_family), normalise_family(image_family)
        if dna is None:
            overall["no_dna_family"] += 1
            continue
        overall["compared"] += 1
        confusion[dna][image or REJECTED] += 1
        n_dna[dna] += 1
        if image is None:
            overall["image_rejected"] += 1
            continue
        n_image[image] += 1
        if image == dna:
            n_agree[dna] += 1
            overall["agree"] += 1
        else:
            overall["disagree"] += 1
    families = []
    for family in sorted(set(n_dna) | set(n_image)):
        families.append(
            {
                "family": family,
                "n_dna": n_dna[family],
                "n_image": n_image[family],
                "n_agree": n_agree[family],
                "agreement": round(n_agree[family] / n_dna[family], 4) if n_dna[family] else None,
                "precision": round(n_agree[family] / n_image[family], 4) if n_image[family] else None,
            }
        )
    named = overall["agree"] + overall["disagree"]
    return {
        "confusion": {dna: dict(sorted(row.items())) for dna, row in sorted(confusion.items())},
        "families": families,
        "overall": {**overall, "agreement": round(overall["agree"] / named, 4) if named else None},
    }


@dataclass(frozen=True)
class BarcodedSpecimen:
    """One compared specimen."""

    sampleid: str
    specimen_id: int
    sample: str | None
    image_family: str | None
    image_source: str
    """``verified``, ``classifier`` or ``rejected``."""
    probability: float | None
    dna_family: str | None
    bin_uri: str | None
    processid: str | None
    agreement: str | None
    needs_review: bool

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class AgreementReport:
    """What :func:`barcode_agreement` found."""

    specimens: list[BarcodedSpecimen] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def disagreements(self) -> list[BarcodedSpecimen]:
        return [s for s in self.specimens if s.agreement == Agreement.DISAGREE]

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.summary,
            "disagreements": [s.as_dict() for s in self.disagreements],
            "needs_review": sum(s.needs_review for s in self.specimens),
        }


def barcode_agreement(
    session: Session, sample: str | None = None, threshold: float | None = None, mark: bool = True
) -> AgreementReport:
    """Compare image and DNA families of every barcoded specimen (of ``sample``) and, with ``mark``,
    record the result on the barcode records (the caller commits)."""
    query = (
        select(BarcodeLink, Image.sample_id)
        .join(Specimen, Specimen.id == BarcodeLink.specimen_id)
        .join(Image, Image.id == Specimen.image_id)
        .order_by(BarcodeLink.sampleid)
    )
    if sample is not None:
        query = query.where(Image.sample_id == sample)
    pairs = session.execute(query).all()
    ids = [link.specimen_id for link, _ in pairs if link.specimen_id is not None]
    calls = {c.specimen_id: c for c in load_calls(session, CountFilter(), ids)} if ids else {}
    report = AgreementReport()
    for link, sample_id in pairs:
        call = calls.get(link.specimen_id) if link.specimen_id is not None else None
        res = resolve(call, threshold) if call is not None else None
        accepted = res is not None and res.outcome is Outcome.ACCEPTED
        image_family = res.family if accepted and res is not None else None
        verified = bool(res is not None and res.verified)
        source = "verified" if verified and accepted else ("classifier" if accepted else REJECTED)
        result = compare_families(image_family, link.dna_family)
        needs_review = result is Agreement.DISAGREE and not verified
        if mark:
            link.agreement = result.value if result is not None else None
            link.needs_review = needs_review
        report.specimens.append(
            BarcodedSpecimen(
                sampleid=link.sampleid,
                specimen_id=link.specimen_id or 0,
                sample=sample_id,
                image_family=image_family,
                image_source=source,
                probability=call.probability if call is not None else None,
                dna_family=link.dna_family,
                bin_uri=link.bin_uri,
                processid=link.processid,
                agreement=result.value if result is not None else None,
                needs_review=needs_review,
            )
        )
    report.summary = agreement_summary([(s.image_family, s.dna_family) for s in report.specimens])
    if mark:
        session.flush()
    return report


def confusion_to_text(summary: dict[str, Any]) -> str:
    """The confusion table (rows: DNA family, columns: image family) and per-family agreement as text."""
    confusion = summary["confusion"]
    if not confusion:
        return "no barcoded specimens with a DNA family yet"
    columns = [*sorted({c for row in confusion.values() for c in row} - {REJECTED}), REJECTED]
    width = max(12, *(len(c) + 1 for c in columns))
    first = max(14, *(len(r) + 2 for r in confusion))
    lines = ["DNA \\ image".ljust(first) + "".join(c.rjust(width) for c in columns)]
    for dna, row in confusion.items():
        lines.append(dna.ljust(first) + "".join(str(row.get(c, 0)).rjust(width) for c in columns))
    lines.append("")
    lines.append(
        f"{'family':<{first}}{'n DNA':>8}{'n image':>9}{'agree':>7}{'agreement':>11}{'precision':>11}"
    )
    for f in summary["families"]:
        agreement = f"{f['agreement']:.2f}" if f["agreement"] is not None else "-"
        precision = f"{f['precision']:.2f}" if f["precision"] is not None else "-"
        lines.append(
            f"{f['family']:<{first}}{f['n_dna']:>8}{f['n_image']:>9}{f['n_agree']:>7}{agreement:>11}{precision:>11}"
        )
    o = summary["overall"]
    rate = f"{o['agreement']:.2f}" if o["agreement"] is not None else "-"
    lines.append("")
    lines.append(
        f"compared {o['compared']}: agree {o['agree']}, disagree {o['disagree']}, "
        f"image rejected {o['image_rejected']}; agreement {rate} (no DNA family: {o['no_dna_family']})"
    )
    return "\n".join(lines)

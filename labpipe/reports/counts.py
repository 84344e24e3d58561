"""Per-sample family counts from the database, and their text/CSV renderings."""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from labpipe.db.models import Classification, Image, ImageStatus, Model, Specimen

__all__ = ["count_families", "counts_to_csv", "counts_to_table"]

REJECTED = "rejected"


def count_families(
    session: Session, sample_id: str | None = None, model_version: str | None = None
) -> list[dict[str, Any]]:
    """Accepted specimens per sample x family, rejected ones counted apart.

    With ``model_version`` only that model's classifications count; without it each specimen's
    most recent classification does. Returns one dict per sample, sorted by sample id::

        {"sample": "S1", "images": 2, "specimens": 57, "rejected": 6,
         "families": {"Carabidae": 41, "Curculionidae": 10}}
    """
    chosen = select(func.max(Classification.id).label("id")).group_by(Classification.specimen_id)
    if model_version is not None:
        chosen = chosen.join(Model, Model.id == Classification.model_id).where(Model.version == model_version)
    rows = session.execute(
        select(Image.sample_id, Classification.family, Classification.rejected, func.count())
        .join(Specimen, Specimen.image_id == Image.id)
        .join(Classification, Classification.specimen_id == Specimen.id)
        .where(Classification.id.in_(chosen.scalar_subquery()))
        .where(*([Image.sample_id == sample_id] if sample_id is not None else []))
        .group_by(Image.sample_id, Classification.family, Classification.rejected)
    ).all()
    images = session.execute(
        select(Image.sample_id, func.count())
        .where(Image.status == ImageStatus.DONE.value)
        .where(*([Image.sample_id == sample_id] if sample_id is not None else []))
        .group_by(Image.sample_id)
    ).all()
    table: dict[str | None, dict[str, Any]] = defaultdict(
        lambda: {"images": 0, "specimens": 0, REJECTED: 0, "families": {}}
    )
    for sample, n_images in images:
        table[sample]["images"] = n_images
    for sample, family, rejected, n in rows:
        entry = table[sample]
        entry["specimens"] += n
        if rejected or not family:
            entry[REJECTED] += n
        else:
            entry["families"][family] = entry["families"].get(family, 0) + n
    out = []
    for sample in sorted(table, key=lambda s: (s is None, s or "")):
        entry = table[sample]
        families = dict(sorted(entry["families"].items(), key=lambda kv: (-kv[1], kv[0])))
        out.append({"sample": sample, **entry, "families": families})
    return out


def counts_to_csv(table: list[dict[str, Any]]) -> str:
    """Long format, one row per sample x family (``rejected`` as its own row)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["sample", "family", "count"])
    for entry in table:
        for family, n in entry["families"].items():
            writer.writerow([entry["sample"] or "", family, n])
        writer.writerow([entry["sample"] or "", REJECTED, entry[REJECTED]])
    return buffer.getvalue()


def counts_to_table(table: list[dict[str, Any]]) -> str:
    """A plain-text table for people."""
    if not table:
        return "no processed specimens yet"
    lines: list[str] = []
    for entry in table:
        lines.append(
            f"sample {entry['sample'] or '(none)'}: {entry['images']} images, {entry['specimens']} specimens"
        )
        for family, n in entry["families"].items():
            lines.append(f"  {family:<22}{n:>6}")
        lines.append(f"  {REJECTED:<22}{entry[REJECTED]:>6}")
    return "\n".join(lines)

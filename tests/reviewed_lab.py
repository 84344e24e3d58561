"""A tiny lab whose plates were processed and marked "boxes reviewed", some boxes judged not a
specimen: the starting point of the tests that learn from a lab's reviews."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from sqlalchemy import select

from labpipe.cli.main import cli
from labpipe.config import load_settings
from labpipe.db.database import open_database
from labpipe.db.models import Image, Specimen
from labpipe.review import record_verification


def reviewed_lab(
    root: Path,
    *,
    n_plates: int,
    n_processed: int,
    size: int,
    n_specimens: int,
    n_debris: int,
    judged_per_plate: Sequence[int],
    sample: str,
) -> dict[str, Any]:
    """Write ``n_plates`` synthetic plates under ``root``, process the first ``n_processed`` into a
    lab at ``root/data``, judge the first ``judged_per_plate[i]`` boxes of the i-th plate not a
    specimen, and mark every processed plate boxes reviewed.

    Returns ``base`` (the CLI's ``--data-dir`` arguments), ``settings``, ``plates`` and
    ``judged_boxes`` (``(x, y, w, h)`` of each box judged not a specimen, in order).
    """
    from labpipe.synth import PlateSpec, write_plate

    plates = []
    for seed in range(n_plates):
        spec = PlateSpec(
            width=size,
            height=size,
            n_specimens=n_specimens,
            n_touching_pairs=0,
            n_debris=n_debris,
            um_per_px=20.0,
            seed=seed,
        )
        write_plate(spec, root / f"plate{seed}.tif")
        plates.append(root / f"plate{seed}.tif")
    data = root / "data"
    base = ["--data-dir", str(data)]
    run = CliRunner().invoke(
        cli, [*base, "process", *map(str, plates[:n_processed]), "--sample", sample, "--json"]
    )
    assert run.exit_code == 0, run.output
    settings = load_settings(overrides={"storage.root": data}, environ={})
    factory = open_database(settings.database_url)
    judged: list[tuple[int, int, int, int]] = []
    with factory() as session:
        ids = list(session.scalars(select(Image.id).order_by(Image.id)))
        for image_id, n_judged in zip(ids, judged_per_plate, strict=False):
            boxes = session.scalars(
                select(Specimen).where(Specimen.image_id == image_id).order_by(Specimen.id)
            )
            for specimen in boxes.all()[:n_judged]:
                record_verification(session, specimen.id, "not_specimen", verified_by="Tester")
                judged.append((specimen.x, specimen.y, specimen.w, specimen.h))
        session.commit()
    factory.kw["bind"].dispose()
    for image_id in ids:
        marked = CliRunner().invoke(cli, [*base, "images", "mark-reviewed", str(image_id), "--by", "Tester"])
        assert marked.exit_code == 0, marked.output
    return {"base": base, "settings": settings, "plates": plates, "judged_boxes": judged}

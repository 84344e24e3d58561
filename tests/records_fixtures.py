"""A small lab, inserted row by row, whose counts are known exactly (shared by the records tests).

Samples S1 (Troodos, sifting), S2 (Paphos, pitfall) and S3 (Troodos, an image with no specimens),
plus one image of no sample. S1's eight specimens exercise every counting rule:

==  ===============  =====  ==========================  ================================
#   classified       p      stored decision             verification (latest)
==  ===============  =====  ==========================  ================================
1   Carabidae        0.93   accepted                    -
2   Carabidae        0.81   accepted                    -
3   Carabidae        0.45   rejected, low_confidence    -
4   Staphylinidae    0.70   accepted                    corrected -> Curculionidae
5   Carabidae        0.20   rejected, not_arthropod     -
6   Formicidae       0.90   accepted                    not_specimen
7   Curculionidae    0.55   accepted                    multiple (no family)
8   Formicidae       0.30   rejected, low_confidence    confirmed (no family given)
==  ===============  =====  ==========================  ================================
"""

from __future__ import annotations

import contextlib
import datetime as dt
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image as PILImage
from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session, sessionmaker

from labpipe.config import Settings, load_settings
from labpipe.crops import crop_relpath
from labpipe.db.models import (
    Classification,
    Image,
    ImageStatus,
    Model,
    ModelKind,
    Sample,
    Specimen,
    Verification,
)

MODEL = "imagenet@w111111111111-l222222222222"


@dataclass
class Spec:
    """One specimen to insert."""

    family: str | None
    probability: float
    rejected: bool = False
    reason: str | None = None
    top_k: list[list[Any]] | None = None
    verification: tuple[str, str | None] | None = None
    length_mm: float | None = 3.0


S1_SPECS = [
    Spec("Carabidae", 0.93, top_k=[["Carabidae", 0.93], ["Staphylinidae", 0.05]]),
    Spec("Carabidae", 0.81, top_k=[["Carabidae", 0.81], ["Curculionidae", 0.10]]),
    Spec(
        "Carabidae",
        0.45,
        True,
        "low_confidence: Carabidae 0.45 < threshold 0.50",
        [["Carabidae", 0.45], ["Staphylinidae", 0.30]],
    ),
    Spec("Staphylinidae", 0.70, top_k=[["Staphylinidae", 0.70]], verification=("corrected", "Curculionidae")),
    Spec(
        "Carabidae",
        0.20,
        True,
        "not_arthropod: top class 'dishrag' 0.60; best family Carabidae 0.20",
        [["Carabidae", 0.20]],
    ),
    Spec("Formicidae", 0.90, top_k=[["Formicidae", 0.90]], verification=("not_specimen", None)),
    Spec("Curculionidae", 0.55, top_k=[["Curculionidae", 0.55]], verification=("multiple", None)),
    Spec(
        "Formicidae",
        0.30,
        True,
        "low_confidence: Formicidae 0.30 < threshold 0.50",
        [["Formicidae", 0.30]],
        verification=("confirmed", None),
    ),
]
S2_SPECS = [
    Spec("Formicidae", 0.95, top_k=[["Formicidae", 0.95]]),
    Spec("Formicidae", 0.88, top_k=[["Formicidae", 0.88], ["Apidae", 0.02]]),
    Spec("Apidae", 0.51, top_k=[["Apidae", 0.51], ["Formicidae", 0.40]], length_mm=None),
]
NONE_SPECS = [Spec("Carabidae", 0.90, top_k=[["Carabidae", 0.90]])]

SAMPLES = [
    Sample(
        id="S1",
        site="Troodos",
        habitat="pine litter",
        latitude=34.93,
        longitude=32.86,
        collection_date=dt.date(2024, 5, 17),
        collector="A. Collector",
        method="sifting",
        fraction=">2 mm",
        notes="dry litter",
    ),
    Sample(
        id="S2",
        site="Paphos",
        habitat="garrigue",
        latitude=34.77,
        longitude=32.42,
        collection_date=dt.date(2024, 6, 2),
        collector="B. Trapper",
        method="pitfall trap",
    ),
    Sample(id="S3", site="Troodos", collection_date=dt.date(2024, 7, 1), method="sifting"),
]


def lab_settings(root: Path, db_url: str | None = None, **overrides: Any) -> Settings:
    """Settings with everything under ``root`` (no config file, no environment)."""
    values: dict[str, Any] = {"storage.root": root, "database.url": db_url}
    values.update(overrides)
    return load_settings(overrides=values, environ={})


def open_lab_db(settings: Settings) -> sessionmaker[Session]:
    from labpipe.db.database import open_database

    return open_database(settings.database_url)


def get_model(session: Session, version: str = MODEL) -> Model:
    row = session.scalar(select(Model).where(Model.version == version))
    if row is None:
        row = Model(
            name=version.split("@")[0],
            kind=ModelKind.CLASSIFIER,
            version=version,
            weights_hash="w",
            labels_hash="l",
            labels=["Apidae", "Carabidae", "Curculionidae", "Formicidae", "Staphylinidae"],
        )
        session.add(row)
        session.flush()
    return row


def _write_crop(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(path)


def add_image(
    session: Session,
    settings: Settings,
    sample_id: str | None,
    specs: list[Spec],
    file_name: str,
    model: Model | None = None,
) -> Image:
    """A processed image holding ``specs`` (classified by ``model``), with real PNG crops."""
    model = model or get_model(session)
    image = Image(
        sample_id=sample_id,
        source_path=f"/inbox/{file_name}",
        file_name=file_name,
        content_hash=file_name.encode().hex().ljust(64, "0")[:64],
        size_bytes=1000,
        format="tiff",
        width=3000,
        height=3000,
        um_per_px=10.0,
        status=ImageStatus.DONE,
        n_specimens=len(specs),
        detector_version="classical@test",
        processed_at=dt.datetime(2024, 8, 1, tzinfo=dt.UTC),
    )
    session.add(image)
    session.flush()
    for index, spec in enumerate(specs, start=1):
        specimen = Specimen(
            index_in_image=index,
            x=100 * index,
            y=200,
            w=80,
            h=120,
            score=0.9,
            detector_version="classical@test",
            crop_path="",
            crop_size=48,
            length_mm=spec.length_mm,
            width_mm=1.0,
        )
        image.specimens.append(specimen)
        session.flush()
        rel = crop_relpath(sample_id, image.id, specimen.id)
        _write_crop(settings.storage.crops_dir / rel, specimen.id)
        specimen.crop_path = rel.as_posix()
        specimen.classifications.append(
            Classification(
                model_id=model.id,
                family=spec.family,
                probability=spec.probability,
                rejected=spec.rejected,
                reason=spec.reason,
                top_k=spec.top_k or [[spec.family, spec.probability]],
            )
        )
        if spec.verification:
            status, family = spec.verification
            specimen.verifications.append(
                Verification(status=status, family=family, verified_by="R. Reviewer", note="test")
            )
    session.flush()
    return image


def build_lab(session: Session, settings: Settings) -> dict[str, Image]:
    """The lab of the module docstring; committed."""
    for sample in SAMPLES:
        session.merge(sample)
    session.flush()
    images = {
        "S1": add_image(session, settings, "S1", S1_SPECS, "s1-plate1.tif"),
        "S2": add_image(session, settings, "S2", S2_SPECS, "s2-plate1.tif"),
        "S3": add_image(session, settings, "S3", [], "s3-plate1.tif"),
        None: add_image(session, settings, None, NONE_SPECS, "loose.tif"),
    }
    session.commit()
    return images


@contextlib.contextmanager
def built_lab(
    root: Path, token: str, make_app: Callable[..., Any]
) -> Iterator[tuple[Settings, sessionmaker[Session], Any]]:
    """The lab of :func:`build_lab` below ``root`` with ``[api] token``, and ``make_app``'s app on it."""
    settings = lab_settings(root, **{"api.token": token})
    factory = open_lab_db(settings)
    with factory() as session:
        build_lab(session, settings)
    try:
        yield settings, factory, make_app(settings, session_factory=factory)
    finally:
        factory.kw["bind"].dispose()


def web_login(client: Any, token: str, name: str = "R. Reviewer") -> str:
    """Log ``client`` in to the web UI as ``name``; returns the session's form (CSRF) token."""
    from labpipe.web.auth import SESSION_COOKIE, csrf_value

    response = client.post("/login", data={"token": token, "name": name, "next": "/"})
    assert response.status_code == 303, response.text
    nonce = response.cookies[SESSION_COOKIE].split(".")[2]
    return csrf_value(token, nonce)


def bulk_lab(
    settings: Settings, factory: sessionmaker[Session], n: int = 100_000, per_image: int = 2_000
) -> None:
    """``n`` specimens on ``n / per_image`` plates of 10 samples (B0-B9, plates dealt in turn), inserted
    in bulk: one classification each (family random, p uniform, rejected below 0.5), and every 50th
    specimen, from the first, verified as corrected to Apidae."""
    families = ["Carabidae", "Staphylinidae", "Curculionidae", "Formicidae", "Apidae", "Chrysomelidae"]
    rng = random.Random(1)
    with factory() as session:
        model = get_model(session)
        session.execute(insert(Sample), [{"id": f"B{i}"} for i in range(10)])
        n_images = n // per_image
        session.execute(
            insert(Image),
            [
                {
                    "sample_id": f"B{i % 10}",
                    "source_path": f"/nowhere/{i}.tif",
                    "file_name": f"bulk-{i}.tif",
                    "content_hash": f"{i:064x}",
                    "size_bytes": 1,
                    "status": "done",
                    "width": 20000,
                    "height": 20000,
                    "n_specimens": per_image,
                    "processed_at": dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
                }
                for i in range(n_images)
            ],
        )
        first_image = session.scalar(select(func.min(Image.id)).where(Image.file_name.like("bulk-%")))
        specimens, classifications, verifications = [], [], []
        base = (session.scalar(select(func.max(Specimen.id))) or 0) + 1
        for i in range(n):
            sid = base + i
            specimens.append(
                {
                    "id": sid,
                    "image_id": first_image + i // per_image,
                    "index_in_image": i % per_image + 1,
                    "x": rng.randrange(19_000),
                    "y": rng.randrange(19_000),
                    "w": 80,
                    "h": 120,
                    "score": 0.9,
                    "detector_version": "d",
                    "crop_path": "",
                    "crop_size": 96,
                }
            )
            p = rng.random()
            family = rng.choice(families)
            classifications.append(
                {
                    "specimen_id": sid,
                    "model_id": model.id,
                    "family": family,
                    "probability": p,
                    "rejected": p < 0.5,
                    "reason": "low_confidence: bulk" if p < 0.5 else None,
                    "top_k": [[family, p]],
                }
            )
            if i % 50 == 0:
                verifications.append(
                    {
                        "specimen_id": sid,
                        "status": "corrected",
                        "family": "Apidae",
                        "verified_by": "bulk",
                        "verified_at": dt.datetime(2024, 2, 1, tzinfo=dt.UTC),
                    }
                )
        session.execute(insert(Specimen), specimens)
        session.execute(insert(Classification), classifications)
        session.execute(insert(Verification), verifications)
        session.commit()

"""The database: migrations, the models matching them, cascades and SQLite's settings, on both backends.

Every test that names ``db_url`` runs twice: on a fresh SQLite file and on a fresh PostgreSQL database
(``labpipe_test_<random>``, created on the server behind the ``postgres_url`` fixture and dropped
afterwards; nothing in the shared ``test`` database is touched).
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from labpipe.db import (
    BarcodeLink,
    Base,
    Classification,
    Image,
    ImageStatus,
    Model,
    ModelKind,
    Sample,
    Specimen,
    Verification,
    VerificationStatus,
    current_revision,
    downgrade,
    head_revision,
    make_engine,
    make_session_factory,
    session_scope,
    upgrade,
)
from labpipe.db import migrate as migrate_module

PROJECT_ROOT = Path(__file__).resolve().parent.parent
TABLES = {"samples", "images", "specimens", "models", "classifications", "verifications", "barcode_links"}


# --- fixtures -------------------------------------------------------------------------------------


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A SQLite file that does not exist yet, in a folder that does not exist yet."""
    return f"sqlite:///{(tmp_path / 'data' / 'labpipe.sqlite').as_posix()}"


@pytest.fixture
def postgres_db_url(postgres_url: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database of its own, dropped after the test."""
    name = f"labpipe_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    """A fresh, empty database on each backend."""
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_db_url")


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """An engine on a database migrated to head."""
    upgrade(db_url)
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    with make_session_factory(engine)() as session:
        yield session


# --- helpers --------------------------------------------------------------------------------------


def _image(content_hash: str = "a" * 64, **kwargs: object) -> Image:
    values: dict[str, object] = {
        "source_path": "/inbox/plate-1.tif",
        "file_name": "plate-1.tif",
        "content_hash": content_hash,
        "size_bytes": 5_000_000_000,  # larger than 2**31: needs BIGINT
        "format": "tiff",
        "width": 40_000,
        "height": 30_000,
        "source_channels": 3,
        "bit_depth": 16,
        "um_per_px": 2.5,
    }
    values.update(kwargs)
    return Image(**values)


def _model(version: str = "imagenet@w1-l1") -> Model:
    return Model(
        name="imagenet",
        kind=ModelKind.CLASSIFIER,
        version=version,
        weights_hash="w1",
        labels_hash="l1",
        labels=["Carabidae", "Curculionidae", "Staphylinidae"],
    )


def _specimen(index: int) -> Specimen:
    return Specimen(
        index_in_image=index,
        x=100 * index,
        y=200,
        w=80,
        h=120,
        score=0.9,
        detector_version="classical@1",
        crop_path=f"crops/aa/{index}.png",
        crop_size=168,
        length_mm=3.1,
        width_mm=1.2,
    )


def _plate_with_specimens(session: Session, n: int = 3) -> tuple[Image, Model]:
    """A sample, an image with ``n`` specimens, each classified and verified, one barcode linked."""
    sample = Sample(
        id="CY-2024-017",
        site="Troodos",
        habitat="pine litter",
        latitude=34.93,
        longitude=32.86,
        collection_date=dt.date(2024, 5, 17),
        collector="A. Collector",
        method="sifting",
    )
    model = _model()
    image = _image(sample=sample, status=ImageStatus.DONE, n_specimens=n)
    for index in range(1, n + 1):
        specimen = _specimen(index)
        specimen.classifications.append(
            Classification(
                model=model,
                family="Carabidae",
                probability=0.93,
                rejected=False,
                top_k=[["Carabidae", 0.93], ["Staphylinidae", 0.05]],
            )
        )
        specimen.verifications.append(
            Verification(family="Carabidae", status=VerificationStatus.CONFIRMED, verified_by="tech")
        )
        image.specimens.append(specimen)
    image.specimens[0].barcode_links.append(
        BarcodeLink(plate="P001", well="A01", sampleid="CY-2024-017-001", bin_uri="BOLD:AAA1234")
    )
    session.add(image)
    session.commit()
    return image, model


def _count(session: Session, model: type[Base]) -> int:
    return session.scalar(sa.select(sa.func.count()).select_from(model)) or 0


# --- migrations -----------------------------------------------------------------------------------


def test_migrations_reach_head_on_a_fresh_database(db_url: str) -> None:
    assert current_revision(db_url) is None
    upgrade(db_url)
    assert current_revision(db_url) == head_revision() is not None
    engine = make_engine(db_url)
    try:
        assert set(sa.inspect(engine).get_table_names()) >= TABLES
    finally:
        engine.dispose()
    upgrade(db_url)  # running it again is harmless
    assert current_revision(db_url) == head_revision()


def test_models_match_the_migrated_schema(engine: Engine) -> None:
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        differences = compare_metadata(context, Base.metadata)
    assert differences == []


def test_downgrade_to_base_removes_every_table_and_upgrade_recreates_them(db_url: str) -> None:
    upgrade(db_url)
    downgrade(db_url, "base")
    assert current_revision(db_url) is None
    engine = make_engine(db_url)
    try:
        assert not TABLES & set(sa.inspect(engine).get_table_names())
        upgrade(db_url)
        assert set(sa.inspect(engine).get_table_names()) >= TABLES
    finally:
        engine.dispose()


def test_alembic_command_line_migrates_the_url_given_with_x(tmp_path: Path) -> None:
    url = f"sqlite:///{(tmp_path / 'cli' / 'labpipe.sqlite').as_posix()}"
    result = subprocess.run(
        [sys.executable, "-m", "alembic", "-x", f"url={url}", "upgrade", "head"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert current_revision(url) == head_revision()


def test_alembic_command_line_uses_labpipe_settings_without_x(tmp_path: Path) -> None:
    url = f"sqlite:///{(tmp_path / 'settings.sqlite').as_posix()}"
    env = {**os.environ, "LABPIPE_DATABASE_URL": url}
    env.pop("LABPIPE_CONFIG", None)
    result = subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(PROJECT_ROOT / "alembic.ini"), "upgrade", "head"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert current_revision(url) == head_revision()


def test_missing_migrations_folder_is_reported_with_what_to_do(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, sqlite_url: str
) -> None:
    monkeypatch.setattr(migrate_module, "MIGRATIONS_DIR", tmp_path / "nowhere")
    with pytest.raises(migrate_module.MigrationsNotFoundError, match="pip install -e"):
        upgrade(sqlite_url)


# --- integrity ------------------------------------------------------------------------------------


def test_deleting_an_image_deletes_its_specimens_and_classifications(session: Session) -> None:
    image, model = _plate_with_specimens(session)
    assert [s.index_in_image for s in image.specimens] == [1, 2, 3]
    assert _count(session, Classification) == 3

    session.delete(image)
    session.commit()

    for table in (Specimen, Classification, Verification, BarcodeLink):
        assert _count(session, table) == 0, table.__tablename__
    assert session.get(Sample, "CY-2024-017") is not None
    assert session.get(Model, model.id) is not None


def test_database_itself_cascades_when_an_image_row_is_deleted_with_sql(session: Session) -> None:
    image, _ = _plate_with_specimens(session)
    session.execute(sa.delete(Image).where(Image.id == image.id))  # no ORM bookkeeping: ON DELETE only
    session.commit()
    session.expunge_all()
    for table in (Specimen, Classification, Verification, BarcodeLink):
        assert _count(session, table) == 0, table.__tablename__


def test_deleting_a_sample_keeps_its_images_unassigned(session: Session) -> None:
    image, _ = _plate_with_specimens(session)
    session.execute(sa.delete(Sample).where(Sample.id == "CY-2024-017"))
    session.commit()
    session.expunge_all()
    again = session.get(Image, image.id)
    assert again is not None
    assert again.sample_id is None
    assert len(again.specimens) == 3


def test_the_same_file_cannot_be_registered_twice(session: Session) -> None:
    session.add(_image(content_hash="b" * 64))
    session.commit()
    session.add(_image(content_hash="b" * 64, source_path="/inbox/copy.tif", file_name="copy.tif"))
    with pytest.raises(IntegrityError):
        session.commit()
    session.rollback()
    assert _count(session, Image) == 1


def test_a_model_version_classifies_a_specimen_once(session: Session) -> None:
    image, model = _plate_with_specimens(session, n=1)
    specimen = image.specimens[0]
    session.add(
        Classification(specimen=specimen, model=model, family=None, probability=0.2, rejected=True, top_k=[])
    )
    with pytest.raises(IntegrityError):
        session.commit()
    session.rollback()
    other = _model("imagenet@w2-l1")
    session.add(
        Classification(
            specimen=specimen,
            model=other,
            family=None,
            probability=0.2,
            rejected=True,
            reason="low confidence",
            top_k=[["Carabidae", 0.2]],
        )
    )
    session.commit()
    session.refresh(specimen)
    assert [c.model.version for c in specimen.classifications] == ["imagenet@w1-l1", "imagenet@w2-l1"]


def test_a_specimen_number_is_unique_on_its_image(session: Session) -> None:
    image = _image()
    image.specimens.extend([_specimen(1), _specimen(1)])
    session.add(image)
    with pytest.raises(IntegrityError):
        session.commit()


def test_unknown_image_status_is_refused(session: Session) -> None:
    session.add(_image(status="finished"))
    with pytest.raises(IntegrityError):
        session.commit()


def test_a_model_with_classifications_cannot_be_deleted(session: Session) -> None:
    _, model = _plate_with_specimens(session, n=1)
    with pytest.raises(IntegrityError):
        session.execute(sa.delete(Model).where(Model.id == model.id))
        session.commit()


def test_values_come_back_as_stored(session: Session) -> None:
    image, _ = _plate_with_specimens(session, n=1)
    session.expunge_all()
    again = session.get(Image, image.id)
    assert again is not None
    assert again.status == ImageStatus.DONE
    assert again.size_bytes == 5_000_000_000
    assert again.sample is not None and again.sample.collection_date == dt.date(2024, 5, 17)
    classification = again.specimens[0].classifications[0]
    assert classification.top_k == [["Carabidae", 0.93], ["Staphylinidae", 0.05]]
    assert classification.model.labels == ["Carabidae", "Curculionidae", "Staphylinidae"]
    assert classification.model.is_default is False
    assert again.specimens[0].verifications[0].status == VerificationStatus.CONFIRMED


def test_timestamps_are_timezone_aware_utc(session: Session) -> None:
    before = dt.datetime.now(dt.UTC)
    local = dt.datetime(2024, 5, 17, 14, 0, tzinfo=dt.timezone(dt.timedelta(hours=3)))
    image = _image(processed_at=local)
    session.add(image)
    session.commit()
    session.expunge_all()
    again = session.get(Image, image.id)
    assert again is not None
    for value in (again.created_at, again.updated_at, again.processed_at):
        assert value is not None and value.utcoffset() == dt.timedelta(0)
    assert again.processed_at == dt.datetime(2024, 5, 17, 11, 0, tzinfo=dt.UTC)
    assert again.created_at >= before - dt.timedelta(seconds=1)

    created = again.created_at
    again.status = ImageStatus.PROCESSING
    session.commit()
    assert again.updated_at >= created


# --- sessions and SQLite settings -----------------------------------------------------------------


def test_sqlite_engine_uses_wal_and_enforces_foreign_keys(sqlite_url: str) -> None:
    upgrade(sqlite_url)
    engine = make_engine(sqlite_url)
    try:
        with engine.connect() as conn:
            pragmas = {
                name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()
                for name in ("journal_mode", "foreign_keys", "busy_timeout", "synchronous")
            }
        assert pragmas == {"journal_mode": "wal", "foreign_keys": 1, "busy_timeout": 30000, "synchronous": 1}
        with make_session_factory(engine)() as session:
            orphan = _specimen(1)
            orphan.image_id = 12345  # no such image
            session.add(orphan)
            with pytest.raises(IntegrityError):
                session.commit()
    finally:
        engine.dispose()


def test_sqlite_engine_creates_the_folder_of_its_file(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "labpipe.sqlite"
    engine = make_engine(f"sqlite:///{path.as_posix()}")
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("select 1")
    finally:
        engine.dispose()
    assert path.is_file()


def test_session_scope_commits_on_success_and_rolls_back_on_error(engine: Engine) -> None:
    factory = make_session_factory(engine)
    with session_scope(factory) as session:
        session.add(Sample(id="kept"))
    with pytest.raises(RuntimeError), session_scope(factory) as session:
        session.add(Sample(id="discarded"))
        session.flush()
        raise RuntimeError("worker crashed")
    with session_scope(factory) as session:
        assert session.scalars(sa.select(Sample.id)).all() == ["kept"]


def _insert_samples(url_or_engine: str | Engine, prefix: str, n: int) -> None:
    """Worker body: ``n`` separate transactions, each adding one sample."""
    engine = make_engine(url_or_engine) if isinstance(url_or_engine, str) else url_or_engine
    factory = make_session_factory(engine)
    for i in range(n):
        with session_scope(factory) as session:
            session.add(Sample(id=f"{prefix}-{i}"))


def test_several_processes_write_to_one_sqlite_file(sqlite_url: str) -> None:
    import multiprocessing

    upgrade(sqlite_url)
    engine = make_engine(sqlite_url)
    try:
        with engine.connect() as conn:  # the parent's pool now holds a connection the children inherit
            conn.exec_driver_sql("select 1")
        fork = multiprocessing.get_context("fork")
        workers = [
            fork.Process(target=_insert_samples, args=(engine, "inherited", 40)),
            fork.Process(target=_insert_samples, args=(sqlite_url, "own", 40)),
        ]
        for worker in workers:
            worker.start()
        _insert_samples(engine, "parent", 40)
        for worker in workers:
            worker.join(timeout=60)
        assert [w.exitcode for w in workers] == [0, 0]
        with make_session_factory(engine)() as session:
            assert _count(session, Sample) == 120
    finally:
        engine.dispose()

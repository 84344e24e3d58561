"""A person's work is never lost: labpipe moves only files it received in its inbox, and only into
its archive or quarantine; a file anywhere else is never moved, renamed or deleted (issue 12)."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from brokers import RecordingBroker
from sqlalchemy import select, update

from labpipe.config import Settings, load_settings
from labpipe.db.models import Image, ImageStatus, Specimen
from labpipe.ingest import finish_move, register_file
from labpipe.ingest.lifecycle import stale_images
from labpipe.ingest.moves import move_original
from labpipe.ingest.watcher import Watcher
from labpipe.pipeline import Pipeline
from labpipe.synth.plate import PlateSpec, write_plate

SMALL = PlateSpec(
    width=600, height=600, n_specimens=2, n_touching_pairs=0, n_debris=1, um_per_px=20.0, seed=11
)


def _settings(root: Path, **overrides: object) -> Settings:
    base: dict[str, object] = {
        "storage.root": root,
        "classifier.threads": 1,
        "classifier.batch_size": 8,
        "queue.requeue_after": 0,
        "queue.stuck_after": 0,
        "ingest.stable_seconds": 0.0,
    }
    base.update(overrides)
    return load_settings(overrides=base, environ={})


@pytest.fixture(scope="module")
def plate_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("plates") / "plate.tif"
    write_plate(SMALL, path)
    return path.read_bytes()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return _settings(tmp_path / "data")


@pytest.fixture
def pipeline(settings: Settings) -> Iterator[Pipeline]:
    with Pipeline.from_settings(settings) as p:
        yield p


def _age_everything(pipeline_or_factory: object, minutes: float = 2.0) -> None:
    """Make every image look finished ``minutes`` ago (the sweeper waits a minute before moving)."""
    factory = getattr(pipeline_or_factory, "session_factory", pipeline_or_factory)
    with factory() as session:  # type: ignore[operator]
        then = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=minutes)
        session.execute(update(Image).values(updated_at=then))
        session.commit()


def _sweep(settings: Settings, pipeline: Pipeline) -> dict[str, int]:
    """One sweep of the watcher, as ``labpipe serve`` runs it a minute after starting."""
    return Watcher(settings, pipeline.session_factory, RecordingBroker()).sweep()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() or p.is_symlink()) if folder.exists() else []


def _register_done(pipeline: Pipeline, path: Path, content: bytes) -> int:
    """Register ``path`` as the watcher does and mark it done (its worker died before the move)."""
    with pipeline.session_factory() as session:
        reg = register_file(session, path, hashlib.sha256(content).hexdigest(), len(content), None)
        session.get(Image, reg.image_id).status = ImageStatus.DONE.value
        session.commit()
        return reg.image_id


# -- files processed from elsewhere ---------------------------------------------------------------


def test_a_plate_processed_from_elsewhere_stays_where_it_is_after_the_sweep(
    settings: Settings, pipeline: Pipeline, plate_bytes: bytes, tmp_path: Path
) -> None:
    user = tmp_path / "user" / "folder"
    user.mkdir(parents=True)
    plate = user / "plate.tif"
    plate.write_bytes(plate_bytes)
    bad = user / "broken.tif"
    bad.write_bytes(plate_bytes[:20000])  # unreadable: failed, and the old sweeper quarantined it
    result = pipeline.process_file(plate)
    with pytest.raises(Exception, match=r"broken\.tif"):
        pipeline.process_file(bad)
    # Recorded through ``..``: lexically below the inbox, really beside it.
    inbox = settings.storage.inbox_dir
    inbox.mkdir(parents=True)
    sneaky = tmp_path / "data" / "elsewhere.tif"
    sneaky.write_bytes(b"a person's file")
    sneaky_id = _register_done(pipeline, inbox / ".." / "elsewhere.tif", b"a person's file")
    # A plate dropped into the inbox whose worker died before moving it: the sweeper moves it.
    dropped = inbox / "S1" / "dropped.tif"
    dropped.parent.mkdir()
    dropped.write_bytes(b"dropped into the inbox")
    dropped_id = _register_done(pipeline, dropped, b"dropped into the inbox")
    _age_everything(pipeline)

    report = _sweep(settings, pipeline)

    assert plate.read_bytes() == plate_bytes  # where it was, byte-identical
    assert bad.read_bytes() == plate_bytes[:20000]
    assert sneaky.read_bytes() == b"a person's file"
    assert _files(user) == [bad, plate]
    assert not _files(settings.storage.quarantine_dir)
    assert _files(settings.storage.archive_dir) == [settings.storage.archive_dir / "S1" / "dropped.tif"]
    assert not dropped.exists() and report.get("moved") == 1
    with pipeline.session_factory() as session:
        images = {i.id: i for i in session.scalars(select(Image))}
        assert images[result["image_id"]].archived_path is None
        assert images[dropped_id].archived_path == str(settings.storage.archive_dir / "S1" / "dropped.tif")
        # a worker finishing such an image (jobs._finish) leaves the file too
        for image in images.values():
            assert finish_move(session, image, settings.storage) is None
        stale = stale_images(session, inbox=inbox, requeue_after=0, stuck_after=0, move_grace=0)
        assert stale.unmoved == []
        assert sneaky_id not in stale.unmoved
    assert plate.read_bytes() == plate_bytes and sneaky.is_file()


def test_the_sweeper_does_not_list_images_from_elsewhere_as_unmoved(
    settings: Settings, pipeline: Pipeline, tmp_path: Path
) -> None:
    inbox = settings.storage.inbox_dir
    inbox.mkdir(parents=True)
    outside = tmp_path / "outside.tif"
    outside.write_bytes(b"outside")
    inside = inbox / "inside.tif"
    inside.write_bytes(b"inside")
    outside_id = _register_done(pipeline, outside, b"outside")
    inside_id = _register_done(pipeline, inside, b"inside")
    _age_everything(pipeline)
    with pipeline.session_factory() as session:
        stale = stale_images(session, inbox=inbox, requeue_after=0, stuck_after=0)
    assert stale.unmoved == [inside_id] and outside_id not in stale.unmoved


# -- symbolic links ---------------------------------------------------------------------------------


def test_a_symlink_in_the_inbox_is_not_followed_for_the_move(
    settings: Settings, pipeline: Pipeline, tmp_path: Path
) -> None:
    target = tmp_path / "user" / "linked.tif"
    target.parent.mkdir()
    target.write_bytes(b"the person's own plate")
    inbox = settings.storage.inbox_dir
    inbox.mkdir(parents=True)
    link = inbox / "link.tif"
    link.symlink_to(target)
    folder_link = inbox / "shared"  # a folder of the inbox that is really elsewhere
    folder_link.symlink_to(target.parent, target_is_directory=True)
    _register_done(pipeline, link, b"the person's own plate")
    _register_done(pipeline, folder_link / "linked-again.tif", b"other bytes")
    (target.parent / "linked-again.tif").write_bytes(b"other bytes")
    _age_everything(pipeline)

    _sweep(settings, pipeline)

    assert target.read_bytes() == b"the person's own plate"
    assert os.stat(target).st_nlink == 1  # no hard link to it was made in the archive
    assert (target.parent / "linked-again.tif").read_bytes() == b"other bytes"
    assert link.is_symlink() and link.resolve() == target
    assert not _files(settings.storage.archive_dir) and not _files(settings.storage.quarantine_dir)
    from labpipe.ingest.moves import NotInInboxError, inside_inbox

    assert not inside_inbox(link, inbox) and not inside_inbox(folder_link / "linked-again.tif", inbox)
    with pytest.raises(NotInInboxError, match=r"link\.tif"):
        move_original(link, inbox, settings.storage.archive_dir, "0" * 64)
    assert link.is_symlink() and os.stat(target).st_nlink == 1


def _watch_once(settings: Settings, factory: object) -> tuple[Watcher, RecordingBroker]:
    broker = RecordingBroker()
    watcher = Watcher(settings, factory, broker)  # type: ignore[arg-type]
    watcher.rescan()
    watcher.tick()  # first sight
    watcher.tick()  # stable: taken
    return watcher, broker


def test_a_symlink_found_by_the_watcher_is_quarantined_as_a_link_and_never_read(
    settings: Settings, plate_bytes: bytes, tmp_path: Path
) -> None:
    """Issue 13 item 1: ``inbox/S/link.tif -> elsewhere`` is never processed; the link itself goes to
    the quarantine with a reason that says what to do; the file it points to is untouched."""
    from labpipe.db.database import open_database

    target = tmp_path / "user" / "plate.tif"
    target.parent.mkdir()
    target.write_bytes(plate_bytes)
    inbox = settings.storage.inbox_dir
    (inbox / "S1").mkdir(parents=True)
    (inbox / "S1" / "a-real.tif").write_bytes(plate_bytes)
    (inbox / "S1" / "b-link.tif").symlink_to(target)  # the same bytes, through a link
    (inbox / "S1" / "c-other.tif").symlink_to(tmp_path / "user" / "not-there.tif")  # dangling
    factory = open_database(settings.database_url)
    watcher, broker = _watch_once(settings, factory)
    with factory() as session:
        images = {i.file_name: i for i in session.scalars(select(Image))}
    assert sorted(images) == ["a-real.tif", "b-link.tif", "c-other.tif"]
    assert broker.sent == [images["a-real.tif"].id]  # only the real file is processed
    for name in ("b-link.tif", "c-other.tif"):
        row = images[name]
        assert row.status == ImageStatus.QUARANTINED.value
        assert "symbolic link" in (row.error or "") and "cp -L" in (row.error or "")
        moved = Path(row.archived_path or "")
        assert moved.parent == settings.storage.quarantine_dir / "S1" and moved.is_symlink()
        assert "symbolic link" in (moved.parent / f"{moved.name}.reason.txt").read_text()
        assert not (inbox / "S1" / name).exists() and not (inbox / "S1" / name).is_symlink()
    assert Path(images["b-link.tif"].archived_path or "").resolve() == target
    assert target.read_bytes() == plate_bytes and os.stat(target).st_nlink == 1
    assert not _files(settings.storage.archive_dir) and watcher.counts["errors"] == 0
    # A restart finds nothing new to do.
    _, again = _watch_once(settings, factory)
    assert again.sent == []  # the real file is known (the sweeper resends lost tasks), the links gone
    with factory() as session:
        assert len(list(session.scalars(select(Image)))) == 3
    factory.kw["bind"].dispose()  # type: ignore[attr-defined]


def test_a_link_to_a_secret_never_shows_its_bytes(settings: Settings, tmp_path: Path) -> None:
    """``passwd.tif -> /etc/passwd``: the reason quotes nothing of the file, in the database, the
    reason file, ``labpipe status`` or the API, which anyone may read."""
    from fastapi.testclient import TestClient

    from labpipe.api.app import create_app
    from labpipe.db.database import open_database

    secret = tmp_path / "secret" / "passwd"
    secret.parent.mkdir()
    secret.write_bytes(b"root:x:0:0:root:/root:/bin/bash\n")
    inbox = settings.storage.inbox_dir
    inbox.mkdir(parents=True)
    (inbox / "passwd.tif").symlink_to(secret)
    factory = open_database(settings.database_url)
    _watch_once(settings, factory)
    with factory() as session:
        (row,) = session.scalars(select(Image))
        image_id, reason, moved = row.id, row.error or "", Path(row.archived_path or "")
    texts = [reason, (moved.parent / f"{moved.name}.reason.txt").read_text()]
    with TestClient(create_app(settings), base_url="http://localhost") as client:
        texts.append(client.get(f"/api/images/{image_id}").text)
    for text in texts:
        assert "root:" not in text and str(secret) not in text, text
    assert secret.read_bytes().startswith(b"root:x")
    factory.kw["bind"].dispose()  # type: ignore[attr-defined]


# -- the retry button --------------------------------------------------------------------------------


def test_a_retried_file_never_overwrites_one_dropped_into_the_inbox_meanwhile(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from labpipe.db.database import open_database
    from labpipe.web import retry

    inbox, quarantine = settings.storage.inbox_dir, settings.storage.quarantine_dir
    quarantined = quarantine / "bad.tif"
    quarantined.parent.mkdir(parents=True)
    quarantined.write_bytes(b"the failed plate")
    dropped = inbox / "bad.tif"
    free_name = retry._free_name
    calls: list[Path] = []

    def racing(target: Path) -> Path:
        """The name is free when checked; a person drops a file under it right after."""
        calls.append(target)
        if len(calls) == 1:
            dropped.parent.mkdir(parents=True, exist_ok=True)
            dropped.write_bytes(b"a new scan, just dropped")
            return target
        return free_name(target)

    monkeypatch.setattr(retry, "_free_name", racing)
    factory = open_database(settings.database_url)
    with factory() as session:
        image = Image(
            source_path=str(dropped),
            archived_path=str(quarantined),
            file_name="bad.tif",
            content_hash="c" * 64,
            size_bytes=16,
            status=ImageStatus.FAILED.value,
            error="interrupted",
        )
        session.add(image)
        session.commit()
        back = retry.retry_image(session, image, settings)
    assert dropped.read_bytes() == b"a new scan, just dropped"
    assert back != dropped and back.read_bytes() == b"the failed plate" and not quarantined.exists()
    factory.kw["bind"].dispose()


# -- crops of re-processed images -----------------------------------------------------------------


def test_reprocessing_deletes_only_crop_files_inside_the_crops_folder(
    settings: Settings, pipeline: Pipeline, plate_bytes: bytes, tmp_path: Path
) -> None:
    plate = tmp_path / "plate.tif"
    plate.write_bytes(plate_bytes)
    first = pipeline.process_file(plate)
    assert first["specimens"]
    precious = tmp_path / "precious.png"
    precious.write_bytes(b"not labpipe's")
    with pipeline.session_factory() as session:
        specimen = session.scalars(select(Specimen).order_by(Specimen.id)).first()
        own_crop = settings.storage.crops_dir / specimen.crop_path
        specimen.crop_path = os.path.relpath(precious, settings.storage.crops_dir)  # "../../precious.png"
        session.commit()
    second = pipeline.process_file(plate)  # replaces the specimens: their old crops are deleted
    assert precious.read_bytes() == b"not labpipe's"
    assert len(second["specimens"]) == len(first["specimens"])
    assert own_crop.is_file()  # orphaned by the edit above, so not known to be replaced: kept


# -- training ---------------------------------------------------------------------------------------


def test_overwriting_a_detector_never_deletes_a_folder_that_holds_no_model(tmp_path: Path) -> None:
    from labpipe.detect.detr_train import train_detector

    out = tmp_path / "Documents"
    out.mkdir()
    (out / "thesis.docx").write_bytes(b"years of work")
    with pytest.raises(Exception, match="Documents"):
        train_detector(tmp_path / "missing.coco.json", tmp_path, out, overwrite=True)
    assert (out / "thesis.docx").read_bytes() == b"years of work"

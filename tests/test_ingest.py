"""Ingest and the daemon's building blocks, without processes: rules, completeness, registration,
moves, claims, the task-sized stages, the jobs, the sweeper, and the embedded broker."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import threading
import time
from pathlib import Path

import pytest
from brokers import RecordingBroker
from sqlalchemy import func, select

from labpipe.config import load_settings
from labpipe.db.database import open_database
from labpipe.db.models import Classification, Image, ImageStatus, Specimen, utcnow
from labpipe.errors import ConfigError
from labpipe.imaging import verify_readable
from labpipe.ingest import (
    Completeness,
    IngestRules,
    Outcome,
    StabilityTracker,
    claim_image,
    destination_for,
    move_original,
    register_file,
    register_unreadable,
)
from labpipe.ingest.lifecycle import release_for_takeover, stale_images
from labpipe.ingest.watcher import Watcher, choose_observer, filesystem_type
from labpipe.synth.plate import PlateSpec, write_plate

SMALL = PlateSpec(
    width=800, height=800, n_specimens=3, n_touching_pairs=0, n_debris=2, um_per_px=20.0, seed=5
)
EMPTY = PlateSpec(
    width=800, height=800, n_specimens=0, n_touching_pairs=0, n_debris=2, um_per_px=20.0, seed=6
)


def _rules(**kw: str) -> IngestRules:
    defaults = load_settings(environ={}).ingest
    return IngestRules.from_config(
        kw.get("extensions", defaults.extensions),
        kw.get("ignore", defaults.ignore),
        kw.get("sample_from", defaults.sample_from),
        kw.get("sample_pattern", defaults.sample_pattern),
    )


def _settings(root: Path, **overrides):
    base = {"storage.root": root, "classifier.threads": 1, "classifier.batch_size": 8}
    base.update(overrides)
    return load_settings(overrides=base, environ={})


@pytest.fixture(scope="module")
def plate_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("plates") / "plate.tif"
    write_plate(SMALL, path)
    return path


@pytest.fixture
def factory(tmp_path: Path):
    f = open_database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    yield f
    f.kw["bind"].dispose()


# -- which files, which sample ---------------------------------------------------------------------


def test_temporary_and_hidden_files_are_ignored(tmp_path: Path) -> None:
    rules = _rules()
    inbox = tmp_path / "inbox"
    for name in ["plate.tif.part", "plate.tmp", "~$plate.tif", ".DS_Store", "._plate.tif", "x.crdownload"]:
        assert not rules.wants(inbox / name, inbox), name
    assert not rules.wants(inbox / ".hidden-folder" / "plate.tif", inbox)
    assert not rules.wants(inbox / "notes.docx", inbox)  # not an image ending: left alone
    for name in ["plate.tif", "PLATE.TIFF", "plate.btf", "phone.JPG", "scan.png"]:
        assert rules.wants(inbox / "S1" / name, inbox), name
    # the inbox's own path may contain hidden folders
    hidden_home = tmp_path / ".local" / "inbox"
    assert rules.wants(hidden_home / "plate.tif", hidden_home)


def test_sample_comes_from_sidecar_then_pattern_then_subfolder(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    (inbox / "LL-17").mkdir(parents=True)
    rules = _rules(sample_pattern=r"^(?P<sample>CY-\d+)_")
    plain = inbox / "LL-17" / "plate.tif"
    assert rules.sample_for(plain, inbox) == "LL-17"  # subfolder
    named = inbox / "LL-17" / "CY-204_plate.tif"
    assert rules.sample_for(named, inbox) == "CY-204"  # pattern beats subfolder
    (inbox / "LL-17" / "CY-204_plate.json").write_text(json.dumps({"sample": "TROODOS-9"}))
    assert rules.sample_for(named, inbox) == "TROODOS-9"  # sidecar beats both
    assert rules.sample_for(inbox / "loose.tif", inbox) is None  # no rule gives one
    only_subfolder = _rules(sample_from="subfolder", sample_pattern=r"^(?P<sample>CY-\d+)_")
    assert only_subfolder.sample_for(named, inbox) == "LL-17"


def test_unknown_sample_rule_or_bad_pattern_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="folder"):
        _rules(sample_from="sidecar,folder")
    with pytest.raises(ConfigError, match="sample_pattern"):
        _rules(sample_pattern="(unclosed")


# -- completeness --------------------------------------------------------------------------------


def test_half_written_tiff_waits_until_complete(plate_file: Path, tmp_path: Path) -> None:
    data = plate_file.read_bytes()
    growing = tmp_path / "growing.tif"
    growing.write_bytes(data[: len(data) // 2])
    now = [0.0]
    tracker = StabilityTracker(2.0, 60.0, verify=verify_readable, clock=lambda: now[0])
    assert tracker.check(growing).state is Completeness.WAIT  # first sight
    now[0] = 5.0
    verdict = tracker.check(growing)  # stable, but its tiles run past the end of the file
    assert verdict.state is Completeness.WAIT and verdict.reason
    with growing.open("ab") as fh:
        fh.write(data[len(data) // 2 :])
    os.utime(growing, ns=(1, 10**18))  # a visible change of modification time
    now[0] = 6.0
    assert tracker.check(growing).state is Completeness.WAIT  # it changed: stability starts again
    now[0] = 7.0
    assert tracker.check(growing).state is Completeness.WAIT
    now[0] = 8.5
    assert tracker.check(growing).state is Completeness.READY


def test_a_file_its_writer_closed_is_taken_without_the_quiet_period(plate_file: Path, tmp_path: Path) -> None:
    done = tmp_path / "done.tif"
    done.write_bytes(plate_file.read_bytes())
    now = [0.0]
    tracker = StabilityTracker(60.0, 600.0, verify=verify_readable, clock=lambda: now[0])
    assert tracker.check(done).state is Completeness.WAIT  # first sight, no event: the quiet rule
    tracker.writer_finished(done)  # IN_CLOSE_WRITE (or a rename into place) arrives
    assert tracker.check(done).state is Completeness.READY  # at once, not after 60 s


def test_a_closed_but_half_written_file_falls_back_to_the_quiet_period(
    plate_file: Path, tmp_path: Path
) -> None:
    data = plate_file.read_bytes()
    burst = tmp_path / "burst.tif"
    burst.write_bytes(data[: len(data) // 2])  # a writer that closes between bursts
    now = [0.0]
    tracker = StabilityTracker(5.0, 600.0, verify=verify_readable, clock=lambda: now[0])
    tracker.writer_finished(burst)
    verdict = tracker.check(burst)
    assert verdict.state is Completeness.WAIT and verdict.reason is None  # checked, not complete
    now[0] = 1.0
    assert tracker.check(burst).state is Completeness.WAIT  # not verified again before the quiet period
    now[0] = 6.0
    verdict = tracker.check(burst)
    assert verdict.state is Completeness.WAIT and "truncated" in (verdict.reason or "")


def test_the_watcher_takes_a_copied_plate_when_the_copy_closes_it(plate_file: Path, tmp_path: Path) -> None:
    settings = _settings(tmp_path / "data", **{"ingest.stable_seconds": 3600.0, "ingest.observer": "native"})
    factory = open_database(settings.database_url)
    broker = RecordingBroker()
    sent = broker.sent
    watcher = Watcher(settings, factory, broker)
    stop = threading.Event()
    thread = threading.Thread(target=watcher.run, args=(stop,), daemon=True)
    thread.start()
    try:
        inbox = settings.storage.inbox_dir
        deadline = time.monotonic() + 10
        while not inbox.is_dir() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # the observer is watching
        data = plate_file.read_bytes()
        with (inbox / "open.tif").open("wb") as still_open:
            still_open.write(data)
            still_open.flush()
            shutil.copyfile(plate_file, inbox / "copied.tif")  # written and closed
            deadline = time.monotonic() + 30
            while not sent and time.monotonic() < deadline:
                time.sleep(0.1)
            with factory() as session:
                names = [i.file_name for i in session.scalars(select(Image))]
            # The copy is taken long before the hour-long quiet period; the file still open is not.
            assert names == ["copied.tif"] and len(sent) == 1
    finally:
        stop.set()
        thread.join(timeout=10)
        factory.kw["bind"].dispose()


def test_truncated_file_is_given_up_after_the_grace_period(plate_file: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.tif"
    cut.write_bytes(plate_file.read_bytes()[:20000])
    now = [0.0]
    tracker = StabilityTracker(1.0, 30.0, verify=verify_readable, clock=lambda: now[0])
    tracker.check(cut)
    now[0] = 29.0
    assert tracker.check(cut).state is Completeness.WAIT
    now[0] = 31.0
    verdict = tracker.check(cut)
    assert verdict.state is Completeness.UNREADABLE and "truncated" in verdict.reason
    cut.unlink()
    assert tracker.check(cut).state is Completeness.GONE


# -- one image per content -----------------------------------------------------------------------


def test_same_bytes_twice_make_one_image(factory, tmp_path: Path) -> None:
    a, b = tmp_path / "a.tif", tmp_path / "b.tif"
    h = hashlib.sha256(b"plate").hexdigest()
    with factory() as session:
        first = register_file(session, a, h, 5, "S1")
        again = register_file(session, a, h, 5, "S1")
        copy = register_file(session, b, h, 5, "S1")
        assert first.outcome is Outcome.NEW and first.enqueue
        assert again.outcome is Outcome.KNOWN and not again.enqueue
        assert (
            copy.outcome is Outcome.DUPLICATE and not copy.enqueue and f"image {first.image_id}" in copy.note
        )
        assert session.scalar(select(func.count(Image.id))) == 1


def test_different_file_with_the_same_name_is_a_new_image_noted_as_such(factory, tmp_path: Path) -> None:
    with factory() as session:
        first = register_file(session, tmp_path / "S1" / "plate.tif", "a" * 64, 5, "S1")
        second = register_file(session, tmp_path / "S2" / "plate.tif", "b" * 64, 5, "S2")
        assert second.outcome is Outcome.NEW and second.image_id != first.image_id
        assert second.note and "same file name" in second.note and "new image" in second.note


def test_failed_bytes_dropped_again_are_queued_for_another_attempt(factory, tmp_path: Path) -> None:
    with factory() as session:
        bad = register_unreadable(session, tmp_path / "x.tif", "c" * 64, 5, None, "truncated")
        image = session.get(Image, bad.image_id)
        assert image.status == ImageStatus.QUARANTINED.value and image.error == "truncated"
        again = register_file(session, tmp_path / "fixed" / "x.tif", "c" * 64, 5, None)
        assert again.outcome is Outcome.RETRY and again.enqueue
        session.refresh(image)
        assert image.status == ImageStatus.QUEUED.value and image.error is None


# -- moves ---------------------------------------------------------------------------------------


def test_archive_keeps_the_name_and_never_overwrites(tmp_path: Path) -> None:
    inbox, archive = tmp_path / "inbox", tmp_path / "archive"
    (inbox / "S1").mkdir(parents=True)
    first = inbox / "S1" / "plate.tif"
    first.write_bytes(b"first")
    (inbox / "S1" / "plate.json").write_text('{"sample": "S1"}')
    moved = move_original(first, inbox, archive, "1" * 64)
    assert moved == archive / "S1" / "plate.tif" and moved.read_bytes() == b"first"
    assert (archive / "S1" / "plate.json").is_file() and not first.exists()
    second = inbox / "S1" / "plate.tif"
    second.write_bytes(b"second")
    moved2 = move_original(second, inbox, archive, "2" * 64)
    assert moved2.name == "plate.222222222222.tif" and moved2.read_bytes() == b"second"
    assert moved.read_bytes() == b"first"  # the archived original is untouched
    assert destination_for(inbox / "S1" / "plate.tif", inbox, archive, "2" * 64).name.startswith(
        "plate.222222222222-"
    )


# -- claims and the sweeper ----------------------------------------------------------------------


def _claim(session, image_id: int, owner: str = "host:1:a", lease: float = 600, **kw):
    return claim_image(session, image_id, owner=owner, lease_seconds=lease, stuck_after=600, **kw)


def test_an_image_is_claimed_by_one_worker_only(factory, tmp_path: Path) -> None:
    with factory() as session:
        reg = register_file(session, tmp_path / "p.tif", "d" * 64, 5, None)
        assert _claim(session, reg.image_id, "host:1:a") is not None
        assert _claim(session, reg.image_id, "host:2:b") is None  # second delivery, live lease
        assert _claim(session, reg.image_id, "host:1:a") is None  # a duplicate in the same process
        assert _claim(session, reg.image_id, "host:2:b", force=True) is not None  # a resumed attempt
        assert session.get(Image, reg.image_id).lease_owner == "host:2:b"
        image = session.get(Image, reg.image_id)
        image.status = ImageStatus.DONE.value
        session.commit()
        assert _claim(session, reg.image_id, "host:3:c", force=True) is None  # finished stays


def test_an_image_whose_lease_expired_is_claimed_by_another_worker(factory, tmp_path: Path) -> None:
    with factory() as session:
        image_id = register_file(session, tmp_path / "p.tif", "d" * 64, 5, None).image_id
        assert _claim(session, image_id, "host:1:a", lease=0) is not None  # its worker dies at once
        time.sleep(0.01)
        assert _claim(session, image_id, "host:2:b") is not None
        image = session.get(Image, image_id)
        assert image.lease_owner == "host:2:b" and image.lease_expires_at > utcnow()


def test_sweeper_resends_lost_tasks_and_hands_over_abandoned_images(tmp_path: Path) -> None:
    settings = _settings(tmp_path / "data", **{"queue.requeue_after": 0, "queue.stuck_after": 0})
    factory = open_database(settings.database_url)

    class Broker:
        def __init__(self) -> None:
            self.sent: list[tuple[int, bool]] = []
            self.held = 0

        def send(self, image_id: int, *, takeover: bool = False, content_hash: str | None = None) -> None:
            self.sent.append((image_id, takeover))

        def depth(self) -> int | None:
            return self.held

        def housekeeping(self) -> None:
            pass

    broker = Broker()
    with factory() as session:
        lost = register_file(session, tmp_path / "lost.tif", "e" * 64, 5, None).image_id
        stuck = register_file(session, tmp_path / "stuck.tif", "f" * 64, 5, None).image_id
        _claim(session, stuck)  # its worker is alive (lease renewed) but makes no progress
        found = stale_images(session, inbox=settings.storage.inbox_dir, requeue_after=0, stuck_after=0)
        assert found.queued == [lost] and found.processing == [stuck] and found.queued_total == 1
        assert found.expired == []
    watcher = Watcher(settings, factory, broker)
    broker.held = 1  # the broker still holds a task for every queued image: nothing is re-sent
    watcher.sweep()
    assert broker.sent == [(stuck, True)]
    broker.held, broker.sent = 0, []  # the broker forgot (a restart without persistence)
    watcher.sweep()
    assert (lost, False) in broker.sent
    factory.kw["bind"].dispose()


def test_watcher_registers_complete_files_and_leaves_the_rest(plate_file: Path, tmp_path: Path) -> None:
    settings = _settings(tmp_path / "data", **{"ingest.stable_seconds": 0.0, "ingest.unreadable_grace": 0.0})
    factory = open_database(settings.database_url)
    inbox = settings.storage.inbox_dir
    (inbox / "S1").mkdir(parents=True)
    (inbox / "S1" / "plate.tif").write_bytes(plate_file.read_bytes())
    (inbox / "S1" / "copy.tif").write_bytes(plate_file.read_bytes())
    (inbox / "plate.tif.part").write_bytes(b"partial")
    (inbox / "text.tif").write_text("not an image")
    broker = RecordingBroker()
    sent = broker.sent
    watcher = Watcher(settings, factory, broker)
    watcher.rescan()
    watcher.tick()  # first sight
    watcher.tick()  # stable: taken
    with factory() as session:
        images = {i.file_name: i for i in session.scalars(select(Image))}
    assert set(images) == {"copy.tif", "text.tif"} or set(images) == {"plate.tif", "text.tif"}
    good = next(i for i in images.values() if i.file_name != "text.tif")
    assert good.status == ImageStatus.QUEUED.value and good.sample_id == "S1" and sent == [good.id]
    assert images["text.tif"].status == ImageStatus.QUARANTINED.value
    assert (settings.storage.quarantine_dir / "text.tif.reason.txt").is_file()
    assert (inbox / "plate.tif.part").is_file()  # ignored, left alone
    assert len(list(settings.storage.archive_dir.rglob("*.tif"))) == 1  # the duplicate, archived
    factory.kw["bind"].dispose()


def test_the_same_bytes_dropped_again_at_the_same_path_are_archived_as_a_duplicate(
    plate_file: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 13 item 9: after the original was archived, the same bytes at the same inbox path are a
    duplicate like at any other path: archived (never overwriting the first), with a log line."""
    from labpipe.ingest import finish_move

    settings = _settings(tmp_path / "data", **{"ingest.stable_seconds": 0.0})
    factory = open_database(settings.database_url)
    inbox = settings.storage.inbox_dir
    (inbox / "S1").mkdir(parents=True)
    dropped = inbox / "S1" / "plate.tif"
    dropped.write_bytes(plate_file.read_bytes())
    broker = RecordingBroker()
    watcher = Watcher(settings, factory, broker)
    watcher.rescan()
    watcher.tick()
    watcher.tick()
    with factory() as session:
        (image,) = session.scalars(select(Image))
        image.status = ImageStatus.DONE.value  # as a worker leaves it
        session.commit()
        first = finish_move(session, image, settings.storage)
    assert first == settings.storage.archive_dir / "S1" / "plate.tif" and not dropped.exists()

    dropped.write_bytes(plate_file.read_bytes())  # the technician drops the same file again
    caplog.clear()
    watcher.rescan()
    watcher.tick()
    watcher.tick()

    assert not dropped.exists()
    archived = sorted(p.name for p in (settings.storage.archive_dir / "S1").glob("plate*.tif"))
    assert len(archived) == 2 and "plate.tif" in archived
    assert first.read_bytes() == plate_file.read_bytes()
    assert broker.sent == [image.id] and watcher.counts["duplicate"] == 1
    assert "duplicate file archived without processing" in caplog.messages
    with factory() as session:
        assert session.scalar(select(func.count(Image.id))) == 1
    factory.kw["bind"].dispose()


def test_files_waiting_to_become_complete_are_shown_with_their_wait(plate_file: Path, tmp_path: Path) -> None:
    """Issue 16: a half-copied plate sits in the inbox without an image row; the dashboard and
    ``labpipe status`` show it, with how long it has waited and why, until it is taken."""
    from click.testing import CliRunner
    from fastapi.testclient import TestClient

    from labpipe.cli.main import cli
    from labpipe.web import create_web_app

    quiet = {"ingest.stable_seconds": 0.0, "ingest.unreadable_grace": 600.0}
    settings = _settings(tmp_path / "data", **quiet)
    factory = open_database(settings.database_url)
    inbox = settings.storage.inbox_dir
    (inbox / "S1").mkdir(parents=True)
    data = plate_file.read_bytes()
    half = inbox / "S1" / "copying.tif"
    half.write_bytes(data[: len(data) // 2])
    watcher = Watcher(settings, factory, RecordingBroker())
    watcher.rescan()
    watcher.tick()
    time.sleep(1.1)
    watcher.tick()  # stable, but not a complete image: it waits

    status = CliRunner().invoke(cli, ["--data-dir", str(settings.storage.root), "status", "--json"])
    assert status.exit_code == 0, status.output
    (arriving,) = json.loads(status.stdout)["arriving"]
    assert arriving["file"] == "S1/copying.tif" and arriving["size_bytes"] == len(data) // 2
    assert arriving["waiting_seconds"] >= 1.0 and "complete" in arriving["reason"].lower()
    with TestClient(
        create_web_app(settings, session_factory=factory),
        base_url="http://localhost",
        client=("127.0.0.1", 5000),
    ) as web:
        page = web.get("/", params={"fragment": "live"}).text
    assert 'id="arriving"' in page and "S1/copying.tif" in page

    with half.open("ab") as fh:  # the copy finishes
        fh.write(data[len(data) // 2 :])
    watcher.tick()
    watcher.tick()
    status = CliRunner().invoke(cli, ["--data-dir", str(settings.storage.root), "status", "--json"])
    assert json.loads(status.stdout)["arriving"] == []
    watcher.arrivals.close()  # a stopped watcher leaves nothing behind
    assert not list((settings.storage.root / "state" / "arrivals").glob("*.json"))
    factory.kw["bind"].dispose()


def test_observer_mode_auto_polls_on_network_shares(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text("/dev/sda1 / ext4 rw 0 0\nserver:/lab /mnt/lab nfs4 rw 0 0\n")
    assert filesystem_type(Path("/mnt/lab/inbox"), mounts) == "nfs4"
    assert filesystem_type(Path("/home/x"), mounts) == "ext4"
    assert choose_observer("poll", tmp_path) == "poll"
    with pytest.raises(ConfigError):
        choose_observer("sometimes", tmp_path)


# -- task-sized stages and jobs ------------------------------------------------------------------


class _InlineFollowups:
    """Runs follow-up jobs immediately (what the Celery tasks do through the broker)."""

    def __init__(self, ctx) -> None:
        self.ctx = ctx
        self.classify_calls: list[tuple[int, str, int]] = []

    def classify(self, image_id: int, attempt: str, batch: int) -> None:
        self.classify_calls.append((image_id, attempt, batch))

    def detect(self, image_id: int, *, takeover: bool, resumed: bool) -> None:
        raise AssertionError("no restart expected")


def test_staged_jobs_record_the_same_result_as_process_file_and_survive_duplicates(
    plate_file: Path, tmp_path: Path
) -> None:
    from labpipe.daemon.jobs import JobContext, classify_job, detect_job
    from labpipe.pipeline import Pipeline

    with Pipeline.from_settings(_settings(tmp_path / "direct")) as direct:
        expected = direct.process_file(plate_file)

    settings = _settings(tmp_path / "data", **{"queue.classify_batch": 2})
    inbox = settings.storage.inbox_dir
    (inbox / "S1").mkdir(parents=True)
    dropped = inbox / "S1" / "plate.tif"
    dropped.write_bytes(plate_file.read_bytes())
    ctx = JobContext.from_settings(settings)
    follow = _InlineFollowups(ctx)
    with ctx.session() as session:
        image_id = register_file(
            session, dropped, hashlib.sha256(dropped.read_bytes()).hexdigest(), dropped.stat().st_size, "S1"
        ).image_id
    assert detect_job(ctx, image_id, follow) == "detected"
    assert detect_job(ctx, image_id, follow) == "skipped"  # a duplicate delivery does nothing
    batches = list(follow.classify_calls)
    assert len(batches) == -(-len(expected["specimens"]) // 2)
    outcomes = [classify_job(ctx, *call, follow) for call in batches]
    assert outcomes[-1] == "done" and set(outcomes[:-1]) <= {"classified"}
    assert classify_job(ctx, *batches[-1], follow) == "skipped"  # redelivered after recording

    with ctx.session() as session:
        image = session.get(Image, image_id)
        assert image.status == ImageStatus.DONE.value and image.n_specimens == len(expected["specimens"])
        specimens = session.scalars(select(Specimen).order_by(Specimen.index_in_image)).all()
        assert [[s.x, s.y, s.w, s.h] for s in specimens] == [s["bbox"] for s in expected["specimens"]]
        families = [s.classifications[0].family for s in specimens]
        assert families == [s["family"] for s in expected["specimens"]]
        assert session.scalar(select(func.count(Classification.id))) == len(specimens)
        assert image.archived_path == str(settings.storage.archive_dir / "S1" / "plate.tif")
    assert not dropped.exists() and Path(image.archived_path).read_bytes() == plate_file.read_bytes()
    assert not list(settings.storage.crops_dir.glob(".stage-*"))
    ctx.pipeline.__exit__()


def test_bad_input_found_by_a_worker_is_quarantined_not_retried(plate_file: Path, tmp_path: Path) -> None:
    from labpipe.daemon.jobs import JobContext, detect_job

    settings = _settings(tmp_path / "data")
    inbox = settings.storage.inbox_dir
    inbox.mkdir(parents=True)
    bad = inbox / "bad.tif"
    bad.write_bytes(plate_file.read_bytes()[:30000])
    ctx = JobContext.from_settings(settings)
    with ctx.session() as session:
        image_id = register_file(session, bad, "9" * 64, bad.stat().st_size, None).image_id
    assert detect_job(ctx, image_id, _InlineFollowups(ctx)) == "quarantined"
    with ctx.session() as session:
        image = session.get(Image, image_id)
        assert image.status == ImageStatus.QUARANTINED.value and "bad.tif" in image.error
    reason = (settings.storage.quarantine_dir / "bad.tif.reason.txt").read_text()
    assert "ImageReadError" in reason and "truncated" in reason
    ctx.pipeline.__exit__()


def test_an_image_whose_worker_keeps_dying_is_failed_not_retried_forever(tmp_path: Path) -> None:
    from labpipe.daemon.jobs import JobContext, detect_job

    settings = _settings(tmp_path / "data", **{"queue.max_attempts": 2})
    ctx = JobContext.from_settings(settings)
    with ctx.session() as session:
        image_id = register_file(session, tmp_path / "oom.tif", "8" * 64, 5, None).image_id
    ctx.attempts.bump(image_id)
    ctx.attempts.bump(image_id)  # two workers died on it already
    with ctx.session() as session:
        _claim(session, image_id, lease=0)  # its worker died
    assert detect_job(ctx, image_id, _InlineFollowups(ctx), takeover=True) == "failed"
    with ctx.session() as session:
        assert re.search("gave up after 2 interrupted attempts", session.get(Image, image_id).error)
    ctx.pipeline.__exit__()


# -- the embedded broker -------------------------------------------------------------------------


def test_embedded_broker_deletes_acked_messages_and_redelivers_a_dead_workers(tmp_path: Path) -> None:
    from kombu import Connection, Exchange, Queue

    from workers import embedded

    url = f"{embedded.SCHEME}+sqlite:///{tmp_path / 'broker.sqlite'}"
    queue = Queue("q", Exchange("q"), routing_key="q")
    with Connection(url, transport_options={"polling_interval": 0.05}) as conn:
        producer = conn.Producer(serializer="json")
        for n in range(2):
            producer.publish({"n": n}, exchange=queue.exchange, routing_key="q", declare=[queue])
        assert embedded.embedded_queue_depth(url, "q") == 2
        first = conn.SimpleQueue(queue).get(timeout=2)
        first.ack()
        assert embedded.embedded_queue_depth(url, "q") == 1  # acknowledged: deleted
    with Connection(url) as conn:
        taken = conn.default_channel.basic_get("q")  # a worker takes it, then dies (no ack, no close)
        assert taken is not None and taken.payload == {"n": 1}
        assert embedded.restore_expired(url, visibility_timeout=3600) == 0  # not expired yet
        assert embedded.restore_expired(url, visibility_timeout=0) == 1  # expired: visible again
        again = conn.SimpleQueue(queue).get(timeout=2)
        assert again.payload == {"n": 1} and again.delivery_info.get("redelivered") is True
        again.ack()
    assert embedded.embedded_queue_depth(url, "q") == 0


def test_reject_gives_the_message_back_at_once(tmp_path: Path) -> None:
    from kombu import Connection, Exchange, Queue

    from workers import embedded

    url = f"{embedded.SCHEME}+sqlite:///{tmp_path / 'broker.sqlite'}"
    queue = Queue("q", Exchange("q"), routing_key="q")
    with Connection(url, transport_options={"polling_interval": 0.05}) as conn:
        conn.Producer(serializer="json").publish(
            {"n": 7}, exchange=queue.exchange, routing_key="q", declare=[queue]
        )
        simple = conn.SimpleQueue(queue)
        simple.get(timeout=2).reject(requeue=True)  # what a lost worker process gets (reject_on_worker_lost)
        back = simple.get(timeout=2)
        assert back.payload == {"n": 7} and back.delivery_info.get("redelivered") is True
        back.ack()
    assert embedded.embedded_queue_depth(url, "q") == 0


def test_claims_use_utc_timestamps(factory, tmp_path: Path) -> None:
    with factory() as session:
        image_id = register_file(session, tmp_path / "t.tif", "7" * 64, 5, None).image_id
        _claim(session, image_id)
        assert abs((utcnow() - session.get(Image, image_id).updated_at).total_seconds()) < 60


# -- queue settings --------------------------------------------------------------------------------


def test_tasks_are_acknowledged_late_and_workers_recycle_themselves(tmp_path: Path) -> None:
    from workers.app import celery_config

    settings = _settings(
        tmp_path,
        **{
            "queue.broker_url": "redis://127.0.0.1:6379/3",
            "queue.visibility_timeout": 7200,
            "queue.max_tasks_per_child": 50,
            "queue.max_memory_per_child_mb": 2048,
        },
    )
    conf = celery_config(settings)
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"]
    assert conf["worker_prefetch_multiplier"] == 1
    assert conf["broker_transport_options"]["visibility_timeout"] == 7200
    assert conf["worker_max_tasks_per_child"] == 50
    assert conf["worker_max_memory_per_child"] == 2048 * 1024  # Celery counts KiB
    embedded = celery_config(_settings(tmp_path))
    assert embedded["broker_url"].startswith("labpipe-embedded+sqlite:///")
    assert embedded["broker_url"].endswith("/broker.sqlite")


# -- the deployment files ------------------------------------------------------------------------


def test_compose_file_runs_every_part_of_the_topology_with_existing_commands() -> None:
    """Docker does not run here: check the compose topology against the CLI it calls."""
    import subprocess

    from click.testing import CliRunner

    from labpipe.cli.main import cli

    yaml = pytest.importorskip("yaml")
    root = Path(__file__).resolve().parent.parent / "docker"
    compose = yaml.safe_load((root / "compose.yaml").read_text())
    services = compose["services"]
    assert {"redis", "postgres", "migrate", "watcher", "worker", "api"} <= set(services)
    assert services["worker"]["deploy"]["replicas"] >= 2
    labpipe_services = [svc for name, svc in services.items() if name not in ("redis", "postgres")]
    shared = {volume for svc in labpipe_services for volume in svc["volumes"]}
    assert shared == {"images:/data"}  # every labpipe process sees the same image storage
    env = services["worker"]["environment"]
    assert env["LABPIPE_QUEUE_BROKER_URL"].startswith("redis://")
    assert env["LABPIPE_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert services["watcher"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    subprocess.run(["sh", "-n", str(root / "entrypoint.sh")], check=True)
    entry = (root / "entrypoint.sh").read_text()
    for command in (["db", "upgrade"], ["watch"], ["worker"], ["serve"], ["status"], ["api"]):
        assert f"labpipe {command[0]}" in entry or command[0] in entry
        result = CliRunner().invoke(cli, [*command, "--help"])
        assert result.exit_code == 0, (command, result.output)


def test_a_task_meant_for_another_database_is_refused(tmp_path: Path) -> None:
    """Two deployments sharing one Redis database would otherwise process each other's image ids."""
    from labpipe.daemon.jobs import JobContext, detect_job

    ctx = JobContext.from_settings(_settings(tmp_path / "data"))
    with ctx.session() as session:
        image_id = register_file(session, tmp_path / "mine.tif", "5" * 64, 5, None).image_id
    assert detect_job(ctx, image_id, _InlineFollowups(ctx), content_hash="6" * 64) == "foreign"
    with ctx.session() as session:
        assert session.get(Image, image_id).status == ImageStatus.QUEUED.value  # untouched
    ctx.pipeline.__exit__()


def test_lost_classify_tasks_resume_from_the_staged_detections(plate_file: Path, tmp_path: Path) -> None:
    """A broker that forgot an image's classify tasks costs those batches, not a new detection."""
    from labpipe.daemon.jobs import JobContext, classify_job, detect_job

    settings = _settings(tmp_path / "data", **{"queue.classify_batch": 2})
    inbox = settings.storage.inbox_dir
    inbox.mkdir(parents=True)
    dropped = inbox / "plate.tif"
    dropped.write_bytes(plate_file.read_bytes())
    ctx = JobContext.from_settings(settings)
    follow = _InlineFollowups(ctx)
    with ctx.session() as session:
        digest = hashlib.sha256(dropped.read_bytes()).hexdigest()
        image_id = register_file(session, dropped, digest, dropped.stat().st_size, None).image_id
    assert detect_job(ctx, image_id, follow) == "detected"
    first, *lost = follow.classify_calls
    assert classify_job(ctx, *first, follow) == "classified"  # the other batches' tasks are lost
    follow.classify_calls.clear()
    with ctx.session() as session:  # no progress for stuck_after: the sweeper hands it over
        assert release_for_takeover(session, image_id, expired_only=False) is not None
    assert detect_job(ctx, image_id, follow, takeover=True) == "resumed"  # the sweeper's takeover
    assert follow.classify_calls == lost  # only the missing batches, same attempt
    assert [classify_job(ctx, *call, follow) for call in lost][-1] == "done"
    assert ctx.attempts.get(image_id) == 0  # cleared once done
    ctx.pipeline.__exit__()

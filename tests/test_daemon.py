"""The daemon as a lab runs it, with real processes: ``labpipe watch`` + ``labpipe worker`` on real
Redis and PostgreSQL (the distributed deployment), and ``labpipe serve`` on SQLite with the embedded
broker (no Redis). Plates are small synthetic ones (800 x 800 px, 2-3 specimens) so a hundred of
them stay quick; each test polls the database until the work is done, then checks it was done once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from services import free_port, redis_ping, start_redis
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from labpipe.db.models import Classification, Image, ImageStatus, Specimen, utcnow
from labpipe.synth.plate import PlateSpec, write_plate

pytestmark = pytest.mark.slow

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PLATE = {"width": 800, "height": 800, "n_touching_pairs": 0, "n_debris": 2, "um_per_px": 20.0}
FAST = {
    # quick to notice files and lost work, light on 2 shared cores
    "ingest.stable_seconds": 0.5,
    "ingest.poll_interval": 0.2,
    "ingest.unreadable_grace": 3.0,
    "ingest.observer": "native",
    "queue.poll_interval": 0.2,
    "queue.sweep_interval": 2,
    # other test runs may restart the shared Redis at any time: re-send lost tasks quickly
    "queue.requeue_after": 5,
    "queue.stuck_after": 30,
    "queue.worker_concurrency": 1,
    "queue.shutdown_timeout": 60,
    "classifier.threads": 1,
    "classifier.batch_size": 8,
    "logging.level": "INFO",
}
FINISHED = {ImageStatus.DONE.value, ImageStatus.FAILED.value, ImageStatus.QUARANTINED.value}


# -- plates --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plates(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Four small plates with 2 or 3 specimens each."""
    folder = tmp_path_factory.mktemp("daemon-plates")
    out = []
    for seed, n in [(11, 2), (12, 3), (13, 2), (14, 3)]:
        path = folder / f"base-{seed}.tif"
        write_plate(PlateSpec(n_specimens=n, seed=seed, **PLATE), path)
        out.append(path)
    return out


@pytest.fixture(scope="module")
def empty_plate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("daemon-empty") / "empty.tif"
    write_plate(PlateSpec(n_specimens=0, seed=15, **PLATE), path)
    return path


def drop(source: Path | bytes, dest: Path, tag: str | None = None) -> Path:
    """Put a file into the inbox the way copy tools do: a hidden temporary name, then a rename.

    With ``tag``, a unique trailer follows the TIFF data: different bytes, the same picture.
    """
    data = source if isinstance(source, bytes) else source.read_bytes()
    if tag is not None:
        data += f"\nlabpipe-test-copy {tag}\n".encode()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.part")
    tmp.write_bytes(data)
    os.replace(tmp, dest)
    return dest


# -- services ------------------------------------------------------------------------------------


def restart_redis() -> None:
    """Stop Redis without saving (it keeps nothing on disk here) and start it again."""
    subprocess.run(["redis-cli", "shutdown", "nosave"], timeout=20, capture_output=True)
    deadline = time.monotonic() + 10
    while redis_ping() and time.monotonic() < deadline:
        time.sleep(0.1)
    start_redis()


# -- the daemon's processes ----------------------------------------------------------------------


class Daemon:
    """Starts labpipe processes with one storage root, database and broker; always cleans up."""

    def __init__(self, root: Path, database_url: str, broker_url: str, **settings: Any) -> None:
        self.root = root
        self.inbox = root / "inbox"
        self.database_url = database_url
        self.settings = {**FAST, **settings, "database.url": database_url, "queue.broker_url": broker_url}
        self.settings.setdefault("api.port", free_port())  # `serve` runs the web UI: not all on 8000
        self.logs = root.parent / f"{root.name}-logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._engine = sa.create_engine(database_url) if not database_url.startswith("sqlite") else None
        self._factory: sessionmaker[Session] | None = None

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LABPIPE_")}
        env["LABPIPE_STORAGE_ROOT"] = str(self.root)
        for dotted, value in self.settings.items():
            section, key = dotted.split(".")
            env[f"LABPIPE_{section}_{key}".upper()] = (
                str(value).lower() if isinstance(value, bool) else str(value)
            )
        return env

    def start(self, role: str, name: str | None = None, *args: str) -> subprocess.Popen[bytes]:
        name = name or role
        log = (self.logs / f"{name}.log").open("ab")
        process = subprocess.Popen(
            [sys.executable, "-m", "labpipe.cli.main", role, *args],
            cwd=self.root.parent,
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: a SIGKILL takes the pool children too
        )
        log.close()
        self.processes[name] = process
        return process

    def kill(self, name: str) -> None:
        """SIGKILL a process and its children (a machine or container dying)."""
        process = self.processes.pop(name)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)

    def stop(self, name: str, timeout: float = 90) -> int:
        """SIGTERM, as systemd or docker stop send it; returns the exit status."""
        process = self.processes.pop(name)
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise

    def stop_all(self) -> None:
        for name in list(self.processes):
            process = self.processes[name]
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for name in list(self.processes):
            process = self.processes.pop(name)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=30)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)  # leftovers of the group, if any
            process.wait()
        if self._factory is not None:
            self._factory.kw["bind"].dispose()
        if self._engine is not None:
            self._engine.dispose()

    def session(self) -> Session:
        if self._factory is None:
            from labpipe.db.session import make_engine, make_session_factory

            self._factory = make_session_factory(make_engine(self.database_url))
        return self._factory()

    def images(self) -> list[Image]:
        try:
            with self.session() as session:
                return list(session.scalars(select(Image).order_by(Image.id)))
        except sa.exc.OperationalError:  # `labpipe serve` has not created the SQLite schema yet
            return []

    def wait_log(self, name: str, text: str, timeout: float = 60) -> None:
        """Wait until ``<logs>/<name>`` holds ``text`` (a process says it is ready)."""
        deadline = time.monotonic() + timeout
        path = self.logs / name
        while time.monotonic() < deadline:
            if path.is_file() and text in path.read_text(errors="replace"):
                return
            time.sleep(0.2)
        raise AssertionError(f"{name} never said {text!r}:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        out = []
        for path in sorted(self.logs.glob("*.log")):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"----- {path.name}\n" + "\n".join(text))
        return "\n".join(out)

    def wait_for(self, what: str, ready: Callable[[list[Image]], bool], timeout: float) -> list[Image]:
        deadline = time.monotonic() + timeout
        while True:
            images = self.images()
            if ready(images):
                return images
            for name, process in self.processes.items():
                assert process.poll() is None, f"{name} exited ({process.returncode})\n{self.log_tail()}"
            if time.monotonic() > deadline:
                states = Counter(i.status for i in images)
                raise AssertionError(f"timed out waiting for {what}: {dict(states)}\n{self.log_tail()}")
            time.sleep(0.25)

    def wait_finished(self, n: int, timeout: float) -> list[Image]:
        return self.wait_for(
            f"{n} images finished",
            lambda images: sum(i.status in FINISHED for i in images) >= n,
            timeout,
        )


@pytest.fixture
def distributed(tmp_path: Path, redis_db: str, pg_url: str) -> Iterator[Callable[..., Daemon]]:
    """Make a Redis + PostgreSQL deployment (started by the test, always stopped here)."""
    made: list[Daemon] = []

    def make(**settings: Any) -> Daemon:
        daemon = Daemon(tmp_path / f"storage{len(made)}", pg_url, redis_db, **settings)
        made.append(daemon)
        return daemon

    yield make
    for daemon in made:
        daemon.stop_all()


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """Make an embedded deployment: SQLite and the broker file in the storage root, no Redis."""
    made: list[Daemon] = []

    def make(**settings: Any) -> Daemon:
        root = tmp_path / f"storage{len(made)}"
        daemon = Daemon(root, f"sqlite:///{root / 'labpipe.sqlite'}", "", **settings)
        made.append(daemon)
        return daemon

    yield make
    for daemon in made:
        daemon.stop_all()


def start_all(daemon: Daemon, kind: str, workers: int = 1) -> None:
    if kind == "embedded":
        daemon.settings["queue.serve_workers"] = workers
        daemon.start("serve")
    else:
        daemon.start("watch")
        for n in range(workers):
            daemon.start("worker", f"worker-{n + 1}")


# -- what "exactly once" means -------------------------------------------------------------------


def assert_processed_exactly_once(daemon: Daemon) -> dict[str, Image]:
    """Every done image has its specimens once, each with one classification and one crop file."""
    with daemon.session() as session:
        images = list(session.scalars(select(Image)))
        per_index = Counter(session.execute(select(Specimen.image_id, Specimen.index_in_image)).all())
        assert not [k for k, n in per_index.items() if n > 1], "duplicate specimens"
        per_image = Counter(image_id for image_id, _ in per_index)
        for image in images:
            if image.status == ImageStatus.DONE.value:
                assert image.n_specimens == per_image[image.id], image.file_name
                assert image.archived_path and Path(image.archived_path).is_file()
            else:
                assert per_image[image.id] == 0
        n_specimens = session.scalar(select(func.count(Specimen.id)))
        per_specimen = Counter(session.scalars(select(Classification.specimen_id)).all())
        assert len(per_specimen) == n_specimens and set(per_specimen.values()) <= {1}
        crop_paths = set(session.scalars(select(Specimen.crop_path)).all())
    crops = daemon.root / "crops"
    on_disk = {
        p.relative_to(crops).as_posix()
        for p in crops.rglob("*.png")
        if not any(part.startswith(".stage-") for part in p.relative_to(crops).parts)
    }
    assert on_disk == crop_paths
    return {Path(i.source_path).relative_to(daemon.inbox).as_posix(): i for i in images}


def status_json(daemon: Daemon) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "labpipe.cli.main", "status", "--json"],
        env=daemon.env(),
        cwd=daemon.root.parent,
        capture_output=True,
        timeout=60,
        check=True,
    )
    return json.loads(out.stdout)


# -- the checklist -------------------------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.parametrize("kind", ["distributed", "embedded"])
def test_bad_files_are_quarantined_with_reasons_and_an_empty_plate_is_done_with_zero(
    kind: str, request: pytest.FixtureRequest, plates: list[Path], empty_plate: Path
) -> None:
    """The end-to-end checklist, for Redis + PostgreSQL and for ``labpipe serve`` on SQLite alone."""
    daemon = request.getfixturevalue(kind)()
    start_all(daemon, kind)
    inbox = daemon.inbox
    drop(plates[0], inbox / "S1" / "plate-a.tif", "a")
    drop(plates[1], inbox / "S1" / "plate-b.tif", "b")
    drop(plates[2], inbox / "S2" / "plate-a.tif", "c")  # same name as S1's, different bytes
    drop(empty_plate, inbox / "S3" / "empty.tif")
    drop(plates[3].read_bytes()[:25000], inbox / "S1" / "truncated.tif")
    drop(b"Sample sheet, not a picture\n", inbox / "notes.tif")
    for ignored in ("S1/plate-c.tif.part", ".DS_Store", "S1/~$plate.tif", "S1/plate.tmp"):
        (inbox / ignored).write_bytes(b"x" * 100)

    daemon.wait_finished(6, timeout=120)
    # the daemon keeps running: the same bytes again are one image; a new plate is processed
    drop((daemon.root / "archive" / "S1" / "plate-a.tif").read_bytes(), inbox / "S1" / "plate-a-again.tif")
    drop(plates[3], inbox / "S4" / "plate-d.tif", "d")
    daemon.wait_for(
        "the plate dropped later, and the duplicate archived",
        lambda images: (
            len(images) == 7
            and all(i.status in FINISHED for i in images)
            and (daemon.root / "archive" / "S1" / "plate-a-again.tif").is_file()
        ),
        timeout=90,
    )
    images = assert_processed_exactly_once(daemon)

    assert set(images) == {
        "S1/plate-a.tif", "S1/plate-b.tif", "S2/plate-a.tif", "S3/empty.tif",
        "S1/truncated.tif", "notes.tif", "S4/plate-d.tif",
    }  # fmt: skip
    for good in ("S1/plate-a.tif", "S1/plate-b.tif", "S2/plate-a.tif", "S4/plate-d.tif"):
        assert images[good].status == ImageStatus.DONE.value and images[good].n_specimens >= 2, good
    assert images["S1/plate-a.tif"].sample_id == "S1" and images["S2/plate-a.tif"].sample_id == "S2"
    empty = images["S3/empty.tif"]
    assert empty.status == ImageStatus.DONE.value and empty.n_specimens == 0  # done with zero, not missing
    for bad, words in (("S1/truncated.tif", "truncated"), ("notes.tif", "not a TIFF, JPEG or PNG")):
        image = images[bad]
        assert image.status == ImageStatus.QUARANTINED.value and words in image.error, image.error
        moved = daemon.root / "quarantine" / bad
        assert image.archived_path == str(moved) and moved.is_file()
        reason = (moved.parent / f"{moved.name}.reason.txt").read_text()
        assert words in reason and "ImageReadError" in reason
    archived = sorted(
        p.relative_to(daemon.root / "archive").as_posix() for p in (daemon.root / "archive").rglob("*.tif")
    )
    assert archived == [
        "S1/plate-a-again.tif", "S1/plate-a.tif", "S1/plate-b.tif", "S2/plate-a.tif", "S3/empty.tif",
        "S4/plate-d.tif",
    ]  # fmt: skip
    left = sorted(p.relative_to(inbox).as_posix() for p in inbox.rglob("*") if p.is_file())
    assert left == [".DS_Store", "S1/plate-c.tif.part", "S1/plate.tmp", "S1/~$plate.tif"]

    report = status_json(daemon)
    assert report["images"]["done"] == 5 and report["images"]["quarantined"] == 2
    assert report["queue"] is not None and report["queue"]["labpipe.images"] == 0
    assert {f["file"] for f in report["last_failures"]} == {"truncated.tif", "notes.tif"}
    assert all(f["reason"] for f in report["last_failures"])
    assert report["last_hour"]["images"] == 5

    for name in list(daemon.processes):
        assert daemon.stop(name) == 0, daemon.log_tail()


@pytest.mark.postgres
def test_hundred_plates_dropped_at_once_are_processed_exactly_once_by_two_workers(
    distributed: Callable[..., Daemon], plates: list[Path], tmp_path: Path
) -> None:
    daemon = distributed()
    start_all(daemon, "distributed", workers=2)
    staging = tmp_path / "staging"
    copies = []
    for n in range(100):
        base = plates[n % len(plates)]
        copies.append((drop(base, staging / f"S{n % 5}" / f"plate-{n:03d}.tif", f"{n}"), base))
    daemon.wait_for(
        "the watcher", lambda _: (daemon.logs / "watch.log").read_text().count("watching") > 0, 60
    )
    started = time.monotonic()
    for path, _ in copies:  # all at once: renames into the inbox
        target = daemon.inbox / path.relative_to(staging)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)
    daemon.wait_finished(100, timeout=300)
    elapsed = time.monotonic() - started
    images = assert_processed_exactly_once(daemon)

    not_done = {rel: (i.status, i.error) for rel, i in images.items() if i.status != ImageStatus.DONE.value}
    assert len(images) == 100 and not not_done, not_done
    by_base: dict[str, set[int]] = {}
    for rel, image in images.items():
        base = plates[int(Path(rel).stem.split("-")[1]) % len(plates)]
        by_base.setdefault(base.name, set()).add(image.n_specimens)
    assert all(len(counts) == 1 and min(counts) >= 2 for counts in by_base.values()), by_base
    assert not [p for p in daemon.inbox.rglob("*") if p.is_file()]
    assert len(list((daemon.root / "archive").rglob("*.tif"))) == 100
    worked = [
        (daemon.logs / f"worker-{n}.log").read_text().count("INFO labpipe.daemon.jobs processed")
        for n in (1, 2)
    ]
    assert min(worked) > 0 and sum(worked) == 100, worked
    print(f"\n100 plates of 800x800 px, 2 workers: {elapsed:.1f} s, {100 / elapsed * 3600:.0f} plates/hour")


@pytest.mark.postgres
def test_worker_killed_mid_plate_completes_the_plate_exactly_once_after_a_new_worker_starts(
    distributed: Callable[..., Daemon], tmp_path: Path
) -> None:
    big = tmp_path / "big.tif"
    write_plate(
        PlateSpec(
            width=2000, height=2000, n_specimens=16, n_touching_pairs=0, n_debris=4, um_per_px=10.0, seed=21
        ),
        big,
    )
    daemon = distributed(
        **{"queue.visibility_timeout": 10, "queue.stuck_after": 15, "queue.classify_batch": 4}
    )
    daemon.start("watch")
    daemon.start("worker", "worker-1")
    drop(big, daemon.inbox / "S1" / "big.tif")
    daemon.wait_for(
        "the worker to start on the plate",
        lambda images: bool(images) and images[0].status == ImageStatus.PROCESSING.value,
        timeout=120,
    )
    time.sleep(0.5)
    daemon.kill("worker-1")  # SIGKILL, worker and its pool process, in the middle of the plate
    (image,) = daemon.images()
    assert image.status == ImageStatus.PROCESSING.value, "the plate finished before the kill"

    daemon.start("worker", "worker-2")
    daemon.wait_finished(1, timeout=150)
    images = assert_processed_exactly_once(daemon)
    plate = images["S1/big.tif"]
    assert plate.status == ImageStatus.DONE.value and plate.n_specimens >= 12
    assert "processed" in (daemon.logs / "worker-2.log").read_text()


@pytest.mark.postgres
def test_redis_restarted_during_a_run_loses_no_image(
    distributed: Callable[..., Daemon], plates: list[Path]
) -> None:
    if not (shutil.which("redis-cli") and shutil.which("redis-server")):
        pytest.skip("redis-cli and redis-server are needed to restart Redis")
    daemon = distributed(
        **{"queue.requeue_after": 4, "queue.stuck_after": 12, "queue.visibility_timeout": 12}
    )
    start_all(daemon, "distributed", workers=1)
    try:
        for n in range(16):
            drop(plates[n % len(plates)], daemon.inbox / f"plate-{n:02d}.tif", f"r{n}")
        daemon.wait_finished(3, timeout=120)
        restart_redis()  # every queued and unacknowledged task is gone
        daemon.wait_finished(16, timeout=180)
    finally:
        if not redis_ping():
            start_redis()
    images = assert_processed_exactly_once(daemon)
    assert len(images) == 16 and all(i.status == ImageStatus.DONE.value for i in images.values())


@pytest.mark.postgres
def test_file_written_slowly_in_chunks_is_processed_once_only_after_it_is_complete(
    distributed: Callable[..., Daemon], plates: list[Path]
) -> None:
    daemon = distributed(**{"ingest.stable_seconds": 1.0, "ingest.unreadable_grace": 15.0})
    start_all(daemon, "distributed")
    daemon.wait_log("watch.log", "watching")  # the writer's pause must be seen by a running watcher
    data = plates[1].read_bytes()
    target = daemon.inbox / "S7" / "slow.tif"
    target.parent.mkdir(parents=True)
    chunks = [data[i : i + len(data) // 10 + 1] for i in range(0, len(data), len(data) // 10 + 1)]
    with target.open("wb") as fh:
        for n, chunk in enumerate(chunks):
            fh.write(chunk)
            fh.flush()
            # a pause longer than stable_seconds halfway: only the structure check can tell
            time.sleep(2.5 if n == len(chunks) // 2 else 0.4)
    complete_at = utcnow()

    (image,) = daemon.wait_finished(1, timeout=120)
    time.sleep(1.0)
    assert len(daemon.images()) == 1
    assert image.status == ImageStatus.DONE.value and image.n_specimens >= 2
    assert image.content_hash == hashlib.sha256(data).hexdigest()
    assert image.created_at >= complete_at  # registered only after the last byte
    # during the long pause the size was stable: the structure check is what kept it waiting
    assert "waiting: stable but not a complete image yet" in (daemon.logs / "watch.log").read_text()
    assert_processed_exactly_once(daemon)


@pytest.mark.postgres
@pytest.mark.parametrize("kind", ["distributed", "embedded"])
def test_daemon_stopped_and_started_again_processes_everything_once(
    kind: str, request: pytest.FixtureRequest, plates: list[Path]
) -> None:
    daemon = request.getfixturevalue(kind)()
    start_all(daemon, kind)
    for n in range(6):
        drop(plates[n % len(plates)], daemon.inbox / f"first-{n}.tif", f"f{n}")
    daemon.wait_finished(2, timeout=120)
    for name in list(daemon.processes):  # SIGTERM: work in progress finishes or goes back to the queue
        assert daemon.stop(name) == 0, daemon.log_tail()
    for n in range(4):  # dropped while the daemon is down
        drop(plates[n % len(plates)], daemon.inbox / f"later-{n}.tif", f"l{n}")

    start_all(daemon, kind)
    daemon.wait_finished(10, timeout=180)
    images = assert_processed_exactly_once(daemon)
    assert len(images) == 10 and all(i.status == ImageStatus.DONE.value for i in images.values())
    assert not [p for p in daemon.inbox.rglob("*") if p.is_file()]


# -- one answer to "which model" -----------------------------------------------------------------


def _cli(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "labpipe.cli.main", *args],
        env=daemon.env(),
        cwd=daemon.root.parent,
        capture_output=True,
        timeout=300,
        check=True,
    )


def test_after_set_default_a_running_serve_classifies_the_next_plate_with_the_new_default(
    embedded: Callable[..., Daemon], plates: list[Path], shared_data: Path, tmp_path: Path
) -> None:
    """`models set-default` reaches a running daemon; counts flag the sample that now mixes models."""
    from labpipe.classify.training import TrainOptions, train_classifier

    families = tmp_path / "families"
    for family, folder in (("Formicidae", "ants-bees/ants"), ("Carabidae", "carabidae-crops")):
        (families / family).mkdir(parents=True)
        for path in sorted((shared_data / folder).iterdir())[:10]:
            (families / family / path.name).symlink_to(path)
    options = TrainOptions(name="two-families", views=0, epochs=4, threads=1)
    trained = train_classifier(families, tmp_path / "two-families", options, progress=False)

    daemon = embedded()
    start_all(daemon, "embedded")
    drop(plates[0], daemon.inbox / "MIX" / "first.tif", "first")
    daemon.wait_finished(1, timeout=180)
    _cli(daemon, "models", "add", str(tmp_path / "two-families"))
    out = _cli(daemon, "models", "set-default", trained.version)
    assert trained.version in out.stdout.decode()
    drop(plates[1], daemon.inbox / "MIX" / "second.tif", "second")
    daemon.wait_finished(2, timeout=180)

    with daemon.session() as session:
        from labpipe.db.models import AuditEvent, Model

        versions = dict(
            session.execute(
                select(Image.file_name, Model.version)
                .join(Specimen, Specimen.image_id == Image.id)
                .join(Classification, Classification.specimen_id == Specimen.id)
                .join(Model, Model.id == Classification.model_id)
                .distinct()
            ).all()
        )
        assert versions["second.tif"] == trained.version
        assert versions["first.tif"] != trained.version
        (event,) = session.scalars(select(AuditEvent).where(AuditEvent.action == "set_default")).all()
        assert event.after == {"kind": "classifier", "version": trained.version}

    csv_text = _cli(daemon, "counts", "--sample", "MIX", "--format", "csv").stdout.decode()
    header, *rows = csv_text.splitlines()
    assert header == "sample,family,count,model_versions,mixed_models"
    assert rows and all(row.endswith(",yes") for row in rows), csv_text
    assert trained.version in rows[0] and versions["first.tif"] in rows[0]
    # reclassify with the default brings the sample back to one model
    _cli(daemon, "reclassify", "--sample", "MIX", "--json")
    csv_text = _cli(daemon, "counts", "--sample", "MIX", "--format", "csv").stdout.decode()
    assert all(row.endswith(f",{trained.version},no") for row in csv_text.splitlines()[1:]), csv_text
    for name in list(daemon.processes):
        assert daemon.stop(name) == 0, daemon.log_tail()

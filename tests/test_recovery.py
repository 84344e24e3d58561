"""Recovery after a crash (issue 13): leases, takeover at once, stage folders, retry, one serve.

The first half runs the pieces in this process on SQLite (a worker "dies" by letting its lease
lapse); the second half kills real daemons with SIGKILL, on SQLite with the embedded broker and on
PostgreSQL with Redis, and checks the plate in progress is done once, soon after the restart.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from brokers import RecordingBroker
from click.testing import CliRunner
from services import free_port
from sqlalchemy import update
from test_daemon import (  # noqa: F401 (the fixtures are used by name)
    Daemon,
    assert_processed_exactly_once,
    distributed,
    drop,
    embedded,
)

from labpipe.config import load_settings
from labpipe.db.database import open_database
from labpipe.db.models import Image, ImageStatus, utcnow
from labpipe.ingest.lifecycle import AttemptCounter, LeaseKeeper, claim_image
from labpipe.ingest.register import register_file
from labpipe.ingest.watcher import Watcher
from labpipe.synth.plate import PlateSpec, write_plate

SMALL = PlateSpec(
    width=800, height=800, n_specimens=3, n_touching_pairs=0, n_debris=2, um_per_px=20.0, seed=5
)
SLOW = PlateSpec(
    width=2000, height=2000, n_specimens=16, n_touching_pairs=0, n_debris=4, um_per_px=10.0, seed=21
)
"""A plate that keeps a worker busy for a few seconds (detection, then four classify batches)."""


def _settings(root: Path, **overrides: Any):
    base = {"storage.root": root, "classifier.threads": 1, "classifier.batch_size": 8}
    base.update(overrides)
    return load_settings(overrides=base, environ={})


@pytest.fixture(scope="module")
def plate_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("recovery-plates") / "plate.tif"
    write_plate(SMALL, path)
    return path


@pytest.fixture
def lab(tmp_path: Path):
    """Settings with the defaults that matter here (``stuck_after`` 30 minutes) and a database."""
    settings = _settings(tmp_path / "data", **{"queue.lease_seconds": 2})
    factory = open_database(settings.database_url)
    yield settings, factory
    factory.kw["bind"].dispose()


def _register(factory, path: Path, digest: str = "a" * 64, size: int = 5) -> int:
    with factory() as session:
        return register_file(session, path, digest, size, None).image_id


def _claim(factory, image_id: int, owner: str = "deadhost:1:dead", lease: float = 0) -> None:
    """A worker claims the image; with ``lease`` 0 it dies at once (its lease lapses)."""
    with factory() as session:
        assert claim_image(session, image_id, owner=owner, lease_seconds=lease, stuck_after=1800) is not None


def _image(factory, image_id: int) -> Image:
    with factory() as session:
        image = session.get(Image, image_id)
        session.expunge(image)
        return image


# -- leases and takeover ---------------------------------------------------------------------------


def test_a_plate_whose_worker_died_is_handed_over_at_once_not_after_thirty_minutes(
    lab, tmp_path: Path
) -> None:
    settings, factory = lab
    assert settings.queue.stuck_after == 1800
    image_id = _register(factory, tmp_path / "p.tif")
    _claim(factory, image_id)  # its worker is SIGKILLed: nobody renews the lease
    time.sleep(0.01)
    broker = RecordingBroker()
    watcher = Watcher(settings, factory, broker)
    watcher.sweep()  # the watcher's first sweep, at (re)start
    assert broker.calls == [(image_id, True)]
    image = _image(factory, image_id)
    assert image.status == ImageStatus.QUEUED.value and image.lease_owner is None
    watcher.sweep()  # sent once: the next worker claims a queued image as usual
    assert broker.calls == [(image_id, True)]


def test_the_heartbeat_keeps_a_live_workers_plate_and_its_death_releases_it(lab, tmp_path: Path) -> None:
    settings, factory = lab
    image_id = _register(factory, tmp_path / "p.tif")
    keeper = LeaseKeeper(factory, settings.queue.lease_seconds)  # 2 s, renewed every 0.67 s
    _claim(factory, image_id, owner=keeper.owner, lease=2)
    keeper.start()
    broker = RecordingBroker()
    watcher = Watcher(settings, factory, broker, clock=time.monotonic)
    try:
        deadline = time.monotonic() + 3.5
        while time.monotonic() < deadline:  # well past the first lease: still held
            watcher.tick()
            time.sleep(0.1)
        assert broker.calls == [] and _image(factory, image_id).lease_owner == keeper.owner
    finally:
        keeper.stop()  # the worker dies
    deadline = time.monotonic() + 4
    while not broker.calls and time.monotonic() < deadline:
        watcher.tick()  # the lease check runs every lease_seconds / 3
        time.sleep(0.1)
    assert broker.calls == [(image_id, True)]


def test_stage_folders_of_an_interrupted_attempt_are_removed_at_takeover(
    lab, plate_file: Path, tmp_path: Path
) -> None:
    from labpipe.daemon.jobs import JobContext, classify_job, detect_job

    settings, factory = lab
    settings.queue.classify_batch = 2
    inbox = settings.storage.inbox_dir
    inbox.mkdir(parents=True)
    dropped = inbox / "plate.tif"
    dropped.write_bytes(plate_file.read_bytes())
    digest = hashlib.sha256(dropped.read_bytes()).hexdigest()
    image_id = _register(factory, dropped, digest, dropped.stat().st_size)
    crops = settings.storage.crops_dir
    # a worker died in the middle of cutting crops: a stage folder without its manifest ...
    _claim(factory, image_id)
    half = crops / f".stage-{image_id:06d}-deadbeef0001"
    half.mkdir(parents=True)
    (half / "000001.png").write_bytes(b"half a crop")
    broker = RecordingBroker()
    Watcher(settings, factory, broker).sweep()
    assert broker.calls == [(image_id, True)]

    class Followups:
        def __init__(self) -> None:
            self.calls: list[tuple[int, str, int]] = []

        def classify(self, image_id: int, attempt: str, batch: int) -> None:
            self.calls.append((image_id, attempt, batch))

        def detect(self, image_id: int, **_: Any) -> None:
            raise AssertionError("no restart expected")

    ctx = JobContext.from_settings(settings)
    follow = Followups()
    try:
        assert detect_job(ctx, image_id, follow, takeover=True) == "detected"
        assert not half.exists()  # removed by the takeover, not an hour later
        (live,) = crops.glob(".stage-*")
        # ... and the taking-over worker dies too, after detection: its detections survive
        with factory() as session:
            session.execute(update(Image).values(lease_expires_at=utcnow() - dt.timedelta(seconds=1)))
            session.commit()
        ctx.lease.stop()
        broker.calls.clear()
        Watcher(settings, factory, broker).sweep()
        assert broker.calls == [(image_id, True)]
        follow.calls.clear()
        assert detect_job(ctx, image_id, follow, takeover=True) == "resumed"
        assert list(crops.glob(".stage-*")) == [live]
        outcomes = [classify_job(ctx, *call, follow) for call in follow.calls]
        assert outcomes[-1] == "done"
        assert not list(crops.glob(".stage-*"))
        assert ctx.attempts.get(image_id) == 0
    finally:
        ctx.lease.stop()
        ctx.pipeline.__exit__()


def test_a_plate_that_kills_its_worker_every_time_is_still_failed_after_max_attempts(
    lab, tmp_path: Path
) -> None:
    from labpipe.daemon.jobs import JobContext, detect_job

    settings, factory = lab
    settings.queue.max_attempts = 2
    ctx = JobContext.from_settings(settings)
    image_id = _register(factory, tmp_path / "oom.tif")
    broker = RecordingBroker()
    try:
        for _ in range(2):  # two workers claim it and die (out of memory), their leases lapse
            _claim(factory, image_id)
            ctx.attempts.bump(image_id)
            Watcher(settings, factory, broker).sweep()
        assert broker.calls == [(image_id, True)] * 2
        assert detect_job(ctx, image_id, RecordingBroker(), takeover=True) == "failed"
        assert "gave up after 2 interrupted attempts" in _image(factory, image_id).error
    finally:
        ctx.pipeline.__exit__()


# -- retry and status --------------------------------------------------------------------------------


def _cli(settings, *args: str) -> Any:
    from labpipe.cli.main import cli

    env = {"LABPIPE_STORAGE_ROOT": str(settings.storage.root), "LABPIPE_QUEUE_LEASE_SECONDS": "2"}
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def _broker_depth(settings) -> int:
    from workers.app import IMAGES_QUEUE, queue_depths

    return queue_depths(settings)[IMAGES_QUEUE]


def test_status_lists_stuck_plates_and_retry_stuck_queues_them_again(lab, tmp_path: Path) -> None:
    settings, factory = lab
    dead = _register(factory, tmp_path / "dead.tif", "1" * 64)
    held = _register(factory, tmp_path / "held.tif", "2" * 64)
    _claim(factory, dead)
    _claim(factory, held, owner="livehost:2:live", lease=600)
    AttemptCounter(settings.storage.root / "state" / "attempts").bump(dead)
    time.sleep(0.01)

    report = json.loads(_cli(settings, "status", "--json").output)
    (stuck,) = report["stuck"]
    assert stuck["image_id"] == dead and stuck["reason"] == "lease expired" and not stuck["leased"]
    assert stuck["lease_owner"] == "deadhost:1:dead"
    held_row = next(p for p in report["in_progress"] if p["image_id"] == held)
    assert held_row["lease_owner"] == "livehost:2:live" and held_row["lease_seconds_left"] > 500
    text = _cli(settings, "status").output
    assert "stuck" in text and "dead.tif" in text and "lease expired" in text

    result = _cli(settings, "retry", "--stuck")
    assert result.exit_code == 0, result.output
    assert f"#{dead}: requeued" in result.output
    assert _image(factory, dead).status == ImageStatus.QUEUED.value
    assert _image(factory, held).status == ImageStatus.PROCESSING.value  # a live worker holds it
    assert _broker_depth(settings) == 1  # the takeover task is in the (embedded) broker
    assert AttemptCounter(settings.storage.root / "state" / "attempts").get(dead) == 0
    assert json.loads(_cli(settings, "status", "--json").output)["stuck"] == []


def test_retry_refuses_a_plate_a_live_worker_holds_unless_forced(lab, tmp_path: Path) -> None:
    settings, factory = lab
    held = _register(factory, tmp_path / "held.tif")
    _claim(factory, held, owner="livehost:2:live", lease=600)
    refused = _cli(settings, "retry", str(held))
    assert refused.exit_code == 1
    assert "is being processed by livehost:2:live" in refused.output and "--force" in refused.output
    assert _image(factory, held).lease_owner == "livehost:2:live"
    forced = _cli(settings, "retry", str(held), "--force")
    assert forced.exit_code == 0, forced.output
    image = _image(factory, held)
    assert image.status == ImageStatus.QUEUED.value and image.lease_owner is None
    assert _cli(settings, "retry", "12345").exit_code == 1  # no such image
    assert _cli(settings, "retry").exit_code == 2  # an id or --stuck


def test_retry_of_a_failed_plate_never_overwrites_a_file_dropped_meanwhile(lab) -> None:
    settings, factory = lab
    inbox, quarantine = settings.storage.inbox_dir, settings.storage.quarantine_dir
    moved = quarantine / "S1" / "plate.tif"
    moved.parent.mkdir(parents=True)
    moved.write_bytes(b"the failed plate")
    with factory() as session:
        image = Image(
            source_path=str(inbox / "S1" / "plate.tif"),
            archived_path=str(moved),
            file_name="plate.tif",
            content_hash="3" * 64,
            size_bytes=16,
            status=ImageStatus.FAILED.value,
            error="internal error",
        )
        session.add(image)
        session.commit()
        image_id = image.id
    newcomer = inbox / "S1" / "plate.tif"
    newcomer.parent.mkdir(parents=True)
    newcomer.write_bytes(b"a new plate of the same name")
    result = _cli(settings, "retry", str(image_id))
    assert result.exit_code == 0, result.output
    assert newcomer.read_bytes() == b"a new plate of the same name"
    back = {p.relative_to(inbox).as_posix(): p.read_bytes() for p in inbox.rglob("*.tif")}
    assert back == {"S1/plate.tif": b"a new plate of the same name", "plate.tif": b"the failed plate"}
    assert not moved.exists()
    newcomer.unlink()  # and once more, with the same name taken at both places
    (inbox / "S1" / "plate.tif").write_bytes(b"third")
    with factory() as session:
        image = session.get(Image, image_id)
        image.status, image.archived_path = ImageStatus.FAILED.value, str(moved)
        session.commit()
    os.replace(inbox / "plate.tif", moved)
    (inbox / "plate.tif").write_bytes(b"fourth")
    assert _cli(settings, "retry", str(image_id)).exit_code == 0
    assert (inbox / "plate.tif").read_bytes() == b"fourth"
    assert (inbox / "plate-retry1.tif").read_bytes() == b"the failed plate"


def test_the_dashboard_shows_stuck_plates_with_a_retry_button_that_queues_them(lab, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from labpipe.web import create_web_app
    from labpipe.web.auth import SESSION_COOKIE, csrf_value

    settings, factory = lab
    settings.api.token = "t0ken"
    dead = _register(factory, tmp_path / "dead.tif", "4" * 64)
    held = _register(factory, tmp_path / "hung.tif", "5" * 64)
    _claim(factory, dead)
    _claim(factory, held, owner="livehost:2:live", lease=600)
    with factory() as session:  # the live worker has made no progress for an hour
        session.execute(
            update(Image).where(Image.id == held).values(updated_at=utcnow() - dt.timedelta(hours=1))
        )
        session.commit()
    client = TestClient(
        create_web_app(settings, session_factory=factory),
        base_url="http://localhost",
        client=("127.0.0.1", 50000),
        follow_redirects=False,
    )
    login = client.post("/login", data={"token": "t0ken", "name": "Tech", "next": "/"})
    csrf = csrf_value("t0ken", login.cookies[SESSION_COOKIE].split(".")[2])
    live = client.get("/?fragment=live").text
    assert 'id="stuck"' in live and "dead.tif" in live and "lease expired" in live
    assert f'action="/images/{dead}/retry"' in live and f'action="/images/{held}/retry"' in live
    assert "Force retry" in live and "held by livehost:2:live" in live

    assert client.post(f"/images/{dead}/retry", data={}).status_code == 403  # no form token
    response = client.post(f"/images/{dead}/retry", data={"csrf": csrf})
    assert response.status_code == 303 and response.headers["location"] == "/?ok=requeued"
    assert _image(factory, dead).status == ImageStatus.QUEUED.value
    assert _broker_depth(settings) == 1
    assert client.post(f"/images/{held}/retry", data={"csrf": csrf}).status_code == 409  # leased
    forced = client.post(f"/images/{held}/retry", data={"csrf": csrf, "force": "true"})
    assert forced.status_code == 303 and _image(factory, held).status == ImageStatus.QUEUED.value
    assert "queued again" in client.get("/?ok=requeued").text


# -- real daemons, killed ----------------------------------------------------------------------------


def _alive_in_group(pgid: int) -> set[int]:
    """Processes of process group ``pgid`` that are still running (zombies count as dead)."""
    alive = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.add(int(stat.parent.name))
    return alive


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2):
            return True
    except urllib.error.HTTPError:
        return True  # any HTTP answer: it listens
    except OSError:
        return False


def _wait(what: str, ready: Callable[[], bool], timeout: float, daemon: Daemon) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{daemon.log_tail()}")
        time.sleep(0.2)


@pytest.mark.slow
def test_a_second_serve_refuses_to_start_and_the_children_die_with_a_killed_serve(
    request: pytest.FixtureRequest,
) -> None:
    port = free_port()
    daemon: Daemon = request.getfixturevalue("embedded")(**{"api.port": port, "api.token": "t0ken"})
    first = daemon.start("serve")
    _wait("the API of the first serve", lambda: _answers(port), 90, daemon)
    _wait("watcher, worker and API", lambda: len(_alive_in_group(first.pid)) >= 4, 60, daemon)

    second = subprocess.run(
        [sys.executable, "-m", "labpipe.cli.main", "serve"],
        env=daemon.env(),
        cwd=daemon.root.parent,
        capture_output=True,
        timeout=60,
    )
    assert second.returncode != 0
    message = second.stderr.decode()
    assert f"another labpipe serve (pid {first.pid}) is already running on this data folder" in message
    assert str(daemon.root) in message

    children = _alive_in_group(first.pid) - {first.pid}
    os.kill(first.pid, signal.SIGKILL)  # only the supervisor, not its process group
    first.wait(timeout=30)
    daemon.processes.pop("serve")
    _wait("the children to die with their parent", lambda: not _alive_in_group(first.pid), 15, daemon)
    assert children  # watcher, worker (and its pool process) and API were running

    again = daemon.start("serve", "serve-again")  # starts cleanly: the lock and the port are free
    _wait("the API of the new serve", lambda: _answers(port), 90, daemon)
    assert again.poll() is None
    assert "address already in use" not in (daemon.logs / "serve-again.log").read_text().lower()


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.parametrize("kind", ["embedded", "distributed"])
def test_a_plate_interrupted_by_sigkill_of_the_whole_daemon_is_done_once_soon_after_restart(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    big = tmp_path / "big.tif"
    write_plate(SLOW, big)
    daemon: Daemon = request.getfixturevalue(kind)(
        **{
            "queue.lease_seconds": 6,
            "queue.stuck_after": 1800,  # the default: only the lease can bring the plate back soon
            "queue.visibility_timeout": 3600,
            "queue.classify_batch": 4,
        }
    )

    def start() -> None:
        if kind == "embedded":
            daemon.start("serve", "serve", "--no-api")
        else:
            daemon.start("watch")
            daemon.start("worker")

    start()
    drop(big, daemon.inbox / "S1" / "big.tif")
    daemon.wait_for(
        "the worker to start on the plate",
        lambda images: bool(images) and images[0].status == ImageStatus.PROCESSING.value,
        timeout=120,
    )
    time.sleep(1.0)
    for name in list(daemon.processes):
        daemon.kill(name)  # SIGKILL to every process of the daemon at once
    (image,) = daemon.images()
    assert image.status == ImageStatus.PROCESSING.value, "the plate finished before the kill"

    restarted = time.monotonic()
    start()
    (image,) = daemon.wait_finished(1, timeout=90)
    recovery = time.monotonic() - restarted
    images = assert_processed_exactly_once(daemon)
    plate = images["S1/big.tif"]
    assert plate.status == ImageStatus.DONE.value and plate.n_specimens >= 12
    assert not list((daemon.root / "crops").glob(".stage-*"))  # removed at takeover, or consumed
    logs = "".join(p.read_text() for p in daemon.logs.glob("*.log"))
    assert "lease expired: handing the image to another worker" in logs
    print(f"\n{kind}: plate done {recovery:.1f} s after the restart that followed SIGKILL of the daemon")

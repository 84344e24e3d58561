"""``labpipe serve``, ``labpipe watch``, ``labpipe worker`` and ``labpipe status``: the daemon.

Registered on the main group in :mod:`labpipe.cli.main`; settings come through ``click.pass_obj``
(the main group's context object), so this module does not import the main module.

- ``serve``: everything on one machine (watcher + workers), SQLite and the embedded broker by
  default: no Redis, no PostgreSQL.
- ``watch`` and ``worker``: the same parts as separate processes, for the distributed deployment
  (``[queue] broker_url = "redis://..."``, ``[database] url = "postgresql+psycopg://..."``); run any
  number of workers on any number of machines sharing the database and the storage root.
- ``status``: queue depth, images per state, stuck plates, last failures, throughput; ``--watch``
  refreshes.
- ``retry``: put a stuck, failed or quarantined plate back to work (:mod:`labpipe.ingest.recovery`).
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from typing import Any

import click

from labpipe.errors import LabpipeError

__all__ = ["retry", "serve", "status", "watch", "worker"]


def _fail(exc: LabpipeError | str) -> None:
    click.echo(f"error: {exc.message if isinstance(exc, LabpipeError) else exc}", err=True)
    sys.exit(2)


def _open_db(settings: Any) -> Any:
    """The session factory; SQLite is migrated automatically, a server database must be current."""
    from labpipe.db.database import open_database

    try:
        return open_database(settings.database_url)
    except LabpipeError as exc:
        _fail(exc)


def _dispose(factory: Any) -> None:
    bind = factory.kw.get("bind")
    if bind is not None:
        bind.dispose()


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


@click.command()
@click.option("--workers", type=int, help="Worker processes to start (default: [queue] serve_workers).")
@click.option(
    "--api/--no-api", "with_api", default=True, show_default=True, help="Also serve the web UI and HTTP API."
)
@click.option("--host", help="Address the web UI and API listen on (default: [api] host).")
@click.option("--port", type=int, help="Port of the web UI and API (default: [api] port).")
@click.pass_obj
def serve(obj: Any, workers: int | None, with_api: bool, host: str | None, port: int | None) -> None:
    """Run the daemon on this machine: the folder watcher and worker process(es) together.

    Drop plate images into the inbox (<data-dir>/inbox, or inbox/<sample id>/ to name the sample);
    each complete file is registered, processed by the same Celery tasks as in the distributed
    deployment, and moved to the archive (or to quarantine with a reason file). With the default
    settings everything stays on this machine: SQLite and an embedded broker file in the data
    folder, no Redis. Stop with Ctrl-C or SIGTERM: work in progress finishes or returns to the queue.
    With no [api] token set, one is generated on first start and kept in <data-dir>/state/api-token.
    One serve per data folder (a second one refuses to start); its processes die with it.
    """
    from labpipe.daemon.service import ServeLock, Supervisor
    from workers.app import describe

    obj.overrides.update({"api.host": host, "api.port": port})  # the children get them as LABPIPE_API_*
    settings = obj.settings
    lock = ServeLock(settings.storage.root)
    try:
        lock.acquire()  # held until this process ends, however it ends
    except LabpipeError as exc:
        _fail(exc)
    _dispose(_open_db(settings))  # create or check the schema once, before the children start
    settings.storage.inbox_dir.mkdir(parents=True, exist_ok=True)
    count = workers or settings.queue.serve_workers
    click.echo(
        f"labpipe serve: inbox {settings.storage.inbox_dir.absolute()}, {count} worker(s), "
        f"database {_redact(settings.database_url)}, broker {describe(settings)}"
        + (", with the API" if with_api else ""),
        err=True,
    )
    if with_api:
        from labpipe.api_token import ensure_api_token, login_message

        click.echo(login_message(settings, ensure_api_token(settings)), err=True)
    try:
        code = Supervisor(settings, workers=count, api=with_api).run()
    finally:
        lock.release()
    sys.exit(code)


@click.command()
@click.pass_obj
def watch(obj: Any) -> None:
    """Watch the inbox: register each complete file and send its task (one per deployment is enough).

    A full rescan at start picks up files dropped while the daemon was down. Files are taken only
    when their size and time have been stable for [ingest] stable_seconds and the image is
    readable to its end; temporary and hidden files are ignored. Every [queue] sweep_interval it
    also re-sends tasks a broker lost and hands images of dead workers to live ones.
    """
    from labpipe.ingest.watcher import Watcher
    from workers.app import TaskSender

    settings = obj.settings
    factory = _open_db(settings)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        Watcher(settings, factory, TaskSender(settings)).run(stop)
    except LabpipeError as exc:
        _fail(exc)
    finally:
        _dispose(factory)


@click.command()
@click.option("--concurrency", type=int, help="Processes (default: [queue] worker_concurrency).")
@click.pass_obj
def worker(obj: Any, concurrency: int | None) -> None:
    """Run a worker: processes images from the queue until stopped (SIGTERM: finish, then exit).

    Each worker process loads the models once, takes one task at a time, acknowledges it after
    its results are committed, and is replaced after [queue] max_tasks_per_child tasks or
    max_memory_per_child_mb of memory.
    """
    from workers.app import run_worker

    settings = obj.settings
    _dispose(_open_db(settings))  # fail early on an unmigrated database
    sys.exit(run_worker(settings, concurrency=concurrency, loglevel=settings.logging.level))


def _report(settings: Any, failures: int) -> dict[str, Any]:
    from labpipe.status import arriving_files, image_status
    from workers.app import describe, queue_depths

    factory = _open_db(settings)
    try:
        with factory() as session:
            report = image_status(session, failures=failures, stuck_after=settings.queue.stuck_after)
    finally:
        _dispose(factory)
    report["arriving"] = arriving_files(settings.storage.root)
    report["database"] = _redact(settings.database_url)
    report["broker"] = describe(settings)
    try:
        report["queue"] = queue_depths(settings)
        report["queue_error"] = None
    except Exception as exc:  # the broker is down: the database half is still worth showing
        report["queue"] = None
        report["queue_error"] = str(exc) or type(exc).__name__
    return report


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--watch", "live", is_flag=True, help="Refresh every --interval seconds (Ctrl-C stops).")
@click.option("--interval", type=float, default=2.0, show_default=True)
@click.option("--failures", type=int, default=10, show_default=True, help="How many recent failures.")
@click.pass_obj
def status(obj: Any, as_json: bool, live: bool, interval: float, failures: int) -> None:
    """Show queue depth, images per state, the last failures with reasons, and throughput."""
    from labpipe.status import format_status

    settings = obj.settings
    while True:
        report = _report(settings, failures)
        if as_json:
            click.echo(json.dumps(report, indent=None if live else 2))
        else:
            if live:
                click.clear()
            click.echo(format_status(report))
        if not live:
            return
        try:
            time.sleep(max(0.2, interval))
        except KeyboardInterrupt:
            return


@click.command()
@click.argument("image_id", type=int, required=False)
@click.option("--stuck", is_flag=True, help="Every stuck plate (listed by labpipe status).")
@click.option("--force", is_flag=True, help="Also take plates a live worker still holds.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def retry(obj: Any, image_id: int | None, stuck: bool, force: bool, as_json: bool) -> None:
    """Put IMAGE_ID (or, with --stuck, every stuck plate) back to work.

    A processing plate goes back to the queue as a takeover (it resumes from the detections its last
    attempt left); one a live worker still holds is refused unless --force. A failed or quarantined
    plate's file moves back into the inbox under a free name (a file dropped there meanwhile is
    never overwritten); the watcher takes it again. Exit status 1 when a plate was refused.
    """
    from labpipe.ingest.recovery import RetryRefused, broker_sender, stuck_images
    from labpipe.ingest.recovery import retry as retry_one

    if (image_id is None) == (not stuck):
        _fail("give an IMAGE_ID or --stuck (not both)")
    settings = obj.settings
    factory = _open_db(settings)
    send = broker_sender(settings)
    results: list[dict[str, Any]] = []
    try:
        with factory() as session:
            if image_id is not None:
                ids = [image_id]
            else:
                ids = [s.image_id for s in stuck_images(session, stuck_after=settings.queue.stuck_after)]
            for one in ids:
                try:
                    done = retry_one(session, one, settings, force=force, send=send)
                except RetryRefused as exc:
                    session.rollback()
                    results.append({"image_id": one, "action": "refused", "message": exc.message})
                else:
                    results.append(
                        {"image_id": one, "action": done.action, "message": done.message, "sent": done.sent}
                    )
    finally:
        _dispose(factory)
    if as_json:
        click.echo(json.dumps(results, indent=2))
    else:
        for item in results:
            stream_err = item["action"] == "refused"
            click.echo(f"#{item['image_id']}: {item['action']}: {item['message']}", err=stream_err)
        if not results:
            click.echo("no stuck plates")
    if any(item["action"] == "refused" for item in results):
        sys.exit(1)

"""The web UI in a real browser, against the real daemon: Playwright driving Debian's chromium.

``labpipe serve --api`` runs as a child process (watcher, worker and the HTTP API + web UI) on a
free port, with its own storage root and SQLite database. A technician drops a synthetic plate
into the inbox and watches it appear on the dashboard and finish; an ecologist opens the plate,
opens a specimen, corrects its family, sees the sample's counts change and downloads the CSV.
Screenshots of every page go to ``test-artifacts/screenshots/<page>.png``.

Needs chromium at ``/usr/bin/chromium`` (``apt-get install -y chromium``; Playwright never
downloads a browser here) and the ``playwright`` Python package. Where either is missing the test
is skipped with a message, and fails under ``CI=true``.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from browsers import SCREENSHOTS, chromium
from services import free_port

from labpipe.synth.plate import PlateSpec, write_plate

# one xdist worker runs this file: its `labpipe serve` and chromium are started once
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("web_browser")]

TOKEN = "browser-test-token"
SAMPLE = "LL-WEB-1"
NEW_FAMILY = "Histeridae"  # a family no model of the test names: its count can only come from review
FAST = {
    "ingest.stable_seconds": 0.5,
    "ingest.poll_interval": 0.2,
    "ingest.observer": "poll",
    "ingest.unreadable_grace": 2.0,
    "queue.poll_interval": 0.2,
    "queue.sweep_interval": 2,
    "queue.serve_workers": 1,
    "queue.worker_concurrency": 1,
    "queue.shutdown_timeout": 30,
    "classifier.threads": 1,
    "classifier.batch_size": 8,
    "api.token": TOKEN,
    "api.read_access": "localhost",
}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's chromium through Playwright (never a downloaded browser)."""
    with chromium() as launched:
        yield launched


@dataclass
class Served:
    """A running ``labpipe serve --api``."""

    url: str
    root: Path
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def inbox(self) -> Path:
        return self.root / "inbox"

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """``labpipe serve --api`` on a free port: its own storage root, SQLite, embedded broker."""
    base = tmp_path_factory.mktemp("web-serve")
    root = base / "storage"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABPIPE_")}
    env["LABPIPE_STORAGE_ROOT"] = str(root)
    env["LABPIPE_API_HOST"] = "127.0.0.1"
    env["LABPIPE_API_PORT"] = str(port)
    for dotted, value in FAST.items():
        section, key = dotted.split(".")
        env[f"LABPIPE_{section}_{key}".upper()] = str(value)
    log = base / "serve.log"
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "labpipe.cli.main", "serve", "--api"],
            cwd=base,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: cleaned up whole below
        )
    serving = Served(f"http://127.0.0.1:{port}", root, process, log)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, (
                f"labpipe serve exited ({process.returncode})\n{serving.log_tail()}"
            )
            try:
                with urllib.request.urlopen(serving.url + "/api/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"the web UI did not come up\n{serving.log_tail()}"
            time.sleep(0.5)
        yield serving
    finally:
        process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=60)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@pytest.fixture(scope="module")
def plate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1500 x 1500 synthetic plate with 8 specimens and a little debris."""
    path = tmp_path_factory.mktemp("web-plate") / "plate-web.tif"
    spec = PlateSpec(
        width=1500, height=1500, n_specimens=8, n_touching_pairs=0, n_debris=3, um_per_px=20.0, seed=21
    )
    write_plate(spec, path)
    return path


def _drop(source: Path, dest: Path) -> None:
    """Copy into the inbox as copy tools do: a hidden temporary name, then a rename."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.part")
    shutil.copyfile(source, tmp)
    os.replace(tmp, dest)


def _shot(page: Any, name: str) -> None:
    """Save a full-page screenshot once the page's pictures have arrived."""
    page.wait_for_load_state("networkidle")
    page.wait_for_function("Array.from(document.images).every(i => i.complete)")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def _register_trained_model(served: Served) -> str:
    """A trained model's directory with its evaluation reports and plots (made from synthetic
    logits, as ``labpipe train classifier`` and ``labpipe eval classifier`` write them), registered
    as the default in the daemon's database. Returns its name."""
    import json

    import numpy as np

    from labpipe.db.models import Model, ModelKind
    from labpipe.db.session import make_engine, make_session_factory
    from labpipe.evaluation.classifier import classifier_report, write_report_files

    rng = np.random.default_rng(0)
    families = ["Carabidae", "Curculionidae", "Formicidae", "Staphylinidae"]
    labels = rng.integers(0, len(families), 240)
    logits = rng.normal(0.0, 1.0, (240, len(families)))
    logits[np.arange(240), labels] += 2.2
    ood = {"debris": rng.normal(0.0, 1.0, (40, len(families)))}
    directory = served.root.parent / "models" / "families-v1"
    test = classifier_report(logits[:120], labels[:120], families, 1.4, 0.6, target=0.95, ood_logits=ood)
    write_report_files(test, directory, "families-v1\ntest split", json_name="metrics.json")
    held_out = classifier_report(logits[120:], labels[120:], families, 1.4, 0.6, ood_logits=ood)
    write_report_files(held_out, directory / "eval", "families-v1\nheld-out plates")
    (directory / "config.json").write_text(
        json.dumps({"name": "families-v1", "threshold": 0.6, "temperature": 1.4})
    )
    engine = make_engine(f"sqlite:///{served.root / 'labpipe.sqlite'}")
    with make_session_factory(engine)() as session:
        session.add(
            Model(
                name="families-v1",
                kind=ModelKind.CLASSIFIER.value,
                version="families-v1@w0123456789ab-lba9876543210",
                weights_hash="0123456789ab" * 4,
                labels_hash="ba9876543210" * 4,
                path=str(directory),
                labels=families,
                is_default=True,
                metrics=test.as_dict(),
            )
        )
        session.commit()
    engine.dispose()
    return "families-v1"


def _counts(page: Any) -> dict[str, int]:
    """The sample page's counts table: family (and ``rejected``) -> count, plus ``_total``."""
    out: dict[str, int] = {}
    for row in page.locator("#counts tbody tr[data-family]").all():
        out[row.get_attribute("data-family") or ""] = int(row.locator("td.count").inner_text())
    out["_total"] = int(page.locator("#total").inner_text())
    return out


def test_plate_dropped_in_the_inbox_is_watched_to_done_reviewed_and_its_corrected_counts_exported(
    browser: Any, served: Served, plate: Path
) -> None:
    from playwright.sync_api import expect

    context = browser.new_context(viewport={"width": 1366, "height": 900}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(30_000)
    try:
        # Log in (the token becomes an HttpOnly cookie; the name is recorded with each verdict).
        page.goto(served.url + "/login?next=/")
        _shot(page, "login")
        page.fill("input[name=name]", "T. Technician")
        page.fill("input[name=token]", TOKEN)
        page.click("#login-form button[type=submit]")
        expect(page.locator(".flash")).to_contain_text("T. Technician")
        cookies = {c["name"]: c for c in context.cookies()}
        assert cookies["labpipe_session"]["httpOnly"] and cookies["labpipe_session"]["sameSite"] == "Strict"
        assert TOKEN not in cookies["labpipe_session"]["value"]

        # Drop the plate; the dashboard (refreshing itself) shows it arrive and finish.
        _drop(plate, served.inbox / SAMPLE / plate.name)
        row = page.locator(f'#recent tr[data-file="{plate.name}"]')
        expect(row).to_have_count(1, timeout=90_000)
        _shot(page, "dashboard-arrived")
        try:
            expect(row).to_have_attribute("data-status", "done", timeout=300_000)
        except AssertionError:
            raise AssertionError(f"the plate did not finish\n{served.log_tail()}") from None
        expect(page.locator('.tile[data-status="done"] .n')).to_have_text("1")
        n_specimens = int(row.locator("td.num").inner_text())
        assert n_specimens >= 6, n_specimens  # 8 specimens on the plate; the detector finds nearly all

        # A broken file is quarantined with its reason, and can be sent round again from here.
        # While it is still being copied (growing for a few seconds) the dashboard shows it arriving.
        broken = served.inbox / "broken.tif"
        broken.write_bytes(b"II*\x00")

        def copy_slowly() -> None:
            for _ in range(40):
                with broken.open("ab") as fh:
                    fh.write(b"\x00" * 4096)
                time.sleep(0.25)

        copier = threading.Thread(target=copy_slowly)
        copier.start()
        arriving = page.locator("#arriving tr", has_text="broken.tif")
        expect(arriving).to_have_count(1, timeout=9_000)
        expect(arriving).to_contain_text("changing")
        _shot(page, "dashboard-arriving")
        copier.join()
        failure = page.locator("#failures tr", has_text="broken.tif")
        expect(failure).to_contain_text("quarantined", timeout=60_000)
        expect(failure.locator("td.reason")).not_to_be_empty()
        _shot(page, "dashboard")
        failure.get_by_role("button", name="Retry").click()
        expect(page.locator(".flash")).to_contain_text("back in the inbox")
        assert broken.is_file()  # back in the inbox; the watcher takes it again and quarantines it again
        deadline = time.monotonic() + 60
        while broken.exists():
            assert time.monotonic() < deadline, f"the retried file was not taken again\n{served.log_tail()}"
            time.sleep(0.5)
        expect(page.locator('.tile[data-status="quarantined"] .n')).to_have_text("1")

        # The plate view: one box per specimen over the plate overview; zoom with the wheel.
        row.locator("a").first.click()
        expect(page.locator("h1")).to_contain_text(plate.name)
        boxes = page.locator("svg#plate a.box-link")
        expect(boxes).to_have_count(n_specimens)
        overview = page.request.get(served.url + page.locator("svg#plate image").get_attribute("href"))
        assert overview.ok and overview.headers["content-type"] == "image/jpeg"
        page.wait_for_load_state("networkidle")
        _shot(page, "plate")
        svg = page.locator("svg#plate")
        before = svg.get_attribute("viewBox")
        box = svg.bounding_box()
        assert box is not None
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.mouse.wheel(0, -600)
        expect(svg).not_to_have_attribute("viewBox", before)
        _shot(page, "plate-zoomed")
        page.keyboard.press("0")
        expect(svg).to_have_attribute("viewBox", before)

        # Open a specimen by clicking its box.
        target = boxes.first
        specimen_id = target.get_attribute("data-specimen")
        target.locator("rect").click()
        expect(page).to_have_url(re.compile(rf"/specimens/{specimen_id}\?"))
        expect(page.locator("#crop")).to_be_visible()
        _shot(page, "specimen")

        # The sample's counts before the correction.
        sample_url = f"{served.url}/samples/{SAMPLE}"
        specimen_url = page.url
        page.goto(sample_url)
        before_counts = _counts(page)
        assert before_counts["_total"] == n_specimens and NEW_FAMILY not in before_counts
        page.goto(specimen_url)

        # Correct its family with free text (Enter in the field corrects).
        page.fill("#family", NEW_FAMILY)
        page.press("#family", "Enter")
        expect(page.locator(".flash")).to_contain_text("corrected")
        page.goto(f"{served.url}/specimens/{specimen_id}")
        expect(page.locator("#counted-family")).to_have_text(NEW_FAMILY)
        history = page.locator("#history tbody tr").first
        expect(history).to_contain_text("T. Technician")
        expect(history).to_contain_text("corrected")
        _shot(page, "specimen-corrected")

        # The sample's counts changed: the new family has one, the total has not moved.
        page.goto(sample_url)
        after_counts = _counts(page)
        assert after_counts[NEW_FAMILY] == 1
        assert after_counts["_total"] == before_counts["_total"]
        assert sum(after_counts.values()) - after_counts["_total"] == after_counts["_total"]
        _shot(page, "sample")

        # The CSV export says the same.
        with page.expect_download() as download:
            page.click("#export-csv")
        text = Path(download.value.path()).read_text(encoding="utf-8")
        rows = list(csv.DictReader(io.StringIO(text)))
        exported = {r["family"]: int(r["count"]) for r in rows if r["sample"] == SAMPLE}
        shown = {k: v for k, v in after_counts.items() if k != "_total" and (v or k == "rejected")}
        assert exported == shown
        assert download.value.suggested_filename.endswith(".csv")

        # Review queue with the keyboard: focus the first card, tick two, mark both as confirmed.
        page.goto(f"{served.url}/review?sample={SAMPLE}")
        cards = page.locator("#gallery li.card")
        waiting = cards.count()
        assert waiting == n_specimens - 1  # the corrected one is verified: out of the queue
        _shot(page, "review")
        cards.first.focus()
        page.keyboard.press("x")
        page.keyboard.press("j")
        page.keyboard.press("x")
        expect(page.locator("#selected-count")).to_have_text("2 ticked")
        page.keyboard.press("c")
        expect(page.locator(".flash")).to_contain_text("2 specimen(s) confirmed")
        expect(cards).to_have_count(waiting - 2)

        # Open the next doubtful one with Enter and call it debris with "n": it leaves every count.
        cards.first.focus()
        page.keyboard.press("Enter")
        expect(page.locator("#verify")).to_be_visible()
        page.keyboard.press("n")
        expect(page.locator(".flash")).to_contain_text("marked as not a specimen")
        page.goto(sample_url)
        assert _counts(page)["_total"] == n_specimens - 1
        expect(page.locator("#counts tfoot")).to_contain_text("1 excluded as not a specimen")

        # The other pages render, with their data.
        page.goto(f"{served.url}/specimens?sample={SAMPLE}&sort=uncertain")
        expect(page.locator("#gallery li.card")).to_have_count(n_specimens)
        _shot(page, "specimens")
        trained = _register_trained_model(served)
        page.goto(f"{served.url}/models")
        expect(page.locator("#models tbody tr")).to_have_count(
            3
        )  # built-in classifier, trained one, detector
        expect(page.locator("#models tbody")).to_contain_text("detector")
        expect(page.locator("#models tr.default")).to_contain_text(trained)
        _shot(page, "models")
        page.get_by_role("link", name=trained).click()
        expect(page.locator(".plots img")).to_have_count(4)
        _shot(page, "model")
        page.goto(f"{served.url}/samples")
        _shot(page, "samples")
        page.goto(f"{served.url}/images")
        _shot(page, "images")
    finally:
        context.close()

"""Review speed (issue 16) in a real browser: Playwright driving Debian's chromium on a laptop-sized
window (1366 x 768) against the web UI served by uvicorn in this process.

A synthetic plate (56 specimens and some debris, 20 µm/px) is cut into crops by the pipeline's own
cutter, so every crop's outline and scale bar can be checked. The dense gallery must show at least
20 whole tiles in the window, the size slider must resize them (and be remembered), bulk verify
must offer an Undo that reverts the batch, and the plate view must carry a scale bar. Screenshots go
to ``test-artifacts/screenshots/`` (``dense-gallery.png``, ``plate-scalebar.png``, ...).

Needs chromium at ``/usr/bin/chromium`` and the ``playwright`` package, as
``tests/test_web_browser.py`` (skipped where missing, a failure under ``CI=true``).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from browsers import SCREENSHOTS, chromium, serving
from records_fixtures import get_model, lab_settings, open_lab_db
from sqlalchemy import func, select

from labpipe.analysis import cut_crops
from labpipe.config import Settings
from labpipe.crops import CropWriter
from labpipe.crops.store import image_crop_dir
from labpipe.db.models import Classification, Image, ImageStatus, Sample, Specimen, Verification
from labpipe.imaging import open_image
from labpipe.synth.plate import PlateSpec, write_plate
from labpipe.web import create_web_app

# one xdist worker runs this file: its chromium and served lab are started once
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("review_speed_browser")]

TOKEN = "speed-browser-token"
LAPTOP = {"width": 1366, "height": 768}
FAMILIES = ["Carabidae", "Staphylinidae", "Curculionidae", "Formicidae", "Chrysomelidae"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as launched:
        yield launched


def _plate_lab(settings: Settings, factory: Any) -> int:
    """One processed plate of sample SPEED-1: every object cut by the pipeline's cutter and
    classified (a few rejected, one DNA-free). Returns the image id."""
    archive = settings.storage.archive_dir / "SPEED-1"
    archive.mkdir(parents=True, exist_ok=True)
    path = archive / "speed-plate.tif"
    spec = PlateSpec(
        width=3000, height=2000, n_specimens=56, n_touching_pairs=0, n_debris=6, um_per_px=20.0, seed=5
    )
    truth = write_plate(spec, path)
    with factory() as session:
        session.add(Sample(id="SPEED-1", site="Troodos", method="sifting"))
        model = get_model(session)
        image = Image(
            sample_id="SPEED-1",
            source_path=str(path),
            archived_path=str(path),
            file_name=path.name,
            content_hash=hashlib.sha256(path.read_bytes()).hexdigest(),
            size_bytes=path.stat().st_size,
            format="tiff",
            width=spec.width,
            height=spec.height,
            um_per_px=spec.um_per_px,
            status=ImageStatus.DONE,
            n_specimens=len(truth.objects),
            detector_version="classical@test",
        )
        session.add(image)
        session.flush()
        folder = settings.storage.crops_dir / image_crop_dir("SPEED-1", image.id)
        folder.mkdir(parents=True)
        boxes = [(o.bbox, 0.9) for o in truth.objects]
        with open_image(path) as plate, CropWriter() as writer:
            crops = list(cut_crops(plate, boxes, settings.crops.margin, folder, writer))
        for crop, obj in zip(crops, truth.objects, strict=True):
            n = crop.index_in_image
            x, y, w, h = crop.bbox
            specimen = Specimen(
                index_in_image=n,
                x=x,
                y=y,
                w=w,
                h=h,
                score=0.9,
                detector_version="classical@test",
                crop_path=crop.path.relative_to(settings.storage.crops_dir).as_posix(),
                crop_size=int(crop.square.shape[0]),
                length_mm=crop.length_mm,
                width_mm=crop.width_mm,
            )
            image.specimens.append(specimen)
            family = FAMILIES[n % len(FAMILIES)]
            p = round(0.35 + 0.6 * ((n * 37) % 100) / 100, 4)
            debris = obj.kind != "specimen"
            rejected = debris or p < 0.5
            reason = None
            if debris:
                reason = "not_a_specimen: gate score 0.91 > 0.50 (debris, fragment or background)"
            elif rejected:
                reason = f"low_confidence: {family} {p:.2f} < threshold 0.50"
            specimen.classifications.append(
                Classification(
                    model_id=model.id,
                    family=family,
                    probability=p,
                    rejected=rejected,
                    reason=reason,
                    top_k=[[family, p], [FAMILIES[(n + 1) % len(FAMILIES)], round((1 - p) / 2, 4)]],
                )
            )
        session.commit()
        return image.id


@dataclass
class Lab:
    url: str
    settings: Settings
    factory: Any
    image_id: int


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    root = tmp_path_factory.mktemp("speed-browser")
    settings = lab_settings(root / "data", **{"api.token": TOKEN})
    factory = open_lab_db(settings)
    image_id = _plate_lab(settings, factory)
    app = create_web_app(settings, session_factory=factory)
    try:
        with serving(app) as url:
            yield Lab(url, settings, factory, image_id)
    finally:
        factory.kw["bind"].dispose()


def _shot(page: Any, name: str, *, full_page: bool = False) -> None:
    page.wait_for_load_state("networkidle")
    page.wait_for_function("() => Array.from(document.images).every(i => i.complete)")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=full_page)


WHOLE_TILES = """() => Array.from(document.querySelectorAll('#gallery li.card')).filter(el => {
  const r = el.getBoundingClientRect();
  return r.top >= 0 && r.left >= 0 && r.bottom <= window.innerHeight && r.right <= window.innerWidth;
}).length"""


def _login(page: Any, lab: Lab, name: str) -> None:
    from playwright.sync_api import expect

    page.goto(lab.url + "/login?next=/specimens")
    page.fill("input[name=name]", name)
    page.fill("input[name=token]", TOKEN)
    page.click("#login-form button[type=submit]")
    expect(page.locator(".flash")).to_contain_text(name)


def test_dense_gallery_fits_twenty_tiles_on_a_laptop_and_the_slider_resizes_them(
    browser: Any, lab: Lab
) -> None:
    from playwright.sync_api import expect

    context = browser.new_context(viewport=LAPTOP)
    page = context.new_page()
    page.set_default_timeout(30_000)
    try:
        _login(page, lab, "D. Dense")
        page.goto(f"{lab.url}/specimens?image={lab.image_id}")
        tiles = page.locator("#gallery li.card")
        expect(tiles).to_have_count(62)
        _shot(page, "dense-gallery")
        whole = page.evaluate(WHOLE_TILES)
        assert whole >= 20, f"only {whole} whole tiles in a 1366 x 768 window"

        # every tile outlines its specimen inside the picture, and carries a scale bar and a length
        assert page.locator("#gallery .pic .outline").count() == 62
        assert page.locator("#gallery .pic .scalebar").count() == 62
        assert page.locator("#gallery .pic .len-over").count() == 62
        picture = tiles.first.locator(".pic img").bounding_box()
        outline = tiles.first.locator(".pic .outline").bounding_box()
        assert picture is not None and outline is not None
        assert (
            picture["x"] - 1 <= outline["x"]
            and outline["x"] + outline["width"] <= picture["x"] + picture["width"] + 1
        )
        assert (
            picture["y"] - 1 <= outline["y"]
            and outline["y"] + outline["height"] <= picture["y"] + picture["height"] + 1
        )

        # the slider resizes the tiles at once; the size stays in the address and in this browser
        first = tiles.first.bounding_box()
        assert first is not None and abs(first["width"] - 112) <= 1
        page.locator("#tile-size").fill("200")
        expect(page).to_have_url(re.compile(r"[?&]tile=200"))
        resized = tiles.first.bounding_box()
        assert resized is not None and abs(resized["width"] - 200) <= 1
        assert page.evaluate(WHOLE_TILES) < whole
        assert tiles.first.locator("img").get_attribute("sizes") == "200px"
        _shot(page, "dense-gallery-200")
        page.goto(f"{lab.url}/specimens?image={lab.image_id}")  # no tile= in the address: remembered
        remembered = tiles.first.bounding_box()
        assert remembered is not None and abs(remembered["width"] - 200) <= 1
        page.locator("#tile-size").fill("80")
        smaller = page.evaluate(WHOLE_TILES)
        assert smaller > whole, (smaller, whole)
    finally:
        context.close()


def test_bulk_verify_in_the_gallery_then_undo_reverts_the_whole_batch(browser: Any, lab: Lab) -> None:
    from playwright.sync_api import expect

    context = browser.new_context(viewport=LAPTOP)
    page = context.new_page()
    page.set_default_timeout(30_000)
    try:
        _login(page, lab, "U. Undo")
        page.goto(f"{lab.url}/specimens?image={lab.image_id}&sort=oldest")
        tiles = page.locator("#gallery li.card")
        ticked = [tiles.nth(i).get_attribute("data-specimen") for i in range(4)]
        for i in range(4):
            tiles.nth(i).locator("input[name=ids]").check()
        expect(page.locator("#selected-count")).to_have_text("4 ticked")
        page.locator(".bulkbar button[value=not_specimen]").click()
        expect(page.locator(".flash")).to_contain_text("Recorded: 4 specimen(s) marked as not a specimen")
        with lab.factory() as session:
            live = select(func.count()).where(Verification.retracted_at.is_(None))
            assert session.scalar(live) == 4
        expect(tiles.nth(0)).to_have_class(re.compile(r"\bis-verified\b"))
        _shot(page, "gallery-after-bulk")
        page.locator("#undo").click()
        expect(page.locator(".flash")).to_contain_text("Undone: 4 verdict(s) withdrawn")
        expect(page.locator("#undo")).to_have_count(0)
        with lab.factory() as session:
            assert session.scalar(select(func.count()).where(Verification.retracted_at.is_(None))) == 0
            retracted = session.scalars(select(Verification.specimen_id)).all()
            assert sorted(str(i) for i in retracted) == sorted(ticked)
        expect(page.locator("#gallery li.card.is-verified")).to_have_count(0)
    finally:
        context.close()


def test_plate_view_and_specimen_page_show_the_scale_and_the_outline(browser: Any, lab: Lab) -> None:
    from playwright.sync_api import expect

    context = browser.new_context(viewport=LAPTOP)
    page = context.new_page()
    page.set_default_timeout(60_000)
    try:
        page.goto(f"{lab.url}/images/{lab.image_id}")
        bar = page.locator("#plate-scalebar")
        expect(bar).to_be_visible()
        expect(bar).to_contain_text("1 cm")  # 60 mm across: a fifth is 12 mm
        expect(page.locator("svg#plate image")).to_have_count(1)
        _shot(page, "plate-scalebar")
        shown = bar.locator(".scalebar-bar").bounding_box()
        plate = page.locator("svg#plate").bounding_box()
        assert shown is not None and plate is not None
        # 10 mm of a 60 mm plate: a sixth of the drawn plate's width (the plate fits its frame)
        drawn_width = min(plate["width"], plate["height"] * 3000 / 2000)
        assert abs(shown["width"] - drawn_width / 6) <= 2

        link = page.locator("svg#plate a.box-link").first
        specimen_id = link.get_attribute("data-specimen")
        page.goto(f"{lab.url}/specimens/{specimen_id}")
        expect(page.locator("#crop-outline")).to_be_visible()
        expect(page.locator("#crop-scalebar")).to_be_visible()
        expect(page.locator("#body-length")).to_contain_text(" mm")
        _shot(page, "specimen-outline", full_page=True)
    finally:
        context.close()

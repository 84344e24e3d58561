"""Review speed (issue 16) without a browser: the dense gallery, search, the DNA disagreement filter,
undo after a verdict, rejection reasons in plain words, rounded numbers, zero-count families left
out of the sample page, and the specimen outlined and a scale bar on crops and plates."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image as PILImage
from records_fixtures import built_lab, web_login
from sqlalchemy import select

from labpipe.analysis import cut_crops
from labpipe.barcoding.agreement import barcode_agreement
from labpipe.barcoding.ids import specimen_code
from labpipe.config import Settings
from labpipe.crops import CropWriter
from labpipe.db.models import AuditEvent, BarcodeLink, Classification, Image, Specimen, Verification
from labpipe.queries.calls import latest_verifications
from labpipe.queries.listings import SpecimenFilter, code_search_ids, specimen_page
from labpipe.reports.counts import count_families
from labpipe.web import create_web_app
from labpipe.web.geometry import crop_outline, scale_bar
from labpipe.web.wording import REASON_WORDS, reason_words

TOKEN = "speed-t0ken"
LOCAL = ("127.0.0.1", 50000)
HTML = {"Accept": "text/html"}
PATTERN = "{sample}-{image:05d}-{index:03d}"


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[Settings, Any, Any]]:
    with built_lab(tmp_path / "data", TOKEN, create_web_app) as built:
        yield built


@pytest.fixture
def client(lab) -> TestClient:
    return TestClient(lab[2], base_url="http://localhost", client=LOCAL, follow_redirects=False)


def _login(client: TestClient, name: str = "R. Reviewer") -> str:
    return web_login(client, TOKEN, name)


def _specimens(session: Any, sample: str | None) -> list[Specimen]:
    query = select(Specimen).join(Image).order_by(Specimen.id)
    query = query.where(Image.sample_id == sample) if sample else query.where(Image.sample_id.is_(None))
    return list(session.scalars(query))


def _listed(page: str) -> list[int]:
    """The specimen ids of a gallery page, in order."""
    return [int(i) for i in re.findall(r'<li class="card[^"]*"[^>]*data-specimen="(\d+)"', page)]


def _barcode(
    session: Any, specimen: Specimen, well: str, dna_family: str, processid: str, bin_uri: str
) -> None:
    image = specimen.image
    code = specimen_code(image.sample_id, image.id, specimen.index_in_image, specimen.id, PATTERN)
    session.add(
        BarcodeLink(
            specimen_id=specimen.id,
            plate="P001",
            well=well,
            sampleid=code,
            processid=processid,
            bin_uri=bin_uri,
            dna_family=dna_family,
        )
    )


@pytest.fixture
def barcoded(lab) -> dict[str, Any]:
    """Four S1 specimens and one of S2 barcoded; ``labpipe barcodes agreement`` marks them."""
    _, factory, _ = lab
    with factory() as session:
        s1 = _specimens(session, "S1")
        s2 = _specimens(session, "S2")
        _barcode(session, s1[0], "A01", "Carabidae", "LLCY001-24", "BOLD:AAA1111")  # agrees
        _barcode(session, s1[1], "A02", "Staphylinidae", "LLCY002-24", "BOLD:AAB2222")  # disagrees
        _barcode(session, s1[3], "A03", "Carabidae", "LLCY003-24", "BOLD:AAC3333")  # verified Curculionidae
        _barcode(session, s1[4], "A04", "Carabidae", "LLCY004-24", "BOLD:AAD4444")  # image rejected
        _barcode(session, s2[0], "A05", "Apidae", "LLCY005-24", "BOLD:AAE5555")  # disagrees
        session.flush()
        report = barcode_agreement(session, mark=True)
        session.commit()
        return {
            "disagree": sorted(s.specimen_id for s in report.disagreements),
            "needs_review": sorted(s.specimen_id for s in report.specimens if s.needs_review),
            "ids": {"s1": [s.id for s in s1], "s2": [s.id for s in s2]},
        }


# --- search and the DNA filter -------------------------------------------------------------------


def test_search_finds_a_specimen_by_sample_id_code_process_id_bin_and_sample(lab, client, barcoded) -> None:
    s1, s2 = barcoded["ids"]["s1"], barcoded["ids"]["s2"]
    _, factory, _ = lab
    with factory() as session:
        third = session.get(Specimen, s1[2])
        code = specimen_code("S1", third.image_id, third.index_in_image, third.id, PATTERN)
    # a specimen's Sample ID (no barcode record: found from the code itself), in any case
    assert _listed(client.get(f"/specimens?q={code}", headers=HTML).text) == [s1[2]]
    assert _listed(client.get(f"/specimens?q={code.lower()}", headers=HTML).text) == [s1[2]]
    # a BOLD process ID, a BIN (or part of it)
    assert _listed(client.get("/specimens?q=LLCY002-24", headers=HTML).text) == [s1[1]]
    assert _listed(client.get("/specimens?q=bold:aae5555", headers=HTML).text) == [s2[0]]
    assert _listed(client.get("/specimens?q=AAC3333", headers=HTML).text) == [s1[3]]
    # a sample
    assert sorted(_listed(client.get("/specimens?q=S2", headers=HTML).text)) == s2
    # nothing else: a code of no specimen, LIKE wildcards taken literally
    assert _listed(client.get("/specimens?q=S1-00001-099", headers=HTML).text) == []
    assert _listed(client.get("/specimens?q=%25", headers=HTML).text) == []
    assert _listed(client.get("/specimens?q=LLCY_", headers=HTML).text) == []
    # the search box keeps the text, and the search goes along to a specimen's previous/next links
    page = client.get("/specimens?q=S2&view=cards", headers=HTML).text
    assert 'name="q" id="search" value="S2"' in page
    assert "?q=S2&amp;pos=0" in page or "?q=S2&pos=0" in page


def test_code_search_reads_any_pattern_and_only_returns_exact_matches(lab) -> None:
    _, factory, _ = lab
    with factory() as session:
        spec = _specimens(session, "S2")[1]
        for pattern in (PATTERN, "{specimen}", "LAB-{sample}/{image}.{index}", "{sample}{specimen:06d}"):
            code = specimen_code("S2", spec.image_id, spec.index_in_image, spec.id, pattern)
            assert code_search_ids(session, code, pattern) == (spec.id,), pattern
            assert code_search_ids(session, code + "9", pattern) == (), pattern
        assert code_search_ids(session, f"S1-{spec.image_id:05d}-002", PATTERN) == ()  # wrong sample
        assert code_search_ids(session, "S2-99999999999-001", PATTERN) == ()  # beyond any id


def test_disagreement_filter_lists_exactly_the_specimens_marked_by_barcodes_agreement(
    lab, client, barcoded
) -> None:
    assert barcoded["disagree"]  # the fixture has disagreements
    page = client.get("/specimens?dna=disagree&view=cards", headers=HTML).text
    assert sorted(_listed(page)) == barcoded["disagree"]
    waiting = client.get("/specimens?dna=review", headers=HTML).text
    assert sorted(_listed(waiting)) == barcoded["needs_review"]
    assert set(barcoded["needs_review"]) <= set(barcoded["disagree"])
    assert "disagrees with the image" in page
    # the filter combines with the others, and a value that is no filter is refused
    s2 = barcoded["ids"]["s2"]
    assert _listed(client.get("/specimens?dna=disagree&sample=S2", headers=HTML).text) == [s2[0]]
    assert client.get("/specimens?dna=whatever", headers=HTML).status_code == 400
    _, factory, _ = lab
    with factory() as session:
        total, rows = specimen_page(session, SpecimenFilter(dna="disagree"), limit=50)
        assert (
            total == len(barcoded["disagree"]) and sorted(r.specimen_id for r in rows) == barcoded["disagree"]
        )


# --- undo -------------------------------------------------------------------------------------------


def _state(session: Any, ids: list[int]) -> dict[int, tuple[str | None, str | None]]:
    """Each specimen's verdict that counts now: (status, family), or (None, None)."""
    latest = latest_verifications()
    found = {
        sid: (status, family)
        for sid, status, family in session.execute(
            select(latest.c.specimen_id, latest.c.status, latest.c.family).where(
                latest.c.specimen_id.in_(ids)
            )
        )
    }
    return {i: found.get(i, (None, None)) for i in ids}


def test_bulk_verify_then_undo_restores_every_verdict_count_and_review_mark(lab, client, barcoded) -> None:
    _, factory, _ = lab
    s1 = barcoded["ids"]["s1"]
    chosen = [s1[0], s1[1], s1[2], s1[3]]  # s1[3] was corrected to Curculionidae before
    with factory() as session:
        before = _state(session, chosen)
        counts_before = count_families(session, "S1")
        marked_before = set(session.scalars(select(BarcodeLink.specimen_id).where(BarcodeLink.needs_review)))
    assert s1[1] in marked_before and before[s1[3]] == ("corrected", "Curculionidae")
    csrf = _login(client)

    answer = client.post(
        "/review/bulk",
        data={
            "csrf": csrf,
            "status": "corrected",
            "bulk_family": "Formicidae",
            "ids": chosen,
            "next": "/specimens",
        },
    )
    assert answer.status_code == 303
    target = answer.headers["location"]
    assert "undo=" in target
    with factory() as session:
        assert set(_state(session, chosen).values()) == {("corrected", "Formicidae")}
        assert s1[1] not in set(
            session.scalars(select(BarcodeLink.specimen_id).where(BarcodeLink.needs_review))
        )
    page = client.get(target, headers=HTML).text
    assert "Recorded: 4 specimen(s) corrected." in page
    form = re.search(r'<form method="post" action="/review/undo".*?</form>', page, re.S)
    assert form is not None and 'id="undo"' in form.group(0)
    events = re.search(r'name="events" value="([^"]+)"', form.group(0)).group(1)
    back = html.unescape(re.search(r'name="next" value="([^"]+)"', form.group(0)).group(1))
    assert "undo=" not in back and "ok=" not in back

    undone = client.post("/review/undo", data={"csrf": csrf, "events": events, "next": back})
    assert undone.status_code == 303, undone.text
    assert "Undone: 4 verdict(s) withdrawn" in client.get(undone.headers["location"], headers=HTML).text
    with factory() as session:
        assert _state(session, chosen) == before
        assert count_families(session, "S1") == counts_before
        marked = set(session.scalars(select(BarcodeLink.specimen_id).where(BarcodeLink.needs_review)))
        assert marked == marked_before
        trail = session.scalars(select(AuditEvent).where(AuditEvent.action == "undo")).all()
        assert len(trail) == 4 and {e.actor for e in trail} == {"R. Reviewer"}
        kept = session.scalars(select(Verification).where(Verification.family == "Formicidae")).all()
        assert len(kept) == 4 and all(v.retracted_at is not None for v in kept)  # history is kept

    # the specimen's history keeps the withdrawn verdict, struck through; the earlier one counts again
    history = client.get(f"/specimens/{s1[3]}", headers=HTML).text
    withdrawn = re.search(r'<tr class="retracted">(.*?)</tr>', history)
    current = re.search(r'<tr class="current">(.*?)</tr>', history)
    assert withdrawn is not None and "Formicidae" in withdrawn.group(1)
    assert "withdrawn by R. Reviewer" in withdrawn.group(1)
    assert current is not None and "Curculionidae" in current.group(1)

    # once is enough; a click on an old Undo changes nothing
    again = client.post("/review/undo", data={"csrf": csrf, "events": events, "next": back})
    assert again.status_code == 409
    with factory() as session:
        assert _state(session, chosen) == before


def test_bulk_confirm_and_a_single_verdict_offer_undo_too(lab, client, barcoded) -> None:
    _, factory, _ = lab
    s2 = barcoded["ids"]["s2"]
    csrf = _login(client)
    answer = client.post(
        "/review/bulk", data={"csrf": csrf, "status": "confirmed", "ids": s2, "next": "/review"}
    )
    events = re.search(r"undo=([0-9,\-]+)", answer.headers["location"]).group(1)
    with factory() as session:
        assert {s for s, _ in _state(session, s2).values()} == {"confirmed"}
    client.post("/review/undo", data={"csrf": csrf, "events": events, "next": "/review"})
    with factory() as session:
        assert set(_state(session, s2).values()) == {(None, None)}

    one = client.post(
        f"/specimens/{s2[0]}/verify", data={"csrf": csrf, "status": "not_specimen", "next": "/review"}
    )
    events = re.search(r"undo=([0-9,\-]+)", one.headers["location"]).group(1)
    assert client.post("/review/undo", data={"csrf": csrf, "events": events}).status_code == 303
    with factory() as session:
        assert _state(session, [s2[0]])[s2[0]] == (None, None)


def test_undo_is_refused_for_someone_elses_verdicts_without_the_form_token_and_for_junk(
    lab, client, barcoded
) -> None:
    _, factory, _ = lab
    s2 = barcoded["ids"]["s2"]
    csrf = _login(client, "A. First")
    answer = client.post(
        "/review/bulk", data={"csrf": csrf, "status": "not_specimen", "ids": s2[:2], "next": "/review"}
    )
    events = re.search(r"undo=([0-9,\-]+)", answer.headers["location"]).group(1)
    assert client.post("/review/undo", data={"events": events}).status_code == 403  # no form token
    other = _login(client, "B. Second")
    refused = client.post("/review/undo", data={"csrf": other, "events": events})
    assert refused.status_code == 409 and "undo your own" in refused.text
    assert client.post("/review/undo", data={"csrf": other, "events": "1-99999"}).status_code == 400
    assert client.post("/review/undo", data={"csrf": other, "events": "drop table"}).status_code == 400
    with factory() as session:
        assert {s for s, _ in _state(session, s2[:2]).values()} == {"not_specimen"}
        # a box edit is not a verdict: not undone from here
        box = AuditEvent(
            actor="B. Second", action="box_edit", specimen_id=s2[0], before={"box": [1, 1, 2, 2]}
        )
        session.add(box)
        session.commit()
        box_id = box.id
    assert client.post("/review/undo", data={"csrf": other, "events": str(box_id)}).status_code == 409


def test_the_undo_button_shows_only_to_a_writer_after_a_verdict(client) -> None:
    assert 'id="undo"' not in client.get("/specimens?ok=verified&n=2&undo=3-4", headers=HTML).text
    _login(client)
    assert 'id="undo"' in client.get("/specimens?ok=verified&n=2&undo=3-4", headers=HTML).text
    assert 'id="undo"' not in client.get("/specimens?ok=verified&n=2&undo=3;4", headers=HTML).text
    assert 'id="undo"' not in client.get("/specimens?ok=layout&n=2&undo=3-4", headers=HTML).text


# --- dense gallery ------------------------------------------------------------------------------------


def test_the_gallery_is_dense_by_default_with_an_adjustable_tile_size(client) -> None:
    page = client.get("/specimens", headers=HTML).text
    assert 'class="gallery dense"' in page and "--tile: 112px" in page
    assert len(re.findall(r'<li class="card tile', page)) == 12  # every specimen of the lab
    assert 'id="tile-size"' in page and 'sizes="112px"' in page
    assert "--tile: 200px" in client.get("/specimens?tile=200", headers=HTML).text
    assert "--tile: 320px" in client.get("/specimens?tile=9999", headers=HTML).text  # clipped
    assert "--tile: 64px" in client.get("/specimens?tile=1", headers=HTML).text
    cards = client.get("/specimens?view=cards", headers=HTML).text
    assert 'class="gallery cards"' in cards and 'id="tile-size"' not in cards
    review = client.get("/review", headers=HTML).text
    assert 'class="gallery cards review"' in review  # the queue keeps its verdict buttons
    assert 'class="gallery dense review"' in client.get("/review?view=dense", headers=HTML).text


# --- words and numbers --------------------------------------------------------------------------------


def test_rejection_reasons_are_plain_words_with_the_stored_reason_on_hover(lab, client) -> None:
    _, factory, _ = lab
    with factory() as session:
        rejected = _specimens(session, "S1")[4]  # not_arthropod: top class 'dishrag'
    page = client.get(f"/specimens/{rejected.id}", headers=HTML).text
    reason = re.search(r'<dd class="reason" id="reason" title="([^"]*)">([^<]*)</dd>', page)
    assert reason is not None
    assert html.unescape(reason.group(1)).startswith("not_arthropod: top class 'dishrag'")
    assert reason.group(2) == "Does not look like an insect or other arthropod (it looks most like: dishrag)"
    assert "not_arthropod" not in reason.group(2)
    cards = client.get("/specimens?sample=S1&state=rejected&view=cards", headers=HTML).text
    assert "Not sure enough of the family (0.45, needs 0.50)" in cards
    assert 'title="low_confidence: Carabidae 0.45 &lt; threshold 0.50"' in cards
    for code, words in REASON_WORDS.items():  # every stored code has its words
        assert reason_words(f"{code}: detail") == words or reason_words(f"{code}: detail").startswith(words)
        assert "_" not in words


def test_probabilities_and_thresholds_are_rounded_on_every_page(lab, client) -> None:
    settings, factory, _ = lab
    raw = 0.9944020755300735
    with factory() as session:
        spec = _specimens(session, "S2")[0]
        call = session.scalar(select(Classification).where(Classification.specimen_id == spec.id))
        call.probability = raw
        call.top_k = [["Formicidae", raw], ["Apidae", 0.0033417245]]
        image_id, model_dir = spec.image_id, settings.storage.root / "model-x"
        model = call.model
        model_dir.mkdir()
        (model_dir / "config.json").write_text('{"threshold": 0.6123456789, "temperature": 1.4142135623}')
        model.path = str(model_dir)
        session.commit()
        model_id = model.id
    for url in (
        f"/specimens/{spec.id}",
        "/specimens?sample=S2",
        "/specimens?sample=S2&view=cards",
        "/review?sample=S2",
        f"/images/{image_id}",
        f"/models/{model_id}",
    ):
        page = client.get(url, headers=HTML).text
        shown = re.sub(r'(?:title|x|y|width|height|transform|viewBox|style)="[^"]*"', "", page)
        assert not re.search(r"\d\.\d{4,}", shown), (url, re.findall(r".{40}\d\.\d{4,}.{10}", shown))
    assert "0.99" in client.get(f"/specimens/{spec.id}", headers=HTML).text
    model_page = client.get(f"/models/{model_id}", headers=HTML).text
    assert ">0.61</dd>" in model_page and ">1.41</dd>" in model_page


def test_the_sample_page_leaves_out_families_with_no_counted_specimen(client) -> None:
    page = client.get("/samples/S1", headers=HTML).text
    # S1 counts Carabidae, Curculionidae and Formicidae; Staphylinidae only has an expected count
    rows = re.findall(r'<tr data-family="([^"]+)">', page)
    assert rows == ["Carabidae", "Curculionidae", "Formicidae"]
    counts = [int(n) for n in re.findall(r'<td class="num count">(\d+)</td>', page)]
    assert all(counts[:3])
    assert "Staphylinidae" not in page
    assert "1 family with no counted specimen" in page
    listed = client.get("/samples/S1?zeros=1", headers=HTML).text
    assert '<tr data-family="Staphylinidae">' in listed


# --- outline, scale bar, body length ------------------------------------------------------------------


class _Plate:
    """A plate in memory with what :func:`labpipe.analysis.cut_crops` reads."""

    def __init__(self, pixels: np.ndarray, um_per_px: float) -> None:
        self.pixels = pixels
        self.height, self.width = pixels.shape[:2]
        self.um_per_px = um_per_px

    def read_region(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        return self.pixels[y : y + h, x : x + w]


@pytest.mark.parametrize("box", [(300, 200, 80, 40), (5, 10, 60, 90), (540, 350, 55, 45), (10, 20, 580, 300)])
def test_the_outline_lies_exactly_on_the_specimen_in_the_crop_the_pipeline_cuts(
    tmp_path: Path, box: tuple[int, int, int, int]
) -> None:
    """Boxes in the middle, by the edges (the margin clipped on one side), and nearly the whole plate."""
    pixels = np.full((400, 600, 3), 200, np.uint8)
    x, y, w, h = box
    pixels[y : y + h, x : x + w] = (255, 0, 0)
    plate = _Plate(pixels, 10.0)
    with CropWriter() as writer:
        (crop,) = list(cut_crops(plate, [(box, 0.9)], 0.4, tmp_path, writer))  # type: ignore[arg-type]
    side = crop.square.shape[0]
    outline = crop_outline(box, side, (600, 400), 0.4)
    assert outline is not None
    red = np.argwhere((crop.square == (255, 0, 0)).all(axis=2))
    (top, left), (bottom, right) = red.min(axis=0), red.max(axis=0) + 1
    assert outline.left == pytest.approx(100 * left / side, abs=1e-3)
    assert outline.top == pytest.approx(100 * top / side, abs=1e-3)
    assert outline.width == pytest.approx(100 * (right - left) / side, abs=1e-3)
    assert outline.height == pytest.approx(100 * (bottom - top) / side, abs=1e-3)
    assert crop_outline(box, side + 1, (600, 400), 0.4) is None  # cut some other way: not drawn


def test_scale_bars_are_round_lengths_that_fit() -> None:
    bar = scale_bar(20.0, 1500)  # 30 mm across: 5 mm
    assert bar is not None and (bar.mm, bar.px, bar.label) == (5.0, 250.0, "5 mm")
    assert scale_bar(5.0, 1400, 0.3).label == "2 mm"  # a 7 mm crop
    assert scale_bar(10.0, 6000, 0.2).label == "1 cm"
    assert scale_bar(None, 1500) is None and scale_bar(0.0, 1500) is None


def test_scale_bar_outline_and_body_length_where_the_scale_is_known_and_not_otherwise(lab, client) -> None:
    _, factory, _ = lab
    with factory() as session:
        spec = _specimens(session, "S1")[0]  # box (100, 200, 80, 120) on a 3000 px plate at 10 µm/px
        spec.crop_size = 216  # as cut with a 0.4 margin: 176 x 216, padded to 216
        session.commit()
        spec_id, image_id = spec.id, spec.image_id
        other = _specimens(session, "S2")[0]
        other_id, other_image = other.id, other.image_id
    plate = client.get(f"/images/{image_id}", headers=HTML).text
    assert 'id="plate-scalebar"' in plate and ">5 mm</text>" in plate  # 30 mm across
    assert '<rect x="0" y="0" width="500.0"' in plate  # 5 mm at 100 px per mm
    assert "10.00 µm/px (100 px per mm)" in plate
    specimen = client.get(f"/specimens/{spec_id}", headers=HTML).text
    assert 'id="crop-outline" style="left:31.481%;top:22.222%;width:37.037%;height:55.556%"' in specimen
    assert 'id="crop-scalebar" style="width: 23.148%"' in specimen and "<span>0.5 mm</span>" in specimen
    assert 'id="body-length">3.0 mm' in specimen
    gallery = client.get("/specimens?sample=S1", headers=HTML).text
    assert (
        'class="outline" style="left:31.481%' in gallery
        and 'class="len-over" title="body length">3.0 mm' in gallery
    )
    assert gallery.count('class="scalebar"') == 8  # every S1 crop: the plate's scale is known

    with factory() as session:
        session.get(Image, other_image).um_per_px = None
        session.get(Specimen, other_id).length_mm = None
        session.commit()
    plate = client.get(f"/images/{other_image}", headers=HTML).text
    assert 'id="plate-scalebar"' not in plate and "scale unknown" in plate
    specimen = client.get(f"/specimens/{other_id}", headers=HTML).text
    assert 'id="crop-scalebar"' not in specimen and "scale unknown" in specimen
    assert 'id="crop-outline"' not in specimen  # its crop (48 px) was not cut from this box
    assert "unknown (the plate's scale is not known)" in specimen
    gallery = client.get("/specimens?sample=S2", headers=HTML).text
    assert 'class="scalebar"' not in gallery


def test_the_stored_crop_is_served_unchanged(lab, client) -> None:
    settings, factory, _ = lab
    with factory() as session:
        spec = _specimens(session, "S1")[0]
        spec.crop_size = 216
        session.commit()
        path = settings.storage.crops_dir / spec.crop_path
    served = client.get(f"/specimens/{spec.id}/crop.png")
    assert served.status_code == 200 and served.content == path.read_bytes()
    with PILImage.open(path) as crop:
        assert crop.size == (48, 48)

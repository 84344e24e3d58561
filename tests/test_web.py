"""The web UI without a browser: every page renders from the database, reviews are recorded with who
and when and change the counts, writes need the token (cookie + form token, or Bearer), no page
serves a file from outside the storage folders, and pages show the right numbers with thousands of
specimens (their speed with 100 000: benchmarks/web_pages.py)."""

from __future__ import annotations

import csv
import datetime as dt
import html
import io
import re
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from PIL import Image as PILImage
from records_fixtures import (
    MODEL,
    build_lab,
    built_lab,
    bulk_lab,
    get_model,
    lab_settings,
    open_lab_db,
    web_login,
)
from sqlalchemy import func, select
from sqlalchemy import text as sa_text

from labpipe.cli.main import cli
from labpipe.config import Settings
from labpipe.db.models import (
    Classification,
    Image,
    ImageStatus,
    Model,
    Sample,
    Specimen,
    Verification,
)
from labpipe.queries.calls import load_calls
from labpipe.queries.listings import SpecimenFilter, neighbours, specimen_page
from labpipe.queries.rule import resolve
from labpipe.reports.counts import count_families, counts_to_csv
from labpipe.review import ReviewError, export_training_folder, record_verification, record_verifications
from labpipe.web import create_web_app
from labpipe.web.auth import SESSION_COOKIE, csrf_value, safe_next
from labpipe.web.charts import count_chart, plate_extent, share_width, ticks
from labpipe.web.progress import plate_progress
from labpipe.web.render import PALETTE, family_colour, family_colours

TOKEN = "web-t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LOCAL = ("127.0.0.1", 50000)
REMOTE = ("192.0.2.10", 50000)
HTML = {"Accept": "text/html"}


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[Settings, Any, Any]]:
    with built_lab(tmp_path / "data", TOKEN, create_web_app) as built:
        yield built


@pytest.fixture
def local(lab) -> TestClient:
    return TestClient(lab[2], base_url="http://localhost", client=LOCAL, follow_redirects=False)


def _login(client: TestClient, name: str = "R. Reviewer") -> str:
    return web_login(client, TOKEN, name)


def _ids(session: Any, sample: str | None = "S1") -> list[int]:
    query = select(Specimen.id).join(Image).order_by(Specimen.id)
    query = query.where(Image.sample_id == sample) if sample else query.where(Image.sample_id.is_(None))
    return list(session.scalars(query))


def _sample_counts(session: Any, sample: str) -> dict[str, Any]:
    (row,) = count_families(session, sample)
    return row


# --- pages --------------------------------------------------------------------------------------------


def test_every_page_renders_for_a_reader_on_this_machine(lab, local: TestClient) -> None:
    _, factory, _ = lab
    with factory() as session:
        specimen = _ids(session)[0]
        model = session.scalar(select(Model.id))
    pages = [
        "/",
        "/?fragment=live",
        "/images",
        "/images?status=done&sample=S1",
        "/images/1",
        "/specimens",
        "/specimens?sample=S1&state=rejected&sort=confident&p_min=0.1&p_max=0.9",
        f"/specimens?model={MODEL}",
        "/review",
        f"/specimens/{specimen}",
        f"/specimens/{specimen}?sample=S1&pos=0&from=review",
        "/samples",
        "/samples/S1",
        "/samples/S1?threshold=0.4",
        "/models",
        f"/models/{model}",
        "/login",
    ]
    for url in pages:
        response = local.get(url, headers=HTML)
        assert response.status_code == 200, (url, response.text[:500])
        assert response.headers["content-type"].startswith("text/html")
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    sample = local.get("/samples/S1").text
    assert "Troodos" in sample and "pine litter" in sample
    assert re.search(r'data-family="Curculionidae">.*?<td class="num count">2</td>', sample, re.S)
    assert 'id="total">7<' in sample  # S1: 8 boxes, one verified as not a specimen


def test_unknown_objects_answer_404_as_a_page_and_the_api_keeps_json_errors(local: TestClient) -> None:
    for url in ["/images/999", "/specimens/999", "/samples/NOPE", "/models/999", "/no/such/page"]:
        response = local.get(url, headers=HTML)
        assert response.status_code == 404 and response.headers["content-type"].startswith("text/html")
    api = local.get("/api/samples/NOPE", headers=HTML)
    assert api.status_code == 404 and api.json()["detail"]
    assert local.get("/specimens?p_min=2", headers=HTML).status_code == 400
    assert local.get("/specimens?sort=random", headers=HTML).status_code == 400


def test_the_plate_view_draws_every_box_coloured_by_family_and_marks_rejected_ones(lab, local) -> None:
    _, factory, _ = lab
    with factory() as session:
        ids = _ids(session)
        calls = {c.specimen_id: resolve(c) for c in load_calls(session, specimen_ids=ids)}
    page = local.get("/images/1").text
    boxes = re.findall(r'<a href="/specimens/(\d+)\?[^"]*" class="box-link box-(\w+)"', page)
    shown = [i for i in ids if calls[i].outcome.value != "excluded"]  # not a specimen: not drawn
    assert len(shown) < len(ids) and [int(i) for i, _ in boxes] == shown
    assert {int(i): o for i, o in boxes} == {i: calls[i].outcome.value for i in shown}
    colours = family_colours(["Curculionidae", "Carabidae", "Formicidae"])
    assert f"stroke: {colours['Curculionidae']}" in page and 'class="box rejected' in page
    assert 'viewBox="0 0 3000 3000"' in page
    assert "Curculionidae</a>" in page  # legend


def test_the_count_chart_scales_bars_and_whiskers_to_the_largest_value() -> None:
    families = {"Carabidae": 10, "Formicidae": 5}
    expected = {
        "Carabidae": {"mean": 9.5, "low": 8, "high": 12},
        "Formicidae": {"mean": 5.0, "low": 5, "high": 5},
        "Staphylinidae": {"mean": 0.6, "low": 0, "high": 2},
        "Apidae": {"mean": 0.2, "low": 0, "high": 1},
    }
    chart = count_chart(families, expected, 3, {"Carabidae": "#111111"}, width=450)
    labels = [b.label for b in chart.bars]
    assert labels == ["Carabidae", "Formicidae", "Staphylinidae", "rejected"]  # Apidae: expected < 0.5
    scale = (450 - 150 - 60) / 12  # the widest thing drawn is Carabidae's whisker (high 12)
    carabidae, formicidae, staphylinidae, rejected = chart.bars
    assert carabidae.bar_w == 10 * scale and carabidae.whisker is not None
    assert carabidae.whisker.x_high == 150 + 12 * scale == 390.0 and carabidae.count_x == 396.0
    assert formicidae.count_x == 150 + 5 * scale + 6  # a whisker no longer than the bar
    assert staphylinidae.bar_w == 0 and staphylinidae.count_x == 150 + 2 * scale + 6
    assert rejected.whisker is None and rejected.colour == "#9a9a9a"
    assert carabidae.colour == "#111111" and formicidae.colour == family_colour("Formicidae")
    assert [b.y for b in chart.bars] == [0, 28, 56, 84] and chart.height == 4 * 28 + 24
    assert [t.value for t in chart.ticks] == [0, 2, 4, 6, 8, 10, 12]
    assert chart.ticks[-1].x == 390.0 and chart.ticks[0].y2 == chart.height - 20


def test_an_empty_sample_still_gets_an_axis_and_a_rejected_bar() -> None:
    chart = count_chart({}, {}, 0, {})
    assert [b.label for b in chart.bars] == ["rejected"] and chart.bars[0].bar_w == 0
    assert [t.value for t in chart.ticks] == [0, 1]
    assert ticks(230) == [0, 50, 100, 150, 200] and ticks(7) == [0, 2, 4, 6]


def test_plates_and_probability_bars_have_their_geometry() -> None:
    assert plate_extent(None, None, [(10, 20, 30, 40), (100, 0, 5, 5)]) == (105, 60)
    assert plate_extent(4000, None, []) == (4000, 1000)
    assert [share_width(p) for p in (0.0, 0.12345, 1.0)] == [0.0, 12.3, 100.0]


def test_family_colours_on_one_page_are_all_different() -> None:
    families = [f"Family{i}" for i in range(len(PALETTE))]
    assert len(set(family_colours(families).values())) == len(PALETTE)


def test_the_dashboard_shows_states_failures_with_reasons_and_progress(lab, local: TestClient) -> None:
    settings, factory, _ = lab
    with factory() as session:
        session.add_all(
            [
                Image(
                    source_path="/inbox/bad.tif",
                    archived_path=str(settings.storage.quarantine_dir / "bad.tif"),
                    file_name="bad.tif",
                    content_hash="b" * 64,
                    size_bytes=10,
                    status=ImageStatus.QUARANTINED.value,
                    error="not a TIFF, JPEG or PNG image",
                ),
                Image(
                    source_path="/inbox/busy.tif",
                    file_name="busy.tif",
                    content_hash="c" * 64,
                    size_bytes=10,
                    status=ImageStatus.PROCESSING.value,
                ),
            ]
        )
        session.commit()
        busy = session.scalar(select(Image.id).where(Image.file_name == "busy.tif"))
    stage = settings.storage.crops_dir / f".stage-{busy:06d}-abc"
    stage.mkdir(parents=True)
    (stage / "manifest.json").write_text('{"specimens": [{}, {}, {}], "per_batch": 2}')
    (stage / "classified-00000.json").write_text("[]")
    _login(local)
    live = local.get("/?fragment=live").text
    assert "not a TIFF, JPEG or PNG image" in live and "bad.tif" in live
    assert "classifying 3 specimens: 1/2 batches" in live
    assert re.search(r'data-status="quarantined">\s*<span class="n">1<', live)
    assert f'action="/images/{busy - 1}/retry"' in live  # the quarantined file can be retried
    assert plate_progress(settings.storage.crops_dir, busy) == {
        "stage": "classifying",
        "specimens": 3,
        "batches": 2,
        "batches_done": 1,
    }
    assert plate_progress(settings.storage.crops_dir, 12345) is None
    quarantined = local.get(f"/images/{busy - 1}").text  # a plate never read: no boxes, its reason
    assert "not a TIFF, JPEG or PNG image" in quarantined and "No overview" in quarantined


# --- access -------------------------------------------------------------------------------------------


def test_readers_elsewhere_are_sent_to_the_login_page_and_files_answer_401(lab) -> None:
    remote = TestClient(lab[2], base_url="http://localhost", client=REMOTE, follow_redirects=False)
    response = remote.get("/specimens?family=Carabidae")
    assert response.status_code == 303
    assert response.headers["location"] == "/login?next=%2Fspecimens%3Ffamily%3DCarabidae"
    assert remote.get("/specimens/1/thumb/160.jpg").status_code == 401
    assert remote.get("/exports/counts.csv").status_code == 401
    assert remote.get("/login").status_code == 200
    assert remote.get("/specimens", headers=AUTH).status_code == 200  # a script with the token
    _login(remote)
    assert remote.get("/specimens").status_code == 200


def test_read_access_anyone_and_token_are_honoured(tmp_path: Path) -> None:
    for mode, local_ok, remote_ok in [("anyone", True, True), ("token", False, False)]:
        settings = lab_settings(tmp_path / mode, **{"api.token": TOKEN, "api.read_access": mode})
        factory = open_lab_db(settings)
        app = create_web_app(settings, session_factory=factory)
        for client, ok in [(LOCAL, local_ok), (REMOTE, remote_ok)]:
            status = (
                TestClient(app, base_url="http://localhost", client=client, follow_redirects=False)
                .get("/")
                .status_code
            )
            assert status == (200 if ok else 303), (mode, client)
        factory.kw["bind"].dispose()


def test_login_sets_an_httponly_same_site_cookie_that_is_not_the_token(local: TestClient) -> None:
    wrong = local.post("/login", data={"token": "nope", "name": "X", "next": "/"})
    assert wrong.status_code == 401 and SESSION_COOKIE not in wrong.cookies
    nameless = local.post("/login", data={"token": TOKEN, "name": "  ", "next": "/"})
    assert nameless.status_code == 401
    ok = local.post("/login", data={"token": TOKEN, "name": "A. Person", "next": "//evil.example/"})
    assert ok.status_code == 303 and ok.headers["location"].startswith("/?ok=login")
    header = ", ".join(ok.headers.get_list("set-cookie"))
    assert "HttpOnly" in header and "SameSite=strict" in header.replace("Strict", "strict")
    cookie = ok.cookies[SESSION_COOKIE]
    assert (
        cookie.startswith("v2.") and TOKEN not in cookie and TOKEN not in header and "Max-Age=43200" in header
    )
    assert "A. Person" in local.get("/").text
    out = local.post("/logout", data={"csrf": csrf_value(TOKEN, cookie.split(".")[2])})
    assert out.status_code == 303 and "Log in to review" in local.get("/").text


def test_writes_need_the_login_the_form_token_and_this_site(lab, local: TestClient) -> None:
    _, factory, _ = lab
    with factory() as session:
        specimen = _ids(session)[0]
    url = f"/specimens/{specimen}/verify"
    form = {"status": "confirmed", "next": "/"}
    assert local.post(url, data=form).status_code == 401  # not logged in
    csrf = _login(local)
    assert local.post(url, data=form).status_code == 403  # no form token
    assert local.post(url, data={**form, "csrf": "forged"}).status_code == 403
    foreign = local.post(url, data={**form, "csrf": csrf}, headers={"Origin": "https://evil.example"})
    assert foreign.status_code == 403
    with factory() as session:
        assert session.scalar(select(func.count(Verification.id))) == 4  # the lab's own: nothing new
    assert (
        local.post(url, data={**form, "csrf": csrf}, headers={"Origin": "http://localhost"}).status_code
        == 303
    )
    script = TestClient(lab[2], base_url="http://localhost", client=REMOTE, follow_redirects=False)
    assert script.post(url, data=form, headers={**AUTH, "X-Labpipe-User": "pipeline-bot"}).status_code == 303
    with factory() as session:
        people = session.scalars(
            select(Verification.verified_by).where(Verification.specimen_id == specimen)
        ).all()
    assert sorted(people) == ["R. Reviewer", "pipeline-bot"]


def test_without_a_token_the_ui_is_read_only(tmp_path: Path) -> None:
    settings = lab_settings(tmp_path / "ro")
    factory = open_lab_db(settings)
    with factory() as session:
        build_lab(session, settings)
    client = TestClient(
        create_web_app(settings, session_factory=factory), base_url="http://localhost", client=LOCAL
    )
    assert "read-only" in client.get("/").text
    assert client.post("/specimens/1/verify", data={"status": "confirmed"}).status_code == 403
    assert client.post("/login", data={"token": "x", "name": "y"}).status_code == 401
    factory.kw["bind"].dispose()


def test_safe_next_never_leaves_the_site() -> None:
    assert safe_next("/samples/S1?x=1") == "/samples/S1?x=1"
    for bad in [
        "https://evil.example/",
        "//evil.example",
        "/\\evil.example",
        "",
        None,
        "javascript:alert(1)",
    ]:
        assert safe_next(bad) == "/"


# --- review -------------------------------------------------------------------------------------------


def test_a_correction_is_recorded_with_who_and_when_and_wins_in_the_counts(lab, local: TestClient) -> None:
    _, factory, _ = lab
    with factory() as session:
        first = _ids(session)[0]  # S1 #1: Carabidae 0.93, accepted
        before = _sample_counts(session, "S1")
    csrf = _login(local, "E. Cologist")
    response = local.post(
        f"/specimens/{first}/verify",
        data={"csrf": csrf, "status": "corrected", "family": "  Histeridae ", "note": "elytra truncate"},
    )
    assert response.status_code == 303 and "ok=verified" in response.headers["location"]
    with factory() as session:
        after = _sample_counts(session, "S1")
        row = session.scalar(select(Verification).where(Verification.specimen_id == first))
    assert (row.status, row.family, row.verified_by, row.note) == (
        "corrected",
        "Histeridae",
        "E. Cologist",
        "elytra truncate",
    )
    assert abs((dt.datetime.now(dt.UTC) - row.verified_at).total_seconds()) < 60
    assert after["families"]["Histeridae"] == 1
    assert after["families"]["Carabidae"] == before["families"]["Carabidae"] - 1
    assert after["specimens"] == before["specimens"]
    page = local.get("/samples/S1").text
    assert re.search(r'data-family="Histeridae">.*?<td class="num count">1</td>', page, re.S)
    specimen_page_html = local.get(f"/specimens/{first}").text
    assert "E. Cologist" in specimen_page_html and 'id="counted-family">Histeridae<' in specimen_page_html
    csv_text = local.get("/exports/counts.csv", params={"sample": "S1"}).text
    assert any(line.startswith("S1,Histeridae,1,") for line in csv_text.splitlines())


def test_top_k_buttons_confirm_or_correct_and_a_correction_needs_a_family(lab, local: TestClient) -> None:
    _, factory, _ = lab
    with factory() as session:
        ids = _ids(session)
    csrf = _login(local)
    # S1 #3: best Carabidae 0.45 (rejected), second Staphylinidae
    local.post(f"/specimens/{ids[2]}/verify", data={"csrf": csrf, "pick": "Carabidae"})
    local.post(f"/specimens/{ids[1]}/verify", data={"csrf": csrf, "pick": "Curculionidae"})
    bad = local.post(f"/specimens/{ids[0]}/verify", data={"csrf": csrf, "status": "corrected", "family": " "})
    assert bad.status_code == 400 and "needs the right family" in bad.text
    assert (
        local.post(f"/specimens/{ids[0]}/verify", data={"csrf": csrf, "status": "maybe"}).status_code == 400
    )
    with factory() as session:
        got = {
            v.specimen_id: (v.status, v.family)
            for v in session.scalars(select(Verification).where(Verification.specimen_id.in_(ids[:3])))
        }
    assert got == {ids[2]: ("confirmed", "Carabidae"), ids[1]: ("corrected", "Curculionidae")}


def test_bulk_verdicts_keep_each_family_on_confirm_and_refuse_unknown_ids(lab, local: TestClient) -> None:
    _, factory, _ = lab
    with factory() as session:
        s2 = _ids(session, "S2")
    csrf = _login(local)
    response = local.post(
        "/review/bulk", data={"csrf": csrf, "status": "confirmed", "ids": s2[:2], "next": "/review"}
    )
    assert response.status_code == 303 and "n=2" in response.headers["location"]
    debris = local.post("/review/bulk", data={"csrf": csrf, "status": "not_specimen", "ids": [s2[2]]})
    assert debris.status_code == 303
    unknown = local.post("/review/bulk", data={"csrf": csrf, "status": "multiple", "ids": [s2[0], 99999]})
    assert unknown.status_code == 400 and "99999" in unknown.text
    assert local.post("/review/bulk", data={"csrf": csrf, "status": "multiple"}).status_code == 400
    with factory() as session:
        rows = session.execute(
            select(Verification.specimen_id, Verification.status, Verification.family)
            .where(Verification.specimen_id.in_(s2))
            .order_by(Verification.specimen_id)
        ).all()
        counts = _sample_counts(session, "S2")
    assert [tuple(r) for r in rows] == [
        (s2[0], "confirmed", "Formicidae"),
        (s2[1], "confirmed", "Formicidae"),
        (s2[2], "not_specimen", None),
    ]
    assert counts["excluded"] == 1 and counts["families"] == {"Formicidae": 2} and counts["verified"] == 2


def test_a_misspelt_family_is_not_recorded_and_the_closest_names_are_offered(lab, local: TestClient) -> None:
    settings, factory, _ = lab
    with factory() as session:
        second = _ids(session)[1]  # S1 #2: Carabidae 0.81, accepted
        before = session.scalar(select(func.count(Verification.id)))
    csrf = _login(local, "E. Cologist")
    form = {"csrf": csrf, "status": "corrected", "note": "keeled elytra", "next": "/review?sample=S1"}
    response = local.post(f"/specimens/{second}/verify", data={**form, "family": "Carbidae"})
    assert response.status_code == 422 and response.headers["content-type"].startswith("text/html")
    page = response.text
    assert "Carbidae: not a family known to this lab (did you mean Carabidae" in html.unescape(page)
    # each close name re-submits the form with it; the typed name can be confirmed as a new one
    assert re.search(r'<button type="submit" name="family" value="Carabidae"', page)
    assert 'name="add_family" value="true"' in page and 'name="family" value="Carbidae"' in page
    for name, value in [*form.items()]:
        assert f'<input type="hidden" name="{name}" value="{html.escape(value)}">' in page, name
    assert '<option value="Linyphiidae">' in page  # the accepted names as suggestions
    with factory() as session:
        assert session.scalar(select(func.count(Verification.id))) == before
        assert "Carbidae" not in _sample_counts(session, "S1")["families"]
    picked = local.post(f"/specimens/{second}/verify", data={**form, "family": "Carabidae"})
    assert picked.status_code == 303 and picked.headers["location"].startswith("/review?sample=S1")
    with factory() as session:
        row = session.scalar(select(Verification).where(Verification.specimen_id == second))
    assert (row.family, row.note, row.verified_by) == ("Carabidae", "keeled elytra", "E. Cologist")
    assert not settings.families_path.exists()


def test_a_new_family_is_recorded_once_confirmed_and_joins_the_lab_list(lab, local: TestClient) -> None:
    settings, factory, _ = lab
    with factory() as session:
        second = _ids(session)[1]
    csrf = _login(local, "E. Cologist")
    form = {"csrf": csrf, "status": "corrected", "family": "Trachypachidae"}
    assert local.post(f"/specimens/{second}/verify", data=form).status_code == 422
    confirmed = local.post(f"/specimens/{second}/verify", data={**form, "add_family": "true"})
    assert confirmed.status_code == 303
    assert settings.families_path.read_text().splitlines()[1:] == ["Trachypachidae,,,,"]
    with factory() as session:
        assert _sample_counts(session, "S1")["families"]["Trachypachidae"] == 1
    # from now on the name is known (in any case), and offered on the specimen page
    assert (
        local.post(f"/specimens/{second}/verify", data={**form, "family": "trachypachidae"}).status_code
        == 303
    )
    assert '<option value="Trachypachidae">' in local.get(f"/specimens/{second}").text


def test_a_misspelt_family_in_a_bulk_verdict_records_nothing(lab, local: TestClient) -> None:
    _, factory, _ = lab
    with factory() as session:
        s2 = _ids(session, "S2")
    csrf = _login(local)
    form = {"csrf": csrf, "status": "corrected", "ids": s2, "next": "/review"}
    response = local.post("/review/bulk", data={**form, "bulk_family": "Formicide"})
    assert response.status_code == 422
    page = response.text
    assert re.search(r'<button type="submit" name="bulk_family" value="Formicidae"', page)
    assert all(f'<input type="hidden" name="ids" value="{i}">' in page for i in s2)
    with factory() as session:
        assert session.scalar(select(Verification.id).where(Verification.specimen_id.in_(s2))) is None
    assert local.post("/review/bulk", data={**form, "bulk_family": "Formicidae"}).status_code == 303
    with factory() as session:
        assert _sample_counts(session, "S2")["families"] == {"Formicidae": 3}


def test_review_functions_check_their_input(lab) -> None:
    _, factory, _ = lab
    with factory() as session:
        first = _ids(session)[0]
        with pytest.raises(ReviewError, match="needs the name"):
            record_verification(session, first, "confirmed", verified_by=" ")
        with pytest.raises(ReviewError, match="longer than 128"):
            record_verification(session, first, "corrected", family="x" * 200, verified_by="A")
        with pytest.raises(ReviewError, match="at most"):
            record_verifications(session, range(1, 2000), "confirmed", verified_by="A")
        row = record_verification(session, first, "not_specimen", family="Carabidae", verified_by="A")
        assert row.family is None  # debris has no family


def test_verified_crops_export_as_a_training_folder_one_folder_per_family(lab, local, tmp_path: Path) -> None:
    settings, factory, _ = lab
    out = tmp_path / "training"
    with factory() as session:
        result = export_training_folder(session, settings.storage.crops_dir, out)
    # S1: #4 corrected -> Curculionidae, #8 confirmed (no family) -> its model's Formicidae;
    # #6 not a specimen and #7 several specimens are left out.
    assert result.families == {"Curculionidae": 1, "Formicidae": 1}
    assert result.skipped == {"not_specimen": 1, "multiple": 1}
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == sorted(
        f"{family}/S1-{sid:07d}.png" for family, sid in [("Curculionidae", 4), ("Formicidae", 8)]
    )
    labels = list(csv.DictReader((out / "labels.csv").open()))
    assert {r["verified_by"] for r in labels} == {"R. Reviewer"}
    zipped = local.get("/review/training.zip", params={"sample": "S1"})
    assert zipped.status_code == 200 and zipped.headers["x-labpipe-files"] == "2"
    names = zipfile.ZipFile(io.BytesIO(zipped.content)).namelist()
    assert sorted(names) == ["Curculionidae/S1-0000004.png", "Formicidae/S1-0000008.png", "labels.csv"]


# --- gallery ------------------------------------------------------------------------------------------


def test_gallery_filters_agree_with_the_counting_rules(lab) -> None:
    _, factory, _ = lab
    with factory() as session:
        calls = load_calls(session)
        outcome = {c.specimen_id: resolve(c).outcome.value for c in calls}
        verified = {c.specimen_id for c in calls if c.verification}
        for state in ("accepted", "rejected", "excluded", "unclassified"):
            total, rows = specimen_page(session, SpecimenFilter(state=state), limit=100)
            assert {r.specimen_id for r in rows} == {i for i, o in outcome.items() if o == state}, state
            assert total == len(rows)
        _, rows = specimen_page(session, SpecimenFilter(state="verified"), limit=100)
        assert {r.specimen_id for r in rows} == verified
        _, rows = specimen_page(session, SpecimenFilter(family="curculionidae", state="accepted"), limit=100)
        assert sorted(r.shown_family for r in rows) == ["Curculionidae", "Curculionidae"]
        total, rows = specimen_page(session, SpecimenFilter(sample="S1", p_min=0.3, p_max=0.81), limit=100)
        assert sorted(r.call.probability for r in rows) == [0.3, 0.45, 0.55, 0.7, 0.81]
        _, rows = specimen_page(session, SpecimenFilter(), limit=100)
        probabilities = [r.call.probability for r in rows]
        assert probabilities == sorted(probabilities)  # the doubtful first
        total, page2 = specimen_page(session, SpecimenFilter(sort="oldest"), limit=5, offset=5)
        assert total == 12 and [r.specimen_id for r in page2] == list(range(6, 11))


def test_gallery_by_model_version_shows_that_models_classifications(lab) -> None:
    _, factory, _ = lab
    with factory() as session:
        newer = get_model(session, "families-v2@wabc-ldef")
        first = _ids(session)[0]
        session.add(
            Classification(
                specimen_id=first,
                model_id=newer.id,
                family="Apidae",
                probability=0.99,
                rejected=False,
                top_k=[],
            )
        )
        session.commit()
        total, rows = specimen_page(session, SpecimenFilter(model="families-v2@wabc-ldef"), limit=10)
        assert total == 1 and rows[0].call.family == "Apidae"
        _, rows = specimen_page(session, SpecimenFilter(model=MODEL, sample="S1", sort="oldest"), limit=1)
        assert rows[0].call.family == "Carabidae"  # the older model's opinion, not the newest one


def test_a_confirmation_without_a_family_confirms_the_call_the_page_shows(lab, local: TestClient) -> None:
    """With a newer model's call on a specimen and the older model as the default, the page shows the
    default's call; confirming it (page, bulk bar or API) records that family, not the newer one."""
    _, factory, _ = lab
    with factory() as session:
        newer = get_model(session, "families-v2@wabc-ldef")
        first, second, third = _ids(session)[:3]
        for sid in (first, second, third):
            session.add(
                Classification(
                    specimen_id=sid, model_id=newer.id, family="Apidae", probability=0.99, top_k=[]
                )
            )
        get_model(session, MODEL).is_default = True
        session.commit()
        shown = {r.specimen_id: r.best_family for r in specimen_page(session, SpecimenFilter(), limit=100)[1]}
    assert "Apidae" not in {shown[first], shown[second], shown[third]}
    assert f'id="counted-family">{shown[first]}<' in local.get(f"/specimens/{first}").text
    csrf = _login(local)
    assert (
        local.post(f"/specimens/{first}/verify", data={"csrf": csrf, "status": "confirmed"}).status_code
        == 303
    )
    assert (
        local.post(f"/specimens/{first}/verify", data={"csrf": csrf, "pick": shown[first]}).status_code == 303
    )
    bulk = local.post("/review/bulk", data={"csrf": csrf, "status": "confirmed", "ids": [second]})
    assert bulk.status_code == 303
    api = local.post(
        f"/api/specimens/{third}/verifications",
        json={"status": "confirmed", "verified_by": "A"},
        headers=AUTH,
    )
    assert api.status_code == 201
    with factory() as session:
        got = session.execute(
            select(Verification.specimen_id, Verification.status, Verification.family).order_by(
                Verification.id
            )
        ).all()
    mine = [tuple(r) for r in got if r[0] in (first, second, third)]
    assert mine == [
        (first, "confirmed", shown[first]),
        (first, "confirmed", shown[first]),  # its top-k button confirms, it does not correct
        (second, "confirmed", shown[second]),
        (third, "confirmed", shown[third]),
    ]


def test_listings_at_a_threshold_filter_as_the_counting_rule_decides(lab, local: TestClient) -> None:
    """Without a threshold the listing filters in SQL, with one on resolved rows: both agree with
    :func:`resolve` over every call, in the API and in the query layer."""
    _, factory, _ = lab
    with factory() as session:
        calls = load_calls(session)
        for threshold in (None, 0.0, 0.4, 0.6, 1.0):
            resolved = {c.specimen_id: resolve(c, threshold) for c in calls}
            for state in ("accepted", "rejected", "excluded", "unclassified"):
                flt = SpecimenFilter(state=state, threshold=threshold, sort="oldest")
                total, rows = specimen_page(session, flt, limit=3, offset=1)
                want = sorted(i for i, r in resolved.items() if r.outcome.value == state)
                assert (total, [r.specimen_id for r in rows]) == (len(want), want[1:4]), (threshold, state)
            flt = SpecimenFilter(counted_family="carabidae", threshold=threshold, sort="oldest")
            _, rows = specimen_page(session, flt, limit=100)
            assert [r.specimen_id for r in rows] == sorted(
                i for i, r in resolved.items() if (r.family or "").lower() == "carabidae"
            ), threshold
            flt = SpecimenFilter(family="Carabidae", threshold=threshold, sort="oldest")
            _, rows = specimen_page(session, flt, limit=100)
            assert all(r.shown_family == "Carabidae" for r in rows) and rows, threshold
    for params in ({"status": "accepted", "threshold": 0.4}, {"status": "rejected"}, {"family": "Carabidae"}):
        items = local.get("/api/specimens", params=params).json()["items"]
        threshold = params.get("threshold")
        want = [
            c.specimen_id
            for c in calls
            if (r := resolve(c, threshold)).outcome.value == params.get("status", r.outcome.value)
            and (r.family or "") == params.get("family", r.family or "")
        ]
        assert [s["specimen_id"] for s in items] == want, params


def test_review_navigation_finds_the_next_specimen_even_after_the_queue_moved(lab) -> None:
    _, factory, _ = lab
    with factory() as session:
        flt = SpecimenFilter(state="unverified", sort="oldest")
        _, rows = specimen_page(session, flt, limit=100)
        ids = [r.specimen_id for r in rows]
        assert neighbours(session, flt, ids[1], 1) == {"prev": ids[0], "next": ids[2], "pos": 1}
        record_verification(session, ids[1], "confirmed", verified_by="A")
        session.flush()
        # ids[1] left the queue: what is now at its place comes next
        assert neighbours(session, flt, ids[1], 1) == {"prev": ids[0], "next": ids[2], "pos": 1}
        assert neighbours(session, flt, ids[2], 2)["pos"] == 1  # found one place earlier


# --- files --------------------------------------------------------------------------------------------


def test_thumbnails_are_small_jpegs_made_once(lab, local: TestClient) -> None:
    settings, _, _ = lab
    response = local.get("/specimens/1/thumb/160.jpg")
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    with PILImage.open(io.BytesIO(response.content)) as thumb:
        assert thumb.format == "JPEG" and max(thumb.size) <= 160
    cached = list((settings.storage.root / "cache" / "thumbs" / "160").rglob("*.jpg"))
    assert len(cached) == 1 and response.headers["etag"] == f'"{cached[0].stem}"'  # keyed by content
    assert local.get("/specimens/1/thumb/160.jpg").content == response.content  # made once
    assert local.get("/specimens/1/thumb/999.jpg").status_code == 404
    assert local.get("/specimens/1/crop.png").headers["content-type"] == "image/png"


def _solid_png(path: Path, colour: tuple[int, int, int]) -> None:
    """Replace ``path`` with a 48 px PNG of one colour, as recording a new crop does (a rename)."""
    tmp = path.with_name(".tmp-" + path.name)
    PILImage.fromarray(np.full((48, 48, 3), colour, np.uint8)).save(tmp, format="PNG")
    tmp.replace(path)


def _mean_colour(content: bytes) -> np.ndarray:
    with PILImage.open(io.BytesIO(content)) as picture:
        return np.asarray(picture.convert("RGB"), dtype=float).mean(axis=(0, 1))


def test_a_reused_specimen_id_never_shows_the_old_pictures(lab, local: TestClient) -> None:
    """Ids can come back (SQLite reused them after a plate was processed again): the same URL must
    then show the new specimen, never the picture cached for the old one."""
    settings, factory, _ = lab
    with factory() as session:
        crop = settings.storage.crops_dir / session.get(Specimen, 1).crop_path
    _solid_png(crop, (250, 20, 20))  # the old specimen: red
    urls = ["/specimens/1/thumb/160.jpg", "/specimens/1/thumb/320.jpg", "/specimens/1/crop.png"]
    before = {url: local.get(url) for url in urls}
    for url, response in before.items():
        assert response.status_code == 200, url
        cache_control = response.headers["cache-control"]
        assert "immutable" not in cache_control and "must-revalidate" in cache_control, url
        assert "max-age=0" in cache_control, url
        again = local.get(url, headers={"If-None-Match": response.headers["etag"]})
        assert again.status_code == 304 and not again.content, url
        assert again.headers["etag"] == response.headers["etag"]

    _solid_png(crop, (20, 20, 250))  # id 1 is now another specimen, its crop under the same path

    for url, old in before.items():
        new = local.get(url)
        assert new.status_code == 200, url
        assert new.headers["etag"] != old.headers["etag"], url
        assert _mean_colour(old.content)[0] > 200 and _mean_colour(new.content)[2] > 200, url  # red, blue
        revalidated = local.get(url, headers={"If-None-Match": old.headers["etag"]})
        assert revalidated.status_code == 200 and revalidated.content == new.content, url
    api = local.get("/api/specimens/1/crop", headers=AUTH)  # the API's crop: the same rules
    assert api.status_code == 200 and api.content == crop.read_bytes()
    assert api.headers["etag"] == local.get("/specimens/1/crop.png").headers["etag"]
    assert "must-revalidate" in api.headers["cache-control"]
    unchanged = local.get("/api/specimens/1/crop", headers={**AUTH, "If-None-Match": api.headers["etag"]})
    assert unchanged.status_code == 304


def test_a_reused_image_id_never_shows_the_old_plate(lab, local: TestClient) -> None:
    settings, factory, _ = lab
    first = settings.storage.archive_dir / "S1" / "first.png"
    second = settings.storage.archive_dir / "S1" / "second.png"
    first.parent.mkdir(parents=True)
    PILImage.fromarray(np.full((600, 600, 3), 230, np.uint8)).save(first)
    PILImage.fromarray(np.full((600, 600, 3), 10, np.uint8)).save(second)
    with factory() as session:
        image = session.get(Image, 1)
        image.archived_path, image.width, image.height = str(first), 600, 600
        session.commit()
    old = local.get("/images/1/overview.jpg")
    assert old.status_code == 200 and "must-revalidate" in old.headers["cache-control"]
    unchanged = local.get("/images/1/overview.jpg", headers={"If-None-Match": old.headers["etag"]})
    assert unchanged.status_code == 304
    with factory() as session:  # id 1 is now another plate
        image = session.get(Image, 1)
        image.content_hash, image.archived_path = "5" * 64, str(second)
        session.commit()
    new = local.get("/images/1/overview.jpg")
    assert new.status_code == 200 and new.headers["etag"] == '"' + "5" * 64 + '"'
    assert _mean_colour(old.content)[0] > 200 and _mean_colour(new.content)[0] < 50


def test_no_page_serves_a_file_outside_the_storage_folders(lab, local: TestClient, tmp_path: Path) -> None:
    settings, factory, _ = lab
    secret = tmp_path / "secret.png"
    PILImage.fromarray(np.zeros((8, 8, 3), np.uint8)).save(secret)
    link = settings.storage.crops_dir / "link.png"
    link.symlink_to(secret)
    with factory() as session:
        specimens = session.scalars(select(Specimen).order_by(Specimen.id)).all()
        specimens[0].crop_path = "../../secret.png"
        specimens[1].crop_path = str(secret)
        specimens[2].crop_path = "link.png"
        image = session.get(Image, 1)
        image.source_path, image.archived_path = str(secret), None  # a plate outside the storage
        session.commit()
    for sid in (1, 2, 3):
        assert local.get(f"/specimens/{sid}/crop.png").status_code == 404
        assert local.get(f"/specimens/{sid}/thumb/160.jpg").status_code == 404
    assert local.get("/images/1/overview.jpg").status_code == 404
    for name in ["../labpipe.sqlite", "..%2F__init__.py", "routes.py"]:
        assert local.get(f"/static/{name}").status_code == 404
    assert local.get("/models/1/plots/metrics.png").status_code == 404  # only the known plot names
    assert local.get("/models/1/plots/..%2F..%2Fsecret.png").status_code == 404


def test_the_plate_overview_is_made_from_the_archived_plate_and_cached(lab, local: TestClient) -> None:
    settings, factory, _ = lab
    archived = settings.storage.archive_dir / "S1" / "s1-plate1.png"
    archived.parent.mkdir(parents=True)
    PILImage.fromarray(np.full((3000, 3000, 3), 200, np.uint8)).save(archived)
    with factory() as session:
        session.get(Image, 1).archived_path = str(archived)
        session.commit()
    assert "/images/1/overview.jpg" in local.get("/images/1").text
    response = local.get("/images/1/overview.jpg")
    assert response.status_code == 200
    with PILImage.open(io.BytesIO(response.content)) as overview:
        assert overview.size == (2048, 2048)
    archived.unlink()  # the cache answers from now on
    assert local.get("/images/1/overview.jpg").status_code == 200


# --- exports and plates -------------------------------------------------------------------------------


def test_exports_download_as_attachments_and_match_the_counts(lab, local: TestClient) -> None:
    _, factory, _ = lab
    with factory() as session:
        expected = counts_to_csv(count_families(session, "S1"))
    response = local.get("/exports/counts.csv", params={"sample": "S1"})
    assert response.text == expected
    assert response.headers["content-disposition"] == 'attachment; filename="S1-counts.csv"'
    matrix = local.get("/exports/matrix.csv").text.splitlines()
    assert matrix[0].startswith("sample,") and [r.split(",")[0] for r in matrix[1:]] == [
        "S1",
        "S2",
        "S3",
        "_unassigned",
    ]
    with_expected = local.get("/exports/counts.csv", params={"sample": "S1", "expected": "true"}).text
    assert with_expected.splitlines()[0] == (
        "sample,family,count,expected,expected_low,expected_high,model_versions,mixed_models"
    )
    dwca = zipfile.ZipFile(io.BytesIO(local.get("/exports/dwca.zip", params={"sample": "S1"}).content))
    assert "occurrence.txt" in dwca.namelist()
    # nothing of S2 is plated: its BOLD submission is refused unless every specimen is asked for
    assert local.get("/exports/bold.zip", params={"sample": "S2"}).status_code == 400
    everything = local.get("/exports/bold.zip", params={"sample": "S2", "all": "true"}).content
    bold = zipfile.ZipFile(io.BytesIO(everything))
    assert "bold_specimens.xlsx" in bold.namelist()
    assert local.get("/exports/bold.zip").status_code == 400
    assert local.get("/exports/other.txt").status_code == 404


def test_a_sample_is_laid_out_on_plates_from_its_page(lab, local: TestClient) -> None:
    csrf = _login(local)
    response = local.post("/plates/layout", data={"csrf": csrf, "sample": "S2"})
    assert response.status_code == 303 and "n=3" in response.headers["location"]
    page = local.get("/samples/S2").text
    assert "S2-P01" in page and "/plates/S2-P01/manifest.csv" in page
    manifest = local.get("/plates/S2-P01/manifest.csv")
    assert manifest.status_code == 200 and "attachment" in manifest.headers["content-disposition"]
    assert "<html" in local.get("/plates/S2-P01/sheet").text.lower()


def test_the_layout_form_states_the_rejected_choice_and_the_sheet_reports_it(lab, local: TestClient) -> None:
    csrf = _login(local)
    page = local.get("/samples/S1").text
    choice = page[page.index('id="rejected-choice"') :]
    choice = choice[: choice.index("</fieldset>")]
    assert 'value="false" checked> leave out (default)' in choice and 'value="true"> include' in choice
    assert 'name="all" value="true"> every specimen, plated or not' in page  # the BOLD export's choice
    local.post("/plates/layout", data={"csrf": csrf, "sample": "S1", "include_rejected": "false"})
    sheet = local.get("/plates/S1-P01/sheet").text
    assert "Rejected specimens: none on this plate; 2 of sample S1 left out (on no plate)." in sheet
    local.post("/plates/layout", data={"csrf": csrf, "sample": "S1", "include_rejected": "true"})
    sheet = local.get("/plates/S1-P02/sheet").text
    assert "Rejected specimens: 2 included on this plate; none of sample S1 left out." in sheet


# --- retry --------------------------------------------------------------------------------------------


def test_retry_puts_a_quarantined_plate_back_into_the_inbox_as_a_new_attempt(lab, local: TestClient) -> None:
    from labpipe.ingest.register import Outcome, register_file

    settings, factory, _ = lab
    inbox, quarantine = settings.storage.inbox_dir, settings.storage.quarantine_dir
    moved = quarantine / "S9" / "bad.tif"
    moved.parent.mkdir(parents=True)
    moved.write_bytes(b"II*\x00 truncated")
    (quarantine / "S9" / "bad.tif.reason.txt").write_text("reason")
    with factory() as session:
        session.add(Sample(id="S9"))
        image = Image(
            source_path=str(inbox / "S9" / "bad.tif"),
            archived_path=str(moved),
            file_name="bad.tif",
            content_hash="d" * 64,
            size_bytes=15,
            sample_id="S9",
            status=ImageStatus.FAILED.value,
            error="interrupted",
        )
        session.add(image)
        session.commit()
        image_id = image.id
    csrf = _login(local)
    assert local.post("/images/1/retry", data={"csrf": csrf}).status_code == 409  # done, not failed
    response = local.post(f"/images/{image_id}/retry", data={"csrf": csrf})
    assert response.status_code == 303
    back = inbox / "S9" / "bad.tif"
    assert back.read_bytes() == b"II*\x00 truncated" and not moved.exists()
    assert not (quarantine / "S9" / "bad.tif.reason.txt").exists()
    with factory() as session:  # what the watcher does when it finds the file
        registration = register_file(session, back, "d" * 64, 15, None)
        assert registration.outcome is Outcome.RETRY and registration.enqueue
        assert session.get(Image, image_id).sample_id == "S9"
    again = local.post(f"/images/{image_id}/retry", data={"csrf": csrf})
    assert again.status_code == 409  # queued now


# --- thousands of specimens (their render times: benchmarks/web_pages.py, with 100 000) --------------


def _words(page: str) -> str:
    """The page's text without tags, spaces collapsed (numbers keep their narrow no-break spaces)."""
    return re.sub(r"[ \t\r\n]+", " ", re.sub(r"<[^>]+>", " ", page))


def test_pages_show_the_right_numbers_with_thousands_of_specimens(tmp_path: Path) -> None:
    """60 plates of 50 specimens in 10 samples: every count and page range a user reads is right."""
    settings = lab_settings(tmp_path / "many", **{"api.token": TOKEN})
    factory = open_lab_db(settings)
    bulk_lab(settings, factory, n=3_000, per_image=50)
    with factory() as session:  # straight from the tables, not through the listing queries
        unverified = "specimen_id NOT IN (SELECT specimen_id FROM verifications)"
        rejected = session.scalar(
            sa_text(f"SELECT count(*) FROM classifications WHERE probability < 0.5 AND {unverified}")
        )
    client = TestClient(
        create_web_app(settings, session_factory=factory), base_url="http://localhost", client=LOCAL
    )

    def words(url: str) -> str:
        response = client.get(url)
        assert response.status_code == 200, (url, response.text[:300])
        return _words(response.text)

    n = "\u202f"  # thousands separator
    assert f"3{n}000 specimen(s), 1–120 shown" in words("/specimens")
    assert f"3{n}000 specimen(s), 2{n}881–3{n}000 shown" in words("/specimens?page=25")  # the last page
    assert "60 specimen(s), 1–60 shown" in words("/specimens?state=verified")  # every 50th
    assert f"2{n}940 specimen(s), 1–24 shown" in words("/review")  # the unverified ones
    assert 1_000 < rejected < 2_000
    shown = f"{rejected:,}".replace(",", n) + " specimen(s)"
    assert shown in words("/specimens?state=rejected&sort=uncertain")
    assert "60 of 60 plates finished" in words("/")
    assert "60 plate(s)" in words("/images")
    page_two = words("/images?page=2")
    assert "page 2 of 2" in page_two and "bulk-0.tif B0 done" in page_two and "bulk-10.tif" not in page_two
    assert "10 sample(s)" in words("/samples")
    assert all(f"B{i} 6 300" in words("/samples") for i in range(10))  # plates, specimens per sample
    sample = words("/samples/B3")
    assert "Plates 6" in sample and "Specimens 300 6 verified" in sample
    for url in (
        "/images/10",
        "/specimens?family=Apidae&state=accepted&p_min=0.6",
        "/specimens?sample=B3&sort=largest&page=2",
        "/specimens/1234?state=unverified&pos=1000",
        "/models",
    ):
        words(url)  # renders (200)
    factory.kw["bind"].dispose()


@pytest.mark.postgres
def test_pages_and_gallery_filters_are_the_same_on_postgresql(postgres_url: str, tmp_path: Path) -> None:
    import uuid

    import sqlalchemy as sa

    from labpipe.db.migrate import upgrade

    name = f"labpipe_web_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = sa.engine.make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    filters = [
        SpecimenFilter(state=s) for s in ("accepted", "rejected", "excluded", "verified", "unverified")
    ]
    filters += [SpecimenFilter(family="Formicidae"), SpecimenFilter(p_min=0.5, sort="confident")]
    try:
        upgrade(url)
        results = []
        for settings in (lab_settings(tmp_path / "pg", url), lab_settings(tmp_path / "lite")):
            factory = open_lab_db(settings)
            with factory() as session:
                build_lab(session, settings)
                got = []
                for flt in filters:
                    total, rows = specimen_page(session, flt, limit=50)
                    got.append(
                        (total, [(r.index_in_image, r.sample, r.resolution.outcome.value) for r in rows])
                    )
                results.append(got)
            client = TestClient(
                create_web_app(settings, session_factory=factory), base_url="http://localhost", client=LOCAL
            )
            for page in ["/", "/images/1", "/specimens?state=rejected", "/review", "/samples/S1", "/models"]:
                assert client.get(page).status_code == 200, (settings.database_url, page)
            factory.kw["bind"].dispose()
        assert results[0] == results[1]
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


# --- sessions: expiry, logout on the server, revoke all, guessing -------------------------------------


def _login_cookie(client: TestClient) -> str:
    client.cookies.clear()
    response = client.post("/login", data={"token": TOKEN, "name": "R. Reviewer", "next": "/"})
    assert response.status_code == 303, response.text
    return response.cookies[SESSION_COOKIE]


def _logged_in(client: TestClient, cookie: str) -> bool:
    client.cookies.clear()
    client.cookies.set(SESSION_COOKIE, cookie)
    return "Log in to review" not in client.get("/").text


def test_a_logged_out_or_revoked_session_cookie_no_longer_works(lab, local: TestClient) -> None:
    settings, _, _ = lab
    first = _login_cookie(local)
    assert _logged_in(local, first)
    local.post("/logout", data={"csrf": csrf_value(TOKEN, first.split(".")[2])})
    assert not _logged_in(local, first)  # a copy of the cookie kept by the browser or a thief is dead

    second = _login_cookie(local)
    assert _logged_in(local, second)
    out = CliRunner().invoke(cli, ["--data-dir", str(settings.storage.root), "sessions", "revoke"])
    assert out.exit_code == 0 and "every web login ended" in out.output
    assert not _logged_in(local, second)
    assert _logged_in(local, _login_cookie(local))  # the token still logs in afresh


def test_a_session_expires_after_session_hours(tmp_path: Path) -> None:
    settings = lab_settings(tmp_path / "d", **{"api.token": TOKEN, "api.session_hours": 1 / 3600})
    factory = open_lab_db(settings)
    client = TestClient(
        create_web_app(settings, session_factory=factory),
        base_url="http://localhost",
        client=LOCAL,
        follow_redirects=False,
    )
    cookie = _login_cookie(client)
    assert _logged_in(client, cookie)
    time.sleep(2.2)
    assert not _logged_in(client, cookie)
    factory.kw["bind"].dispose()


def test_guessing_the_token_on_the_login_page_is_stopped(tmp_path: Path) -> None:
    settings = lab_settings(tmp_path / "d", **{"api.token": TOKEN, "api.auth_failures": 3})
    factory = open_lab_db(settings)
    client = TestClient(
        create_web_app(settings, session_factory=factory),
        base_url="http://localhost",
        client=REMOTE,
        follow_redirects=False,
    )
    codes = [client.post("/login", data={"token": f"g{n}", "name": "X"}).status_code for n in range(4)]
    assert codes == [401, 401, 401, 429]
    assert client.post("/login", data={"token": TOKEN, "name": "X"}).status_code == 429
    forged = TestClient(client.app, base_url="http://localhost", client=REMOTE, follow_redirects=False)
    forged.cookies.set(SESSION_COOKIE, "v2.1.nonce.forged")
    assert forged.get("/").status_code == 429
    factory.kw["bind"].dispose()


def test_a_sample_counted_by_two_models_is_flagged_on_its_page(lab, local: TestClient) -> None:
    from labpipe.db.models import Classification, Model, ModelKind

    _, factory, _ = lab
    assert 'id="mixed-models"' not in local.get("/samples/S2").text
    with factory() as session:
        newer = Model(
            name="families-v2",
            kind=ModelKind.CLASSIFIER.value,
            version="families-v2@w333333333333-l444444444444",
            weights_hash="3" * 64,
            labels_hash="4" * 64,
            labels=["Apidae", "Formicidae"],
        )
        session.add(newer)
        session.flush()
        first = _ids(session, "S2")[0]
        session.add(
            Classification(
                specimen_id=first,
                model_id=newer.id,
                family="Apidae",
                probability=0.9,
                top_k=[["Apidae", 0.9]],
            )
        )
        session.commit()
    page = local.get("/samples/S2").text
    assert 'id="mixed-models"' in page and "labpipe reclassify --sample S2" in page

"""Plates marked "boxes reviewed" (issue 15) and the COCO export of their boxes: marking and
unmarking through the API, the CLI and the web UI (with the audit trail and the permissions), what
the export holds, and that labpipe's own readers take it back."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from records_fixtures import built_lab, lab_settings, open_lab_db, web_login
from sqlalchemy import select

from labpipe.cli.main import cli
from labpipe.db.models import AuditEvent, DetectionState, Image, Specimen, Verification
from labpipe.detect.detr_data import read_coco_set
from labpipe.evaluation.truth import read_coco_truth
from labpipe.reports.coco import coco_export
from labpipe.web import create_web_app

TOKEN = "coco-t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LOCAL = ("127.0.0.1", 50000)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[Any, Any, Any]]:
    with built_lab(tmp_path / "data", TOKEN, create_web_app) as built:
        yield built


@pytest.fixture
def client(lab) -> TestClient:
    return TestClient(lab[2], base_url="http://localhost", client=LOCAL, follow_redirects=False)


def _image_id(factory: Any, sample: str | None) -> int:
    with factory() as session:
        query = select(Image.id).where(Image.sample_id == sample if sample else Image.sample_id.is_(None))
        return int(session.scalar(query))


def _events(factory: Any, image_id: int) -> list[AuditEvent]:
    with factory() as session:
        rows = session.scalars(
            select(AuditEvent).where(AuditEvent.image_id == image_id).order_by(AuditEvent.id)
        )
        return list(rows)


def test_mark_and_unmark_through_the_api_with_the_audit_trail_and_undo(lab, client: TestClient) -> None:
    _, factory, _ = lab
    s1 = _image_id(factory, "S1")
    url = f"/api/images/{s1}/boxes-reviewed"
    assert client.put(url, json={"by": "A. Curator"}).status_code == 401  # no token
    assert (
        client.put(url, json={"by": "A. Curator"}, headers={"Authorization": "Bearer no"}).status_code == 401
    )
    marked = client.put(url, json={"by": "A. Curator", "note": "all 8"}, headers=AUTH)
    assert marked.status_code == 200, marked.text
    assert marked.json()["action"] == "boxes_reviewed" and marked.json()["image_id"] == s1
    with factory() as session:
        image = session.get(Image, s1)
        assert image.boxes_reviewed_by == "A. Curator" and image.boxes_reviewed_at.tzinfo is not None
    unmarked = client.request("DELETE", url, json={"by": "B. Other"}, headers=AUTH)
    assert unmarked.status_code == 200 and unmarked.json()["action"] == "boxes_unreviewed"
    with factory() as session:
        assert session.get(Image, s1).boxes_reviewed_at is None
    again = client.request("DELETE", url, json={"by": "B. Other"}, headers=AUTH)
    assert again.status_code == 400 and "not marked" in again.text
    assert client.put("/api/images/999999/boxes-reviewed", json={"by": "x"}, headers=AUTH).status_code == 404
    # undoing the unmark puts the first mark back, as it was
    undone = client.post(
        f"/api/events/{unmarked.json()['event_id']}/undo", json={"undone_by": "B. Other"}, headers=AUTH
    )
    assert undone.status_code == 200, undone.text
    with factory() as session:
        assert session.get(Image, s1).boxes_reviewed_by == "A. Curator"
    actions = [e.action for e in _events(factory, s1)]
    assert actions == ["boxes_reviewed", "boxes_unreviewed", "undo"]


def test_marking_is_refused_when_writes_are_disabled(tmp_path: Path) -> None:
    settings = lab_settings(tmp_path / "data")  # no [api] token: read-only
    factory = open_lab_db(settings)
    try:
        from records_fixtures import build_lab

        with factory() as session:
            s1 = build_lab(session, settings)["S1"].id
        client = TestClient(
            create_web_app(settings, session_factory=factory), base_url="http://localhost", client=LOCAL
        )
        response = client.put(f"/api/images/{s1}/boxes-reviewed", json={"by": "x"}, headers=AUTH)
        assert response.status_code in (401, 403), response.text
        assert client.post(f"/images/{s1}/boxes-reviewed", data={"csrf": ""}).status_code == 403
        assert client.get("/api/exports/coco.json").status_code == 200  # reading stays open
        with factory() as session:
            assert session.get(Image, s1).boxes_reviewed_at is None
    finally:
        factory.kw["bind"].dispose()


def test_mark_and_unmark_from_the_cli(lab) -> None:
    settings, factory, _ = lab
    s2 = _image_id(factory, "S2")
    base = ["--data-dir", str(settings.storage.root)]
    run = CliRunner()
    out = run.invoke(cli, [*base, "images", "mark-reviewed", str(s2), "--by", "C. Li"])
    assert out.exit_code == 0, out.output
    assert "marked boxes reviewed by C. Li" in out.output
    with factory() as session:
        assert session.get(Image, s2).boxes_reviewed_by == "C. Li"
    out = run.invoke(cli, [*base, "images", "mark-reviewed", str(s2), "--by", "C. Li", "--undo"])
    assert out.exit_code == 0 and "mark taken off" in out.output
    with factory() as session:
        assert session.get(Image, s2).boxes_reviewed_at is None
    assert [e.action for e in _events(factory, s2)] == ["boxes_reviewed", "boxes_unreviewed"]
    assert [e.actor for e in _events(factory, s2)] == ["C. Li", "C. Li"]
    missing = run.invoke(cli, [*base, "images", "mark-reviewed", "99999", "--by", "C. Li"])
    assert missing.exit_code != 0 and "no such image" in missing.output


def test_the_plate_page_button_marks_with_the_login_name_and_a_form_token(lab, client: TestClient) -> None:
    _, factory, _ = lab
    s1 = _image_id(factory, "S1")
    assert "Mark boxes reviewed" not in client.get(f"/images/{s1}").text  # a reader sees no button
    csrf = web_login(client, TOKEN, "D. Web")
    assert "Mark boxes reviewed" in client.get(f"/images/{s1}").text
    assert client.post(f"/images/{s1}/boxes-reviewed", data={"csrf": "forged"}).status_code == 403
    done = client.post(f"/images/{s1}/boxes-reviewed", data={"csrf": csrf})
    assert done.status_code == 303
    page = client.get(done.headers["location"]).text
    assert "boxes reviewed by D. Web" in page and "Unmark boxes reviewed" in page
    assert (
        client.post(f"/images/{s1}/boxes-reviewed", data={"csrf": csrf, "unmark": "true"}).status_code == 303
    )
    with factory() as session:
        assert session.get(Image, s1).boxes_reviewed_at is None
    assert [e.actor for e in _events(factory, s1)] == ["D. Web", "D. Web"]


def _prepare(lab, client: TestClient) -> dict[str, int]:
    """S1 and S2 marked; two specimens on S1 the latest run lost (one verified); the loose plate
    fully verified but not marked; S1 archived below the archive folder."""
    settings, factory, _ = lab
    ids = {"S1": _image_id(factory, "S1"), "S2": _image_id(factory, "S2"), "loose": _image_id(factory, None)}
    with factory() as session:
        s1 = session.get(Image, ids["S1"])
        target = settings.storage.archive_dir / "S1" / "s1-plate1.tif"
        s1.archived_path = str(target)
        for k, verified in ((20, False), (21, True)):
            specimen = Specimen(
                index_in_image=k,
                x=2000,
                y=100 * k,
                w=50,
                h=60,
                score=0.5,
                detector_version="classical@test",
                detection_state=DetectionState.NOT_REDETECTED.value,
                crop_path="",
                crop_size=48,
            )
            s1.specimens.append(specimen)
            if verified:
                specimen.verifications.append(
                    Verification(status="confirmed", family="Apidae", verified_by="R")
                )
        for specimen in session.get(Image, ids["loose"]).specimens:
            specimen.verifications.append(Verification(status="confirmed", verified_by="R"))
        session.commit()
    for key in ("S1", "S2"):
        assert (
            client.put(
                f"/api/images/{ids[key]}/boxes-reviewed", json={"by": "A. Curator"}, headers=AUTH
            ).status_code
            == 200
        )
    return ids


def test_the_export_holds_reviewed_boxes_negatives_families_and_the_scale(lab, client: TestClient) -> None:
    settings, factory, _ = lab
    ids = _prepare(lab, client)
    with factory() as session:
        doc = coco_export(session, settings.storage.archive_dir, reviewed_only=True)
        loose_too = coco_export(session, settings.storage.archive_dir)
        only_s2 = coco_export(session, settings.storage.archive_dir, sample="S2")
    assert doc["categories"] == [
        {"id": 1, "name": "specimen", "supercategory": "arthropod"},
        {"id": 2, "name": "debris", "supercategory": "negative"},
    ]
    images = {i["id"]: i for i in doc["images"]}
    assert sorted(images) == sorted([ids["S1"], ids["S2"]])  # the unmarked, unverified S3 is not in
    s1 = images[ids["S1"]]
    assert s1["file_name"] == "S1/s1-plate1.tif"  # relative to the archive folder
    assert images[ids["S2"]]["file_name"] == "/inbox/s2-plate1.tif"  # outside it: absolute
    assert (s1["width"], s1["height"], s1["um_per_px"], s1["sample"]) == (3000, 3000, 10.0, "S1")
    assert s1["boxes_reviewed_by"] == "A. Curator" and s1["boxes_reviewed_at"]
    on_s1 = [a for a in doc["annotations"] if a["image_id"] == ids["S1"]]
    # 8 fixture boxes + the verified lost one; the unverified lost one is left out
    assert len(on_s1) == 9
    assert all(a["iscrowd"] == 0 and a["area"] == a["bbox"][2] * a["bbox"][3] for a in on_s1)
    debris = [a for a in on_s1 if a["category_id"] == 2]
    assert [a["bbox"] for a in debris] == [[600, 200, 80, 120]]  # #6: not a specimen
    assert "family" not in debris[0]["attributes"]
    by_index = {
        a["bbox"][0] // 100: a["attributes"] for a in on_s1 if a["category_id"] == 1 and a["bbox"][0] < 2000
    }
    assert by_index[1]["family"] == "Carabidae" and "verified" not in by_index[1]
    assert by_index[4]["family"] == "Curculionidae" and by_index[4]["verdict"] == "corrected"
    assert "family" not in by_index[3]  # rejected by the classifier, no verdict: a box without a family
    assert by_index[7]["multiple"] is True
    lost = [a for a in on_s1 if a["bbox"][0] == 2000]
    assert len(lost) == 1 and lost[0]["attributes"]["detection_state"] == "not_redetected"
    assert lost[0]["attributes"]["family"] == "Apidae"
    assert doc["info"]["boxes"] == 8 + 3 and doc["info"]["negatives"] == 1
    # default: also the plate whose every box has a verdict; a sample filter
    assert sorted(i["id"] for i in loose_too["images"]) == sorted(ids.values())
    assert [i["id"] for i in only_s2["images"]] == [ids["S2"]]
    assert {a["image_id"] for a in only_s2["annotations"]} == {ids["S2"]}


def test_the_export_round_trips_through_labpipes_readers(lab, client: TestClient, tmp_path: Path) -> None:
    settings, _, _ = lab
    ids = _prepare(lab, client)
    out = tmp_path / "train.json"
    run = CliRunner().invoke(
        cli, ["--data-dir", str(settings.storage.root), "export", "coco", "--reviewed-only", str(out)]
    )
    assert run.exit_code == 0, run.output
    assert "2 plates, 11 specimen boxes, 1 negatives" in run.output
    doc = json.loads(out.read_text())
    truth = {t.path: t for t in read_coco_truth(out, settings.storage.archive_dir.resolve())}
    s1 = truth[settings.storage.archive_dir.resolve() / "S1" / "s1-plate1.tif"]
    assert s1.um_per_px == 10.0 and (s1.width, s1.height) == (3000, 3000)
    want = sorted(
        tuple(a["bbox"]) for a in doc["annotations"] if a["image_id"] == ids["S1"] and a["category_id"] == 1
    )
    assert sorted(tuple(int(v) for v in b) for b in s1.specimens) == want
    assert [tuple(int(v) for v in b) for b in s1.debris] == [(600, 200, 80, 120)]
    assert not s1.ignore  # a "multiple" box stays a specimen
    s2 = truth[Path("/inbox/s2-plate1.tif")]
    assert len(s2.specimens) == 3 and not s2.debris
    # the detector's training reader: specimen boxes only, the file names as written
    train = {c.file_name: c for c in read_coco_set(out)}
    assert len(train["S1/s1-plate1.tif"].boxes) == 9 - 1 and train["S1/s1-plate1.tif"].um_per_px == 10.0


def test_the_api_the_cli_and_the_web_give_the_same_document(lab, client: TestClient, tmp_path: Path) -> None:
    settings, _, _ = lab
    _prepare(lab, client)
    for query, flags in (("", []), ("?reviewed_only=true&sample=S1", ["--reviewed-only", "--sample", "S1"])):
        api = client.get(f"/api/exports/coco.json{query}")
        assert api.status_code == 200, api.text
        out = tmp_path / "out.json"
        run = CliRunner().invoke(
            cli, ["--data-dir", str(settings.storage.root), "export", "coco", *flags, str(out)]
        )
        assert run.exit_code == 0, run.output
        assert json.loads(out.read_text()) == api.json()
        web = client.get(
            f"/exports/coco.json{query.replace('?', '?') or ''}", headers={"Accept": "text/html"}
        )
        assert web.status_code == 200 and "attachment" in web.headers["content-disposition"]
        assert json.loads(web.text) == api.json()
    assert "/exports/coco.json?sample=S1" in client.get("/samples/S1").text

"""Box editing on the plate view (issue 15 item 1): add, delete, split, resize, undo over HTTP, as a
technician's browser sends them; the DB, crops and counts checked as a user would."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image as PILImage
from records_fixtures import built_lab, web_login
from sqlalchemy import select

from labpipe.active_models import active_classifier
from labpipe.db.models import AuditEvent, Classification, Image, Specimen
from labpipe.queries.listings import image_specimens
from labpipe.web import create_web_app

TOKEN = "box-t0ken"


def plate_file(settings: Any, name: str, side: int = 3000) -> Path:
    """A plate PNG in the archive: grey, with a dark square at (1000, 1000)-(1100, 1150)."""
    pixels = np.full((side, side, 3), 200, np.uint8)
    pixels[1000:1150, 1000:1100] = 30
    path = settings.storage.archive_dir / name
    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.fromarray(pixels).save(path, compress_level=1)
    return path


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[Any, Any, Any, str, int]]:
    """The fixture lab with a real plate file; its edits use the lab's classifier in use (the
    built-in ImageNet one, loaded offline), whose version is the fourth item."""
    with built_lab(tmp_path / "data", TOKEN, create_web_app) as (settings, factory, app):
        from labpipe.classify.loader import configured_classifier

        with factory() as session:
            in_use = configured_classifier(settings, model=active_classifier(session, settings).spec).version
        with factory() as session:
            image = session.scalar(select(Image).where(Image.sample_id == "S1"))
            image.archived_path = str(plate_file(settings, "s1-plate1.png"))
            session.commit()
            image_id = image.id
        yield settings, factory, app, in_use, image_id


@pytest.fixture
def client(lab) -> TestClient:
    return TestClient(lab[2], base_url="http://localhost", client=("127.0.0.1", 5000), follow_redirects=False)


def active(session: Any, image_id: int) -> dict[int, Any]:
    """The plate's boxes a person sees: every specimen not marked as not a specimen."""
    return {
        r.specimen_id: r
        for r in image_specimens(session, image_id)
        if r.resolution.outcome.value != "excluded"
    }


def test_add_resize_delete_split_and_undo_each(lab, client: TestClient) -> None:
    settings, factory, _, in_use, image_id = lab
    csrf = web_login(client, TOKEN, "T. Technician")
    with factory() as session:
        before = active(session, image_id)
    # add: a new drawn specimen with its crop from full resolution, classified at once
    t0 = time.perf_counter()
    r = client.post(f"/images/{image_id}/boxes", json={"csrf": csrf, "box": [1000, 1000, 100, 150]})
    print(f"add box (cut + classify, 3000 px PNG plate): {time.perf_counter() - t0:.3f} s")
    assert r.status_code == 200, r.text
    added = r.json()["shown"][0]["id"]
    with factory() as session:
        s = session.get(Specimen, added)
        assert (s.x, s.y, s.w, s.h, s.detection_state) == (1000, 1000, 100, 150, "drawn")
        assert s.index_in_image == max(r.index_in_image for r in before.values()) + 1
        crop = np.asarray(PILImage.open(settings.storage.crops_dir / s.crop_path))
        assert crop.shape[0] == crop.shape[1] == s.crop_size > 150  # padded square with the margin
        assert crop[crop.shape[0] // 2, crop.shape[1] // 2].tolist() == [30, 30, 30]
        (cls,) = session.scalars(select(Classification).where(Classification.specimen_id == added))
        assert cls.model.version == in_use  # classified at once by the lab's classifier in use
        assert cls.top_k and cls.decided_at is not None
        now = active(session, image_id)
        assert len(now) == len(before) + 1
        assert now[added].resolution.family == (None if cls.rejected else cls.family)
        event = session.get(AuditEvent, r.json()["event_id"])
        assert (event.actor, event.action) == ("T. Technician", "box_add")
    # resize: the crop is cut again
    old_crop = s.crop_path
    r = client.post(f"/specimens/{added}/box", json={"csrf": csrf, "box": [990, 990, 120, 170]})
    assert r.status_code == 200, r.text
    resize_event = r.json()["event_id"]
    with factory() as session:
        s = session.get(Specimen, added)
        assert (s.x, s.y, s.w, s.h) == (990, 990, 120, 170) and s.crop_path != old_crop
        assert (settings.storage.crops_dir / s.crop_path).is_file()
        assert not (settings.storage.crops_dir / old_crop).exists()
        event = session.get(AuditEvent, resize_event)
        assert event.before["box"] == [1000, 1000, 100, 150] and event.actor == "T. Technician"
    # undo the resize: the box goes back
    r = client.post(f"/box-events/{resize_event}/undo", json={"csrf": csrf})
    assert r.status_code == 200, r.text
    with factory() as session:
        s = session.get(Specimen, added)
        assert (s.x, s.y, s.w, s.h) == (1000, 1000, 100, 150)
    # delete a false detection: not counted, row kept; undo brings it back
    victim = next(iter(before))
    r = client.post(f"/specimens/{victim}/box/delete", json={"csrf": csrf})
    assert r.status_code == 200, r.text
    delete_event = r.json()["event_id"]
    assert r.json()["hidden"] == [victim]
    with factory() as session:
        assert victim not in active(session, image_id) and session.get(Specimen, victim) is not None
    page = client.get(f"/images/{image_id}")
    assert f'data-specimen="{victim}"' not in page.text
    r = client.post(f"/box-events/{delete_event}/undo", json={"csrf": csrf})
    assert r.status_code == 200, r.text
    with factory() as session:
        assert victim in active(session, image_id)
    # split a merged box into two: counted as two; one undo reverts it
    with factory() as session:
        n = len(active(session, image_id))
    r = client.post(
        f"/specimens/{added}/box/split",
        json={"csrf": csrf, "boxes": [[1000, 1000, 100, 70], [1000, 1070, 100, 80]]},
    )
    assert r.status_code == 200, r.text
    split_event = r.json()["event_id"]
    assert len(r.json()["shown"]) == 2
    with factory() as session:
        now = active(session, image_id)
        assert len(now) == n + 1
        new_id = next(i for i in (x["id"] for x in r.json()["shown"]) if i != added)
        assert session.get(Specimen, new_id).detection_state == "drawn"
        assert (session.get(Specimen, added).h, session.get(Specimen, new_id).h) == (70, 80)
    r = client.post(f"/box-events/{split_event}/undo", json={"csrf": csrf})
    assert r.status_code == 200, r.text
    with factory() as session:
        assert len(active(session, image_id)) == n and session.get(Specimen, new_id) is None
        assert session.get(Specimen, added).h == 150
    # undo the add: the drawn specimen is gone, counts as before
    add_event = session.scalar(select(AuditEvent.id).where(AuditEvent.action == "box_add"))
    r = client.post(f"/box-events/{add_event}/undo", json={"csrf": csrf})
    assert r.status_code == 200, r.text
    with factory() as session:
        assert set(active(session, image_id)) == set(before)
    r = client.post(f"/box-events/{add_event}/undo", json={"csrf": csrf})
    assert r.status_code == 400


def test_edits_need_a_login_and_the_form_token_and_a_box_inside_the_plate(lab, client: TestClient) -> None:
    _, factory, _, _, image_id = lab
    body = {"box": [10, 10, 50, 50]}
    assert client.post(f"/images/{image_id}/boxes", json={"csrf": "", **body}).status_code == 401
    csrf = web_login(client, TOKEN)
    assert client.post(f"/images/{image_id}/boxes", json={"csrf": "wrong", **body}).status_code == 403
    r = client.post(f"/images/{image_id}/boxes", json={"csrf": csrf, "box": [2990, 10, 50, 50]})
    assert r.status_code == 400 and "leaves the image" in r.text
    with factory() as session:
        assert session.scalar(select(AuditEvent.id).where(AuditEvent.action == "box_add")) is None


def test_a_read_only_lab_refuses_edits(tmp_path: Path) -> None:
    with built_lab(tmp_path / "ro", "", create_web_app) as (_, factory, app):
        c = TestClient(app, base_url="http://localhost", client=("127.0.0.1", 5000))
        with factory() as session:
            image_id = session.scalar(select(Image.id))
        r = c.post(f"/images/{image_id}/boxes", json={"csrf": "", "box": [10, 10, 50, 50]})
        assert r.status_code == 403


def test_the_plate_view_with_500_boxes_stays_fast(lab, client: TestClient) -> None:
    from records_fixtures import get_model

    _, factory, _, _, image_id = lab
    with factory() as session:
        model = get_model(session)
        for i in range(500):
            s = Specimen(
                image_id=image_id,
                index_in_image=1000 + i,
                x=(i % 25) * 110 + 20,
                y=(i // 25) * 140 + 20,
                w=90,
                h=120,
                score=0.9,
                detector_version="classical@test",
                crop_path="",
                crop_size=48,
            )
            session.add(s)
            session.flush()
            session.add(
                Classification(
                    specimen_id=s.id,
                    model_id=model.id,
                    family="Carabidae",
                    probability=0.9,
                    rejected=False,
                    top_k=[["Carabidae", 0.9]],
                )
            )
        session.commit()
    web_login(client, TOKEN)
    client.get(f"/images/{image_id}")
    page = client.get(f"/images/{image_id}")
    # its render time is a benchmark figure (benchmarks/web_pages.py times /images/10, 2 000 boxes)
    assert page.status_code == 200 and page.text.count("data-specimen=") >= 500
    assert 'id="edit-toggle"' in page.text


def test_a_script_with_the_token_may_edit_and_a_missing_plate_file_is_refused(
    lab, client: TestClient
) -> None:
    settings, factory, _, _, image_id = lab
    bearer = {"Authorization": f"Bearer {TOKEN}", "X-Labpipe-User": "S. Script"}
    r = client.post(f"/images/{image_id}/boxes", json={"box": [1000, 1000, 100, 150]}, headers=bearer)
    assert r.status_code == 200, r.text
    with factory() as session:
        assert session.get(AuditEvent, r.json()["event_id"]).actor == "S. Script"
        session.get(Image, image_id).archived_path = str(settings.storage.archive_dir / "gone.png")
        session.commit()
    crops = sorted(settings.storage.crops_dir.rglob("*.png"))
    r = client.post(f"/images/{image_id}/boxes", json={"box": [10, 10, 50, 50]}, headers=bearer)
    assert r.status_code == 400 and "plate file" in r.text
    assert sorted(settings.storage.crops_dir.rglob("*.png")) == crops

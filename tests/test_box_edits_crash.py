"""Crash safety of box edits (issue 15): a technician's resize or split is killed (SIGKILL, as a
power cut or the OOM killer would) in the middle, after its new crop file is written and its rows
are flushed. The plate must then show either the old box with its old crop and classification, or
the new one complete: never a new box with an old crop, a half-made split, or a missing crop file.

The edit runs in a child process through the web app, as the browser sends it; the child kills
itself at the commit, just before or just after it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from records_fixtures import built_lab
from sqlalchemy import select
from test_box_edits import TOKEN, active, plate_file

from labpipe.db.models import AuditEvent, Classification, Image, Specimen
from labpipe.web import create_web_app

pytestmark = pytest.mark.slow

TESTS = Path(__file__).resolve().parent

CHILD = textwrap.dedent(
    """
    import json, os, signal, sys
    sys.path.insert(0, {tests!r})
    from fastapi.testclient import TestClient
    from sqlalchemy.orm import Session
    from records_fixtures import lab_settings, open_lab_db, web_login
    from labpipe.box_edits import NEW_CROPS
    from labpipe.web import create_web_app

    settings = lab_settings({root!r}, **{{"api.token": {token!r}}})
    app = create_web_app(settings, session_factory=open_lab_db(settings))
    client = TestClient(app, base_url="http://localhost", client=("127.0.0.1", 5000), follow_redirects=False)
    csrf = web_login(client, {token!r}, "T. Technician")
    commit = Session.commit

    def dying_commit(self):
        if not self.info.get(NEW_CROPS):  # not the edit's commit (a login's, say)
            return commit(self)
        if {when!r} == "after":
            commit(self)
        os.kill(os.getpid(), signal.SIGKILL)

    Session.commit = dying_commit
    client.post({url!r}, json=dict(csrf=csrf, **json.loads({body!r})))
    sys.exit(3)  # not reached: the commit kills the process
    """
)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[Any, Any, int, Path]]:
    root = tmp_path / "data"
    with built_lab(root, TOKEN, create_web_app) as (settings, factory, _app):
        with factory() as session:
            image = session.scalar(select(Image).where(Image.sample_id == "S1"))
            image.archived_path = str(plate_file(settings, "s1-plate1.png"))
            session.commit()
            image_id = image.id
        yield settings, factory, image_id, root


def _edit_and_die(root: Path, url: str, body: dict[str, Any], when: str) -> None:
    script = CHILD.format(
        tests=str(TESTS), root=str(root), token=TOKEN, url=url, body=json.dumps(body), when=when
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == -9, (
        f"the child should die at the commit: {done.returncode}\n{done.stderr[-2000:]}"
    )


def _snapshot(session: Any, settings: Any, image_id: int) -> dict[str, Any]:
    """What a person sees of the plate: each box, its crop file (which must exist) and its calls."""
    boxes = {}
    for sid in active(session, image_id):
        s = session.get(Specimen, sid)
        crop = settings.storage.crops_dir / s.crop_path if s.crop_path else None
        assert crop is None or crop.is_file(), f"specimen {sid} points at a missing crop {crop}"
        calls = session.scalars(select(Classification).where(Classification.specimen_id == sid)).all()
        boxes[sid] = ((s.x, s.y, s.w, s.h), s.crop_path, sorted((c.model_id, c.family) for c in calls))
    events = session.scalars(select(AuditEvent.action).where(AuditEvent.action.like("box_%"))).all()
    return {"boxes": boxes, "events": sorted(events)}


@pytest.mark.parametrize("edit", ["resize", "split"])
@pytest.mark.parametrize("when", ["before", "after"])
def test_an_edit_killed_at_its_commit_leaves_the_old_box_or_the_new_one_whole(
    lab, edit: str, when: str
) -> None:
    settings, factory, image_id, root = lab
    with factory() as session:
        target = next(iter(active(session, image_id)))
        s = session.get(Specimen, target)
        x, y, w, h = s.x, s.y, s.w, s.h
        before = _snapshot(session, settings, image_id)
    if edit == "resize":
        url, body = f"/specimens/{target}/box", {"box": [x, y, w + 20, h + 20]}
    else:
        url, body = (
            f"/specimens/{target}/box/split",
            {"boxes": [[x, y, w, h // 2], [x, y + h // 2, w, h - h // 2]]},
        )
    _edit_and_die(root, url, body, when)

    with factory() as session:
        after = _snapshot(session, settings, image_id)
    if when == "before":
        assert after == before, "a crash before the commit must leave the plate exactly as it was"
        return
    # killed just after the commit: the whole edit is there, with crops cut and classified
    assert after["events"] == sorted([*before["events"], f"box_{edit}" if edit == "split" else "box_edit"])
    new = {k: v for k, v in after["boxes"].items() if k not in before["boxes"]}
    changed = after["boxes"][target]
    assert changed[1] != before["boxes"][target][1] and changed[2], "a new crop, classified"
    if edit == "resize":
        assert changed[0] == (x, y, w + 20, h + 20) and not new
    else:
        assert changed[0] == (x, y, w, h // 2) and [b[0] for b in new.values()] == [
            (x, y + h // 2, w, h - h // 2)
        ]
        assert all(crop and calls for _, crop, calls in new.values())
    assert os.path.isfile(settings.storage.crops_dir / changed[1])

"""A person's work survives re-processing: verifications, box edits, wells and barcode links.

Each scenario runs the real pipeline (`Pipeline.process_file`, the daemon's jobs run inline) on a
small synthetic plate, adds the work a lab would add, processes the same bytes again and checks
that nothing a person did was lost, renumbered or silently deleted, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from labpipe.audit import AuditError, edit_box, events_for, undo
from labpipe.cli.main import cli
from labpipe.config import load_settings
from labpipe.db.models import AuditEvent, BarcodeLink, DetectionState, Image, Specimen, Verification
from labpipe.db.session import make_engine, make_session_factory
from labpipe.pipeline import Pipeline
from labpipe.reconcile import StoredBox, reconcile
from labpipe.review import record_verification
from labpipe.synth.plate import PlateSpec, write_plate

SPEC = PlateSpec(
    width=1200, height=1200, n_specimens=8, n_touching_pairs=0, n_debris=0, um_per_px=10.0, seed=11
)


@pytest.fixture(scope="module")
def plate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("human-work") / "plate.tif"
    write_plate(SPEC, path)
    return path


def _pipeline(root: Path, db_url: str | None = None) -> Pipeline:
    settings = load_settings(overrides={"storage.root": root, "database.url": db_url}, environ={})
    return Pipeline.from_settings(settings)


def _add_lab_work(pipe: Pipeline, image_id: int) -> dict[str, object]:
    """Two verifications, a two-well plate layout and two BOLD barcode links, as a lab adds them."""
    with pipe.session_factory() as session:
        ids = list(
            session.scalars(
                select(Specimen.id).where(Specimen.image_id == image_id).order_by(Specimen.index_in_image)
            )
        )
        assert len(ids) >= 6, "the plate must give at least six specimens"
        record_verification(session, ids[0], "corrected", family="Staphylinidae", verified_by="Ana")
        record_verification(session, ids[1], "not_specimen", verified_by="Ana")
        session.add_all(
            [
                BarcodeLink(specimen_id=ids[2], plate="LP0001", well="A01", sampleid="LP0001-A01"),
                BarcodeLink(specimen_id=ids[3], plate="LP0001", well="B01", sampleid="LP0001-B01"),
                BarcodeLink(
                    specimen_id=ids[4], sampleid="CY-04", processid="CYPR004-26", bin_uri="BOLD:AAA0004"
                ),
                BarcodeLink(
                    specimen_id=ids[5], sampleid="CY-05", processid="CYPR005-26", bin_uri="BOLD:AAA0005"
                ),
            ]
        )
        session.commit()
    return {"ids": ids}


def _snapshot(pipe: Pipeline, image_id: int) -> dict[str, object]:
    with pipe.session_factory() as session:
        specimens = {
            s.id: (s.index_in_image, s.detection_state)
            for s in session.scalars(select(Specimen).where(Specimen.image_id == image_id))
        }
        verifications = sorted(
            (v.specimen_id, v.status, v.family, v.verified_by) for v in session.scalars(select(Verification))
        )
        links = sorted(
            (b.specimen_id, b.plate, b.well, b.processid, b.bin_uri)
            for b in session.scalars(select(BarcodeLink))
        )
    return {"specimens": specimens, "verifications": verifications, "links": links}


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_reprocessing_keeps_verifications_wells_and_barcode_links(
    plate: Path, tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    db_url = request.getfixturevalue("pg_url") if backend == "postgresql" else None
    with _pipeline(tmp_path / "data", db_url) as pipe:
        first = pipe.process_file(plate, sample_id="HW-1")
        _add_lab_work(pipe, first["image_id"])
        before = _snapshot(pipe, first["image_id"])
        again = pipe.process_file(plate, sample_id="HW-1")
        after = _snapshot(pipe, first["image_id"])
        assert again["image_id"] == first["image_id"]
        # same ids, same numbers on the plate, every verification, well and barcode link still there
        assert after == before
        assert len(after["verifications"]) == 2 and len(after["links"]) == 4
        assert again["reconciliation"]["matched"] == len(first["specimens"])
        assert again["reconciliation"]["deleted"] == 0 and again["reconciliation"]["new"] == 0
        with pipe.session_factory() as session:
            (event,) = session.scalars(select(AuditEvent).where(AuditEvent.action == "reprocess")).all()
            assert event.image_id == first["image_id"] and event.after["matched"] == len(first["specimens"])
            # every crop a specimen points at exists; the replaced crops are gone
            crops = {pipe.crops_dir / s.crop_path for s in session.scalars(select(Specimen))}
            assert all(p.is_file() for p in crops)
            assert set(pipe.crops_dir.rglob("*.png")) == crops


def test_reviewed_specimen_not_found_again_is_kept_and_flagged_unreviewed_one_deleted(
    plate: Path, tmp_path: Path
) -> None:
    with _pipeline(tmp_path / "data") as pipe:
        first = pipe.process_file(plate, sample_id="HW-2")
        reviewed, plain = first["specimens"][0]["id"], first["specimens"][1]["id"]
        with pipe.session_factory() as session:
            record_verification(session, reviewed, "confirmed", verified_by="Ana")
            # The stored boxes drift off their animals (as a re-run with another detector would see
            # them): the re-run cannot match these two and finds the animals as new specimens.
            for specimen_id in (reviewed, plain):
                row = session.get(Specimen, specimen_id)
                row.x, row.y, row.w, row.h = 1, 1, 12, 12
            session.commit()
        again = pipe.process_file(plate, sample_id="HW-2")
        assert again["reconciliation"]["not_redetected"] == [{"id": reviewed, "work": ["verification"]}]
        assert again["reconciliation"]["deleted"] == 1 and again["reconciliation"]["new"] == 2
        with pipe.session_factory() as session:
            kept = session.get(Specimen, reviewed)
            assert kept is not None and kept.detection_state == DetectionState.NOT_REDETECTED.value
            assert [v.status for v in kept.verifications] == ["confirmed"]
            assert session.get(Specimen, plain) is None
            new_ids = [
                s["id"] for s in again["specimens"] if s["id"] not in {x["id"] for x in first["specimens"]}
            ]
            assert len(new_ids) == 2 and min(new_ids) > max(
                s["id"] for s in first["specimens"]
            )  # ids not reused
            numbers = [
                s.index_in_image
                for s in session.scalars(select(Specimen).where(Specimen.image_id == kept.image_id))
            ]
            assert len(numbers) == len(set(numbers))


def test_dropping_reviewed_specimens_needs_the_flag_and_reports_what_it_dropped(
    plate: Path, tmp_path: Path
) -> None:
    runner = CliRunner()
    base = ["--data-dir", str(tmp_path / "data")]
    out = runner.invoke(cli, [*base, "process", str(plate), "--sample", "HW-3", "--json"])
    assert out.exit_code == 0, out.output
    settings = load_settings(overrides={"storage.root": tmp_path / "data"}, environ={})
    factory = make_session_factory(make_engine(settings.database_url))
    with factory() as session:
        target = session.scalars(select(Specimen).order_by(Specimen.index_in_image)).first()
        record_verification(session, target.id, "corrected", family="Carabidae", verified_by="Ben")
        session.add(BarcodeLink(specimen_id=target.id, plate="LP0002", well="C03", sampleid="LP0002-C03"))
        target.x, target.y, target.w, target.h = 1, 1, 12, 12
        session.commit()
        target_id = target.id
    # without the flag the reviewed specimen is kept and flagged, and the JSON says so
    out = runner.invoke(cli, [*base, "process", str(plate), "--sample", "HW-3", "--json"])
    (record,) = __import__("json").loads(out.stdout)
    assert record["reconciliation"]["not_redetected"] == [{"id": target_id, "work": ["verification", "well"]}]
    # with it, the specimen is dropped, reported, and its well record survives unlinked
    out = runner.invoke(cli, [*base, "process", str(plate), "--sample", "HW-3", "--drop-reviewed", "--json"])
    assert out.exit_code == 0, out.output
    (record,) = __import__("json").loads(out.stdout)
    assert record["reconciliation"]["dropped"] == [{"id": target_id, "work": ["verification", "well"]}]
    with factory() as session:
        assert session.get(Specimen, target_id) is None
        link = session.scalar(select(BarcodeLink).where(BarcodeLink.well == "C03"))
        assert link is not None and link.specimen_id is None
        (event,) = session.scalars(select(AuditEvent).where(AuditEvent.action == "drop_reviewed")).all()
        assert event.specimen_id == target_id
        assert event.before["verifications"][0]["family"] == "Carabidae"
        assert event.before["barcode_links"][0]["well"] == "C03"


def test_a_box_set_by_hand_survives_reprocessing_and_can_be_undone(plate: Path, tmp_path: Path) -> None:
    with _pipeline(tmp_path / "data") as pipe:
        first = pipe.process_file(plate, sample_id="HW-4")
        spec = first["specimens"][0]
        x, y, w, h = spec["bbox"]
        mine = (x + 2, y + 2, w - 3, h - 3)
        with pipe.session_factory() as session:
            with pytest.raises(AuditError, match="leaves the image"):
                edit_box(session, spec["id"], (x, y, 99999, h), edited_by="Ana")
            event = edit_box(session, spec["id"], mine, edited_by="Ana", note="legs cut off")
            session.commit()
            event_id = event.id
        pipe.process_file(plate, sample_id="HW-4")
        with pipe.session_factory() as session:
            row = session.get(Specimen, spec["id"])
            assert (row.x, row.y, row.w, row.h) == mine and row.box_edited_by == "Ana"
            trail = events_for(session, spec["id"])
            assert [e.action for e in trail] == ["box_edit"]
            assert trail[0].before["box"] == [x, y, w, h] and trail[0].after["box"] == list(mine)
            undo(session, event_id, undone_by="Ben")
            session.commit()
            row = session.get(Specimen, spec["id"])
            assert (row.x, row.y, row.w, row.h) == (x, y, w, h) and row.box_edited_by is None
            with pytest.raises(AuditError, match="already undone"):
                undo(session, event_id, undone_by="Ben")


def test_specimen_ids_are_never_reused_on_sqlite(tmp_path: Path) -> None:
    settings = load_settings(overrides={"storage.root": tmp_path / "data"}, environ={})
    from labpipe.db.database import open_database

    factory = open_database(settings.database_url)
    with factory() as session:
        image = Image(source_path="x.tif", file_name="x.tif", content_hash="0" * 64, size_bytes=1)
        session.add(image)
        session.flush()
        rows = [
            Specimen(
                image_id=image.id,
                index_in_image=i,
                x=0,
                y=0,
                w=1,
                h=1,
                score=1.0,
                detector_version="d",
                crop_path="",
                crop_size=1,
            )
            for i in (1, 2, 3)
        ]
        session.add_all(rows)
        session.commit()
        highest = max(r.id for r in rows)
        session.delete(rows[-1])
        session.commit()
        again = Specimen(
            image_id=image.id,
            index_in_image=3,
            x=0,
            y=0,
            w=1,
            h=1,
            score=1.0,
            detector_version="d",
            crop_path="",
            crop_size=1,
        )
        session.add(again)
        session.commit()
        assert again.id > highest
        assert session.scalar(select(func.count(Specimen.id))) == 3


def test_reconcile_matches_one_to_one_by_best_overlap() -> None:
    stored = [StoredBox(1, 1, (0, 0, 10, 10)), StoredBox(2, 2, (4, 0, 10, 10), ("verification",))]
    # one new box overlaps both stored ones; the better overlap wins, the other is not matched twice
    result = reconcile(stored, [(4, 0, 10, 10)])
    assert result.matched == {0: 2} and result.deleted == [1] and result.kept == []
    # a weak overlap (IoU 0.33) is no match: the reviewed one is kept and flagged, a new specimen made
    result = reconcile(stored[1:], [(9, 0, 10, 10)])
    assert result.matched == {} and result.new == [0] and result.kept == [2]

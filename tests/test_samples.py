"""Samples: a CSV import that checks every row, names the row and column of each error, and lists."""

from __future__ import annotations

import datetime as dt
import io
import json
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from records_fixtures import add_image, lab_settings, open_lab_db
from sqlalchemy import func, select

from labpipe.cli.main import cli
from labpipe.db.models import Sample
from labpipe.record import ensure_sample
from labpipe.samples import SampleImportError, import_samples, parse_samples_csv, sample_detail

GOOD = """sample_id,site,habitat,latitude,longitude,collection_date,collector,method,fraction,notes
CY-2024-017,Troodos,pine litter,34.93,32.86,2024-05-17,A. Collector,sifting,>2 mm,"dry, windy"
CY-2024-018,Paphos,garrigue,34.77,32.42,2024-06-02,B. Trapper,pitfall trap,,
CY-2024-019,Akamas,,,,2024-06-03,,Berlese funnel,,
"""

BAD = """sample_id,site,latitude,longitude,collection_date
S-1,Troodos,34.93,32.86,2024-05-17
S-2,Troodos,134.93,32.86,2024-05-17
S-3,Troodos,34.93,,17/05/2024
S-1,Troodos,34.93,32.86,2024-05-18
S-5,Troodos,"34,93",32.86,2024-05-17
"""


def _db(tmp_path: Path):
    settings = lab_settings(tmp_path / "data")
    return settings, open_lab_db(settings)


def test_good_file_is_imported_field_by_field(tmp_path: Path) -> None:
    _, factory = _db(tmp_path)
    with factory() as session:
        report = import_samples(session, GOOD, "samples.csv")
        session.commit()
        assert report.created == ["CY-2024-017", "CY-2024-018", "CY-2024-019"]
    expected = pd.read_csv(io.StringIO(GOOD), dtype=str, keep_default_na=False)
    with factory() as session:
        for _, row in expected.iterrows():
            sample = session.get(Sample, row["sample_id"])
            assert sample is not None
            for column in ("site", "habitat", "collector", "method", "fraction", "notes"):
                assert getattr(sample, column) == (row[column] or None), column
            for column in ("latitude", "longitude"):
                assert getattr(sample, column) == (float(row[column]) if row[column] else None)
            assert sample.collection_date == dt.date.fromisoformat(row["collection_date"])
    factory.kw["bind"].dispose()


def test_every_bad_row_is_reported_with_row_and_column_and_nothing_is_imported(tmp_path: Path) -> None:
    _, factory = _db(tmp_path)
    with factory() as session:
        with pytest.raises(SampleImportError) as info:
            import_samples(session, BAD, "lab.csv")
        session.rollback()
        assert session.scalar(select(func.count()).select_from(Sample)) == 0
    problems = {(e.row, e.column) for e in info.value.errors}
    assert problems == {
        (3, "latitude"),  # 134.93 is outside -90..90
        (4, "collection_date"),  # not YYYY-MM-DD
        (4, "longitude"),  # latitude without longitude
        (5, "sample_id"),  # S-1 again
        (6, "latitude"),  # decimal comma
    }
    message = info.value.message
    assert "lab.csv, row 3, column latitude" in message and "--skip-bad" in message
    assert "YYYY-MM-DD" in message and "already on row 2" in message and "decimal comma" in message
    factory.kw["bind"].dispose()


def test_skip_bad_imports_the_good_rows_and_reports_the_rest(tmp_path: Path) -> None:
    _, factory = _db(tmp_path)
    with factory() as session:
        report = import_samples(session, BAD, "lab.csv", skip_bad=True)
        session.commit()
        assert report.created == ["S-1"]
        assert sorted({e.row for e in report.skipped}) == [3, 4, 5, 6]
        assert [s.id for s in session.scalars(select(Sample))] == ["S-1"]
    factory.kw["bind"].dispose()


def test_header_variants_semicolons_and_a_byte_order_mark_are_understood() -> None:
    text = (
        "\ufeffSample ID;Lat;Lon;Date;Collectors;Sampling method\nLL-1;34.5;33.1;2024-04-01;C. D.;sifting\n"
    )
    rows, errors = parse_samples_csv(text, "excel.csv")
    assert errors == []
    assert rows[0]["id"] == "LL-1" and rows[0]["latitude"] == 34.5 and rows[0]["method"] == "sifting"
    assert rows[0]["collection_date"] == dt.date(2024, 4, 1) and rows[0]["collector"] == "C. D."


def test_unknown_columns_and_a_missing_id_column_are_refused_naming_them() -> None:
    with pytest.raises(SampleImportError, match=r"'elevation'.*known columns"):
        parse_samples_csv("sample_id,elevation\nS1,300\n")
    with pytest.raises(SampleImportError, match="no sample id column"):
        parse_samples_csv("site,latitude\nTroodos,34\n")


def test_dates_in_the_future_and_overlong_text_are_errors() -> None:
    text = f"sample_id,collection_date,site\nS1,2999-01-01,x\nS2,2024-01-01,{'y' * 300}\n"
    _, errors = parse_samples_csv(text, today=dt.date(2024, 6, 1))
    assert {(e.row, e.column) for e in errors} == {(2, "collection_date"), (3, "site")}


def test_a_sample_created_by_its_images_gets_its_metadata_on_import(tmp_path: Path) -> None:
    settings, factory = _db(tmp_path)
    with factory() as session:
        ensure_sample(session, "CY-2024-017")  # what the pipeline does when a plate arrives first
        add_image(session, settings, "CY-2024-017", [], "plate.tif")
        session.commit()
        report = import_samples(session, GOOD, "samples.csv")
        session.commit()
        assert report.updated == ["CY-2024-017"] and len(report.created) == 2
        detail = sample_detail(session, "CY-2024-017")
        assert detail["site"] == "Troodos" and [i["file_name"] for i in detail["images"]] == ["plate.tif"]
        again = import_samples(session, GOOD, "samples.csv")
        assert len(again.unchanged) == 3 and not again.created and not again.updated
    factory.kw["bind"].dispose()


def test_cli_import_list_and_show(tmp_path: Path) -> None:
    base = ["--data-dir", str(tmp_path / "data")]
    good, bad = tmp_path / "good.csv", tmp_path / "bad.csv"
    good.write_text(GOOD)
    bad.write_text(BAD)
    run = CliRunner()
    out = run.invoke(cli, [*base, "samples", "import", str(bad)])
    assert out.exit_code == 1 and "row 3, column latitude" in out.output
    out = run.invoke(cli, [*base, "samples", "import", str(bad), "--skip-bad", "--json"])
    assert out.exit_code == 0 and json.loads(out.stdout)["created"] == ["S-1"]
    out = run.invoke(cli, [*base, "samples", "import", str(good)])
    assert out.exit_code == 0 and "3 new" in out.stdout
    listed = json.loads(run.invoke(cli, [*base, "samples", "list", "--json"]).stdout)
    assert [s["sample_id"] for s in listed] == ["CY-2024-017", "CY-2024-018", "CY-2024-019", "S-1"]
    assert listed[0]["images"] == 0 and listed[0]["latitude"] == 34.93
    shown = json.loads(run.invoke(cli, [*base, "samples", "show", "CY-2024-018", "--json"]).stdout)
    assert shown["method"] == "pitfall trap" and shown["images"] == []
    text = run.invoke(cli, [*base, "samples", "show", "CY-2024-018"]).stdout
    assert "pitfall trap" in text
    missing = run.invoke(cli, [*base, "samples", "show", "NOPE"])
    assert missing.exit_code == 2 and "NOPE: no such sample" in missing.output
    absent = run.invoke(cli, [*base, "samples", "import", str(tmp_path / "absent.csv")])
    assert absent.exit_code == 2 and "absent.csv: no such file" in absent.output


def test_cli_lists_images_with_their_status(tmp_path: Path) -> None:
    settings, factory = _db(tmp_path)
    with factory() as session:
        ensure_sample(session, "S1")
        add_image(session, settings, "S1", [], "a.tif")
        add_image(session, settings, None, [], "loose.tif")
        session.commit()
    factory.kw["bind"].dispose()
    base = ["--data-dir", str(settings.storage.root)]
    rows = json.loads(CliRunner().invoke(cli, [*base, "samples", "images", "--json"]).stdout)
    assert [(r["file_name"], r["sample_id"], r["status"]) for r in rows] == [
        ("a.tif", "S1", "done"),
        ("loose.tif", None, "done"),
    ]
    loose = json.loads(CliRunner().invoke(cli, [*base, "samples", "images", "--unassigned", "--json"]).stdout)
    assert [r["file_name"] for r in loose] == ["loose.tif"]
    text = CliRunner().invoke(cli, [*base, "samples", "images", "--sample", "S1"]).stdout
    assert "a.tif" in text and "loose.tif" not in text

"""Issue 13 hardening that is not about the daemon's processes: spreadsheet formulas in exports and
sample ids that could become one."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from click.testing import CliRunner
from records_fixtures import S2_SPECS, add_image, lab_settings, open_lab_db

from labpipe.cli.main import cli
from labpipe.db.models import Sample
from labpipe.reports.counts import count_families, counts_to_csv, matrix_to_csv
from labpipe.samples import parse_samples_csv

EVIL = '=HYPERLINK("http://evil.example","x")'


def test_a_sample_named_like_a_formula_is_text_in_every_csv_export(tmp_path: Path) -> None:
    """A sample row from before the id rule existed (or typed into the database) stays inert."""
    settings = lab_settings(tmp_path / "data")
    factory = open_lab_db(settings)
    with factory() as session:
        session.add(Sample(id=EVIL, site="@SUM(1)"))
        session.flush()
        add_image(session, settings, EVIL, S2_SPECS, "evil.tif")
        session.commit()
        table = count_families(session)
    for text in (counts_to_csv(table), counts_to_csv(table, expected=True), matrix_to_csv(table)):
        cells = [c for line in text.splitlines() for c in line.split(",")]
        assert not [c for c in cells if c.lstrip('"').startswith(("=", "+", "-", "@"))], text
        assert "'=HYPERLINK(" in text
    factory.kw["bind"].dispose()


def test_the_bold_spreadsheet_stores_a_formula_looking_id_as_text(tmp_path: Path) -> None:
    from openpyxl import Workbook, load_workbook

    from labpipe.barcoding.bold import _write_sheet

    book = Workbook()
    _write_sheet(book.active, ["Sample ID", "Field ID"], [{"Sample ID": EVIL, "Field ID": "LP-01"}])
    book.save(tmp_path / "s.xlsx")
    cell = load_workbook(tmp_path / "s.xlsx").active["A2"]
    assert cell.data_type == "s" and cell.value == EVIL  # the exact text, never evaluated


@pytest.mark.parametrize("bad", [EVIL, "+1", "-x", "@cmd", "a/b", "x" * 65, "tab\there"])
def test_sample_ids_that_could_run_as_formulas_or_break_folders_are_refused(bad: str) -> None:
    buffer = io.StringIO()
    csv.writer(buffer).writerows([["sample_id", "site"], [bad, "Troodos"]])
    rows, errors = parse_samples_csv(buffer.getvalue(), "s.csv")
    assert not rows and errors and "not a valid sample id" in errors[0].message


def test_process_refuses_a_formula_sample_id_before_reading_anything(tmp_path: Path) -> None:
    from labpipe.synth.plate import PlateSpec, write_plate

    plate = tmp_path / "p.tif"
    write_plate(
        PlateSpec(width=800, height=800, n_specimens=1, n_touching_pairs=0, n_debris=0, seed=1), plate
    )
    out = CliRunner().invoke(
        cli, ["--data-dir", str(tmp_path / "d"), "process", str(plate), "--sample", EVIL]
    )
    assert out.exit_code != 0 and "not a valid sample id" in out.output
    assert plate.is_file() and "Traceback" not in out.output

"""Barcoding: 96-well layouts, manifests and picking sheets, BOLD results linked by Sample ID, agreement."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from records_fixtures import build_lab, lab_settings, open_lab_db
from sqlalchemy import select
from sqlalchemy.orm import Session

from labpipe.barcoding.agreement import agreement_summary, barcode_agreement, compare_families
from labpipe.barcoding.code128 import WIDTHS, code128_modules, code128_svg, code128_values
from labpipe.barcoding.ids import check_pattern, specimen_code, specimen_codes
from labpipe.barcoding.import_results import import_barcodes, normalise_column, parse_bold_table
from labpipe.barcoding.plates import (
    assign_wells,
    layout_plates,
    manifest_csv,
    parse_controls,
    parse_well,
    picking_sheet_html,
    plate_manifest,
    plate_sheet,
    plate_wells,
)
from labpipe.cli.main import cli
from labpipe.config import BoldConfig
from labpipe.db.models import Agreement, BarcodeLink, Image, Specimen, Verification
from labpipe.errors import ConfigError
from labpipe.samples import NotFoundError

PATTERN = BoldConfig().sample_id_pattern

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SCREENSHOTS = PROJECT_ROOT / "test-artifacts" / "screenshots"
CHROMIUM = Path(os.environ.get("LABPIPE_CHROMIUM", "/usr/bin/chromium"))

# --- pure: wells and plates -----------------------------------------------------------------------


def test_column_major_order_fills_a1_b1_to_h1_then_a2() -> None:
    wells = plate_wells("column", ())
    assert wells[:9] == ["A01", "B01", "C01", "D01", "E01", "F01", "G01", "H01", "A02"]
    assert wells[-1] == "H12" and len(wells) == 96


def test_row_major_order_fills_a1_to_a12_then_b1() -> None:
    wells = plate_wells("row", ())
    assert wells[11:13] == ["A12", "B01"]


def test_control_wells_stay_empty() -> None:
    wells = plate_wells()  # default controls G12 and H12
    assert len(wells) == 94 and "G12" not in wells and "H12" not in wells and wells[-1] == "F12"
    assert "A05" not in plate_wells("column", "A5, a05")


def test_wells_are_read_in_either_form_and_bad_ones_are_named() -> None:
    assert parse_well("A1") == parse_well("a01") == (0, 0)
    assert parse_controls("g12,H12") == ("G12", "H12")
    for bad in ("I1", "A13", "A0", "12"):
        with pytest.raises(ValueError, match=bad):
            parse_well(bad)
    with pytest.raises(ValueError, match="order"):
        plate_wells("diagonal")


def test_more_specimens_than_wells_continue_on_the_next_plate() -> None:
    items = list(range(100))
    placed = assign_wells(items, (f"P{i}" for i in range(1, 10)))
    assert [a.plate for a in placed].count("P1") == 94 and placed[94].plate == "P2"
    assert placed[94].well == "A01" and placed[-1].well == "F01"
    assert [a.item for a in placed] == items


def test_sample_id_pattern_must_be_unique_per_specimen() -> None:
    assert specimen_code("CY 17", 42, 7, 900, PATTERN) == "CY_17-00042-007"
    assert specimen_code(None, 1, 1, 1, PATTERN) == "NOSAMPLE-00001-001"
    for bad in ("{sample}", "{sample}-{index}", "{sample}-{colour}-{index}", "{sample"):
        with pytest.raises(ConfigError):
            check_pattern(bad)


# --- pure: BOLD tables --------------------------------------------------------------------------------


def test_bold_column_variants_map_to_one_name() -> None:
    assert normalise_column("processid") == normalise_column("Process ID") == "processid"
    assert (
        normalise_column("sampleid")
        == normalise_column("Sample ID")
        == normalise_column("sample_id")
        == "sampleid"
    )
    assert normalise_column("bin_uri") == normalise_column("BIN") == normalise_column("BIN URI") == "bin_uri"
    assert normalise_column("family_name") == normalise_column("Family") == "family"
    assert normalise_column("order_name") == "order" and normalise_column("class_name") == "class"
    assert (
        normalise_column("nucleotides")
        == normalise_column("nuc")
        == normalise_column("Sequence")
        == "nucleotides"
    )
    assert normalise_column("markercode") == normalise_column("marker_code") == "marker"
    assert normalise_column("family_taxID") is None and normalise_column("lifestage") is None


def test_a_table_without_sample_ids_is_refused_listing_its_columns() -> None:
    from labpipe.barcoding.import_results import BarcodeImportError

    with pytest.raises(BarcodeImportError, match=r"no Sample ID column.*processid"):
        parse_bold_table("processid\tbin_uri\nX-1\tBOLD:A\n")


# --- with the database --------------------------------------------------------------------------------


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[object, Session]]:
    settings = lab_settings(tmp_path / "data")
    factory = open_lab_db(settings)
    with factory() as session:
        build_lab(session, settings)
        yield settings, session
    factory.kw["bind"].dispose()


def _codes(session: Session, sample: str) -> dict[int, str]:
    rows = session.execute(
        select(Specimen.id, Specimen.index_in_image, Image.id).join(Image).where(Image.sample_id == sample)
    ).all()
    return {sid: specimen_code(sample, image_id, index, sid, PATTERN) for sid, index, image_id in rows}


def test_layout_puts_counted_specimens_in_wells_and_records_them(lab) -> None:
    _, session = lab
    result = layout_plates(session, "S1", pattern=PATTERN)
    session.commit()
    # S1 counts 5 specimens (2 Carabidae, 2 Curculionidae, 1 Formicidae); rejected and excluded stay out
    assert result.plates == ["S1-P01"] and [r.well for r in result.placed] == [
        "A01",
        "B01",
        "C01",
        "D01",
        "E01",
    ]
    assert [r.index_in_image for r in result.placed] == [1, 2, 4, 7, 8]
    links = session.scalars(select(BarcodeLink).order_by(BarcodeLink.well)).all()
    codes = _codes(session, "S1")
    assert [(link.plate, link.well, link.sampleid) for link in links] == [
        ("S1-P01", r.well, codes[r.specimen_id]) for r in result.placed
    ]
    again = layout_plates(session, "S1", pattern=PATTERN, include_rejected=True)
    session.commit()
    assert len(again.already_on_plates) == 5 and again.plates == ["S1-P02"]
    assert [r.index_in_image for r in again.placed] == [3, 5]  # the rejected ones; never the excluded one


def test_family_filter_and_include_rejected(lab) -> None:
    _, session = lab
    only = layout_plates(session, "S1", pattern=PATTERN, family="carabidae", dry_run=True)
    assert [r.index_in_image for r in only.placed] == [1, 2]
    with_rejected = layout_plates(
        session, "S1", pattern=PATTERN, family="Carabidae", include_rejected=True, dry_run=True
    )
    assert [r.index_in_image for r in with_rejected.placed] == [1, 2, 3, 5]
    assert session.scalar(select(BarcodeLink.id)) is None  # dry run records nothing
    with pytest.raises(NotFoundError, match="NOPE"):
        layout_plates(session, "NOPE", pattern=PATTERN)


def test_manifest_lists_every_well_and_reads_back_with_pandas(lab) -> None:
    settings, session = lab
    result = layout_plates(session, "S2", pattern=PATTERN, order="row", controls="A2,H12")
    session.commit()
    assert [r.well for r in result.placed] == ["A01", "A03", "A04"]  # A2 is a control
    rows = plate_manifest(session, ["S2-P01"], controls="A2,H12", order="row")
    frame = pd.read_csv(pd.io.common.StringIO(manifest_csv(rows)), dtype=str, keep_default_na=False)
    assert list(frame["well"]) == ["A01", "A02", "A03", "A04", "H12"]
    assert list(frame["content"]) == ["specimen", "control", "specimen", "specimen", "control"]
    specimens = frame[frame["content"] == "specimen"]
    for _, row in specimens.iterrows():
        specimen = session.get(Specimen, int(row["specimen_id"]))
        assert row["sample_id"] == specimen_code(
            "S2", specimen.image_id, specimen.index_in_image, specimen.id, PATTERN
        )
        assert row["crop_path"] == specimen.crop_path and int(row["x"]) == specimen.x
        assert row["image_file"] == "s2-plate1.tif" and row["sample"] == "S2"
    assert list(specimens["family"]) == ["Formicidae", "Formicidae", "Apidae"]
    page = picking_sheet_html(rows, settings.storage.crops_dir, 64)
    assert page.count("data:image/png;base64,") == 2 * 3  # grid + pick list, every specimen
    for code in specimens["sample_id"]:
        assert code in page
    assert page.count("CONTROL") == 2 and "<table" in page


def test_cli_layout_writes_manifest_and_picking_sheet(lab, tmp_path: Path) -> None:
    settings, _ = lab
    base = ["--data-dir", str(settings.storage.root)]
    out = CliRunner().invoke(
        cli, [*base, "plates", "layout", "--sample", "S1", "--out", str(tmp_path / "p"), "--json"]
    )
    assert out.exit_code == 0, out.output
    result = json.loads(out.stdout)
    assert result["plates"] == ["S1-P01"] and result["placed"] == 5
    manifest = pd.read_csv(tmp_path / "p" / "S1-P01.manifest.csv", keep_default_na=False)
    assert len(manifest) == 5 + 2  # five specimens and the two control wells
    assert (tmp_path / "p" / "S1-P01.picking.html").read_text().count("S1-") >= 5
    listed = json.loads(CliRunner().invoke(cli, [*base, "plates", "list", "--json"]).stdout)
    assert listed == [{"plate": "S1-P01", "wells": 5, "samples": ["S1"], "processed": 0, "dna_family": 0}]
    again = CliRunner().invoke(cli, [*base, "plates", "sheet", "S1-P01", "--out", str(tmp_path / "q")])
    assert (
        again.exit_code == 0
        and (tmp_path / "q" / "S1-P01.manifest.csv").read_text()
        == (tmp_path / "p" / "S1-P01.manifest.csv").read_text()
    )
    bad = CliRunner().invoke(
        cli, [*base, "plates", "layout", "--sample", "S2", "--controls", "Z9", "--dry-run"]
    )
    assert bad.exit_code == 2 and "Z9" in bad.output


# --- Code 128 plate labels ---------------------------------------------------------------------------


def test_code128_matches_known_encodings() -> None:
    # Start B, stop and the value-0 symbol as printed in every Code 128 table (ISO/IEC 15417, table 1)
    assert code128_modules(" ")[:22] == "11010010000" + "11011001100"
    assert code128_modules(" ").endswith("1100011101011")
    # "A" (value 33), check symbol (104 + 33) mod 103 = 34, stop: bar by bar
    assert code128_modules("A") == "1101001000010100011000100010110001100011101011"
    # Wikipedia's worked check digit for "PJJ123C" (start A, 103: 878 mod 103 = 54) is one more with
    # start B (104); and the common "abcdef" example in code set B gives 97.
    assert code128_values("PJJ123C")[-2] == 55
    assert code128_values("abcdef")[-2] == 97
    # every symbol: three bars and three spaces, 11 modules (the stop symbol 13)
    assert all(len(w) == 6 and sum(map(int, w)) == 11 for w in WIDTHS[:-1]) and len(WIDTHS) == 107
    assert sum(map(int, WIDTHS[-1])) == 13 and len(set(WIDTHS)) == 107
    with pytest.raises(ValueError, match="cannot encode"):
        code128_values("S1-P01\u00e9")


def test_code128_svg_draws_exactly_the_encoded_bars() -> None:
    svg = code128_svg("S1-P01")
    drawn = ["0"] * (len(code128_modules("S1-P01")) + 20)
    for x, w in re.findall(r'<rect x="(\d+)" y="0" width="(\d+)"', svg):
        drawn[int(x) : int(x) + int(w)] = ["1"] * int(w)
    assert "".join(drawn).strip("0") == code128_modules("S1-P01").strip("0")
    assert 'data-code128="S1-P01"' in svg and ">S1-P01</text>" in svg


# --- rejected specimens: a stated choice ----------------------------------------------------------------


def test_layout_says_how_many_rejected_specimens_it_left_out_or_included(lab, tmp_path: Path) -> None:
    settings, _ = lab
    base = ["--data-dir", str(settings.storage.root)]
    help_text = CliRunner().invoke(cli, [*base, "plates", "layout", "--help"]).output
    assert "--include-rejected / --leave-out-rejected" in help_text
    assert "[default: leave-out-rejected]" in " ".join(help_text.split())
    out = CliRunner().invoke(cli, [*base, "plates", "layout", "--sample", "S1", "--out", str(tmp_path / "p")])
    assert out.exit_code == 0, out.output
    # S1 has 2 rejected specimens (numbers 3 and 5): left out by default, and said so
    assert "rejected specimens: 2 left out (lay them out too with --include-rejected)" in out.output
    sheet = (tmp_path / "p" / "S1-P01.picking.html").read_text()
    assert "Rejected specimens: none on this plate; 2 of sample S1 left out (on no plate)." in sheet
    again = CliRunner().invoke(
        cli,
        [
            *base,
            "plates",
            "layout",
            "--sample",
            "S1",
            "--include-rejected",
            "--out",
            str(tmp_path / "p"),
            "--json",
        ],
    )
    result = json.loads(again.stdout)
    assert (
        result["include_rejected"] and result["rejected_included"] == 2 and result["rejected_left_out"] == 0
    )
    sheet2 = (tmp_path / "p" / "S1-P02.picking.html").read_text()
    assert "Rejected specimens: 2 included on this plate; none of sample S1 left out." in sheet2
    assert sheet2.count('<td class="rejected">') == 2


# --- the printed picking sheet ---------------------------------------------------------------------------


def test_picking_sheet_prints_on_a4_landscape_with_barcode_dish_map_and_one_title(lab) -> None:
    """Printed by chromium (the PDF a technician gets from the browser's print dialog)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright Python package is not installed")
    if not CHROMIUM.is_file():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"chromium not found at {CHROMIUM} (CI=true: the print test must run)")
        pytest.skip(f"chromium not found at {CHROMIUM} (apt-get install -y chromium)")
    settings, session = lab
    layout_plates(session, "S1", pattern=PATTERN)
    session.commit()
    page_html = plate_sheet(session, ["S1-P01"], settings.storage.crops_dir)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox", "--disable-gpu"], headless=True
        )
        try:
            page = browser.new_page(viewport={"width": 1123, "height": 794})
            page.set_content(page_html)
            pdf = page.pdf(prefer_css_page_size=True, print_background=True)
            page.emulate_media(media="print")
            page.screenshot(path=str(SCREENSHOTS / "picking-sheet-print.png"), full_page=True)
            found = page.evaluate(
                """() => ({
                    h1: [...document.querySelectorAll('h1')].map(h => h.textContent),
                    barcode: document.querySelector('header svg.barcode').dataset.code128,
                    barcodeWidth: document.querySelector('header svg.barcode').getBoundingClientRect().width,
                    wells: [...document.querySelectorAll('.dish g.spec')].map(g => g.dataset.well),
                    tags: [...document.querySelectorAll('.dish rect.tag')].map(r => {
                        const b = r.getBoundingClientRect(); return [b.left, b.top, b.right, b.bottom]; }),
                    note: document.querySelector('.rejected-note').textContent,
                })"""
            )
        finally:
            browser.close()
    # A4 landscape (841.9 x 595.3 pt) from @page; header and grid, dish map, pick list: three pages
    sizes = {
        tuple(round(float(v)) for v in m) for m in re.findall(rb"/MediaBox \[0 0 ([\d.]+) ([\d.]+)\]", pdf)
    }
    assert sizes == {(842, 595)}
    assert len(re.findall(rb"/Type /Page\b", pdf)) == 3
    assert found["h1"] == ["Picking sheet · plate S1-P01"]  # once, not once per page or twice in a line
    assert found["barcode"] == "S1-P01" and found["barcodeWidth"] > 100  # about 30 mm at 96 dpi
    assert found["wells"] == ["A01", "B01", "C01", "D01", "E01"]
    tags = found["tags"]
    assert not any(  # well labels of neighbouring specimens never cover each other
        a[0] < b[2] - 0.5 and b[0] < a[2] - 0.5 and a[1] < b[3] - 0.5 and b[1] < a[3] - 0.5
        for i, a in enumerate(tags)
        for b in tags[i + 1 :]
    )
    assert "2 of sample S1 left out" in found["note"]


def _tsv(rows: list[dict[str, str]], header: list[str]) -> str:
    lines = ["\t".join(header)]
    lines += ["\t".join(r.get(h, "") for h in header) for r in rows]
    return "\n".join(lines) + "\n"


def test_bold_results_link_by_sample_id_and_report_unknown_and_duplicates(lab) -> None:
    _, session = lab
    layout = layout_plates(session, "S1", pattern=PATTERN)
    session.commit()
    placed = {r.specimen_id: r.sample_id for r in layout.placed}
    s2 = _codes(session, "S2")  # not on a plate: linked by Sample ID alone
    first, second = list(placed.values())[:2]
    s2_code = next(iter(s2.values()))
    header = ["processid", "sampleid", "bin_uri", "phylum_name", "class_name", "order_name", "family_name",
              "nucleotides", "markercode"]  # fmt: skip
    rows = [
        {"processid": "LP001-24", "sampleid": first, "bin_uri": "BOLD:AAA0001", "phylum_name": "Arthropoda",
         "class_name": "Insecta", "order_name": "Coleoptera", "family_name": "Carabidae",
         "nucleotides": "AACT GG-T", "markercode": "COI-5P"},
        {"processid": "LP002-24", "sampleid": second, "bin_uri": "BOLD:AAA0002",
         "family_name": "Staphylinidae", "markercode": "COI-5P"},
        {"processid": "LP002-24", "sampleid": second, "markercode": "ITS2"},  # another marker: ignored
        {"processid": "LP003-24", "sampleid": s2_code, "family_name": "Formicidae", "markercode": "COI-5P"},
        {"processid": "LP004-24", "sampleid": "S9-00001-001", "markercode": "COI-5P"},
        {"processid": "LP005-24", "sampleid": "DUP-1", "markercode": "COI-5P"},
        {"processid": "LP006-24", "sampleid": "DUP-1", "markercode": "COI-5P"},
        {"processid": "LP007-24", "sampleid": "", "markercode": "COI-5P"},
    ]  # fmt: skip
    report = import_barcodes(session, _tsv(rows, header), "bold.tsv", pattern=PATTERN)
    session.commit()
    assert sorted(report.updated) == sorted([first, second]) and report.created == [s2_code]
    assert report.unknown == [{"sampleid": "S9-00001-001", "row": 6}]
    assert report.duplicates == [{"sampleid": "DUP-1", "rows": [7, 8]}]
    assert report.missing_sampleid == [9] and report.other_marker == 1
    link = session.scalar(select(BarcodeLink).where(BarcodeLink.sampleid == first))
    assert (link.processid, link.bin_uri, link.dna_family, link.sequence) == (
        "LP001-24",
        "BOLD:AAA0001",
        "Carabidae",
        "AACTGG-T",
    )
    assert link.taxonomy == {
        "phylum": "Arthropoda",
        "class": "Insecta",
        "order": "Coleoptera",
        "family": "Carabidae",
    }
    loose = session.scalar(select(BarcodeLink).where(BarcodeLink.sampleid == s2_code))
    assert loose.plate is None and loose.specimen_id == next(iter(s2))
    again = import_barcodes(session, _tsv(rows, header), "bold.tsv", pattern=PATTERN)
    session.commit()
    assert again.created == [] and len(again.updated) == 3  # idempotent: the same links are updated
    assert len(session.scalars(select(BarcodeLink)).all()) == 5 + 1


def test_bold_v5_style_headers_are_read(lab) -> None:
    _, session = lab
    code = next(iter(_codes(session, "S2").values()))
    text = f"Process ID\tSample ID\tBIN\tFamily\tnuc\nLP9-24\t{code}\tBOLD:ZZZ9999\tFormicidae\tACGT\n"
    report = import_barcodes(session, text, "v5.tsv", pattern=PATTERN, dry_run=True)
    assert report.created == [code] and report.columns["BIN"] == "bin_uri"
    assert session.scalar(select(BarcodeLink.id)) is None  # dry run


def test_agreement_confusion_table_and_review_marks(lab) -> None:
    _, session = lab
    layout = layout_plates(session, "S1", pattern=PATTERN, include_rejected=True)
    session.commit()
    by_index = {r.index_in_image: r for r in layout.placed}
    # 1 Carabidae (DNA agrees), 2 Carabidae (DNA: Staphylinidae), 3 rejected (DNA: Carabidae),
    # 4 verified Curculionidae (DNA: Silphidae), 7 Curculionidae (no DNA family)
    dna = {1: "Carabidae", 2: "Staphylinidae", 3: "Carabidae", 4: "Silphidae", 7: ""}
    text = "sampleid\tfamily_name\n" + "".join(f"{by_index[i].sample_id}\t{f}\n" for i, f in dna.items())
    import_barcodes(session, text, "r.tsv", pattern=PATTERN)
    session.commit()
    report = barcode_agreement(session, "S1")
    session.commit()
    marks = {
        link.sampleid: (link.agreement, link.needs_review) for link in session.scalars(select(BarcodeLink))
    }
    assert marks[by_index[1].sample_id] == ("agree", False)
    assert marks[by_index[2].sample_id] == ("disagree", True)
    assert marks[by_index[3].sample_id] == ("image_rejected", False)
    assert marks[by_index[4].sample_id] == ("disagree", False)  # a person verified it: already reviewed
    assert marks[by_index[7].sample_id] == (None, False)
    summary = report.summary
    assert summary["confusion"] == {
        "Carabidae": {"Carabidae": 1, "rejected": 1},
        "Silphidae": {"Curculionidae": 1},
        "Staphylinidae": {"Carabidae": 1},
    }
    assert summary["overall"]["agreement"] == pytest.approx(1 / 3, abs=1e-4)
    carabidae = next(f for f in summary["families"] if f["family"] == "Carabidae")
    assert (carabidae["n_dna"], carabidae["n_image"], carabidae["n_agree"]) == (2, 2, 1)
    assert [d.sampleid for d in report.disagreements] == sorted(
        [by_index[2].sample_id, by_index[4].sample_id]
    )


def test_agreement_pure_summary_on_tiny_input() -> None:
    assert compare_families("carabidae", "Carabidae") is Agreement.AGREE
    assert compare_families("Carabidae", None) is None
    summary = agreement_summary([("A", "A"), ("A", "B"), (None, "B"), ("B", None)])
    assert summary["overall"] == {
        "compared": 3,
        "agree": 1,
        "disagree": 1,
        "image_rejected": 1,
        "no_dna_family": 1,
        "agreement": 0.5,
    }


def test_cli_barcodes_import_and_agreement(lab, tmp_path: Path) -> None:
    settings, session = lab
    base = ["--data-dir", str(settings.storage.root)]
    run = CliRunner()
    assert (
        run.invoke(cli, [*base, "plates", "layout", "--sample", "S2", "--out", str(tmp_path)]).exit_code == 0
    )
    codes = [link.sampleid for link in session.scalars(select(BarcodeLink).order_by(BarcodeLink.well))]
    tsv = tmp_path / "results.tsv"
    tsv.write_text(
        "processid\tsampleid\tfamily_name\n"
        f"P1\t{codes[0]}\tFormicidae\nP2\t{codes[1]}\tFormicidae\nP3\t{codes[2]}\tFormicidae\nP4\tNOPE\tApidae\n"
    )
    out = run.invoke(cli, [*base, "barcodes", "import", str(tsv)])
    assert out.exit_code == 1 and "unknown Sample ID 'NOPE'" in out.output and "linked 3" in out.output
    out = run.invoke(cli, [*base, "barcodes", "agreement", "--json"])
    assert out.exit_code == 0, out.output
    result = json.loads(out.stdout)
    assert result["confusion"] == {"Formicidae": {"Apidae": 1, "Formicidae": 2}}
    assert result["needs_review"] == 1 and result["disagreements"][0]["image_family"] == "Apidae"
    text = run.invoke(cli, [*base, "barcodes", "agreement", "--sample", "S2"]).stdout
    assert "DNA \\ image" in text and "[review]" in text
    session.expire_all()
    assert session.scalar(select(BarcodeLink).where(BarcodeLink.needs_review.is_(True))).sampleid == codes[2]


def test_specimen_codes_cover_every_specimen_uniquely(lab) -> None:
    _, session = lab
    codes = specimen_codes(session, PATTERN)
    assert len(codes) == len(session.scalars(select(Specimen.id)).all())
    assert len(set(codes.values())) == len(codes)


def test_verification_after_review_clears_the_flag(lab) -> None:
    _, session = lab
    layout = layout_plates(session, "S2", pattern=PATTERN)
    session.commit()
    apidae = next(r for r in layout.placed if r.family == "Apidae")
    import_barcodes(session, f"sampleid\tfamily\n{apidae.sample_id}\tFormicidae\n", "r.tsv", pattern=PATTERN)
    barcode_agreement(session)
    session.commit()
    link = session.scalar(select(BarcodeLink).where(BarcodeLink.sampleid == apidae.sample_id))
    assert link.needs_review
    session.add(
        Verification(specimen_id=apidae.specimen_id, status="corrected", family="Formicidae", verified_by="R")
    )
    session.commit()
    barcode_agreement(session)
    session.commit()
    assert (link.agreement, link.needs_review) == ("agree", False)

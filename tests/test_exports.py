"""Exports read back by independent readers and checked field by field against the database.

Darwin Core Archive: zipfile + ElementTree + csv; CSV and community matrix: pandas; BOLD: openpyxl.
"""

from __future__ import annotations

import csv
import datetime as dt
import html
import io
import json
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from openpyxl import load_workbook
from records_fixtures import MODEL, build_lab, lab_settings, open_lab_db
from sqlalchemy import select
from sqlalchemy.orm import Session

from labpipe.barcoding.bold import (
    IMAGE_SHEET,
    SPECIMEN_SHEETS,
    NothingToSubmitError,
    bold_rows,
    bold_submission_items,
    load_bold_specimens,
)
from labpipe.barcoding.ids import specimen_code
from labpipe.barcoding.plates import layout_plates
from labpipe.cli.main import cli
from labpipe.config import BoldConfig, DwcaConfig, load_settings
from labpipe.db.models import BarcodeLink, Image, Sample, Specimen
from labpipe.reports.counts import SampleCounts, count_families
from labpipe.reports.dwca import DWC, OCCURRENCE_TERMS, event_record, occurrence_records

TEXT_NS = "{http://rs.tdwg.org/dwc/text/}"
EML_NS = "{eml://ecoinformatics.org/eml-2.1.1}"


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[object, Session]]:
    settings = lab_settings(
        tmp_path / "data",
        **{
            "dwca.publisher": "Cyprus Soil Lab",
            "dwca.contact_email": "lab@example.org",
            "dwca.country_code": "CY",
            "dwca.id_prefix": "urn:cysl:",
            "bold.institution": "Cyprus Soil Lab",
            "bold.collection_code": "CSL-LIT",
            "bold.country": "Cyprus",
            "bold.license_holder": "CSL",
            "bold.license_year": 2024,
            "bold.photographer": "P. Hotographer",
        },
    )
    factory = open_lab_db(settings)
    with factory() as session:
        build_lab(session, settings)
        yield settings, session
    factory.kw["bind"].dispose()


# --- pure term mapping ---------------------------------------------------------------------------------


def test_event_terms_come_from_the_sample() -> None:
    sample = Sample(
        id="S1",
        site="Troodos",
        habitat="litter",
        latitude=34.9,
        longitude=32.8,
        collection_date=dt.date(2024, 5, 17),
        method="sifting",
        fraction="fine",
        notes="wet",
    )
    row = event_record(sample, DwcaConfig(country_code="CY", id_prefix="x:"))
    assert row == {
        "eventID": "x:S1",
        "eventDate": "2024-05-17",
        "decimalLatitude": 34.9,
        "decimalLongitude": 32.8,
        "geodeticDatum": "WGS84",
        "countryCode": "CY",
        "locality": "Troodos",
        "habitat": "litter",
        "samplingProtocol": "sifting",
        "eventRemarks": "fraction: fine; wet",
        "dynamicProperties": "",
    }
    assert event_record(Sample(id="S2"), DwcaConfig())["geodeticDatum"] == ""


def test_occurrences_carry_counts_taxonomy_and_the_model_version() -> None:
    counts = SampleCounts(
        "S1",
        families={"Carabidae": 3, "Unknownidae": 1},
        family_models={"Carabidae": ["m@w1"]},
        family_verified={"Unknownidae": 1},
    )
    rows = {r["family"]: r for r in occurrence_records(counts, DwcaConfig(), threshold=0.7)}
    assert rows["Carabidae"]["individualCount"] == 3 and rows["Carabidae"]["class"] == "Insecta"
    assert rows["Carabidae"]["identifiedBy"] == "labpipe m@w1"
    assert "acceptance threshold 0.7" in rows["Carabidae"]["identificationRemarks"]
    assert rows["Unknownidae"]["order"] == "" and rows["Unknownidae"]["phylum"] == "Arthropoda"
    assert rows["Unknownidae"]["identifiedBy"] == "labpipe verification"
    assert occurrence_records(SampleCounts(None, families={"Carabidae": 1}), DwcaConfig()) == []


# --- Darwin Core Archive --------------------------------------------------------------------------------


def _read_dwca(path: Path) -> tuple[ET.Element, ET.Element, dict[str, list[dict[str, str]]]]:
    with zipfile.ZipFile(path) as archive:
        assert sorted(archive.namelist()) == ["eml.xml", "event.txt", "meta.xml", "occurrence.txt"]
        meta = ET.fromstring(archive.read("meta.xml"))
        eml = ET.fromstring(archive.read("eml.xml"))
        tables: dict[str, list[dict[str, str]]] = {}
        for part in (meta.find(TEXT_NS + "core"), meta.find(TEXT_NS + "extension")):
            assert part is not None
            location = part.find(f"{TEXT_NS}files/{TEXT_NS}location").text
            fields = {int(f.get("index")): f.get("term") for f in part.findall(TEXT_NS + "field")}
            text = archive.read(location).decode("utf-8")
            reader = csv.reader(io.StringIO(text), delimiter="\t", quoting=csv.QUOTE_NONE)
            header = next(reader)
            # the header line agrees with meta.xml, and meta.xml is what a reader must trust
            assert [DWC + h for h in header] == [fields[i] for i in range(len(header))]
            tables[part.get("rowType")] = [
                {fields[i].removeprefix(DWC): cell for i, cell in enumerate(row)} for row in reader
            ]
    return meta, eml, tables


def test_dwca_is_valid_and_matches_the_database_field_by_field(lab, tmp_path: Path) -> None:
    settings, session = lab
    out = tmp_path / "dwca.zip"
    run = CliRunner().invoke(
        cli, ["--data-dir", str(settings.storage.root), "export", "dwca", str(out), "--json"],
        env={"LABPIPE_DWCA_PUBLISHER": "Cyprus Soil Lab", "LABPIPE_DWCA_ID_PREFIX": "urn:cysl:",
             "LABPIPE_DWCA_COUNTRY_CODE": "CY"},
    )  # fmt: skip
    assert run.exit_code == 0, run.output
    summary = json.loads(run.stdout)
    meta, eml, tables = _read_dwca(out)

    core, extension = meta.find(TEXT_NS + "core"), meta.find(TEXT_NS + "extension")
    assert meta.get("metadata") == "eml.xml"
    assert core.get("rowType") == DWC + "Event" and extension.get("rowType") == DWC + "Occurrence"
    assert core.find(TEXT_NS + "id").get("index") == "0"
    coreid = int(extension.find(TEXT_NS + "coreid").get("index"))
    assert OCCURRENCE_TERMS[coreid] == "eventID"
    assert core.get("fieldsTerminatedBy") == "\\t" and core.get("ignoreHeaderLines") == "1"

    events = {e["eventID"]: e for e in tables[DWC + "Event"]}
    assert set(events) == {"urn:cysl:S1", "urn:cysl:S2", "urn:cysl:S3"}  # the unassigned image has no event
    for sample in session.scalars(select(Sample)):
        event = events[f"urn:cysl:{sample.id}"]
        assert event["eventDate"] == (sample.collection_date.isoformat() if sample.collection_date else "")
        assert event["locality"] == (sample.site or "") and event["habitat"] == (sample.habitat or "")
        assert event["samplingProtocol"] == (sample.method or "") and event["countryCode"] == "CY"
        if sample.latitude is not None:
            assert float(event["decimalLatitude"]) == sample.latitude
            assert float(event["decimalLongitude"]) == sample.longitude and event["geodeticDatum"] == "WGS84"
        else:
            assert event["decimalLatitude"] == "" and event["geodeticDatum"] == ""

    occurrences = tables[DWC + "Occurrence"]
    expected = {
        (f"urn:cysl:{row['sample']}", family): n
        for row in count_families(session)
        if row["sample"] is not None
        for family, n in row["families"].items()
    }
    assert {(o["eventID"], o["family"]): int(o["individualCount"]) for o in occurrences} == expected
    for o in occurrences:
        assert o["occurrenceID"] == f"{o['eventID']}:{o['family']}" and o["eventID"] in events
        assert o["scientificName"] == o["family"] and o["taxonRank"] == "family"
        assert o["organismQuantity"] == o["individualCount"] and o["organismQuantityType"] == "individuals"
        assert o["basisOfRecord"] == "MaterialSample" and o["occurrenceStatus"] == "present"
        assert o["kingdom"] == "Animalia" and o["phylum"] == "Arthropoda"
    curculionidae = next(o for o in occurrences if o["occurrenceID"] == "urn:cysl:S1:Curculionidae")
    assert curculionidae["order"] == "Coleoptera" and curculionidae["class"] == "Insecta"
    assert curculionidae["identifiedBy"] == f"labpipe {MODEL} | labpipe verification"
    assert "1 of 2 verified by a person" in curculionidae["identificationRemarks"]
    assert curculionidae["recordedBy"] == "A. Collector"
    assert summary["occurrences"] == len(occurrences) and summary["events"] == 3
    assert summary["unassigned_specimens_left_out"] == 1

    # Each event says how many of its specimens are in no occurrence, so sums are not taken for totals.
    by_sample = {row["sample"]: row for row in count_families(session) if row["sample"] is not None}
    for sample_id, row in by_sample.items():
        event = events[f"urn:cysl:{sample_id}"]
        numbers = json.loads(event["dynamicProperties"])
        counted = sum(row["families"].values())
        assert (
            numbers["specimensCounted"]
            == counted
            == sum(int(o["individualCount"]) for o in occurrences if o["eventID"] == event["eventID"])
        )
        assert numbers["specimensRejected"] == row["rejected"]
        assert numbers["specimensUnclassified"] == row["unclassified"]
        assert numbers["specimensExcluded"] == row["excluded"]
        assert numbers["specimensDetected"] == row["specimens"] + row["unclassified"] + row["excluded"]
        assert numbers["classifierVersions"] == row["model_versions"]
        assert f"{row['rejected']} rejected by the classifier (family not reported)" in event["eventRemarks"]
    s1 = json.loads(events["urn:cysl:S1"]["dynamicProperties"])
    assert (s1["specimensCounted"], s1["specimensRejected"], s1["specimensExcluded"]) == (5, 2, 1)
    assert summary["rejected_specimens"] == sum(r["rejected"] for r in by_sample.values())
    assert summary["model_versions"] == [MODEL]
    # The model versions are stated in eml.xml, and unset metadata is warned about.
    method = " ".join(p.text for p in eml.findall("dataset/methods/methodStep/description/para"))
    assert f"Classifier version(s) behind the counts: {MODEL}." in method
    assert f"{summary['rejected_specimens']} specimen(s) rejected by the classifier" in method
    assert summary["warnings"] == [
        "no rights holder: set [dwca] rights_holder (who holds the rights to these data)",
        "no contact: set [dwca] contact_name and contact_email (who answers questions on the data)",
    ]
    assert "warning: no rights holder" in run.stderr and "warning: no contact" in run.stderr

    assert eml.tag == EML_NS + "eml" and eml.get("packageId")
    dataset = eml.find("dataset")
    assert dataset.find("title").text == DwcaConfig().title
    assert dataset.find("creator/organizationName").text == "Cyprus Soil Lab"
    assert dataset.find("pubDate").text == dt.date.today().isoformat()
    assert dataset.find("intellectualRights/para/ulink").get("url") == DwcaConfig().license
    box = dataset.find("coverage/geographicCoverage/boundingCoordinates")
    assert float(box.find("northBoundingCoordinate").text) == pytest.approx(34.93)
    assert float(box.find("westBoundingCoordinate").text) == pytest.approx(32.42)
    dates = dataset.find("coverage/temporalCoverage/rangeOfDates")
    assert dates.find("beginDate/calendarDate").text == "2024-05-17"
    assert dates.find("endDate/calendarDate").text == "2024-07-01"
    assert dataset.find("contact/organizationName").text == "Cyprus Soil Lab"
    # EML's order of dataset children (title before creator ..., contact after coverage)
    tags = [child.tag for child in dataset]
    assert tags.index("title") < tags.index("creator") < tags.index("pubDate") < tags.index("coverage")
    assert tags.index("coverage") < tags.index("contact") < tags.index("methods")


def test_dwca_says_what_it_leaves_out_and_stops_warning_once_metadata_is_set(lab, tmp_path: Path) -> None:
    settings, _ = lab
    base = ["--data-dir", str(settings.storage.root), "export", "dwca"]
    plain = CliRunner().invoke(cli, [*base, str(tmp_path / "a.zip")], env={"LABPIPE_DWCA_LICENSE": ""})
    assert plain.exit_code == 0, plain.output
    assert "warning: no licence: set [dwca] license" in plain.stderr
    assert "not in any occurrence: 2 rejected, 0 not classified yet, 1 excluded" in plain.stdout
    assert f"classifier version(s): {MODEL}" in plain.stdout
    env = {
        "LABPIPE_DWCA_RIGHTS_HOLDER": "Cyprus Soil Lab",
        "LABPIPE_DWCA_CONTACT_EMAIL": "lab@example.org",
    }
    ready = CliRunner().invoke(cli, [*base, str(tmp_path / "b.zip")], env=env)
    assert ready.exit_code == 0 and "warning" not in ready.stderr
    _, eml, _ = _read_dwca(tmp_path / "b.zip")
    paras = [p.text for p in eml.findall("dataset/intellectualRights/para")]
    assert paras[-1] == "Rights holder: Cyprus Soil Lab."


def test_dwca_at_a_threshold_and_for_one_site(lab, tmp_path: Path) -> None:
    settings, _ = lab
    out = tmp_path / "troodos.zip"
    base = ["--data-dir", str(settings.storage.root)]
    run = CliRunner().invoke(
        cli, [*base, "export", "dwca", str(out), "--site", "Troodos", "--threshold", "0.4"]
    )
    assert run.exit_code == 0, run.output
    _, _, tables = _read_dwca(out)
    assert {e["eventID"] for e in tables[DWC + "Event"]} == {"S1", "S3"}
    carabidae = next(o for o in tables[DWC + "Occurrence"] if o["family"] == "Carabidae")
    assert carabidae["individualCount"] == "3"
    assert "acceptance threshold 0.4" in carabidae["identificationRemarks"]


# --- CSV and community matrix -----------------------------------------------------------------------------


def test_counts_csv_and_matrix_exports_read_back_with_pandas(lab, tmp_path: Path) -> None:
    settings, session = lab
    base = ["--data-dir", str(settings.storage.root)]
    run = CliRunner()
    assert run.invoke(cli, [*base, "export", "csv", str(tmp_path / "long.csv"), "--expected"]).exit_code == 0
    assert run.invoke(cli, [*base, "export", "matrix", str(tmp_path / "m.csv")]).exit_code == 0
    assert run.invoke(cli, [*base, "export", "matrix", str(tmp_path / "e.csv"), "--expected"]).exit_code == 0
    table = count_families(session)
    long = pd.read_csv(tmp_path / "long.csv", keep_default_na=False)
    assert list(long.columns) == [
        "sample",
        "family",
        "count",
        "expected",
        "expected_low",
        "expected_high",
        "model_versions",
        "mixed_models",
    ]
    for entry in table:
        rows = long[long["sample"] == (entry["sample"] or "")]
        counted = rows[~rows["family"].isin(["rejected", "other"])]
        for _, row in counted.iterrows():
            assert int(row["count"]) == entry["families"].get(row["family"], 0)
            exp = entry["expected"].get(row["family"], {"mean": 0.0, "low": 0, "high": 0})
            assert float(row["expected"]) == pytest.approx(exp["mean"], abs=1e-3)
            assert (int(row["expected_low"]), int(row["expected_high"])) == (exp["low"], exp["high"])
        assert int(rows[rows["family"] == "rejected"]["count"].iloc[0]) == entry["rejected"]
    matrix = pd.read_csv(tmp_path / "m.csv", index_col=0)
    expected_matrix = pd.read_csv(tmp_path / "e.csv", index_col=0)
    assert matrix.index.name == "sample"
    for entry in table:
        name = entry["sample"] or "_unassigned"
        assert matrix.loc[name].sum() == sum(entry["families"].values())
        for family, n in entry["families"].items():
            assert matrix.loc[name, family] == n
        for family, e in entry["expected"].items():
            assert expected_matrix.loc[name, family] == pytest.approx(e["mean"], abs=1e-3)


# --- BOLD -------------------------------------------------------------------------------------------------


def _sheet(path: Path, name: str) -> list[dict[str, object]]:
    book = load_workbook(path, read_only=True)
    rows = list(book[name].iter_rows(values_only=True))
    book.close()
    header = list(rows[0])
    return [dict(zip(header, row, strict=True)) for row in rows[1:]]


def test_bold_spreadsheets_match_the_database_field_by_field(lab, tmp_path: Path) -> None:
    settings, session = lab
    layout_plates(session, "S1", pattern=settings.bold.sample_id_pattern, include_rejected=True)
    session.commit()
    out = tmp_path / "bold"
    base = ["--data-dir", str(settings.storage.root)]
    env = {
        "LABPIPE_BOLD_INSTITUTION": "Cyprus Soil Lab",
        "LABPIPE_BOLD_COLLECTION_CODE": "CSL-LIT",
        "LABPIPE_BOLD_COUNTRY": "Cyprus",
        "LABPIPE_BOLD_LICENSE_HOLDER": "CSL",
        "LABPIPE_BOLD_LICENSE_YEAR": "2024",
        "LABPIPE_BOLD_PHOTOGRAPHER": "P. Hotographer",
    }
    run = CliRunner().invoke(cli, [*base, "export", "bold", str(out), "--plate", "S1-P01", "--json"], env=env)
    assert run.exit_code == 0, run.output
    assert json.loads(run.stdout)["missing_crops"] == []

    book = load_workbook(out / "bold_specimens.xlsx", read_only=True)
    assert book.sheetnames == ["Lab Sheet", "Taxonomy", "Specimen Details", "Collection Data"]
    book.close()
    for sheet, columns in SPECIMEN_SHEETS.items():
        header = next(
            iter(
                load_workbook(out / "bold_specimens.xlsx", read_only=True)[sheet].iter_rows(values_only=True)
            )
        )
        assert list(header) == columns
    lab_sheet = {r["Sample ID"]: r for r in _sheet(out / "bold_specimens.xlsx", "Lab Sheet")}
    taxonomy = {r["Sample ID"]: r for r in _sheet(out / "bold_specimens.xlsx", "Taxonomy")}
    collection = {r["Sample ID"]: r for r in _sheet(out / "bold_specimens.xlsx", "Collection Data")}
    details = {r["Sample ID"]: r for r in _sheet(out / "bold_specimens.xlsx", "Specimen Details")}
    images = {r["Sample Id"]: r for r in _sheet(out / "bold_images.xlsx", "Images")}
    links = session.scalars(select(BarcodeLink).where(BarcodeLink.plate == "S1-P01")).all()
    assert (
        set(lab_sheet) == set(taxonomy) == set(collection) == set(images) == {link.sampleid for link in links}
    )
    assert len(links) == 7  # every specimen of S1 but the one verified as not a specimen
    counted = {
        spec_index: family
        for spec_index, family in {1: "Carabidae", 2: "Carabidae", 4: "Curculionidae", 7: "Curculionidae",
                                   8: "Formicidae"}.items()
    }  # fmt: skip
    for link in links:
        specimen = session.get(Specimen, link.specimen_id)
        image = session.get(Image, specimen.image_id)
        sample = session.get(Sample, image.sample_id)
        code = specimen_code(
            sample.id, image.id, specimen.index_in_image, specimen.id, settings.bold.sample_id_pattern
        )
        assert link.sampleid == code
        assert lab_sheet[code]["Field ID"] == code
        assert lab_sheet[code]["Institution Storing"] == "Cyprus Soil Lab"
        assert lab_sheet[code]["Collection Code"] == "CSL-LIT"
        family = counted.get(specimen.index_in_image)
        assert taxonomy[code]["Family"] == family  # rejected specimens carry no family
        assert taxonomy[code]["Phylum"] == "Arthropoda"
        if family:
            assert taxonomy[code]["Order"] == "Coleoptera" or family == "Formicidae"
            assert taxonomy[code]["Identification Method"]
        if specimen.index_in_image in (4, 8):  # verified by a person
            assert taxonomy[code]["Identifier"] == "R. Reviewer"
        elif family:
            assert taxonomy[code]["Identifier"] == "labpipe"
            assert MODEL in taxonomy[code]["Taxonomy Notes"]
        row = collection[code]
        assert (
            row["Collectors"] == sample.collector
            and row["Collection Date"] == sample.collection_date.isoformat()
        )
        assert row["Country/Ocean"] == "Cyprus" and row["Exact Site"] == sample.site
        assert row["Lat"] == sample.latitude and row["Lon"] == sample.longitude
        assert row["Habitat"] == sample.habitat and row["Sampling Protocol"] == sample.method
        assert f"well {link.well}" in details[code]["Notes"]
        image_row = images[code]
        assert image_row["Image File"] == f"{code}.png" and image_row["Photographer"] == "P. Hotographer"
        assert image_row["License Holder"] == "CSL" and image_row["License Year"] == 2024
        assert image_row["Measurement"] == pytest.approx(specimen.length_mm)
        crop = settings.storage.crops_dir / specimen.crop_path
        assert (out / "images" / image_row["Image File"]).read_bytes() == crop.read_bytes()
    assert (
        list(
            next(
                iter(
                    load_workbook(out / "bold_images.xlsx", read_only=True)["Images"].iter_rows(
                        values_only=True
                    )
                )
            )
        )
        == IMAGE_SHEET
    )


def test_bold_selection_needs_plates_or_a_sample(lab) -> None:
    settings, session = lab
    from labpipe.errors import LabpipeError

    with pytest.raises(LabpipeError, match="nothing to export"):
        load_bold_specimens(session, pattern=settings.bold.sample_id_pattern)
    everything = load_bold_specimens(
        session, pattern=settings.bold.sample_id_pattern, sample="S2", all_specimens=True
    )
    assert [b.family for b in everything] == ["Formicidae", "Formicidae", "Apidae"]  # sorted by Sample ID
    assert everything[0].plate is None
    assert load_bold_specimens(session, pattern=settings.bold.sample_id_pattern, sample="S2") == []
    rows = bold_rows(everything[2], BoldConfig(license_year=0), today=dt.date(2031, 1, 1))
    assert rows["Images"]["License Year"] == 2031 and rows["Images"]["Measurement"] == ""


def _workbook_rows(path_or_bytes: Path | bytes) -> dict[str, list[tuple[object, ...]]]:
    source = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else path_or_bytes
    book = load_workbook(source, read_only=True)
    return {ws.title: list(ws.iter_rows(values_only=True)) for ws in book.worksheets}


def test_bold_export_follows_one_rule_in_the_cli_the_web_ui_and_the_api(lab, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from labpipe.web import create_web_app

    lab_cfg, session = lab
    # The CLI reads the lab's [bold] settings from a file; the web app gets the same settings.
    config = tmp_path / "labpipe.toml"
    config.write_text(
        '[bold]\ninstitution = "Cyprus Soil Lab"\ncollection_code = "CSL-LIT"\ncountry = "Cyprus"\n'
        'license_holder = "CSL"\nlicense_year = 2024\nphotographer = "P. Hotographer"\n',
        encoding="utf-8",
    )
    settings = load_settings(config, overrides={"storage.root": lab_cfg.storage.root}, environ={})
    factory = open_lab_db(settings)
    web = TestClient(
        create_web_app(settings, session_factory=factory),
        base_url="http://localhost",
        client=("127.0.0.1", 5000),
    )
    base = ["--config", str(config), "--data-dir", str(settings.storage.root)]

    # Nothing of S2 is on a plate: the CLI, the web UI's download and the API refuse, in the same words.
    with pytest.raises(NothingToSubmitError) as refusal:
        bold_submission_items(session, pattern=settings.bold.sample_id_pattern, sample="S2")
    message = refusal.value.message
    assert message.startswith("sample S2: none of its specimens is on a 96-well plate")
    cli_run = CliRunner().invoke(cli, [*base, "export", "bold", str(tmp_path / "cli"), "--sample", "S2"])
    assert cli_run.exit_code == 2 and cli_run.stderr.strip() == f"error: {message}"
    assert not (tmp_path / "cli" / "bold_specimens.xlsx").exists()
    page = web.get("/exports/bold.zip", params={"sample": "S2"}, headers={"Accept": "text/html"})
    assert page.status_code == 400 and html.escape(message) in page.text  # a page, not JSON
    api = web.get("/api/exports/bold.zip", params={"sample": "S2"})
    assert api.status_code == 400 and api.json() == {"detail": message}

    # Every specimen, plated or not, on request: the same workbook rows from each.
    def same_rows(
        extra_cli: list[str], params: dict[str, str], out: str
    ) -> dict[str, list[tuple[object, ...]]]:
        done = CliRunner().invoke(
            cli, [*base, "export", "bold", str(tmp_path / out), "--sample", "S2", *extra_cli]
        )
        assert done.exit_code == 0, done.output
        archive = zipfile.ZipFile(
            io.BytesIO(web.get("/exports/bold.zip", params={"sample": "S2", **params}).content)
        )
        api_zip = zipfile.ZipFile(
            io.BytesIO(web.get("/api/exports/bold.zip", params={"sample": "S2", **params}).content)
        )
        rows = {}
        for name in ("bold_specimens.xlsx", "bold_images.xlsx"):
            from_cli = _workbook_rows(tmp_path / out / name)
            assert _workbook_rows(archive.read(name)) == from_cli == _workbook_rows(api_zip.read(name)), name
            rows.update(from_cli)
        return rows

    everything = same_rows(["--all"], {"all": "true"}, "all")
    assert len(everything["Lab Sheet"]) == 1 + 3

    # Once S2 is plated, the default (plated specimens only) gives the same rows everywhere too.
    layout_plates(session, "S2", pattern=settings.bold.sample_id_pattern)
    session.commit()
    plated = same_rows([], {}, "plated")
    assert len(plated["Lab Sheet"]) == 1 + 3
    assert all("plate S2-P01 well" in str(r[5]) for r in plated["Specimen Details"][1:])  # Notes
    assert {r[4] for r in plated["Lab Sheet"][1:]} == {"Cyprus Soil Lab"}
    factory.kw["bind"].dispose()


@pytest.mark.slow
def test_a_processed_plate_goes_through_every_export(tmp_path: Path) -> None:
    """The real pipeline (synthetic plate, classical detector, built-in classifier) into every export."""
    from labpipe.synth.plate import PlateSpec, write_plate

    plate = tmp_path / "plate.tif"
    write_plate(
        PlateSpec(
            width=2000, height=2000, n_specimens=6, n_touching_pairs=0, n_debris=4, um_per_px=10.0, seed=5
        ),
        plate,
    )
    base = ["--data-dir", str(tmp_path / "data")]
    run = CliRunner()
    samples_csv = tmp_path / "samples.csv"
    samples_csv.write_text(
        "sample_id,site,latitude,longitude,collection_date\nREAL-1,Troodos,34.9,32.8,2024-05-17\n"
    )
    assert run.invoke(cli, [*base, "samples", "import", str(samples_csv)]).exit_code == 0
    processed = run.invoke(cli, [*base, "process", str(plate), "--sample", "REAL-1", "--json"])
    assert processed.exit_code == 0, processed.output
    (record,) = json.loads(processed.stdout)
    n = len(record["specimens"])
    assert n >= 5
    counts = json.loads(run.invoke(cli, [*base, "counts", "--json"]).stdout)
    assert counts[0]["specimens"] == n and counts[0]["site"] == "Troodos"
    assert sum(e["mean"] for e in counts[0]["expected"].values()) + counts[0]["expected_other"]["mean"] == (
        pytest.approx(n, abs=0.01)
    )
    layout = run.invoke(
        cli,
        [*base, "plates", "layout", "--sample", "REAL-1", "--include-rejected", "--out", str(tmp_path / "p")],
    )
    assert layout.exit_code == 0, layout.output
    manifest = pd.read_csv(tmp_path / "p" / "REAL-1-P01.manifest.csv", keep_default_na=False)
    assert (manifest["content"] == "specimen").sum() == n
    bold = run.invoke(cli, [*base, "export", "bold", str(tmp_path / "bold"), "--sample", "REAL-1", "--json"])
    assert bold.exit_code == 0, bold.output
    assert json.loads(bold.stdout)["missing_crops"] == []
    assert len(list((tmp_path / "bold" / "images").glob("*.png"))) == n
    lab_rows = _sheet(tmp_path / "bold" / "bold_specimens.xlsx", "Lab Sheet")
    assert sorted(r["Sample ID"] for r in lab_rows) == sorted(
        manifest[manifest["content"] == "specimen"]["sample_id"]
    )
    out = tmp_path / "dwca.zip"
    assert run.invoke(cli, [*base, "export", "dwca", str(out)]).exit_code == 0
    _, _, tables = _read_dwca(out)
    individuals = sum(int(o["individualCount"]) for o in tables[DWC + "Occurrence"])
    assert individuals == sum(counts[0]["families"].values())

"""The HTTP API: every endpoint answers from the database, access is guarded, files stay inside storage,
and fuzzing every operation against the API's own OpenAPI schema finds no server error."""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from records_fixtures import build_lab, built_lab, lab_settings, open_lab_db
from schemathesis import GenerationMode
from schemathesis.checks import negative_data_rejection, positive_data_acceptance
from sqlalchemy import func, select
from sqlalchemy.orm import sessionmaker

from labpipe.api import create_app
from labpipe.config import Settings
from labpipe.db.models import BarcodeLink, Image, Sample, Specimen, Verification
from labpipe.errors import ConfigError
from labpipe.reports.counts import count_families

TOKEN = "t0ken-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LOCAL = ("127.0.0.1", 50000)
REMOTE = ("192.0.2.10", 50000)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[Settings, Any, Any]]:
    with built_lab(tmp_path / "data", TOKEN, create_app) as built:
        yield built


@pytest.fixture
def local(lab) -> TestClient:
    return TestClient(lab[2], base_url="http://localhost", client=LOCAL)


# --- reading ----------------------------------------------------------------------------------------


def test_samples_images_and_specimens_are_listed_with_paging(local: TestClient) -> None:
    samples = local.get("/api/samples", params={"limit": 2}).json()
    assert samples["total"] == 3 and [s["sample_id"] for s in samples["items"]] == ["S1", "S2"]
    assert samples["items"][0]["image_status"] == {"done": 1} and samples["items"][0]["specimens"] == 8
    detail = local.get("/api/samples/S1").json()
    assert detail["site"] == "Troodos" and detail["counts"]["families"]["Carabidae"] == 2
    assert local.get("/api/samples/NOPE").status_code == 404
    images = local.get("/api/images", params={"status": "done", "sample": "S2"}).json()
    assert images["total"] == 1 and images["items"][0]["file_name"] == "s2-plate1.tif"
    page = local.get("/api/specimens", params={"sample": "S1", "limit": 3, "offset": 3}).json()
    assert page["total"] == 8 and [s["index_in_image"] for s in page["items"]] == [4, 5, 6]
    accepted = local.get("/api/specimens", params={"sample": "S1", "status": "accepted"}).json()
    assert [s["family"] for s in accepted["items"]] == [
        "Carabidae",
        "Carabidae",
        "Curculionidae",
        "Curculionidae",
        "Formicidae",
    ]
    carabidae = local.get("/api/specimens", params={"family": "Carabidae", "threshold": 0.4}).json()
    assert carabidae["total"] == 4  # three of S1 at this threshold, and the unassigned one
    confident = local.get("/api/specimens", params={"min_probability": 0.9}).json()
    assert {s["probability"] for s in confident["items"]} == {0.93, 0.9, 0.95}


def test_a_query_parameter_an_endpoint_does_not_take_is_refused_not_ignored(local: TestClient) -> None:
    # A misspelt filter used to return every specimen, as if it had matched them all.
    everything = local.get("/api/specimens").json()["total"]
    assert everything > 1
    for url, params in (
        ("/api/specimens", {"code": "S1-00001-001"}),
        ("/api/samples", {"limit": 2, "sit": "Troodos"}),
        ("/api/images", {"sample_id": "S1"}),
        ("/api/counts", {"samples": "S1"}),
        ("/api/plates", {"sampel": "S1"}),
        ("/api/exports/counts.csv", {"expected": "true", "format": "matrix"}),
        ("/api/health", {"verbose": "1"}),
    ):
        response = local.get(url, params=params)
        assert response.status_code == 422, (url, response.text)
        errors = response.json()["detail"]
        wrong = [k for k in params if k not in ("limit", "expected")]
        assert [e["loc"] for e in errors] == [["query", k] for k in sorted(wrong)], url
        assert f"unknown query parameter {wrong[0]!r}" in errors[0]["msg"]
    # The parameters each endpoint declares, paging and formats included, still work.
    assert local.get("/api/specimens", params={"sample": "S1", "limit": 1, "offset": 1}).status_code == 200
    assert local.get("/api/samples", params={"site": "Troodos", "limit": 2}).status_code == 200
    assert local.get("/api/images", params={"sample": "S1", "status": "done"}).status_code == 200
    assert local.get("/api/counts", params=[("sample", "S1"), ("sample", "S2")]).status_code == 200
    assert local.get("/api/exports/bold.zip", params={"sample": "S1", "all": "true"}).status_code == 200
    assert local.get("/api/exports/matrix.csv", params={"expected": "true"}).status_code == 200
    # The message names what the endpoint does take.
    detail = local.get("/api/specimens", params={"code": "x"}).json()["detail"][0]["msg"]
    assert "family" in detail and "limit" in detail and "sample" in detail and "status" in detail


def test_a_specimen_shows_every_classification_verification_and_its_crop(lab, local: TestClient) -> None:
    settings, factory, _ = lab
    with factory() as session:
        specimen = session.scalars(select(Specimen).order_by(Specimen.id)).all()[3]  # S1 #4, corrected
        crop = (settings.storage.crops_dir / specimen.crop_path).read_bytes()
    detail = local.get(f"/api/specimens/{specimen.id}").json()
    assert detail["family"] == "Curculionidae" and detail["best_family"] == "Staphylinidae"
    assert detail["verifications"][0]["status"] == "corrected" and len(detail["classifications"]) == 1
    assert detail["code"] == f"S1-{specimen.image_id:05d}-004"
    response = local.get(detail["crop_url"])
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert response.content == crop


def test_crop_paths_cannot_escape_the_crops_folder(lab, local: TestClient, tmp_path: Path) -> None:
    settings, factory, _ = lab
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"\x89PNG not yours")
    outside = settings.storage.crops_dir / "link.png"
    outside.symlink_to(secret)
    with factory() as session:
        specimens = session.scalars(select(Specimen).order_by(Specimen.id)).all()
        specimens[0].crop_path = "../../secret.png"
        specimens[1].crop_path = str(secret)  # absolute
        specimens[2].crop_path = "link.png"  # a link inside that points outside
        session.commit()
        ids = [s.id for s in specimens[:3]]
    for specimen_id in ids:
        response = local.get(f"/api/specimens/{specimen_id}/crop")
        assert response.status_code == 404 and b"not yours" not in response.content


def test_counts_and_exports_match_the_database(lab, local: TestClient) -> None:
    _, factory, _ = lab
    with factory() as session:
        expected = count_families(session, threshold=0.4)
    counts = local.get("/api/counts", params={"threshold": 0.4}).json()
    assert counts == json.loads(json.dumps(expected))
    site = local.get("/api/counts", params={"site": "Troodos", "date_from": "2024-07-01"}).json()
    assert [c["sample"] for c in site] == ["S3"]
    long = pd.read_csv(io.StringIO(local.get("/api/exports/counts.csv").text), keep_default_na=False)
    assert list(long.columns) == ["sample", "family", "count", "model_versions", "mixed_models"]
    matrix = pd.read_csv(io.StringIO(local.get("/api/exports/matrix.csv").text), index_col=0)
    assert matrix.loc["S1", "Curculionidae"] == 2 and matrix.loc["S2", "Apidae"] == 1
    dwca = local.get("/api/exports/dwca.zip")
    archive = zipfile.ZipFile(io.BytesIO(dwca.content))
    assert set(archive.namelist()) == {"meta.xml", "eml.xml", "event.txt", "occurrence.txt"}
    assert "no rights holder" in dwca.headers["x-labpipe-warning"]  # [dwca] metadata unset in this lab
    unknown = local.get("/api/counts", params={"model": "nope"})
    assert unknown.status_code == 400 and "no registered model" in unknown.json()["detail"]


def test_plate_layout_manifest_sheet_bold_and_barcode_import_over_http(lab, local: TestClient) -> None:
    _, factory, _ = lab
    layout = local.post("/api/plates/layout", json={"sample": "S2", "order": "row"}, headers=AUTH)
    assert layout.status_code == 200, layout.text
    body = layout.json()
    assert body["plates"] == ["S2-P01"] and [w["well"] for w in body["wells"]] == ["A01", "A02", "A03"]
    assert [p["plate"] for p in local.get("/api/plates").json()] == ["S2-P01"]
    wells = local.get("/api/plates/S2-P01").json()
    assert [w["content"] for w in wells] == ["specimen"] * 3 + ["control"] * 2
    manifest = pd.read_csv(
        io.StringIO(local.get("/api/plates/S2-P01/manifest.csv").text), keep_default_na=False
    )
    assert list(manifest["well"])[:3] == ["A01", "A02", "A03"]
    sheet = local.get("/api/plates/S2-P01/sheet.html")
    assert sheet.headers["content-type"].startswith("text/html") and "data:image/png;base64," in sheet.text
    assert local.get("/api/plates/NOPE").status_code == 404
    bold = zipfile.ZipFile(io.BytesIO(local.get("/api/exports/bold.zip", params={"plate": "S2-P01"}).content))
    assert {"bold_specimens.xlsx", "bold_images.xlsx"} <= set(bold.namelist())
    assert len([n for n in bold.namelist() if n.startswith("images/")]) == 3
    codes = [w["sample_id"] for w in body["wells"]]
    tsv = "sampleid\tprocessid\tfamily_name\n" + "".join(
        f"{c}\tP{i}\tFormicidae\n" for i, c in enumerate(codes)
    )
    tsv += "UNKNOWN-1\tPX\tApidae\n"
    imported = local.post("/api/barcodes/import", files={"file": ("r.tsv", tsv)}, headers=AUTH).json()
    assert imported["linked"] == 3 and imported["unknown"] == [{"sampleid": "UNKNOWN-1", "row": 5}]
    peek = local.get("/api/barcodes/agreement").json()
    assert peek["needs_review"] == 1
    with factory() as session:  # the GET marks nothing
        assert session.scalar(select(BarcodeLink).where(BarcodeLink.needs_review.is_(True))) is None
    marked = local.post("/api/barcodes/agreement", headers=AUTH).json()
    assert marked["overall"]["disagree"] == 1
    with factory() as session:
        flagged = session.scalar(select(BarcodeLink).where(BarcodeLink.needs_review.is_(True)))
        assert flagged.sampleid == codes[2]


def test_samples_can_be_imported_over_http_and_row_errors_come_back(lab, local: TestClient) -> None:
    _, factory, _ = lab
    good = "sample_id,site,latitude,longitude\nS9,Akamas,35.0,32.3\n"
    response = local.post("/api/samples/import", files={"file": ("s.csv", good)}, headers=AUTH)
    assert response.status_code == 200 and response.json()["created"] == ["S9"]
    bad = "sample_id,latitude,longitude\nS10,95,32\n"
    response = local.post("/api/samples/import", files={"file": ("bad.csv", bad)}, headers=AUTH)
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert (error["row"], error["column"]) == (2, "latitude")
    with factory() as session:
        assert session.get(Sample, "S9").site == "Akamas" and session.get(Sample, "S10") is None


# --- access -----------------------------------------------------------------------------------------


def test_reads_are_open_on_localhost_and_need_the_token_from_elsewhere(lab) -> None:
    app = lab[2]
    remote = TestClient(app, base_url="http://localhost", client=REMOTE)
    assert remote.get("/api/samples").status_code == 401
    assert remote.get("/api/samples", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert remote.get("/api/samples", headers=AUTH).status_code == 200
    assert TestClient(app, base_url="http://localhost", client=LOCAL).get("/api/samples").status_code == 200
    assert (
        TestClient(app, base_url="http://localhost", client=("::1", 1)).get("/api/samples").status_code == 200
    )


def test_every_write_needs_the_token(lab, local: TestClient) -> None:
    writes = [
        ("/api/plates/layout", {"json": {"sample": "S1"}}),
        ("/api/barcodes/import", {"files": {"file": ("r.tsv", "sampleid\nX\n")}}),
        ("/api/barcodes/agreement", {}),
        ("/api/samples/import", {"files": {"file": ("s.csv", "sample_id\nS5\n")}}),
        ("/api/specimens/1/verifications", {"json": {"status": "not_specimen", "verified_by": "A"}}),
        ("/api/verifications", {"json": {"specimen_ids": [1], "status": "not_specimen", "verified_by": "A"}}),
    ]
    for url, kwargs in writes:
        assert local.post(url, **kwargs).status_code == 401, url  # even from this machine
        assert local.post(url, headers={"Authorization": "Bearer nope"}, **kwargs).status_code == 401, url
    _, factory, _ = lab
    with factory() as session:
        assert session.scalar(select(BarcodeLink.id)) is None and session.get(Sample, "S5") is None
        assert session.scalar(select(func.count(Verification.id))) == 4  # the lab's own four


def test_without_a_configured_token_writes_are_disabled(tmp_path: Path) -> None:
    settings = lab_settings(tmp_path / "data")
    factory = open_lab_db(settings)
    client = TestClient(
        create_app(settings, session_factory=factory), base_url="http://localhost", client=LOCAL
    )
    response = client.post("/api/plates/layout", json={"sample": "S1"}, headers={"Authorization": "Bearer "})
    assert response.status_code == 403 and "[api] token" in response.json()["detail"]
    body = {"status": "confirmed", "verified_by": "A"}
    assert client.post("/api/specimens/1/verifications", json=body).status_code == 403
    assert client.post("/api/verifications", json={**body, "specimen_ids": [1]}).status_code == 403
    factory.kw["bind"].dispose()


def test_read_access_settings(tmp_path: Path) -> None:
    factory = open_lab_db(lab_settings(tmp_path / "d"))
    anyone = lab_settings(tmp_path / "d", **{"api.read_access": "anyone"})
    assert (
        TestClient(create_app(anyone, session_factory=factory), base_url="http://localhost", client=REMOTE)
        .get("/api/plates")
        .status_code
        == 200
    )
    strict = lab_settings(tmp_path / "d", **{"api.read_access": "token", "api.token": TOKEN})
    client = TestClient(
        create_app(strict, session_factory=factory), base_url="http://localhost", client=LOCAL
    )
    assert (
        client.get("/api/plates").status_code == 401
        and client.get("/api/plates", headers=AUTH).status_code == 200
    )
    with pytest.raises(ConfigError, match="read_access"):
        create_app(lab_settings(tmp_path / "d", **{"api.read_access": "everyone"}), session_factory=factory)
    factory.kw["bind"].dispose()


def test_openapi_schema_lists_every_area_and_the_ui_can_join_the_app(tmp_path: Path) -> None:
    from fastapi import APIRouter

    ui = APIRouter()

    @ui.get("/")
    def index() -> dict[str, str]:
        return {"ui": "here"}

    factory = open_lab_db(lab_settings(tmp_path / "d"))
    app = create_app(lab_settings(tmp_path / "d"), session_factory=factory, extra_routers=[ui])
    client = TestClient(app, base_url="http://localhost", client=LOCAL)
    paths = client.get("/api/openapi.json").json()["paths"]
    for needed in (
        "/api/samples",
        "/api/images",
        "/api/specimens",
        "/api/specimens/{specimen_id}/crop",
        "/api/counts",
        "/api/exports/dwca.zip",
        "/api/exports/bold.zip",
        "/api/plates/layout",
        "/api/barcodes/import",
        "/api/specimens/{specimen_id}/verifications",
        "/api/verifications",
        "/api/specimens/{specimen_id}/box",
        "/api/specimens/{specimen_id}/events",
        "/api/events/{event_id}/undo",
        "/api/models",
        "/api/models/default",
    ):
        assert needed in paths, needed
    assert client.get("/").json() == {"ui": "here"}
    assert client.get("/api/health").json()["schema_revision"] is not None
    factory.kw["bind"].dispose()


# --- verifications ------------------------------------------------------------------------------------


def _sample_ids(session: Any, sample: str) -> list[int]:
    query = select(Specimen.id).join(Image).where(Image.sample_id == sample).order_by(Specimen.id)
    return list(session.scalars(query))


def test_a_verification_over_http_is_checked_like_one_in_the_web_ui(lab, local: TestClient) -> None:
    settings, factory, _ = lab
    with factory() as session:
        second = _sample_ids(session, "S1")[1]  # Carabidae 0.81, accepted
        before = session.scalar(select(func.count(Verification.id)))
    url = f"/api/specimens/{second}/verifications"
    person = {"verified_by": "E. Cologist"}
    typo = local.post(url, json={"status": "corrected", "family": "Carbidae", **person}, headers=AUTH)
    assert typo.status_code == 422, typo.text
    error = typo.json()
    assert error["family"] == "Carbidae" and error["suggestions"][0] == "Carabidae"
    assert error["detail"].startswith("Carbidae: not a family known to this lab (did you mean Carabidae (or ")
    assert '"add_family": true' in error["detail"]
    with factory() as session:
        assert session.scalar(select(func.count(Verification.id))) == before
    good = local.post(
        url,
        json={"status": "corrected", "family": " histeridae", "note": "truncate elytra", **person},
        headers=AUTH,
    )
    assert good.status_code == 201, good.text
    out = good.json()
    assert (out["specimen_id"], out["status"], out["family"], out["verified_by"], out["note"]) == (
        second,
        "corrected",
        "Histeridae",
        "E. Cologist",
        "truncate elytra",
    )
    assert not settings.families_path.exists()
    new = {"status": "corrected", "family": "Trachypachidae", **person}
    assert local.post(url, json=new, headers=AUTH).status_code == 422
    added = local.post(url, json={**new, "add_family": True}, headers=AUTH)
    assert added.status_code == 201 and added.json()["family"] == "Trachypachidae"
    assert "Trachypachidae" in settings.families_path.read_text().splitlines()[1]
    history = local.get(url).json()
    assert [(v["family"], v["verified_by"]) for v in history] == [
        ("Trachypachidae", "E. Cologist"),
        ("Histeridae", "E. Cologist"),
    ]
    with factory() as session:
        (s1,) = count_families(session, "S1")
    assert s1["families"]["Trachypachidae"] == 1 and "Carbidae" not in s1["families"]
    assert local.get(f"/api/specimens/{second}").json()["family"] == "Trachypachidae"


def test_bulk_verifications_over_http_are_all_or_nothing(lab, local: TestClient) -> None:
    _, factory, _ = lab
    with factory() as session:
        s2 = _sample_ids(session, "S2")
        before = session.scalar(select(func.count(Verification.id)))
    body = {"specimen_ids": [*s2, s2[0]], "status": "confirmed", "verified_by": "B. Trapper"}
    unknown = local.post("/api/verifications", json={**body, "specimen_ids": [*s2, 99999]}, headers=AUTH)
    assert unknown.status_code == 404 and "specimen 99999" in unknown.json()["detail"]
    typo = local.post(
        "/api/verifications", json={**body, "status": "corrected", "family": "Formicide"}, headers=AUTH
    )
    assert typo.status_code == 422 and typo.json()["suggestions"][0] == "Formicidae"
    blank = local.post("/api/verifications", json={**body, "verified_by": "  "}, headers=AUTH)
    assert blank.status_code == 400 and "name of the person" in blank.json()["detail"]
    with factory() as session:
        assert session.scalar(select(func.count(Verification.id))) == before
    done = local.post("/api/verifications", json=body, headers=AUTH)
    assert done.status_code == 201, done.text
    out = done.json()
    # a confirmation without a family confirms each specimen's own best family, as the web UI does
    assert out["recorded"] == 3
    assert [(v["specimen_id"], v["family"]) for v in out["items"]] == list(
        zip(s2, ["Formicidae", "Formicidae", "Apidae"], strict=True)
    )
    assert {v["verified_at"] for v in out["items"]} == {out["items"][0]["verified_at"]}
    with factory() as session:
        (row,) = count_families(session, "S2")
    assert row["verified"] == 3 and row["families"] == {"Formicidae": 2, "Apidae": 1}


def test_verifications_of_an_unknown_specimen_answer_404(local: TestClient) -> None:
    body = {"status": "not_specimen", "verified_by": "A"}
    assert local.post("/api/specimens/99999/verifications", json=body, headers=AUTH).status_code == 404
    assert local.get("/api/specimens/99999/verifications").status_code == 404
    assert local.get("/api/specimens/1/verifications").json() == []


# --- fuzzing ------------------------------------------------------------------------------------------

_N = int(os.environ.get("LABPIPE_FUZZ_EXAMPLES", "25"))  # raise it for a deeper run
EXAMPLES = {GenerationMode.POSITIVE: _N, GenerationMode.NEGATIVE: max(1, _N // 2)}
LENIENT = [positive_data_acceptance, negative_data_rejection]


def _operations() -> list[str]:
    """Every operation of the API's schema, ``"METHOD path"``, found without a database."""
    app = create_app(Settings(), session_factory=sessionmaker())
    return [f"{m.upper()} {p}" for p, item in app.openapi()["paths"].items() for m in item]


@pytest.fixture(scope="module")
def fuzz_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, dict[str, Any]]]:
    """The schema of an app over the small lab, with one plate laid out and real ids to aim at."""
    root = tmp_path_factory.mktemp("fuzz")
    # schemathesis addresses the app as "testserver", and sends wrong tokens on purpose: the host
    # guard and the token-guessing brake have their own tests
    settings = lab_settings(
        root / "data",
        **{"api.token": TOKEN, "api.allowed_hosts": "localhost,testserver", "api.auth_failures": 10**9},
    )
    factory = open_lab_db(settings)
    with factory() as session:
        build_lab(session, settings)
    app = create_app(settings, session_factory=factory)
    TestClient(app, base_url="http://localhost", client=LOCAL).post(
        "/api/plates/layout", json={"sample": "S1"}, headers=AUTH
    )
    real = {"sample_id": "S1", "image_id": 1, "specimen_id": 2, "plate": "S1-P01"}
    yield schemathesis.openapi.from_asgi("/api/openapi.json", app), real
    factory.kw["bind"].dispose()


@pytest.mark.parametrize("label", _operations())
def test_fuzzing_the_openapi_schema_finds_no_server_errors(fuzz_target, label: str) -> None:
    schema, real = fuzz_target
    method, path = label.split(" ", 1)
    operation = schema[path][method]
    known = {k: v for k, v in real.items() if "{" + k + "}" in path}
    runs = [(operation.as_strategy(mode), n, mode is GenerationMode.NEGATIVE) for mode, n in EXAMPLES.items()]
    if known:  # also aim at objects that exist, not only at random ids
        runs.append((operation.as_strategy(path_parameters=known), 10, False))
    for strategy, examples, negative in runs:

        @given(case=strategy)
        @settings(
            max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        def call(case: schemathesis.Case) -> None:
            # Every check applies (no server error, documented status codes and content types,
            # responses valid against their schemas) except two about validation strictness:
            # schema-valid requests may be refused (400) for what a schema cannot say (a CSV row,
            # an unknown sample), and FastAPI takes the last of repeated query parameters.
            case.call_and_validate(headers=AUTH, excluded_checks=LENIENT)

        try:
            call()
        except Unsatisfiable:
            assert negative, "positive requests must be generated"  # nothing to break in this operation


# --- box corrections, audit trail, undo, default model ------------------------------------------------


def test_box_edits_and_verifications_have_an_audit_trail_and_can_be_undone_over_http(
    lab, local: TestClient
) -> None:
    _settings, factory, _ = lab
    with factory() as session:
        specimen = session.get(Specimen, _sample_ids(session, "S1")[0])
        image = specimen.image
        image.width, image.height = 4000, 3000
        session.commit()
        old_box = [specimen.x, specimen.y, specimen.w, specimen.h]
        specimen_id = specimen.id
    url = f"/api/specimens/{specimen_id}/box"
    assert local.put(url, json={"box": [10, 10, 50, 60], "edited_by": "Ana"}).status_code == 401
    outside = local.put(url, json={"box": [3990, 10, 50, 60], "edited_by": "Ana"}, headers=AUTH)
    assert outside.status_code == 400 and "leaves the image" in outside.json()["detail"]
    assert (
        local.put(
            "/api/specimens/999999/box", json={"box": [1, 1, 2, 2], "edited_by": "A"}, headers=AUTH
        ).status_code
        == 404
    )
    edited = local.put(url, json={"box": [10, 10, 50, 60], "edited_by": "Ana", "note": "legs"}, headers=AUTH)
    assert edited.status_code == 200, edited.text
    assert edited.json()["before"]["box"] == old_box and edited.json()["after"]["box"] == [10, 10, 50, 60]
    verified = local.post(
        f"/api/specimens/{specimen_id}/verifications",
        json={"status": "corrected", "family": "Staphylinidae", "verified_by": "Ben"},
        headers=AUTH,
    )
    assert verified.status_code == 201, verified.text
    trail = local.get(f"/api/specimens/{specimen_id}/events").json()
    assert [e["action"] for e in trail] == ["verify", "box_edit"]
    assert trail[0]["actor"] == "Ben" and trail[1]["actor"] == "Ana"
    counts_before = local.get("/api/counts", params={"sample": "S1"}).json()[0]["families"]
    assert counts_before.get("Staphylinidae", 0) >= 1

    undone = local.post(f"/api/events/{trail[0]['event_id']}/undo", json={"undone_by": "Ben"}, headers=AUTH)
    assert undone.status_code == 200, undone.text
    history = local.get(f"/api/specimens/{specimen_id}/verifications").json()
    assert history[0]["retracted_at"] is not None  # kept as history, no longer counts
    counts_after = local.get("/api/counts", params={"sample": "S1"}).json()[0]["families"]
    assert counts_after.get("Staphylinidae", 0) == counts_before["Staphylinidae"] - 1
    local.post(f"/api/events/{trail[1]['event_id']}/undo", json={"undone_by": "Ana"}, headers=AUTH)
    with factory() as session:
        row = session.get(Specimen, specimen_id)
        assert [row.x, row.y, row.w, row.h] == old_box and row.box_edited_by is None
    again = local.post(f"/api/events/{trail[1]['event_id']}/undo", json={"undone_by": "Ana"}, headers=AUTH)
    assert again.status_code == 400 and "already undone" in again.json()["detail"]


def test_the_default_model_is_one_setting_read_and_changed_over_http(lab, local: TestClient) -> None:
    settings, _factory, _ = lab
    listed = local.get("/api/models").json()
    assert listed["classifier"]["source"] == "configuration"
    assert listed["classifier"]["spec"] == settings.classifier.model
    version = listed["models"][0]["version"]
    assert local.put("/api/models/default", json={"version": version, "changed_by": "Ana"}).status_code == 401
    changed = local.put("/api/models/default", json={"version": version, "changed_by": "Ana"}, headers=AUTH)
    assert changed.status_code == 200 and changed.json()["is_default"] is True
    now = local.get("/api/models").json()["classifier"]
    assert now["source"] == "registry default" and now["version"] == version
    unknown = local.put("/api/models/default", json={"version": "nope@w0", "changed_by": "Ana"}, headers=AUTH)
    assert unknown.status_code == 400 and "no registered model" in unknown.json()["detail"]


# --- hardening: host names, token guessing ----------------------------------------------------------


def test_requests_for_another_host_name_are_refused_against_dns_rebinding(lab) -> None:
    app = lab[2]
    rebound = TestClient(app, base_url="http://evil.example:8000", client=LOCAL)
    for path in ("/api/specimens", "/api/exports/dwca.zip", "/api/samples"):
        response = rebound.get(path)
        assert response.status_code == 400 and "allowed_hosts" in response.json()["detail"], path
    for host in ("http://localhost:8000", "http://127.0.0.1:8000", "http://[::1]:8000"):
        assert TestClient(app, base_url=host, client=LOCAL).get("/api/samples").status_code == 200, host


def test_token_guessing_is_stopped_per_client_address(tmp_path: Path) -> None:
    settings = lab_settings(
        tmp_path / "d", **{"api.token": TOKEN, "api.auth_failures": 5, "api.auth_window_s": 600}
    )
    factory = open_lab_db(settings)
    app = create_app(settings, session_factory=factory)
    guesser = TestClient(app, base_url="http://localhost", client=REMOTE)
    statuses = [
        guesser.post(
            "/api/verifications", json={}, headers={"Authorization": f"Bearer guess-{n}"}
        ).status_code
        for n in range(7)
    ]
    assert statuses[:5] == [401] * 5 and statuses[5:] == [429, 429]
    locked = guesser.post("/api/verifications", json={}, headers=AUTH)  # even the right token, for now
    assert locked.status_code == 429 and 0 < int(locked.headers["retry-after"]) <= 600
    other = TestClient(app, base_url="http://localhost", client=LOCAL)
    assert other.post("/api/verifications", json={}, headers=AUTH).status_code == 422  # reaches validation
    factory.kw["bind"].dispose()

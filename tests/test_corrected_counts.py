"""Counts that know their error: per-family counts corrected for the model's validated confusion
matrix and unknown-family acceptance, wired into ``labpipe counts --corrected`` and the sample page."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from records_fixtures import MODEL, Spec, add_image, build_lab, get_model, lab_settings, open_lab_db
from sqlalchemy.orm import Session

from labpipe.classify.count_correction import corrected_counts
from labpipe.cli.main import cli
from labpipe.reports.counts import (
    ModelCorrection,
    SampleCounts,
    correct_sample,
    correction_models,
    counts_to_csv,
    counts_to_table,
)

BLOCK = {
    "families": ["Apidae", "Carabidae", "Formicidae"],
    "confusion": [[45, 2, 3, 10], [1, 50, 1, 8], [2, 1, 52, 5]],
    "ood": [6, 3, 12, 39],
}
TRAINED = "tiny@wabcdef012345-l012345abcdef"


def _counts(**kw: object) -> SampleCounts:
    values: dict[str, object] = {
        "sample": "S9",
        "specimens": 60,
        "rejected": 12,
        "families": {"Formicidae": 30, "Apidae": 12, "Carabidae": 6},
        "model_versions": ["m@1"],
    }
    values.update(kw)
    return SampleCounts(**values)  # type: ignore[arg-type]


MODELS = {"m@1": ModelCorrection("m@1", BLOCK, threshold=0.5)}


# --- pure wiring ----------------------------------------------------------------------------------


def test_only_the_predicted_part_is_corrected_and_verified_specimens_come_back_exactly() -> None:
    counts = _counts(family_verified={"Formicidae": 4}, rejected_verified=1)
    got = correct_sample(counts, MODELS, draws=300)
    assert got.available and got.model_version == "m@1"
    # the same solve on the predicted part alone: 26 Formicidae, 12 Apidae, 6 Carabidae, 11 rejected
    alone = corrected_counts(
        BLOCK["families"],
        {"Formicidae": 26, "Apidae": 12, "Carabidae": 6},
        11,
        BLOCK["confusion"],
        BLOCK["ood"],
        draws=300,
    )
    f = got.families["Formicidae"]
    assert (f.count, f.verified) == (30, 4)
    assert f.corrected == pytest.approx(alone["Formicidae"].corrected + 4)
    assert (f.low, f.high) == pytest.approx((alone["Formicidae"].low + 4, alone["Formicidae"].high + 4))
    assert got.families["Apidae"].corrected == pytest.approx(alone["Apidae"].corrected)
    assert got.other is not None and got.other.corrected == pytest.approx(alone["other"].corrected + 1)
    assert any("5 verified specimens added back" in n for n in got.notes)


def test_a_fully_verified_sample_gets_its_counts_back_with_no_width() -> None:
    counts = _counts(
        specimens=5, rejected=0, families={"Apidae": 3, "Lygaeidae": 2}, model_versions=[],
        family_verified={"Apidae": 3, "Lygaeidae": 2},
    )  # fmt: skip
    got = correct_sample(counts, {})
    assert got.available and got.model_version is None
    assert {f: (r.corrected, r.low, r.high) for f, r in got.families.items()} == {
        "Apidae": (3.0, 3.0, 3.0),
        "Lygaeidae": (2.0, 2.0, 2.0),
    }


def test_a_family_a_person_named_that_the_model_lacks_keeps_its_verified_count() -> None:
    counts = _counts(families={"Formicidae": 30, "Lygaeidae": 2}, family_verified={"Lygaeidae": 2})
    got = correct_sample(counts, MODELS, draws=100)
    lyg = got.families["Lygaeidae"]
    assert (lyg.count, lyg.corrected, lyg.low, lyg.high) == (2, 2.0, 2.0, 2.0)


@pytest.mark.parametrize(
    ("counts", "models", "threshold", "reason"),
    [
        (_counts(model_versions=["m@1", "m@2"]), MODELS, None, "mixes 2 models (m@1, m@2)"),
        (
            _counts(),
            {"m@1": ModelCorrection("m@1", None)},
            None,
            "no validated confusion matrix for model m@1",
        ),
        (_counts(), {}, None, "no validated confusion matrix for model m@1"),
        (_counts(), MODELS, 0.3, "re-decided at threshold 0.3"),
        (_counts(families={"Vespidae": 3}), MODELS, None, "does not name Vespidae"),
        (_counts(specimens=0, rejected=0, families={}), MODELS, None, "no counted specimens"),
    ],
)
def test_no_number_is_made_up_and_the_reason_is_given(counts, models, threshold, reason) -> None:
    got = correct_sample(counts, models, threshold=threshold, draws=50)
    assert not got.available and reason in (got.reason or "")
    assert got.families == {} and got.other is None


def test_the_models_own_threshold_given_at_query_time_still_corrects() -> None:
    assert correct_sample(_counts(), MODELS, threshold=0.5, draws=50).available


def test_without_ood_outcomes_there_is_no_other_row_and_a_note_says_so() -> None:
    block = {**BLOCK, "ood": None}
    got = correct_sample(_counts(), {"m@1": ModelCorrection("m@1", block)}, draws=50)
    assert got.available and got.other is None
    assert any("no out-of-distribution outcomes" in n for n in got.notes)


def test_gate_rejections_are_named_as_outside_the_validated_matrix() -> None:
    from labpipe.queries.rule import SpecimenCall
    from labpipe.reports.counts import aggregate

    gated = SpecimenCall(1, "S9", "Apidae", 0.9, True, "not_a_specimen: gate score 3.1 > 1.0", (), "m@1")
    kept = SpecimenCall(2, "S9", "Apidae", 0.9, False, None, (("Apidae", 0.9),), "m@1")
    counts = aggregate([gated, kept])[0]
    assert counts.rejected_by_gate == 1
    got = correct_sample(counts, MODELS, draws=50)
    assert got.available and any("1 rejected by the specimen gate" in n for n in got.notes)


def test_csv_and_table_render_corrected_counts_or_the_reason() -> None:
    ok = _counts()
    ok.corrected = correct_sample(ok, MODELS, draws=100)
    missing = _counts(sample="S8")
    missing.corrected = correct_sample(missing, {})
    table = [ok.as_dict(), missing.as_dict()]
    plain = counts_to_csv(table)
    assert plain.splitlines()[0] == "sample,family,count,model_versions,mixed_models"
    assert "corrected" not in plain
    frame = pd.read_csv(io.StringIO(counts_to_csv(table, corrected=True)), keep_default_na=False)
    assert list(frame.columns) == [
        "sample", "family", "count", "corrected", "corrected_low", "corrected_high", "corrected_note",
        "model_versions", "mixed_models",
    ]  # fmt: skip
    s9 = frame[frame["sample"] == "S9"].set_index("family")
    assert (
        float(s9.loc["Formicidae", "corrected"]) == ok.corrected.families["Formicidae"].as_dict()["corrected"]
    )
    assert s9.loc["other", "corrected"] != "" and s9.loc["rejected", "corrected"] == ""
    s8 = frame[frame["sample"] == "S8"]
    assert set(s8["corrected"]) == {""}
    assert set(s8["corrected_note"]) == {"no validated confusion matrix for model m@1"}
    both = pd.read_csv(io.StringIO(counts_to_csv(table, expected=True, corrected=True)))
    assert list(both.columns)[3:10] == [
        "expected", "expected_low", "expected_high", "corrected", "corrected_low", "corrected_high",
        "corrected_note",
    ]  # fmt: skip
    text = counts_to_table(table)
    assert "corrected" in text.split("sample S8")[0].splitlines()[1]  # beside the first family's count
    assert "corrected: none: no validated confusion matrix for model m@1" in text


# --- end to end: a trained model's directory, a sample it classified --------------------------------


def _model_dir(root: Path) -> Path:
    directory = root / "models" / "tiny"
    directory.mkdir(parents=True)
    config = {"format": "labpipe-classifier-v1", "labels": BLOCK["families"], "threshold": 0.5}
    config["count_correction"] = {**BLOCK, "confusion_source": "test", "ood_source": "test"}
    (directory / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return directory


S4_SPECS = [
    *[Spec("Formicidae", 0.9, top_k=[["Formicidae", 0.9]]) for _ in range(8)],
    *[Spec("Apidae", 0.8, top_k=[["Apidae", 0.8]]) for _ in range(3)],
    Spec("Apidae", 0.7, top_k=[["Apidae", 0.7]], verification=("corrected", "Formicidae")),
    *[
        Spec("Carabidae", 0.6, True, "out_of_distribution: knn distance 0.9 > 0.5", [["Carabidae", 0.6]])
        for _ in range(3)
    ],
]


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[object, Session, object]]:
    settings = lab_settings(tmp_path / "data")
    factory = open_lab_db(settings)
    with factory() as session:
        build_lab(session, settings)
        trained = get_model(session, TRAINED)
        trained.path = str(_model_dir(tmp_path))
        trained.labels = list(BLOCK["families"])
        trained.settings = {"threshold": 0.5}
        from labpipe.db.models import Sample

        session.add(Sample(id="S4", site="Paphos"))
        session.flush()
        add_image(session, settings, "S4", S4_SPECS, "s4-plate1.tif", model=trained)
        session.commit()
        yield settings, session, factory
    factory.kw["bind"].dispose()


def test_cli_counts_corrected_uses_the_models_recorded_matrix(lab) -> None:
    settings = lab[0]
    base = ["--data-dir", str(settings.storage.root)]
    run = CliRunner()
    out = run.invoke(cli, [*base, "counts", "--json", "--corrected"])
    assert out.exit_code == 0, out.output
    rows = {r["sample"]: r for r in json.loads(out.stdout)}
    s4 = rows["S4"]["corrected"]
    assert s4["available"] and s4["model_version"] == TRAINED
    # 8 predicted + 1 verified Formicidae, 3 Apidae, 3 rejected: only the predicted part is solved
    alone = corrected_counts(
        BLOCK["families"], {"Formicidae": 8, "Apidae": 3}, 3, BLOCK["confusion"], BLOCK["ood"]
    )
    assert s4["families"]["Formicidae"]["verified"] == 1
    assert s4["families"]["Formicidae"]["corrected"] == round(alone["Formicidae"].corrected + 1, 1)
    assert s4["other"]["corrected"] == round(alone["other"].corrected, 1)
    s1 = rows["S1"]["corrected"]
    assert not s1["available"] and s1["reason"].startswith(f"no validated confusion matrix for model {MODEL}")
    assert "built-in" in s1["reason"]
    assert "corrected" not in json.loads(run.invoke(cli, [*base, "counts", "--json"]).stdout)[0]

    table = run.invoke(cli, [*base, "counts", "--corrected", "--sample", "S4", "--sample", "S1"])
    assert table.exit_code == 0, table.output
    assert f"corrected: with model {TRAINED}'s validated confusion matrix" in table.stdout
    assert f"corrected: none: no validated confusion matrix for model {MODEL}" in table.stdout
    csv = run.invoke(cli, [*base, "counts", "--csv", "--corrected", "--sample", "S4"])
    frame = pd.read_csv(io.StringIO(csv.stdout), keep_default_na=False).set_index("family")
    assert float(frame.loc["Formicidae", "corrected"]) == s4["families"]["Formicidae"]["corrected"]
    plain = run.invoke(cli, [*base, "counts", "--csv", "--sample", "S4"])
    assert plain.stdout.splitlines()[0] == "sample,family,count,model_versions,mixed_models"
    other_threshold = run.invoke(cli, [*base, "counts", "--json", "--corrected", "--threshold", "0.4"])
    s4_at = {r["sample"]: r for r in json.loads(other_threshold.stdout)}["S4"]["corrected"]
    assert "re-decided at threshold 0.4" in s4_at["reason"]
    matrix = run.invoke(cli, [*base, "counts", "--matrix", "--corrected"])
    assert matrix.exit_code == 2


def test_a_model_whose_directory_is_gone_says_so(lab, tmp_path: Path) -> None:
    _, session, _ = lab
    row = get_model(session, TRAINED)
    row.path = str(tmp_path / "gone")
    session.flush()
    got = correction_models(session, [TRAINED, MODEL])
    assert got[TRAINED].record is None and "cannot read" in (got[TRAINED].problem or "")
    assert got[MODEL].record is None and "built-in" in (got[MODEL].problem or "")


def test_the_sample_page_shows_the_corrected_count_beside_the_raw_count(lab) -> None:
    from labpipe.web import create_web_app

    settings, _, factory = lab
    client = TestClient(
        create_web_app(settings, session_factory=factory),
        base_url="http://localhost",
        client=("127.0.0.1", 50000),
    )
    page = client.get("/samples/S4", headers={"Accept": "text/html"})
    assert page.status_code == 200
    assert '<th class="num" title=' in page.text and ">Corrected</th>" in page.text
    assert page.text.count('class="num corrected">') >= 3 and f"model {TRAINED}" in page.text
    s1 = client.get("/samples/S1", headers={"Accept": "text/html"}).text
    assert f"No corrected counts: no validated confusion matrix for model {MODEL}" in s1

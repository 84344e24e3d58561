"""Counts per sample x family: query-time threshold, verifications first, expected counts with intervals."""

from __future__ import annotations

import io
import itertools
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from records_fixtures import (
    MODEL,
    NONE_SPECS,
    S1_SPECS,
    Spec,
    add_image,
    build_lab,
    get_model,
    lab_settings,
    open_lab_db,
)
from sqlalchemy import select
from sqlalchemy.orm import Session

from labpipe.cli.main import cli
from labpipe.db.models import Classification, Image, Sample, Specimen
from labpipe.queries.calls import CountFilter
from labpipe.queries.rule import Outcome, SpecimenCall, resolve
from labpipe.reports.counts import (
    community_matrix,
    compute_counts,
    count_families,
    counts_to_csv,
    counts_to_table,
    matrix_to_csv,
    poisson_binomial_interval,
    poisson_binomial_pmf,
)
from labpipe.review import ReviewError, export_training_folder, record_verification

# --- pure rules -----------------------------------------------------------------------------------


def _call(**kw: object) -> SpecimenCall:
    values: dict[str, object] = {
        "specimen_id": 1,
        "sample_id": "S1",
        "family": "Carabidae",
        "probability": 0.45,
        "rejected": True,
        "reason": "low_confidence: Carabidae 0.45 < threshold 0.50",
        "top_k": (("Carabidae", 0.45), ("Staphylinidae", 0.30)),
        "model_version": "m@w1",
    }
    values.update(kw)
    return SpecimenCall(**values)  # type: ignore[arg-type]


def test_a_low_confidence_specimen_is_accepted_when_the_threshold_is_lowered_at_query_time() -> None:
    call = _call()
    assert resolve(call).outcome is Outcome.REJECTED  # the stored decision
    assert resolve(call, threshold=0.45) == resolve(call, threshold=0.3)
    assert resolve(call, threshold=0.45).outcome is Outcome.ACCEPTED
    assert resolve(call, threshold=0.45).family == "Carabidae"
    assert resolve(call, threshold=0.46).outcome is Outcome.REJECTED


def test_an_accepted_specimen_is_rejected_when_the_threshold_is_raised() -> None:
    call = _call(probability=0.81, rejected=False, reason=None)
    assert resolve(call).family == "Carabidae"
    assert resolve(call, threshold=0.9).outcome is Outcome.REJECTED


@pytest.mark.parametrize("code", ["not_arthropod", "family_unresolved", "out_of_distribution"])
def test_hard_rejections_stay_rejected_whatever_the_threshold(code: str) -> None:
    call = _call(probability=0.8, reason=f"{code}: something")
    for threshold in (None, 0.0, 0.5):
        assert resolve(call, threshold).outcome is Outcome.REJECTED


def test_an_out_of_distribution_specimen_adds_nothing_to_any_familys_expected_count() -> None:
    far = resolve(_call(probability=0.9, reason="out_of_distribution: feature distance 120 > 90"))
    assert (far.distribution, far.other) == ((), 1.0)
    unsure = resolve(_call())  # low confidence: its probabilities still say something
    assert unsure.distribution == (("Carabidae", 0.45), ("Staphylinidae", 0.30))


def test_a_persons_verification_wins_over_the_prediction() -> None:
    corrected = resolve(_call(verification="corrected", verified_family="Curculionidae"), threshold=0.99)
    assert (corrected.outcome, corrected.family, corrected.verified) == (
        Outcome.ACCEPTED,
        "Curculionidae",
        True,
    )
    assert corrected.distribution == (("Curculionidae", 1.0),)
    confirmed = resolve(_call(verification="confirmed"))  # rejected by the model, confirmed by a person
    assert (confirmed.outcome, confirmed.family) == (Outcome.ACCEPTED, "Carabidae")
    assert resolve(_call(verification="not_specimen")).outcome is Outcome.EXCLUDED


def test_a_box_holding_several_specimens_counts_once_and_is_flagged() -> None:
    with_family = resolve(_call(verification="multiple", verified_family="Carabidae"))
    assert (with_family.outcome, with_family.family, with_family.multiple) == (
        Outcome.ACCEPTED,
        "Carabidae",
        True,
    )
    predicted = resolve(_call(verification="multiple", rejected=False, reason=None, probability=0.7))
    assert (predicted.family, predicted.multiple, predicted.verified) == ("Carabidae", True, False)


def test_unclassified_specimens_are_neither_counted_nor_rejected() -> None:
    call = SpecimenCall(specimen_id=1, sample_id="S1")
    assert resolve(call).outcome is Outcome.UNCLASSIFIED


def test_threshold_outside_zero_one_is_refused_with_the_value() -> None:
    with pytest.raises(ValueError, match=r"1\.5"):
        resolve(_call(), threshold=1.5)


# --- Poisson-binomial -------------------------------------------------------------------------------


def test_pmf_of_two_fair_coins() -> None:
    assert poisson_binomial_pmf([0.5, 0.5]).tolist() == [0.25, 0.5, 0.25]
    assert poisson_binomial_pmf([]).tolist() == [1.0]


def test_pmf_matches_brute_force_enumeration() -> None:
    ps = [0.1, 0.9, 0.35, 0.5, 0.77, 0.02, 0.6]
    brute = np.zeros(len(ps) + 1)
    for outcome in itertools.product([0, 1], repeat=len(ps)):
        brute[sum(outcome)] += np.prod([p if o else 1 - p for p, o in zip(ps, outcome, strict=True)])
    assert np.allclose(poisson_binomial_pmf(ps), brute)


def test_interval_of_certain_and_impossible_specimens_is_exact() -> None:
    assert poisson_binomial_interval([1.0, 1.0, 0.0]) == (2.0, 2, 2)
    assert poisson_binomial_interval([]) == (0.0, 0, 0)


def test_interval_is_equal_tailed_and_covers_at_least_95_percent() -> None:
    rng = np.random.default_rng(1)
    ps = rng.uniform(0.05, 0.95, 60)
    mean, low, high = poisson_binomial_interval(ps)
    pmf = poisson_binomial_pmf(ps)
    assert mean == pytest.approx(ps.sum())
    assert pmf[:low].sum() < 0.025 <= pmf[: low + 1].sum()
    assert pmf[high + 1 :].sum() <= 0.025 < pmf[high:].sum()
    assert pmf[low : high + 1].sum() >= 0.95


def test_normal_approximation_agrees_with_the_exact_interval_for_many_specimens() -> None:
    ps = np.random.default_rng(2).uniform(0, 1, 3000)
    exact = poisson_binomial_interval(ps)
    approx = poisson_binomial_interval(ps, exact_limit=100)
    assert abs(exact[1] - approx[1]) <= 2 and abs(exact[2] - approx[2]) <= 2


def test_probabilities_outside_zero_one_are_refused() -> None:
    with pytest.raises(ValueError, match="must be in"):
        poisson_binomial_interval([0.5, 1.2])


# --- community matrix -------------------------------------------------------------------------------


def test_community_matrix_is_zero_filled_with_families_as_sorted_columns() -> None:
    table = [
        {"sample": "S1", "families": {"Carabidae": 2, "Apidae": 1}},
        {"sample": "S2", "families": {}},
        {"sample": None, "families": {"Formicidae": 4}},
    ]
    names, families, rows = community_matrix(table)
    assert names == ["S1", "S2", "_unassigned"]
    assert families == ["Apidae", "Carabidae", "Formicidae"]
    assert rows == [[1, 2, 0], [0, 0, 0], [0, 0, 4]]
    frame = pd.read_csv(io.StringIO(matrix_to_csv(table)), index_col=0)
    assert frame.loc["S1", "Carabidae"] == 2 and frame.loc["S2"].sum() == 0


# --- from the database --------------------------------------------------------------------------------


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[object, Session]]:
    settings = lab_settings(tmp_path / "data")
    factory = open_lab_db(settings)
    with factory() as session:
        build_lab(session, settings)
        yield settings, session
    factory.kw["bind"].dispose()


def _by_sample(table: list[dict]) -> dict:
    return {row["sample"]: row for row in table}


def test_counts_follow_the_stored_decisions_and_the_verifications(lab) -> None:
    _, session = lab
    rows = _by_sample(count_families(session))
    s1 = rows["S1"]
    assert s1["families"] == {"Carabidae": 2, "Curculionidae": 2, "Formicidae": 1}
    assert (s1["specimens"], s1["rejected"], s1["excluded"], s1["multiple"], s1["verified"]) == (
        7,
        2,
        1,
        1,
        2,
    )
    assert sum(s1["families"].values()) + s1["rejected"] == s1["specimens"]
    assert rows["S2"]["families"] == {"Formicidae": 2, "Apidae": 1}
    assert rows["S3"]["images"] == 1 and rows["S3"]["specimens"] == 0 and rows["S3"]["families"] == {}
    assert rows[None]["families"] == {"Carabidae": 1}
    assert [r["sample"] for r in count_families(session)] == ["S1", "S2", "S3", None]


def test_lowering_the_threshold_counts_low_confidence_specimens_without_reprocessing(lab) -> None:
    _, session = lab
    before = session.scalar(select(sa.func.count()).select_from(Classification))
    s1 = _by_sample(count_families(session, threshold=0.4))["S1"]
    assert s1["families"] == {"Carabidae": 3, "Curculionidae": 2, "Formicidae": 1}
    assert s1["rejected"] == 1  # the not_arthropod one stays rejected
    strict = _by_sample(count_families(session, threshold=0.9))["S1"]
    assert strict["families"] == {"Carabidae": 1, "Curculionidae": 1, "Formicidae": 1}
    assert strict["rejected"] == 4
    assert session.scalar(select(sa.func.count()).select_from(Classification)) == before


def test_expected_counts_sum_the_calibrated_probabilities_with_intervals(lab) -> None:
    _, session = lab
    s1 = _by_sample(count_families(session))["S1"]
    expected = s1["expected"]
    assert expected["Carabidae"]["mean"] == pytest.approx(0.93 + 0.81 + 0.45 + 0.20)
    assert expected["Curculionidae"]["mean"] == pytest.approx(0.10 + 1.0 + 0.55)  # verified = 1
    assert expected["Formicidae"]["mean"] == pytest.approx(1.0)  # confirmed; the excluded one adds nothing
    assert expected["Staphylinidae"]["mean"] == pytest.approx(0.05 + 0.30)
    assert s1["expected_other"]["mean"] == pytest.approx(0.02 + 0.09 + 0.25 + 0.80 + 0.45)
    assert (expected["Formicidae"]["low"], expected["Formicidae"]["high"]) == (1, 1)
    _, low, high = poisson_binomial_interval([0.93, 0.81, 0.45, 0.20])
    assert (expected["Carabidae"]["low"], expected["Carabidae"]["high"]) == (low, high)
    # the threshold changes the counts, never the expected counts
    assert _by_sample(count_families(session, threshold=0.1))["S1"]["expected"] == expected


def test_filters_by_sample_site_date_range(lab) -> None:
    import datetime as dt

    _, session = lab
    assert [r["sample"] for r in count_families(session, "S2")] == ["S2"]
    assert [r["sample"] for r in count_families(session, samples=["S1", "S3"])] == ["S1", "S3"]
    assert [r["sample"] for r in count_families(session, site="Troodos")] == ["S1", "S3"]
    june = count_families(session, date_from=dt.date(2024, 6, 1), date_to=dt.date(2024, 6, 30))
    assert [r["sample"] for r in june] == ["S2"]


def test_model_version_filter_counts_only_that_models_classifications(lab) -> None:
    _, session = lab
    newer = get_model(session, "trained@w333333333333-l444444444444")
    s2_specimens = session.scalars(
        select(Specimen).join(Image).where(Image.sample_id == "S2").order_by(Specimen.id)
    ).all()
    for specimen in s2_specimens[:2]:
        specimen.classifications.append(
            Classification(
                model_id=newer.id, family="Apidae", probability=0.99, rejected=False, top_k=[["Apidae", 0.99]]
            )
        )
    session.commit()
    latest = _by_sample(count_families(session, "S2"))["S2"]
    assert latest["families"] == {"Apidae": 3}
    assert latest["model_versions"] == sorted([MODEL, newer.version])
    only_new = _by_sample(count_families(session, "S2", model_version=newer.version))["S2"]
    assert (only_new["families"], only_new["specimens"], only_new["unclassified"]) == ({"Apidae": 2}, 2, 1)
    only_old = _by_sample(count_families(session, "S2", model_version=MODEL))["S2"]
    assert only_old["families"] == {"Formicidae": 2, "Apidae": 1}


def test_csv_has_the_long_layout_and_reads_back_with_pandas(lab) -> None:
    _, session = lab
    table = count_families(session)
    frame = pd.read_csv(io.StringIO(counts_to_csv(table)), keep_default_na=False)
    assert list(frame.columns) == ["sample", "family", "count", "model_versions", "mixed_models"]
    s1 = frame[frame["sample"] == "S1"].set_index("family")["count"].to_dict()
    assert s1 == {"Carabidae": 2, "Curculionidae": 2, "Formicidae": 1, "rejected": 2}
    wide = pd.read_csv(io.StringIO(counts_to_csv(table, expected=True)), keep_default_na=False)
    row = wide[(wide["sample"] == "S1") & (wide["family"] == "Staphylinidae")].iloc[0]
    assert int(row["count"]) == 0 and float(row["expected"]) == pytest.approx(0.35)


def test_cli_counts_in_every_format(lab, tmp_path: Path) -> None:
    settings, session = lab
    base = ["--data-dir", str(settings.storage.root)]
    run = CliRunner()
    out = run.invoke(cli, [*base, "counts", "--json", "--threshold", "0.4"])
    assert out.exit_code == 0, out.output
    assert _by_sample(json.loads(out.stdout))["S1"]["families"]["Carabidae"] == 3
    out = run.invoke(cli, [*base, "counts", "--csv", "--sample", "S2"])
    assert out.stdout.splitlines() == [
        "sample,family,count,model_versions,mixed_models",
        f"S2,Formicidae,2,{MODEL},no",
        f"S2,Apidae,1,{MODEL},no",
        f"S2,rejected,0,{MODEL},no",
    ]
    matrix_file = tmp_path / "matrix.csv"
    out = run.invoke(cli, [*base, "counts", "--format", "matrix", "--out", str(matrix_file)])
    assert out.exit_code == 0, out.output
    matrix = pd.read_csv(matrix_file, index_col=0)
    assert list(matrix.index) == ["S1", "S2", "S3", "_unassigned"]
    for entry in count_families(session):
        name = entry["sample"] or "_unassigned"
        for family in matrix.columns:
            assert matrix.loc[name, family] == entry["families"].get(family, 0)
    table = run.invoke(cli, [*base, "counts", "--site", "Paphos"])
    assert "sample S2" in table.stdout and "expected" in table.stdout and "sample S1" not in table.stdout
    bad = run.invoke(cli, [*base, "counts", "--model", "nope@w0"])
    assert bad.exit_code == 2 and "no registered model" in bad.output
    both = run.invoke(cli, [*base, "counts", "--json", "--csv"])
    assert both.exit_code == 2


def test_counts_are_the_same_on_postgresql(postgres_url: str, tmp_path: Path) -> None:
    from labpipe.db.migrate import upgrade

    name = f"labpipe_counts_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = sa.engine.make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    try:
        upgrade(url)
        pg = lab_settings(tmp_path / "pg", url)
        lite = lab_settings(tmp_path / "lite")
        results = []
        for settings in (pg, lite):
            factory = open_lab_db(settings)
            with factory() as session:
                build_lab(session, settings)
                results.append((count_families(session), count_families(session, threshold=0.4)))
            factory.kw["bind"].dispose()
        assert results[0] == results[1]
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def test_latest_verification_is_the_one_that_counts(lab) -> None:
    import datetime as dt

    from labpipe.db.models import Verification

    settings, session = lab
    session.add(Sample(id="S4"))
    image = add_image(session, settings, "S4", [Spec("Carabidae", 0.9, top_k=[["Carabidae", 0.9]])], "s4.tif")
    specimen = image.specimens[0]
    specimen.verifications.append(
        Verification(
            status="not_specimen", verified_by="a", verified_at=dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
        )
    )
    specimen.verifications.append(
        Verification(
            status="corrected",
            family="Silphidae",
            verified_by="b",
            verified_at=dt.datetime(2024, 2, 1, tzinfo=dt.UTC),
        )
    )
    session.commit()
    (s4,) = compute_counts(session, CountFilter(samples=("S4",)))
    assert s4.families == {"Silphidae": 1} and s4.excluded == 0


def test_a_misspelt_family_never_reaches_the_counts_or_a_training_folder(lab, tmp_path: Path) -> None:
    settings, session = lab
    second = session.scalars(
        select(Specimen.id).join(Image).where(Image.sample_id == "S1").order_by(Specimen.id)
    ).all()[1]  # S1 #2: Carabidae 0.81
    with pytest.raises(ReviewError, match=r"not a family known to this lab.*did you mean Carabidae"):
        record_verification(session, second, "corrected", family="Carbidae", verified_by="A")
    session.commit()
    families = {f for row in count_families(session) for f in row["families"]}
    assert "Carbidae" not in families and "Carabidae" in families
    out = tmp_path / "training"
    export = export_training_folder(session, settings.storage.crops_dir, out)
    assert "Carbidae" not in export.families and not (out / "Carbidae").exists()
    assert "Carbidae" not in (out / "labels.csv").read_text()
    # what the person meant, in any case, is counted and exported under the listed name
    record_verification(session, second, "corrected", family="histeridae ", verified_by="A")
    session.commit()
    (s1,) = count_families(session, "S1")
    assert s1["families"]["Histeridae"] == 1
    assert export_training_folder(session, settings.storage.crops_dir, out).families["Histeridae"] == 1


def test_unassigned_images_are_counted_apart(lab) -> None:
    _, session = lab
    entry = _by_sample(count_families(session))[None]
    assert entry["specimens"] == len(NONE_SPECS) and len(S1_SPECS) == 8


def test_the_default_classifier_decides_and_a_sample_of_two_models_is_flagged(lab) -> None:
    """A default set after classification wins where it has a call; the sample says it mixes models."""
    from labpipe.active_models import change_default
    from labpipe.db.models import Classification, Image, Model, ModelKind, Specimen

    _, session = lab
    newer = Model(
        name="families-v2",
        kind=ModelKind.CLASSIFIER.value,
        version="families-v2@w333333333333-l444444444444",
        weights_hash="3" * 64,
        labels_hash="4" * 64,
        labels=["Apidae", "Formicidae"],
    )
    session.add(newer)
    session.flush()
    first = session.scalars(
        select(Specimen).join(Image).where(Image.sample_id == "S2").order_by(Specimen.index_in_image)
    ).first()
    # the older model called it Formicidae; the new one says Apidae
    session.add(
        Classification(
            specimen_id=first.id, model_id=newer.id, family="Apidae", probability=0.9, top_k=[["Apidae", 0.9]]
        )
    )
    change_default(session, MODEL, actor="test")  # the old model is the default: it still decides
    session.flush()
    s2 = _by_sample(count_families(session, sample_id="S2"))["S2"]
    assert s2["families"] == {"Formicidae": 2, "Apidae": 1} and s2["mixed_models"] is False
    change_default(session, newer.version, actor="test")
    session.flush()
    s2 = _by_sample(count_families(session, sample_id="S2"))["S2"]
    assert s2["families"] == {"Apidae": 2, "Formicidae": 1}
    assert s2["mixed_models"] is True and s2["model_versions"] == sorted([MODEL, newer.version])
    csv_rows = counts_to_csv([s2]).splitlines()[1:]
    versions = ";".join(sorted([MODEL, newer.version]))
    assert all(row.endswith(f"{versions},yes") for row in csv_rows), csv_rows
    assert "MIXED MODELS" in counts_to_table([s2])


def test_both_sql_shapes_of_the_rule_choose_the_same_classification_and_verification(lab) -> None:
    """Counts rank whole tables, pages look each specimen up: both pick the default classifier's
    call over a newer one, the latest standing verification over a newer retracted one."""
    import datetime as dt

    from labpipe.db.models import Model, ModelKind, Verification
    from labpipe.queries.calls import best_families, latest_verifiers, load_calls
    from labpipe.queries.listings import SpecimenFilter, specimen_page

    _, session = lab
    newer = Model(
        name="families-v2",
        kind=ModelKind.CLASSIFIER.value,
        version="families-v2@w333333333333-l444444444444",
        weights_hash="3" * 64,
        labels_hash="4" * 64,
        labels=["Apidae"],
    )
    session.add(newer)
    session.flush()
    first, second, third = session.scalars(select(Specimen.id).order_by(Specimen.id).limit(3))
    for sid in (first, second):
        session.add(
            Classification(
                specimen_id=sid,
                model_id=newer.id,
                family="Apidae",
                probability=0.99,
                top_k=[["Apidae", 0.99]],
            )
        )
    session.scalars(select(Model).where(Model.version == MODEL)).one().is_default = True
    when = dt.datetime(2024, 3, 1, tzinfo=dt.UTC)
    session.add_all(
        [
            Verification(
                specimen_id=third, status="corrected", family="Silphidae", verified_by="a", verified_at=when
            ),
            Verification(
                specimen_id=third, status="corrected", family="Histeridae", verified_by="b", verified_at=when
            ),
            Verification(
                specimen_id=third,
                status="not_specimen",
                verified_by="c",
                verified_at=when + dt.timedelta(days=1),
                retracted_at=when + dt.timedelta(days=2),
            ),
        ]
    )
    session.commit()
    ids = list(session.scalars(select(Specimen.id).order_by(Specimen.id)))
    for version in (None, MODEL, newer.version):
        flt = CountFilter(model_version=version)
        ranked = load_calls(session, flt)  # whole tables: window functions
        looked_up = load_calls(session, flt, specimen_ids=ids)  # a few ids: correlated lookups
        assert ranked == looked_up, version
        _, rows = specimen_page(session, SpecimenFilter(model=version, sort="oldest"), limit=100)
        assert [r.call for r in rows] == [c for c in ranked if version is None or c.classified], version
    calls = {c.specimen_id: c for c in load_calls(session)}
    assert calls[first].family != "Apidae" and calls[first].model_version == MODEL  # the default decides
    assert (calls[third].verification, calls[third].verified_family) == ("corrected", "Histeridae")
    assert latest_verifiers(session, [third]) == {third: "b"}  # not c: that one was undone
    assert best_families(session, [first, 10**6])[first] == calls[first].family
    old = session.scalars(select(Model).where(Model.version == MODEL)).one()
    old.is_default, newer.is_default = False, True
    session.commit()
    assert best_families(session, [first]) == {first: "Apidae"}

"""Family names a person gives are checked: the shipped list, name matching, the lab's own list, and
review.py refusing a typo ("Carbidae") with the closest names while accepting a confirmed new name."""

from __future__ import annotations

import csv
import re
import threading
from collections import Counter
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from records_fixtures import MODEL, build_lab, get_model, lab_settings, open_lab_db
from sqlalchemy import func, select

from labpipe.cli.main import cli
from labpipe.config import load_settings
from labpipe.db.models import Model, ModelKind, Specimen, Verification
from labpipe.families import (
    LAB_FILE_HEADER,
    ORDER_LEVEL_GROUPS,
    FamilyListError,
    FamilyNames,
    accepted_families,
    add_lab_family,
    check_new_family_name,
    closest_families,
    family_key,
    match_family,
    read_lab_families,
    shipped_families,
)
from labpipe.reports.taxonomy import higher_taxonomy
from labpipe.review import (
    ReviewError,
    UnknownFamilyError,
    UnknownSpecimenError,
    record_verification,
    record_verifications,
)

# --- the shipped list ---------------------------------------------------------------------------------


def _shipped_csv() -> list[dict[str, str]]:
    text = resources.files("labpipe.reports").joinpath("arthropod_families.csv").read_text(encoding="utf-8")
    return list(csv.DictReader(text.splitlines()))


def test_the_shipped_list_has_unique_family_names_each_with_its_order_and_class() -> None:
    rows = _shipped_csv()
    assert list(rows[0]) == list(LAB_FILE_HEADER)  # family, order, class, common_name, note
    assert len(rows) >= 500
    keys = Counter(family_key(r["family"]) for r in rows)
    assert [k for k, n in keys.items() if n > 1] == []
    for row in rows:
        name = row["family"]
        assert name == name.strip() and re.fullmatch(r"[A-Z][a-z]+", name), name
        assert name.endswith(("idae", "inae")) or name in ORDER_LEVEL_GROUPS, name
        assert re.fullmatch(r"[A-Z][a-z]+", row["order"]), (name, row["order"])
        assert re.fullmatch(r"[A-Z][a-z]+", row["class"]), (name, row["class"])
    assert {r["family"] for r in rows} >= ORDER_LEVEL_GROUPS
    per_order = Counter(r["order"] for r in rows)
    assert per_order["Coleoptera"] >= 80
    for order in ("Hymenoptera", "Diptera", "Hemiptera", "Lepidoptera", "Araneae"):
        assert per_order[order] >= 40, order
    classes = {r["class"] for r in rows}
    assert {"Insecta", "Arachnida", "Collembola", "Malacostraca", "Diplopoda", "Chilopoda"} <= classes


def test_the_shipped_list_holds_the_families_a_bulk_sample_lab_meets() -> None:
    names = {r.family for r in shipped_families()}
    needed = """Carabidae Staphylinidae Curculionidae Chrysomelidae Coccinellidae Elateridae Scarabaeidae
    Cerambycidae Ptiliidae Leiodidae Cryptophagidae Latridiidae Nitidulidae Silphidae Histeridae
    Hydrophilidae Tenebrionidae Cantharidae Lampyridae Scydmaenidae Scydmaeninae Pselaphinae
    Formicidae Apidae Braconidae Ichneumonidae Diapriidae Ceraphronidae Platygastridae Mymaridae
    Phoridae Sciaridae Cecidomyiidae Chironomidae Drosophilidae Muscidae Aphididae Cicadellidae Miridae
    Noctuidae Geometridae Linyphiidae Lycosidae Oribatida Mesostigmata Prostigmata Entomobryidae
    Isotomidae Hypogastruridae Onychiuridae Sminthuridae Neelidae Tomoceridae Poduridae Armadillidiidae
    Porcellionidae Oniscidae Julidae Lithobiidae Geophilidae Phalangiidae Neobisiidae Chthoniidae
    Thripidae Liposcelididae Forficulidae Acrididae Ectobiidae"""
    assert [n for n in needed.split() if n not in names] == []


def test_every_family_of_the_built_in_imagenet_mapping_is_listed_with_the_same_order() -> None:
    text = resources.files("labpipe.classify").joinpath("imagenet_families.csv").read_text(encoding="utf-8")
    mapping = {r["family"]: r["order"] for r in csv.DictReader(text.splitlines()) if r["family"]}
    listed = {r.family: r.order for r in shipped_families()}
    assert len(mapping) >= 20
    assert {f: listed.get(f) for f in mapping} == mapping


def test_exports_find_order_and_class_of_every_listed_family() -> None:
    for row in shipped_families():
        taxon = higher_taxonomy(row.family)
        assert (taxon.order, taxon.class_) == (row.order, row.class_), row.family


# --- matching (pure) ------------------------------------------------------------------------------------


def test_matching_ignores_case_and_spacing_and_returns_the_listed_spelling() -> None:
    accepted = ["Carabidae", "Staphylinidae", "Leaf beetles"]
    assert match_family("carabidae ", accepted) == "Carabidae"
    assert match_family("  CARABIDAE", accepted) == "Carabidae"
    assert match_family("leaf   Beetles", accepted) == "Leaf beetles"
    assert match_family("Carbidae", accepted) is None
    assert match_family("   ", accepted) is None
    names = FamilyNames.build(accepted)
    assert names.canonical("staphylinidae") == "Staphylinidae" and "carabidae" in names and len(names) == 3


def test_the_closest_names_are_offered_for_a_typo() -> None:
    shipped = [r.family for r in shipped_families()]
    assert closest_families("Carbidae", shipped)[0] == "Carabidae"
    assert closest_families("staphilinidae", shipped)[0] == "Staphylinidae"
    assert closest_families("Formicide", shipped)[0] == "Formicidae"
    assert closest_families("Linyphidae", shipped)[0] == "Linyphiidae"
    assert closest_families("qqqq", shipped) == []


def test_the_earlier_source_decides_the_spelling() -> None:
    names = FamilyNames.build(["Carabidae"], ["carabidae", "Mylabidae"], ["MYLABIDAE"])
    assert names.canonical("CARABIDAE") == "Carabidae" and names.canonical("mylabidae") == "Mylabidae"
    assert names.names() == ["Carabidae", "Mylabidae"]


# --- the lab's own list ----------------------------------------------------------------------------------


def test_a_new_name_is_appended_to_the_lab_list_which_is_created_with_a_header(tmp_path: Path) -> None:
    path = tmp_path / "lab" / "families.csv"
    assert read_lab_families(path) == []
    assert add_lab_family(path, " Carbidae ") is True
    assert path.read_text().splitlines() == [",".join(LAB_FILE_HEADER), "Carbidae,,,,"]
    assert add_lab_family(path, "Carbidae") is False  # listed already: the file is left alone
    assert add_lab_family(path, "Mylabidae") is True
    assert read_lab_families(path) == ["Carbidae", "Mylabidae"]
    assert [p.name for p in path.parent.iterdir() if p.suffix == ".tmp"] == []


def test_a_lab_list_written_by_hand_is_read_with_comments_and_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "families.csv"
    path.write_text("# our own groups\nfamily,note\nCarabidae larvae,sorted apart\n\n Acari indet. ,\n")
    assert read_lab_families(path) == ["Carabidae larvae", "Acari indet."]
    add_lab_family(path, "Mylabidae")  # a file without a final newline stays well formed
    path.write_text(path.read_text().rstrip("\n"))
    add_lab_family(path, "Zygidae")
    assert read_lab_families(path) == ["Carabidae larvae", "Acari indet.", "Mylabidae", "Zygidae"]
    bad = tmp_path / "bad.csv"
    bad.write_text("name\nCarabidae\n")
    with pytest.raises(FamilyListError, match="no 'family' column"):
        read_lab_families(bad)


def test_new_names_must_look_like_names() -> None:
    assert check_new_family_name("Coleoptera  larvae") == "Coleoptera larvae"
    with pytest.raises(FamilyListError, match="capital letter"):
        check_new_family_name("carbidae")
    for bad in ["12idae", "Cara,bidae", "Cara\x00bidae", "", "<script>"]:
        with pytest.raises(FamilyListError):
            check_new_family_name(bad)


def test_names_added_at_the_same_time_are_all_kept(tmp_path: Path) -> None:
    path = tmp_path / "families.csv"
    names = [f"Newfamily{chr(97 + i)}idae" for i in range(16)]
    threads = [threading.Thread(target=add_lab_family, args=(path, n)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(read_lab_families(path)) == sorted(names)


# --- configuration -------------------------------------------------------------------------------------


def test_the_lab_list_lives_in_the_storage_root_unless_configured(tmp_path: Path) -> None:
    assert load_settings(overrides={"storage.root": tmp_path}, environ={}).families_path == (
        tmp_path / "families.csv"
    )
    env = {"LABPIPE_REVIEW_FAMILIES_FILE": "/srv/lab/names.csv"}
    assert load_settings(environ=env).families_path == Path("/srv/lab/names.csv")
    flag = load_settings(environ=env, overrides={"review.families_file": "mine.csv", "storage.root": "/d"})
    assert flag.families_path == Path("/d/mine.csv")
    result = CliRunner().invoke(cli, ["--families-file", "/x/f.csv", "config"], env={"LABPIPE_CONFIG": ""})
    assert result.exit_code == 0, result.output
    assert '[review]\nfamilies_file = "/x/f.csv"' in result.output


# --- review.py ------------------------------------------------------------------------------------------


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[Any, Any]]:
    settings = lab_settings(tmp_path / "data")
    factory = open_lab_db(settings)
    with factory() as session:
        build_lab(session, settings)
        yield settings, session
    factory.kw["bind"].dispose()


def _first(session: Any) -> int:
    return int(session.scalar(select(func.min(Specimen.id))))


def _verifications(session: Any) -> int:
    return int(session.scalar(select(func.count(Verification.id))))


def test_a_typo_is_refused_with_the_closest_names_and_nothing_is_recorded(lab) -> None:
    settings, session = lab
    before = _verifications(session)
    with pytest.raises(UnknownFamilyError) as info:
        record_verification(
            session,
            _first(session),
            "corrected",
            family="Carbidae",
            verified_by="A",
            families_file=settings.families_path,
        )
    error = info.value
    assert error.family == "Carbidae" and error.suggestions[0] == "Carabidae"
    assert "not a family known to this lab" in error.message and "did you mean Carabidae" in error.message
    assert "add_family" in error.message
    assert isinstance(error, ReviewError)
    assert _verifications(session) == before
    assert not settings.families_path.exists()


def test_the_listed_spelling_is_stored(lab) -> None:
    _, session = lab
    row = record_verification(session, _first(session), "corrected", family=" histeridae ", verified_by="A")
    assert row.family == "Histeridae"
    row = record_verification(session, _first(session), "multiple", family="FORMICIDAE", verified_by="A")
    assert row.family == "Formicidae"
    row = record_verification(session, _first(session), "not_specimen", family="Carbidae", verified_by="A")
    assert row.family is None  # debris has no family: whatever was typed is dropped, typo or not


def test_a_confirmed_new_name_is_recorded_and_added_to_the_lab_list_then_accepted(lab) -> None:
    settings, session = lab
    first = _first(session)
    row = record_verification(
        session,
        first,
        "corrected",
        family="Mylabidae",
        verified_by="E. Cologist",
        families_file=settings.families_path,
        add_family=True,
    )
    assert row.family == "Mylabidae"
    assert read_lab_families(settings.families_path) == ["Mylabidae"]
    again = record_verification(
        session,
        first + 1,
        "corrected",
        family="mylabidae",
        verified_by="A",
        families_file=settings.families_path,
    )
    assert again.family == "Mylabidae"
    # without the lab's list it is unknown again
    with pytest.raises(UnknownFamilyError):
        record_verification(session, first, "corrected", family="Mylabidae", verified_by="A")
    # add_family on a known name changes nothing in the file and stores the listed spelling
    known = record_verification(
        session,
        first,
        "corrected",
        family="carabidae",
        verified_by="A",
        families_file=settings.families_path,
        add_family=True,
    )
    assert known.family == "Carabidae" and read_lab_families(settings.families_path) == ["Mylabidae"]


def test_a_new_name_is_not_added_when_the_verification_is_refused(lab) -> None:
    settings, session = lab
    path = settings.families_path
    before = _verifications(session)
    with pytest.raises(UnknownSpecimenError):
        record_verifications(
            session,
            [_first(session), 99999],
            "corrected",
            family="Mylabidae",
            verified_by="A",
            families_file=path,
            add_family=True,
        )
    with pytest.raises(ReviewError, match="capital letter"):
        record_verification(
            session,
            _first(session),
            "corrected",
            family="mylabidae",
            verified_by="A",
            families_file=path,
            add_family=True,
        )
    with pytest.raises(ReviewError, match="no lab list"):
        record_verification(
            session, _first(session), "corrected", family="Mylabidae", verified_by="A", add_family=True
        )
    assert not path.exists() and _verifications(session) == before


def test_the_labels_of_every_registered_model_are_accepted(lab) -> None:
    settings, session = lab
    get_model(session, "lab-model@w3-l4").labels = ["Carabidae", "Aleocharinae", "Coleoptera larvae"]
    session.add(
        Model(
            name="detector",
            kind=ModelKind.DETECTOR,
            version="det@w1",
            weights_hash="w",
            labels_hash="l",
            labels=["Specimenidae"],
        )
    )
    session.flush()
    known = accepted_families(session, settings.families_path)
    assert "Aleocharinae" in known and "coleoptera LARVAE" in known and "Specimenidae" not in known
    row = record_verification(session, _first(session), "corrected", family="aleocharinae", verified_by="A")
    assert row.family == "Aleocharinae"
    assert get_model(session, MODEL).labels[0] in known


def test_a_lab_list_that_cannot_be_read_is_reported_when_recording(lab) -> None:
    settings, session = lab
    settings.families_path.parent.mkdir(parents=True, exist_ok=True)
    settings.families_path.write_text("name\nMylabidae\n")
    with pytest.raises(ReviewError, match="no 'family' column"):
        record_verification(
            session,
            _first(session),
            "corrected",
            family="Mylabidae",
            verified_by="A",
            families_file=settings.families_path,
        )

"""A specimen-or-not gate learnt from reviewed plates (``labpipe train gate --from-reviews | --coco``).

The labelling rule is checked on tiny boxes; the command on two real light-trap frames with
hand-drawn boxes (the detector's boxes there that the review did not keep must stop being counted
once the gate is in front), and on a tiny lab whose plates were marked "boxes reviewed" with some
boxes judged not a specimen.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from reviewed_lab import reviewed_lab as make_reviewed_lab

from labpipe.classify.gate import load_gate
from labpipe.classify.gate_from_plates import NOT_SPECIMEN, SPECIMEN, label_proposals
from labpipe.cli.main import cli
from labpipe.config import load_settings
from labpipe.evaluation.detector import evaluate_with_and_without_gate
from labpipe.evaluation.truth import read_coco_truth
from labpipe.pipeline import build_detector


def test_a_box_on_a_reviewed_specimen_is_a_specimen_and_one_far_from_all_is_not() -> None:
    specimens = [[100, 100, 40, 20], [300, 300, 30, 30]]
    proposals = [
        [101, 99, 40, 21],  # the first specimen
        [298, 302, 31, 29],  # the second
        [600, 50, 12, 12],  # nothing there: a grommet, a speck, a scale-card square
        [700, 700, 20, 20],  # on an ignore region: no answer
    ]
    labels = label_proposals(proposals, specimens, ignore=[[690, 690, 50, 50]])
    assert labels == [SPECIMEN, SPECIMEN, NOT_SPECIMEN, None]


def test_a_wrong_box_on_an_animal_teaches_nothing() -> None:
    """A leg or wing boxed apart, a box around a pair or one far too large: the right kind of object
    in the wrong box. Learning to reject it would be learning to reject animals."""
    specimens = [[100, 100, 60, 40], [170, 100, 60, 40]]
    proposals = [
        [100, 100, 20, 10],  # a part inside the first specimen
        [98, 98, 134, 44],  # both specimens in one box
        [60, 60, 180, 120],  # both, in a box far too large
    ]
    assert label_proposals(proposals, specimens) == [None, None, None]
    # without the part rule, the part inside an animal would have been taught as "not a specimen"
    assert label_proposals(proposals[:1], specimens, part_overlap=1.01) == [NOT_SPECIMEN]


def test_every_box_of_a_plate_without_specimens_is_not_a_specimen() -> None:
    assert label_proposals([[0, 0, 5, 5], [10, 10, 5, 5]], []) == [NOT_SPECIMEN, NOT_SPECIMEN]
    assert label_proposals([], [[0, 0, 5, 5]]) == []
    with pytest.raises(ValueError, match="reject_below"):
        label_proposals([[0, 0, 5, 5]], [], keep_iou=0.3, reject_below=0.4)


def _light_trap_subset(shared_data: Path, out: Path, names: tuple[str, ...]) -> Path:
    doc = json.loads((shared_data / "scenes" / "moth-screens" / "boxes.coco.json").read_text())
    images = [i for i in doc["images"] if i["file_name"] in names]
    assert len(images) == len(names), "the light-trap frames named by this test are in the shared data"
    ids = {i["id"] for i in images}
    subset = {**doc, "images": images, "annotations": [a for a in doc["annotations"] if a["image_id"] in ids]}
    out.write_text(json.dumps(subset))
    return out


def test_a_gate_from_reviewed_frames_stops_counting_what_the_review_removed(
    shared_data: Path, tmp_path: Path
) -> None:
    frames = ("20220623043000-215-snapshot.jpg", "01-20231111015309-snapshot.jpg")
    coco = _light_trap_subset(shared_data, tmp_path / "reviewed.coco.json", frames)
    images = shared_data / "scenes" / "moth-screens"
    base = ["--data-dir", str(tmp_path / "lab")]
    gate_dir = tmp_path / "gate"
    run = CliRunner().invoke(
        cli,
        [*base, "train", "gate", "--coco", str(coco), "--images", str(images), "--holdout", "1",
         "--out", str(gate_dir), "--no-cache", "--threads", "1", "--json"],
    )  # fmt: skip
    assert run.exit_code == 0, run.output
    config = json.loads(run.output[run.output.index("{") :])
    reviews = config["reviews"]
    assert len(reviews["train_plates"]) == 1 and len(config["held_out"]["plates"]) == 1
    assert set(reviews["train_plates"] + config["held_out"]["plates"]) == set(frames)
    counts = reviews["crops"]
    assert counts["specimen"] >= 20 and counts["not_specimen"] >= 5
    written = {p.parent.parent.name for p in (gate_dir / "crops").rglob("*.png")}
    assert written == {"specimen", "not_specimen"}
    assert sum(1 for _ in (gate_dir / "crops").rglob("*.png")) == counts["specimen"] + counts["not_specimen"]
    held = config["held_out"]
    removed = held["detector"]["detections"] - held["detector_and_gate"]["detections"]
    assert 0 < removed <= held["detector_and_gate"]["gate_rejected"]  # the rest lay on ignore regions

    # On the plate it learnt from, what the technician removed is no longer counted, and the
    # specimens still are: scored by `labpipe eval detector --gate`.
    train_coco = gate_dir / "train.coco.json"
    scores = {}
    for gate in ("", str(gate_dir)):
        ev = CliRunner().invoke(
            cli,
            [
                *base,
                "eval",
                "detector",
                "--coco",
                str(train_coco),
                "--images",
                str(images),
                "--gate",
                gate,
                "--json",
            ],
        )
        assert ev.exit_code == 0, ev.output
        scores[gate] = json.loads(ev.output[ev.output.index("{") :])
    alone, gated = scores[""], scores[str(gate_dir)]
    assert alone["gate_rejected"] == 0 and gated["gate_rejected"] >= 5
    assert gated["precision"] >= alone["precision"] + 0.1
    assert gated["true_positives"] >= alone["true_positives"] - 1

    # one detection pass scored both ways gives what the two runs gave
    settings = load_settings(overrides={"storage.root": tmp_path / "lab"}, environ={})
    both = evaluate_with_and_without_gate(
        read_coco_truth(train_coco, images), build_detector(settings), load_gate(gate_dir), progress=False
    )
    for report, by_cli in zip(both, (alone, gated), strict=True):
        d = report.as_dict()
        for key in ("detections", "true_positives", "gate_rejected", "precision", "recall", "ap50"):
            assert d[key] == by_cli[key], key

    # the whole real table behind the gate says which gate, and what it left out
    table_dir = tmp_path / "table"
    table = CliRunner().invoke(
        cli,
        [
            *base,
            "eval",
            "table",
            "--quick",
            "--no-synthetic",
            "--out",
            str(table_dir),
            "--gate",
            str(gate_dir),
        ],
    )
    assert table.exit_code == 0, table.output
    doc = json.loads((table_dir / "table.json").read_text())
    assert doc["gate"] == str(gate_dir.resolve())
    assert sum(s["gate_rejected"] for s in doc["sets"]) >= 5


@pytest.fixture(scope="module")
def reviewed_lab(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Three small synthetic plates processed and marked "boxes reviewed"; on each, two boxes were
    judged not a specimen."""
    root = tmp_path_factory.mktemp("gate-lab")
    made = make_reviewed_lab(
        root,
        n_plates=3,
        n_processed=3,
        size=900,
        n_specimens=6,
        n_debris=0,
        judged_per_plate=[2, 2, 2],
        sample="G-1",
    )
    return {"base": made["base"], "root": root}


def test_from_reviews_learns_from_the_labs_own_plates_and_holds_one_out(reviewed_lab: dict[str, Any]) -> None:
    base, root = reviewed_lab["base"], reviewed_lab["root"]
    out = root / "gate"
    run = CliRunner().invoke(
        cli, [*base, "train", "gate", "--from-reviews", "--out", str(out), "--threads", "1"]
    )
    assert run.exit_code == 0, run.output
    config = json.loads((out / "gate.json").read_text())
    # three reviewed plates: one held out (20 %, at least one), two learnt from
    assert len(config["reviews"]["train_plates"]) == 2 and len(config["held_out"]["plates"]) == 1
    per_plate = config["reviews"]["per_plate"]
    # the two boxes judged not a specimen on each plate are negatives (as debris boxes and as the
    # detector's proposals there); the other boxes are specimens
    assert all(row["not_specimen"] >= 2 for row in per_plate.values())
    assert all(row["specimen"] >= 4 for row in per_plate.values())
    assert "held-out plates (1)" in run.output and "[classifier] gate" in run.output

    again = CliRunner().invoke(cli, [*base, "train", "gate", "--from-reviews", "--out", str(out)])
    assert again.exit_code != 0 and "already holds a gate" in again.output
    replaced = CliRunner().invoke(
        cli, [*base, "train", "gate", "--from-reviews", "--out", str(out), "--overwrite"]
    )
    assert replaced.exit_code == 0, replaced.output

    # a folder called crops that this command did not write is never replaced
    theirs = root / "their-folder"
    (theirs / "crops").mkdir(parents=True)
    (theirs / "crops" / "my-beetle.png").write_bytes(b"a person's file")
    refused = CliRunner().invoke(cli, [*base, "train", "gate", "--from-reviews", "--out", str(theirs)])
    assert refused.exit_code != 0 and "not written by `labpipe train gate`" in refused.output
    assert (theirs / "crops" / "my-beetle.png").read_bytes() == b"a person's file"


def test_no_reviewed_plates_or_no_crops_at_all_is_a_clear_error(shared_data: Path, tmp_path: Path) -> None:
    coco = _light_trap_subset(shared_data, tmp_path / "one.coco.json", ("20220728232239-00-69.jpg",))
    doc = json.loads(coco.read_text())
    doc["annotations"] = []  # a reviewed plate with nothing on it: every box would be a false one...
    doc["images"] = []  # ...but there is no plate at all
    coco.write_text(json.dumps(doc))
    run = CliRunner().invoke(
        cli,
        [
            "--data-dir",
            str(tmp_path / "lab"),
            "train",
            "gate",
            "--coco",
            str(coco),
            "--out",
            str(tmp_path / "g"),
        ],
    )
    assert run.exit_code != 0 and "no reviewed plates" in run.output
    neither = CliRunner().invoke(
        cli, ["--data-dir", str(tmp_path / "lab"), "train", "gate", "--out", str(tmp_path / "g")]
    )
    assert neither.exit_code != 0 and "--specimens and --debris" in neither.output


def test_wells_known_by_their_counts_teach_a_gate(shared_data: Path, tmp_path: Path) -> None:
    """Wells of one insect and wells of fragments, named as folders with their counts: every box
    in a fragment well is a false one, the box of a single well with exactly one is a specimen."""
    wells = shared_data / "bioscan-wells"
    single = tmp_path / "single"
    single.mkdir()
    for path in sorted((wells / "single").iterdir())[:12]:
        (single / path.name).symlink_to(path)
    out = tmp_path / "wells-gate"
    run = CliRunner().invoke(
        cli,
        ["--data-dir", str(tmp_path / "lab"), "train", "gate", "--counted", f"{single}=1",
         "--counted", f"{wells / 'fragments'}=0", "--um-per-px", "8", "--out", str(out), "--threads", "1"],
    )  # fmt: skip
    assert run.exit_code == 0, run.output
    config = json.loads((out / "gate.json").read_text())
    assert config["reviews"]["counted_images"] == 12 + 30
    per_plate = config["reviews"]["per_plate"]
    fragment_wells = {p.name for p in (wells / "fragments").iterdir()}
    assert all(row["specimen"] == 0 for name, row in per_plate.items() if name in fragment_wells)
    assert sum(row["not_specimen"] for row in per_plate.values()) >= 5
    # a single well's boxes are used only when there is exactly one
    assert all(row["specimen"] in (0, 1) for name, row in per_plate.items() if name not in fragment_wells)
    assert {p.name for p in (out / "crops").iterdir() if p.is_dir()} == {"specimen", "not_specimen"}

    wrong = CliRunner().invoke(
        cli,
        ["--data-dir", str(tmp_path / "lab"), "train", "gate", "--counted", str(single), "--out", str(out)],
    )
    assert wrong.exit_code != 0 and "FOLDER=N" in wrong.output

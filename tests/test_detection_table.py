"""The real-image detection table, CI-sized: a regression of the default detector on real frames,
wells or a synthetic plate with springtails fails here (``labpipe eval table --quick``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from labpipe.cli.main import cli

# one xdist worker runs this file: its real-image table is measured once
pytestmark = [pytest.mark.shared, pytest.mark.slow, pytest.mark.xdist_group("detection_table")]


@pytest.fixture(scope="module")
def quick_table(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path, str]:
    out = tmp_path_factory.mktemp("table")
    result = CliRunner().invoke(
        cli,
        ["eval", "table", "--quick", "--data", str(shared_data), "--out", str(out)],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "table.json").read_text())
    return {s["set"]: s for s in doc["sets"]}, out, result.output


def test_table_prints_every_set_and_writes_overlays(quick_table: tuple[dict, Path, str]) -> None:
    sets, _, printed = quick_table
    assert "light-trap frames (boxes)" in printed and "springtail" in printed
    frames = sets["light-trap frames (boxes)"]
    assert len(frames["overlays"]) == frames["images"] == 2
    assert all(Path(p).is_file() and Path(p).stat().st_size > 10_000 for p in frames["overlays"])


def test_light_trap_frames_keep_their_recall_and_precision(quick_table: tuple[dict, Path, str]) -> None:
    """Two hand-boxed light-trap frames (30 sure specimens). classical-2 measured: recall 0.93,
    precision 0.72 (0.74 before the noise was measured around the paper's own level, which raised
    precision on all four frames from 0.694 to 0.714); 0.83 / 0.64 before faint legs were followed
    along their line. 6 of its false positives are on debris: grommets, a scale card. classical-1:
    recall 0.67, precision 0.59."""
    frames = quick_table[0]["light-trap frames (boxes)"]
    assert frames["truth"] == 30
    assert frames["recall"] >= 0.9
    assert frames["precision"] >= 0.7


def test_wells_keep_their_counts(quick_table: tuple[dict, Path, str]) -> None:
    """10 single, 5 empty, 5 fragment wells at 8 um/px. Measured with classical-2: 0.8, 1.0 and
    0.6 right (single 0.6 before the noise was measured around the paper's own level; 0.4, 0.8,
    0.6 before the ring-by-ring well background, the wing and blurred-spot rules of issue 11;
    classical-1: 0.6, 1.0, 0.8 on these 20; on all 330 wells see the README). A weak spot: loose
    wings and legs lying apart get boxes of their own."""
    sets = quick_table[0]
    assert sets["wells: single (1 specimen)"]["right_count_share"] >= 0.7
    assert sets["wells: empty (0)"]["right_count_share"] >= 1.0
    assert sets["wells: fragments (0 whole)"]["right_count_share"] >= 0.6


def test_synthetic_plate_springtails_are_found(quick_table: tuple[dict, Path, str]) -> None:
    """A 3000 x 3000 plate of real carabid and springtail cut-outs and procedural beetles.
    Measured: recall 0.917, precision 1.0, springtails 8 of 9 since the noise is measured around
    the paper's own level (0.875 and 7 of 9 before; classical-1 found few springtails)."""
    plate = quick_table[0]["synthetic: small mixed plate with springtails"]
    assert plate["recall"] >= 0.9 and plate["precision"] >= 0.9
    springtails = plate["recall_by_taxon"]["springtail"]
    assert springtails["found"] >= 7, springtails

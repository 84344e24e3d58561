"""``labpipe bench``: the growth fit, and a small real run of every measurement.

Speed targets are not asserted here (they are the benchmark's output, not a test); the test checks
that the benchmark measures real work and reports every figure the performance issue asks for.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from labpipe.bench.fit import loglog_slope
from labpipe.bench.plates import BenchPlate
from labpipe.bench.plot import plot_bench
from labpipe.bench.runs import STAGES
from labpipe.bench.suite import BenchOptions, format_report, run_bench
from labpipe.config import load_settings


def test_linear_growth_has_slope_one_and_quadratic_two() -> None:
    pixels = [36e6, 144e6, 400e6]
    assert loglog_slope(pixels, [p / 1e7 for p in pixels]).slope == pytest.approx(1.0)
    assert loglog_slope(pixels, [(p / 1e7) ** 2 for p in pixels]).slope == pytest.approx(2.0)
    fixed_cost = loglog_slope(pixels, [10 + p / 1e8 for p in pixels])
    assert 0 < fixed_cost.slope < 1  # a fixed cost makes growth look sublinear
    assert fixed_cost.r2 < 1.0 and fixed_cost.points == 3


def test_growth_needs_two_sizes_and_positive_values() -> None:
    with pytest.raises(ValueError, match="two distinct sizes"):
        loglog_slope([5.0, 5.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="positive"):
        loglog_slope([1.0, 2.0], [0.0, 1.0])


@pytest.mark.slow
def test_a_small_bench_measures_every_stage_memory_growth_and_the_queue(tmp_path: Path) -> None:
    settings = load_settings(
        overrides={"storage.root": tmp_path / "data", "classifier.threads": 1, "classifier.batch_size": 8},
        environ={},
    )
    plates = [BenchPlate(1200, 6, um_per_px=20.0), BenchPlate(2400, 6, um_per_px=20.0)]
    plates.append(BenchPlate(2400, 16, um_per_px=20.0))
    queue = [BenchPlate(1000, 4, um_per_px=20.0, seed=50 + i) for i in range(3)]
    options = BenchOptions(
        plates=plates, queue_plates=queue, work=tmp_path / "bench", workers=(1,), classifier_seconds=0.5
    )
    report = run_bench(settings, options)

    runs = report["plates"]
    assert [r["pixels"] for r in runs] == [1200**2, 2400**2, 2400**2]
    for run in runs:
        assert set(run["stage_seconds"]) == set(STAGES)
        assert run["stage_seconds"]["detect"] > 0 and run["stage_seconds"]["classify"] > 0
        assert run["recall_iou50"] >= 0.8  # real detections of the plate's true specimens
        assert 100 < run["peak_rss_mb"] < 4000  # the child's own peak (torch and the model loaded)
        assert run["seconds"] > 0 and run["plates_per_hour"] == pytest.approx(3600 / run["seconds"], rel=0.01)
    assert (tmp_path / "bench" / "plates" / plates[0].name).is_file()  # kept for the next run

    growth = report["growth"]
    assert growth["with_pixels"]["over"] == [runs[0]["label"], runs[1]["label"]]
    assert growth["with_specimens"]["over"] == [runs[1]["label"], runs[2]["label"]]
    assert "slope" in growth["with_pixels"]["end_to_end"]

    assert report["classifier"]["crops_per_second"] > 0 and report["classifier"]["batch_size"] == 8
    (q,) = report["queue"]
    assert q["workers"] == 1 and q["plates"] == 2 and q["failed"] == 0
    assert q["plates_per_hour"] > 0 and q["pickup_seconds"]["max"] is not None
    assert q["broker"].startswith("embedded")

    targets = {v["target"] for v in report["verdicts"]}
    assert "classifier crops per second" in targets
    assert any(t.startswith("pick-up") for t in targets)
    text = format_report(report)
    assert "| plate | MP |" in text and "targets:" in text and "plates/h" in text
    chart = plot_bench(report, tmp_path / "bench.png")
    assert chart.stat().st_size > 10_000


@pytest.mark.slow
def test_the_queue_runs_through_a_scratch_redis_and_postgresql_when_asked(
    tmp_path: Path, redis_db: str, pg_url: str
) -> None:
    from labpipe.bench.plates import ensure_plate
    from labpipe.bench.throughput import queue_throughput

    settings = load_settings(
        overrides={"storage.root": tmp_path / "lab", "classifier.threads": 1}, environ={}
    )
    plates = [ensure_plate(BenchPlate(1000, 4, um_per_px=20.0, seed=70 + i), tmp_path)[0] for i in range(3)]
    run = queue_throughput(settings, plates, 1, tmp_path / "bench", broker_url=redis_db, database_url=pg_url)
    report = run.as_dict()
    assert report["broker"].startswith("redis") and report["plates"] == 2 and report["failed"] == 0
    assert report["plates_per_hour"] > 0
    assert not (tmp_path / "lab" / "labpipe.sqlite").exists()  # the lab's own database was not used


def test_bench_command_is_registered_with_its_options() -> None:
    from labpipe.cli.main import cli

    result = CliRunner().invoke(cli, ["bench", "--help"])
    assert result.exit_code == 0
    for option in ("--quick", "--no-queue", "--json", "--out", "--work", "--plot", "--broker", "--queue-db"):
        assert option in result.output

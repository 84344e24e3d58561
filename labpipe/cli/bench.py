"""``labpipe bench``: the performance benchmark (:mod:`labpipe.bench.suite`).

Registered on the main group in :mod:`labpipe.cli.main`; settings come through ``click.pass_obj``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

__all__ = ["bench"]


@click.command()
@click.option("--quick", is_flag=True, help="Small plates: the same measurements in a minute or two.")
@click.option("--no-queue", is_flag=True, help="Skip the runs through the queue with 1 and 2 workers.")
@click.option(
    "--work",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where plates are generated (and kept for the next run) and runs write (default: <data-dir>/bench).",
)
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), help="Also write the JSON report here."
)
@click.option(
    "--plot",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where the chart of stage times and peak memory goes (default: <work>/bench.png).",
)
@click.option(
    "--broker",
    default="",
    help="Queue runs through this scratch Redis (e.g. redis://127.0.0.1:6379/15), never the lab's own "
    "queue; default: the embedded broker in --work.",
)
@click.option(
    "--queue-db",
    default="",
    help="Queue runs record into this scratch database URL; default: a fresh SQLite file in --work.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_obj
def bench(
    obj: Any,
    quick: bool,
    no_queue: bool,
    work: Path | None,
    out: Path | None,
    plot: Path | None,
    broker: str,
    queue_db: str,
    as_json: bool,
) -> None:
    """Measure plates end to end, growth with pixels and specimens, and throughput.

    Generates synthetic tiled LZW BigTIFF plates (6000², 12000², 20000²; 8- and 16-bit; 50 to 500
    specimens; kept for the next run), processes each with the configured detector and classifier
    in a child process, and reports seconds per stage (read, overview, detect, crop, classify,
    database), end to end, specimens per second, plates per hour and peak resident memory; the
    log-log slope of time against pixels and against specimens; classifier crops per second at
    the configured batch size; and plates per hour through the real queue with 1 and 2 workers
    (a fresh embedded broker and SQLite database in --work, or the scratch --broker and --queue-db;
    never the lab's own), with the delay from a file's completion to its registration. Ends with
    the performance targets, each met or missed, and writes a chart.
    """
    from labpipe.bench.plates import BenchPlate, full_suite, quick_suite
    from labpipe.bench.plot import plot_bench
    from labpipe.bench.suite import BenchOptions, format_report, run_bench

    settings = obj.settings
    work = (work or settings.storage.root / "bench").absolute()
    if quick:
        plates = quick_suite()
        queue_plates = [BenchPlate(1500, 10, um_per_px=20.0, seed=100 + i) for i in range(4)]
    else:
        plates = full_suite()
        queue_plates = [BenchPlate(4000, 40, seed=100 + i) for i in range(9)]
    options = BenchOptions(
        plates=plates,
        queue_plates=[] if no_queue else queue_plates,
        work=work,
        classifier_seconds=2.0 if quick else 10.0,
        broker_url=broker,
        database_url=queue_db,
    )
    report = run_bench(settings, options, progress=lambda m: None if as_json else click.echo(m, err=True))
    report["plot"] = str(plot_bench(report, plot or work / "bench.png"))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
    click.echo(
        json.dumps(report, indent=2) if as_json else f"{format_report(report)}\nchart: {report['plot']}"
    )

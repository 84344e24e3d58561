"""``labpipe bench``: plates end to end, growth with pixels and specimens, classifier and queue throughput.

Every figure is measured here, on this machine, with the configured detector and classifier:

1. plates (:mod:`labpipe.bench.plates`) processed one at a time by ``labpipe process`` in a child
   process (:mod:`labpipe.bench.runs`): seconds per stage, end to end, specimens per second, plates
   per hour, peak resident memory, and recall against the plate's true boxes;
2. how time grows (:func:`labpipe.bench.fit.loglog_slope`): with pixels at a fixed number of
   specimens, and with specimens at a fixed size;
3. classifier crops per second at the configured batch size;
4. plates per hour through the real queue with 1 and 2 workers, and the pick-up delay.

The result is a dict (``--json``) and a text report with the targets of the performance issue.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labpipe.bench.fit import loglog_slope
from labpipe.bench.plates import BenchPlate, ensure_plate
from labpipe.bench.runs import STAGES, run_plate

__all__ = ["TARGETS", "BenchOptions", "format_report", "run_bench"]

TARGETS = {
    "plate_12000_200_seconds": 60.0,
    "plate_12000_200_rss_mb": 1500.0,
    "plate_20000_rss_mb": 3000.0,
    "classifier_crops_per_second": 40.0,
    "pickup_seconds": 5.0,
    "growth_slope": 1.0,
}
"""The performance issue's targets on the 2-core development machine with the embedded default."""


@dataclass
class BenchOptions:
    plates: Sequence[BenchPlate]
    queue_plates: Sequence[BenchPlate]
    """Distinct plates for the queue runs (the first one warms the daemon up and is not counted)."""
    work: Path
    workers: Sequence[int] = (1, 2)
    classifier_seconds: float = 5.0
    broker_url: str = ""
    """Queue runs: a scratch Redis (``redis://host:6379/15``); empty: the embedded broker."""
    database_url: str = ""
    """Queue runs: a scratch PostgreSQL database; empty: a fresh SQLite file."""


def _machine() -> dict[str, Any]:
    import os

    import torch

    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def _growth(
    runs: list[dict[str, Any]], vary: str, fixed: Callable[[dict[str, Any]], tuple]
) -> dict[str, Any]:
    """Slope of seconds against ``vary`` (``pixels`` or ``specimens``) over runs that agree on ``fixed``."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in runs:
        if r["bit_depth"] == 8 and r[vary] > 0:
            groups.setdefault(fixed(r), []).append(r)
    best = max(groups.values(), key=lambda g: len({r[vary] for r in g}), default=[])
    if len({r[vary] for r in best}) < 2:
        return {}
    xs = [float(r[vary]) for r in best]
    out = {
        "over": [r["label"] for r in best],
        "end_to_end": loglog_slope(xs, [r["seconds"] for r in best]).as_dict(),
    }
    for stage in STAGES:
        ys = [r["stage_seconds"][stage] for r in best]
        if all(y > 0 for y in ys):
            out[stage] = loglog_slope(xs, ys).as_dict()
    return out


def run_bench(
    settings: Any, options: BenchOptions, *, progress: Callable[[str], None] = lambda _: None
) -> dict[str, Any]:
    """Run every measurement of the module docstring; returns the report as a dict."""
    from labpipe.bench.throughput import classifier_throughput, plate_crops, queue_throughput
    from labpipe.classify.loader import configured_classifier
    from labpipe.daemon.service import settings_environment

    work = options.work
    plates_dir = work / "plates"
    started = time.perf_counter()
    runs: list[dict[str, Any]] = []
    crop_source: tuple[Path, list] | None = None
    for plate in options.plates:
        progress(f"plate {plate.label}: generating (kept in {plates_dir})")
        path, truth = ensure_plate(plate, plates_dir)
        progress(f"plate {plate.label}: processing")
        run = run_plate(
            path,
            label=plate.label,
            pixels=plate.pixels,
            bit_depth=plate.bit_depth,
            truth_boxes=truth,
            work=work,
            env=settings_environment(settings),
        ).as_dict()
        run["specimens_on_plate"] = plate.specimens
        runs.append(run)
        progress(
            f"plate {plate.label}: {run['seconds']} s, {run['specimens']} specimens, "
            f"peak {run['peak_rss_mb']} MB"
        )
        if plate.bit_depth == 8 and (crop_source is None or len(truth) > len(crop_source[1])):
            crop_source = (path, truth)  # the 8-bit plate with the most specimens

    report: dict[str, Any] = {"machine": _machine(), "targets": TARGETS, "plates": runs}
    report["growth"] = {
        "with_pixels": _growth(runs, "pixels", lambda r: (r["specimens_on_plate"],)),
        # with the specimens found: cropping and classifying cost per specimen processed
        "with_specimens": _growth(runs, "specimens", lambda r: (r["pixels"],)),
    }

    if crop_source is not None:
        progress("classifier: crops per second")
        classifier = configured_classifier(settings)
        crops = plate_crops(crop_source[0], crop_source[1], settings.crops.margin, limit=64)
        report["classifier"] = classifier_throughput(classifier, crops, options.classifier_seconds)
        del classifier, crops

    queue_runs = []
    if options.queue_plates and options.workers:
        paths = [ensure_plate(p, plates_dir)[0] for p in options.queue_plates]
        for n in options.workers:
            progress(f"queue: {len(paths) - 1} plates, {n} worker(s)")
            queue_runs.append(
                queue_throughput(
                    settings,
                    paths,
                    n,
                    work,
                    broker_url=options.broker_url,
                    database_url=options.database_url,
                ).as_dict()
            )
    report["queue"] = queue_runs
    report["queue_plate"] = options.queue_plates[0].label if options.queue_plates else None
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["verdicts"] = _verdicts(report)
    return report


def _verdicts(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target with the measured figure and whether it is met."""
    out: list[dict[str, Any]] = []

    def add(what: str, value: float | None, target: float, lower_is_better: bool = True) -> None:
        if value is None:
            return
        met = value <= target if lower_is_better else value >= target
        out.append({"target": what, "measured": value, "limit": target, "met": met})

    for run in report["plates"]:
        if run["pixels"] == 12000 * 12000 and run["specimens_on_plate"] == 200 and run["bit_depth"] == 8:
            add(
                "12000² 200 specimens: end-to-end seconds", run["seconds"], TARGETS["plate_12000_200_seconds"]
            )
            add("12000² 200 specimens: peak RSS MB", run["peak_rss_mb"], TARGETS["plate_12000_200_rss_mb"])
        if run["pixels"] == 20000 * 20000:
            add("20000²: peak RSS MB", run["peak_rss_mb"], TARGETS["plate_20000_rss_mb"])
    for key, name in (("with_pixels", "pixels"), ("with_specimens", "specimens")):
        growth = report["growth"].get(key) or {}
        if growth:
            add(
                f"time grows with {name}: log-log slope",
                growth["end_to_end"]["slope"],
                TARGETS["growth_slope"],
            )
    if "classifier" in report:
        add(
            "classifier crops per second",
            report["classifier"]["crops_per_second"],
            TARGETS["classifier_crops_per_second"],
            lower_is_better=False,
        )
    pickups = [q["pickup_seconds"]["max"] for q in report["queue"] if q["pickup_seconds"]["max"] is not None]
    if pickups:
        add("pick-up after the file is complete: seconds (max)", max(pickups), TARGETS["pickup_seconds"])
    return out


def format_report(report: dict[str, Any]) -> str:
    """The report as text: a plate table, growth, classifier, queue, and the targets."""
    m = report["machine"]
    lines = [
        f"labpipe bench on {m['machine']}, {m['cpus']} CPUs, Python {m['python']}, torch {m['torch']} "
        f"({m['torch_threads']} threads); {report['seconds']} s in all",
        "",
        "| plate | MP | file MB | specimens (true) | recall | read | overview | detect | crop | classify "
        "| database | end to end s | specimens/s | plates/h | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["plates"]:
        s = r["stage_seconds"]
        lines.append(
            f"| {r['label']} | {r['megapixels']} | {r['file_mb']} "
            f"| {r['specimens']} ({r['truth_specimens']}) | {r['recall_iou50']} "
            f"| {s['hash'] + s['read']:.2f} | {s['overview']:.2f} | {s['detect']:.2f} "
            f"| {s['crop']:.2f} | {s['classify']:.2f} | {s['database']:.2f} | {r['seconds']} "
            f"| {r['specimens_per_second']} | {r['plates_per_hour']} | {r['peak_rss_mb']} |"
        )
    lines.append("")
    lines.append("read = hashing the file + opening it; crop = cutting, padding and writing the crops.")
    for r in report["plates"]:
        if r["recall_iou50"] < 0.5:
            lines.append(
                f"warning: the detector found {r['specimens']} of {r['truth_specimens']} specimens on "
                f"{r['label']} (recall {r['recall_iou50']}): its times are not those of a whole plate"
            )
    for key, name in (("with_pixels", "pixels"), ("with_specimens", "specimens")):
        g = report["growth"].get(key) or {}
        if g:
            stages = ", ".join(f"{k} {v['slope']}" for k, v in g.items() if k not in ("over", "end_to_end"))
            lines.append(
                f"time vs {name}: log-log slope {g['end_to_end']['slope']} end to end "
                f"(r² {g['end_to_end']['r2']}; stages: {stages})"
            )
    if "classifier" in report:
        c = report["classifier"]
        lines.append(
            f"classifier {c['model']}: {c['crops_per_second']} crops/s at batch {c['batch_size']} "
            f"({c['crops']} crops, median side {c['crop_side_px']['median']} px, resizing included)"
        )
    for q in report["queue"]:
        lines.append(
            f"queue ({q['broker']}), {q['workers']} worker(s): {q['plates']} plates of "
            f"{report['queue_plate']} in {q['seconds']} s = {q['plates_per_hour']} plates/h; pick-up median "
            f"{q['pickup_seconds']['median']} s, max {q['pickup_seconds']['max']} s"
        )
    lines.append("")
    lines.append("targets:")
    for v in report["verdicts"]:
        mark = "met" if v["met"] else "MISSED"
        lines.append(f"  {mark:6} {v['target']}: {v['measured']} (limit {v['limit']})")
    return "\n".join(lines)

"""Measure one plate end to end: ``labpipe process`` in a child process, its stages and peak memory.

The child is a fresh interpreter with a fresh storage folder and database, so its peak resident
memory (``ru_maxrss`` of that one process, from ``os.wait4``) is the pipeline's own, models
included, and nothing is deduplicated against an earlier run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["STAGES", "PlateRun", "run_plate"]

STAGES = ("hash", "read", "overview", "detect", "crop", "classify", "database")
"""Stages reported per plate (``labpipe process --json``'s ``stage_seconds``)."""


@dataclass
class PlateRun:
    label: str
    path: str
    pixels: int
    bit_depth: int
    file_mb: float
    truth_specimens: int
    specimens: int
    recall: float
    """Share of true specimens matched by a detection at IoU 0.5 (the work was real)."""
    wall_seconds: float
    """The child process from start to exit: interpreter and model loading included."""
    seconds: float
    """End to end for the plate (hash to committed), as the pipeline reports it."""
    stage_seconds: dict[str, float] = field(default_factory=dict)
    peak_rss_mb: float = 0.0

    @property
    def specimens_per_second(self) -> float:
        return self.specimens / self.seconds if self.seconds > 0 else float("nan")

    @property
    def plates_per_hour(self) -> float:
        return 3600.0 / self.seconds if self.seconds > 0 else float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "path": self.path,
            "pixels": self.pixels,
            "megapixels": round(self.pixels / 1e6, 1),
            "bit_depth": self.bit_depth,
            "file_mb": self.file_mb,
            "truth_specimens": self.truth_specimens,
            "specimens": self.specimens,
            "recall_iou50": round(self.recall, 3),
            "seconds": round(self.seconds, 2),
            "wall_seconds": round(self.wall_seconds, 2),
            "stage_seconds": {k: round(self.stage_seconds.get(k, 0.0), 2) for k in STAGES},
            "specimens_per_second": round(self.specimens_per_second, 2),
            "plates_per_hour": round(self.plates_per_hour, 1),
            "peak_rss_mb": round(self.peak_rss_mb),
        }


def _peak_rss_mb(rusage: Any) -> float:
    """``ru_maxrss`` in MB (kilobytes on Linux, bytes on macOS)."""
    scale = 1 / (1024 * 1024) if sys.platform == "darwin" else 1 / 1024
    return float(rusage.ru_maxrss) * scale


def run_plate(
    plate: Path,
    *,
    label: str,
    pixels: int,
    bit_depth: int,
    truth_boxes: list[tuple[float, float, float, float]],
    work: Path,
    env: dict[str, str] | None = None,
) -> PlateRun:
    """Process ``plate`` with ``labpipe process --json`` in a child with its own storage under ``work``.

    ``env``: the settings as ``LABPIPE_*`` variables (:func:`labpipe.daemon.service.settings_environment`),
    so the child runs with the caller's effective configuration; its storage and database are its own.
    """
    from labpipe.metrics.detection import match_detections

    data = work / f"run-{plate.stem}"
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    cmd = [sys.executable, "-m", "labpipe.cli.main"]
    cmd += ["--data-dir", str(data), "--db", f"sqlite:///{data / 'bench.sqlite'}", "--log-level", "WARNING"]
    cmd += ["process", str(plate), "--json"]
    child_env = {k: v for k, v in os.environ.items() if not (env and k.startswith("LABPIPE_"))}
    child_env.update(env or {})
    t0 = time.perf_counter()
    # Output to files, so the child never blocks on a full pipe while it is reaped with wait4 (which
    # gives this child's own resource usage).
    with (data / "stdout.json").open("wb") as out, (data / "stderr.txt").open("wb") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=child_env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    proc.returncode = code  # reaped here: Popen must not wait for it again
    if code != 0:
        tail = (data / "stderr.txt").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"labpipe process {plate} failed (exit {code}):\n{tail}")
    (record,) = json.loads((data / "stdout.json").read_bytes())
    boxes = [s["bbox"] for s in record["specimens"]]
    match = match_detections(boxes, truth_boxes)
    shutil.rmtree(data, ignore_errors=True)
    return PlateRun(
        label=label,
        path=str(plate),
        pixels=pixels,
        bit_depth=bit_depth,
        file_mb=round(plate.stat().st_size / 1e6, 1),
        truth_specimens=len(truth_boxes),
        specimens=len(boxes),
        recall=match.recall,
        wall_seconds=wall,
        seconds=float(record["seconds"]),
        stage_seconds={k: float(v) for k, v in record.get("stage_seconds", {}).items()},
        peak_rss_mb=_peak_rss_mb(usage),
    )

"""Peak memory of the worker code path per input format and size: the figures behind
:mod:`labpipe.imaging.memory` and README's reliability section.

    python benchmarks/memory_per_input.py --work WORK [--sizes 1000,4096,8000,12000] [--json]

For every format (PNG, baseline JPEG, TIFF in 64-row strips, TIFF in one strip, tiled TIFF; the
TIFFs LZW-compressed) and side it writes a square 8-bit RGB plate (light paper, 20 dark specimens,
so detection, cropping and classification all run) into WORK, runs ``labpipe process`` on it in a
child process with the default configuration (classical detector, built-in classifier: the jobs a
worker runs, read -> detect -> crop, then classify) and reads that child's own peak resident memory
(:func:`labpipe.bench.peak.run_measured`). It also prints the estimate
(:meth:`labpipe.imaging.PlateImage.memory_estimate`, with a worker's base
:data:`labpipe.imaging.memory.WORKER_BASE_BYTES`) of the same file, so a change to the code path
that breaks the model shows up as a measured peak above the estimate.

The 1000-px plate gives the fixed part (interpreter, torch, models, classification of its crops);
the bytes per pixel of each path are (peak - fixed) / pixels of the larger plates.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

FORMATS = ("png", "jpeg", "tiff-strips", "tiff-onestrip", "tiff-tiled")


def make_plate(side: int, seed: int = 1) -> np.ndarray:
    """A light ``side`` x ``side`` RGB plate with 20 dark elliptical specimens (80 x 30 px)."""
    rng = np.random.default_rng(seed)
    plate = np.full((side, side, 3), 225, np.uint8)
    yy, xx = np.mgrid[-40:41, -40:41]
    blob = ((xx / 40.0) ** 2 + (yy / 15.0) ** 2) <= 1
    for _ in range(20):
        y, x = (int(v) for v in rng.integers(100, side - 100, 2))
        plate[y - 40 : y + 41, x - 40 : x + 41][blob] = (60, 40, 30)
    return plate


def write_plate(fmt: str, side: int, folder: Path) -> Path:
    """The plate of ``side`` in ``fmt`` under ``folder`` (written once, reused)."""
    import tifffile
    from PIL import Image

    suffix = {"png": "png", "jpeg": "jpg"}.get(fmt, "tif")
    path = folder / f"plate-{fmt}-{side}.{suffix}"
    if path.is_file():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    array = make_plate(side)
    partial = path.with_name(path.name + ".part")
    if fmt == "png":
        Image.fromarray(array).save(partial, format="PNG", compress_level=1)
    elif fmt == "jpeg":
        Image.fromarray(array).save(partial, format="JPEG", quality=90)
    elif fmt == "tiff-strips":
        tifffile.imwrite(partial, array, photometric="rgb", rowsperstrip=64, compression="lzw")
    elif fmt == "tiff-onestrip":  # one strip holding the whole image: decoded whole
        tifffile.imwrite(partial, array, photometric="rgb", rowsperstrip=side, compression="lzw")
    else:
        tifffile.imwrite(partial, array, photometric="rgb", tile=(512, 512), compression="lzw")
    del array
    partial.rename(path)
    return path


def run_one(path: Path, work: Path) -> dict[str, Any]:
    """``labpipe process`` on ``path`` in a child (:func:`labpipe.bench.peak.run_measured`); its
    peak RSS and wall time."""
    from labpipe.bench.peak import child_environment, run_measured

    data = work / f"run-{path.stem}"
    shutil.rmtree(data, ignore_errors=True)
    cmd = [sys.executable, "-m", "labpipe.cli.main", "--data-dir", str(data)]
    cmd += ["--db", f"sqlite:///{data / 'm.sqlite'}", "--log-level", "WARNING"]
    cmd += ["process", str(path), "--json"]
    t0 = time.perf_counter()
    run = run_measured(cmd, work=data, env=child_environment())
    wall = time.perf_counter() - t0
    records = json.loads(run.stdout) if run.exit_code == 0 else [{}]
    shutil.rmtree(data, ignore_errors=True)
    return {
        "exit": run.exit_code,
        "peak_mb": round(run.peak_mb),
        "wall_s": round(wall, 1),
        "specimens": len(records[0].get("specimens", [])),
        "error": run.stderr.decode(errors="replace")[-400:] if run.exit_code else "",
    }


def _estimate_mb(path: Path, budget_type: Any) -> float:
    """The memory model's estimate for ``path`` under the default settings, in MB."""
    from labpipe.config import Settings
    from labpipe.imaging import open_image

    with open_image(path) as image:
        return float(image.memory_estimate(budget_type.for_settings(Settings())).peak_bytes) / 2**20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--sizes", default="1000,4096,8000,12000")
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    try:
        from labpipe.imaging.memory import MemoryBudget
    except ImportError:  # measuring a version without the memory model
        MemoryBudget = None

    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    for fmt in args.formats.split(","):
        for side in sizes:
            path = write_plate(fmt, side, args.work / "plates")
            result = run_one(path, args.work)
            try:
                estimate = _estimate_mb(path, MemoryBudget) if MemoryBudget else float("nan")
            except Exception as exc:  # a file the estimate refuses to look at is still measured
                estimate = float("nan")
                result["error"] = result["error"] or str(exc)
            row = {
                "format": fmt,
                "side": side,
                "megapixels": round(side * side / 1e6, 1),
                "file_mb": round(path.stat().st_size / 1e6, 1),
                "estimate_mb": round(estimate) if estimate == estimate else None,
                **result,
            }
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    base = {r["format"]: r["peak_mb"] for r in rows if r["side"] == min(sizes)}
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print("| input | megapixels | file MB | measured peak MB | estimate MB | (peak - smallest) bytes/px |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        grown = (r["peak_mb"] - base[r["format"]]) * 2**20
        extra = grown / r["side"] ** 2 if r["side"] != min(sizes) else 0
        print(
            f"| {r['format']} {r['side']}² | {r['megapixels']} | {r['file_mb']} | {r['peak_mb']} | "
            f"{r['estimate_mb']} | {extra:.2f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

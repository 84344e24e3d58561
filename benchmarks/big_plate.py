"""Process one big synthetic plate end to end and print time and peak memory.

    python benchmarks/big_plate.py --size 12000 --specimens 200 [--keep DIR] [--json]

The plate (tiled LZW BigTIFF, RGB 8-bit) is generated first, then ``labpipe process`` runs in a
child process so its peak resident memory (ru_maxrss) is measured alone. The full benchmark
suite (sizes, bit depths, slopes, queue throughput) is the performance issue's ``labpipe bench``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=12000)
    parser.add_argument("--specimens", type=int, default=200)
    parser.add_argument("--bit-depth", type=int, default=8, choices=[8, 16])
    parser.add_argument("--keep", type=Path, help="Folder to keep the plate and database in.")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from labpipe.synth.plate import PlateSpec, write_plate

    folder = args.keep or Path(tempfile.mkdtemp(prefix="labpipe-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    plate = folder / f"plate-{args.size}.tif"
    n_pairs = args.specimens // 10
    spec = PlateSpec(
        width=args.size,
        height=args.size,
        n_specimens=args.specimens - 2 * n_pairs,
        n_touching_pairs=n_pairs,
        n_debris=args.specimens // 2,
        um_per_px=5.0,
        bit_depth=args.bit_depth,
        seed=1,
    )
    t0 = time.perf_counter()
    truth = write_plate(spec, plate)
    generate_s = time.perf_counter() - t0

    cmd = [
        sys.executable,
        "-m",
        "labpipe.cli.main",
        "--data-dir",
        str(folder / "data"),
        "process",
        str(plate),
        "--json",
    ]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"labpipe process failed:\n{done.stderr}")
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    (record,) = json.loads(done.stdout)
    from labpipe.metrics.detection import match_detections

    found = match_detections([s["bbox"] for s in record["specimens"]], [o.bbox for o in truth.specimens])
    figures = {
        "pixels": args.size * args.size,
        "size": f"{args.size}x{args.size}",
        "bit_depth": args.bit_depth,
        "file_mb": round(plate.stat().st_size / 1e6, 1),
        "truth_specimens": len(truth.specimens),
        "detected": len(record["specimens"]),
        "recall_iou50": round(found.recall, 3),
        "precision_iou50": round(found.precision, 3),
        "generate_s": round(generate_s, 1),
        "process_wall_s": round(wall, 1),
        "pipeline_s": record["seconds"],
        "stage_s": record["stage_seconds"],
        "peak_rss_mb": round(peak_mb),
    }
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        for key, value in figures.items():
            print(f"{key:>18}: {value}")


if __name__ == "__main__":
    main()

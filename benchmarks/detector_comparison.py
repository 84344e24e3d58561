"""Train a DETR on synthetic plates and compare it with the classical detector.

    python benchmarks/detector_comparison.py data    --work WORK [--train 240 --val 24 --test 12]
    python benchmarks/detector_comparison.py train   --work WORK [--minutes 120] [--epochs 60]
    python benchmarks/detector_comparison.py compare --work WORK [--model WORK/detr] [--json]
    python benchmarks/detector_comparison.py wells   --work WORK [--minutes 30]

``data`` splits the real ground-beetle photos of ``../shared/data/carabidae-crops`` into cut-out
pools for training (70 %) and testing (30 %), seeded, as folders of symbolic links under WORK (the
photos are never copied), then renders synthetic plates with exact COCO boxes
(:func:`labpipe.detect.detr_data.write_synthetic_set`):

- ``train`` and ``val``: 30 mm fields of view at 10-16 µm/px (1875-3000 px), training cut-outs;
- ``test``: full-size plates (6000 px at 5 µm/px, as a stitched plate), held-apart cut-outs and
  seeds far from the training ones.

``train`` runs ``labpipe train detector`` on ``train`` (validated on ``val``) into WORK/detr.
``compare`` evaluates the classical detector and the DETR on the held-apart synthetic plates
(precision, recall, F1 at IoU 0.5, AP50, AP50:95, count error), on the benchmark's dense
12000 x 12000 plates (200 and 500 specimens, :mod:`labpipe.bench.plates`) and on the real wells of
``../shared/data/bioscan-wells`` (share of wells with the right count: 1 for ``single``, 0 for
``empty`` and ``fragments``), and prints one table (and JSON with ``--json``).
The wells carry no scale; they are read at ``--wells-um-per-px`` (a 96-well plate well, about
7 mm across, fills about 880 of the 1024 px: 8 µm/px).

``wells`` bootstraps the DETR to real wells with pseudo-labels (the training command's
``--pseudo-labels`` idea, with the wells' known counts as a check): the ``single`` and ``empty``
wells are split in halves (seeded); the classical detector labels the first half, and only wells
where it found the known count (1 or 0) are kept; WORK/detr is fine-tuned on them into
WORK/detr-wells; both detectors are then evaluated on the other half (and on every ``fragments``
well, none of which is used). The wells are CC BY-NC-SA: a model fine-tuned on them must not be
published under other terms.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CUTOUT_SOURCE = SHARED / "carabidae-crops"
WELLS = SHARED / "bioscan-wells"
WELL_SETS = (("single", 1), ("empty", 0), ("fragments", 0))


def split_cutouts(source: Path, work: Path, test_fraction: float = 0.3, seed: int = 0) -> tuple[Path, Path]:
    """Seeded split of the photos in ``source`` into ``work/cutouts-{train,test}`` (symbolic links)."""
    from labpipe.synth.specimens import list_cutout_files

    files = list_cutout_files(source)
    if not files:
        raise SystemExit(f"{source}: no cut-out photos (is ../shared/data present?)")
    order = np.random.default_rng(seed).permutation(len(files))
    n_test = round(len(files) * test_fraction)
    pools = {"test": [files[i] for i in order[:n_test]], "train": [files[i] for i in order[n_test:]]}
    out = _link_pools(pools, lambda name: work / f"cutouts-{name}")
    return out["train"], out["test"]


def _link_pools(pools: dict[str, list[Path]], folder_of: Any) -> dict[str, Path]:
    """Each pool of files as a folder of symbolic links (``folder_of(name)``), emptied first."""
    out = {}
    for name, chosen in pools.items():
        folder = folder_of(name)
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.iterdir():
            old.unlink()
        for path in chosen:
            (folder / path.name).symlink_to(path.resolve())
        out[name] = folder
    return out


def make_data(args: argparse.Namespace) -> None:
    from labpipe.detect.detr_data import write_synthetic_set

    work: Path = args.work
    train_cutouts, test_cutouts = split_cutouts(CUTOUT_SOURCE, work)
    print(f"cut-outs: {len(list(train_cutouts.iterdir()))} train, {len(list(test_cutouts.iterdir()))} test")
    for name, n, seed, cutouts, full in (
        ("train", args.train, 10_000, train_cutouts, False),
        ("val", args.val, 20_000, train_cutouts, False),
        ("test", args.test, 30_000, test_cutouts, True),
    ):
        if n <= 0:
            continue
        t0 = time.perf_counter()
        coco = write_synthetic_set(work / name, n, seed, cutouts, full_size=full)
        print(f"{name}: {n} plates -> {coco} ({time.perf_counter() - t0:.0f} s)")


def train(args: argparse.Namespace) -> None:
    from labpipe.detect.detr_train import DetrTrainOptions, result_summary, train_detector

    work: Path = args.work
    options = DetrTrainOptions(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        lr_backbone=args.lr,
        tile_size=args.tile_size,
        tile_overlap=args.tile_overlap,
        um_per_px=args.um_per_px,
        num_queries=args.queries,
        architecture=args.architecture,
        max_minutes=args.minutes,
        threads=args.threads,
        init=str(args.init) if args.init else None,
    )
    result = train_detector(
        work / "train" / "annotations.coco.json",
        work / "train",
        args.out or work / "detr",
        options,
        val_coco=work / "val" / "annotations.coco.json",
        val_images_dir=work / "val",
        overwrite=True,
    )
    print(json.dumps(result_summary(result), indent=2))


def _half_split(folder: Path, target: Path, seed: int = 0) -> tuple[Path, Path]:
    """Seeded halves of the images in ``folder`` as ``target/{train,test}/<folder name>`` symbolic links."""
    from labpipe.evaluation.folders import image_files

    files = image_files(folder)
    order = np.random.default_rng(seed).permutation(len(files))
    halves = {
        "train": [files[i] for i in order[: len(files) // 2]],
        "test": [files[i] for i in order[len(files) // 2 :]],
    }
    out = _link_pools(halves, lambda name: target / name / folder.name)
    return out["train"], out["test"]


def wells(args: argparse.Namespace) -> None:
    """Pseudo-label half the wells (count-checked), fine-tune the DETR, evaluate on the other half."""
    from labpipe.detect.classical import ClassicalDetector
    from labpipe.detect.detr import DetrDetector
    from labpipe.detect.detr_data import coco_document, read_coco_set, write_coco_document
    from labpipe.detect.detr_train import DetrTrainOptions, pseudo_label, result_summary, train_detector
    from labpipe.evaluation.folders import evaluate_counts, image_files

    work: Path = args.work
    root = work / "wells"
    images = root / "train-images"
    images.mkdir(parents=True, exist_ok=True)
    entries = []
    classical = ClassicalDetector()
    test_folders: list[tuple[Path, int]] = []
    kept: dict[str, int] = {}
    for folder, expected in (("single", 1), ("empty", 0)):
        train_half, test_half = _half_split(WELLS / folder, root)
        test_folders.append((test_half, expected))
        coco = root / f"pseudo-{folder}.coco.json"
        pseudo_label(
            image_files(train_half),
            classical,
            coco,
            um_per_px_fallback=args.wells_um_per_px,
            keep=lambda _path, n, expected=expected: n == expected,
        )
        found = read_coco_set(coco, category=None)
        kept[folder] = len(found)
        for entry in found:
            link = images / entry.file_name
            if not link.exists():
                link.symlink_to((train_half / entry.file_name).resolve())
        entries.extend(found)
    print(
        f"count-checked pseudo-labels kept: {kept} (of {len(image_files(root / 'train' / 'single'))} single, "
        f"{len(image_files(root / 'train' / 'empty'))} empty)"
    )
    train_coco = root / "train.coco.json"
    write_coco_document(coco_document(entries, "wells: classical pseudo-labels, count-checked"), train_coco)
    t0 = time.perf_counter()
    options = DetrTrainOptions(
        epochs=args.epochs,
        init=str(work / "detr"),
        um_per_px=None,
        max_minutes=args.minutes,
        threads=args.threads,
    )
    result = train_detector(train_coco, images, work / "detr-wells", options, overwrite=True)
    summary = result_summary(result)
    print(
        f"fine-tuned in {time.perf_counter() - t0:.0f} s: "
        f"best epoch {summary['best_epoch']}, {summary['best']}"
    )
    rows = []
    test_folders.append((WELLS / "fragments", 0))
    for name, detector in (
        ("classical", classical),
        ("DETR (synthetic)", DetrDetector(work / "detr", score_threshold=args.score_threshold)),
        (
            "DETR (+ wells pseudo-labels)",
            DetrDetector(work / "detr-wells", score_threshold=args.score_threshold),
        ),
    ):
        for folder, expected in test_folders:
            counts = evaluate_counts(folder, expected, detector, um_per_px_fallback=args.wells_um_per_px)
            rows.append({"detector": name, "data": f"wells/{folder.name} held-out (count {expected})",
                         "images": counts.n_images, "share_exact": round(counts.share_exact, 4),
                         "histogram": counts.histogram})  # fmt: skip
    from labpipe.evaluation.detector import evaluate_detector

    tuned = DetrDetector(work / "detr-wells", score_threshold=args.score_threshold)
    synthetic = evaluate_detector(work / "test" / "annotations.coco.json", work / "test", tuned).as_dict()
    synthetic.pop("per_image")
    (work / "wells.json").write_text(
        json.dumps({"kept": kept, "training": summary, "rows": rows, "synthetic_after": synthetic}, indent=2)
    )
    print(
        f"DETR (+ wells pseudo-labels) on the synthetic test plates: P {synthetic['precision']}, "
        f"R {synthetic['recall']}, AP50 {synthetic['ap50']}, AP50:95 {synthetic['ap50_95']}"
    )
    print("| detector | data | images | right count | detections per well |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['detector']} | {r['data']} | {r['images']} | {r['share_exact']} | {r['histogram']} |")


def _dense_plates(folder: Path) -> list[tuple[str, Path]]:
    """The benchmark's 12000² plates with 200 and 500 specimens (procedural, 1-4 mm), with COCO truth.

    500 specimens cover most of the dish: the crowded trap catch a lab would rather not split.
    """
    from labpipe.bench.plates import BenchPlate, ensure_plate
    from labpipe.detect.detr_data import CocoImage, coco_document, write_coco_document

    out = []
    for n in (200, 500):
        plate = BenchPlate(12000, n)
        path, truth = ensure_plate(plate, folder / str(n))
        coco = path.parent / "annotations.coco.json"
        entry = CocoImage(path.name, plate.side, plate.side, plate.um_per_px, truth)
        write_coco_document(coco_document([entry], f"labpipe bench plate {plate.label}"), coco)
        out.append((f"dense plate: 12000², {n} specimens", coco))
    return out


def _row(name: str, data: str, report: dict[str, Any]) -> dict[str, Any]:
    """One table row; ``version`` is the detector's own name with its settings hash."""
    version = report.get("detector")
    return {**report, "detector": name, "data": data, "version": version}


def compare(args: argparse.Namespace) -> list[dict[str, Any]]:
    from labpipe.detect.classical import ClassicalDetector
    from labpipe.detect.detr import DetrDetector
    from labpipe.evaluation.detector import evaluate_detector
    from labpipe.evaluation.folders import evaluate_counts

    work: Path = args.work
    detectors: list[tuple[str, Any]] = []
    if args.only in (None, "classical"):
        detectors.append(("classical", ClassicalDetector()))
    model = args.model or work / "detr"
    if args.only in (None, "detr"):
        if (model / "config.json").is_file():
            detectors.append(("DETR", DetrDetector(model, score_threshold=args.score_threshold)))
        else:
            print(f"no DETR model in {model}", file=sys.stderr)
    rows: list[dict[str, Any]] = []
    test = work / "test"
    dense = _dense_plates(work / "dense")
    for name, detector in detectors:
        report = evaluate_detector(test / "annotations.coco.json", test, detector, progress=not args.json)
        d = report.as_dict()
        d.pop("per_image")
        rows.append(_row(name, "synthetic test plates", d))
        for label, coco in dense:
            d = evaluate_detector(coco, coco.parent, detector, progress=not args.json).as_dict()
            d.pop("per_image")
            rows.append(_row(name, label, d))
        for folder, expected in WELL_SETS:
            path = WELLS / folder
            if not path.is_dir():
                continue
            t0 = time.perf_counter()
            counts = evaluate_counts(
                path, expected, detector, um_per_px_fallback=args.wells_um_per_px, progress=not args.json
            )
            c = counts.as_dict()
            c.pop("failures")
            c["seconds_per_image"] = round((time.perf_counter() - t0) / max(1, counts.n_images), 4)
            rows.append(_row(name, f"wells/{folder} (count {expected})", c))
        (work / f"comparison-{name.lower()}.json").write_text(
            json.dumps([r for r in rows if r["detector"] == name], indent=2)
        )
    # Rows measured earlier for the other detector (``--only``) join the table.
    for other in ("classical", "detr"):
        path = work / f"comparison-{other}.json"
        if args.only not in (None, other) and path.is_file():
            rows.extend(json.loads(path.read_text()))
    order = {"classical": 0, "DETR": 1}
    return sorted(rows, key=lambda r: order.get(r["detector"], 2))


def print_table(rows: list[dict[str, Any]]) -> None:
    print(
        "| detector | data | images | P | R | F1 | AP50 | AP50:95 "
        "| mean abs count error | right count | s/img |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['detector']} | {r['data']} | {r['images']} | {r.get('precision', '')} | "
            f"{r.get('recall', '')} | {r.get('f1', '')} | {r.get('ap50', '')} | {r.get('ap50_95', '')} | "
            f"{r.get('mean_abs_count_error', '')} | {r.get('share_exact', '')} | {r['seconds_per_image']} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_data = sub.add_parser("data", help="split cut-outs, render train/val/test plates")
    p_train = sub.add_parser("train", help="train a DETR on the synthetic training plates")
    p_cmp = sub.add_parser("compare", help="classical vs DETR on synthetic test plates and real wells")
    p_wells = sub.add_parser(
        "wells", help="fine-tune the DETR on count-checked pseudo-labels of half the wells"
    )
    for p in (p_data, p_train, p_cmp, p_wells):
        p.add_argument("--work", type=Path, required=True, help="Working folder (data, model, results).")
    p_data.add_argument("--train", type=int, default=240)
    p_data.add_argument("--val", type=int, default=24)
    p_data.add_argument("--test", type=int, default=12)
    p_train.add_argument("--out", type=Path, help="Model directory (default WORK/detr).")
    p_train.add_argument("--init", type=Path, help="Fine-tune this model directory.")
    p_train.add_argument("--epochs", type=int, default=60)
    p_train.add_argument("--minutes", type=float, default=0.0, help="Stop after this long (0: no limit).")
    p_train.add_argument("--batch-size", type=int, default=8)
    p_train.add_argument("--lr", type=float, default=1e-4)
    p_train.add_argument("--tile-size", type=int, default=384)
    p_train.add_argument("--tile-overlap", type=int, default=160)
    p_train.add_argument("--um-per-px", type=float, default=40.0)
    p_train.add_argument("--queries", type=int, default=100)
    p_train.add_argument("--architecture", choices=["conditional-detr", "rt-detr"], default="rt-detr")
    p_train.add_argument("--threads", type=int, default=int(os.environ.get("LABPIPE_TRAIN_THREADS", "0")))
    p_cmp.add_argument("--model", type=Path, help="DETR model directory (default WORK/detr).")
    p_cmp.add_argument("--score-threshold", type=float, default=0.5)
    p_cmp.add_argument("--wells-um-per-px", type=float, default=8.0)
    p_cmp.add_argument(
        "--only",
        choices=["classical", "detr"],
        help="Measure one detector; the other's rows from an earlier run join the table.",
    )
    p_cmp.add_argument("--json", action="store_true")
    p_wells.add_argument("--epochs", type=int, default=10)
    p_wells.add_argument("--minutes", type=float, default=0.0)
    p_wells.add_argument("--threads", type=int, default=0)
    p_wells.add_argument("--score-threshold", type=float, default=0.5)
    p_wells.add_argument("--wells-um-per-px", type=float, default=8.0)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.command == "data":
        make_data(args)
    elif args.command == "train":
        train(args)
    elif args.command == "wells":
        wells(args)
    else:
        rows = compare(args)
        (args.work / "comparison.json").write_text(json.dumps(rows, indent=2))
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            print_table(rows)


if __name__ == "__main__":
    main()

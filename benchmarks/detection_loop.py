"""The lab's loop measured: review a few of your own images, fine-tune the detector, score the rest.

    python benchmarks/detection_loop.py moths  --work WORK [--n 1 2 3] [--rotations 2] [--minutes 3]
    python benchmarks/detection_loop.py wells  --work WORK [--n 2 4 8] [--rotations 2] [--minutes 1.5]
    python benchmarks/detection_loop.py time20 --work WORK [--max-minutes 15]
    python benchmarks/detection_loop.py plot   --work WORK --out docs/detection-loop.png
    python benchmarks/detection_loop.py table  --work WORK

``moths``: the four light-trap frames of ``../shared/data/scenes/moth-screens`` (hand-drawn boxes;
category ``debris`` and ``attributes.uncertain`` ignore regions are honoured when training and
scoring; the two field photos ``DSC_*`` are another domain and left out). Each rotation holds one
frame out; the technician's corrections are the hand-drawn boxes of N of the other three (N = 0 is
the default detector, classical, as a lab without a DETR has it). A new RT-DETR (EfficientNet-Lite0
backbone from the offline ImageNet weights: there is no shipped DETR) is fine-tuned on them for
``--minutes``, exactly as ``labpipe train detector --from-reviews`` does (specimen boxes, ignore
regions blanked, the frames at their own scale, random tiles; checkpoint chosen on the training
frames), and scored on the held-out frame: precision, recall (IoU 0.5), count error, with times.
Four frames allow at most three reviewed; N = 4 would leave nothing to score.

``wells``: the single-specimen wells of ``../shared/data/bioscan-wells`` (one insect each, no
boxes; read at 8 µm/px). Each rotation holds out 40 single and 20 empty wells; the technician's
"review" is a count check: the classical detector's box on a pool well is kept when it found
exactly one insect, until N wells are kept. Fine-tuned as above; scored on the held-out wells by
their known counts (precision and recall from counts: a well with k detections and one insect has
min(k, 1) hits), and the share of wells with the right count.

``time20``: 20 small synthetic plates (with the real ground-beetle cut-outs) through the real CLI,
``labpipe train detector --coco … --holdout 4`` with its default settings (10 epochs) and a 15-minute
budget: the claim that a fine-tune on 20 reviewed plates fits in 15 minutes on the 2-core machine.

Writes WORK/moths.json, WORK/wells.json, WORK/time20.json; ``plot`` draws the curves. Run it
``nice``d: it takes the CPUs for the length of its fine-tunes. The wells are CC BY-NC-SA: a model
fine-tuned on them is not published under other terms.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

SHARED = Path(
    os.environ.get("LABPIPE_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data")
)
MOTHS = SHARED / "scenes" / "moth-screens"
WELLS = SHARED / "bioscan-wells"
WELL_UM_PER_PX = 8.0


def _settings() -> Any:
    from labpipe.config import load_settings

    return load_settings(None, {}, {})


def _score(report: Any) -> dict[str, Any]:
    d = report.as_dict()
    d.pop("per_image", None)
    d.pop("recall_by_taxon", None)
    d["right_count_share"] = round(report.right_count_share, 4)
    return d


def _options(args: argparse.Namespace, **kw: Any) -> Any:
    from labpipe.detect.detr_train import DetrTrainOptions

    return DetrTrainOptions(
        epochs=1000,  # the time budget ends training
        max_minutes=args.minutes,
        threads=args.threads,
        batch_size=args.batch_size,
        seed=args.seed,
        val_fraction=0.0,
        **kw,
    )


def _train(coco: Path, images: Path, out: Path, options: Any) -> tuple[Any, float]:
    from labpipe.detect.detr import DetrDetector
    from labpipe.detect.detr_train import result_summary, train_detector

    t0 = time.perf_counter()
    # No validation pass (val_fraction 0, the last checkpoint kept): on the 2 shared cores one pass
    # over three 4096 x 2160 frames costs more than the whole training budget.
    result = train_detector(coco, images, out, options, overwrite=True)
    seconds = time.perf_counter() - t0
    summary = result_summary(result)
    print(
        f"  trained {seconds:.0f} s: {sum(h['steps'] for h in summary['history'])} steps, "
        f"best {summary['best']}"
    )
    detector = DetrDetector(out, score_threshold=args_score_threshold)
    detector.warn_crowded = False  # a barely trained model fills its tiles: the scores say so
    return detector, seconds


args_score_threshold = 0.5


def moths(args: argparse.Namespace) -> None:
    from labpipe.detect.detr_data import write_coco_document
    from labpipe.detect.finetune import split_document
    from labpipe.evaluation.detector import evaluate_images
    from labpipe.evaluation.truth import read_coco_truth
    from labpipe.pipeline import build_detector

    settings = _settings()
    coco = MOTHS / "boxes.coco.json"
    doc = json.loads(coco.read_text())
    frames = [i for i in doc["images"] if not str(i["file_name"]).startswith("DSC_")]
    ids = sorted(int(i["id"]) for i in frames)
    truths = {int(i["id"]): t for i, t in zip(doc["images"], read_coco_truth(coco, MOTHS), strict=True)}
    classical = build_detector(settings, "classical")
    rng = np.random.default_rng(args.seed)
    held_order = [ids[i] for i in rng.permutation(len(ids))][: args.rotations]
    rows: list[dict[str, Any]] = []
    work = args.work / "moths"
    work.mkdir(parents=True, exist_ok=True)
    for rotation, held in enumerate(held_order):
        others = [i for i in ids if i != held]
        others = [others[i] for i in np.random.default_rng(args.seed + rotation).permutation(len(others))]
        name = Path(truths[held].path).name
        print(
            f"rotation {rotation}: held out {name}; reviewed in order {[truths[i].file_name for i in others]}"
        )
        report = evaluate_images(
            [truths[held]], classical, settings.imaging.overview_max_side, progress=False
        )
        base = {"rotation": rotation, "held_out": name}
        rows.append(
            {**base, "n": 0, "detector": "classical", "train_seconds": 0, "reviewed": [], **_score(report)}
        )
        print(f"  N=0 classical: P {report.precision:.3f} R {report.recall:.3f}")
        for n in args.n:
            reviewed = others[:n]
            train_doc, _ = split_document(
                {**doc, "images": [i for i in doc["images"] if i["id"] in reviewed]}, set()
            )
            train_coco = work / f"r{rotation}-n{n}.coco.json"
            write_coco_document(train_doc, train_coco)
            options = _options(
                args, tile_size=args.tile_size, tile_overlap=args.tile_size // 3, um_per_px=None
            )
            detector, seconds = _train(train_coco, MOTHS, work / f"r{rotation}-n{n}", options)
            report = evaluate_images(
                [truths[held]], detector, settings.imaging.overview_max_side, progress=False
            )
            files = [truths[i].file_name for i in reviewed]
            row = {
                "n": n,
                "detector": "RT-DETR fine-tuned",
                "train_seconds": round(seconds, 1),
                "reviewed": files,
            }
            rows.append({**base, **row, **_score(report)})
            print(
                f"  N={n}: P {report.precision:.3f} R {report.recall:.3f} "
                f"({report.seconds_per_image:.1f} s/frame)"
            )
            _write(args.work / "moths.json", args, rows)


def _learn_gate(specimens: list[Path], debris: list[Path], gate_dir: Path, cache: Path) -> Any:
    """Fit a gate on crop folders into ``gate_dir`` (replacing one there) and load it."""
    from labpipe.classify.gate import load_gate, train_gate

    train_gate(specimens, debris, gate_dir, cache_dir=cache, progress=False, overwrite=True)
    return load_gate(gate_dir)


def _base_gate_folders() -> tuple[list[Path], list[Path]]:
    """General real crops of whole arthropods and of debris from ``../shared/data``, learnt beside
    the lab's own reviews (``--base``)."""
    specimens = [SHARED / "ants-bees" / "ants", SHARED / "ants-bees" / "bees", SHARED / "carabidae-crops",
                 SHARED / "collembola" / "candidate_true"]  # fmt: skip
    debris = [SHARED / "collembola" / "candidate_false", WELLS / "empty", WELLS / "fragments"]
    return specimens, debris


def moths_gate(args: argparse.Namespace) -> None:
    """The loop with a lab gate instead of a DETR fine-tune: classical proposals, and a
    specimen-or-not gate learnt from the N reviewed frames (``labpipe train gate --from-reviews``)."""
    from labpipe.classify.gate_from_plates import gate_crops_from_plates
    from labpipe.evaluation.detector import evaluate_images
    from labpipe.evaluation.truth import read_coco_truth
    from labpipe.pipeline import build_detector

    settings = _settings()
    coco = MOTHS / "boxes.coco.json"
    doc = json.loads(coco.read_text())
    truths = {int(i["id"]): t for i, t in zip(doc["images"], read_coco_truth(coco, MOTHS), strict=True)}
    ids = sorted(i for i, t in truths.items() if not t.file_name.startswith("DSC_"))
    classical = build_detector(settings, "classical")
    overview = settings.imaging.overview_max_side
    margin = settings.crops.margin
    work = args.work / "moths-gate"
    crops_of: dict[int, Any] = {}
    rows: list[dict[str, Any]] = []
    for rotation, held in enumerate(ids[: args.rotations]):
        others = [i for i in ids if i != held]
        others = [others[i] for i in np.random.default_rng(args.seed + rotation).permutation(len(others))]
        name = truths[held].file_name
        print(
            f"rotation {rotation}: held out {name}; reviewed in order {[truths[i].file_name for i in others]}"
        )
        base = {"rotation": rotation, "held_out": name}
        report = evaluate_images([truths[held]], classical, overview, progress=False)
        rows.append(
            {**base, "n": 0, "detector": "classical", "train_seconds": 0, "reviewed": [], **_score(report)}
        )
        print(f"  N=0 classical: P {report.precision:.3f} R {report.recall:.3f}")
        for n in args.n:
            reviewed = others[:n]
            t0 = time.perf_counter()
            for i in reviewed:  # each frame's crops are cut once and reused by every gate
                if i not in crops_of:
                    crops_of[i] = gate_crops_from_plates(
                        [truths[i]],
                        classical,
                        work / "crops",
                        margin=margin,
                        overview_max_side=overview,
                        progress=False,
                    )
            gate_dir = work / f"r{rotation}-n{n}"
            base_specimens, base_debris = _base_gate_folders() if args.base else ([], [])
            gate = _learn_gate(
                base_specimens + [f for i in reviewed for f in crops_of[i].specimen_folders],
                base_debris + [f for i in reviewed for f in crops_of[i].not_specimen_folders],
                gate_dir,
                work / "feature-cache",
            )
            seconds = time.perf_counter() - t0
            report = evaluate_images(
                [truths[held]], classical, overview, progress=False, gate=gate, margin=margin
            )
            files = [truths[i].file_name for i in reviewed]
            row = {
                "n": n,
                "detector": "classical + lab gate",
                "train_seconds": round(seconds, 1),
                "reviewed": files,
            }
            rows.append({**base, **_score(report), **row})
            print(
                f"  N={n}: P {report.precision:.3f} R {report.recall:.3f} "
                f"(gate rejected {report.gate_rejected}; {seconds:.0f} s to learn)"
            )
            _write(args.work / "moths-gate.json", args, rows)


def wells_gate(args: argparse.Namespace) -> None:
    """Wells known only by their counts as the lab's review: a gate learnt from one half of the
    single, empty and fragment wells (every box in an empty or fragment well is not a specimen; the
    box of a single well with exactly one is one), scored on the other half, then the halves
    swapped. The share of wells with the right count, with and without the gate."""
    from labpipe.classify.gate_from_plates import gate_crops_from_plates
    from labpipe.evaluation.detector import evaluate_with_and_without_gate
    from labpipe.evaluation.truth import counted_folder
    from labpipe.pipeline import build_detector

    settings = _settings()
    classical = build_detector(settings, "classical")
    overview, margin = settings.imaging.overview_max_side, settings.crops.margin
    folders = {"single": 1, "empty": 0, "fragments": 0}
    wells_of = {
        name: counted_folder(WELLS / name, n, um_per_px=WELL_UM_PER_PX) for name, n in folders.items()
    }
    work = args.work / "wells-gate"
    rows: list[dict[str, Any]] = []
    for half in (0, 1):
        learn = [t for name in folders for k, t in enumerate(wells_of[name]) if k % 2 == half]
        t0 = time.perf_counter()
        crops = gate_crops_from_plates(
            learn,
            classical,
            work / f"crops-{half}",
            margin=margin,
            overview_max_side=overview,
            progress=False,
        )
        gate_dir = work / f"gate-{half}"
        gate = _learn_gate(
            crops.specimen_folders, crops.not_specimen_folders, gate_dir, work / "feature-cache"
        )
        seconds = time.perf_counter() - t0
        print(f"half {half}: learnt from {len(learn)} wells ({crops.counts}) in {seconds:.0f} s")
        for name in folders:
            held = [t for k, t in enumerate(wells_of[name]) if k % 2 != half]
            reports = evaluate_with_and_without_gate(
                held, classical, gate, overview, progress=False, margin=margin
            )
            for label, report in zip(("classical", "classical + wells gate"), reports, strict=True):
                right = round(report.right_count_share * len(held))
                rows.append({"half": half, "wells": name, "detector": label, "n_wells": len(held),
                             "right_count": right, "gate_rejected": report.gate_rejected,
                             "learn_seconds": round(seconds, 1)})  # fmt: skip
                print(f"  {name:9s} {label:24s} right count {report.right_count_share:.3f}")
        if args.light_trap:
            from labpipe.evaluation.truth import read_coco_truth

            frames = [
                t
                for t in read_coco_truth(MOTHS / "boxes.coco.json", MOTHS)
                if not t.file_name.startswith("DSC_")
            ]
            reports = evaluate_with_and_without_gate(
                frames, classical, gate, overview, progress=False, margin=margin
            )
            for label, report in zip(("classical", "classical + wells gate"), reports, strict=True):
                rows.append({"half": half, "wells": "light-trap frames", "detector": label, **_score(report)})
                print(f"  light-trap {label:24s} P {report.precision:.3f} R {report.recall:.3f}")
        (args.work / "wells-gate.json").write_text(json.dumps({"rows": rows}, indent=2))
    print("\npooled over both halves (wells with the right count):")
    for name in folders:
        for label in ("classical", "classical + wells gate"):
            rs = [r for r in rows if r["wells"] == name and r["detector"] == label]
            right, n = sum(r["right_count"] for r in rs), sum(r["n_wells"] for r in rs)
            print(f"  {name:9s} {label:24s} {right}/{n} = {right / n:.3f}")


def wells(args: argparse.Namespace) -> None:
    from labpipe.detect.detr_data import read_coco_set
    from labpipe.detect.detr_train import pseudo_label
    from labpipe.evaluation.detector import evaluate_images
    from labpipe.evaluation.truth import counted_folder
    from labpipe.pipeline import build_detector

    settings = _settings()
    classical = build_detector(settings, "classical")
    single = counted_folder(WELLS / "single", 1, um_per_px=WELL_UM_PER_PX)
    empty = counted_folder(WELLS / "empty", 0, um_per_px=WELL_UM_PER_PX)
    work = args.work / "wells"
    work.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for rotation in range(args.rotations):
        rng = np.random.default_rng(args.seed + rotation)
        order = rng.permutation(len(single))
        held = [single[i] for i in order[:40]] + [empty[i] for i in rng.permutation(len(empty))[:20]]
        pool = [single[i].path for i in order[40:]]
        report = evaluate_images(held, classical, progress=False)
        rows.append({"rotation": rotation, "n": 0, "detector": "classical", "train_seconds": 0, "checked": 0,
                     **_score(report)})  # fmt: skip
        print(f"rotation {rotation}: N=0 classical P {report.precision:.3f} R {report.recall:.3f} "
              f"right count {report.right_count_share:.3f}")  # fmt: skip
        # count-checked pseudo-labels: the pool wells in order, kept where the classical detector
        # found exactly one insect, until max(N) are kept
        coco = work / f"r{rotation}-pseudo.coco.json"
        t0 = time.perf_counter()
        entries: list[Any] = []
        checked = 0
        for start in range(0, len(pool), 10):
            pseudo_label(pool[start : start + 10], classical, coco, um_per_px_fallback=WELL_UM_PER_PX,
                         keep=lambda _p, k: k == 1, progress=False)  # fmt: skip
            got = read_coco_set(coco)
            names = {e.file_name for e in got}
            for path in pool[start : start + 10]:
                if len(entries) < max(args.n):
                    checked += 1
                    entries += [e for e in got if e.file_name == path.name and path.name in names]
            if len(entries) >= max(args.n):
                break
        print(
            f"  count check: {len(entries)} of {checked} pool wells kept ({time.perf_counter() - t0:.0f} s)"
        )
        for n in args.n:
            from labpipe.detect.detr_data import coco_document, write_coco_document

            train_coco = work / f"r{rotation}-n{n}.coco.json"
            write_coco_document(coco_document(entries[:n], f"{n} count-checked wells"), train_coco)
            options = _options(args, tile_size=256, tile_overlap=64, um_per_px=40.0, tiles_per_image=8)
            detector, seconds = _train(train_coco, WELLS / "single", work / f"r{rotation}-n{n}", options)
            report = evaluate_images(held, detector, progress=False)
            row = {"rotation": rotation, "n": n, "detector": "RT-DETR fine-tuned", "checked": checked}
            rows.append({**row, "train_seconds": round(seconds, 1), **_score(report)})
            print(
                f"  N={n}: P {report.precision:.3f} R {report.recall:.3f} "
                f"right count {report.right_count_share:.3f}"
            )
            _write(args.work / "wells.json", args, rows)


def time20(args: argparse.Namespace) -> None:
    from labpipe.detect.detr_data import write_synthetic_set

    plates = args.work / "plates20"
    coco = plates / "annotations.coco.json"
    if not coco.is_file():
        write_synthetic_set(plates, 20, 500_000, SHARED / "carabidae-crops")
    out = args.work / "detr-20"
    cmd = [sys.executable, "-m", "labpipe.cli.main", "--data-dir", str(args.work / "lab"),
           "train", "detector",
           "--coco", str(coco), "--images", str(plates), "--out", str(out), "--overwrite", "--holdout", "4",
           "--max-minutes", str(args.max_minutes), "--synthetic-plates", "0", "--no-register"]  # fmt: skip
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t0
    print(done.stdout[-3000:])
    card = json.loads((out / "labpipe_detector.json").read_text())["training"] if out.is_dir() else {}
    result = {
        "command": "labpipe " + " ".join(cmd[3:]),
        "exit_code": done.returncode,
        "wall_seconds": round(seconds, 1),
        "training_seconds": card.get("seconds"),
        "epochs_run": len(card.get("history", [])),
        "steps": sum(h.get("steps", 0) for h in card.get("history", [])),
        "output": done.stdout[-3000:],
        "load": os.getloadavg(),
    }
    (args.work / "time20.json").write_text(json.dumps(result, indent=2))
    print(f"20 plates: {seconds / 60:.1f} min wall, {result['epochs_run']} epochs, {result['steps']} steps")


def _write(path: Path, args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    meta = {"minutes": args.minutes, "load": os.getloadavg(), "cpus": os.cpu_count()}
    path.write_text(json.dumps({"settings": meta, "rows": rows}, indent=2))


def curve(rows: list[dict[str, Any]], key: str) -> tuple[list[int], list[float], list[float]]:
    """Mean and spread (min..max over rotations) of ``key`` per N.

    >>> curve([{"n": 0, "r": 0.5}, {"n": 0, "r": 0.7}, {"n": 2, "r": 0.9}], "r")
    ([0, 2], [0.6, 0.9], [0.2, 0.0])
    """
    ns = sorted({int(r["n"]) for r in rows})
    means, spreads = [], []
    for n in ns:
        values = [float(r[key]) for r in rows if int(r["n"]) == n and r.get(key) is not None]
        means.append(round(float(np.mean(values)), 4) if values else float("nan"))
        spreads.append(round(float(np.ptp(values)), 4) if values else float("nan"))
    return ns, means, spreads


def table(args: argparse.Namespace) -> None:
    """The measured rows as Markdown tables (what the README shows)."""
    for name in ("moths", "moths-gate", "wells"):
        path = args.work / f"{name}.json"
        if not path.is_file():
            continue
        data = json.loads(path.read_text())
        held = "held-out wells (40 single + 20 empty)" if name == "wells" else "held-out frame"
        budget = (
            "a lab gate, no fine-tune"
            if name == "moths-gate"
            else f"fine-tune budget {data['settings']['minutes']} min per run"
        )
        print(f"\n{name}: {budget}\n")
        print(f"| rotation | {held} | N reviewed | detector | precision | recall | mean abs count error "
              "| right count | train s | s / image |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|---|---|")
        for r in data["rows"]:
            print(f"| {r['rotation']} | {r.get('held_out', '')} | {r['n']} | {r['detector']} "
                  f"| {r['precision']} "
                  f"| {r['recall']} | {r['mean_abs_count_error']} | {r['right_count_share']} | "
                  f"{r['train_seconds']} | {r['seconds_per_image']} |")  # fmt: skip
        print()
        for n in sorted({r["n"] for r in data["rows"]}):
            rs = [r for r in data["rows"] if r["n"] == n]
            tp, det, tru = (sum(r[k] for r in rs) for k in ("true_positives", "detections", "truth"))
            if det and tru:
                print(
                    f"pooled N={n}: precision {tp / det:.3f} recall {tp / tru:.3f} "
                    f"F1 {2 * tp / (det + tru):.3f}"
                )
        for key in ("precision", "recall"):
            ns, means, spreads = curve(data["rows"], key)
            print(
                f"{key} by N: "
                + ", ".join(f"N={n}: {m} (spread {s})" for n, m, s in zip(ns, means, spreads, strict=True))
            )


def plot(args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, name, title in ((axes[0], "moths", "light-trap frames (hand-drawn boxes)"),
                            (axes[1], "wells", "single-specimen wells (count-checked)")):  # fmt: skip
        path = args.work / f"{name}.json"
        if not path.is_file():
            ax.set_title(f"{title}: not run")
            continue
        rows = json.loads(path.read_text())["rows"]
        for key, colour in (("recall", "tab:blue"), ("precision", "tab:orange")):
            ns, means, _ = curve(rows, key)
            ax.plot(ns, means, "o-", color=colour, label=key)
            for r in rows:
                if r.get(key) is not None:
                    ax.plot(r["n"], r[key], ".", color=colour, alpha=0.35)
        secs = curve([r for r in rows if r["n"] > 0], "train_seconds")
        ax.axhline(0.95, color="grey", linestyle=":", label="goal 0.95")
        minutes = np.nanmean(secs[1]) / 60 if secs[0] else float("nan")
        ax.set_xlabel(f"reviewed images N (0: classical; fine-tune ~{minutes:.0f} min, loaded 2-core CPU)")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xticks(sorted({r["n"] for r in rows}))
        ax.set_title(title)
        ax.legend(loc="lower right")
    fig.suptitle(
        "Fine-tuning a new RT-DETR on N reviewed images, scored on held-out images (dots: rotations)"
    )
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


def pooled(rows: list[dict[str, Any]]) -> tuple[list[int], list[float], list[float]]:
    """Precision and recall per N, pooled over the rotations' held-out frames.

    >>> pooled([{"n": 0, "true_positives": 8, "detections": 10, "truth": 9},
    ...         {"n": 0, "true_positives": 1, "detections": 2, "truth": 3}])
    ([0], [0.75], [0.75])
    """
    ns = sorted({int(r["n"]) for r in rows})
    precision, recall = [], []
    for n in ns:
        rs = [r for r in rows if int(r["n"]) == n]
        tp, det, tru = (sum(int(r[k]) for r in rs) for k in ("true_positives", "detections", "truth"))
        precision.append(round(tp / det, 4) if det else float("nan"))
        recall.append(round(tp / tru, 4) if tru else float("nan"))
    return ns, precision, recall


def plot_gate(args: argparse.Namespace) -> None:
    """Pooled precision and recall of the classical detector behind a lab gate, against N."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    runs = [(args.work, "lab reviews only", "o-")]
    if args.base_work:
        runs.append((args.base_work, "lab reviews + shared crops (--base)", "s--"))
    for work, label, style in runs:
        rows = json.loads((work / "moths-gate.json").read_text())["rows"]
        ns, precision, recall = pooled(rows)
        ax.plot(ns, recall, style, color="tab:blue", label=f"recall, {label}")
        ax.plot(ns, precision, style, color="tab:orange", label=f"precision, {label}")
    ax.axhline(0.95, color="grey", linestyle=":", label="goal 0.95")
    ax.set_xlabel("reviewed light-trap frames N (0: classical alone)")
    ax.set_xticks(ns)
    ax.set_ylim(0.5, 1.0)
    ax.set_title(
        "Classical detector + a gate learnt from N reviewed frames\n(held-out frames, 4 rotations, pooled)"
    )
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


def main() -> None:
    global args_score_threshold
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_m = sub.add_parser("moths", help="the loop on the light-trap frames")
    p_g = sub.add_parser("moths-gate", help="the loop on the light-trap frames with a lab gate (no DETR)")
    p_wg = sub.add_parser("wells-gate", help="a gate learnt from counted wells, scored on the other half")
    p_wg.add_argument("--work", type=Path, required=True)
    p_wg.add_argument(
        "--light-trap", action="store_true", help="score each wells gate on the light-trap frames too"
    )
    p_w = sub.add_parser("wells", help="the loop on single-specimen wells with count-checked pseudo-labels")
    p_t = sub.add_parser("time20", help="time a fine-tune on 20 small synthetic plates through the CLI")
    p_p = sub.add_parser("plot", help="draw the curves")
    p_pg = sub.add_parser("plot-gate", help="draw the lab-gate curve (moths-gate)")
    p_pg.add_argument("--work", type=Path, required=True)
    p_pg.add_argument("--base-work", type=Path, help="a second moths-gate run, with --base")
    p_pg.add_argument("--out", type=Path, default=Path("docs/gate-loop.png"))
    p_tab = sub.add_parser("table", help="print the measured rows as Markdown")
    for p in (p_m, p_g, p_w, p_t, p_p, p_tab):
        p.add_argument("--work", type=Path, required=True)
    for p, ns, minutes in ((p_m, [1, 2, 3], 3.0), (p_g, [1, 2, 3], 0.0), (p_w, [2, 4, 8], 1.5)):
        p.add_argument("--n", type=int, nargs="+", default=ns)
        p.add_argument("--rotations", type=int, default=2)
        p.add_argument("--minutes", type=float, default=minutes, help="fine-tune budget per run")
        p.add_argument("--threads", type=int, default=0)
        p.add_argument("--batch-size", type=int, default=8)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--score-threshold", type=float, default=0.5)
    p_m.add_argument("--tile-size", type=int, default=384)
    p_g.add_argument(
        "--base", action="store_true", help="learn the shared crops of whole arthropods and debris too"
    )
    p_t.add_argument("--max-minutes", type=float, default=15.0)
    p_p.add_argument("--out", type=Path, default=Path("docs/detection-loop.png"))
    args = parser.parse_args()
    args_score_threshold = getattr(args, "score_threshold", 0.5)
    {
        "moths": moths,
        "moths-gate": moths_gate,
        "wells": wells,
        "wells-gate": wells_gate,
        "time20": time20,
        "plot": plot,
        "plot-gate": plot_gate,
        "table": table,
    }[args.command](args)


if __name__ == "__main__":
    main()

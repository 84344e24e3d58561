"""Issue 14, end to end: train on ants, bees and ground beetles, and measure what is rejected.

    python benchmarks/rejection_evaluation.py --work WORK [--json]

1. ``labpipe train classifier`` on ``ants-bees/ants`` (Formicidae), ``ants-bees/bees`` (Apidae)
   and ``carabidae-crops`` (Carabidae), with the project's defaults (the kNN rule; k and the
   threshold chosen without any out-of-distribution image, calibration cross-fitted when the
   validation split holds few errors).
2. Two specimen-or-not gates (``labpipe train gate``), cross-fitted on the debris sets: gate A
   learns from the even-numbered crops of ``collembola/candidate_false``,
   ``bioscan-wells/empty`` and ``bioscan-wells/fragments`` (plus the debris boxes of
   ``scenes/moth-screens``), gate B from the odd-numbered ones; both learn whole specimens from the
   classifier's own train + validation crops, ``collembola/candidate_true``,
   ``bioscan-wells/single`` and the specimen boxes of the moth screens.
3. ``labpipe eval classifier`` on the test split with gate A and the odd-numbered debris halves
   as ``--ood`` folders, then with gate B and the even-numbered halves (so every debris crop is
   judged by a gate that never saw it), plus ``collembola/positive`` (springtails: a group the
   model never learnt) both times. The figures are pooled over the two halves.

Everything is written under ``--work`` (folders of symbolic links to ``../shared/data``, the
moth-screen cut-outs, the models, the reports, ``rejection_evaluation.json``); the images are never
copied into the repository.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FAMILIES = {
    "Apidae": SHARED / "ants-bees" / "bees",
    "Carabidae": SHARED / "carabidae-crops",
    "Formicidae": SHARED / "ants-bees" / "ants",
}
DEBRIS = {
    "debris-candidates": SHARED / "collembola" / "candidate_false",
    "empty-wells": SHARED / "bioscan-wells" / "empty",
    "fragments": SHARED / "bioscan-wells" / "fragments",
}
SPECIMENS = [SHARED / "collembola" / "candidate_true", SHARED / "bioscan-wells" / "single"]
SPRINGTAILS = SHARED / "collembola" / "positive"
SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff"}


def images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in SUFFIXES and p.is_file())


def link(files: list[Path], target: Path) -> Path:
    """``target``: a fresh folder of symbolic links to ``files``."""
    target.mkdir(parents=True, exist_ok=True)
    for old in target.iterdir():
        old.unlink()
    for path in files:
        (target / path.name).symlink_to(path.resolve())
    return target


def moth_cutouts(work: Path) -> dict[str, Path]:
    """Cut the sure (not ``uncertain``) boxes of the moth-screen frames out, 40 % margin."""
    import numpy as np
    from PIL import Image

    coco = json.loads((SHARED / "scenes" / "moth-screens" / "boxes.coco.json").read_text())
    files = {i["id"]: i["file_name"] for i in coco["images"]}
    out = {"specimen": work / "moth" / "specimen", "debris": work / "moth" / "debris"}
    for folder in out.values():
        folder.mkdir(parents=True, exist_ok=True)
    frames: dict[int, np.ndarray] = {}
    for a in sorted(coco["annotations"], key=lambda a: a["image_id"]):
        if a.get("attributes", {}).get("uncertain"):
            continue
        target = out["debris" if a["category_id"] == 2 else "specimen"] / f"{a['image_id']}_{a['id']}.png"
        if target.exists():
            continue
        if a["image_id"] not in frames:
            frames.clear()
            path = SHARED / "scenes" / "moth-screens" / files[a["image_id"]]
            frames[a["image_id"]] = np.asarray(Image.open(path).convert("RGB"))
        frame = frames[a["image_id"]]
        x, y, w, h = a["bbox"]
        m = 0.4 * max(w, h)
        x0, y0 = int(max(0, x - m)), int(max(0, y - m))
        x1, y1 = int(min(frame.shape[1], x + w + m)), int(min(frame.shape[0], y + h + m))
        Image.fromarray(frame[y0:y1, x0:x1]).save(target)
    return out


def labpipe(*args: str) -> str:
    cmd = [sys.executable, "-m", "labpipe.cli.main", *args]
    env = {**os.environ, "LABPIPE_CLASSIFIER_THREADS": os.environ.get("LABPIPE_CLASSIFIER_THREADS", "2")}
    return subprocess.run(cmd, check=True, text=True, capture_output=True, env=env).stdout


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--tta", action="store_true", help="Train the classifier with --tta (mean of three orientations)."
    )
    args = parser.parse_args()
    if not SHARED.is_dir():
        raise SystemExit(f"{SHARED} is missing: this evaluation needs the shared real images")
    work: Path = args.work.resolve()
    store = ["--data-dir", str(work / "labpipe-data")]
    cache = ["--cache-dir", str(work / "cache")]
    data = work / "families"
    for family, source in FAMILIES.items():
        link(images(source), data / family)
    moth = moth_cutouts(work)

    # 1. The classifier, with the defaults.
    model = work / "model"
    t0 = time.perf_counter()
    trained = json.loads(
        labpipe(
            *store,
            "train",
            "classifier",
            str(data),
            "--out",
            str(model),
            "--overwrite",
            *cache,
            "--json",
            *(["--tta"] if args.tta else []),
        )
    )
    train_seconds = time.perf_counter() - t0
    split = json.loads((model / "split.json").read_text())
    seen = {(e["family"], e["file"]) for name in ("train", "val") for e in split[name]}
    seen_files = [data / family / file for family, file in sorted(seen)]

    # 2. Two gates, each trained on one half of every debris folder.
    halves: dict[str, dict[str, Path]] = {"A": {}, "B": {}}
    for name, source in DEBRIS.items():
        files = images(source)
        halves["A"][name] = link(files[0::2], work / "debris" / "A" / name)
        halves["B"][name] = link(files[1::2], work / "debris" / "B" / name)
    own = link(seen_files, work / "gate-specimens" / "families-train-val")
    gate_seconds = {}
    for half in ("A", "B"):
        gate_args = ["train", "gate", "--out", str(work / f"gate-{half}"), "--overwrite", *cache, "--json"]
        for folder in [own, *SPECIMENS, moth["specimen"]]:
            gate_args += ["--specimens", str(folder)]
        for folder in [*halves[half].values(), moth["debris"]]:
            gate_args += ["--debris", str(folder)]
        t0 = time.perf_counter()
        labpipe(*store, *gate_args)
        gate_seconds[half] = round(time.perf_counter() - t0, 1)

    # 3. Evaluate each gate on the other half.
    reports = {}
    for gate, judged in (("A", "B"), ("B", "A")):
        eval_args = [
            "eval",
            "classifier",
            str(data),
            "--model",
            str(model),
            "--gate",
            str(work / f"gate-{gate}"),
        ]
        eval_args += ["--out", str(work / f"eval-gate-{gate}"), "--ood", str(SPRINGTAILS)]
        for folder in halves[judged].values():
            eval_args += ["--ood", str(folder)]
        labpipe(*store, *eval_args)
        reports[gate] = json.loads((work / f"eval-gate-{gate}" / "report.json").read_text())

    pooled: dict[str, dict[str, float]] = {}
    for name in [*DEBRIS, "collembola/positive"]:
        rows = []
        for gate, judged in (("A", "B"), ("B", "A")):
            key = name if "/" in name else f"{judged}/{name}"
            rows.append(reports[gate]["out_of_distribution"][key])
        n = sum(r["images"] for r in rows)
        pooled[name] = {
            "images": n if "/" not in name else rows[0]["images"],
            **{
                what: round(sum(r[what] * r["images"] for r in rows) / n, 4)
                for what in ("rejected", "rejected_by_confidence", "rejected_by_distance", "rejected_by_gate")
            },
        }
    first = reports["A"]
    result = {
        "train_seconds_wall": round(train_seconds, 1),
        "gate_seconds_wall": gate_seconds,
        "version": trained["version"],
        "ood_rule": trained["ood"],
        "temperature_fit": trained["temperature_fit"],
        "test_split": {
            "images": first["images"],
            "macro_f1": first["macro_f1"],
            "top1": first["accuracy"]["top1"],
            "calibration": first["calibration"],
            "at_threshold_gate_A": first["at_threshold"],
            "at_threshold_gate_B": reports["B"]["at_threshold"],
        },
        "rejected_pooled": pooled,
        "gate_out_of_fold": {
            half: json.loads((work / f"gate-{half}" / "gate.json").read_text())["out_of_fold"]
            for half in "AB"
        },
    }
    (work / "rejection_evaluation.json").write_text(json.dumps(result, indent=2))
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"trained {trained['version']} in {train_seconds:.0f} s; gates in {gate_seconds} s")
    print(json.dumps(result["test_split"], indent=1))
    for name, row in pooled.items():
        print(f"{name}: {row}")


if __name__ == "__main__":
    main()

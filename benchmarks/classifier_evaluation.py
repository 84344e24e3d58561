"""Train and evaluate a family classifier on the real labelled images in ../shared/data.

    python benchmarks/classifier_evaluation.py --work WORK [--collembola family|ood] [--finetune] [--json]

Families: ``ants-bees/ants`` (Formicidae), ``ants-bees/bees`` (Apidae), ``carabidae-crops``
(Carabidae) and, with ``--collembola family`` (the default), ``collembola/positive`` as a fourth
class (Collembola: a class of hexapods, not a family, but a group a leaf-litter lab counts apart).
The folder-per-family layout is made under WORK as symbolic links (the images are never copied),
then ``labpipe train classifier`` runs on it and ``labpipe eval classifier`` evaluates the test
split with these out-of-distribution folders:

- ``bioscan-wells/single``: whole insects of many orders, in wells (a different imaging setup);
- ``collembola/candidate_false``: debris from springtail plates;
- ``collembola/positive`` when it is not a class (``--collembola ood``).

Prints the training time, the evaluation report (as ``labpipe eval classifier`` does) and the
paths of the confusion matrix and risk-coverage plots.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FAMILIES = {
    "Formicidae": SHARED / "ants-bees" / "ants",
    "Apidae": SHARED / "ants-bees" / "bees",
    "Carabidae": SHARED / "carabidae-crops",
}
COLLEMBOLA = SHARED / "collembola" / "positive"
OOD = [SHARED / "bioscan-wells" / "single", SHARED / "collembola" / "candidate_false"]
SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff"}


def link_folder(source: Path, target: Path) -> int:
    """Make ``target`` a folder of symbolic links to the images in ``source``; returns their number."""
    target.mkdir(parents=True, exist_ok=True)
    for old in target.iterdir():
        old.unlink()
    n = 0
    for path in sorted(source.iterdir()):
        if path.suffix.lower() in SUFFIXES and path.is_file():
            (target / path.name).symlink_to(path.resolve())
            n += 1
    return n


def labpipe(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "labpipe.cli.main", *args]
    return subprocess.run(cmd, check=True, text=True, capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--collembola", choices=["family", "ood"], default="family")
    parser.add_argument("--finetune", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not SHARED.is_dir():
        raise SystemExit(f"{SHARED} is missing: this evaluation needs the shared real images")

    work: Path = args.work.resolve()
    data = work / "families"
    families = dict(FAMILIES)
    ood = list(OOD)
    if args.collembola == "family":
        families["Collembola"] = COLLEMBOLA
    else:
        ood.append(COLLEMBOLA)
    counts = {name: link_folder(src, data / name) for name, src in families.items()}
    for stale in data.iterdir():
        if stale.name not in families:
            for f in stale.iterdir():
                f.unlink()
            stale.rmdir()
    model = work / ("model-finetune" if args.finetune else "model")
    train_args = [
        "--data-dir", str(work / "labpipe-data"),
        "train", "classifier", str(data), "--out", str(model), "--overwrite", "--json",
    ]  # fmt: skip
    if args.finetune:
        train_args.append("--finetune")
    t0 = time.perf_counter()
    trained = json.loads(labpipe(*train_args).stdout)
    train_seconds = time.perf_counter() - t0
    eval_args = ["eval", "classifier", str(data), "--model", str(model), "--out", str(model / "eval")]
    for folder in ood:
        eval_args += ["--ood", str(folder)]
    text = labpipe(*eval_args).stdout  # also writes eval/report.json, read below
    report = json.loads((model / "eval" / "report.json").read_text())
    result = {
        "families": counts,
        "ood_folders": [str(f) for f in ood],
        "train_seconds_wall": round(train_seconds, 1),
        "train_seconds": trained.get("seconds"),
        "version": trained.get("version"),
        "report": report,
    }
    (work / "classifier_evaluation.json").write_text(json.dumps(result, indent=2))
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"families: {counts}")
    print(f"trained {trained.get('version')} in {train_seconds:.0f} s (stages: {trained.get('seconds')})")
    print(text)


if __name__ == "__main__":
    main()

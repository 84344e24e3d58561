"""The detection table on real images: every labelled real set, scored the same way, in one run.

``labpipe eval table`` (:func:`run_table`) runs one detector over

* the light-trap frames of ``scenes/moth-screens`` with hand-drawn boxes (ignore regions and debris
  honoured): the lab-like case, specimens on a plain sheet;
* the two field photos of that folder (``DSC_*``) and the Inselect drawer scans (boxes that
  include labels): out of the lab's domain, reported apart;
* the BIOSCAN wells, known to hold exactly one specimen (``single``) or none (``empty``,
  ``fragments``), scored by the share of wells with the right count;
* synthetic plates built from real cut-outs of several taxa, springtails included, with exact
  boxes (:mod:`labpipe.evaluation.synthetic_sets`): a mixed plate with touching pairs, springtails
  on a dark dish, and a crowded 12000 x 12000 dish of 500 specimens;

and prints one table (precision, recall, F1, AP50, count error, debris false positives, right-count
share; recall per taxon and the touching pairs split), writes ``table.json`` and one overlay PNG per
image (boxes over truth, :mod:`labpipe.evaluation.overlay`) for people to look at.

Real images live in ``../shared/data`` beside the project (``--data``, ``$LABPIPE_SHARED_DATA``);
they are read in place, never copied.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from labpipe.evaluation.detector import DetectorReport, evaluate_images
from labpipe.evaluation.overlay import write_overlays
from labpipe.evaluation.truth import TruthImage, counted_folder, read_coco_truth, read_inselect_truth

__all__ = [
    "WELL_UM_PER_PX",
    "TableRow",
    "default_data_dir",
    "format_table",
    "real_sets",
    "run_table",
]

WELL_UM_PER_PX = 8.0
"""BIOSCAN wells carry no scale: a 96-well plate well, about 7 mm across, fills about 880 of the
1024 px of the photo, so 8 um/px."""


def default_data_dir() -> Path:
    """``$LABPIPE_SHARED_DATA``, else ``shared/data`` beside the project root (``../shared/data``).

    The project root is found from this package's location, so the answer does not depend on the
    working directory; where labpipe is installed outside its checkout (no such folder there),
    ``../shared/data`` from the working directory is the fall-back when it exists.
    """
    env = os.environ.get("LABPIPE_SHARED_DATA")
    if env:
        return Path(env)
    beside_project = Path(__file__).resolve().parents[2].parent / "shared" / "data"
    if not beside_project.is_dir():
        beside_cwd = Path("../shared/data").resolve()
        if beside_cwd.is_dir():
            return beside_cwd
    return beside_project


@dataclass
class EvalSet:
    """One named set of images with truth, and how it is scored."""

    name: str
    group: str
    """``lab`` (the lab's domain), ``out-of-domain``, ``wells`` or ``synthetic``."""
    load: Callable[[], list[TruthImage]]
    overlays: str = "all"
    """``all``: an overlay per image; ``wrong``: only where the count is wrong (many small images)."""


@dataclass
class TableRow:
    """One set's scores."""

    name: str
    group: str
    report: DetectorReport
    seconds: float
    overlays: list[Path] = field(default_factory=list)

    def as_dict(self) -> dict:
        d = self.report.as_dict()
        d.update(set=self.name, group=self.group, seconds=round(self.seconds, 1))
        d["overlays"] = [str(p) for p in self.overlays]
        return d


def _moth_screens(data: Path, field_photos: bool) -> list[TruthImage]:
    folder = data / "scenes" / "moth-screens"
    truths = read_coco_truth(folder / "boxes.coco.json", folder)
    return [t for t in truths if t.file_name.startswith("DSC_") == field_photos]


def real_sets(data: Path, *, quick: bool = False) -> list[EvalSet]:
    """The real sets of ``data`` (``../shared/data``). ``quick``: a CI-sized subset (2 light-trap
    frames, 10 single, 5 empty and 5 fragment wells)."""
    data = Path(data)
    if not data.is_dir():
        raise FileNotFoundError(
            f"{data}: real data folder is missing; pass --data or set LABPIPE_SHARED_DATA to the "
            "folder that holds scenes/ and bioscan-wells/"
        )
    wells = data / "bioscan-wells"

    def light_trap() -> list[TruthImage]:
        frames = _moth_screens(data, field_photos=False)
        return frames[:2] if quick else frames

    def well_set(name: str, count: int, n_quick: int) -> Callable[[], list[TruthImage]]:
        def load() -> list[TruthImage]:
            found = counted_folder(wells / name, count, um_per_px=WELL_UM_PER_PX)
            return found[:n_quick] if quick else found

        return load

    sets = [EvalSet("light-trap frames (boxes)", "lab", light_trap)]
    if not quick:
        sets.append(EvalSet("field photos DSC_* (boxes)", "out-of-domain", lambda: _moth_screens(data, True)))
        sets.append(
            EvalSet(
                "Inselect drawer scans (boxes include labels)",
                "out-of-domain",
                lambda: [
                    read_inselect_truth(p) for p in sorted((data / "scenes" / "inselect").glob("*.inselect"))
                ],
            )
        )
    sets += [
        EvalSet("wells: single (1 specimen)", "wells", well_set("single", 1, 10), overlays="wrong"),
        EvalSet("wells: empty (0)", "wells", well_set("empty", 0, 5), overlays="wrong"),
        EvalSet("wells: fragments (0 whole)", "wells", well_set("fragments", 0, 5), overlays="wrong"),
    ]
    return sets


def run_table(
    detector: object,
    sets: list[EvalSet],
    out_dir: Path | None,
    *,
    overview_max_side: int = 4096,
    progress: bool = True,
    gate: object | None = None,
    margin: float = 0.4,
) -> list[TableRow]:
    """Evaluate ``detector`` on every set; write overlays and ``table.json`` into ``out_dir``.
    With ``gate``, what is scored is what the lab counts: detections the specimen-or-not gate
    rejects (crops cut with ``margin``) are left out."""
    rows: list[TableRow] = []
    for s in sets:
        t0 = time.perf_counter()
        truths = s.load()
        report = evaluate_images(
            truths,
            detector,
            overview_max_side,
            progress=progress,
            description=s.name,
            gate=gate,
            margin=margin,
        )
        row = TableRow(s.name, s.group, report, time.perf_counter() - t0)
        if out_dir is not None:
            chosen = report.images if s.overlays == "all" else [r for r in report.images if not r.right_count]
            row.overlays = write_overlays(chosen, Path(out_dir) / _slug(s.name))
        rows.append(row)
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        doc = {
            "detector": str(getattr(detector, "version", "")),
            "gate": getattr(gate, "path", None),
            "sets": [r.as_dict() for r in rows],
        }
        (Path(out_dir) / "table.json").write_text(json.dumps(doc, indent=1))
    return rows


def _slug(name: str) -> str:
    """A folder name for a set.

    >>> _slug("wells: single (1 specimen)")
    'wells-single-1-specimen'
    """
    out = "".join(c if c.isalnum() else "-" for c in name.lower())
    while "--" in out:
        out = out.replace("--", "-")
    return out.strip("-")


def _num(v: float, digits: int = 3) -> str:
    return "-" if v != v else f"{v:.{digits}f}"


def format_table(rows: list[TableRow]) -> str:
    """The table as text: one line per set, then recall per taxon and touching pairs where known."""
    head = (
        f"{'set':44} {'imgs':>5} {'truth':>6} {'dets':>6} {'P':>6} {'R':>6} {'F1':>6} {'AP50':>6} "
        f"{'|cnt err|':>9} {'debris FP':>9} {'right #':>8}"
    )
    lines = [head, "-" * len(head)]
    for row in rows:
        r = row.report
        counted = all(i.expected_count is not None for i in r.images)
        lines.append(
            f"{row.name[:44]:44} {len(r.images):>5} {r.n_truth:>6} {r.n_detections:>6} "
            f"{'-' if counted else _num(r.precision):>6} {'-' if counted else _num(r.recall):>6} "
            f"{'-' if counted else _num(r.f1):>6} {_num(r.ap50):>6} {_num(r.mean_abs_count_error, 2):>9} "
            f"{r.debris_false_positives if not counted else '-':>9} {_num(r.right_count_share):>8}"
        )
    extra = []
    for row in rows:
        by_taxon = row.report.recall_by("taxon")
        if len(by_taxon) > 1 or (by_taxon and "unknown" not in by_taxon):
            parts = ", ".join(f"{k} {f}/{t}" for k, (f, t) in by_taxon.items())
            extra.append(f"  {row.name}: recall by taxon: {parts}")
        split, pairs = row.report.touching_split()
        if pairs:
            extra.append(f"  {row.name}: touching pairs split into both boxes: {split}/{pairs}")
    return "\n".join(lines + extra)

"""Evaluate a trained family classifier: accuracy, per-family scores, calibration, rejection.

:func:`classifier_report` turns logits and labels into the full report (no files, no model);
:func:`evaluate_classifier_folder` runs a model over a folder-per-family data set (and optional
out-of-distribution folders) through the production crop path and writes the report, the
confusion matrix (CSV and PNG) and the risk-coverage curve (PNG).

What is reported, and from what:

- top-1/3/5 accuracy, micro (over images) and macro (over families), from the argmax ranking;
- per-family precision, recall, F1 and the confusion matrix, from the top-1 prediction without
  rejection (what the network says);
- expected calibration error (15 bins) and NLL before (``T = 1``) and after temperature scaling;
- the risk-coverage curve of the calibrated top probability, and at the model's threshold: the
  coverage, the accuracy of accepted predictions, the share of correct predictions kept and the
  share of wrong ones rejected;
- per out-of-distribution folder: the share rejected at the threshold (the rest were accepted as
  some family, which is always wrong for them) and which families they were taken for.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from labpipe.classify.calibration import (
    ECE_BINS,
    RiskCoverage,
    expected_calibration_error,
    negative_log_likelihood,
    risk_coverage_curve,
    softmax,
)
from labpipe.classify.dataset import file_sha256, image_files, load_square, scan_family_folders
from labpipe.classify.gate import SpecimenGate
from labpipe.classify.metrics import confusion_matrix, per_class_prf, top_k_accuracy
from labpipe.classify.trained import SPLIT_FILE, TrainedFamilyClassifier

__all__ = [
    "CONFUSION_CSV",
    "CONFUSION_PNG",
    "REPORT_JSON",
    "RISK_COVERAGE_PNG",
    "ClassifierReport",
    "classifier_report",
    "evaluate_classifier_folder",
    "folder_scores",
    "plot_confusion",
    "plot_risk_coverage",
    "write_confusion_csv",
    "write_report_files",
]

CONFUSION_CSV = "confusion.csv"
CONFUSION_PNG = "confusion.png"
RISK_COVERAGE_PNG = "risk_coverage.png"
REPORT_JSON = "report.json"
TOP_K = (1, 3, 5)


def _r(x: float, digits: int = 4) -> float | None:
    return None if x is None or not np.isfinite(x) else round(float(x), digits)


@dataclass
class ClassifierReport:
    """The numbers of an evaluation, plus the arrays the plots need."""

    families: list[str]
    summary: dict[str, Any]
    matrix: np.ndarray
    curve: RiskCoverage
    threshold: float
    target: float | None
    files: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {**self.summary, "files": dict(self.files)}


def _share(mask: np.ndarray) -> float:
    """Share of True in ``mask`` (rounded), NaN when empty."""
    return _r(float(mask.mean())) if len(mask) else float("nan")


def classifier_report(
    logits: np.ndarray,
    labels: np.ndarray,
    families: Sequence[str],
    temperature: float,
    threshold: float,
    *,
    target: float | None = None,
    ood_logits: Mapping[str, np.ndarray] | None = None,
    distances: np.ndarray | None = None,
    ood_distances: Mapping[str, np.ndarray] | None = None,
    distance_threshold: float | None = None,
    gate_rejected: np.ndarray | None = None,
    ood_gate_rejected: Mapping[str, np.ndarray] | None = None,
) -> ClassifierReport:
    """Compute every number of the evaluation from uncalibrated logits.

    Parameters
    ----------
    logits:
        ``(N, K)`` uncalibrated logits of the in-distribution images.
    labels:
        ``(N,)`` true family indices into ``families``.
    families:
        The model's label list.
    temperature, threshold:
        The model's calibration and rejection threshold (accept ``p >= threshold``).
    target:
        The accuracy target the threshold was chosen for (reported alongside).
    ood_logits:
        Folder name -> ``(M, K)`` logits of images of no family of the model.
    distances, ood_distances, distance_threshold:
        The model's out-of-distribution rule (:mod:`labpipe.classify.ood`): feature distances of
        the in-distribution images ``(N,)`` and of each OOD folder's, and the distance above which
        a prediction is rejected. Without them, only the confidence threshold decides. With them,
        "at threshold" figures apply both rules (as in production), and the confidence rule alone is
        reported beside them.
    gate_rejected, ood_gate_rejected:
        Booleans: the specimen-or-not gate (:mod:`labpipe.classify.gate`) rejects the crop as
        ``not_a_specimen``. With them, "at threshold" figures apply the gate too.
    """
    k = len(families)
    z = np.asarray(logits, dtype=np.float64).reshape(-1, k)
    y = np.asarray(labels, dtype=np.int64)
    probs_raw = softmax(z, 1.0) if len(z) else np.empty((0, k))
    probs = softmax(z, temperature) if len(z) else np.empty((0, k))
    pred = probs.argmax(axis=1)
    conf = probs.max(axis=1) if len(z) else np.empty(0)
    correct = pred == y
    matrix = confusion_matrix(y, pred, k)
    precision, recall, f1, support = per_class_prf(matrix)
    accuracy: dict[str, Any] = {}
    for top in TOP_K:
        micro, macro = top_k_accuracy(probs, y, top) if len(z) else (float("nan"), float("nan"))
        accuracy[f"top{top}"] = {"micro": _r(micro), "macro": _r(macro), "trivial": top >= k}
    curve = risk_coverage_curve(conf, correct)
    use_distance = distance_threshold is not None and distances is not None
    near = (
        np.asarray(distances, dtype=np.float64).reshape(-1) <= distance_threshold
        if use_distance
        else np.ones(len(z), dtype=bool)
    )
    use_gate = gate_rejected is not None
    gate_ok = ~np.asarray(gate_rejected, dtype=bool).reshape(-1) if use_gate else np.ones(len(z), dtype=bool)
    n_correct, n_wrong = int(correct.sum()), int((~correct).sum())

    def kept_and_caught(accepted: np.ndarray) -> dict[str, Any]:
        return {
            "coverage": _r(accepted.mean() if len(z) else float("nan")),
            "accepted_accuracy": _r(correct[accepted].mean() if accepted.any() else float("nan")),
            "correct_kept": _r((accepted & correct).sum() / n_correct if n_correct else float("nan")),
            "wrong_rejected": _r((~accepted & ~correct).sum() / n_wrong if n_wrong else float("nan")),
        }

    at_threshold: dict[str, Any] = {
        "threshold": _r(threshold),
        "target": target,
        "distance_threshold": _r(distance_threshold) if use_distance else None,
        "gate": use_gate,
        **kept_and_caught((conf >= threshold) & near & gate_ok),
        "n_correct": n_correct,
        "n_wrong": n_wrong,
    }
    if use_distance or use_gate:
        at_threshold["confidence_only"] = kept_and_caught(conf >= threshold)
    if use_gate:
        at_threshold["gate_only"] = kept_and_caught(gate_ok)
    ood: dict[str, Any] = {}
    for name, ood_z in (ood_logits or {}).items():
        zz = np.asarray(ood_z, dtype=np.float64).reshape(-1, k)
        p = softmax(zz, temperature) if len(zz) else np.empty((0, k))
        ood_conf = p.max(axis=1) if len(zz) else np.empty(0)
        confident = ood_conf >= threshold
        ood_near = np.ones(len(zz), dtype=bool)
        if use_distance and ood_distances is not None and name in ood_distances:
            ood_near = np.asarray(ood_distances[name], dtype=np.float64).reshape(-1) <= distance_threshold
        ood_gate_ok = np.ones(len(zz), dtype=bool)
        if use_gate and ood_gate_rejected is not None and name in ood_gate_rejected:
            ood_gate_ok = ~np.asarray(ood_gate_rejected[name], dtype=bool).reshape(-1)
        taken = confident & ood_near & ood_gate_ok
        ood[name] = {
            "images": len(zz),
            "rejected": _share(~taken),
            "rejected_by_confidence": _share(~confident),
            "rejected_by_distance": _share(~ood_near) if use_distance else None,
            "rejected_by_gate": _share(~ood_gate_ok) if use_gate else None,
            "accepted_as": dict(Counter(families[i] for i in p.argmax(axis=1)[taken]).most_common())
            if len(zz)
            else {},
            "mean_confidence": _r(float(ood_conf.mean()) if len(zz) else float("nan")),
        }
    summary: dict[str, Any] = {
        "images": len(z),
        "families": list(families),
        "per_family_images": {f: int(n) for f, n in zip(families, support, strict=True)},
        "accuracy": accuracy,
        "per_family": {
            f: {"precision": _r(p), "recall": _r(r), "f1": _r(s), "support": int(n)}
            for f, p, r, s, n in zip(families, precision, recall, f1, support, strict=True)
        },
        "macro_f1": _r(float(f1[support > 0].mean()) if (support > 0).any() else float("nan")),
        "confusion_matrix": {"rows_true_columns_predicted": list(families), "counts": matrix.tolist()},
        "calibration": {
            "temperature": _r(temperature),
            "ece_bins": ECE_BINS,
            "ece_before": _r(expected_calibration_error(probs_raw, y) if len(z) else float("nan")),
            "ece_after": _r(expected_calibration_error(probs, y) if len(z) else float("nan")),
            "nll_before": _r(negative_log_likelihood(z, y, 1.0) if len(z) else float("nan")),
            "nll_after": _r(negative_log_likelihood(z, y, temperature) if len(z) else float("nan")),
        },
        "risk_coverage": {"aurc": _r(curve.aurc), "points": len(curve.coverage)},
        "at_threshold": at_threshold,
        "out_of_distribution": ood,
    }
    return ClassifierReport(list(families), summary, matrix, curve, float(threshold), target)


# --------------------------------------------------------------------------------------------------
# Files


def write_confusion_csv(matrix: np.ndarray, families: Sequence[str], path: Path) -> None:
    """Counts, rows = true family, columns = predicted family, first column and row the names."""
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["true \\ predicted", *families])
        for family, row in zip(families, np.asarray(matrix), strict=True):
            writer.writerow([family, *(int(v) for v in row)])


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(matrix: np.ndarray, families: Sequence[str], path: Path, title: str = "") -> None:
    """Row-normalised confusion matrix (each true family's row sums to 1), counts in each cell."""
    plt = _pyplot()
    m = np.asarray(matrix, dtype=np.float64)
    rows = m.sum(axis=1, keepdims=True)
    norm = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    k = len(families)
    size = max(4.0, 1.0 + 0.9 * k)
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(k), families, rotation=35, ha="right")
    ax.set_yticks(range(k), families)
    ax.set_xlabel("predicted family")
    ax.set_ylabel("true family")
    for i in range(k):
        for j in range(k):
            colour = "white" if norm[i, j] > 0.5 else "black"
            ax.text(
                j,
                i,
                f"{norm[i, j]:.2f}\n({int(m[i, j])})",
                ha="center",
                va="center",
                color=colour,
                fontsize=9,
            )
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true family's images")
    ax.set_title(title or "confusion matrix (row-normalised)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_risk_coverage(
    curve: RiskCoverage,
    threshold: float,
    path: Path,
    *,
    target: float | None = None,
    title: str = "",
    ood_rejected: Mapping[str, float | None] | None = None,
) -> None:
    """Risk (error of accepted predictions) against coverage, with the chosen threshold marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    if len(curve.coverage):
        ax.step(
            curve.coverage, curve.risk, where="post", color="C0", label=f"classifier (AURC {curve.aurc:.3f})"
        )
        # The operating point: the last curve point whose threshold is still >= the chosen one.
        at = np.flatnonzero(curve.thresholds >= threshold)
        if at.size:
            i = int(at[-1])
            cov, risk = curve.coverage[i], curve.risk[i]
        else:
            cov, risk = 0.0, 0.0
        ax.plot([cov], [risk], "o", color="C3", markersize=8, zorder=3)
        ax.annotate(
            f"threshold {threshold:.3f}\ncoverage {cov:.2f}, risk {risk:.3f}",
            (cov, risk),
            textcoords="offset points",
            xytext=(-10, 18),
            ha="right",
            color="C3",
            fontsize=9,
        )
        ax.axvline(cov, color="C3", lw=0.8, ls=":")
    if target is not None:
        ax.axhline(1 - target, color="grey", lw=0.8, ls="--", label=f"target risk {1 - target:.2f}")
    if ood_rejected:
        text = "\n".join(
            f"OOD {name}: {share:.0%} rejected" for name, share in ood_rejected.items() if share is not None
        )
        if text:
            ax.text(0.02, 0.97, text, transform=ax.transAxes, va="top", fontsize=8, color="dimgrey")
    ax.set_xlim(0, 1.02)
    top = float(curve.risk.max()) if len(curve.risk) else 0.1
    ax.set_ylim(0, max(0.05, top * 1.15, (1 - target) * 1.5 if target else 0))
    ax.set_xlabel("coverage (share of images accepted)")
    ax.set_ylabel("risk (error rate among accepted)")
    ax.set_title(title or "risk-coverage", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report_files(
    report: ClassifierReport, out_dir: Path, title: str = "", *, json_name: str = REPORT_JSON
) -> None:
    """Write ``confusion.csv``, ``confusion.png``, ``risk_coverage.png`` and the JSON into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_confusion_csv(report.matrix, report.families, out_dir / CONFUSION_CSV)
    n = report.summary["images"]
    plot_confusion(
        report.matrix, report.families, out_dir / CONFUSION_PNG, f"{title}\n{n} images, row-normalised"
    )
    ood = {name: v["rejected"] for name, v in report.summary["out_of_distribution"].items()}
    plot_risk_coverage(
        report.curve,
        report.threshold,
        out_dir / RISK_COVERAGE_PNG,
        target=report.target,
        title=f"{title}\n{n} images",
        ood_rejected=ood,
    )
    report.files = {
        "confusion_csv": str(out_dir / CONFUSION_CSV),
        "confusion_png": str(out_dir / CONFUSION_PNG),
        "risk_coverage_png": str(out_dir / RISK_COVERAGE_PNG),
        "report_json": str(out_dir / json_name),
    }
    (out_dir / json_name).write_text(json.dumps(report.as_dict(), indent=2) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------------------------------
# Running a model over folders


def folder_scores(
    classifier: TrainedFamilyClassifier,
    paths: Sequence[Path],
    *,
    progress: bool = True,
    desc: str = "classify",
    gate: SpecimenGate | None = None,
) -> tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Uncalibrated logits ``(N, K)`` and out-of-distribution scores ``(N,)`` of the crops at
    ``paths``, read through the production pad path; with ``gate``, also ``(N,)`` booleans: the
    gate rejects the crop (features shared with the classifier where the backbone is the same)."""
    logits = np.empty((len(paths), len(classifier.families)), dtype=np.float64)
    distances = np.zeros(len(paths), dtype=np.float64)
    gated = np.zeros(len(paths), dtype=bool)
    step = max(1, classifier.batch_size)
    shared = gate is not None and gate.shares_features_with(classifier)
    with tqdm(total=len(paths), desc=desc, unit="img", disable=not progress) as bar:
        for start in range(0, len(paths), step):
            chunk = paths[start : start + step]
            crops = [load_square(p) for p in chunk]
            z, d, f = classifier.scores_and_features(crops)
            logits[start : start + len(chunk)] = z
            distances[start : start + len(chunk)] = d
            if gate is not None:
                feats = f if shared else gate.features(crops, threads=classifier.threads)
                gated[start : start + len(chunk)] = gate.rejects(feats)
            bar.update(len(chunk))
    if gate is None:
        return logits, distances
    return logits, distances, gated


def _seen_in_training(model_dir: Path) -> set[str] | None:
    """sha256 of every train and validation file of the model, or ``None`` without a split file."""
    path = model_dir / SPLIT_FILE
    if not path.is_file():
        return None
    manifest = json.loads(path.read_text(encoding="utf-8"))
    return {entry["sha256"] for name in ("train", "val") for entry in manifest.get(name, [])}


def evaluate_classifier_folder(
    data_dir: Path,
    classifier: TrainedFamilyClassifier,
    out_dir: Path,
    *,
    ood: Sequence[Path] = (),
    split: str = "auto",
    threshold: float | None = None,
    progress: bool = True,
    gate: SpecimenGate | None = None,
) -> ClassifierReport:
    """Evaluate ``classifier`` on ``DATA_DIR/<Family>/*`` (and OOD folders) and write the report files.

    Every threshold is the model's own (or ``threshold``): nothing is tuned on the OOD folders,
    which are only scored. With ``gate``, crops it rejects count as rejected (``not_a_specimen``).

    ``split="auto"`` leaves out every image the model was trained or calibrated on (matched by
    content sha256 against the model's ``split.json``), so pointing it at the training folder
    evaluates the test split; ``split="all"`` evaluates every image.
    """
    if split not in ("auto", "all"):
        raise ValueError(f"split must be 'auto' or 'all', given split {split!r}")
    data = scan_family_folders(data_dir, classifier.families)
    items = list(data.items)
    excluded = 0
    seen = _seen_in_training(classifier.directory) if split == "auto" else None
    if seen:
        kept = [item for item in items if file_sha256(item.path) not in seen]
        excluded = len(items) - len(kept)
        items = kept
    threshold = classifier.threshold if threshold is None else threshold
    scored = folder_scores(
        classifier, [i.path for i in items], progress=progress, desc=f"classify {data_dir.name}", gate=gate
    )
    logits, distances = scored[0], scored[1]
    gated = scored[2] if gate is not None else None  # type: ignore[misc]
    ood_logits, ood_distances, ood_gated = {}, {}, {}
    for folder in ood:
        files = image_files(folder)
        name = _ood_name(folder, ood_logits)
        scored = folder_scores(classifier, files, progress=progress, desc=f"OOD {name}", gate=gate)
        ood_logits[name], ood_distances[name] = scored[0], scored[1]
        if gate is not None:
            ood_gated[name] = scored[2]  # type: ignore[misc]
    target = classifier.config.get("threshold_target")
    report = classifier_report(
        logits,
        np.array([i.label for i in items], dtype=np.int64),
        classifier.families,
        classifier.temperature,
        threshold,
        target=float(target) if target is not None and threshold == classifier.threshold else None,
        ood_logits=ood_logits,
        distances=distances if classifier.ood is not None else None,
        ood_distances=ood_distances if classifier.ood is not None else None,
        distance_threshold=classifier.ood_threshold if classifier.ood is not None else None,
        gate_rejected=gated,
        ood_gate_rejected=ood_gated if gate is not None else None,
    )
    report.summary = {
        "model": {
            "version": classifier.version,
            "path": classifier.path,
            "temperature": classifier.temperature,
            "threshold": threshold,
            "threshold_target": target,
            "distance_threshold": classifier.ood_threshold if classifier.ood is not None else None,
            "ood_rule": classifier.ood_rule,
            "gate": gate.describe() if gate is not None else None,
        },
        "data": {
            "folder": str(data_dir),
            "split": split,
            "excluded_seen_in_training": excluded,
            "ood_folders": {name: str(f) for name, f in zip(ood_logits, ood, strict=True)},
        },
        **report.summary,
    }
    write_report_files(report, out_dir, title=f"{classifier.version}\n{data_dir.name}")
    return report


def _ood_name(folder: Path, taken: Mapping[str, Any]) -> str:
    """``parent/name`` of an OOD folder (e.g. ``bioscan-wells/single``), made unique."""
    name = f"{folder.parent.name}/{folder.name}" if folder.parent.name else folder.name
    base, n = name, 2
    while name in taken:
        name, n = f"{base}#{n}", n + 1
    return name

"""Issue 14 follow-up: do richer features or other distance rules close the two missed targets?

    python benchmarks/feature_variants_extract.py --out WORK/variants ...   # see run order below
    python benchmarks/feature_variants_compare.py --variants WORK/variants [--json]

Reads the features written by ``feature_variants_extract.py`` and, for every feature variant x
rule, measures on the three training families only (no out-of-distribution image chooses
anything):

- leave-one-family-out at keep 0.95: each family in turn left out; the rule is fitted on the other
  two (train + validation + test of those: every crop of the training families, as the README's
  figures), its threshold is the out-of-fold score (5 folds) keeping 95 %, and the share of the
  left-out family above it is reported;
- for the head (trained on the train split as ``labpipe train classifier`` does, on the variant's
  features): test-split accuracy, macro-F1 and the 15-bin ECE of the 82 test crops with a
  temperature cross-fitted on train + validation, with a 95 % bootstrap interval (2000 resamples
  of the test crops); and the nested ECE on the 331 train + validation crops.

Feature variants (``d224``: pooled 1280-d head features at 224 px; ``s``: pooled stages 4-6):
``head`` (view 0, what the model uses today, bank of view 0 only: the production bank also holds
4 augmented views of each crop, which this study's extraction skipped to save time), ``head+views``
(bank holds the flip and quarter-turn views too), ``tta`` (features averaged over identity and
horizontal flip, query and bank alike; ``tta3``: and a quarter turn), ``multi`` (head and
stages, each block L2-normalised then concatenated with equal weight), ``multi+tta``, ``r320``
(one view at 320 px; ``r384``, ``r448`` likewise, from ``--views 1 --resolution N`` extractions),
``tta3@320`` (three orientations at 320 px, averaged: ``--resolution-views 3``) and ``tta3+r320``
(the three 224 px views and the 320 px one, averaged).

Rules: ``knn`` (k = 1, Sun et al. 2022), ``trust`` (nearest distance to the predicted family over
the nearest distance to any other family, Jiang et al. 2018, inverted so larger = more doubtful),
``knn+trust`` (the larger of the two out-of-fold percentiles).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

FAMILIES = ("Apidae", "Carabidae", "Formicidae")
OOD = ("springtails", "debris_candidates", "empty_wells", "fragments", "wells")

ScoreFactory = Callable[[np.ndarray, np.ndarray], Callable[[np.ndarray], np.ndarray]]
"""``fit(bank_rows (m, d) L2-normalised, labels (m,)) -> score(query (n, d)) -> (n,)``."""


def l2n(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(n, 1e-12)


def nearest_by_class(q: np.ndarray, bank: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``(n, K)`` Euclidean distance of each normalised query to the nearest bank row of each class."""
    sim = l2n(q) @ l2n(bank).T
    classes = np.unique(labels)
    best = np.stack([sim[:, labels == c].max(1) for c in classes], 1)
    return np.sqrt(np.clip(2 - 2 * best, 0, None))


def knn_rule(bank: np.ndarray, labels: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    return lambda q: nearest_by_class(q, bank, labels).min(1)


def centred_knn_rule(bank: np.ndarray, labels: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """kNN after subtracting the mean of the (normalised) bank rows: post-ReLU features all share a
    large common component, which makes every cosine similarity high."""
    mu = l2n(bank).mean(0)
    b = l2n(bank) - mu
    return lambda q: nearest_by_class(l2n(q) - mu, b, labels).min(1)


def sqrt_knn_rule(bank: np.ndarray, labels: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """kNN on square-rooted (non-negative) features: Hellinger / power normalisation."""
    b = np.sqrt(np.clip(bank, 0, None))
    return lambda q: nearest_by_class(np.sqrt(np.clip(q, 0, None)), b, labels).min(1)


def whitened_knn_rule(bank: np.ndarray, labels: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """kNN after centring and PCA whitening of the normalised bank (eigenvalues shrunk by
    Ledoit-Wolf), i.e. a nearest-neighbour Mahalanobis distance."""
    from labpipe.classify.ood import ledoit_wolf_covariance

    nb = l2n(bank)
    mu = nb.mean(0)
    cov, _ = ledoit_wolf_covariance(nb - mu)
    w, v = np.linalg.eigh(cov)
    proj = v / np.sqrt(np.maximum(w, 1e-12))
    b = (nb - mu) @ proj
    return lambda q: nearest_by_class((l2n(q) - mu) @ proj, b, labels).min(1)


def trust_rule(bank: np.ndarray, labels: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    def score(q: np.ndarray) -> np.ndarray:
        d = np.sort(nearest_by_class(q, bank, labels), 1)
        return d[:, 0] / np.maximum(d[:, 1], 1e-12)

    return score


def folds_of(y: np.ndarray, n: int = 5, seed: int = 0) -> np.ndarray:
    from labpipe.classify.rejection import stratified_folds

    return stratified_folds(y, n, seed)


def oof(fit: ScoreFactory, q: np.ndarray, bank3: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Out-of-fold scores of ``q`` (n, d) with the bank rows ``bank3`` (n, v, d) of the other folds."""
    f = folds_of(y)
    s = np.empty(len(y))
    v = bank3.shape[1]
    for k in np.unique(f):
        held = f == k
        rows = bank3[~held].reshape(-1, bank3.shape[-1])
        s[held] = fit(rows, np.repeat(y[~held], v))(q[held])
    return s


def threshold(scores: np.ndarray, keep: float) -> float:
    from labpipe.classify.ood import select_distance_threshold

    return select_distance_threshold(scores, keep)


def lofo(rule: str, q: np.ndarray, bank3: np.ndarray, y: np.ndarray, keep: float) -> list[float]:
    out = []
    for fam in np.unique(y):
        left = y == fam
        qi, bi, yi = q[~left], bank3[~left], y[~left]
        rows, labels = bi.reshape(-1, bi.shape[-1]), np.repeat(yi, bi.shape[1])
        rejected = rule_reject(rule, qi, bi, yi, rows, labels, q[left], keep)
        out.append(float(rejected.mean()))
    return out


def rule_reject(rule, q_in, bank3, y, rows, labels, q_test, keep) -> np.ndarray:
    """Boolean rejection of ``q_test`` by ``rule`` fitted on ``rows``; threshold from out-of-fold
    scores of ``q_in`` (in-distribution)."""
    parts = ["knn", "trust"] if rule == "knn+trust" else [rule]
    fits = {"knn": knn_rule, "trust": trust_rule, "knn_c": centred_knn_rule, "knn_sqrt": sqrt_knn_rule,
            "knn_w": whitened_knn_rule}  # fmt: skip
    if len(parts) == 1:
        fit = fits[rule]
        t = threshold(oof(fit, q_in, bank3, y), keep)
        return fit(rows, labels)(q_test) > t
    # Ensemble: each part's score as its out-of-fold percentile; the larger one, threshold at keep.
    pct_in, pct_test = [], []
    for p in parts:
        s_in = oof(fits[p], q_in, bank3, y)
        s_test = fits[p](rows, labels)(q_test)
        ref = np.sort(s_in)
        pct_in.append(np.searchsorted(ref, s_in, side="right") / len(ref))
        pct_test.append(np.searchsorted(ref, s_test, side="right") / len(ref))
    t = threshold(np.max(pct_in, 0), keep)
    return np.max(pct_test, 0) > t


def load(variants: Path, name: str, tag: str) -> dict[str, np.ndarray]:
    with np.load(variants / f"{name}-{tag}.npz") as z:
        return {k: z[k] for k in z.files}


def file_tag(kind: str) -> str:
    """The extraction (``feature_variants_extract.py`` file tag) that holds a variant's arrays."""
    if kind[0] == "r" and kind[1:].isdigit():  # --views 1 --resolution N
        return f"v1-{kind}"
    if kind.startswith("tta3@"):  # --views 3 --resolution N --resolution-views 3
        return f"v3-r{kind[5:]}x3"
    if kind == "tta3+r320":  # --views 3 --resolution 320
        return "v3-r320"
    return "v3-r0"


def build(kind: str, d: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(query (n, dim), bank (n, v, dim)) of one feature variant from one folder's arrays."""
    h, s = d["d224"], d["d224s"]
    if kind == "head":
        return h[:, 0], h[:, :1]
    if kind == "head+views":
        return h[:, 0], h
    if kind == "tta3h":  # the mean of 3 views as the query, the views themselves as the bank
        return h.mean(1), h
    if kind in ("tta", "tta3"):
        m = h[:, : 3 if kind == "tta3" else 2].mean(1)
        return m, m[:, None]
    if kind.startswith("multi"):
        if kind == "multi+tta":
            h, s = h[:, :2].mean(1, keepdims=True), s[:, :2].mean(1, keepdims=True)
        blocks = [l2n(h[:, :1])] + [l2n(s[:, :1, a:b]) for a, b in ((0, 112), (112, 304), (304, 624))]
        m = np.concatenate(blocks, -1)
        return m[:, 0], m
    if kind[0] == "r" and kind[1:].isdigit():  # one view at a higher resolution (r320, r384, ...)
        return d["r"][:, 0], d["r"]
    if kind.startswith("tta3@"):  # three orientations at a higher resolution, averaged
        m = d["r"][:, :3].mean(1)
        return m, m[:, None]
    if kind == "tta3+r320":  # three orientations at 224 px and the identity at 320 px, averaged
        m = np.concatenate([h[:, :3], d["r"][:, :1]], 1).mean(1)
        return m, m[:, None]
    raise ValueError(kind)


def bootstrap_ece(probs: np.ndarray, y: np.ndarray, n: int = 2000) -> tuple[float, float]:
    from labpipe.classify.calibration import expected_calibration_error

    rng = np.random.default_rng(0)
    vals = [expected_calibration_error(probs[i], y[i]) for i in rng.integers(0, len(y), (n, len(y)))]
    return float(np.quantile(vals, 0.025)), float(np.quantile(vals, 0.975))


def head_figures(q: np.ndarray, views: np.ndarray, y: np.ndarray, split: np.ndarray) -> dict:
    """Head trained as in training on (train views), ECE of test with a cross-fitted temperature."""
    from labpipe.classify.calibration import expected_calibration_error, fit_temperature, softmax
    from labpipe.classify.metrics import confusion_matrix, per_class_prf
    from labpipe.classify.training import TrainOptions, _logits, train_head

    tr, va, te = split == "train", split == "val", split == "test"
    options = TrainOptions()
    head, hist = train_head(views[tr], y[tr], q[va], y[va], 3, options, progress=False)
    logits = _logits(head, q[te])
    best = int(np.argmin([h["val_loss"] for h in hist])) + 1
    fold_options = TrainOptions(epochs=best)
    trva = ~te
    yt = y[trva]
    f = folds_of(yt)
    oofl = np.empty((trva.sum(), 3))
    for k in range(5):
        held = f == k
        h2, _ = train_head(views[trva][~held], yt[~held], q[trva][~held], yt[~held], 3, fold_options,
                           progress=False, select_best=False)  # fmt: skip
        oofl[held] = _logits(h2, q[trva][held])
    t = fit_temperature(oofl, yt)
    nested = np.empty_like(oofl)
    for k in range(5):
        held = f == k
        nested[held] = softmax(oofl[held], fit_temperature(oofl[~held], yt[~held]))
    probs = softmax(logits, t)
    pred = logits.argmax(1)
    lo, hi = bootstrap_ece(probs, y[te])
    conf_err = np.sort(probs.max(1)[pred != y[te]]).round(3).tolist()
    return {
        "test_accuracy": round(float((pred == y[te]).mean()), 4),
        "test_errors": int((pred != y[te]).sum()),
        "error_confidences": conf_err,
        "test_macro_f1": round(float(per_class_prf(confusion_matrix(y[te], pred, 3))[2].mean()), 4),
        "temperature": round(t, 3),
        "test_ece_uncalibrated": round(expected_calibration_error(softmax(logits, 1.0), y[te]), 4),
        "test_ece": round(expected_calibration_error(probs, y[te]), 4),
        "test_ece_95": [round(lo, 4), round(hi, 4)],
        "nested_ece_331": round(expected_calibration_error(nested, yt), 4),
        "oof_errors_331": int((oofl.argmax(1) != yt).sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variants", type=Path, required=True)
    parser.add_argument("--kinds", nargs="*", default=["head", "head+views", "tta", "multi", "multi+tta"])
    parser.add_argument("--rules", nargs="*", default=["knn", "trust", "knn+trust"])
    parser.add_argument("--keep", type=float, default=0.95)
    parser.add_argument(
        "--ood", action="store_true", help="Also the OOD folders (rules fitted on all 3 families)."
    )
    parser.add_argument("--ood-folders", nargs="*", default=list(OOD))
    parser.add_argument("--ood-tag", help="File tag of the OOD features (e.g. v3-r0-s3: every 3rd crop).")
    parser.add_argument("--no-head", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    import torch

    from labpipe.classify.dataset import stratified_split

    torch.set_num_threads(2)
    results = []
    for kind in args.kinds:
        parts = [load(args.variants, f, file_tag(kind)) for f in FAMILIES]
        y = np.concatenate([np.full(len(p["paths"]), i) for i, p in enumerate(parts)])
        built = [build(kind, p) for p in parts]
        q = np.concatenate([b[0] for b in built])
        bank3 = np.concatenate([b[1] for b in built])
        split = stratified_split(y, (0.7, 0.1, 0.2), 0, names=list(FAMILIES))
        row: dict = {"features": kind}
        if not args.no_head:
            views = bank3 if bank3.shape[1] > 1 else q[:, None]
            row["head"] = head_figures(q, views, y, split)
        for rule in args.rules:
            per = lofo(rule, q, bank3, y, args.keep)
            row[f"lofo_{rule}"] = [round(float(np.mean(per)), 3)] + [round(v, 3) for v in per]
            if args.ood:
                trva = split != "test"
                rows, labels = bank3[trva].reshape(-1, bank3.shape[-1]), np.repeat(y[trva], bank3.shape[1])
                te = split == "test"
                queries = {"test": q[te]}
                for o in args.ood_folders:
                    qo, _ = build(kind, load(args.variants, o, args.ood_tag or file_tag(kind)))
                    queries[o] = qo
                rej = {
                    n: float(
                        rule_reject(rule, q[trva], bank3[trva], y[trva], rows, labels, v, args.keep).mean()
                    )
                    for n, v in queries.items()
                }
                row[f"ood_{rule}"] = {n: round(v, 3) for n, v in rej.items()}
        results.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

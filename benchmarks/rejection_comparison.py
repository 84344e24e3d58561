"""Issue 14: compare the out-of-distribution rules on the same splits, and the two calibrations.

    python benchmarks/rejection_comparison.py --work WORK [--json]

The families are ``ants-bees/bees`` (Apidae), ``carabidae-crops`` (Carabidae) and
``ants-bees/ants`` (Formicidae), split 70/10/20 exactly as ``labpipe train classifier`` does (seed
0), with its backbone features (4 augmented views of every train and validation crop), cached in
``WORK/cache`` by content. One family head is trained as in training; then every rule is fitted
on train + validation and its threshold is set, without any out-of-distribution image, at the
out-of-fold score keeping 0.90, 0.95 or 0.975 of the in-distribution crops (5 folds). Beside
each: the share of correct test-split calls kept, the share of each out-of-distribution folder
rejected, and leave-one-family-out (each family in turn the unknown one). "today" is the rule
before this work: Mahalanobis, fitted on train, threshold keeping 97.5 % of validation crops.

Outlier exposure learns "other arthropod" from the even-numbered ``bioscan-wells/single`` crops
(CC BY-NC-SA: fine for a lab's own local model, not for weights that ship); the odd-numbered ones
are its held-out test folder, so the wells figure of the other rules is on those too.

Calibration: ECE of the test split with the temperature fitted on validation (1.0 when
validation holds no error) and cross-fitted on out-of-fold logits of train + validation; and,
on the 331 train + validation crops, the ECE of each fold's out-of-fold logits calibrated by a
temperature fitted on the other folds (nested: more crops than the test split's 82, none seen by
the temperature that calibrates it).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FAMILIES = {"Apidae": "ants-bees/bees", "Carabidae": "carabidae-crops", "Formicidae": "ants-bees/ants"}
OOD = {
    "springtails": "collembola/positive",
    "debris candidates": "collembola/candidate_false",
    "empty wells": "bioscan-wells/empty",
    "fragments": "bioscan-wells/fragments",
    "wells (odd)": "bioscan-wells/single",
}
KEEPS = (0.9, 0.95, 0.975)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--calibration-only", action="store_true", help="Skip the rules.")
    args = parser.parse_args()
    if not SHARED.is_dir():
        raise SystemExit(f"{SHARED} is missing: this comparison needs the shared real images")
    import torch

    from labpipe.classify.calibration import expected_calibration_error, fit_temperature, softmax
    from labpipe.classify.dataset import image_files, stratified_split
    from labpipe.classify.efficientnet_lite import load_efficientnet_lite0
    from labpipe.classify.features import FeatureCache, FeatureRecipe, extract_features
    from labpipe.classify.metrics import confusion_matrix, per_class_prf
    from labpipe.classify.ood import select_distance_threshold
    from labpipe.classify.rejection import (
        choose_knn_k,
        fit_rule,
        leave_one_family_out,
        out_of_fold_scores,
        stratified_folds,
    )
    from labpipe.classify.trained import backbone_record
    from labpipe.classify.training import TrainOptions, _logits, train_head

    torch.set_num_threads(2)
    backbone = load_efficientnet_lite0().to(memory_format=torch.channels_last)
    recipe = FeatureRecipe(backbone_sha256=backbone_record()["sha256"])
    cache = FeatureCache(args.work / "cache")
    families = list(FAMILIES)
    paths = {f: image_files(SHARED / FAMILIES[f]) for f in families}
    y_all = np.concatenate([np.full(len(paths[f]), i) for i, f in enumerate(families)])
    split = stratified_split(y_all, (0.7, 0.1, 0.2), 0, names=families)
    all_paths = [p for f in families for p in paths[f]]
    trva_idx = np.flatnonzero(split != "test")
    x_views = extract_features(
        [all_paths[i] for i in trva_idx], range(5), backbone, recipe, cache, desc="train+val"
    )
    x_test = extract_features(
        [all_paths[i] for i in np.flatnonzero(split == "test")], [0], backbone, recipe, cache
    )
    x_test = x_test[:, 0]
    ood = {name: extract_features(image_files(SHARED / sub), [0], backbone, recipe, cache, desc=name)[:, 0]
           for name, sub in OOD.items()}  # fmt: skip
    oe_train, ood["wells (odd)"] = ood["wells (odd)"][0::2], ood["wells (odd)"][1::2]

    y_trva = y_all[trva_idx]
    is_train = split[trva_idx] == "train"
    y_test = y_all[split == "test"]
    options = TrainOptions()
    head, history = train_head(
        x_views[is_train],
        y_trva[is_train],
        x_views[~is_train, 0],
        y_trva[~is_train],
        3,
        options,
        progress=False,
    )
    test_logits = _logits(head, x_test)
    pred = test_logits.argmax(1)
    correct = pred == y_test
    macro_f1 = float(per_class_prf(confusion_matrix(y_test, pred, 3))[2].mean())
    ood_logits = {name: _logits(head, v) for name, v in ood.items()}
    best_epoch = int(np.argmin([h["val_loss"] for h in history])) + 1
    fold_options = TrainOptions(epochs=best_epoch)

    def fit_head(x: np.ndarray, y: np.ndarray, k: int):
        h, _ = train_head(x, y, x[:, 0], y, k, fold_options, progress=False, select_best=False)
        return lambda f: _logits(h, f)

    rows = []

    def evaluate(name: str, fitted, threshold: float, lofo: dict | None = None, keep=None) -> None:
        kept = fitted.score(x_test, test_logits) <= threshold
        row = {"rule": name, "keep": keep, "correct_kept": round(float(kept[correct].mean()), 3)}
        for o, v in ood.items():
            row[o] = round(float((fitted.score(v, ood_logits[o]) > threshold).mean()), 3)
        if lofo is not None:
            row["lofo_mean"] = round(lofo["mean"][keep], 3)
            row["lofo"] = dict(zip(families, np.round(lofo["rejected"][keep], 3).tolist(), strict=True))
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)

    today = fit_rule("mahalanobis", x_views[is_train], y_trva[is_train], 3)
    threshold = select_distance_threshold(today.score(x_views[~is_train, 0]), 0.975)
    evaluate("mahalanobis, today (train fit, 97.5 % of validation)", today, threshold, keep=0.975)
    k, k_means = choose_knn_k(x_views, y_trva, 3, 0.95) if not args.calibration_only else (1, {})
    kwargs = {
        "mahalanobis": {},
        "knn": {"k": k},
        "energy": {"fit_head": fit_head},
        "outlier_exposure": {"outliers": oe_train},
    }
    folds = stratified_folds(y_trva, 5, 0)
    oof_logits = np.empty((len(y_trva), 3))
    for f in range(5):
        held = folds == f
        oof_logits[held] = fit_head(x_views[~held], y_trva[~held], 3)(x_views[held, 0])
    for rule, kw in kwargs.items() if not args.calibration_only else ():
        lofo = leave_one_family_out(rule, x_views, y_trva, 3, list(KEEPS), **kw)
        if rule == "energy":
            from labpipe.classify.ood import energy_score

            oof = energy_score(oof_logits)
            fitted = fit_rule("energy", x_views, y_trva, 3, fit_head=lambda *_: lambda f: _logits(head, f))
        else:
            oof = out_of_fold_scores(rule, x_views, y_trva, 3, **kw)
            fitted = fit_rule(rule, x_views, y_trva, 3, **kw)
        for keep in KEEPS:
            label = f"{rule} (k={k})" if rule == "knn" else rule
            evaluate(label, fitted, select_distance_threshold(oof, keep), lofo, keep)

    val_logits = _logits(head, x_views[~is_train, 0])
    t_val = fit_temperature(val_logits, y_trva[~is_train])
    t_cross = fit_temperature(oof_logits, y_trva)
    # Nested: each fold's out-of-fold logits calibrated by a temperature fitted on the other folds'.
    nested = np.empty_like(oof_logits)
    for f in range(5):
        held = folds == f
        nested[held] = softmax(oof_logits[held], fit_temperature(oof_logits[~held], y_trva[~held]))
    calibration = {
        "nested_ece_crossfit_331": round(expected_calibration_error(nested, y_trva), 4),
        "nested_ece_uncalibrated_331": round(expected_calibration_error(softmax(oof_logits, 1.0), y_trva), 4),
        "validation_errors": int((val_logits.argmax(1) != y_trva[~is_train]).sum()),
        "out_of_fold_errors": int((oof_logits.argmax(1) != y_trva).sum()),
        "temperature_validation": round(t_val, 3),
        "temperature_crossfit": round(t_cross, 3),
        "test_ece_uncalibrated": round(expected_calibration_error(softmax(test_logits, 1.0), y_test), 4),
        "test_ece_validation": round(expected_calibration_error(softmax(test_logits, t_val), y_test), 4),
        "test_ece_crossfit": round(expected_calibration_error(softmax(test_logits, t_cross), y_test), 4),
    }
    result = {
        "test_images": len(y_test),
        "test_accuracy": round(float(correct.mean()), 4),
        "test_macro_f1": round(macro_f1, 4),
        "knn_k_left_out_family_rejected": {str(a): round(b, 3) for a, b in k_means.items()},
        "rules": rows,
        "calibration": calibration,
    }
    name = "calibration.json" if args.calibration_only else "rejection_comparison.json"
    (args.work / name).write_text(json.dumps(result, indent=2))
    if args.json:
        print(json.dumps(result, indent=2))
        return
    names = list(OOD)
    print(
        "| rule | keep (out of fold) | correct test calls kept | "
        + " | ".join(names)
        + " | left-out family |"
    )
    print("|---|---|---|" + "---|" * len(names) + "---|")
    for r in rows:
        lofo = (
            f"{r['lofo_mean']:.2f} ({', '.join(f'{v:.2f}' for v in r['lofo'].values())})"
            if "lofo" in r
            else ""
        )
        cells = " | ".join(f"{r[n]:.2f}" for n in names)
        print(f"| {r['rule']} | {r['keep']} | {r['correct_kept']:.3f} | {cells} | {lofo} |")
    print(json.dumps({k: v for k, v in result.items() if k != "rules"}, indent=1))


if __name__ == "__main__":
    main()

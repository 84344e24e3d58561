"""``labpipe train``, ``labpipe eval classifier``, ``labpipe models`` and ``labpipe reclassify``.

Thin click commands over :mod:`labpipe.classify.training`, :mod:`labpipe.evaluation.classifier`,
:mod:`labpipe.registry` and :mod:`labpipe.reclassify`. They are registered on the main group in
:mod:`labpipe.cli.main`; the settings object comes through ``click.pass_obj`` (the main group's
context object), so this module does not import the main module.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from labpipe.errors import LabpipeError

__all__ = ["eval_classifier", "models", "reclassify", "train"]


def _fail(exc: LabpipeError | str) -> None:
    click.echo(f"error: {exc.message if isinstance(exc, LabpipeError) else exc}", err=True)
    sys.exit(2)


def _share(text: str, option: str) -> float:
    """A share in [0, 1] given on the command line, or a usage error naming ``option``."""
    try:
        value = float(text)
    except ValueError:
        raise click.BadParameter(f"{text!r} is neither 'auto' nor a number", param_hint=option) from None
    if not 0.0 <= value <= 1.0:
        raise click.BadParameter(f"{value} is not a share in [0, 1]", param_hint=option)
    return value


def _dispose(factory: Any) -> None:
    bind = factory.kw.get("bind")
    if bind is not None:
        bind.dispose()


def _load_trained(obj: Any, model: str, threshold: float | None = None) -> Any:
    """A trained classifier from a directory, a registered version or ``registry:default``."""
    from labpipe.classify.loader import BUILTIN_PREFIX, configured_classifier
    from labpipe.classify.trained import TrainedFamilyClassifier

    spec = model
    if not Path(model).expanduser().is_dir() and not model.startswith(BUILTIN_PREFIX):
        spec = _resolve_with_database(obj, model)
    classifier = configured_classifier(obj.settings, model=spec, threshold=threshold, gate="")
    if not isinstance(classifier, TrainedFamilyClassifier):
        _fail(f"{model}: `eval classifier` needs a trained model directory (see `labpipe train classifier`)")
    return classifier


def _resolve_with_database(obj: Any, model: str) -> str:
    from labpipe.db.database import open_database
    from labpipe.registry import resolve_model_argument

    factory = open_database(obj.settings.database_url)
    try:
        with factory() as session:
            return resolve_model_argument(model, session)
    finally:
        _dispose(factory)


# --------------------------------------------------------------------------------------------------
# labpipe train


def feature_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--cache-dir``, ``--no-cache`` and ``--threads``: how the backbone's features are computed."""
    command = click.option("--threads", type=int, help="Torch CPU threads (default: [classifier] threads).")(
        command
    )
    command = click.option("--no-cache", is_flag=True, help="Compute every feature afresh and store none.")(
        command
    )
    return click.option(
        "--cache-dir",
        type=click.Path(file_okay=False, path_type=Path),
        help="Feature cache (default: <storage root>/cache/features).",
    )(command)


@click.group()
def train() -> None:
    """Train models from the lab's own labelled images (classifier; detector to come)."""


@train.command("classifier")
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--name", help="Model name, the part of the version before '@' (default: the --out folder's name)."
)
@click.option("--finetune", is_flag=True, help="After the head, train the whole network (slow on CPU).")
@click.option("--epochs", type=int, default=60, show_default=True, help="Head epochs.")
@click.option("--finetune-epochs", type=int, default=5, show_default=True)
@click.option("--views", type=int, default=4, show_default=True, help="Augmented views per training image.")
@click.option(
    "--input-size",
    type=click.IntRange(64, 1024),
    default=320,
    show_default=True,
    help="Side in pixels of the square the backbone sees (224: ImageNet's, half the compute per "
    "crop; 320 separates unseen families better and is better calibrated).",
)
@click.option(
    "--tta",
    is_flag=True,
    help="Judge every crop on the mean features of itself, its mirror image and a quarter turn "
    "(head and out-of-distribution rule; 3 forward passes per crop).",
)
@click.option(
    "--hidden", type=int, default=256, show_default=True, help="Hidden units of the head (0: linear)."
)
@click.option("--dropout", type=float, default=0.5, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option(
    "--balance",
    type=click.Choice(["weights", "sampler"]),
    default="weights",
    show_default=True,
    help="Class imbalance: class-weighted loss or balanced sampling.",
)
@click.option(
    "--target",
    type=float,
    default=0.95,
    show_default=True,
    help="Accuracy of accepted predictions the threshold is chosen for, on validation.",
)
@click.option(
    "--ood-keep",
    default="auto",
    show_default=True,
    help="Share of in-distribution crops (cross-fitted) the out-of-distribution rule keeps (0: no "
    "rule); 'auto': the strictest of 0.85-0.95 that still keeps 95 %% of the correctly classified "
    "crops out of fold.",
)
@click.option(
    "--ood-rule",
    type=click.Choice(["knn", "mahalanobis", "energy", "outlier_exposure", "none"]),
    default="knn",
    show_default=True,
    help="Out-of-distribution rule: kNN distance on normalised features (Sun et al. 2022), Mahalanobis, "
    "energy, or outlier exposure against --outliers.",
)
@click.option(
    "--knn-k",
    type=int,
    default=0,
    show_default=True,
    help="k of the kNN rule (0: chosen by leave-one-family-out among 1, 5, 10, 20, 50).",
)
@click.option(
    "--outliers",
    multiple=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Folder of outlier crops (insects the lab does not target) for --ood-rule outlier_exposure "
    "(repeatable).",
)
@click.option(
    "--calibration",
    type=click.Choice(["auto", "validation", "crossfit"]),
    default="auto",
    show_default=True,
    help="Temperature and threshold on validation, cross-fitted on train + validation, or auto "
    "(cross-fitted when validation holds fewer than --min-val-images images or fewer than 5 errors).",
)
@click.option(
    "--min-val-images",
    type=int,
    default=50,
    show_default=True,
    help="Fewest validation images a threshold is set on; a smaller split is warned about and, with "
    "--calibration auto, cross-fitted.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Split and augmentation seed.")
@feature_options
@click.option("--overwrite", is_flag=True, help="Replace a model already in --out.")
@click.option("--register", is_flag=True, help="Add the model to the registry afterwards.")
@click.option("--json", "as_json", is_flag=True, help="Print the training summary as JSON.")
@click.pass_obj
def train_classifier_command(
    obj: Any,
    data_dir: Path,
    out_dir: Path,
    name: str | None,
    finetune: bool,
    epochs: int,
    finetune_epochs: int,
    views: int,
    input_size: int,
    tta: bool,
    hidden: int,
    dropout: float,
    lr: float,
    balance: str,
    target: float,
    ood_keep: str,
    ood_rule: str,
    knn_k: int,
    outliers: tuple[Path, ...],
    calibration: str,
    min_val_images: int,
    seed: int,
    cache_dir: Path | None,
    no_cache: bool,
    threads: int | None,
    overwrite: bool,
    register: bool,
    as_json: bool,
) -> None:
    """Train a family classifier on DATA_DIR (one folder per family) into the model folder --out.

        Stratified 70/10/20 train/validation/test split (fixed --seed). A head of two fully connected
        layers with dropout is trained on frozen EfficientNet-Lite0 features of the crops (padded to
        squares as in production) and of --views augmented copies (rotation, flips, colour jitter),
        cached so a second run is fast; --finetune then trains the whole network. Probabilities are
        calibrated by temperature scaling, and the rejection threshold is the lowest one whose accepted
        predictions are at least --target correct, both on validation or, when validation holds few
        errors or fewer than --min-val-images images (warned about), on cross-fitted (out-of-fold)
        logits of train + validation. Specimens whose backbone features lie far from every family
        (--ood-rule; default: distance to the k-th nearest training crop, k chosen by
        leave-one-family-out; the threshold keeps --ood-keep of out-of-fold in-distribution crops, no
        out-of-distribution images needed) are rejected as out of distribution. --tta judges each crop
    (training, evaluation and production alike) on the mean features of three orientations. The test split is
        evaluated into metrics.json, confusion.csv/png and risk_coverage.png in --out.
    """
    from labpipe.classify.augment import AugmentSpec
    from labpipe.classify.training import TrainOptions, train_classifier

    settings = obj.settings
    try:
        options = TrainOptions(
            name=name or out_dir.resolve().name,
            hidden=hidden,
            dropout=dropout,
            epochs=epochs,
            lr=lr,
            views=views,
            input_size=input_size,
            tta=tta,
            augment=AugmentSpec(),
            balance=balance,
            seed=seed,
            target=target,
            ood_keep=None if ood_keep == "auto" else _share(ood_keep, "--ood-keep"),
            ood_rule=ood_rule,
            knn_k=knn_k,
            outliers=tuple(str(p) for p in outliers),
            calibration=calibration,
            min_val_images=min_val_images,
            finetune=finetune,
            finetune_epochs=finetune_epochs,
            threads=settings.classifier.threads if threads is None else threads,
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    cache = None if no_cache else (cache_dir or settings.storage.root / "cache" / "features")
    try:
        result = train_classifier(
            data_dir, out_dir, options, cache_dir=cache, progress=not as_json, overwrite=overwrite
        )
    except LabpipeError as exc:
        _fail(exc)
        return
    summary = _train_summary(result)
    for warning in summary["warnings"]:
        click.echo(f"warning: {warning}", err=True)
    if register:
        from labpipe.db.database import open_database
        from labpipe.registry import add_model

        factory = open_database(settings.database_url)
        try:
            with factory() as session:
                add_model(session, str(result.directory))
                session.commit()
        finally:
            _dispose(factory)
        summary["registered"] = True
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(_format_train_summary(summary))


def _counted_images(specs: tuple[str, ...], um_per_px: float | None) -> list[Any]:
    """``--counted FOLDER=N`` -> the images of each folder, each known to hold N specimens."""
    from labpipe.errors import ConfigError
    from labpipe.evaluation.truth import counted_folder

    images: list[Any] = []
    for spec in specs:
        folder, sep, count = spec.rpartition("=")
        if not sep or not count.isdigit() or not Path(folder).is_dir():
            raise ConfigError(
                None,
                f"--counted {spec!r} is not FOLDER=N with an existing folder and a whole number",
                "write e.g. --counted wells/single=1 --counted wells/empty=0",
            )
        found = counted_folder(Path(folder), int(count), um_per_px=um_per_px)
        if not found:
            raise ConfigError(folder, "holds no images", "point --counted at a folder of images")
        images += found
    return images


@train.command("gate")
@click.option(
    "--specimens",
    "specimens",
    multiple=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Folder of crops of whole arthropods; repeatable.",
)
@click.option(
    "--debris",
    "debris",
    multiple=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Folder of crops that are not a whole arthropod (debris, fragments, empty background); repeatable.",
)
@click.option(
    "--from-reviews",
    is_flag=True,
    help="Learn from the lab's plates marked 'boxes reviewed' (configured database, archive images): "
    "the detector's boxes the review kept are specimens, those it removed are not.",
)
@click.option(
    "--coco",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Learn from the reviewed plates of this COCO file (`labpipe export coco`), as --from-reviews.",
)
@click.option(
    "--images",
    "images_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Folder holding the images named in --coco (default: the file's folder).",
)
@click.option(
    "--counted",
    "counted_specs",
    multiple=True,
    metavar="FOLDER=N",
    help="A folder of images that each hold N whole specimens (wells of one insect: =1; empty or "
    "fragment wells: =0): every box in a =0 image is not a specimen, and the boxes of an image with "
    "the right count are; repeatable.",
)
@click.option(
    "--um-per-px",
    type=float,
    help="Scale of the --counted images that carry none (micrometres per pixel).",
)
@click.option(
    "--holdout",
    type=click.IntRange(0),
    help="Reviewed plates kept out of training and scored with and without the gate (default: 20 %% "
    "with --from-reviews, at least 1 of 2 or more; 0 with --coco).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Which plates are held out.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--keep",
    type=float,
    default=0.98,
    show_default=True,
    help="Share of whole specimens (cross-fitted) the gate keeps.",
)
@feature_options
@click.option("--overwrite", is_flag=True, help="Replace a gate already in --out.")
@click.option("--json", "as_json", is_flag=True, help="Print gate.json.")
@click.pass_obj
def train_gate_command(
    obj: Any,
    specimens: tuple[Path, ...],
    debris: tuple[Path, ...],
    from_reviews: bool,
    coco: Path | None,
    images_dir: Path | None,
    counted_specs: tuple[str, ...],
    um_per_px: float | None,
    holdout: int | None,
    seed: int,
    out_dir: Path,
    keep: float,
    cache_dir: Path | None,
    no_cache: bool,
    threads: int | None,
    overwrite: bool,
    as_json: bool,
) -> None:
    """Train the specimen-or-not gate into --out, on frozen EfficientNet-Lite0 features: whole
    arthropods against debris, fragments and empty background.

    Learn it from folders of crops (--specimens, --debris), from the lab's reviewed plates
    (--from-reviews, or --coco EXPORT), or both. On a reviewed plate the detector's boxes that
    match a reviewed box are specimens and those away from every specimen are not: the gate learns
    the lab's own false detections (grommets, scale cards, labels, dust). The crops it learnt from
    are written under --out/crops for people to look through.

    The threshold keeps --keep of the whole specimens, scored out of fold (5 folds). Set
    `[classifier] gate = "<out>"` to put it in front of any classifier: crops it rejects are
    rejected as not_a_specimen and not counted.
    """
    from labpipe.classify.gate import train_gate
    from labpipe.classify.gate_from_plates import train_gate_from_plates

    settings = obj.settings
    cache = None if no_cache else (cache_dir or settings.storage.root / "cache" / "features")
    threads = settings.classifier.threads if threads is None else threads
    if from_reviews and coco:
        _fail("give --from-reviews or --coco, not both")
        return
    if not (from_reviews or coco or counted_specs) and not (specimens and debris):
        _fail(
            "give --specimens and --debris folders, reviewed plates (--from-reviews, --coco EXPORT) "
            "or counted images (--counted FOLDER=N)"
        )
        return
    try:
        counted = _counted_images(counted_specs, um_per_px)
        if from_reviews or coco or counted:
            from labpipe.cli.detector import _lab_reviews, detector_from_kind
            from labpipe.detect.finetune import default_holdout

            doc: dict[str, Any] = {"images": [], "annotations": []}
            images, held = Path("."), holdout or 0
            if from_reviews:
                doc, images, _ = _lab_reviews(obj)
                held = default_holdout(len(doc.get("images", []))) if holdout is None else holdout
            elif coco is not None:
                doc = json.loads(coco.read_text(encoding="utf-8"))
                images = images_dir or coco.parent
            config = train_gate_from_plates(
                doc,
                images,
                detector_from_kind(obj, None),
                out_dir,
                holdout=held,
                seed=seed,
                specimens=specimens,
                debris=debris,
                counted=counted,
                margin=settings.crops.margin,
                overview_max_side=settings.imaging.overview_max_side,
                keep=keep,
                cache_dir=cache,
                threads=threads,
                progress=not as_json,
                overwrite=overwrite,
            )
        else:
            config = train_gate(
                list(specimens),
                list(debris),
                out_dir,
                keep=keep,
                cache_dir=cache,
                threads=threads,
                progress=not as_json,
                overwrite=overwrite,
            )
    except (ValueError, FileNotFoundError, json.JSONDecodeError) as exc:
        _fail(str(exc))
        return
    except LabpipeError as exc:
        _fail(exc)
        return
    if as_json:
        click.echo(json.dumps(config, indent=2))
        return
    oof = config["out_of_fold"]
    click.echo(f"wrote {out_dir}")
    click.echo(
        f"threshold {config['threshold']:.3f} (keeps {config['keep']} of whole specimens out of fold); "
        f"out of fold: specimens kept {oof['specimens_kept']}, debris rejected {oof['debris_rejected']}"
    )
    for folder, row in oof["per_folder"].items():
        click.echo(f"  {row['kind']:8s} {folder}: rejected {row['rejected_out_of_fold']}")
    reviews = config.get("reviews")
    if reviews:
        c = reviews["crops"]
        click.echo(
            f"from {len(reviews['train_plates'])} reviewed plates and {reviews['counted_images']} counted "
            f"images: {c['specimen']} specimen crops, "
            f"{c['not_specimen']} not-specimen crops, {c['unclear']} unclear boxes left out "
            f"(crops in {Path(out_dir) / 'crops'})"
        )
    held_out = config.get("held_out")
    if held_out:
        click.echo(f"held-out plates ({len(held_out['plates'])}), IoU 0.5:")
        for name, row in (
            ("detector", held_out["detector"]),
            ("detector + gate", held_out["detector_and_gate"]),
        ):
            click.echo(
                f"  {name:16s} precision {row['precision']}  recall {row['recall']}  "
                f"mean |count error| {row['mean_abs_count_error']}  ({row['detections']} counted, "
                f"{row['gate_rejected']} rejected by the gate)"
            )
    click.echo(f'seconds {config["seconds"]}; use it: [classifier] gate = "{out_dir}"')


def _train_summary(result: Any) -> dict[str, Any]:
    config, metrics = result.config, result.metrics
    return {
        "directory": str(result.directory),
        "version": result.version,
        "labels": config["labels"],
        "split_counts": config["split"]["counts"],
        "seconds": {k: round(v, 1) for k, v in result.seconds.items()},
        "feature_cache": config["training"]["feature_cache"],
        "temperature": round(config["temperature"], 4),
        "temperature_fit": config.get("temperature_fit"),
        "warnings": [w for w in [(config.get("temperature_fit") or {}).get("warning")] if w],
        "threshold": config["threshold_selection"],
        "ood": config.get("ood"),
        "test": metrics,
    }


def _format_train_summary(s: dict[str, Any]) -> str:
    test = s["test"]
    sel = s["threshold"]
    lines = [
        f"wrote {s['directory']}",
        f"version {s['version']}",
        "images per family (train/val/test): "
        + ", ".join(f"{f} {c['train']}/{c['val']}/{c['test']}" for f, c in s["split_counts"].items()),
        "seconds: " + ", ".join(f"{k} {v}" for k, v in s["seconds"].items()),
        f"temperature {s['temperature']}; threshold {sel['threshold']:.3f} for target {sel['target']} "
        f"(validation: {'reached' if sel['reachable'] else 'NOT reached'}, "
        f"accepted accuracy {sel['val_accepted_accuracy']:.3f}, coverage {sel['val_coverage']:.3f})",
        *_format_ood_lines(s.get("ood"), s.get("temperature_fit")),
        *_format_report_lines(test),
    ]
    return "\n".join(lines)


def _format_ood_lines(ood: dict[str, Any] | None, fit: dict[str, Any] | None) -> list[str]:
    lines = []
    if fit and fit.get("crossfit"):
        lines.append(
            f"calibration cross-fitted: {fit['n']} out-of-fold crops, {fit['errors']} errors "
            f"(validation held {fit['val_errors']})"
        )
    if ood:
        k = f" (k={ood['k']})" if "k" in ood else ""
        line = (
            f"out-of-distribution rule {ood.get('rule', 'mahalanobis')}{k}: "
            f"threshold {ood['threshold']:.4g}, "
            f"keeps {ood['keep']} of out-of-fold in-distribution crops"
        )
        chosen = ood.get("keep_selection") or {}
        if "correct_kept" in chosen:
            kept = chosen["correct_kept"].get(str(ood["keep"]))
            line += f" (chosen: the strictest keeping {kept} of the correct calls out of fold)"
        lofo = ood.get("leave_one_family_out")
        if lofo:
            line += f"; left-out family rejected {lofo['mean_rejected']} on average ({lofo['rejected']})"
        lines.append(line)
    return lines


def _format_report_lines(r: dict[str, Any]) -> list[str]:
    acc, cal, at = r["accuracy"], r["calibration"], r["at_threshold"]
    lines = [
        f"{r['images']} test images: "
        + ", ".join(
            f"top-{k[3:]} {v['micro']:.3f} micro / {v['macro']:.3f} macro"
            + (" (trivial)" if v["trivial"] else "")
            for k, v in acc.items()
        ),
        "per family (precision / recall / F1, n): "
        + "; ".join(
            f"{f} {v['precision']:.3f}/{v['recall']:.3f}/{v['f1']:.3f}, {v['support']}"
            for f, v in r["per_family"].items()
        ),
        f"ECE (15 bins) {cal['ece_before']} before, {cal['ece_after']} after "
        f"temperature {cal['temperature']}",
        f"at threshold {at['threshold']}: coverage {at['coverage']}, "
        f"accepted accuracy {at['accepted_accuracy']}, "
        f"correct kept {at['correct_kept']}, wrong rejected {at['wrong_rejected']} "
        f"({at['n_correct']} correct, {at['n_wrong']} wrong)",
    ]
    if at.get("confidence_only"):
        c = at["confidence_only"]
        lines[-1] += f" with the out-of-distribution rule (score > {at['distance_threshold']})"
        if at.get("gate"):
            lines[-1] += " and the gate"
        lines.append(
            f"  confidence rule alone: coverage {c['coverage']}, accepted accuracy {c['accepted_accuracy']}, "
            f"correct kept {c['correct_kept']}, wrong rejected {c['wrong_rejected']}"
        )
    for name, o in r.get("out_of_distribution", {}).items():
        by = ""
        if o.get("rejected_by_distance") is not None:
            by = (
                f" (confidence alone {o['rejected_by_confidence']}, "
                f"distance alone {o['rejected_by_distance']}"
                + (f", gate alone {o['rejected_by_gate']}" if o.get("rejected_by_gate") is not None else "")
                + ")"
            )
        lines.append(
            f"OOD {name}: {o['rejected']} of {o['images']} rejected{by}; accepted as {o['accepted_as']}"
        )
    for key, path in r.get("files", {}).items():
        lines.append(f"{key}: {path}")
    return lines


# --------------------------------------------------------------------------------------------------
# labpipe eval classifier


@click.command("classifier")
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--model",
    "model",
    required=True,
    help="Model directory, registered version (or unique prefix), or registry:default.",
)
@click.option(
    "--ood",
    multiple=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Folder of out-of-distribution images (of no family of the model); repeatable.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the report, CSV and plots go (default: <model>/eval).",
)
@click.option(
    "--split",
    type=click.Choice(["auto", "all"]),
    default="auto",
    show_default=True,
    help="auto: leave out images the model was trained or calibrated on (content hash).",
)
@click.option("--threshold", type=float, help="Rejection threshold (default: the model's own).")
@click.option(
    "--gate",
    "gate_dir",
    help="Specimen-or-not gate directory (default: [classifier] gate; '' for none).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_obj
def eval_classifier(
    obj: Any,
    data_dir: Path,
    model: str,
    ood: tuple[Path, ...],
    out_dir: Path | None,
    split: str,
    threshold: float | None,
    gate_dir: str | None,
    as_json: bool,
) -> None:
    """Evaluate a trained classifier on DATA_DIR (one folder per family).

    Reports micro and macro top-1/3/5 accuracy, per-family precision/recall/F1, the confusion
    matrix (CSV and PNG), expected calibration error before and after temperature scaling, the
    risk-coverage curve (PNG), and at the threshold: the share of correct predictions kept, of
    wrong ones rejected, and of each --ood folder's images rejected. Every threshold is the
    model's own (and the gate's): the --ood folders are only scored, never used to tune.
    """
    from labpipe.classify.gate import load_gate
    from labpipe.evaluation.classifier import evaluate_classifier_folder

    try:
        classifier = _load_trained(obj, model)
        gate_spec = obj.settings.classifier.gate if gate_dir is None else gate_dir
        gate = load_gate(gate_spec) if gate_spec else None
        report = evaluate_classifier_folder(
            data_dir,
            classifier,
            out_dir or classifier.directory / "eval",
            ood=ood,
            split=split,
            threshold=threshold,
            progress=not as_json,
            gate=gate,
        )
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
        return
    except LabpipeError as exc:
        _fail(exc)
        return
    data = report.as_dict()
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(f"model {classifier.version}")
    click.echo(f"{data_dir}: {data['data']['excluded_seen_in_training']} images left out (seen in training)")
    click.echo("\n".join(_format_report_lines(data)))


# --------------------------------------------------------------------------------------------------
# labpipe models


@click.group()
def models() -> None:
    """The model registry: every classification names the model version that made it."""


def _model_row(row: Any, n_classifications: int | None = None) -> dict[str, Any]:
    out = {
        "version": row.version,
        "name": row.name,
        "kind": row.kind,
        "default": bool(row.is_default),
        "labels": list(row.labels or []),
        "path": row.path,
        "weights_hash": row.weights_hash,
        "labels_hash": row.labels_hash,
        "created_at": row.created_at.isoformat(timespec="seconds") if row.created_at else None,
    }
    if n_classifications is not None:
        out["classifications"] = n_classifications
    return out


def _labels_text(labels: list[str], most: int = 6) -> str:
    return ", ".join(labels[:most]) + (", ..." if len(labels) > most else "")


@models.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def models_list(obj: Any, as_json: bool) -> None:
    """List registered classifier versions ('*' marks the default) and how many results each made."""
    from labpipe.db.database import open_database
    from labpipe.queries.models import model_usage
    from labpipe.registry import list_models

    factory = open_database(obj.settings.database_url)
    try:
        with factory() as session:
            used = model_usage(session)
            rows = [_model_row(m, used.get(m.id, 0)) for m in list_models(session)]
    finally:
        _dispose(factory)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no models registered (labpipe models add PATH)")
    for r in rows:
        mark = "*" if r["default"] else " "
        click.echo(
            f"{mark} {r['version']}  [{_labels_text(r['labels'])}]  "
            f"{r['classifications']} classifications  {r['path'] or '(built-in)'}"
        )


@models.command("add")
@click.argument("path")
@click.option("--name", help="Display name (the version still comes from the model itself).")
@click.option("--default", "make_default", is_flag=True, help="Also make it the default.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def models_add(obj: Any, path: str, name: str | None, make_default: bool, as_json: bool) -> None:
    """Register the model directory PATH (or a builtin:<name> spec); idempotent."""
    from labpipe.db.database import open_database
    from labpipe.registry import add_model

    factory = open_database(obj.settings.database_url)
    try:
        with factory() as session:
            row, created = add_model(session, path, name=name, default=make_default)
            session.commit()
            info = _model_row(row)
    except LabpipeError as exc:
        _fail(exc)
        return
    finally:
        _dispose(factory)
    if as_json:
        click.echo(json.dumps({**info, "created": created}, indent=2))
        return
    click.echo(
        f"{'registered' if created else 'already registered'}: {info['version']} "
        f"({info['path'] or 'built-in'})"
    )


@models.command("set-default")
@click.argument("version")
@click.pass_obj
def models_set_default(obj: Any, version: str) -> None:
    """Make VERSION (or a unique prefix of it) the default model of its kind (classifier or detector).

    The default is the one setting every part of labpipe follows: a running daemon classifies its
    next image with it, and `process`, `reclassify`, the API and the web UI use it too. The change is
    recorded in the audit trail with your user name. ([classifier] model / [detector] kind in the
    configuration apply only while no default is registered.)
    """
    from labpipe.db.database import open_database
    from labpipe.registry import set_default

    factory = open_database(obj.settings.database_url)
    try:
        with factory() as session:
            row = set_default(session, version)
            session.commit()
            click.echo(f"default {row.kind}: {row.version}")
    except LabpipeError as exc:
        _fail(exc)
    finally:
        _dispose(factory)


# --------------------------------------------------------------------------------------------------
# labpipe reclassify


@click.command()
@click.option(
    "--model",
    "model",
    help="Model directory, builtin:<name>, registered version (or prefix), registry:default "
    "(default: the active default classifier, see `labpipe models list`).",
)
@click.option("--sample", "sample_id", help="Only this sample's specimens.")
@click.option(
    "--threshold",
    type=float,
    help="Rejection threshold (default: the model's own / config). Stored calls of this model "
    "decided at another threshold are re-decided from their stored probabilities.",
)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def reclassify(
    obj: Any, model: str | None, sample_id: str | None, threshold: float | None, as_json: bool
) -> None:
    """Classify stored crops again with --model, without re-detecting; earlier results are kept.

    Adds one classification per specimen for the model's version (specimens that already have one
    are not classified again, so it is safe to run twice); one transaction per image. Without
    --model it brings every specimen to the active default classifier, so a sample counted by two
    models is counted by one again. With --threshold, this model's stored calls are re-decided at
    that threshold. Compare versions with `labpipe counts --model VERSION`.
    """
    from labpipe.classify.loader import configured_classifier
    from labpipe.db.database import open_database
    from labpipe.reclassify import reclassify_stored
    from labpipe.registry import resolve_model_argument

    settings = obj.settings
    try:
        factory = open_database(settings.database_url)
        with factory() as session:
            if model:
                spec = resolve_model_argument(model, session)
            else:
                from labpipe.active_models import active_classifier

                spec = active_classifier(session, settings).spec
        classifier = configured_classifier(settings, model=spec, threshold=threshold)
        try:
            result = reclassify_stored(
                factory,
                classifier,
                settings.storage.crops_dir,
                sample_id=sample_id,
                batch_size=settings.classifier.batch_size,
                progress=not as_json,
                redecide_stored=threshold is not None,
            )
        finally:
            _dispose(factory)
    except LabpipeError as exc:
        _fail(exc)
        return
    if as_json:
        click.echo(json.dumps(result.as_dict(), indent=2))
        return
    click.echo(
        f"{result.model_version}: classified {result.classified} specimens on {result.images} images "
        f"({result.already_done} already done, {len(result.missing_crops)} crops missing)"
    )
    if result.redecided:
        click.echo(
            f"re-decided {result.redecided} stored calls at threshold {threshold:g} "
            f"({result.changed} changed between accepted and rejected)"
        )
    for family, n in result.counts.items():
        click.echo(f"  {family:<22}{n:>6}")

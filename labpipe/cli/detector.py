"""``labpipe train detector`` and ``labpipe eval detector``.

Thin click commands over :mod:`labpipe.detect.detr_train` and :mod:`labpipe.evaluation.detector`,
registered on the ``train`` and ``eval`` groups in :mod:`labpipe.cli.main`. Settings come through
``click.pass_obj`` (the main group's context object), so this module does not import the main module.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from labpipe.errors import ConfigError, LabpipeError

__all__ = ["eval_detector", "eval_table", "train_detector_command"]


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


def detector_from_kind(obj: Any, kind: str | None, score_threshold: float | None = None) -> Any:
    """The detector named by ``kind`` (``classical`` or a model directory; default: the active one,
    the registry's default or else the config's)."""
    from labpipe.pipeline import active_detector_for

    settings = obj.settings
    if score_threshold is not None:
        settings.detector.score_threshold = score_threshold
    return active_detector_for(settings, kind)


def _gate_from_option(obj: Any, gate_dir: str | None) -> Any:
    """``--gate``: a gate directory, ``config`` for ``[classifier] gate``, or none."""
    from labpipe.classify.gate import load_gate

    spec = obj.settings.classifier.gate if gate_dir == "config" else gate_dir
    return load_gate(spec) if spec else None


def _resolve_start_model(obj: Any, value: str) -> Path:
    """``--from``: a DETR model directory, or a registered detector version (or a unique prefix)."""
    if Path(value).expanduser().is_dir():
        return Path(value).expanduser()
    from labpipe.db.database import open_database
    from labpipe.registry import find_model

    factory = open_database(obj.settings.database_url)
    try:
        with factory() as session:
            row = find_model(session, value)
            kind, path = row.kind, row.path
    finally:
        factory.kw["bind"].dispose()
    if kind != "detector" or not path or not Path(path).is_dir():
        raise ConfigError(
            f"--from {value}",
            f"registered as a {kind} model" + ("" if path else " with no directory"),
            "give a DETR model directory or a registered DETR detector version (`labpipe models list`)",
        )
    return Path(path)


def _lab_reviews(obj: Any) -> tuple[dict[str, Any], Path, Path | None]:
    """The lab's reviewed plates (``labpipe export coco --reviewed-only``), their images' root, and
    the lab's current default detector when it is a DETR model directory."""
    from labpipe.active_models import active_detector
    from labpipe.db.database import open_database
    from labpipe.reports.coco import coco_export

    root = obj.settings.storage.archive_dir.resolve()
    factory = open_database(obj.settings.database_url)
    try:
        with factory() as session:
            doc = coco_export(session, root, reviewed_only=True)
            spec = active_detector(session, obj.settings).spec
    finally:
        factory.kw["bind"].dispose()
    current = Path(spec).expanduser() if spec != "classical" and Path(spec).expanduser().is_dir() else None
    return doc, root, current


def _register_detector(obj: Any, model_dir: Path) -> str:
    """Register ``model_dir`` as a detector row (as the pipeline would on first use); its version."""
    from labpipe.db.database import open_database
    from labpipe.pipeline import build_detector
    from labpipe.record import ensure_detector_model

    detector = build_detector(obj.settings, str(model_dir))
    factory = open_database(obj.settings.database_url)
    try:
        with factory() as session:
            row = ensure_detector_model(session, detector)
            session.commit()
            return str(row.version)
    finally:
        factory.kw["bind"].dispose()


@click.command("detector")
@click.option(
    "--coco",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="COCO detection annotations of the training images, e.g. `labpipe export coco`: 'specimen' "
    "boxes are trained on, 'debris' boxes stay background, iscrowd/uncertain boxes are blanked.",
)
@click.option(
    "--from-reviews",
    is_flag=True,
    help="Train on the lab's own plates marked 'boxes reviewed' (exported from the configured "
    "database; images from the archive), hold some out, print before/after and register the model.",
)
@click.option(
    "--images",
    "images_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Folder holding the images named in --coco (and, with --pseudo-labels, unlabelled plates); "
    "with --from-reviews: the archive folder.",
)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--val-coco", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Validation set."
)
@click.option(
    "--val-images", type=click.Path(exists=True, file_okay=False, path_type=Path), help="Its images."
)
@click.option(
    "--from",
    "--init",
    "start_model",
    help="Fine-tune this DETR-family model: a model directory or a registered detector version "
    "(default: with --from-reviews the lab's default detector when it is a DETR; else a new RT-DETR "
    "whose EfficientNet-Lite0 backbone starts from the offline ImageNet weights). --init is an alias.",
)
@click.option(
    "--holdout",
    type=click.IntRange(0),
    help="Reviewed plates held out to score before/after (default with --from-reviews: 20 %%, at "
    "least 1 of 2 or more; seeded by --seed). Giving it with --coco does the same on that file.",
)
@click.option(
    "--synthetic-plates",
    type=click.IntRange(0),
    default=2,
    show_default=True,
    help="Small synthetic plates to score the DETRs on before and after (forgetting); 0: none.",
)
@click.option(
    "--register/--no-register",
    default=None,
    help="Register the trained model as a detector in the database (default: with --from-reviews or "
    "--holdout, the reviewed-plates path).",
)
@click.option(
    "--pseudo-labels",
    is_flag=True,
    help="Annotate the images in --images that --coco does not cover with the classical detector "
    "and train on those boxes too (bootstrapping from unlabelled plates).",
)
@click.option("--epochs", type=int, default=10, show_default=True)
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--lr", type=float, default=1e-4, show_default=True)
@click.option("--lr-backbone", type=float, default=1e-4, show_default=True)
@click.option("--weight-decay", type=float, default=1e-4, show_default=True)
@click.option(
    "--tile-size", type=int, help="Tile side at the working scale (default: --from's own, else 384)."
)
@click.option("--tile-overlap", type=int, help="Default: --from's own, else 128.")
@click.option(
    "--um-per-px",
    type=float,
    help="Working scale in micrometres per pixel (default: --from's own, else 40; 0: use images at "
    "their own scale).",
)
@click.option("--tiles-per-image", type=int, default=0, show_default=True, help="Per epoch; 0: cover once.")
@click.option(
    "--architecture",
    type=click.Choice(["conditional-detr", "rt-detr"]),
    default="rt-detr",
    show_default=True,
    help="A new model's architecture (ignored with --from).",
)
@click.option("--queries", "num_queries", type=int, default=100, show_default=True)
@click.option(
    "--max-minutes",
    type=float,
    help="Time budget in minutes (default: 15 on the reviewed-plates path, --from-reviews or "
    "--holdout; else no limit; 0: no limit). Training stops early enough to validate its last epoch "
    "within it; on the reviewed-plates path it bounds the whole command, the scoring before and after "
    "training included.",
)
@click.option("--threads", type=int, default=0, show_default=True, help="Torch CPU threads (0: default).")
@click.option(
    "--device", default="auto", show_default=True, help="auto (a GPU when present), cpu, cuda, cuda:N."
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace a model already in --out.")
@click.option("--json", "as_json", is_flag=True, help="Print the training summary as JSON.")
@click.pass_obj
def train_detector_command(
    obj: Any,
    coco: Path | None,
    from_reviews: bool,
    images_dir: Path | None,
    out_dir: Path,
    val_coco: Path | None,
    val_images: Path | None,
    start_model: str | None,
    holdout: int | None,
    synthetic_plates: int,
    register: bool | None,
    pseudo_labels: bool,
    epochs: int,
    batch_size: int,
    lr: float,
    lr_backbone: float,
    weight_decay: float,
    tile_size: int | None,
    tile_overlap: int | None,
    um_per_px: float | None,
    tiles_per_image: int,
    architecture: str,
    num_queries: int,
    max_minutes: float | None,
    threads: int,
    device: str,
    seed: int,
    overwrite: bool,
    as_json: bool,
) -> None:
    """Train a DETR specimen detector from COCO boxes into the model directory --out.

    Defaults follow the BIOSCAN-5M cropping model (AdamW, learning rate 1e-4, weight decay 1e-4,
    batch 8, 10 epochs). Images are read at the working scale (--um-per-px) and cut into random
    tiles; after every epoch the tiled detector is validated (--val-coco, else 10 % of the images)
    and the best checkpoint by AP50 is kept with its preprocessor config and a model card.

    With --from-reviews (or --coco EXPORT --holdout N) it fine-tunes on the reviewed plates, keeps
    some apart, and prints precision, recall and count error on them for the classical detector,
    the starting DETR and the fine-tuned one, plus the DETRs on synthetic plates (what was forgotten);
    the checkpoint is chosen on the training plates. Then `labpipe models set-default VERSION`.
    """
    from labpipe.detect.detr import DetrModelInfo
    from labpipe.detect.detr_data import coco_document, read_coco_set, write_coco_document
    from labpipe.detect.detr_train import DetrTrainOptions, pseudo_label, result_summary, train_detector
    from labpipe.evaluation.folders import image_files

    if from_reviews and (coco is not None or pseudo_labels):
        _fail("--from-reviews takes the lab's reviewed plates: leave out --coco and --pseudo-labels")
        return
    if coco is None and not pseudo_labels and not from_reviews:
        _fail(
            "give --coco, --from-reviews (the lab's reviewed plates), or --pseudo-labels to annotate "
            "the images with the classical detector"
        )
        return
    if not from_reviews and images_dir is None:
        _fail("give --images: the folder holding the images named in --coco")
        return
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        _fail(f"{out_dir} is not empty; pass --overwrite to replace it")
        return
    init: Path | None = None
    review_doc: dict[str, Any] | None = None
    try:
        if start_model:
            init = _resolve_start_model(obj, start_model)
        if from_reviews:
            review_doc, images_dir, current = _lab_reviews(obj)
            if init is None:
                init = current
    except LabpipeError as exc:
        _fail(str(getattr(exc, "message", exc)))
        return
    assert images_dir is not None
    start_info = DetrModelInfo.from_dir(init) if init else None
    reviewed_path = review_doc is not None or holdout is not None
    if um_per_px is None:
        um_per_px = start_info.um_per_px if start_info else 40.0
    options = DetrTrainOptions(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        lr_backbone=lr_backbone,
        weight_decay=weight_decay,
        tile_size=tile_size or (start_info.tile_size if start_info else 384),
        tile_overlap=tile_overlap
        if tile_overlap is not None
        else (start_info.tile_overlap if start_info else 128),
        um_per_px=um_per_px or None,
        tiles_per_image=tiles_per_image,
        architecture=architecture,
        num_queries=num_queries,
        init=str(init) if init else None,
        max_minutes=max_minutes if max_minutes is not None else (15.0 if reviewed_path else 0.0),
        seed=seed,
        threads=threads,
        device=device,
    )
    if reviewed_path:
        _finetune_and_report(
            obj,
            review_doc,
            coco,
            images_dir,
            out_dir,
            options,
            holdout,
            synthetic_plates,
            register if register is not None else True,
            as_json,
        )
        return
    train_coco = coco
    if pseudo_labels:
        from labpipe.pipeline import build_detector

        classical = build_detector(obj.settings, "classical")
        labelled = read_coco_set(coco) if coco else []
        known = {e.file_name for e in labelled}
        todo = [p for p in image_files(images_dir) if p.name not in known]
        out_dir.mkdir(parents=True, exist_ok=True)
        pseudo_path = out_dir.parent / f"{out_dir.name}.pseudo-labels.coco.json"
        max_side = obj.settings.imaging.overview_max_side
        pseudo_label(
            todo,
            classical,
            pseudo_path,
            max_side,
            um_per_px_fallback=obj.settings.um_per_px_fallback,
            progress=not as_json,
        )
        entries = labelled + read_coco_set(pseudo_path)
        train_coco = out_dir.parent / f"{out_dir.name}.train.coco.json"
        write_coco_document(coco_document(entries, "labelled + pseudo-labels (classical)"), train_coco)
        if not as_json:
            click.echo(f"pseudo-labelled {len(todo)} images -> {pseudo_path}")
    assert train_coco is not None
    try:
        result = train_detector(
            train_coco,
            images_dir,
            out_dir,
            options,
            val_coco=val_coco,
            val_images_dir=val_images,
            progress=not as_json,
            overwrite=True,
        )
    except (ValueError, FileExistsError, LabpipeError) as exc:
        _fail(str(getattr(exc, "message", exc)))
        return
    summary = result_summary(result)
    if register:
        summary["registered"] = _register_detector(obj, out_dir)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    best = summary["best"]
    click.echo(
        f"wrote {out_dir}: best epoch {summary['best_epoch']} of {len(summary['history'])}, "
        f"AP50 {best.get('ap50')}, AP50:95 {best.get('ap50_95')}, F1 {best.get('f1')} "
        f"({summary['train_images']} training / {summary['val_images']} validation images, "
        f"{summary['seconds'] / 60:.1f} min)"
    )
    if register:
        click.echo(f"registered detector {summary['registered']}")


def _finetune_and_report(
    obj: Any,
    review_doc: dict[str, Any] | None,
    coco: Path | None,
    images_dir: Path,
    out_dir: Path,
    options: Any,
    holdout: int | None,
    synthetic_plates: int,
    register: bool,
    as_json: bool,
) -> None:
    """The reviewed-plates path: split, fine-tune, before/after, register (see
    :func:`labpipe.detect.finetune.finetune_on_plates`)."""
    from labpipe.detect.finetune import finetune_on_plates, format_before_after
    from labpipe.evaluation.real_table import default_data_dir

    doc = review_doc if review_doc is not None else json.loads(Path(str(coco)).read_text())
    if not as_json:
        click.echo(
            f"{len(doc.get('images', []))} reviewed plates; starting from "
            f"{options.init or 'a new RT-DETR (EfficientNet-Lite0 backbone, offline ImageNet weights)'}"
        )
    cutouts = default_data_dir() / "carabidae-crops"
    try:
        result = finetune_on_plates(
            obj.settings,
            doc,
            images_dir,
            out_dir,
            options,
            holdout=holdout,
            synthetic_plates=synthetic_plates,
            synthetic_work=obj.settings.storage.root / "cache",
            cutouts=cutouts if cutouts.is_dir() else None,
            progress=not as_json,
        )
    except (ValueError, FileExistsError, LabpipeError) as exc:
        _fail(str(getattr(exc, "message", exc)))
        return
    summary = result.as_dict()
    if register:
        summary["registered"] = _register_detector(obj, out_dir)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    t = result.training
    click.echo(
        f"wrote {out_dir}: {len(result.train_plates)} plates trained on, {len(result.held_out_plates)} held "
        f"out ({', '.join(result.held_out_plates) or 'none: too few plates to score'}); best epoch "
        f"{t['best_epoch']} of {len(t['history'])}, {result.seconds / 60:.1f} min"
    )
    if result.rows:
        click.echo(format_before_after(result.rows))
    if register:
        click.echo(
            f"registered detector {summary['registered']}\n"
            f"make it the daemon's detector: labpipe models set-default '{summary['registered']}'"
        )


@click.command("detector")
@click.option(
    "--coco",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Truth: COCO boxes. A category named 'debris' is debris; iscrowd or attributes.uncertain "
    "marks ignore regions; every other annotation is a specimen.",
)
@click.option(
    "--images",
    "images_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Folder holding the images named in --coco (default: the COCO file's folder).",
)
@click.option("--detector", "kind", help="'classical' or a DETR model directory (default: [detector] kind).")
@click.option("--score-threshold", type=float, help="Detections below this are dropped (default: config).")
@click.option(
    "--frame",
    type=click.Choice(["auto", "stored", "displayed"]),
    default="auto",
    show_default=True,
    help="Frame the truth boxes were drawn in, for JPEGs with an EXIF rotation: 'stored' (the pixel "
    "array as stored), 'displayed' (rotation applied), 'auto' (decided by the recorded image size).",
)
@click.option(
    "--overlays",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write one PNG per image into this folder: the detections over the truth.",
)
@click.option(
    "--gate",
    "gate_dir",
    help="Score what is counted behind this specimen-or-not gate (`labpipe train gate`): a detection "
    "whose crop it rejects is left out. Default: none ('config' for [classifier] gate).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_obj
def eval_detector(
    obj: Any,
    coco: Path,
    images_dir: Path | None,
    kind: str | None,
    score_threshold: float | None,
    frame: str,
    overlays: Path | None,
    gate_dir: str | None,
    as_json: bool,
) -> None:
    """Precision, recall, F1 (IoU 0.5), AP50, AP50:95 and count error against COCO boxes.

    Each image goes through the production path (reader with EXIF orientation, overview or the
    detector's own tiles). Detections on ignore regions are left out; those on debris are false
    positives, also counted apart. Results per image and pooled.
    """
    from labpipe.evaluation.detector import evaluate_images
    from labpipe.evaluation.overlay import write_overlays
    from labpipe.evaluation.truth import read_coco_truth

    try:
        detector = detector_from_kind(obj, kind, score_threshold)
        truths = read_coco_truth(coco, images_dir, frame=frame)  # type: ignore[arg-type]
        gate = _gate_from_option(obj, gate_dir)
    except (LabpipeError, ValueError) as exc:
        _fail(str(getattr(exc, "message", exc)))
        return
    missing = [t.path for t in truths if not t.path.is_file()]
    if missing:
        _fail(f"{coco}: {len(missing)} images it names are missing, first {missing[0]}; pass --images")
        return
    report = evaluate_images(
        truths,
        detector,
        obj.settings.imaging.overview_max_side,
        um_per_px_fallback=obj.settings.um_per_px_fallback,
        progress=not as_json,
        gate=gate,
        margin=obj.settings.crops.margin,
    )
    written = write_overlays(report.images, overlays) if overlays else []
    d = report.as_dict()
    if as_json:
        d["overlays"] = [str(p) for p in written]
        click.echo(json.dumps(d, indent=2))
        return
    click.echo(
        f"{d['detector']}: {d['images']} images, {d['truth']} specimens, {d['detections']} detections "
        f"({d['ignored']} more on ignore regions"
        + (f"; {d['gate_rejected']} rejected by the gate {gate.path}" if gate else "")
        + ")\n"
        f"  precision {d['precision']}  recall {d['recall']}  F1 {d['f1']}  (IoU 0.5); "
        f"{d['debris_false_positives']} false positives on debris\n"
        f"  AP50 {d['ap50']}  AP50:95 {d['ap50_95']}\n"
        f"  count error per image: mean |error| {d['mean_abs_count_error']}, "
        f"mean {d['mean_count_error']}; {d['seconds_per_image']} s per image"
    )
    if len(report.images) > 1:
        for r in report.images:
            click.echo(
                f"  {r.file_name}: {r.true_positives}/{r.n_truth} found, {r.n_detections} detections, "
                f"{r.false_positives} false ({r.debris_false_positives} on debris)"
            )
    if written:
        click.echo(f"wrote {len(written)} overlays to {overlays}")


@click.command("table")
@click.option(
    "--data",
    "data_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="The real data folder (default: $LABPIPE_SHARED_DATA, else ../shared/data beside the project).",
)
@click.option("--detector", "kind", help="'classical' or a DETR model directory (default: [detector] kind).")
@click.option("--score-threshold", type=float, help="Detections below this are dropped (default: config).")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("detection-table"),
    show_default=True,
    help="Folder for table.json and the overlay PNGs.",
)
@click.option(
    "--work",
    type=click.Path(file_okay=False, path_type=Path),
    help="Cache for the synthetic plates (default: OUT/plates); they are rendered once.",
)
@click.option("--quick", is_flag=True, help="A small subset (the one the tests check).")
@click.option("--no-synthetic", is_flag=True, help="Real images only.")
@click.option(
    "--gate",
    "gate_dir",
    help="Score what is counted behind this specimen-or-not gate (`labpipe train gate`): detections "
    "whose crop it rejects are left out. Default: none ('config' for [classifier] gate).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON.")
@click.pass_obj
def eval_table(
    obj: Any,
    data_dir: Path | None,
    kind: str | None,
    score_threshold: float | None,
    out_dir: Path,
    work: Path | None,
    quick: bool,
    no_synthetic: bool,
    gate_dir: str | None,
    as_json: bool,
) -> None:
    """The whole detection table: real scenes with boxes, wells, Inselect, synthetic plates.

    Writes table.json and an overlay PNG per image (wells: only those with a wrong count) into
    --out, for people to look at.
    """
    from labpipe.evaluation.real_table import default_data_dir, format_table, real_sets, run_table

    data = data_dir or default_data_dir()
    try:
        detector = detector_from_kind(obj, kind, score_threshold)
        gate = _gate_from_option(obj, gate_dir)
        sets = real_sets(data, quick=quick)
        if not no_synthetic:
            from labpipe.evaluation.synthetic_sets import synthetic_sets

            sets += synthetic_sets(work or out_dir / "plates", data, quick=quick)
    except (LabpipeError, ValueError, FileNotFoundError) as exc:
        _fail(str(getattr(exc, "message", exc)))
        return
    rows = run_table(
        detector,
        sets,
        out_dir,
        overview_max_side=obj.settings.imaging.overview_max_side,
        progress=not as_json,
        gate=gate,
        margin=obj.settings.crops.margin,
    )
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in rows], indent=2))
        return
    click.echo(f"{getattr(detector, 'version', '')}, IoU 0.5; overlays and table.json in {out_dir}")
    click.echo(format_table(rows))
